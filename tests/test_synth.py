"""The template corpus: deterministic, ratings that follow the adjective, realistic lengths."""

import json

from reviewlm import words
from reviewlm.synth import synth_rows, write_synth


def test_same_seed_same_corpus_other_seed_other_corpus():
    assert synth_rows(200, seed=1).equals(synth_rows(200, seed=1))
    assert not synth_rows(200, seed=1).equals(synth_rows(200, seed=2))


def test_ratings_follow_the_adjective():
    table = synth_rows(2000, seed=0).to_pylist()
    for row in table:
        last = row["text"].rstrip(".").split()[-1].lower()
        if last in words.WANTED:
            assert row["rating"] in (4, 5)
        elif last in words.UNWANTED:
            assert row["rating"] in (1, 2)
        elif last in words.NEUTRAL:
            assert row["rating"] == 3
        assert row["brand"] in row["text"].lower() and row["product"] in row["text"].lower()


def test_padding_gives_realistic_lengths():
    lengths = [len(r["text"].split()) for r in synth_rows(500, min_words=20, max_words=150).to_pylist()]
    assert min(lengths) >= 20 and max(lengths) <= 160 and max(lengths) > 100


def test_write_synth_writes_shards_and_manifest(tmp_path):
    manifest = write_synth(str(tmp_path / "c"), 101, shards=3, fmt="jsonl")
    parts = sorted((tmp_path / "c").glob("part-*.jsonl"))
    assert len(parts) == 3 and manifest["counts"]["rows"] == 101
    rows = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
    assert len(rows) == 101 and len({r["id"] for r in rows}) == 101
    assert (tmp_path / "c" / "_SUCCESS").exists() and not (tmp_path / "c" / "_temporary").exists()
