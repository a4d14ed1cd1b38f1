"""Faults from outside the job: a Ray worker SIGKILLed, the whole job killed, S3 failing."""

import json
import os
import re
import threading

import pandas as pd
import pytest
from reviewlm.filters.recipe import parse_recipe
from reviewlm.filters.stage import filter_reviews
from reviewlm.options import RunOptions
from reviewlm.synth import write_synth

from tests.conftest import BIN, FaultyS3, Killer, kill_job_when, run_cli, run_job, running_task_pids

pytestmark = pytest.mark.slow
COUNTS = ("rows_read", "kept", "rejected", "quarantined", "filters")
RECIPE = "all:\n  - non_null\n  - sentiment: {min_compound: 0.05}\n  - brand\n"  # VADER on every row: slow enough


@pytest.fixture(scope="module")
def corpus(killable_corpus):
    return killable_corpus


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


@pytest.fixture(scope="module")
def s3_corpus(s3):
    write_synth("s3://reviews/flaky/in", 2000, seed=6, shards=4)
    return "s3://reviews/flaky/in"


def test_transient_s3_errors_are_retried(s3, ray_cluster, s3_corpus, tmp_path):
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
    direct = run_job("filter", s3_corpus, "--output", tmp_path / "direct")
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


def files_of(out) -> dict[str, str]:
    """Every file of an output but `_temporary/`, with its content's hash."""
    import hashlib

    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] != "_temporary"}


def test_a_killed_or_failed_overwrite_leaves_the_old_output_as_it_was(ray_cluster, corpus, clean, tmp_path):
    """--overwrite swaps: killed mid-write (driver and its Ray) or failing after writing, the
    previous output is intact, `_SUCCESS` included; a finished one replaces it whole."""
    out, small = tmp_path / "out", tmp_path / "small"
    write_synth(str(small), 300, seed=1)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    argv = ["filter", "--output", out, "--recipe", tmp_path / "recipe.yaml"]
    assert run_job(*argv, small).returncode == 0
    before = files_of(out)
    assert "_SUCCESS" in before and any(name.startswith("kept/") for name in before)

    kill_job_when([BIN / "reviewlm", *argv, corpus, "--overwrite", "--num-cpus", 2],
                  ready=lambda: any(out.glob("_temporary/*/kept/*.parquet")), timeout=120)
    assert files_of(out) == before

    (tmp_path / "broken.jsonl").write_text("not json\n" * 50)  # fails after its rows were written: nothing readable
    failed = run_job(*argv, tmp_path / "broken.jsonl", "--overwrite")
    assert failed.returncode == 2 and "could be read" in failed.stderr, failed.stderr[-2000:]
    assert files_of(out) == before

    again = run_job(*argv, corpus, "--resume")
    assert again.returncode == 2 and "pass --overwrite with --resume" in again.stderr, again.stderr[-2000:]
    # the killed overwrite continues from its ledger, and still swaps at its commit
    done = run_job(*argv, corpus, "--overwrite", "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    same_result(json.loads((out / "stats.json").read_text()), out, clean)
    top = lambda o: {name.split("/")[0] for name in files_of(o)}  # noqa: E731
    assert top(out) == top(clean[1]) and not (out / "_temporary").exists()


def test_an_overwrite_on_s3_leaves_no_old_object_behind(s3, ray_cluster, tmp_path, capsys):
    """On S3 the commit copies: the replaced output holds exactly the new run's objects."""
    write_synth("s3://reviews/swap/big", 2000, seed=3, shards=4)
    write_synth("s3://reviews/swap/small", 200, seed=4)
    recipe = parse_recipe(RECIPE)
    filter_reviews(["s3://reviews/swap/big"], "s3://reviews/swap/out", recipe=recipe, run=RunOptions(split_mb=0.05))
    old = set(s3.find("reviews/swap/out"))
    capsys.readouterr()
    filter_reviews(["s3://reviews/swap/small"], "s3://reviews/swap/out", recipe=recipe,
                   run=RunOptions(overwrite=True))
    assert "; 200 rows written" in capsys.readouterr().out  # the progress line counts every task's rows
    s3.invalidate_cache()
    new = set(s3.find("reviews/swap/out"))
    fresh = filter_reviews(["s3://reviews/swap/small"], "s3://reviews/swap/fresh", recipe=recipe)
    s3.invalidate_cache()
    run_tag = re.compile(r"part-[0-9a-f]{6}-")  # each run names its files apart
    names = lambda keys: {run_tag.sub("part-", k) for k in keys}  # noqa: E731
    assert names(k.replace("/fresh/", "/out/") for k in s3.find("reviews/swap/fresh")) == names(new)
    assert not new & old - {"reviews/swap/out/stats.json", "reviews/swap/out/_SUCCESS"}
    assert json.loads(s3.cat("reviews/swap/out/stats.json"))["rows_read"] == fresh.rows_read == 200
