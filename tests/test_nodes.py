"""A node lost mid-job on a local two-node Ray cluster (two `ray start`s, two raylets)."""

import json
import os
import shutil
import subprocess
import tempfile
import time

import pandas as pd
import psutil
import pytest
from reviewlm.synth import write_synth

from tests.conftest import BIN, free_port

pytestmark = pytest.mark.slow


def node_processes(marker: str) -> list[psutil.Process]:
    """What a `ray start` started (GCS, raylet, agents, workers) and is still running: the
    processes with `marker` in their environment (Ray's Python processes overwrite it with
    their title), in their command line or among their open files, and their descendants."""
    found = {}
    for p in psutil.process_iter():
        try:
            env = p.environ().get("REVIEWLM_TEST_NODE", "")
            if env.startswith(marker) or marker in " ".join(p.cmdline()) or \
                    any(f.path.startswith(marker) for f in p.open_files()):
                found.update({q.pid: q for q in [p, *p.children(recursive=True)]})
        except psutil.Error:
            pass
    return list(found.values())


@pytest.fixture
def two_nodes():
    """A head with 1 CPU and a second node with 2 CPUs; each node's processes carry a marker
    in their environment, so the second can be found and both stopped whatever the test does."""
    temp = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # Ray's socket paths must stay short
    port, env = free_port(), {**os.environ, "RAY_AUTH_MODE": "disabled"}
    start = [str(BIN / "ray"), "start", "--disable-usage-stats"]
    subprocess.run(start + ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                            f"--temp-dir={temp}"], check=True, env={**env, "REVIEWLM_TEST_NODE": f"{temp}:head"},
                   capture_output=True)
    subprocess.run(start + [f"--address=127.0.0.1:{port}", "--num-cpus=2"], check=True,
                   env={**env, "REVIEWLM_TEST_NODE": f"{temp}:second"}, capture_output=True)
    yield f"127.0.0.1:{port}", f"{temp}:second"
    for p in node_processes(temp):
        p.kill()
    shutil.rmtree(temp, ignore_errors=True)


def lose_node(node: str, job: subprocess.Popen, running: str, after: float = 0, timeout: float = 300) -> bool:
    """SIGKILL a node's raylet and everything under it (agents, workers) at once, `after`
    seconds from when one of them runs a task or actor named `running`; False if the job
    ended first."""
    deadline = time.time() + timeout
    while job.poll() is None and time.time() < deadline:
        [raylet] = [p for p in node_processes(node) if p.name() == "raylet"]
        if any(running in " ".join(p.cmdline()) for p in raylet.children(recursive=True) if p.is_running()):
            time.sleep(after)
            for p in [raylet, *raylet.children(recursive=True)]:
                p.kill()
            return True
        time.sleep(0.2)
    return False


def test_the_filter_job_survives_a_lost_node(two_nodes, tmp_path):
    write_synth(str(tmp_path / "in"), 60_000, seed=5, shards=8, min_words=20, max_words=80)
    ids = pd.concat(pd.read_json(p, lines=True) for p in (tmp_path / "in").glob("*.jsonl"))["id"].astype(str)
    address, second = two_nodes
    job = subprocess.Popen([str(BIN / "reviewlm"), "filter", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                            "--address", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    lost = lose_node(second, job, "ReadReview")
    _, err = job.communicate(timeout=600)
    assert lost, "the job ended before the second node ran a task"
    assert job.returncode == 0, err[-3000:]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    written = pd.concat([pd.read_parquet(tmp_path / "out" / route, columns=["id"]) for route in ("kept", "rejected")])
    assert stats["rows_read"] == len(ids) == len(written) and stats["quarantined"] == 0
    assert written["id"].is_unique and set(written["id"]) == set(ids)  # no row lost or doubled


def test_scoring_survives_a_lost_node(two_nodes, tmp_path):
    address, second = two_nodes
    n = 40_000
    (tmp_path / "prompts.txt").write_text("".join(f"Nike shoe model {i} is very [MASK].\n" for i in range(n)))
    job = subprocess.Popen([str(BIN / "reviewlm"), "score", "--model", "tiny", "--prompts",
                            str(tmp_path / "prompts.txt"), "--output", str(tmp_path / "out"), "--top-k", "3",
                            "--address", address],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    lost = lose_node(second, job, "MaskScorer", after=2)
    _, err = job.communicate(timeout=600)
    assert lost, "the job ended before the second node ran a scoring actor"
    assert job.returncode == 0, err[-3000:]
    masks = pd.read_parquet(tmp_path / "out" / "masks", columns=["prompt_index"])
    predictions = pd.read_parquet(tmp_path / "out" / "predictions", columns=["prompt_index", "rank"])
    assert sorted(masks["prompt_index"]) == list(range(n))  # every prompt scored once
    assert len(predictions) == 3 * n and not predictions.duplicated().any()
