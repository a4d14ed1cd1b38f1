"""The pipeline job end to end: the demo with tiny settings."""

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import run_cli, run_job

pytestmark = pytest.mark.slow
TINY = ["--model", "tiny", "--rows", "1500", "--max-steps", "3", "--batch-size", "8", "--chunk-size", "32",
        "--num-workers", "1"]


def test_demo_runs_every_stage_and_prints_the_comparison(tmp_path, monkeypatch):
    """The README's demo as a user runs it (Ray's default token authentication on): every
    stage, progress lines, the comparison, and on the console only the job's own lines; Ray's
    (its token-authentication notice, its core worker's note on actors) are in its logs folder."""
    monkeypatch.delenv("RAY_AUTH_MODE")
    res = run_cli("demo", "--output", tmp_path / "demo", *TINY, "--num-cpus", "2", "--split-mb", "32", timeout=600,
                  env={"REVIEWLM_PROGRESS_S": "4"})
    assert res.returncode == 0, res.stderr[-3000:]
    logs = Path(res.stderr.split("Ray logs: ", 1)[1].split(" (--verbose", 1)[0])
    kept = (logs / "reviewlm-console.log").read_text()
    assert "Token authentication is enabled" in kept and "core_worker" in kept, kept[-3000:]
    console = res.stdout + res.stderr
    assert "Token authentication" not in console and "core_worker" not in console and "warnings.warn" not in console
    for stage in ("[1/6] synthesizing", "[2/6] filtering", "[3/6] fine-tuning v1", "[4/6] fine-tuning v2",
                  "[5/6] scoring", "[6/6] done"):
        assert stage in res.stdout
    # progress: a line per stage at its end, and lines while the stages run (every 4 s here)
    lines = res.stdout.splitlines()
    assert sum(line.startswith("  training: 3/3 steps in ") for line in lines) == 2, res.stdout
    assert [line.split(":")[0] for line in lines if " in " in line and line.startswith("  scoring ")] == \
        ["  scoring base, v1, v2"]  # one pass: every actor holds the three models
    assert any(line.startswith("  filtering: ") and "rows written" in line for line in lines)
    assert sum(" after " in line for line in lines) >= 2, res.stdout
    assert all(name in res.stdout for name in ("base", "v1", "v2", "wanted share", "report:"))
    out = tmp_path / "demo"
    result = json.loads((out / "pipeline.json").read_text())
    assert result["train"]["v1"]["steps"] == result["train"]["v2"]["steps"] == 3  # the same budget
    assert result["filter"]["kept"] < result["filter"]["rows_read"] == 1500
    summary = json.loads((out / "score" / "summary.json").read_text())
    assert set(summary["models"]) == {"base", "v1", "v2"}
    html = (out / "score" / "report.html").read_text()
    assert "Filter funnel" in html and "Training" in html
    for stage in ("corpus", "filter", "train_v1", "train_v2", "score", "."):
        assert (out / stage / "_SUCCESS").exists()
    for stage in ("filter", "train_v1", "train_v2", "score"):  # the run options reach every stage
        arguments = json.loads((out / stage / "_SUCCESS").read_text())["arguments"]
        assert arguments["split_mb"] == 32.0 and arguments["num_cpus"] == 2, stage
    assert_readable(res.stdout + res.stderr)


def assert_readable(console: str) -> None:
    """A console a person reads: few lines, none repeated (Ray's own lines go to its log files)."""
    lines = [line for line in console.splitlines() if line.strip()]
    assert len(lines) < 80, console[-5000:]
    line, times = Counter(lines).most_common(1)[0]
    assert times <= 3, (line, times)


def test_a_failing_stage_shows_its_error_in_one_line(ray_cluster, tmp_path):
    """Ray is up when training fails: the error still ends the console, alone and readable."""
    res = run_job("demo", "--output", tmp_path / "demo", *TINY, "--chunk-size", "100000")
    assert res.returncode == 2, res.stderr[-3000:]
    assert "[3/6] fine-tuning v1" in res.stdout and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("reviewlm: error: ") and "--chunk-size 100000" in last, res.stderr[-3000:]
    assert_readable(res.stdout + res.stderr)
    assert not (tmp_path / "demo" / "_SUCCESS").exists()
