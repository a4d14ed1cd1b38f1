"""Masked-LM training that streams: the corpus is read and tokenized while the workers train."""

import json
import os
import subprocess
import tempfile

import pandas as pd
import pytest
from reviewlm.synth import write_synth

from tests.conftest import BIN, free_port, run_cli, stop_nodes

pytestmark = pytest.mark.slow

STORE = 80 << 20  # the object store of the capped cluster (Ray's minimum is 75 MiB)


@pytest.fixture
def capped_cluster():
    """A local Ray (2 CPUs) with an 80 MiB object store; its processes found by a marker."""
    temp = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # Ray's socket paths must stay short
    port, env = free_port(), {**os.environ, "RAY_AUTH_MODE": "disabled", "REVIEWLM_TEST_NODE": temp}
    subprocess.run([str(BIN / "ray"), "start", "--disable-usage-stats", "--head", f"--port={port}", "--num-cpus=2",
                    f"--object-store-memory={STORE}", "--include-dashboard=false", f"--temp-dir={temp}"],
                   check=True, env=env, capture_output=True)
    yield f"127.0.0.1:{port}"
    stop_nodes(temp)


def big_corpus(path, copies: int) -> int:
    """`copies` times 10,000 long synthesized reviews, each copy under its own ids; its words."""
    write_synth(str(path / "one"), 10_000, seed=11, min_words=150, max_words=250)
    reviews = pd.concat(pd.read_json(f, lines=True, dtype={"id": str}) for f in (path / "one").glob("*.jsonl"))
    (path / "in").mkdir()
    for k in range(copies):
        reviews.assign(id=f"{k}-" + reviews["id"]).to_json(path / "in" / f"part-{k:02}.jsonl", orient="records",
                                                           lines=True)
    return copies * int(reviews["text"].str.split().str.len().sum())


def test_streaming_trains_on_a_corpus_far_larger_than_the_object_store(capped_cluster, tmp_path):
    words = big_corpus(tmp_path, 16)
    assert 8 * words > 3 * STORE  # 8 bytes a token, a token or more a word
    out = tmp_path / "out"
    res = run_cli("train", "--data", tmp_path / "in", "--output", out, "--model", "tiny", "--address", capped_cluster,
                  "--max-steps", 5, "--lr", 1e-3, "--max-eval-samples", 64, "--streaming", "on",
                  env={"RAY_AUTH_MODE": "disabled"},
                  timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["streaming"] and metrics["epochs"][-1]["step"] == 5
    assert metrics["rows"]["read"] == 160_000 and metrics["rows"]["eval_blocks"] == 64
    assert metrics["epochs"][-1]["eval_loss"] < metrics["eval_loss_before"]
    stats = subprocess.run([str(BIN / "ray"), "memory", "--stats-only", f"--address={capped_cluster}"],
                           capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert stats.returncode == 0 and "Plasma memory usage" in stats.stdout, stats.stderr[-2000:]
    assert "Spilled" not in stats.stdout, stats.stdout
