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
from reviewlm.io.layout import QUARANTINE
from reviewlm.train.masking import BlockMasker


def split_bucket(ids: list[str], seed: int) -> np.ndarray:
    """A stable number in [0, 1) per id: the same row lands in the same split every run."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big") / 2**64
                     for i in ids])


DATA_CPUS = 0.25  # streaming: CPU of each read or tokenize task; each CPU worker leaves this much of its own
STREAM_BLOCK_BYTES = 4 << 20  # streaming: blocks of at most this size (Ray's default, 128 MB, spills a small store)


def training_rows(batch: pa.Table, task: str) -> pa.Table:
    """The columns training reads, with a reason in `_error` for every row it cannot use.

    Parse errors come from the reader; a row without text (or text pair, or, for stars,
    rating) gets its reason here. Stars are the classes "1".."5" of the rating column.
    """
    error = batch["_error"]
    needs = [("text", "no text")] + [(c, f"no {c.replace('_', ' ')}") for c in ("text_pair", "label")
                                      if c in batch.schema.names]
    if task == "stars":
        needs.append(("rating", "no rating"))
        batch = batch.append_column("label", pc.cast(batch["rating"], pa.string()))
    for column, reason in needs:
        error = pc.if_else(pc.and_(pc.is_null(error), pc.is_null(batch[column])), reason, error)
    keep = ["id", "text"] + [c for c in ("text_pair", "label") if c in batch.schema.names] + ["source", "_row", "_raw"]
    return batch.select(keep).append_column("_error", error)


def label_set(rows: ray.data.Dataset, given: list[str] | None) -> list[str]:
    """The classes in id order: `given`, or the labels found (numbers in numeric order, else sorted)."""
    if given:
        return list(given)
    found = rows.filter(expr=col("_error").is_null()).unique("label")
    return sorted(found, key=lambda v: (0, int(v), v) if v.lstrip("-").isdigit() else (1, 0, v))


def check_labels(batch: pa.Table, labels: list[str]) -> pa.Table:
    """Quarantine rows whose label is not one of `labels` (a `--labels` list that misses some)."""
    unknown = pc.invert(pc.is_in(batch["label"], value_set=pa.array(labels, pa.string())))
    reason = pc.binary_join_element_wise("label '", batch["label"], "' is not one of the labels given", "")
    error = pc.if_else(pc.and_(pc.is_null(batch["_error"]), pc.fill_null(unknown, False)), reason, batch["_error"])
    return batch.set_column(batch.schema.get_field_index("_error"), "_error", error)


def quarantined(rows: ray.data.Dataset) -> ray.data.Dataset:
    """Rows training cannot use, in the filter job's quarantine layout (id, source, row, raw, error)."""
    return (rows.filter(expr=col("_error").is_not_null()).select_columns(list(QUARANTINE))
            .rename_columns(QUARANTINE))


def with_split(batch: pa.Table, bounds: list[tuple[str, float, float]], seed: int) -> pa.Table:
    u = split_bucket(batch["id"].to_pylist(), seed)
    names = np.full(len(u), "", dtype=object)
    for name, lo, hi in bounds:
        names[(u >= lo) & (u < hi)] = name
    return batch.append_column("split", pa.array(names.astype(str)))


def split_rows(batch: pa.Table, name: str, bounds: list[tuple[str, float, float]], seed: int) -> pa.Table:
    """The usable rows of one split: streaming, each split reads the rows again and keeps its own."""
    usable = with_split(batch.filter(pc.is_null(batch["_error"])), bounds, seed)
    return usable.filter(pc.equal(usable["split"], name))


