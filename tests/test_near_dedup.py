"""near_dedup: MinHash LSH against an exact all-pairs Jaccard oracle, clusters, any layout of the input."""

import json
import re
import unicodedata

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp
from reviewlm.filters import keyed, near_dedup
from reviewlm.filters.keyed import KEY
from reviewlm.filters.near_dedup import (
    DST,
    GRAMS,
    SKETCH,
    SRC,
    NearDedup,
    _distinct,
    _similarities,
    _sketches,
    adjacency,
    gram_hashes,
    jaccard,
    lsh_params,
    screen,
    words,
)
from reviewlm.filters.recipe import parse_recipe
from reviewlm.filters.stage import filter_reviews
from reviewlm.synth import synth_rows

from tests.conftest import run_cli

THRESHOLD = 0.8


def oracle_words(text: str) -> list[str]:
    """The documented normalization, written again with Python's own regular expressions."""
    return re.sub(r"[^\w\s]|_", " ", unicodedata.normalize("NFKC", text).lower()).split()


def ngrams(tokens: list[str], n: int = 5) -> set[str]:
    return {" ".join(tokens[i:i + n]) for i in range(max(1, len(tokens) - n + 1))} if tokens else set()


def test_normalization_and_ngram_hashes():
    assert words(pa.array(["Nike's GREAT shoes!! ", "ﬁt, well-made", None, " ?! "])).to_pylist() == [
        ["nike", "s", "great", "shoes"], ["fit", "well", "made"], None, None]
    grams, offsets = gram_hashes(pa.array(["a b", "", "c"]), 5)  # fewer words in the batch than n
    assert len(grams) == 2 and offsets.tolist() == [0, 1, 1, 2]
    texts = ["a b c d e f g", "A b!", "", "x y z a b c d e f g h", "a b c d e a b c d e", "?!", "a b"]
    grams, offsets = gram_hashes(pa.array(texts), 5)
    sets = [set(grams[offsets[i]:offsets[i + 1]].tolist()) for i in range(len(texts))]
    strings = [ngrams(oracle_words(t)) for t in texts]
    for i in range(len(texts)):  # the same n-grams, and the same ones shared between any two texts
        assert len(sets[i]) == len(strings[i]), texts[i]
        for j in range(len(texts)):
            assert len(sets[i] & sets[j]) == len(strings[i] & strings[j]), (texts[i], texts[j])


def test_each_rows_hashes_are_kept_sorted_once():
    values = np.array([7, 3, 7, 3, 2**32 - 1, 5, 5, 0], dtype=np.uint32)
    kept, offsets = _distinct(values, np.array([0, 4, 4, 5, 8]))  # rows: 7 3 7 3 | (none) | max | 5 5 0
    assert offsets.tolist() == [0, 2, 2, 3, 5] and kept.tolist() == [3, 7, 2**32 - 1, 0, 5]


def test_the_sketch_screen_keeps_pairs_near_the_threshold_and_rules_out_distant_ones():
    """Sketches agreeing in 64, 45 and 30 of 64 values estimate J 1.0, 0.70 and 0.47: at threshold
    0.8 the screen keeps the first two (0.70 is within 5 standard errors, 0.25) and rules out the third."""
    base = np.arange(64, dtype=np.uint8)
    sketch = np.stack([np.where(np.arange(64) < agree, base, base + 100) for agree in (64, 45, 30)])
    assert screen(sketch, np.stack([base] * 3), 0.8).tolist() == [True, True, False]
    assert screen(sketch, np.stack([base] * 3), 0.8, chunk=2).tolist() == [True, True, False]
    grams = pa.array([[1, 3], [1, 2], [5]], pa.list_(pa.uint32()))
    assert _similarities(grams, pa.array([[1, 2], [1, 2], [6]], pa.list_(pa.uint32()))).tolist() == [1 / 3, 1, 0]


def test_sketches_and_grams_are_read_from_chunked_and_sliced_columns():
    def block(keys):
        return pa.table({KEY: pa.array(keys, pa.int64()),
                         SKETCH: pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(keys, 2).astype(np.uint8)), 2),
                         GRAMS: pa.array([[k, k + 1] for k in keys], pa.list_(pa.uint32()))})
    table = pa.concat_tables([block([5, 1]), block([3]), block([7, 2]).slice(1)])
    assert _sketches(table[SKETCH]).tolist() == [[5, 5], [1, 1], [3, 3], [2, 2]]
    sliced = table[GRAMS].combine_chunks().slice(2)
    assert _similarities(sliced, pa.array([[3, 4], [2, 9]], pa.list_(pa.uint32()))).tolist() == [1, 1 / 3]
    assert _sketches(block([])[SKETCH]).shape == (0, 2)


