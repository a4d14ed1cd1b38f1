"""Training data on Ray Data: deterministic splits, tokenization, fixed-length MLM chunks.

What runs in Ray Data's tasks lives here, without torch: a task's worker imports no more than it needs."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.expressions import col

from reviewlm.errors import UsageError
from reviewlm.tally import tally


def split_hash(ids: list[str], seed: int) -> np.ndarray:
    """A stable 64-bit hash per id: the same row lands in the same split every run."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big")
                     for i in ids], dtype=np.uint64)


def split_bucket(ids: list[str], seed: int) -> np.ndarray:
    """`split_hash` as a number in [0, 1)."""
    return split_hash(ids, seed) / 2**64


DATA_CPUS = 0.25  # streaming: CPU of each read or tokenize task; each CPU worker leaves this much of its own
STREAM_BLOCK_BYTES = 4 << 20  # streaming: blocks of at most this size (Ray's default, 128 MB, spills a small store)


def training_rows(batch: pa.Table, task: str, seed: int, labels: list[str] | None = None) -> pa.Table:
    """The columns training reads, with a reason in `_error` for every row it cannot use and
    the row's split hash in `_h` (`split_hash` of its id).

    Parse errors come from the reader; a row without text (or text pair, or, for stars,
    rating), or with a label not among `labels` when given, gets its reason here. Stars are
    the classes "1".."5" of the rating column.
    """
    error = batch["_error"]
    needs = [("text", "no text")] + [(c, f"no {c.replace('_', ' ')}") for c in ("text_pair", "label")
                                      if c in batch.schema.names]
    if task == "stars":
        needs.append(("rating", "no rating"))
        batch = batch.append_column("label", pc.cast(batch["rating"], pa.string()))
    for column, reason in needs:
        error = pc.if_else(pc.and_(pc.is_null(error), pc.is_null(batch[column])), reason, error)
    if labels:
        unknown = pc.fill_null(pc.invert(pc.is_in(batch["label"], value_set=pa.array(labels, pa.string()))), False)
        reason = pc.binary_join_element_wise("label '", batch["label"], "' is not one of the labels given", "")
        error = pc.if_else(pc.and_(pc.is_null(error), unknown), reason, error)
    keep = ["id", "text"] + [c for c in ("text_pair", "label") if c in batch.schema.names] + ["source", "_row", "_raw"]
    return batch.select(keep).append_column("_error", error).append_column(
        "_h", pa.array(split_hash(batch["id"].to_pylist(), seed), pa.uint64()))


def sort_labels(found) -> list[str]:
    """Classes in id order: numbers in numeric order, else sorted."""
    return sorted(found, key=lambda v: (0, int(v), v) if v.lstrip("-").isdigit() else (1, 0, v))


BIN_BITS = 10  # a class's split hashes are counted in bins by their leading 10 bits (1,024 bins) ...
GATHER = 100_000  # ... until the bin a split point falls in holds at most this many rows, which are gathered


