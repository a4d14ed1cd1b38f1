"""Near-duplicate reviews: MinHash LSH over word n-grams, clusters as connected components.

What two reviews are compared on: the text in Unicode NFKC, lower case, every run of
characters that are neither letters, digits nor whitespace turned into a space, split on
whitespace; its set of word `ngram`s (a review of fewer words is one n-gram of all of them).
Their similarity is the Jaccard index of those sets.

`NearDedup.prepare` finds the clusters in steps of many tasks, none of which gathers every
row, pair or cluster (`filters.keyed`: parts of about 64 MB, more parts for more data):

1. **signatures** (Ray Data map tasks, materialized): each parsed review's key, id, the
   distinct 32-bit hashes of its n-grams, and its MinHash signature (`rensa`, seeded, so the
   same on every worker) kept as a sketch, 8 bits of each value. Cut into parts by key.
2. **buckets** (Ray tasks): each block's sketches cut into LSH bands and its (band hash, key)
   rows into parts by band hash; a task per part finds the rows that share a band hash and
   pairs each row of a bucket of two or more with the bucket's first row. A round of bands
   at a time, so that the object store never holds more than 32 MB of band rows per CPU.
   Ray Data's hash repartition did the same in 4.7 s of a 24 s job on 200,000 reviews (it
   starts a pool of aggregator actors); these tasks take 0.4 s.
3. **verification** (a partitioned join, two rounds): the pairs go to the part of their later
   row, which adds that row's sketch and n-grams, then to the part of their first row, where
   a pair whose sketches put it far below the threshold, then one whose exact Jaccard is below
   it, is dropped (LSH's false positives).
4. **clusters**: connected components of the verified pairs (A~B and B~C make one cluster
   even when A and C are further apart) by min-label propagation over the parts, a round per
   step of a cluster's longest path from its smallest row, until no label falls.
5. **drops**: every member of a cluster but its first (smallest source path, then record
   number: the order `dedup` uses) is dropped, with the first's id and their exact Jaccard
   (a join by the first row's part); the drops are cut into key ranges, and the filter
   stage's own pass fetches only the ranges of its block's rows.
"""

from __future__ import annotations

import hashlib
import itertools
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from reviewlm.filters.base import Filter
from reviewlm.filters.keyed import (
    KEY,
    PARTITION_BYTES,
    Drops,
    by_key,
    concat,
    cut,
    fmix,
    gather,
    part_of,
    partitions,
    row_keys,
    run_firsts,
    run_starts,
    split,
    usable,
)
from reviewlm.io.layout import CANONICAL

SEED = 1  # MinHash permutations and band hashes: fixed, so they agree across workers and runs
BAND, FIRST = "_near_band", "_near_first"
GRAMS, SKETCH = "_near_grams", "_near_sketch"
SRC, DST, NODE, LABEL = "_src", "_dst", "_node", "_label"
SCREEN_SIGMAS = 5  # how far below the threshold the screen's estimate may fall and the pair still be verified
ROUND_BYTES_PER_CPU = 32 << 20  # of band rows in the object store at once
BUCKETED = pa.schema([(BAND, pa.uint64()), (KEY, pa.int64())])
BAND_ROW_BYTES = sum(f.type.byte_width for f in BUCKETED)  # a band hash and a row key
PAIRS = pa.schema([(KEY, pa.int64()), (FIRST, pa.int64())])
DROPS = pa.schema([(KEY, pa.int64()), ("of", pa.string()), ("similarity", pa.float64())])