def test_bands_and_rows_catch_a_pair_at_the_threshold_with_95_percent():
    bands, rows = lsh_params(0.8, 128)
    assert (bands, rows) == (18, 7) and 1 - (1 - 0.8**rows) ** bands >= 0.95
    assert 1 - (1 - 0.8 ** (rows + 1)) ** (128 // (rows + 1)) < 0.95  # one more row per band would not
    assert NearDedup(threshold=0.9).bands == lsh_params(0.9, 128)[0]
    with pytest.raises(ValueError, match="at most num_perm"):
        NearDedup(num_perm=64, bands=10, rows=8)


def test_components_are_transitive_and_rooted_at_the_smallest(ray_cluster):
    """Min-label propagation over three parts: a chain 1-3-4 joined through 3, 2-6-5 through 6,
    and a path 10-11-...-19 that takes a round per step."""
    import ray

    edges = np.array([[3, 1], [4, 3], [6, 5], [2, 6], *[[k, k + 1] for k in range(10, 19)]])
    src, dst = np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]]
    parts = 3
    part = keyed.part_of(src, parts)
    states = [adjacency.remote(pa.table({SRC: src[part == p], DST: dst[part == p]})) for p in range(parts)]
    roots, (labels, rounds) = {}, NearDedup._components(states, parts)
    for nodes, _, _, label in ray.get(labels):
        roots.update(zip(nodes.tolist(), label.tolist()))
    assert rounds == 11  # the path's 9 steps, the start, and one round in which no label fell
    assert roots == {1: 1, 3: 1, 4: 1, 2: 2, 5: 2, 6: 2, **{k: 10 for k in range(10, 20)}}
    assert jaccard(np.array([1, 2, 3]), np.array([2, 3, 4])) == 0.5


def test_drops_cut_into_key_ranges_reach_the_rows_of_every_block(ray_cluster, monkeypatch):
    """Drops in hash-partitioned blocks, cut into many key ranges: a block of rows of one file,
    and one of rows of every file, each find theirs and only theirs."""
    import ray

    monkeypatch.setattr(keyed, "PARTITION_BYTES", 2000)  # about 50 drops a range
    schema = pa.schema([(KEY, pa.int64()), ("of", pa.string())])
    keys = np.array([r << keyed.ROW_BITS | k for r in range(3) for k in range(0, 1000, 3)], np.int64)
    table = pa.table([keys, [f"x{k}" for k in keys.tolist()]], schema=schema)
    blocks = [ray.put(t) for t in keyed.cut(table, keyed.part_of(keys, 4), 4)]
    drops = keyed.Drops.build(blocks, len(keys), schema)
    assert len(drops.refs) > 10
    ranks = {"a": 0, "b": 1, "c": 2}
    for source, rows in (["b"] * 1000, range(1000)), (["a", "c", "b"] * 100, range(500, 800)):
        batch = pa.table({"source": source, "_row": pa.array(rows, pa.int64())})
        got = drops.attach(batch, ranks=ranks, names={"of": "dup"})["dup"].to_pylist()
        want = [f"x{ranks[s] << keyed.ROW_BITS | r}" if r % 3 == 0 else None for s, r in zip(source, rows)]
        assert got == want
    none = keyed.Drops.build([ray.put(schema.empty_table())], 0, schema)
    assert none.attach(batch, ranks=ranks, names={"of": "dup"})["dup"].null_count == batch.num_rows


def oracle(texts: list[str], n: int = 5) -> np.ndarray:
    """Exact Jaccard of every pair of texts' word n-gram sets (strings), as a dense matrix."""
    grams = [ngrams(oracle_words(t), n) for t in texts]
    vocab = {g: i for i, g in enumerate(sorted(set().union(*grams)))}
    rows = np.repeat(np.arange(len(grams)), [len(g) for g in grams])
    cols = np.array([vocab[g] for gs in grams for g in gs])
    x = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(grams), len(vocab)))
    both = (x @ x.T).toarray()
    sizes = np.array([len(g) for g in grams])
    return both / (sizes[:, None] + sizes[None, :] - both)


@pytest.mark.slow
def test_against_an_exact_all_pairs_oracle(ray_cluster, tmp_path):
    """3,000 template reviews of 20-80 words, 15% re-posted with one edit (a word, a tail,
    case, sentence order): the rows the job drops against the pairs the oracle finds."""
    table = synth_rows(3000, seed=7, min_words=20, max_words=80, near_copies=0.15)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    filter_reviews([str(tmp_path / "in.jsonl")], str(tmp_path / "out"), recipe=parse_recipe("near_dedup"))
    rejected = pd.read_parquet(tmp_path / "out" / "rejected")
    position = {rid: i for i, rid in enumerate(table["id"].to_pylist())}
    dropped = np.zeros(len(position), dtype=bool)
    dropped[[position[r] for r in rejected["id"]]] = True

    sim = np.tril(oracle(table["text"].to_pylist()), k=-1)  # sim[j, i]: row j with an earlier row i
    best_earlier = sim.max(axis=1)
    must = best_earlier >= THRESHOLD + 0.05
    recall = dropped[must].mean()
    false_drops = (dropped & (best_earlier < THRESHOLD - 0.2)).sum() / dropped.sum()
    assert must.sum() > 250 and recall >= 0.98, (must.sum(), recall)
    assert false_drops == 0, false_drops
    # Every dropped row names an earlier row, and its similarity is the exact Jaccard with it.
    for rid, of, s in zip(rejected["id"], rejected["near_duplicate_of"], rejected["near_similarity"]):
        j, i = position[rid], position[of]
        assert i < j and s == pytest.approx(oracle([table["text"][j].as_py(), table["text"][i].as_py()])[0, 1])
    assert (rejected["dropped_by"] == "near_dedup").all()
    assert (rejected["near_similarity"] >= THRESHOLD - 0.2).all()


