"""`ray job submit` of the pipeline job to a Ray head we start, reading and writing S3 (moto)."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from reviewlm.synth import write_synth

from tests.conftest import BIN, free_port, kill_tree
from tests.test_pipeline import TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ray_head(s3):
    """`ray start --head --block` in its own process group; only this head (and every process
    under it) is stopped afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths must stay short
    dashboard = free_port()
    # every fixed default port gets a free one, so a Ray that is already running does not collide
    ports = [f"--{name}={free_port()}" for name in ("port", "ray-client-server-port", "dashboard-agent-listen-port",
                                                   "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                                   "metrics-export-port")]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", *ports, "--num-cpus=2",
                             f"--temp-dir={temp_dir}", "--include-dashboard=true", f"--dashboard-port={dashboard}",
                             "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except OSError:
            assert head.poll() is None and time.time() < deadline, "the Ray head did not come up"
            time.sleep(1)
    yield url, env
    kill_tree(head.pid)  # a SIGTERM'd head takes 30 s to stop
    head.wait()
    shutil.rmtree(temp_dir, ignore_errors=True)


def ray_cli(*args, env, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT)


def submit(url: str, env: dict, *job) -> tuple[JobStatus, str]:
    """Submit `job` (python jobs/... args) with the S3 credentials; its final status and logs."""
    runtime_env = {"env_vars": {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                            "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
                   | {"PYTHONPATH": "lib", "HF_HUB_OFFLINE": "1"}}
    command = ["job", "submit", "--address", url, "--no-wait", "--working-dir", ".", "--runtime-env-json",
               json.dumps(runtime_env), "--", "python", *map(str, job)]
    for _ in range(30):  # the head's job agent comes up a little after its dashboard
        submitted = ray_cli(*command, env=env)
        if "No available agent" not in submitted.stderr:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", submitted.stdout + submitted.stderr).group(0)
    client = JobSubmissionClient(url)
    deadline = time.time() + 540
    while not (status := client.get_job_status(job_id)).is_terminal() and time.time() < deadline:
        time.sleep(1)
    return status, ray_cli("job", "logs", "--address", url, job_id, env=env).stdout


def test_pipeline_and_recommend_jobs_submitted_to_a_ray_head_read_and_write_s3(s3, ray_head, tmp_path):
    url, env = ray_head
    bucket = "job-submit"
    s3.mkdir(bucket)
    status, logs = submit(url, env, "jobs/pipeline.py", "--demo", "--output", f"s3://{bucket}/study", *TINY)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "[6/6] done" in logs and "report: s3://" in logs

    study = f"{bucket}/study"
    for stage in ("corpus", "filter", "train_v1", "train_v2", "score", ""):
        assert s3.exists(f"{study}/{stage}/_SUCCESS".replace("//", "/"))
    assert not s3.exists(f"{study}/_temporary")
    result = json.loads(s3.cat(f"{study}/pipeline.json"))
    assert result["filter"]["rows_read"] == 1500
    assert result["train"]["v1"]["steps"] == result["train"]["v2"]["steps"] == 3
    summary = json.loads(s3.cat(f"{study}/score/summary.json"))
    assert set(summary["models"]) == {"base", "v1", "v2"}
    assert s3.exists(f"{study}/score/report.html") and s3.ls(f"{study}/score/predictions")
    assert "testing" not in s3.cat(f"{study}/_SUCCESS").decode()  # credentials never reach a manifest

    write_synth(str(tmp_path / "shop"), 110, seed=4, kind="catalog")
    s3.put(str(tmp_path / "shop") + "/", f"{bucket}/shop/", recursive=True)
    shop = f"s3://{bucket}/shop"
    status, logs = submit(url, env, "jobs/recommend.py", "--catalog", f"{shop}/catalog.jsonl", "--queries",
                          f"{shop}/needs.txt", "--reviews", f"{shop}/reviews.jsonl", "--judgments",
                          f"{shop}/judgments.jsonl", "--output", f"s3://{bucket}/recommend", "--candidates", 20)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    summary = json.loads(s3.cat(f"{bucket}/recommend/summary.json"))
    assert summary["queries"] == 22 and summary["products"] == 110 and summary["ranked_rows"] == 220
    assert summary["metrics"]["queries_judged"] == 22 and f"ndcg@10 {summary['metrics']['ndcg@10']:.3f}" in logs
    assert s3.exists(f"{bucket}/recommend/report.html") and s3.ls(f"{bucket}/recommend/embeddings")
