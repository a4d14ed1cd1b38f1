"""The bad-input catalogue: every kind is quarantined with a reason, reported in the output,
or stops the job with one stderr line and exit code 2; never a traceback, no row lost."""

import json
import os

import pandas as pd
import pytest

from tests.conftest import FaultyS3, assert_one_line, run_cli, run_job

ONE_JOB = pytest.mark.slow


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ok.csv").write_text("text,rating\nNike shoes are great,5\n")
    (tmp_path / "notext.csv").write_text("body,rating\nNike shoes are great,5\n")
    (tmp_path / "semicolon.csv").write_bytes("text;rating\nNike shoes are très great;5\n".encode("cp1252"))
    (tmp_path / "notext.jsonl").write_text('{"body": "Nike shoes"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("text\nhello\n")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "bad.yaml").write_text("all:\n  - non_null\n  - sentimnt\n")
    (tmp_path / "code.yaml").write_text('all:\n  - non_null\n  - !!python/object/apply:os.system ["touch pwned"]\n')
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "kept").write_text("x")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text("{}")
    (tmp_path / "noweights" / "pytorch_model.bin").write_bytes(b"a pickle we will not load")
    (tmp_path / "noprompts.txt").write_text("# only a comment\n\n")
    (tmp_path / "broken.jsonl").write_text("{'text': 'Nike shoes'}\n" * 3)
    return tmp_path


CASES = [
    (["filter", "{d}/missing.csv"], "input not found"),
    (["filter", "{d}/emptydir"], "no review files under"),
    (["filter", "{d}/empty.jsonl"], "input is empty"),
    (["filter", "{d}/notext.csv"], "no text column 'text'"),
    (["filter", "{d}/notext.jsonl"], "no text column 'text'"),
    (["filter", "{d}/ok.csv", "--text-column", "review"], "no text column 'review'"),
    (["filter", "{d}/notes.txt"], "cannot tell the format"),
    (["filter", "{d}/ok.csv", "--recipe", "{d}/bad.yaml"], "bad.yaml:3: unknown filter 'sentimnt'"),
    (["filter", "{d}/ok.csv", "--recipe", "{d}/code.yaml"], "code.yaml:3: expected a filter name"),
    (["filter", "{d}/ok.csv", "--recipe", "{d}/nope.yaml"], "cannot read recipe"),
    (["filter", "{d}/ok.csv", "--mode", "keep"], "invalid choice: 'keep'"),
    (["filter", "{d}/ok.csv", "--output", "{d}/exists"], "already exists: pass --overwrite"),
    (["filter", "s3://no-such-bucket/reviews/"], "no-such-bucket"),
    (["train", "--data", "{d}/ok.csv", "--model", "{d}/noweights"], "no .safetensors weights"),
    (["train", "--data", "{d}/notext.csv"], "no text column 'text'"),
    (["train", "--data", "{d}/semicolon.csv"], "its fields are separated by ';', not ',': pass --delimiter ';'"),
    (["score", "--model", "x=tiny", "--corpus", "{d}/semicolon.csv"], "its fields are separated by ';', not ','"),
    (["filter", "{d}/ok.csv", "--encoding", "klingon"], "--encoding: unknown encoding 'klingon'"),
    (["filter", "{d}/ok.csv", "--delimiter", ";;"], "a delimiter is one character other than a quote or newline"),
    (["score", "--model", "x=tiny", "--prompts", "{d}/noprompts.txt"], "has no prompts"),
    (["score", "--model", "x={d}/noweights"], "no .safetensors weights"),
    (["synth", "--rows", "0"], "--rows and --shards must be at least 1"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a[:2]) + m[:12] for a, m in CASES])
def test_bad_input_exits_2_with_one_line(files, ray_cluster, argv, message):
    argv, message = [a.format(d=files) for a in argv], message.format(d=files)
    if "--output" not in argv:
        argv += ["--output", str(files / "out")]
    assert_one_line(run_job(*argv), message)
    assert not (files / "out").exists() and not (files / "pwned").exists()


def test_the_installed_script_exits_2_with_one_line(files):
    """The console script itself: exit code 2, one line on its stderr, before Ray starts."""
    assert_one_line(run_cli("filter", files / "missing.csv", "--output", files / "out"), "input not found")
    assert_one_line(run_cli("train", "--data", files / "notext.csv", "--output", files / "out"),
                    "no text column 'text'")
    assert not (files / "out").exists()


def test_a_corpus_no_model_can_score_stops_before_any_model_loads(files):
    """Found by the corpus's quarantine pass once Ray is up: the error ends the console, after
    only Ray's log folder (no model actor was started, so none of their lines)."""
    res = run_cli("score", "--model", "x=tiny", "--corpus", files / "broken.jsonl", "--num-cpus", 2,
                  "--output", files / "out")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("Ray logs: "), res.stderr[-3000:]
    assert lines[1] == (f"reviewlm: error: nothing in the corpus {files}/broken.jsonl could be read: all 3 rows "
                        "quarantined, 3 with \"a Python dict literal, not JSON (as in Amazon's older review dumps)\": "
                        "convert the file to JSON Lines first (docs/filter.md: real dumps as they are published)")
    assert not (files / "out").exists()