CHAIN = [" ".join(f"w{k}" for k in range(start, start + 50)) for start in (1, 4, 7)]  # J 0.88, 0.88; A~C 0.77


@pytest.mark.slow
def test_same_clusters_from_one_file_or_eight_one_cpu_or_two_s3_and_annotate(ray_cluster, s3, tmp_path, monkeypatch):
    """A transitive chain (A~B, B~C, A and C below the threshold) is one cluster kept at A; the
    kept rows are the same from one S3 file, eight local files bucketed a band at a time, and
    the CLI on one CPU."""
    table = synth_rows(800, seed=11, min_words=20, max_words=60, near_copies=0.2)
    rows = table.to_pylist()
    for k, text in enumerate(CHAIN):
        rows[100 + 300 * k]["text"] = text
    lines = [json.dumps(r) + "\n" for r in rows]
    s3.pipe("reviews/near/all.jsonl", "".join(lines).encode())
    for s in range(8):
        (tmp_path / "eight").mkdir(exist_ok=True)
        (tmp_path / "eight" / f"part-{s}.jsonl").write_text("".join(lines[s * 100:(s + 1) * 100]))
    recipe = parse_recipe("all:\n  - non_null\n  - near_dedup: {threshold: 0.8}\n")
    filter_reviews(["s3://reviews/near/all.jsonl"], "s3://reviews/near-out", recipe=recipe)
    with monkeypatch.context() as m:
        m.setattr(near_dedup, "ROUND_BYTES_PER_CPU", 1)  # a round of buckets per band
        filter_reviews([str(tmp_path / "eight")], str(tmp_path / "out8"), recipe=recipe)
    (tmp_path / "r.yaml").write_text("all:\n  - non_null\n  - near_dedup\n")
    res = run_cli("filter", tmp_path / "eight", "--output", tmp_path / "cli", "--recipe", tmp_path / "r.yaml",
                  "--num-cpus", 1, env={"AWS_ENDPOINT_URL": ""})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "near-duplicates" in res.stderr

    def kept(uri):
        return sorted(pd.read_parquet(f"{uri}/kept")["id"])

    whole = kept("s3://reviews/near-out")
    assert whole == kept(str(tmp_path / "out8")) == kept(str(tmp_path / "cli"))
    assert len(whole) < 800 - 100  # the near-copies are gone
    rejected = pd.read_parquet(tmp_path / "out8" / "rejected").set_index("id")
    a, b, c = (rows[100 + 300 * k]["id"] for k in range(3))
    assert a in whole and rejected.loc[b, "near_duplicate_of"] == a == rejected.loc[c, "near_duplicate_of"]
    assert rejected.loc[c, "near_similarity"] == pytest.approx(40 / 52)

    stats = filter_reviews([str(tmp_path / "eight")], str(tmp_path / "ann"), mode="annotate",
                           recipe=parse_recipe("all:\n  - dedup\n  - near_dedup\n")).to_json()
    annotated = pd.read_parquet(tmp_path / "ann" / "kept")
    assert len(annotated) == 800 and stats["would_keep"] == len(whole) == int(annotated["keep"].sum())
    assert (annotated["near_duplicate_of"].notna() == ~annotated["keep"]).all()


@pytest.mark.slow
def test_reviews_without_any_near_copy_are_all_kept(ray_cluster, tmp_path):
    texts = ["one two three", "four five six seven", "", None, "eight nine ten eleven twelve thirteen"]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    stats = filter_reviews([str(tmp_path / "a.jsonl")], str(tmp_path / "out"), recipe=parse_recipe("near_dedup"))
    assert (stats.rows_read, stats.kept, stats.rejected) == (5, 5, 0)
    (tmp_path / "b.jsonl").write_text('{"text": "?!"}\n{"text": null}\n')  # no review with a word
    stats = filter_reviews([str(tmp_path / "b.jsonl")], str(tmp_path / "out2"), recipe=parse_recipe("near_dedup"))
    assert (stats.rows_read, stats.kept, stats.rejected) == (2, 2, 0)
