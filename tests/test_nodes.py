"""A node lost mid-job on a local two-node Ray cluster (two `ray start`s, two raylets)."""

import contextlib
import json
import os
import subprocess
import tempfile
import time

import pandas as pd
import psutil
import pytest
from reviewlm.filters.recipe import parse_recipe
from reviewlm.filters.stage import filter_reviews
from reviewlm.synth import synth_rows, write_synth

from tests.conftest import BIN, free_port, node_processes, registered, stop_nodes

pytestmark = pytest.mark.slow


def start_nodes(cpus: list[int]):
    """A head and further nodes with these CPUs; each node's processes carry a marker in
    their environment (`TEMP:node0`, `TEMP:node1`…), so a node can be found and all stopped
    whatever the test does. Yields the address and the markers."""
    temp = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # Ray's socket paths must stay short
    port, env = free_port(), {**os.environ, "RAY_AUTH_MODE": "disabled"}
    start = [str(BIN / "ray"), "start", "--disable-usage-stats"]
    # the head declares a node dead after 3 missed health checks 0.5 s apart (defaults: 5, 3 s apart)
    fast = ['--system-config={"health_check_period_ms": 500, "health_check_failure_threshold": 3}']
    markers = [f"{temp}:node{i}" for i in range(len(cpus))]
    try:  # a node that fails to start does not leave the ones before it running
        for i, (n, marker) in enumerate(zip(cpus, markers)):
            where = ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}", *fast] if i == 0 \
                else [f"--address=127.0.0.1:{port}"]
            subprocess.run(start + where + [f"--num-cpus={n}"], check=True,
                           env={**env, "REVIEWLM_TEST_NODE": marker}, capture_output=True)
        yield f"127.0.0.1:{port}", markers
    finally:
        stop_nodes(temp)


@pytest.fixture
def two_nodes():
    """A head with 1 CPU and a second node with 2 CPUs."""
    for address, markers in start_nodes([1, 2]):
        yield address, markers[1]


@pytest.fixture
def three_nodes():
    """A head with 1 CPU and two nodes with 2 CPUs each: room for 2 CPU training workers on either."""
    yield from start_nodes([1, 2, 2])


def lose_node(nodes: str | list[str], job: subprocess.Popen, running: str, after: float = 0,
              ready=lambda: True, timeout: float = 300) -> str | None:
    """SIGKILL the raylet of the first of `nodes` where a task or actor named `running` runs,
    and everything under it (agents, workers) at once, `after` seconds from when it is seen
    there and `ready()`; the node lost, or None if the job ended first."""
    deadline = time.time() + timeout
    while job.poll() is None and time.time() < deadline:
        for node in [nodes] if isinstance(nodes, str) else nodes:
            try:  # processes come and go while we look: a vanished one means look again
                [raylet] = [p for p in node_processes(node) if p.name() == "raylet"]
                seen = ready() and any(running in " ".join(p.cmdline()) for p in raylet.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
            if seen:
                time.sleep(after)
                for p in [raylet, *raylet.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.kill()
                return node
        time.sleep(0.2)
    return None


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


def test_both_dedups_on_three_nodes_drop_what_one_node_drops(three_nodes, ray_cluster, tmp_path):
    """Every key-partitioned step of `dedup` and `near_dedup` spread over three raylets drops
    the same rows, naming the same first rows, as the test run's one-node Ray."""
    rows = synth_rows(12_000, seed=3, min_words=10, max_words=40, near_copies=0.2).to_pylist()
    for i in range(50, len(rows), 50):  # and exact copies
        rows[i]["text"] = rows[i - 7]["text"].upper()
    (tmp_path / "in").mkdir()
    for s in range(6):
        (tmp_path / "in" / f"part-{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[s::6]))
    recipe = "all:\n  - dedup\n  - near_dedup\n"
    (tmp_path / "r.yaml").write_text(recipe)
    address, _ = three_nodes
    job = subprocess.run([str(BIN / "reviewlm"), "filter", str(tmp_path / "in"), "--output", str(tmp_path / "three"),
                          "--recipe", str(tmp_path / "r.yaml"), "--address", address], capture_output=True, text=True,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled"}, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    filter_reviews([str(tmp_path / "in")], str(tmp_path / "one"), recipe=parse_recipe(recipe))

    def rejected(out):
        table = pd.read_parquet(out / "rejected", columns=["id", "dropped_by", "duplicate_of", "near_duplicate_of",
                                                           "near_similarity"])
        return table.sort_values("id").reset_index(drop=True)

    one = rejected(tmp_path / "one")
    assert (one["dropped_by"] == "dedup").sum() >= 200 and (one["dropped_by"] == "near_dedup").sum() >= 400
    pd.testing.assert_frame_equal(rejected(tmp_path / "three"), one)


def test_scoring_survives_a_lost_node(two_nodes, tmp_path):
    address, second = two_nodes
    n = 20_000
    (tmp_path / "prompts.txt").write_text("".join(f"Nike shoe model {i} is very [MASK].\n" for i in range(n)))
    job = subprocess.Popen([str(BIN / "reviewlm"), "score", "--model", "tiny", "--prompts",
                            str(tmp_path / "prompts.txt"), "--output", str(tmp_path / "out"), "--top-k", "3",
                            "--address", address],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    lost = lose_node(second, job, "EachModel", after=2)
    _, err = job.communicate(timeout=600)
    assert lost, "the job ended before the second node ran a scoring actor"
    assert job.returncode == 0, err[-3000:]
    masks = pd.read_parquet(tmp_path / "out" / "masks", columns=["prompt_index"])
    predictions = pd.read_parquet(tmp_path / "out" / "predictions", columns=["prompt_index", "rank"])
    assert sorted(masks["prompt_index"]) == list(range(n))  # every prompt scored once
    assert len(predictions) == 3 * n and not predictions.duplicated().any()


def test_streaming_training_survives_a_lost_node(three_nodes, tmp_path):
    """The node the workers train on is lost once a checkpoint is registered: training goes
    on on another node from that checkpoint (storage both see), reading its data anew."""
    address, markers = three_nodes
    write_synth(str(tmp_path / "in"), 1200, seed=5, shards=4)
    out, epochs = tmp_path / "out", 4
    job = subprocess.Popen([str(BIN / "reviewlm"), "train", "--data", str(tmp_path / "in"), "--output", str(out),
                            "--model", "tiny", "--epochs", str(epochs), "--batch-size", "16", "--lr", "1e-3",
                            "--chunk-size", "32", "--streaming", "on", "--address", address],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"})
    lost = lose_node(markers[1:], job, "RayTrainWorker", ready=lambda: registered(out) >= 1)
    _, err = job.communicate(timeout=600)
    assert lost, "training ended before its node could be lost"
    assert job.returncode == 0, err[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    [restart] = metrics["restarts"]
    steps = metrics["epochs"][0]["step"]
    assert restart["from_epoch"] >= 1 and restart["from_step"] == restart["from_epoch"] * steps
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, epochs + 1))  # not started over
    assert metrics["epochs"][-1]["step"] == epochs * steps and (out / "_SUCCESS").exists()
