"""Training data on Ray Data: deterministic splits, tokenization, fixed-length MLM chunks."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from ray.data.expressions import col
from ray.train import DataConfig

from reviewlm.errors import UsageError
from reviewlm.io.readers import with_text
from reviewlm.train.masking import BlockMasker


def split_bucket(ids: list[str], seed: int) -> np.ndarray:
    """A stable number in [0, 1) per id: the same row lands in the same split every run."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big") / 2**64
                     for i in ids])


def usable_rows(batch: pa.Table, need_rating: bool) -> pa.Table:
    batch = with_text(batch)
    if need_rating:
        batch = batch.filter(pc.is_valid(batch["rating"]))
    return batch.select(["id", "text", "rating"])


def with_split(batch: pa.Table, bounds: list[tuple[str, float, float]], seed: int) -> pa.Table:
    u = split_bucket(batch["id"].to_pylist(), seed)
    names = np.full(len(u), "", dtype=object)
    for name, lo, hi in bounds:
        names[(u >= lo) & (u < hi)] = name
    return batch.append_column("split", pa.array(names.astype(str)))


def tokenize_and_chunk(batch: dict, tokenizer, chunk_size: int) -> dict:
    """Tokenize texts, concatenate them and cut into `chunk_size` blocks (the tail is dropped).

    Each token keeps its word id, from the tokenizer's own pre-tokenizer (BERT's splits on
    whitespace and punctuation, so "comfortable." is two words), so whole-word masking
    masks every piece of a word and never its punctuation. int32 ids and word ids: 8 bytes
    a token; word ids run on across texts (special tokens are -1).
    """
    texts = list(batch["text"])
    enc = tokenizer(texts, truncation=False, verbose=False)
    ids = [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]
    words, offset = [], 0
    for i in range(len(texts)):
        w = np.array([-1 if x is None else x for x in enc.word_ids(i)], dtype=np.int32)
        words.append(np.where(w >= 0, w + offset, -1).astype(np.int32))
        offset += int(w.max(initial=-1)) + 1
    n = sum(len(x) for x in ids) // chunk_size * chunk_size
    if n == 0:
        empty = np.zeros((0, chunk_size), np.int32)
        return {"input_ids": empty, "word_ids": empty}
    return {"input_ids": np.concatenate(ids)[:n].reshape(-1, chunk_size),
            "word_ids": np.concatenate(words)[:n].reshape(-1, chunk_size)}


def block_seed(block: np.ndarray, seed: int) -> int:
    """A seed from a block's tokens: its masks do not depend on batching, shards or workers."""
    return int.from_bytes(hashlib.blake2b(block.tobytes(), digest_size=8, key=str(seed).encode()).digest(), "big")


def mask_eval_blocks(batch: dict, tokenizer, probability: float, whole_word: bool, seed: int) -> dict:
    """Masks fixed once per eval block (seeded by its tokens): every evaluation scores the same ones."""
    masker = BlockMasker(tokenizer, probability, whole_word)
    inputs, labels = [], []
    for ids, words in zip(batch["input_ids"], batch["word_ids"]):
        x, y = masker(ids[None], words[None], torch.Generator().manual_seed(block_seed(ids, seed)))
        inputs.append(x[0].numpy().astype(np.int32))
        labels.append(y[0].numpy().astype(np.int32))
    empty = np.zeros((0, batch["input_ids"].shape[1]), np.int32)
    return {"input_ids": np.stack(inputs) if inputs else empty, "labels": np.stack(labels) if labels else empty}


def tokenize_reviews(batch: dict, tokenizer, max_length: int) -> dict:
    """Token ids per review, truncated to `max_length` and not padded (batches pad to their longest)."""
    enc = tokenizer(list(batch["text"]), truncation=True, max_length=max_length, verbose=False)
    ids = np.empty(len(enc["input_ids"]), dtype=object)
    ids[:] = [np.asarray(x, np.int32) for x in enc["input_ids"]]
    return {"input_ids": ids, "labels": np.asarray(batch["rating"], np.int32) - 1}


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
    order (`preserve_order`) and cut by `Dataset.split` before the workers start: the cut
    runs Ray tasks, which would wait forever for the CPUs the workers hold. Training shards
    are equal (DDP steps in lockstep); evaluation shards keep every row. No locality hints:
    on a cluster, a worker may read its shard from another node.
    """

    def __init__(self, datasets: dict[str, ray.data.Dataset], world_size: int):
        super().__init__()
        self.shards = {name: ds.split(world_size, equal=name == "train") for name, ds in datasets.items()}
        for parts in self.shards.values():
            for part in parts:  # reading a materialized shard: no progress bar per epoch in the log
                part.context.enable_progress_bars = False

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        return [{name: self.shards[name][rank].iterator() for name in datasets} for rank in range(world_size)]
