"""Exact duplicates on normalized text, decided across all blocks and workers.

`mark_duplicates` adds to every row the position of the first row with the same normalized
text (smallest source path, then row number): a group-by over text hashes finds the first
of every repeated text, and a join brings it back to the rows. The `Dedup` filter then only
decides: keep the first occurrence, drop the others.
"""

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.aggregate import Count, Min

from reviewlm.filters.base import Filter

HASH, ORDER, FIRST = "_text_hash", "_order", "_dup_first"


def normalize(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """NFKC, lower case, whitespace collapsed and trimmed."""
    text = pc.utf8_lower(pc.utf8_normalize(text, form="NFKC"))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(text, pattern=r"\s+", replacement=" "))


def add_keys(batch: pa.Table) -> pa.Table:
    """Add the text hash (null for quarantined or null text) and the row's order key."""
    normalized = normalize(batch["text"]).to_pylist()
    parsed = pc.is_null(batch["_error"]).to_pylist()
    hashes = [hashlib.blake2b(t.encode(), digest_size=16).digest() if t is not None and ok else None
              for t, ok in zip(normalized, parsed)]
    order = [f"{s}\x00{r:012d}" for s, r in zip(batch["source"].to_pylist(), batch["_row"].to_pylist())]
    return batch.append_column(HASH, pa.array(hashes, pa.binary())).append_column(ORDER, pa.array(order, pa.string()))


def mark_duplicates(ds: ray.data.Dataset, num_partitions: int) -> ray.data.Dataset:
    """`ds` with FIRST: the order key of its text's first occurrence where the text repeats."""
    ds = ds.map_batches(add_keys, batch_format="pyarrow")
    firsts = (ds.select_columns([HASH, ORDER])
              .map_batches(lambda b: b.filter(pc.is_valid(b[HASH])), batch_format="pyarrow")
              .groupby(HASH).aggregate(Min(ORDER, alias_name=FIRST), Count(alias_name="_n"))
              .map_batches(lambda b: b.filter(pc.greater(b["_n"], 1)).drop_columns(["_n"]),
                           batch_format="pyarrow"))
    joined = ds.join(firsts, join_type="left_outer", num_partitions=num_partitions, on=(HASH,))
    return joined.map_batches(_with_first, batch_format="pyarrow", batch_size=None)


def _with_first(batch: pa.Table) -> pa.Table:
    """A joined block as the filter reads it: a partition that met no repeated text has no
    FIRST column at all (Ray's join leaves out the columns of an empty side)."""
    return batch if FIRST in batch.column_names else batch.append_column(FIRST, pa.nulls(batch.num_rows, pa.string()))


class Dedup(Filter):
    """Keep the first occurrence of each normalized text; score `duplicate_of` (source:row)."""

    name = "dedup"
    score_fields = [pa.field("duplicate_of", pa.string())]

    def prepare(self, ds, inputs, pieces):
        # as many partitions as read pieces: the rows after the join come in blocks of about
        # --split-mb, which bounds a write task's memory and what a killed run loses
        return mark_duplicates(ds, num_partitions=max(2, pieces, int(ray.cluster_resources().get("CPU", 2))))

    def apply(self, batch):
        if FIRST not in batch.column_names:
            raise RuntimeError("dedup needs Dedup.prepare(dataset) to run before the filter stage")
        first, order = batch[FIRST].to_pylist(), batch[ORDER].to_pylist()
        dup = [f is not None and f != o for f, o in zip(first, order)]
        where = [f.replace("\x00", ":").rsplit(":", 1) if d else None for f, d in zip(first, dup)]
        of = [f"{w[0]}:{int(w[1])}" if w else None for w in where]
        return ~np.array(dup, dtype=bool), {"duplicate_of": pa.array(of, pa.string())}