def lsh_params(threshold: float, num_perm: int, recall: float = 0.95) -> tuple[int, int]:
    """(bands, rows per band): the most rows per band (fewest false candidates) with which a
    pair at exactly `threshold` still shares a band with probability >= `recall`."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def words(text: pa.Array) -> pa.ListArray:
    """The normalized words of each text (null for a text without any)."""
    text = pc.utf8_lower(pc.utf8_normalize(text, form="NFKC"))
    text = pc.utf8_trim_whitespace(pc.replace_substring_regex(text, pattern=r"[^\pL\pN\s]+", replacement=" "))
    return pc.utf8_split_whitespace(pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text))


_WORDS: dict[str, int] = {}
_GRAM_MIX = np.random.default_rng(SEED + 1).integers(1, 2**63, size=64, dtype=np.uint64) | np.uint64(1)


def _word_hashes(flat: pa.Array) -> np.ndarray:
    """A stable 64-bit hash (blake2b) of each word, each distinct word hashed once per worker."""
    if len(_WORDS) > 1_000_000:
        _WORDS.clear()
    encoded = pc.dictionary_encode(flat)
    distinct = np.array([_WORDS.get(w) or _WORDS.setdefault(w, int.from_bytes(
        hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")) for w in encoded.dictionary.to_pylist()],
        dtype=np.uint64)
    return distinct[encoded.indices.to_numpy()] if len(distinct) else np.empty(0, np.uint64)


def gram_hashes(text: pa.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit hashes of every (non-null) text's word n-grams, flat, and each text's offsets into
    them: an n-gram is a multilinear mix of its words' hashes; a text of fewer than `n` words has
    one n-gram of all of them, one without words none."""
    tokens = words(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text)
    lengths = pc.fill_null(pc.list_value_length(tokens), 0).to_numpy().astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    h = _word_hashes(tokens.flatten())
    grams = np.zeros(len(h), np.uint64)
    for k in range(min(n, len(h))):  # grams[p]: the n words from word p (masked below where it leaves its text)
        grams[: len(h) - k] += h[k:] * _GRAM_MIX[k]
    row = np.repeat(np.arange(len(lengths)), lengths)
    full = np.arange(len(h)) - starts[row] <= lengths[row] - n
    short = np.flatnonzero((lengths > 0) & (lengths < n))
    whole = np.zeros(len(short), np.uint64)  # a short text's one n-gram: the mix of all its words
    for k in range(n - 1):
        part = lengths[short] > k
        whole[part] += h[starts[short][part] + k] * _GRAM_MIX[k]
    rows = np.concatenate([row[full], short])
    order = np.argsort(rows, kind="stable")
    counts = np.bincount(rows, minlength=len(lengths))
    return fmix(np.concatenate([grams[full], whole])[order]), np.r_[0, np.cumsum(counts)]


def signature_rows(batch: pa.Table, *, ranks: dict, ngram: int, num_perm: int, bands: int, rows: int) -> pa.Table:
    """One row per parsed review with words: its key, id, the distinct hashes of its n-grams,
    sorted and kept to 32 bits (two n-grams of a pair of 100-word reviews collide with odds of
    about 1 in 400,000), and its sketch: the low 8 bits of the `bands` x `rows` MinHash values
    its LSH bands are cut from (b-bit MinHash: two values of a pair at Jaccard J are equal
    with probability J + (1 - J) / 256)."""
    used = usable(batch)
    grams, offsets = gram_hashes(batch["text"].filter(pa.array(used)), ngram)
    signed = np.diff(offsets) > 0  # a text without words has no signature
    sketch = minhash_sketches(grams, offsets, num_perm, bands * rows)[signed]
    values, offsets = _distinct((grams >> np.uint64(32)).astype(np.uint32), offsets)
    return pa.table([pa.array(row_keys(batch, ranks)[used][signed]), batch["id"].filter(pa.array(used)).filter(
        pa.array(signed)), pa.ListArray.from_arrays(pa.array(offsets[np.r_[True, signed]].astype(np.int32)),
                                                    pa.array(values)),
        pa.FixedSizeListArray.from_arrays(pa.array(sketch.ravel()), bands * rows)], names=[KEY, "id", GRAMS, SKETCH])