def tally(batch: pa.Table, bounds: list[tuple[str, float, float]], seed: int, tokenizer=None) -> pa.Table:
    """One row of counts for a batch of training rows: read, quarantined, rows per split and,
    with a tokenizer, the train split's tokens (as `tokenize_and_chunk` counts them)."""
    usable = with_split(batch.filter(pc.is_null(batch["_error"])), bounds, seed)
    counts = {"read": [batch.num_rows], "quarantined": [batch.num_rows - usable.num_rows]}
    for name, _, _ in bounds:
        part = usable.filter(pc.equal(usable["split"], name))
        counts[name] = [part.num_rows]
        if tokenizer is not None and name == "train":
            enc = tokenizer(part["text"].to_pylist(), truncation=False, verbose=False)["input_ids"]
            counts[f"{name}_tokens"] = [sum(len(x) for x in enc)]
    return pa.table(counts)


def stratify(group: pa.Table, bounds: list[tuple[str, float, float]], seed: int) -> pa.Table:
    """One class's rows, ordered by their stable hash and cut at the split fractions: every
    class is split in the same proportions (to within a row)."""
    u = split_bucket(group["id"].to_pylist(), seed)
    order = np.lexsort((np.array(group["id"].to_pylist(), dtype=object).astype(str), u))
    names = np.full(len(u), "", dtype=object)
    for name, lo, hi in bounds:
        names[order[round(lo * len(u)):round(hi * len(u))]] = name
    return group.append_column("split", pa.array(names.astype(str))).append_column("_u", pa.array(u))


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


def tokenize_reviews(batch: dict, tokenizer, max_length: int, label2id: dict[str, int]) -> dict:
    """Token ids per text (or text pair: `[CLS] a [SEP] b [SEP]`, the longer side truncated
    first), at most `max_length`, not padded (batches pad to their longest), and class ids."""
    pairs = list(batch["text_pair"]) if "text_pair" in batch else None
    enc = tokenizer(list(batch["text"]), pairs, truncation="longest_first", max_length=max_length, verbose=False)
    ids = np.empty(len(enc["input_ids"]), dtype=object)
    ids[:] = [np.asarray(x, np.int32) for x in enc["input_ids"]]
    return {"input_ids": ids, "labels": np.array([label2id[v] for v in batch["label"]], np.int32)}


def split_datasets(rows: ray.data.Dataset, bounds: list[tuple[str, float, float]], seed: int,
                   stratified: bool) -> dict[str, ray.data.Dataset]:
    """One dataset per split name from the usable rows. Masked LM: each row by its id's hash,
    in input order. Classes: stratified by label, then in hash order (classes mixed)."""
    rows = rows.filter(expr=col("_error").is_null())
    if stratified:
        rows = (rows.groupby("label").map_groups(stratify, fn_kwargs={"bounds": bounds, "seed": seed},
                                                 batch_format="pyarrow").sort("_u"))
    else:
        rows = rows.map_batches(with_split, fn_kwargs={"bounds": bounds, "seed": seed}, batch_format="pyarrow")
    rows = rows.materialize()
    return {name: rows.filter(expr=col("split") == name) for name, _, _ in bounds}


def require_rows(counts: dict[str, int]) -> dict[str, int]:
    """`counts` (rows per split) when no split is empty."""
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

    The datasets named in `stream` are not materialized: Ray Train's `streaming_split`
    (equal rows per worker, locality hints) runs them while the workers train.
    """

    def __init__(self, datasets: dict[str, ray.data.Dataset], world_size: int, stream: tuple[str, ...] = ()):
        super().__init__(datasets_to_split=list(stream))
        self.shards = {name: ds.split(world_size, equal=name == "train") for name, ds in datasets.items()
                       if name not in stream}
        for parts in self.shards.values():
            for part in parts:  # reading a materialized shard: no progress bar per epoch in the log
                part.context.enable_progress_bars = False

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        streamed = {name: ds for name, ds in datasets.items() if name not in self.shards}
        shards = super().configure(streamed, world_size, worker_handles, worker_node_ids, **kwargs)
        return [{**shards[rank], **{name: self.shards[name][rank].iterator() for name in self.shards}}
                for rank in range(world_size)]
