"""Near-duplicate reviews: MinHash LSH over word n-grams, clusters as connected components.

What two reviews are compared on: the text in Unicode NFKC, lower case, every run of
characters that are neither letters, digits nor whitespace turned into a space, split on
whitespace; its set of word `ngram`s (a review of fewer words is one n-gram of all of them).
Their similarity is the Jaccard index of those sets.

`NearDedup.prepare` finds the clusters in four steps, none of which gathers rows in the driver:

1. **signatures** (Ray Data map tasks, materialized): each parsed review's key, id, the
   distinct 32-bit hashes of its n-grams, and its MinHash signature (`rensa`, seeded, so the
   same on every worker) kept as a sketch, 8 bits of each value.
2. **buckets** (Ray tasks): each block's sketches cut into LSH bands and its (band hash, key)
   rows into parts by band hash; a task per part finds the rows that share a band hash and
   pairs each row of a bucket of two or more with the bucket's first row. A round of bands
   at a time, so that the object store never holds more than 32 MB of band rows per CPU.
   Ray Data's hash repartition did the same in 4.7 s of a 24 s job on 200,000 reviews (it
   starts a pool of aggregator actors); these tasks take 0.4 s.
3. **verification and clusters** (a task per signature block picks the candidate rows where
   the block lives; one task, as DataTrove's cluster stage, takes the pairs and those rows): a
   pair whose sketches put it far below the threshold, then one whose exact Jaccard is below
   it, is dropped (LSH's false positives); union-find joins the rest into connected
   components (A~B and B~C make one cluster even when A and C are further apart).
4. the filter stage's own pass looks each row up in the table of rows to drop (broadcast
   through the object store): every member of a cluster but its first (smallest source
   path, then record number: the order `dedup` uses) is dropped, with the first's id and
   their exact Jaccard similarity.

The row key is an int64: the rank of the row's source path among the job's inputs, then
its record number; its order is the `dedup` order.
"""

from __future__ import annotations

import hashlib
import sys
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from reviewlm.filters.base import Filter
from reviewlm.io.layout import CANONICAL

SEED = 1  # MinHash permutations and band hashes: fixed, so they agree across workers and runs
KEY, BAND, FIRST = "_near_key", "_near_band", "_near_first"
GRAMS, SKETCH = "_near_grams", "_near_sketch"
SCREEN_SIGMAS = 5  # how far below the threshold the screen's estimate may fall and the pair still be verified
PARTITION_BYTES = 64 << 20  # of band rows per bucket task
ROUND_BYTES_PER_CPU = 32 << 20  # of band rows in the object store at once
BUCKETED = pa.schema([(BAND, pa.uint64()), (KEY, pa.int64())])
BAND_ROW_BYTES = sum(f.type.byte_width for f in BUCKETED)  # a band hash and a row key
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
    return _fmix(np.concatenate([grams[full], whole])[order]), np.r_[0, np.cumsum(counts)]


