"""The pipeline job: in process (the demo, tiny settings) and submitted to a Ray head with S3."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, free_port, run_cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--rows", "1500", "--max-steps", "3", "--batch-size", "8", "--chunk-size", "32",
        "--num-workers", "1"]


def test_demo_runs_every_stage_and_prints_the_comparison(tmp_path):
    res = run_cli("demo", "--output", tmp_path / "demo", *TINY, "--num-cpus", "2", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in ("[1/6] synthesizing", "[2/6] filtering", "[3/6] fine-tuning v1", "[4/6] fine-tuning v2",
                  "[5/6] scoring", "[6/6] done"):
        assert stage in res.stdout
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


@pytest.fixture
def ray_head(s3):
    """A Ray head of our own (auth disabled, free ports), stopped at the end: only this one."""
    port, dash = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             f"--temp-dir={temp}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    for _ in range(90):
        ok = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                            capture_output=True).returncode == 0
        if ok:
            break
        time.sleep(1)
    else:
        os.killpg(head.pid, signal.SIGTERM)
        shutil.rmtree(temp, ignore_errors=True)
        pytest.fail("the Ray head did not start")
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=60)
    shutil.rmtree(temp, ignore_errors=True)


def test_pipeline_job_submitted_to_a_ray_head_reads_and_writes_s3(ray_head, s3):
    address, env = ray_head
    s3.pipe("reviews/pipeline-in/reviews.jsonl",
            "".join(json.dumps({"id": f"r{i}", "text": t, "rating": 5})
                    + "\n" for i, t in enumerate(["Nike shoes are very comfortable and great.",
                                                  "Nike sneakers are durable, I love them.",
                                                  "Adidas hoodies are ugly."] * 80)).encode())
    runtime_env = {"env_vars": {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                           "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
                   | {"PYTHONPATH": "lib", "HF_HUB_OFFLINE": "1", "REVIEWLM_CACHE": os.environ.get("REVIEWLM_CACHE", "")}}
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--no-wait",
           "--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/pipeline.py",
           "s3://reviews/pipeline-in/", "--output", "s3://reviews/pipeline-out", "--model", "tiny",
           "--max-steps", "2", "--epochs", "2", "--batch-size", "8", "--chunk-size", "32", "--num-workers", "1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", res.stdout + res.stderr).group(0)
    status, deadline = "", time.time() + 420
    while time.time() < deadline:
        res = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, job_id], env=env,
                             capture_output=True, text=True)
        status = res.stdout + res.stderr  # the status line is logged to stderr
        if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(5)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, job_id], env=env,
                          capture_output=True, text=True).stdout
    assert "SUCCEEDED" in status, logs[-4000:]
    assert "[5/5] done" in logs
    result = json.loads(s3.cat("reviews/pipeline-out/pipeline.json"))
    assert result["filter"]["rows_read"] == 240 and result["filter"]["kept"] == 160
    summary = json.loads(s3.cat("reviews/pipeline-out/score/summary.json"))
    assert set(summary["models"]) == {"base", "v1", "v2"}
    assert s3.exists("reviews/pipeline-out/score/report.html") and s3.exists("reviews/pipeline-out/_SUCCESS")
