"""Exact duplicates on normalized text, decided across all blocks and workers.

`Dedup.prepare` finds the rows to drop in key-partitioned tasks (`filters.keyed`): each
parsed row's key and a 128-bit hash of its normalized text (two keyed SipHash-2-4 of
pandas, vectorized), cut into parts by hash; a task per part sorts its rows and names, for
every text that repeats, each later row and the first (smallest source path, then row
number). The filter stage's own pass then looks its rows up in those drops, by key range.
"""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray

from reviewlm.filters.base import Filter
from reviewlm.filters.keyed import KEY, Drops, partitions, row_keys, run_firsts, source_rows, split, usable

H1, H2, OF = "_text_hash1", "_text_hash2", "_duplicate_of"
HASHED = pa.schema([(KEY, pa.int64()), (H1, pa.uint64()), (H2, pa.uint64())])
DROPS = pa.schema([(KEY, pa.int64()), ("of", pa.string())])


def normalize(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """NFKC, lower case, whitespace collapsed and trimmed. The pattern matches only where a
    replacement changes something (a run, or a single tab or newline): 10x `\\s+`'s speed."""
    text = pc.utf8_lower(pc.utf8_normalize(text, form="NFKC"))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(text, pattern=r"\s\s+|[\t\n\f\r]", replacement=" "))


def text_hashes(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of each normalized (non-null) text."""
    values = normalize(text).to_numpy(zero_copy_only=False)
    return (pd.util.hash_array(values, hash_key="reviewlm-dedup-1", categorize=False),
            pd.util.hash_array(values, hash_key="reviewlm-dedup-2", categorize=False))


def hashed_rows(batch: pa.Table, *, ranks: dict[str, int]) -> pa.Table:
    """The key and text hashes of each parsed row with text."""
    rows = usable(batch)
    h1, h2 = text_hashes(batch["text"].filter(pa.array(rows)))
    return pa.table([pa.array(row_keys(batch, ranks)[rows]), h1, h2], schema=HASHED)


def later_copies(rows: pa.Table, uris: list[str]) -> pa.Table:
    """(key, `source:row` of the first) of every row whose text an earlier row has, in key order."""
    h1, h2, keys = (rows[c].to_numpy() for c in (H1, H2, KEY))
    order = np.lexsort((keys, h2, h1))
    h1, h2, keys = h1[order], h2[order], keys[order]
    first = run_firsts(keys, h1, h2)
    later = np.flatnonzero(first != keys)
    later = later[np.argsort(keys[later])]
    return pa.table([pa.array(keys[later]), source_rows(first[later], uris)], schema=DROPS)


@ray.remote(num_returns=2)
def _later_copies(uris: list[str], *parts: pa.Table) -> tuple[pa.Table, int]:
    table = later_copies(pa.concat_tables(parts) if parts else HASHED.empty_table(), uris)
    return table, table.num_rows


class Dedup(Filter):
    """Keep the first occurrence of each normalized text; score `duplicate_of` (source:row)."""

    name = "dedup"
    score_fields = [pa.field("duplicate_of", pa.string())]

    def prepare(self, ds, inputs, pieces):
        uris = sorted(f.uri for f in inputs.files)
        ranks = {s: i for i, s in enumerate(uris)}
        hashed = ds.map_batches(hashed_rows, batch_format="pyarrow", fn_kwargs={"ranks": ranks}).materialize()
        blocks = hashed.to_arrow_refs() or [ray.put(HASHED.empty_table())]
        parts = partitions(hashed.size_bytes())
        splits = [split.options(num_returns=parts).remote(b, H1, parts) for b in blocks]
        found = [_later_copies.remote(uris, *[s[p] for s in splits]) for p in range(parts)]
        del hashed, blocks, splits
        drops = Drops.build([f[0] for f in found], sum(ray.get([f[1] for f in found])), DROPS)
        return ds.map_batches(drops.attach, batch_format="pyarrow",
                              fn_kwargs={"ranks": ranks, "names": {"of": OF}})

    def apply(self, batch):
        if OF not in batch.column_names:
            raise RuntimeError("dedup needs Dedup.prepare(dataset) to run before the filter stage")
        return pc.is_null(batch[OF]).to_numpy(zero_copy_only=False), {"duplicate_of": batch[OF]}