def _fmix(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: n-grams that share words get unrelated hashes."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def row_keys(batch: pa.Table, ranks: dict[str, int]) -> np.ndarray:
    """Each row's int64 key: its source's rank, then its record number."""
    rank = np.array([ranks[s] for s in batch["source"].to_pylist()], dtype=np.int64)
    return (rank << 32) | batch["_row"].to_numpy(zero_copy_only=False).astype(np.int64)


def _usable(batch: pa.Table) -> np.ndarray:
    return pc.and_(pc.is_null(batch["_error"]), pc.is_valid(batch["text"])).to_numpy(zero_copy_only=False)


def signature_rows(batch: pa.Table, *, ranks: dict, ngram: int, num_perm: int, bands: int, rows: int) -> pa.Table:
    """One row per parsed review with words: its key, id, the distinct hashes of its n-grams,
    sorted and kept to 32 bits (two n-grams of a pair of 100-word reviews collide with odds of
    about 1 in 400,000), and its sketch: the low 8 bits of the `bands` x `rows` MinHash values
    its LSH bands are cut from (b-bit MinHash: two values of a pair at Jaccard J are equal
    with probability J + (1 - J) / 256)."""
    usable = _usable(batch)
    grams, offsets = gram_hashes(batch["text"].filter(pa.array(usable)), ngram)
    signed = np.diff(offsets) > 0  # a text without words has no signature
    sketch = minhash_sketches(grams, offsets, num_perm, bands * rows)[signed]
    values, offsets = _distinct((grams >> np.uint64(32)).astype(np.uint32), offsets)
    return pa.table([pa.array(row_keys(batch, ranks)[usable][signed]), batch["id"].filter(pa.array(usable)).filter(
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
    part = (h % np.uint64(parts)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    cuts = np.searchsorted(part[order], np.arange(parts + 1))
    return [pa.table({BAND: pa.array(h[order[a:b]]), KEY: pa.array(keys[order[a:b]])})
            for a, b in zip(cuts[:-1], cuts[1:])]


@ray.remote
def bucket_pairs(*parts: pa.Table) -> pa.Table:
    """(row key, key of its bucket's first row) for the rows of every bucket of two or more in
    one part of every block."""
    block = pa.concat_tables(parts) if parts else BUCKETED.empty_table()
    bands, keys = block[BAND].to_numpy(), block[KEY].to_numpy()
    order = np.lexsort((keys, bands))
    bands, keys = bands[order], keys[order]
    starts = np.flatnonzero(np.r_[len(bands) > 0, bands[1:] != bands[:-1]])
    first = np.repeat(keys[starts], np.diff(np.r_[starts, len(bands)]))
    member = first != keys
    return pa.table({KEY: pa.array(keys[member]), FIRST: pa.array(first[member])})


def _sorted_distinct(x: np.ndarray) -> np.ndarray:
    """`np.unique` by a sort: numpy 2.4's hash-based `unique` took 2.0 s on 2.3M int64 keys, a sort 0.03 s."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


def _unique_pairs(blocks: list[pa.Table], keys: np.ndarray) -> np.ndarray:
    """The distinct pairs of `blocks`, as positions in the sorted `keys`."""
    table = pa.concat_tables(blocks)
    a, b = np.searchsorted(keys, table[KEY].to_numpy()), np.searchsorted(keys, table[FIRST].to_numpy())
    packed = _sorted_distinct(a.astype(np.int64) << 32 | b)
    return np.stack([packed >> 32, packed & 0xFFFFFFFF], axis=1)


@ray.remote
def candidate_keys(*blocks: pa.Table) -> np.ndarray:
    """The sorted keys of every row in a candidate pair."""
    return _sorted_distinct(np.concatenate([b[c].to_numpy() for b in blocks for c in (KEY, FIRST)]))


@ray.remote
def pick(block: pa.Table, keys: np.ndarray, columns: list[str]) -> pa.Table:
    """The key and `columns` of the rows of a block of signatures whose keys are in the sorted `keys`."""
    mine = block[KEY].to_numpy()
    at = np.minimum(np.searchsorted(keys, mine), max(len(keys) - 1, 0))
    return block.select([KEY, *columns]).filter(pa.array(keys[at] == mine if len(keys) else np.zeros(len(mine), bool)))


def _in_key_order(blocks: list[pa.Table]) -> pa.Table:
    rows = pa.concat_tables(blocks)
    return rows.take(pa.array(np.argsort(rows[KEY].to_numpy()))).combine_chunks()


def _sketches_in_key_order(blocks: list[pa.Table]) -> tuple[np.ndarray, np.ndarray]:
    """The keys and sketches of `pick` blocks in key order, the sketches copied once (an Arrow
    take of 670,000 rows' sketches held twice their 90 MB)."""
    keys = np.concatenate([b[KEY].to_numpy() for b in blocks])
    order = np.argsort(keys)
    at = np.empty_like(order)
    at[order] = np.arange(len(order))
    width = blocks[0].schema.field(SKETCH).type.list_size
    sketch, start = np.empty((len(keys), width), np.uint8), 0
    for chunk in (c for b in blocks for c in b[SKETCH].chunks):
        sketch[at[start:start + len(chunk)]] = chunk.flatten().to_numpy().reshape(len(chunk), width)
        start += len(chunk)
    return keys[order], sketch


def screen(sketch: np.ndarray, pairs: np.ndarray, threshold: float, chunk: int = 1 << 17) -> np.ndarray:
    """Which pairs (rows of `sketch`) the sketches do not rule out: the share of equal sketch
    values estimates J (two values are equal with probability J + (1 - J) / 256); a pair is
    ruled out where that estimate lies more than `SCREEN_SIGMAS` standard errors below the threshold."""
    width = sketch.shape[1]
    equal = np.concatenate([(sketch[p[:, 0]] == sketch[p[:, 1]]).sum(axis=1)
                            for p in np.split(pairs, range(chunk, len(pairs), chunk))])
    estimate = (equal / width - 1 / 256) / (1 - 1 / 256)
    return estimate >= threshold - SCREEN_SIGMAS * np.sqrt(threshold * (1 - threshold) / width)


@ray.remote(num_returns=3)
def screen_pairs(threshold: float, parts: int, *blocks: pa.Table) -> tuple[np.ndarray, np.ndarray, int]:
    """The candidate pairs (keys) that their sketches do not rule out, the sorted keys of their
    rows, and how many distinct candidate pairs there were: `blocks` are `parts` blocks of
    bucket pairs, then the `pick`ed sketches. Blocks come as arguments, not fetched inside: a
    task blocked in `ray.get` gives up its CPU and Ray starts another worker process."""
    keys, sketch = _sketches_in_key_order(list(blocks[parts:]))
    candidates = _unique_pairs(list(blocks[:parts]), keys)
    screened = keys[candidates[screen(sketch, candidates, threshold)]]
    return screened, _sorted_distinct(screened.ravel()), len(candidates)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| of two sorted arrays of distinct values."""
    both = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - both
    return both / union if union else 1.0


def components(pairs: np.ndarray, n: int) -> np.ndarray:
    """The smallest member of each node's connected component (nodes 0..n-1, edges `pairs`)."""
    label = np.arange(n)
    while True:
        low = np.minimum(label[pairs[:, 0]], label[pairs[:, 1]])
        new = label.copy()
        np.minimum.at(new, pairs[:, 0], low)
        np.minimum.at(new, pairs[:, 1], low)
        while not np.array_equal(new, new[new]):  # pointer jumping: each node straight to its root
            new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


class Candidates:
    """The rows of the screened pairs (`pick` blocks) in key order: keys, ids and n-gram hashes."""

    def __init__(self, blocks: list[pa.Table]):
        rows = _in_key_order(blocks)
        self.keys, self.ids = rows[KEY].to_numpy(), rows["id"]
        grams = rows[GRAMS].chunk(0) if rows.num_rows else pa.array([], pa.list_(pa.uint32()))
        values, offsets = grams.values.to_numpy(), grams.offsets.to_numpy().tolist()
        self.grams = [values[o:e] for o, e in zip(offsets[:-1], offsets[1:])]

    def jaccard(self, pairs: np.ndarray) -> np.ndarray:
        """The exact Jaccard similarity of each pair (of positions)."""
        return np.array([jaccard(self.grams[i], self.grams[j]) for i, j in pairs.tolist()], dtype=np.float64)


COUNTS = ("candidate_pairs", "screened_pairs", "verified_pairs", "clusters", "near_duplicates")


@ray.remote(num_returns=2)
def clusters(screened: np.ndarray, candidates: int, threshold: float, *picked: pa.Table) -> tuple[pa.Table, dict]:
    """The rows to drop (key, the first row's id, their exact Jaccard) and the step's counts.

    One task: verifying the pairs in a task per block measured 1.03x faster on 2 CPUs and
    1.46x the peak memory at 4x the reviews (each task held its own index of the candidates).
    """
    rows = Candidates(list(picked))
    pairs = np.searchsorted(rows.keys, screened)
    pairs = pairs[rows.jaccard(pairs) >= threshold]  # LSH's false positives dropped
    root = components(pairs, len(rows.keys))
    drop = np.flatnonzero(root != np.arange(len(rows.keys)))
    table = pa.table([rows.keys[drop], rows.ids.take(pa.array(root[drop])),
                      rows.jaccard(np.stack([drop, root[drop]], axis=1))], schema=DROPS)
    counts = dict(zip(COUNTS, (candidates, len(screened), len(pairs), len(_sorted_distinct(root[drop])), len(drop))))
    return table, counts


@lru_cache(maxsize=4)
def _get(ref: ray.ObjectRef):
    """An object broadcast to the map tasks, fetched once per worker process."""
    return ray.get(ref)


def attach(batch: pa.Table, *, ranks: dict, drops: ray.ObjectRef, of: str, similarity: str) -> pa.Table:
    """Add the cluster's first row id and the similarity to it, for the rows to drop (null elsewhere)."""
    table = _get(drops)
    keys, mine = table[KEY].to_numpy(), row_keys(batch, ranks)
    at = np.minimum(np.searchsorted(keys, mine), max(len(keys) - 1, 0))
    hit = keys[at] == mine if len(keys) else np.zeros(len(mine), dtype=bool)
    take = pa.array(np.where(hit, at, 0), mask=~hit)
    return batch.append_column(of, table["of"].take(take)).append_column(similarity, table["similarity"].take(take))


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
        # an input without rows has no blocks: one empty block keeps every step's shape
        blocks = signed.to_arrow_refs() or [ray.put(signature_rows(CANONICAL.empty_table(), **kwargs))]
        pair_refs = self._bucket(blocks, signed.count())
        del signed
        candidates = candidate_keys.remote(*pair_refs)
        sketches = [pick.remote(block, candidates, [SKETCH]) for block in blocks]
        screened, needed, n = screen_pairs.remote(self.threshold, len(pair_refs), *pair_refs, *sketches)
        drops, counts = clusters.remote(screened, n, self.threshold,
                                        *[pick.remote(block, needed, ["id", GRAMS]) for block in blocks])
        del blocks, pair_refs, sketches
        c = ray.get(counts)
        print(f"{self.name}: {c['candidate_pairs']:,} candidate pairs, {c['screened_pairs']:,} after their sketches, "
              f"{c['verified_pairs']:,} at Jaccard >= "
              f"{self.threshold}: {c['near_duplicates']:,} near-duplicates of {c['clusters']:,} reviews",
              file=sys.stderr)
        of, similarity = self._columns
        return ds.map_batches(attach, batch_format="pyarrow",
                              fn_kwargs={"ranks": ranks, "drops": drops, "of": of, "similarity": similarity})

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

