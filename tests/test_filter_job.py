"""The filter job end to end on a local Ray cluster, reading and writing S3 (moto) and disk."""

import gzip
import io
import json
import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from nltk.sentiment.vader import SentimentIntensityAnalyzer
from reviewlm.filters import vader
from reviewlm.filters.recipe import parse_recipe
from reviewlm.filters.stage import filter_reviews
from reviewlm.io.pieces import plan_pieces
from reviewlm.io.readers import check_inputs
from reviewlm.io.storage import read_success
from reviewlm.options import RunOptions

from tests.conftest import run_cli, run_job

pytestmark = pytest.mark.slow

RECIPE = "all:\n  - non_null\n  - dedup\n  - brand\n  - sentiment: {min_compound: 0.05}\n"
GOOD = ["Nike shoes are very comfortable", "Adidas hoodies are ugly and awful", "I love my Puma sneakers",
        "Plain socks, nothing to say", "Reebok trainers are great value", "  ", "Nike   SHOES are very comfortable"]


def good_rows(n, offset=0):
    return [{"id": f"r{offset + i}", "text": GOOD[i % len(GOOD)] + ("" if i % 3 else f" {i}"),
             "rating": i % 5 + 1} for i in range(n)]


def csv_bytes(rows):
    lines = ["id,text,rating"] + [f'{r["id"]},"{r["text"]}",{r["rating"]}' for r in rows]
    return ("\n".join(lines) + "\n").encode()


# Each broken record with the file it goes into: 10 kinds.
BROKEN_CSV = [b'b1,"broken"quote,5', b"b2,too,many,fields", b"b3,too few", b"b4,caf\xe9 latte,5",
              b"b5,bad rating,five", b"b6,bad rating,9"]
BROKEN_JSONL = [b"{not json", b"[1, 2, 3]", b'{"id": "b9", "text": 42}']


@pytest.fixture(scope="module")
def corpus(s3):
    """Files of every format on S3, with broken records and duplicates across files."""
    a, b, c, d = good_rows(40), good_rows(30, 100), good_rows(20, 200), good_rows(10, 300)
    s3.pipe("reviews/in/a.csv",
            csv_bytes(a[:20]) + b"\n".join(BROKEN_CSV) + b"\n" + csv_bytes(a[20:]).split(b"\n", 1)[1])
    s3.pipe("reviews/in/b.jsonl.gz", gzip.compress(
        b"\n".join([json.dumps(r).encode() for r in b] + BROKEN_JSONL) + b"\n"))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(c), buf)
    s3.pipe("reviews/in/c.parquet", buf.getvalue())
    s3.pipe("reviews/in/d.json", json.dumps(d + ["not an object"]).encode())
    s3.pipe("reviews/in/e.parquet", b"PAR1 garbage, not parquet")
    good = a + b + c + d
    return {"good": good, "broken": len(BROKEN_CSV) + len(BROKEN_JSONL) + 1 + 1,
            "sources": {"a.csv": a, "b.jsonl.gz": b, "c.parquet": c, "d.json": d}}


def oracle(rows):
    """Expected kept ids, computed the plain way (stock nltk VADER) over rows in (source, row) order."""
    sia, seen, kept = vader.load(SentimentIntensityAnalyzer), set(), []
    for r in rows:
        text = r["text"]
        if not text.strip():
            continue
        norm = " ".join(text.lower().split())
        if norm in seen:
            continue
        seen.add(norm)
        if not re.search(r"\b(nike|adidas|puma|reebok|asics|fila|under armour|converse|new balance|vans)\b", norm):
            continue
        if sia.polarity_scores(text)["compound"] >= 0.05:
            kept.append(r["id"])
    return set(kept)


def test_every_row_is_accounted_for_reading_and_writing_s3(ray_cluster, corpus, s3):
    stats = filter_reviews(["s3://reviews/in/"], "s3://reviews/out", recipe=parse_recipe(RECIPE)).to_json()
    n_good = len(corpus["good"])
    assert stats["rows_read"] == n_good + corpus["broken"]
    assert stats["quarantined"] == corpus["broken"]
    assert stats["kept"] + stats["rejected"] + stats["quarantined"] == stats["rows_read"]

    kept = pd.read_parquet("s3://reviews/out/kept", filesystem=None)
    ordered = [r for name in sorted(corpus["sources"]) for r in corpus["sources"][name]]
    assert set(kept["id"]) == oracle(ordered)
    assert len(kept) == stats["kept"]

    rejected = pd.read_parquet("s3://reviews/out/rejected")
    assert len(rejected) == stats["rejected"]
    assert set(rejected["dropped_by"]) <= {"non_null", "dedup", "brand", "sentiment"}
    dups = rejected[rejected["dropped_by"] == "dedup"]
    assert len(dups) > 0 and dups["duplicate_of"].notna().all()
    assert rejected[rejected["dropped_by"] == "sentiment"]["vader_compound"].lt(0.05).all()

    quarantine = pd.read_parquet("s3://reviews/out/quarantine")
    assert len(quarantine) == corpus["broken"] and quarantine["error"].str.len().gt(0).all()
    assert any("b4,caf\\xe9" in raw for raw in quarantine["raw"])
    assert any("unreadable Parquet" in e for e in quarantine["error"])

    funnel = stats["filters"]
    assert [f["name"] for f in funnel] == ["non_null", "dedup", "brand", "sentiment"]
    assert funnel[0]["seen"] == n_good and funnel[-1]["passed"] == stats["kept"]
    assert all(f["seen"] == f["passed"] + f["dropped"] for f in funnel)
    assert all(a["passed"] == b["seen"] for a, b in zip(funnel, funnel[1:]))
    manifest = read_success("s3://reviews/out")
    assert manifest["counts"]["rows_read"] == stats["rows_read"] and len(manifest["inputs"]) == 5
    assert json.loads(s3.cat("reviews/out/stats.json")) == stats
    assert not s3.exists("reviews/out/_temporary")


