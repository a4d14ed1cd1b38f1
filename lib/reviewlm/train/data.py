"""Training data on Ray Data: deterministic splits, tokenization, fixed-length MLM chunks."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.expressions import col
from ray.train import DataConfig

from reviewlm.errors import UsageError


def split_bucket(ids: list[str], seed: int) -> np.ndarray:
    """A stable number in [0, 1) per id: the same row lands in the same split every run."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big") / 2**64
                     for i in ids])


def usable_rows(batch: pa.Table, need_rating: bool) -> pa.Table:
    keep = pc.and_(pc.is_null(batch["_error"]), pc.is_valid(batch["text"]))
    if need_rating:
        keep = pc.and_(keep, pc.is_valid(batch["rating"]))
    return batch.filter(keep).select(["id", "text", "rating"])


def with_split(batch: pa.Table, bounds: list[tuple[str, float, float]], seed: int) -> pa.Table:
    u = split_bucket(batch["id"].to_pylist(), seed)
    names = np.full(len(u), "", dtype=object)
    for name, lo, hi in bounds:
        names[(u >= lo) & (u < hi)] = name
    return batch.append_column("split", pa.array(names.astype(str)))


def tokenize_and_chunk(batch: dict, tokenizer, chunk_size: int) -> dict:
    """Tokenize texts, concatenate them and cut into `chunk_size` blocks (the tail is dropped).

    Offsets and special-token masks are kept so whole-word masking can find word pieces.
    """
    enc = tokenizer(list(batch["text"]), return_offsets_mapping=True, return_special_tokens_mask=True,
                    truncation=False, verbose=False)
    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]) if len(batch["text"]) else np.zeros(0, np.int64)
    if len(ids) < chunk_size:
        empty = np.zeros((0, chunk_size), np.int64)
        return {"input_ids": empty, "special_tokens_mask": empty, "offset_mapping": np.zeros((0, chunk_size, 2), np.int64)}
    special = np.concatenate([np.asarray(x, dtype=np.int64) for x in enc["special_tokens_mask"]])
    offsets = np.concatenate([np.asarray(x, dtype=np.int64).reshape(-1, 2) for x in enc["offset_mapping"]])
    n = len(ids) // chunk_size * chunk_size
    return {"input_ids": ids[:n].reshape(-1, chunk_size),
            "special_tokens_mask": special[:n].reshape(-1, chunk_size),
            "offset_mapping": offsets[:n].reshape(-1, chunk_size, 2)}


def tokenize_reviews(batch: dict, tokenizer, max_length: int) -> dict:
    enc = tokenizer(list(batch["text"]), truncation=True, max_length=max_length, padding="max_length")
    return {"input_ids": np.asarray(enc["input_ids"], np.int64),
            "attention_mask": np.asarray(enc["attention_mask"], np.int64),
            "labels": np.asarray(batch["rating"], np.int64) - 1}


def split_datasets(ds: ray.data.Dataset, bounds: list[tuple[str, float, float]], seed: int,
                   need_rating: bool) -> dict[str, ray.data.Dataset]:
    """One dataset per split name, materialized (their sizes set the schedule)."""
    ds = (ds.map_batches(usable_rows, fn_kwargs={"need_rating": need_rating}, batch_format="pyarrow")
          .map_batches(with_split, fn_kwargs={"bounds": bounds, "seed": seed}, batch_format="pyarrow")
          .materialize())
    if ds.count() == 0:
        raise UsageError("no usable training rows: every row is quarantined or has no text"
                         + (" or rating" if need_rating else ""))
    return {name: ds.filter(expr=col("split") == name) for name, _, _ in bounds}


def require_rows(datasets: dict[str, ray.data.Dataset]) -> dict[str, int]:
    counts = {name: d.count() for name, d in datasets.items()}
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise UsageError(f"the {', '.join(empty)} split is empty after splitting {counts}: "
                         "give more data or change the split fractions")
    return counts


class FixedShards(DataConfig):
    """Rank i trains on shard i: the same rows in the same order on every run and restart.

    Ray Train's default `streaming_split` hands each block to whichever worker asks first,
    so two runs train on different shards. Here the datasets are materialized in input
    order (`preserve_order`) and cut by `Dataset.split(equal=True)` before the workers
    start: the cut runs Ray tasks, which would wait forever for the CPUs the workers hold.
    No locality hints: on a cluster, a worker may read its shard from another node.
    """

    def __init__(self, datasets: dict[str, ray.data.Dataset], world_size: int):
        super().__init__()
        self.shards = {name: ds.split(world_size, equal=True) for name, ds in datasets.items()}
        for parts in self.shards.values():
            for part in parts:  # reading a materialized shard: no progress bar per epoch in the log
                part.context.enable_progress_bars = False

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        return [{name: self.shards[name][rank].iterator() for name in datasets} for rank in range(world_size)]
