"""Review dumps in the shapes they are published in, read by the command lines of docs/filter.md;
sniffed .json files, delimiters, encodings, and no success when nothing could be read."""

import gzip
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reviewlm.cli import build_parser, run_filter
from reviewlm.errors import UsageError
from reviewlm.filters.recipe import parse_recipe
from reviewlm.filters.stage import filter_reviews
from reviewlm.io.pieces import plan_pieces
from reviewlm.io.readers import check_inputs
from reviewlm.options import RunOptions

from tests.conftest import run_job

pytestmark = pytest.mark.slow
FILTER_DOCS = Path(__file__).parents[1] / "docs" / "filter.md"
N = 300
TEXTS = ["Great shoes, fit perfectly and café-quality comfort.", "Returned them: the sole came off after a week.",
         'He said "wow", then bought two.']


def text(i: int) -> str:
    return f"{TEXTS[i % 3]} Review number {i}."


def yelp(i):
    return {"review_id": f"KU_O5udG6zpxOg-{i:06d}", "user_id": f"mh_-eMZ6K5RLWhZyISBhwA{i}",
            "business_id": f"XQfwVwDr-v0ZS3_Cb{i % 7}", "stars": float(i % 5 + 1), "useful": i % 3, "funny": 0,
            "cool": 0, "text": text(i), "date": "2018-07-07 22:09:11"}


def amazon2018(i):
    return {"overall": float(i % 5 + 1), "verified": True, "reviewTime": "05 4, 2014", "reviewerID": f"A2IBPI{i}",
            "asin": f"B00{i % 9:07d}", "style": {"Size:": " Large", "Color:": " Black"},
            "reviewerName": "cassandra tu", "reviewText": text(i), "summary": "Five Stars",
            "unixReviewTime": 1399161600, **({"vote": "2"} if i % 4 == 0 else {})}


def amazon2023(i):
    return {"rating": float(i % 5 + 1), "title": "Love them", "text": text(i), "images": [],
            "asin": f"B00YQ6X8E{i % 10}", "parent_asin": f"B00YQ6X8E{i % 5}", "user_id": f"AGKHLEW2SOWH{i}",
            "timestamp": 1588687728923 + i, "helpful_vote": i % 3, "verified_purchase": i % 2 == 0}


def amazon2014(i):
    return {"reviewerID": f"A1KLRMWW2FWPL{i}", "asin": f"000003188{i % 10}", "reviewerName": 'Amazon "cameramom"',
            "helpful": [0, 0], "reviewText": text(i), "overall": float(i % 5 + 1), "summary": "Great tutu",
            "unixReviewTime": 1297468800, "reviewTime": "02 12, 2011"}