def test_a_file_read_in_byte_ranges_keeps_rejects_and_quarantines_the_same_rows(ray_cluster, s3, tmp_path):
    """One CSV on S3 with duplicates, quoted newlines and broken records, read whole and in ~400-byte ranges."""
    rows = good_rows(150)
    for r in rows[::9]:
        r["text"] = r["text"] + ', said\n""everyone""'  # a quoted field over two lines
    lines = csv_bytes(rows).split(b"\n")
    for i, broken in enumerate(BROKEN_CSV):
        lines.insert(10 + 20 * i, broken)
    s3.pipe("reviews/split/r.csv", b"\n".join(lines))
    size = 400 / 2**20
    assert len(plan_pieces(check_inputs(["s3://reviews/split/r.csv"]), int(size * 2**20))) > 10
    seen = {}
    for name, mb in (("whole", 64), ("ranges", size)):
        out = tmp_path / name
        stats = filter_reviews(["s3://reviews/split/r.csv"], str(out), recipe=parse_recipe(RECIPE),
                               run=RunOptions(split_mb=mb)).to_json()
        routes = {route: pd.read_parquet(out / route).sort_values("id") for route in ("kept", "rejected", "quarantine")}
        seen[name] = ({k: v for k, v in stats.items() if not k.endswith("_s")},
                      {route: t["id"].tolist() for route, t in routes.items()},
                      routes["rejected"][["id", "dropped_by", "duplicate_of"]].to_dict("records"),
                      routes["quarantine"][["id", "source", "row", "error"]].to_dict("records"))
    assert seen["whole"] == seen["ranges"]
    assert seen["whole"][0]["quarantined"] == len(BROKEN_CSV) and seen["whole"][0]["kept"] > 0
    assert any("\n" in t for t in pd.read_parquet(tmp_path / "ranges" / "kept")["text"])


def test_annotate_mode_keeps_every_row_with_scores(ray_cluster, corpus, tmp_path):
    stats = filter_reviews(["s3://reviews/in/a.csv"], str(tmp_path / "out"), recipe=parse_recipe(RECIPE),
                           mode="annotate").to_json()
    kept = pd.read_parquet(tmp_path / "out" / "kept")
    assert stats["rejected"] == 0 and len(kept) == 40 and stats["quarantined"] == len(BROKEN_CSV)
    assert kept["vader_compound"].notna().all()  # every step scored every parsed row
    assert stats["would_keep"] == int(kept["keep"].sum())
    assert (kept.loc[~kept["keep"], "dropped_by"].notna()).all()


def test_same_kept_set_with_one_or_two_cpus_and_overwrite(ray_cluster, tmp_path):
    """The same rows kept by a job on a Ray of its own with one CPU as on the test run's two."""
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in good_rows(300)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    kept = []
    for cpus, run, own in ((1, run_cli, ["--num-cpus", 1]), (2, run_job, [])):
        out = tmp_path / f"out{cpus}"
        res = run("filter", data, "--output", out, "--recipe", recipe, *own)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "brand" in res.stdout and (out / "_SUCCESS").exists()
        kept.append(sorted(pd.read_parquet(out / "kept")["id"]))
    assert kept[0] == kept[1] and len(kept[0]) > 0
    res = run_job("filter", data, "--output", tmp_path / "out1", "--recipe", recipe)
    assert res.returncode == 2 and "already exists" in res.stderr


@pytest.mark.slow
def test_dedup_on_a_corpus_without_repeats_keeps_every_row(ray_cluster, tmp_path):
    """A join partition that meets no repeated text has no first-occurrence column: still decided."""
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"review number {i} of many"}) + "\n"
                                               for i in range(300)))
    stats = filter_reviews([str(tmp_path / "in.jsonl")], str(tmp_path / "out"),
                           recipe=parse_recipe("all:\n  - dedup\n"))
    assert (stats.kept, stats.rejected, stats.filters[0].dropped) == (300, 0, 0)