def test_wrong_credentials_exit_2_with_one_line(s3, tmp_path):
    s3.pipe("reviews/creds/a.jsonl", b'{"text": "Nike shoes are great"}\n')

    def fault(method, path, headers):  # what S3 answers to an unknown access key
        if "Credential=WRONGKEY/" in headers.get("Authorization", ""):
            return 403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."

    proxy = FaultyS3(os.environ["AWS_ENDPOINT_URL"], fault)
    res = run_cli("filter", "s3://reviews/creds/", "--output", tmp_path / "out",
                  env={"AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": "WRONGKEY"})
    assert_one_line(res, "cannot read input s3://reviews/creds/: permission denied")
    assert proxy.failed and "WRONGKEY" not in res.stderr


# Broken or odd records of every kind, with good rows between them: (raw line, reason in quarantine).
BROKEN_CSV = [
    (b'q1,"broken"quote,5', "',' expected after '\"'"),
    (b"f1,too,many,fields", "expected 3 fields, got 4"),
    (b"f2,too few", "expected 3 fields, got 2"),
    (b"u1,caf\xe9 latte,5", "invalid UTF-8 at byte 6"),
    (b"r1,Nike shoes are great,9", "rating '9' is not an integer from 1 to 5"),
    (b"r2,Nike shoes are great,five", "rating 'five' is not a number"),
    (b"h1," + b"nike shoes " * 1_000_000 + b",5", "text has 11,000,000 characters"),  # a 10 MB row
]
BROKEN_JSONL = [(b"{not json", "invalid JSON"), (b"[1, 2]", "line is a JSON list, not an object"),
                (b'{"id": "n1", "text": 42}', "text must be a string, not int")]


def good(prefix, n):
    return [f"{prefix}{i},Nike shoes are very comfortable {i},{i % 5 + 1}".encode() for i in range(n)]


@ONE_JOB
def test_broken_records_are_quarantined_and_every_row_is_accounted_for(ray_cluster, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.csv").write_bytes(b"\n".join([b"id,text,rating", *good("a", 5), *(raw for raw, _ in BROKEN_CSV),
                                          *good("b", 5), b'o1,"a quote that never closes,5', *good("c", 5)]) + b"\n")
    (d / "b.jsonl").write_bytes(b"\n".join([json.dumps({"id": f"j{i}", "text": "Adidas hoodies rock"}).encode()
                                            for i in range(3)] + [raw for raw, _ in BROKEN_JSONL]) + b"\n")
    (d / "bom.csv").write_bytes(b"\xef\xbb\xbfid,text,rating\r\n"
                                b"bom1,Nike sneakers are great,5\r\nbom2,Fila shoes,4\r\n")
    (d / "empty.csv").write_bytes(b"")
    (d / "nulls.jsonl").write_text('{"id": "z1", "text": null}\n{"id": "z2", "text": ""}\n'
                                   '{"id": "z3", "text": "   "}\n{"id": "z4"}\n')
    (d / "bad.parquet").write_bytes(b"PAR1 not a parquet file")
    (tmp_path / "recipe.yaml").write_text("all:\n  - non_null\n  - keywords: {name: ../../escape, words: [nike]}\n")
    res = run_job("filter", d, "--output", tmp_path / "out", "--recipe", tmp_path / "recipe.yaml")
    assert res.returncode == 0, res.stderr[-3000:]

    out = tmp_path / "out"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] + stats["rejected"] + stats["quarantined"] == stats["rows_read"] == 36
    quarantine = pd.read_parquet(out / "quarantine")
    expected = {raw[:20].decode("utf-8", "backslashreplace"): reason for raw, reason in BROKEN_CSV + BROKEN_JSONL}
    expected['o1,"a quote that nev'] = "unexpected end of data"  # only its own line is lost
    got = {row.raw[:20]: row.error for row in quarantine.itertuples() if row.raw}
    assert set(got) == set(expected) and all(expected[k] in got[k] for k in expected), got
    assert quarantine["raw"].str.len().max() == 10_000  # the 10 MB row is kept, truncated
    [parquet] = quarantine[quarantine["source"].str.endswith("bad.parquet")].itertuples()
    assert "unreadable Parquet file" in parquet.error
    assert stats["quarantined"] == len(BROKEN_CSV) + len(BROKEN_JSONL) + 2

    kept = set(pd.read_parquet(out / "kept")["id"])
    assert {"bom1", "a0", "b4", "c4"} <= kept  # the BOM is not part of the first column's name
    rejected = pd.read_parquet(out / "rejected")
    nulls = rejected[rejected["id"].str.startswith("z")]
    assert sorted(nulls["id"]) == ["z1", "z2", "z3", "z4"] and set(nulls["dropped_by"]) == {"non_null"}
    # a step's name is a label, never a path: nothing is written outside the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out", "recipe.yaml"]
    assert {p.name for p in out.iterdir()} == {"kept", "rejected", "quarantine", "stats.json", "_SUCCESS"}


@ONE_JOB
def test_bad_prompts_are_reported_in_the_output_with_a_reason(ray_cluster, tmp_path):
    long = "nike " * 600 + "[MASK]"
    (tmp_path / "prompts.txt").write_text(f"Nike shoes are very [MASK].\nNike shoes are very comfortable.\n{long}\n")
    res = run_job("score", "--model", "t=tiny", "--prompts", tmp_path / "prompts.txt", "--output", tmp_path / "out")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 prompt(s) could not be scored" in res.stdout
    invalid = json.loads((tmp_path / "out" / "summary.json").read_text())["invalid_prompts"]
    reasons = {entry["prompt"][:20]: entry["error"] for entry in invalid}
    assert reasons["Nike shoes are very "] == "no [MASK] in prompt"
    assert "more than the model's limit" in reasons["nike nike nike nike "]
    prompts = pd.read_parquet(tmp_path / "out" / "prompts")
    assert len(prompts) == 3  # reported, not dropped