def minhash_sketches(grams: np.ndarray, offsets: np.ndarray, num_perm: int, width: int,
                     chunk: int = 4096) -> np.ndarray:
    """The low 8 bits of the first `width` of each row's `num_perm` MinHash values (rensa), `chunk`
    rows at a time: rensa hands digests back as Python lists, about 40 B a value while they live
    (100,000 rows at once: 1.7 s and 590 MB; by 4,096: 0.9 s and 40 MB)."""
    import rensa

    n = len(offsets) - 1
    out = np.empty((n, width), np.uint8)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        digests = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
            grams[offsets[a]:offsets[b]], (offsets[a:b + 1] - offsets[a]).astype(np.uint64), num_perm, SEED)
        out[a:b] = np.array(digests.to_rows(), dtype=np.uint32).reshape(-1, num_perm)[:, :width] & 0xFF
    return out


def _distinct(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's values (rows cut at `offsets`) sorted without repeats, and the new offsets."""
    n = len(offsets) - 1
    both = np.repeat(np.arange(n, dtype=np.uint64), np.diff(offsets)) << np.uint64(32) | values
    both.sort()
    both = both[np.r_[True, both[1:] != both[:-1]]] if len(both) else both
    counts = np.bincount((both >> np.uint64(32)).astype(np.int64), minlength=n)
    return (both & np.uint64(0xFFFFFFFF)).astype(np.uint32), np.r_[0, np.cumsum(counts)]


@ray.remote
def split_bands(block: pa.Table, bands: int, parts: int, first: int, last: int) -> list[pa.Table]:
    """The (band hash, row key) rows of bands `first` to `last` (excluded) of a block of
    signatures, cut into `parts` by band hash: a band's hash is a multilinear hash of its
    sketch values (wrapping uint64 arithmetic), the band index mixed in."""
    rows = block.schema.field(SKETCH).type.list_size // bands
    sketch = block[SKETCH].combine_chunks().values.to_numpy().reshape(-1, bands, rows)[:, first:last]
    mix = np.random.default_rng(SEED).integers(1, 2**63, size=rows + bands, dtype=np.uint64) | np.uint64(1)
    h = ((sketch.astype(np.uint64) * mix[:rows]).sum(axis=2) + mix[rows + first:rows + last]).ravel()
    h ^= h >> np.uint64(29)
    keys = np.repeat(block[KEY].to_numpy(), last - first)
    return cut(pa.table({BAND: h, KEY: keys}), (h % np.uint64(parts)).astype(np.int64), parts)


@ray.remote
def bucket_pairs(*parts: pa.Table) -> pa.Table:
    """(row key, key of its bucket's first row) for the rows of every bucket of two or more in
    one part of every block."""
    block = pa.concat_tables(parts) if parts else BUCKETED.empty_table()
    bands, keys = block[BAND].to_numpy(), block[KEY].to_numpy()
    order = np.lexsort((keys, bands))
    bands, keys = bands[order], keys[order]
    first = run_firsts(keys, bands)
    member = first != keys
    return pa.table({KEY: pa.array(keys[member]), FIRST: pa.array(first[member])})


def screen(a: np.ndarray, b: np.ndarray, threshold: float, chunk: int = 1 << 17) -> np.ndarray:
    """Which pairs of sketches (rows of `a` and `b`) do not rule their pair out: the share of
    equal sketch values estimates J (two values are equal with probability J + (1 - J) / 256);
    a pair is ruled out where that estimate lies more than `SCREEN_SIGMAS` standard errors
    below the threshold. `chunk` pairs at a time."""
    width = a.shape[1]
    equal = np.concatenate([np.zeros(0), *((a[i:i + chunk] == b[i:i + chunk]).sum(axis=1)
                                           for i in range(0, len(a), chunk))])
    estimate = (equal / width - 1 / 256) / (1 - 1 / 256)
    return estimate >= threshold - SCREEN_SIGMAS * np.sqrt(threshold * (1 - threshold) / width)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| of two sorted arrays of distinct values."""
    both = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - both
    return both / union if union else 1.0


def _lists(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """Each row's n-gram hashes."""
    grams = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values, offsets = grams.values.to_numpy(), grams.offsets.to_numpy()
    return [values[o:e] for o, e in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _sketches(column: pa.ChunkedArray) -> np.ndarray:
    width = column.type.list_size
    return column.combine_chunks().flatten().to_numpy().reshape(-1, width)


def _similarities(a: pa.ChunkedArray, b: pa.ChunkedArray) -> np.ndarray:
    """The exact Jaccard similarity of the n-grams of each row of `a` with the same row of `b`."""
    return np.array([jaccard(x, y) for x, y in zip(_lists(a), _lists(b))], dtype=np.float64)


def _distinct_pairs(later: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((first, later))
    later, first = later[order], first[order]
    new = run_starts(later, first)
    return later[new], first[new]


def _rows(sig: pa.Table, keys: np.ndarray, columns: list[str]) -> pa.Table:
    """`columns` of the rows of `sig` (a part of the signatures, in key order) with `keys`."""
    return sig.select(columns).take(pa.array(np.searchsorted(sig[KEY].to_numpy(), keys)))


@ray.remote
def first_side(sig: pa.Table, parts: int, *pairs: pa.Table) -> list:
    """Candidate pairs, round one, in the part of their later row: the distinct (later, first)
    pairs with the later row's sketch and n-grams, cut into parts by the first row's key; and
    how many pairs there were (call with `num_returns=parts + 1`)."""
    table = concat(pairs, PAIRS)
    later, first = _distinct_pairs(table[KEY].to_numpy(), table[FIRST].to_numpy())
    rows = _rows(sig, later, [SKETCH, GRAMS])
    out = pa.table([later, first, rows[SKETCH], rows[GRAMS]], names=[KEY, FIRST, SKETCH, GRAMS])
    return [*cut(out, part_of(first, parts), parts), len(later)]


@ray.remote
def verify(sig: pa.Table, threshold: float, parts: int, *halves: pa.Table) -> list:
    """Candidate pairs, round two, in the part of their first row: a pair that the sketches rule
    out, then one whose exact Jaccard is below the threshold, is dropped (LSH's false positives);
    the rest as edges both ways cut into parts by their source; and [screened, verified]
    (call with `num_returns=parts + 1`)."""
    table = pa.concat_tables(halves)
    first = _rows(sig, table[FIRST].to_numpy(), [SKETCH, GRAMS])
    screened = np.flatnonzero(screen(_sketches(table[SKETCH]), _sketches(first[SKETCH]), threshold))
    similar = _similarities(table[GRAMS].take(screened), first[GRAMS].take(screened)) >= threshold
    edge = screened[similar]
    a, b = table[KEY].to_numpy()[edge], table[FIRST].to_numpy()[edge]
    src, dst = np.r_[a, b], np.r_[b, a]
    return [*cut(pa.table({SRC: src, DST: dst}), part_of(src, parts), parts), np.array([len(screened), len(edge)])]


@ray.remote
def adjacency(*edges: pa.Table) -> tuple[np.ndarray, ...]:
    """A part's nodes, their edges (source, destination, the source's position among the nodes)
    and their labels: to start, each node its own."""
    table = pa.concat_tables(edges)
    src, dst = table[SRC].to_numpy(), table[DST].to_numpy()
    nodes = np.unique(src)
    return nodes, np.searchsorted(nodes, src), dst, nodes.copy()


@ray.remote
def propagate(parts: int, state: tuple, start: bool, *messages: pa.Table) -> list:
    """A round of min-label propagation in a part: each node takes the smallest label that its
    neighbours sent, and each node whose label fell (every node, at the start) sends its label
    to its neighbours. Returns the new state, the messages cut by their destination's part, and
    how many labels fell (call with `num_returns=parts + 2`)."""
    nodes, at, dst, label = state
    new = label.copy()
    if messages:
        table = pa.concat_tables(messages)
        np.minimum.at(new, np.searchsorted(nodes, table[NODE].to_numpy()), table[LABEL].to_numpy())
    fell = np.ones(len(nodes), bool) if start else new < label
    send = fell[at]
    to, sent = dst[send], new[at[send]]
    order = np.lexsort((sent, to))
    to, sent = to[order], sent[order]
    smallest = run_starts(to)
    table = pa.table({NODE: to[smallest], LABEL: sent[smallest]})
    return [(nodes, at, dst, new), *cut(table, part_of(to[smallest], parts), parts), int(fell.sum())]


@ray.remote
def roots(state: tuple, sig: pa.Table, parts: int) -> list:
    """Every node of a part that is not its component's smallest: (key, the smallest's key, its
    n-grams), cut into parts by the smallest's key (call with `num_returns=parts`)."""
    nodes, _, _, label = state
    later = np.flatnonzero(label != nodes)
    table = pa.table([nodes[later], label[later], _rows(sig, nodes[later], [GRAMS])[GRAMS]], names=[KEY, FIRST, GRAMS])
    return cut(table, part_of(label[later], parts), parts)


@ray.remote(num_returns=3)
def name_drops(sig: pa.Table, *halves: pa.Table) -> tuple[pa.Table, int, int]:
    """The rows to drop whose cluster's first row is in this part: (key, the first row's id, their
    exact Jaccard) in key order; how many, and how many clusters."""
    table = pa.concat_tables(halves)
    first = _rows(sig, table[FIRST].to_numpy(), ["id", GRAMS])
    drops = by_key(pa.table([table[KEY], first["id"], _similarities(table[GRAMS], first[GRAMS])], schema=DROPS))
    return drops, drops.num_rows, len(np.unique(table[FIRST].to_numpy()))


class NearDedup(Filter):
    """Drop a review whose word n-gram Jaccard similarity with an earlier one reaches `threshold`
    (clusters are connected components); score `near_duplicate_of` (the kept review's id)
    and `near_similarity` (their exact Jaccard)."""

    score_fields = [pa.field("near_duplicate_of", pa.string()), pa.field("near_similarity", pa.float64())]

    def __init__(self, threshold: float = 0.8, ngram: int = 5, num_perm: int = 128, bands: int | None = None,
                 rows: int | None = None, name: str = "near_dedup"):
        if not 0 < threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")
        if ngram < 1 or num_perm < 1:
            raise ValueError("ngram and num_perm must be at least 1")
        if ngram > len(_GRAM_MIX):
            raise ValueError(f"ngram must be at most {len(_GRAM_MIX)}")
        if (bands is None) != (rows is None):
            raise ValueError("give both bands and rows, or neither")
        if bands is None:
            bands, rows = lsh_params(threshold, num_perm)
        if bands < 1 or rows < 1 or bands * rows > num_perm:
            raise ValueError(f"bands x rows ({bands} x {rows}) must be at most num_perm ({num_perm})")
        self.threshold, self.ngram, self.num_perm, self.bands, self.rows = threshold, ngram, num_perm, bands, rows
        self.name = name

    @property
    def _columns(self) -> tuple[str, str]:
        return f"{FIRST}:{self.name}", f"_near_similarity:{self.name}"

    def prepare(self, ds: ray.data.Dataset, inputs, pieces: int) -> ray.data.Dataset:
        ranks = {s: i for i, s in enumerate(sorted(f.uri for f in inputs.files))}
        kwargs = dict(ranks=ranks, ngram=self.ngram, num_perm=self.num_perm, bands=self.bands, rows=self.rows)
        signed = ds.map_batches(signature_rows, batch_format="pyarrow", fn_kwargs=kwargs).materialize()
        schema = signature_rows(CANONICAL.empty_table(), **kwargs).schema
        # an input without rows has no blocks: one empty block keeps every step's shape
        blocks = signed.to_arrow_refs() or [ray.put(schema.empty_table())]
        parts = partitions(signed.size_bytes())
        pair_refs = self._bucket(blocks, signed.count())
        del signed
        splits = [split.options(num_returns=parts).remote(block, KEY, parts) for block in blocks]
        sig = [gather.remote(schema, *[s[p] for s in splits]) for p in range(parts)]
        splits = [split.options(num_returns=parts).remote(pairs, KEY, parts) for pairs in pair_refs]
        halves = [first_side.options(num_returns=parts + 1).remote(sig[p], parts, *[s[p] for s in splits])
                  for p in range(parts)]
        verified = [verify.options(num_returns=parts + 1).remote(sig[p], self.threshold, parts, *[h[p] for h in halves])
                    for p in range(parts)]
        del blocks, pair_refs, splits
        candidates = sum(ray.get([h[parts] for h in halves]))
        screened, pairs = np.sum(ray.get([v[parts] for v in verified]), axis=0).tolist()
        labels, rounds = self._components([adjacency.remote(*[v[p] for v in verified]) for p in range(parts)],
                                          parts)
        del halves, verified
        found = [roots.options(num_returns=parts).remote(labels[p], sig[p], parts) for p in range(parts)]
        named = [name_drops.remote(sig[p], *[f[p] for f in found]) for p in range(parts)]
        drops, clusters = sum(ray.get([n[1] for n in named])), sum(ray.get([n[2] for n in named]))
        print(f"{self.name}: {candidates:,} candidate pairs, {screened:,} after their sketches, "
              f"{pairs:,} at Jaccard >= {self.threshold}: {drops:,} near-duplicates of {clusters:,} reviews "
              f"({parts} parts, clusters in {rounds} rounds)", file=sys.stderr)
        of, similarity = self._columns
        return ds.map_batches(Drops.build([n[0] for n in named], drops, DROPS).attach, batch_format="pyarrow",
                              fn_kwargs={"ranks": ranks, "names": {"of": of, "similarity": similarity}})

    @staticmethod
    def _components(states: list[ray.ObjectRef], parts: int) -> tuple[list[ray.ObjectRef], int]:
        """Min-label propagation over the parts until no label falls: a round per step of a
        cluster's longest path from its first row, and one more. Returns the states and the rounds."""
        messages, start = [[] for _ in range(parts)], True
        for rounds in itertools.count(1):
            out = [propagate.options(num_returns=parts + 2).remote(parts, states[p], start, *messages[p])
                   for p in range(parts)]
            states, start = [o[0] for o in out], False
            messages = [[o[1 + p] for o in out] for p in range(parts)]
            if sum(ray.get([o[parts + 1] for o in out])) == 0:
                return states, rounds

    def _bucket(self, blocks: list[ray.ObjectRef], n: int) -> list[ray.ObjectRef]:
        """The bucket pairs of every band, a round of bands at a time: the object store holds
        `ROUND_BYTES_PER_CPU` of band rows per CPU at most, each part of a round at most
        `PARTITION_BYTES`."""
        cpus = int(ray.cluster_resources().get("CPU", 1))
        per_round = max(1, min(self.bands, cpus * ROUND_BYTES_PER_CPU // max(1, n * BAND_ROW_BYTES)))
        parts = max(2 * cpus, -(-n * per_round * BAND_ROW_BYTES // PARTITION_BYTES))
        pair_refs = []
        for first in range(0, self.bands, per_round):
            last = min(first + per_round, self.bands)
            splits = [split_bands.options(num_returns=parts).remote(block, self.bands, parts, first, last)
                      for block in blocks]
            pairs = [bucket_pairs.remote(*[split[p] for split in splits]) for p in range(parts)]
            del splits
            ray.wait(pairs, num_returns=len(pairs), fetch_local=False)  # this round's band rows are freed
            pair_refs += pairs
        return pair_refs

    def apply(self, batch):
        of, similarity = self._columns
        if of not in batch.column_names:
            raise RuntimeError("near_dedup needs NearDedup.prepare(dataset) to run before the filter stage")
        keep = pc.is_null(batch[of]).to_numpy(zero_copy_only=False)
        return keep, {"near_duplicate_of": batch[of], "near_similarity": batch[similarity]}

