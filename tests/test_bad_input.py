"""Bad input: one clear line on stderr, exit code 2, never a traceback."""

import pytest

from tests.conftest import run_cli


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ok.csv").write_text("text,rating\nNike shoes are great,5\n")
    (tmp_path / "notext.csv").write_text("body,rating\nNike shoes are great,5\n")
    (tmp_path / "notext.jsonl").write_text('{"body": "Nike shoes"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("text\nhello\n")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "bad.yaml").write_text("all:\n  - non_null\n  - sentimnt\n")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "kept").write_text("x")
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
    (["filter", "{d}/ok.csv", "--recipe", "{d}/nope.yaml"], "cannot read recipe"),
    (["filter", "{d}/ok.csv", "--mode", "keep"], "invalid choice: 'keep'"),
    (["filter", "{d}/ok.csv", "--output", "{d}/exists"], "already exists: pass --overwrite"),
    (["filter", "s3://no-such-bucket/reviews/"], "no-such-bucket"),
    (["synth", "--rows", "0"], "--rows and --shards must be at least 1"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a[:2]) + m[:12] for a, m in CASES])
def test_bad_input_exits_2_with_one_line(files, s3, argv, message):
    argv = [a.format(d=files) for a in argv]
    if "--output" not in argv:
        argv += ["--output", str(files / "out")]
    res = run_cli(*argv)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("reviewlm: error: ") and message in lines[0], lines[0]
    assert not (files / "out").exists()