def counted(batch: pa.Table, task: str, bounds: list[tuple[str, float, float]], tokenizer=None) -> pa.Table:
    """Training rows in the quarantine layout, with what the job counts of the usable ones: a
    classifier's class (`_class`) and class and hash bin (`_bin`, "class\x00bin"); a masked
    LM's split (`_class`) and, with a tokenizer, the train split's tokens (`_tokens`, as
    `tokenize_and_chunk` counts them)."""
    usable = pc.is_null(batch["_error"])
    table = pa.table({"id": batch["id"], "source": batch["source"], "row": batch["_row"], "raw": batch["_raw"],
                      "error": batch["_error"]})
    nothing = pa.scalar(None, pa.string())
    if task == "mlm":
        names = pc.if_else(usable, pa.array(split_names(batch["_h"].to_numpy() / 2**64, bounds)), nothing)
        table = table.append_column("_class", names)
        if tokenizer is not None:
            train = pc.fill_null(pc.equal(names, "train"), False).to_numpy(zero_copy_only=False)
            tokens = np.zeros(batch.num_rows, np.int64)
            texts = batch["text"].filter(pa.array(train)).to_pylist()
            tokens[train] = [len(x) for x in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
            table = table.append_column("_tokens", pa.array(tokens))
        return table
    label = pc.if_else(usable, batch["label"], nothing)
    bins = pa.array((batch["_h"].to_numpy() >> np.uint64(64 - BIN_BITS)).astype(str))
    return table.append_column("_class", label).append_column(
        "_bin", pc.binary_join_element_wise(label, bins, "\x00"))


def split_names(u: np.ndarray, bounds: list[tuple[str, float, float]]) -> np.ndarray:
    names = np.full(len(u), "", dtype=object)
    for name, lo, hi in bounds:
        names[(u >= lo) & (u < hi)] = name
    return names.astype(str)


def split_rows(batch: pa.Table, name: str, bounds: list[tuple[str, float, float]]) -> pa.Table:
    """The usable rows of one split, each by its split hash (masked LM: streaming, each split
    reads the rows again and keeps its own)."""
    usable = batch.filter(pc.is_null(batch["_error"]))
    names = split_names(usable["_h"].to_numpy() / 2**64, bounds)
    return usable.filter(pa.array(names == name))


@dataclass
class _Point:
    """Where a split point is being looked for: the `offset`-th row (0-based, in (hash, id)
    order) of the `count` rows of `label` whose split hash starts with the `depth` x `BIN_BITS`
    bits `prefix`."""

    label: str
    prefix: int
    depth: int
    offset: int
    count: int

    @property
    def key(self) -> tuple[str, int, int]:
        return self.label, self.prefix, self.depth


Cut = tuple[int, str]  # (hash, id) of a split's first row in its class


def split_points(classes: dict[str, int], bins: dict[str, int], bounds: list[tuple[str, float, float]],
                 histogram, gather) -> dict[str, list[Cut | None]]:
    """Per class, the (hash, id) where each split after the first starts (None: it is empty):
    with n rows a class, split k starts at rank round(lo_k x n) of the class's rows in (hash,
    id) order, so every class is cut in the same proportions, to within a row.

    From the counts of a pass the job makes anyway (rows per class, and per class and leading
    `BIN_BITS` bits of the hash: `bins`), the bin each point falls in is known; `histogram`
    (points -> their rows per next `BIN_BITS` bits, a pass) narrows a bin of more than `GATHER`
    rows; `gather` (points -> their rows' (hash, id), a pass) brings the rows of the last bins.
    No class is ever held in one place.
    """
    hist = {}
    for key, n in bins.items():
        label, b = key.split("\x00")
        hist.setdefault(label, np.zeros(1 << BIN_BITS, np.int64))[int(b)] += n
    cuts: dict[str, list[Cut | None]] = {}
    points: list[tuple[str, int, _Point]] = []
    for label, n in classes.items():
        cuts[label] = []
        for k, (_, lo, _) in enumerate(bounds[1:]):
            rank = round(lo * n)
            cuts[label].append(None if rank >= n else (0, "") if rank == 0 else None)
            if 0 < rank < n:
                points.append((label, k, _locate(hist[label], rank, label, 0, 1)))
    while narrow := [p for _, _, p in points if p.count > GATHER and (p.depth + 1) * BIN_BITS <= 64]:
        counts = histogram([p.key for p in narrow])
        for p in narrow:
            found = _locate(counts[p.key], p.offset, p.label, p.prefix, p.depth + 1)
            p.prefix, p.depth, p.offset, p.count = found.prefix, found.depth, found.offset, found.count
    rows = gather(sorted({p.key for _, _, p in points}))
    for label, k, p in points:
        cuts[label][k] = sorted(rows[p.key])[p.offset]
    return cuts


def _locate(counts: np.ndarray, rank: int, label: str, prefix: int, depth: int) -> _Point:
    """The bin of `counts` (under `prefix`, one level deeper) that holds the `rank`-th row."""
    before = np.cumsum(counts) - counts
    b = int(np.searchsorted(before + counts, rank, side="right"))
    return _Point(label, (prefix << BIN_BITS) | b, depth, rank - int(before[b]), int(counts[b]))


def prefixes(h: np.ndarray, depth: int) -> np.ndarray:
    """The leading `depth` x `BIN_BITS` bits of each hash."""
    return h >> np.uint64(64 - depth * BIN_BITS) if depth * BIN_BITS < 64 else h


def narrowed(block: pa.Table, points: list[tuple[str, int, int]]) -> Counter:
    """Per point (label, prefix, depth): its rows per next `BIN_BITS` bits of their hash."""
    usable = block.filter(pc.is_null(block["_error"]))
    labels, h = usable["label"].to_numpy(zero_copy_only=False), usable["_h"].to_numpy()
    out = Counter()
    for label, prefix, depth in points:
        mine = (labels == label) & (prefixes(h, depth) == prefix)
        below = prefixes(h[mine], depth + 1) & np.uint64((1 << BIN_BITS) - 1)
        for b, n in zip(*np.unique(below, return_counts=True)):
            out[(label, prefix, depth, int(b))] += int(n)
    return out


def gathered(block: pa.Table, points: list[tuple[str, int, int]]) -> pa.Table:
    """The (label, prefix, depth) of the points whose rows are in this block, and each row's (hash, id)."""
    usable = block.filter(pc.is_null(block["_error"]))
    labels, h = usable["label"].to_numpy(zero_copy_only=False), usable["_h"].to_numpy()
    parts = []
    for label, prefix, depth in points:
        mine = np.flatnonzero((labels == label) & (prefixes(h, depth) == prefix))
        parts.append(pa.table({"label": [label] * len(mine), "prefix": pa.array([prefix] * len(mine), pa.uint64()),
                               "depth": pa.array([depth] * len(mine), pa.int32()),
                               "_h": usable["_h"].take(mine), "id": usable["id"].take(mine)}))
    return pa.concat_tables(parts)


def assign_splits(block: pa.Table, bounds: list[tuple[str, float, float]], cuts: dict[str, list[Cut | None]]
                  ) -> pa.Table:
    """The usable rows with their `split`: the last split whose start (`split_points`) is at
    or before the row's (hash, id) in its class."""
    usable = block.filter(pc.is_null(block["_error"]))
    labels, h = usable["label"].to_numpy(zero_copy_only=False), usable["_h"].to_numpy()
    ids = np.asarray(usable["id"].to_pylist(), dtype=object)
    index = np.zeros(len(h), np.int64)
    for label, starts in cuts.items():
        mine = labels == label
        for start in starts:
            if start is not None:
                index[mine] += (h[mine] > np.uint64(start[0])) | ((h[mine] == np.uint64(start[0])) &
                                                                  (ids[mine] >= start[1]))
    names = np.array([name for name, _, _ in bounds])
    return usable.append_column("split", pa.array(names[index].astype(str)))


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


def tokenize_reviews(batch: dict, tokenizer, max_length: int, label2id: dict[str, int]) -> dict:
    """Token ids per text (or text pair: `[CLS] a [SEP] b [SEP]`, the longer side truncated
    first), at most `max_length`, not padded (batches pad to their longest), and class ids."""
    pairs = list(batch["text_pair"]) if "text_pair" in batch else None
    enc = tokenizer(list(batch["text"]), pairs, truncation="longest_first", max_length=max_length, verbose=False)
    ids = np.empty(len(enc["input_ids"]), dtype=object)
    ids[:] = [np.asarray(x, np.int32) for x in enc["input_ids"]]
    return {"input_ids": ids, "labels": np.array([label2id[v] for v in batch["label"]], np.int32)}


def stratified_splits(rows: ray.data.Dataset, classes: dict[str, int], bins: dict[str, int],
                      bounds: list[tuple[str, float, float]]) -> tuple[dict[str, ray.data.Dataset], dict[str, int]]:
    """One dataset per split of the usable `rows` (materialized), each class cut in the split
    fractions by `split_points`, and each split's row count; no shuffle."""
    def histogram(points):
        counts = tally(rows, narrowed, {"points": points})
        return {p: np.array([counts.get((*p, b), 0) for b in range(1 << BIN_BITS)]) for p in points}

    def gather(points):
        found = rows.map_batches(gathered, fn_kwargs={"points": points}, batch_format="pyarrow",
                                 batch_size=None).to_pandas()
        out = {p: [] for p in points}
        for r in found.itertuples(index=False):
            out[(r.label, int(r.prefix), int(r.depth))].append((int(r._3), r.id))
        return out

    cuts = split_points(classes, bins, bounds, histogram, gather)
    split = rows.map_batches(assign_splits, fn_kwargs={"bounds": bounds, "cuts": cuts}, batch_format="pyarrow")
    counts = {name: 0 for name, _, _ in bounds}
    for n in classes.values():
        for name, lo, hi in bounds:
            counts[name] += round(hi * n) - round(lo * n)
    return {name: split.filter(expr=col("split") == name) for name, _, _ in bounds}, counts


def mlm_splits(rows: ray.data.Dataset, bounds: list[tuple[str, float, float]]) -> dict[str, ray.data.Dataset]:
    """One dataset per split of the usable `rows`, each row by its split hash, in input order."""
    return {name: rows.map_batches(split_rows, fn_kwargs={"name": name, "bounds": bounds}, batch_format="pyarrow")
            for name, _, _ in bounds}


def require_rows(counts: dict[str, int]) -> dict[str, int]:
    """`counts` (rows per split) when no split is empty."""
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise UsageError(f"the {', '.join(empty)} split is empty after splitting {counts}: "
                         "give more data or change the split fractions")
    return counts