def write_shapes(d: Path) -> None:
    """Small files in each published shape, N reviews each."""
    (d / "yelp_academic_dataset_review.json").write_text("".join(json.dumps(yelp(i)) + "\n" for i in range(N)))
    with gzip.open(d / "Clothing_Shoes_and_Jewelry_5.json.gz", "wt") as fh:
        fh.writelines(json.dumps(amazon2018(i)) + "\n" for i in range(N))
    (d / "Clothing_Shoes_and_Jewelry.jsonl").write_text("".join(json.dumps(amazon2023(i)) + "\n" for i in range(N)))
    with gzip.open(d / "reviews_Clothing_Shoes_and_Jewelry.json.gz", "wt") as fh:
        fh.writelines(repr(amazon2014(i)) + "\n" for i in range(N))  # Python literals, as published
    food = pd.DataFrame({"Id": range(1, N + 1), "ProductId": [f"B001E4KFG{i % 10}" for i in range(N)],
                         "UserId": [f"A3SGXH7AUHU8G{i}" for i in range(N)], "ProfileName": "delmartian",
                         "HelpfulnessNumerator": 1, "HelpfulnessDenominator": 1,
                         "Score": [i % 5 + 1 for i in range(N)], "Time": 1303862400, "Summary": "Good Quality",
                         "Text": [text(i) for i in range(N)]})
    food.to_csv(d / "Reviews.csv", index=False)
    pq.write_table(pa.table({"reviewId": [f"gp:AOqpTOH{i}" for i in range(N)], "userName": ["Andrew"] * N,
                             "content": [text(i) for i in range(N)], "score": [i % 5 + 1 for i in range(N)],
                             "thumbsUpCount": [i % 4 for i in range(N)], "at": [pd.Timestamp("2020-01-01")] * N,
                             "appId": [f"com.app{i % 3}" for i in range(N)]}), d / "app_reviews.parquet")
    rows = ["id;text;rating"] + [f"{i};{text(i)};{i % 5 + 1}" for i in range(N)]
    (d / "export.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode("cp1252"))


def gallery() -> list[str]:
    block = FILTER_DOCS.read_text().split("<!-- gallery -->")[1].split("<!-- /gallery -->")[0]
    return [ln for ln in block.splitlines() if ln.startswith(("reviewlm ", "python3 "))]


def test_the_docs_gallery_reads_every_published_shape_row_by_row(ray_cluster, tmp_path, monkeypatch, capsys):
    write_shapes(tmp_path)
    monkeypatch.chdir(tmp_path)
    commands = gallery()
    assert len(commands) == 8
    for line in commands:
        if line.startswith("python3 "):
            subprocess.run(line.replace("python3 ", shlex.quote(sys.executable) + " ", 1), shell=True, check=True)
            continue
        args = build_parser().parse_args(shlex.split(line)[1:])
        stats = run_filter(args)
        assert (stats.rows_read, stats.quarantined) == (N, 0), line
        out = Path(args.output)
        rows = pd.concat([pd.read_parquet(out / r) for r in ("kept", "rejected") if (out / r).exists()])
        assert sorted(rows["rating"]) == sorted(i % 5 + 1 for i in range(N)), line  # 1-5, from floats too
        assert set(rows["text"]) == {text(i) for i in range(N)}, line  # cp1252's é, quotes: all decoded
        if "--product-column" in line:
            assert rows["product"].notna().all(), line
        if "--id-column" in line:
            assert not rows["id"].str.startswith(rows["source"].iloc[0]).any(), line  # the dump's own ids
    assert "yelp_academic_dataset_review.json as JSON Lines" in capsys.readouterr().err

    literal = re.sub(r"amazon2014\.jsonl", "reviews_Clothing_Shoes_and_Jewelry.json.gz", commands[-1])
    args = build_parser().parse_args(shlex.split(literal)[1:] + ["--overwrite"])
    expected = 'all 300 rows quarantined, 300 with "a Python dict literal, not JSON.*convert the file to JSON Lines'
    with pytest.raises(UsageError, match=expected):
        run_filter(args)


def test_a_json_lines_file_named_json_is_split_in_byte_ranges(ray_cluster, tmp_path):
    data = tmp_path / "big.json"
    data.write_text("".join(json.dumps(yelp(i)) + "\n" for i in range(2000)))
    inputs = check_inputs([str(data)], fmt=None)
    assert inputs.files[0].format == "jsonl" and len(plan_pieces(inputs, size=50_000)) > 4
    stats = filter_reviews([str(data)], str(tmp_path / "out"), recipe=parse_recipe("non_null"),
                           run=RunOptions(split_mb=0.05))
    assert (stats.rows_read, stats.quarantined) == (2000, 0)
    assert sorted(pd.read_parquet(tmp_path / "out" / "kept")["text"]) == sorted(text(i) for i in range(2000))


@pytest.mark.parametrize("name,delimiter,encoding", [("latin.csv", ";", "latin-1"), ("tabs.tsv", None, "cp1252"),
                                                    ("excel.tsv", None, "utf-16")])
def test_delimiters_and_encodings(ray_cluster, tmp_path, name, delimiter, encoding):
    sep = delimiter or "\t"
    lines = [f"id{sep}text{sep}rating"] + [f"{i}{sep}Très bien, à 5 £ {i}{sep}{i % 5 + 1}" for i in range(500)]
    (tmp_path / name).write_bytes(("\n".join(lines) + "\n").encode(encoding))
    stats = filter_reviews([str(tmp_path / name)], str(tmp_path / "out"), recipe=parse_recipe("non_null"),
                           run=RunOptions(delimiter=delimiter, encoding=encoding, split_mb=0.004))
    assert (stats.rows_read, stats.quarantined) == (500, 0)
    assert sorted(pd.read_parquet(tmp_path / "out" / "kept")["text"]) == sorted(f"Très bien, à 5 £ {i}"
                                                                               for i in range(500))


def test_nothing_readable_is_an_error_with_a_hint_locally_and_on_s3(ray_cluster, s3, tmp_path):
    """A UTF-16 export read as UTF-8, a ';' export read as ',', broken JSON: exit 2 with the flag that
    fixes it; a tenth broken: a warning, and every row accounted for."""
    lines = ["text\trating"] + [f"Très bien {i}\t5" for i in range(50)]
    (tmp_path / "excel.tsv").write_bytes(("\n".join(lines) + "\n").encode("utf-16"))
    (tmp_path / "r.yaml").write_text("non_null\n")
    res = run_job("filter", tmp_path / "excel.tsv", "--output", tmp_path / "out", "--recipe", tmp_path / "r.yaml")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("reviewlm: error: nothing in ")
    assert 'all 51 rows quarantined, 51 with "invalid UTF-8 at byte N": ' in res.stderr
    assert "pass --encoding" in res.stderr and not (tmp_path / "out").exists()

    s3.pipe("reviews/sc/export.csv", "text;rating\nGut;5\nSchlecht;1\n".encode("cp1252"))
    with pytest.raises(UsageError, match="its fields are separated by ';', not ','"):
        filter_reviews(["s3://reviews/sc/export.csv"], "s3://reviews/sc-out", recipe=parse_recipe("non_null"))
    s3.pipe("reviews/sc/broken.jsonl", b"{broken\n" * 20)
    with pytest.raises(UsageError, match=r'all 20 rows quarantined, 20 with "invalid JSON.*pass --format'):
        filter_reviews(["s3://reviews/sc/broken.jsonl"], "s3://reviews/sc-out", recipe=parse_recipe("non_null"))
    assert not s3.exists("reviews/sc-out")

    (tmp_path / "some.jsonl").write_bytes(b'{"text": "fine"}\n' * 16 + b"{broken\n" * 2)
    res = run_job("filter", tmp_path / "some.jsonl", "--output", tmp_path / "some", "--recipe", tmp_path / "r.yaml")
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'reviewlm: warning: 2 of 18 rows quarantined, 2 with "invalid JSON' in res.stderr
    assert json.loads((tmp_path / "some" / "stats.json").read_text())["quarantined"] == 2


def test_train_and_score_read_a_semicolon_cp1252_export(ray_cluster, tmp_path):
    """--delimiter and --encoding reach the train job and the score job's corpus too."""
    rows = ["text;rating"] + [f"Les chaussures Nike sont très {('bien', 'jolies', 'chères')[i % 3]} n°{i};{i % 5 + 1}"
                              for i in range(120)]
    (tmp_path / "export.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode("cp1252"))
    flags = ["--delimiter", ";", "--encoding", "cp1252"]
    res = run_job("train", "--task", "stars", "--data", tmp_path / "export.csv", "--output", tmp_path / "t",
                  "--model", "tiny", "--max-steps", 2, "--num-workers", 1, *flags)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert (metrics["rows"]["read"], metrics["rows"]["quarantined"]) == (120, 0)
    res = run_job("score", "--task", "stars", "--model", f"s={tmp_path / 't' / 'model'}", "--corpus",
                  tmp_path / "export.csv", "--output", tmp_path / "s", *flags)
    assert res.returncode == 0, res.stderr[-3000:]
    stars = json.loads((tmp_path / "s" / "summary.json").read_text())["models"]["s"]["stars"]
    assert stars["rows"] == 120 and sum(map(sum, stars["confusion_matrix"])) == 120
