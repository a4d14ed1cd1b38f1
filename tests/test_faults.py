"""Faults from outside the job: a Ray worker SIGKILLed, the whole job killed, S3 failing."""

import json
import os
import subprocess
import threading

import pandas as pd
import pytest
from reviewlm.filters.recipe import parse_recipe
from reviewlm.filters.stage import filter_reviews
from reviewlm.synth import write_synth

from tests.conftest import BIN, FaultyS3, Killer, kill_job_when, run_cli, running_task_pids

pytestmark = pytest.mark.slow
COUNTS = ("rows_read", "kept", "rejected", "quarantined", "filters")
RECIPE = "all:\n  - non_null\n  - sentiment: {min_compound: 0.05}\n  - brand\n"  # VADER on every row: slow enough


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 files of 12,000 rows: each filter-and-write task writes several batches."""
    path = tmp_path_factory.mktemp("faults") / "corpus"
    write_synth(str(path), 48_000, seed=5, shards=4, min_words=20, max_words=40)
    return str(path)


@pytest.fixture(scope="module")
def clean(ray_cluster, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    return filter_reviews([corpus], str(out), recipe=parse_recipe(RECIPE)).to_json(), out


def same_result(stats, out, clean_run):
    clean_stats, clean_out = clean_run
    assert {k: stats[k] for k in COUNTS} == {k: clean_stats[k] for k in COUNTS}
    for part in ("kept", "rejected"):
        ids = pd.read_parquet(out / part, columns=["id"])["id"]
        assert ids.is_unique  # a retried task added no rows
        assert set(ids) == set(pd.read_parquet(clean_out / part, columns=["id"])["id"])
    assert (out / "_SUCCESS").exists()


def test_a_worker_killed_while_filtering_changes_nothing(ray_cluster, corpus, clean, tmp_path):
    out = tmp_path / "out"
    # mid-job: once one read-filter-write task has written its files, kill another that is running
    killer = Killer(lambda: running_task_pids("Write"), ready=lambda: any(out.glob("_temporary/*/*/*.parquet")))
    stats = filter_reviews([corpus], str(out), recipe=parse_recipe(RECIPE)).to_json()
    killer.join(1)
    assert killer.killed, "no filter task was running to be killed"
    same_result(stats, out, clean)


def test_a_filter_job_killed_as_a_whole_leaves_no_success_and_reruns_cleanly(corpus, clean, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    argv = [str(BIN / "reviewlm"), "filter", corpus, "--output", str(out), "--recipe", str(tmp_path / "recipe.yaml"),
            "--num-cpus", "2"]
    kill_job_when(argv, ready=lambda: any(out.glob("_temporary/*/kept/*.parquet")), timeout=120)  # while writing
    assert not (out / "_SUCCESS").exists() and not (out / "kept").exists()

    rerun = subprocess.run(argv, capture_output=True, text=True)
    assert rerun.returncode == 2 and "--overwrite" in rerun.stderr  # an unfinished output is not reused silently
    rerun = subprocess.run(argv + ["--overwrite"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    same_result(stats, out, clean)
    assert not (out / "_temporary").exists()


@pytest.fixture(scope="module")
def s3_corpus(s3):
    write_synth("s3://reviews/flaky/in", 2000, seed=6, shards=4)
    return "s3://reviews/flaky/in"


def test_transient_s3_errors_are_retried(s3, s3_corpus, tmp_path):
    failed_once, lock = set(), threading.Lock()

    def fault(method, path, headers):  # every distinct request to the job's data fails once
        key = (method, path, headers.get("Range"))
        with lock:
            if "/flaky/" in path and key not in failed_once:
                failed_once.add(key)
                return 503, "SlowDown", "Please reduce your request rate."

    proxy = FaultyS3(os.environ["AWS_ENDPOINT_URL"], fault)
    res = run_cli("filter", s3_corpus, "--output", "s3://reviews/flaky/out", "--num-cpus", 2,
                  env={"AWS_ENDPOINT_URL": proxy.url})
    assert res.returncode == 0, res.stderr[-3000:]
    methods = {m for m, _, _ in proxy.failed}
    assert {"GET", "PUT"} <= methods and len(proxy.failed) > 10
    direct = run_cli("filter", s3_corpus, "--output", tmp_path / "direct", "--num-cpus", 2)
    assert direct.returncode == 0, direct.stderr[-3000:]
    flaky = json.loads(s3.cat("reviews/flaky/out/stats.json"))
    clean = json.loads((tmp_path / "direct" / "stats.json").read_text())
    assert {k: flaky[k] for k in COUNTS} == {k: clean[k] for k in COUNTS}
    kept = pd.read_parquet("s3://reviews/flaky/out/kept")["id"]
    assert kept.is_unique and set(kept) == set(pd.read_parquet(tmp_path / "direct" / "kept")["id"])


@pytest.mark.parametrize("denied", ["/locked/out/_temporary/", "/locked/out/_temporary/*/kept/"],
                         ids=["output", "data written by workers"])
def test_an_s3_permission_error_stops_the_job_with_one_line(s3, s3_corpus, denied):
    if not s3.exists("locked"):
        s3.mkdir("locked")
    prefix, _, part = denied.partition("*")

    def fault(method, path, headers):
        if method in ("PUT", "POST") and path.startswith(prefix) and part in path:
            return 403, "AccessDenied", "Access Denied"

    proxy = FaultyS3(os.environ["AWS_ENDPOINT_URL"], fault)
    res = run_cli("filter", s3_corpus, "--output", "s3://locked/out", "--num-cpus", 2,
                  env={"AWS_ENDPOINT_URL": proxy.url})
    assert res.returncode == 2 and proxy.failed, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]  # Ray's own log lines may come before
    error = res.stderr.strip().splitlines()[-1]
    assert error.startswith("reviewlm: error: ") and "permission denied" in error and "s3://locked/out" in error
    assert not s3.exists("locked/out/_SUCCESS")
