"""--resume: a job killed as a whole (its driver and every process under it, SIGKILL) goes on
where it stopped and ends with exactly the output of an uninterrupted run."""

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reviewlm.filters.recipe import parse_recipe
from reviewlm.filters.stage import filter_reviews
from reviewlm.options import RunOptions
from reviewlm.score.job import score_models
from reviewlm.score.prompts import gather_prompts, load_word_sets
from reviewlm.synth import write_synth

from tests.conftest import BIN, assert_one_line, kill_job_when, run_job
from tests.test_classifier_step import classifier_dir
from tests.test_pipeline import TINY

pytestmark = pytest.mark.slow
# dedup sees every row (a shuffle) before the rows a killed run wrote are skipped
RECIPE = "all:\n  - non_null\n  - dedup\n  - sentiment: {min_compound: 0.05}\n  - brand\n"
COUNTS = ("rows_read", "kept", "rejected", "quarantined", "filters")


def markers(fs_glob) -> list[str]:
    return [m for m in fs_glob if not Path(m).name.startswith(".")]


def local_markers(out: Path, where: str = "_ledger/*.json") -> list[str]:
    """The write tasks' records of a run in `out` (score's are per unit: `_ledger/*/*.json`)."""
    return markers(str(m) for m in out.glob(f"_temporary/*/{where}"))


def recorded_files(out: Path, where: str = "_ledger/*.json") -> dict[str, str]:
    """The files a killed run recorded as written, with their content's hash."""
    found = {}
    for marker in local_markers(out, where):
        run = Path(marker).parents[1] if Path(marker).parent.name == "_ledger" else Path(marker).parents[2]
        for name in json.loads(Path(marker).read_text())["files"]:
            found[name] = hashlib.sha256((run / name).read_bytes()).hexdigest()
    return found


def rows(out, part: str, by: list[str]) -> pd.DataFrame:
    return pd.read_parquet(out / part).sort_values(by, ignore_index=True)


@pytest.fixture(scope="module")
def corpus(killable_corpus):
    return killable_corpus


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def test_a_killed_filter_job_resumes_to_exactly_the_uninterrupted_output(ray_cluster, corpus, recipe_file,
                                                                          tmp_path):
    clean = tmp_path / "clean"
    stats = filter_reviews([corpus], str(clean), recipe=parse_recipe(RECIPE), run=RunOptions(split_mb=1)).to_json()
    out = tmp_path / "out"
    argv = [BIN / "reviewlm", "filter", corpus, "--output", out, "--recipe", recipe_file, "--split-mb", 1,
            "--num-cpus", 2]
    kill_job_when(argv, ready=lambda: len(local_markers(out)) >= 2, timeout=180)
    written = recorded_files(out)
    assert written and not (out / "_SUCCESS").exists() and not (out / "kept").exists()  # nothing published

    assert_one_line(run_job(*argv[1:]),  # not reused silently
                    "pass --overwrite to replace it (an interrupted run: pass --resume to continue it)")
    assert_one_line(run_job(*argv[1:-4], "--split-mb", 2, "--resume"),
                    "cannot resume: --split-mb was 1.0 in the interrupted run, now 2.0")
    recipe_file.write_text(RECIPE.replace("0.05", "0.5"))  # the recipe edited since
    try:
        assert_one_line(run_job(*argv[1:], "--resume"), "cannot resume: the file --recipe names changed")
    finally:
        recipe_file.write_text(RECIPE)
    first = sorted(Path(corpus).glob("*.jsonl"))[0]
    was = first.stat()
    os.utime(first, ns=(was.st_atime_ns, was.st_mtime_ns + 10**9))  # an input written to since
    try:
        assert_one_line(run_job(*argv[1:], "--resume"), f"cannot resume: input {first} changed")
    finally:
        os.utime(first, ns=(was.st_atime_ns, was.st_mtime_ns))
    res = run_job(*argv[1:-2], "--num-cpus", 1, "--resume")  # where it runs may change
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming: " in res.stdout and "kept" in res.stdout
    resumed = json.loads((out / "stats.json").read_text())
    assert {k: resumed[k] for k in COUNTS} == {k: stats[k] for k in COUNTS}
    for part in ("kept", "rejected"):
        pd.testing.assert_frame_equal(rows(out, part, ["source", "id"]), rows(clean, part, ["source", "id"]))
    for name, digest in written.items():  # what the killed run wrote was kept, not redone
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert not (out / "_temporary").exists() and json.loads((out / "_SUCCESS").read_text())["counts"]["kept"] == \
        stats["kept"]


def test_a_killed_filter_job_on_s3_resumes_to_exactly_the_uninterrupted_output(s3, ray_cluster, tiny, tmp_path):
    """Without dedup each read piece goes straight to its write (here through a classifier's
    actors, which Ray Data fuses the reads into): the resumed run does not read again the
    pieces the killed one read and wrote whole."""
    model = classifier_dir(tiny, tmp_path / "stars")
    streamed = RECIPE.replace("  - dedup\n", f"  - classifier: {{model: {model}, keep: [1, 2, 3]}}\n")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(streamed)
    write_synth("s3://reviews/resume/in", 8_000, seed=9, shards=2, min_words=20, max_words=40)
    stats = filter_reviews(["s3://reviews/resume/in"], "s3://reviews/resume/clean", recipe=parse_recipe(streamed),
                           run=RunOptions(split_mb=0.25)).to_json()

    def s3_markers():
        s3.invalidate_cache()
        return markers(s3.glob("reviews/resume/out/_temporary/*/_ledger/*.json"))

    argv = [BIN / "reviewlm", "filter", "s3://reviews/resume/in", "--output", "s3://reviews/resume/out",
            "--recipe", recipe_file, "--split-mb", 0.25, "--num-cpus", 2]
    kill_job_when(argv, ready=lambda: len(s3_markers()) >= 1, timeout=180)
    assert not s3.exists("reviews/resume/out/_SUCCESS")
    res = run_job(*argv[1:], "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    skipped, planned = map(int, re.search(r"resuming: (\d+) of (\d+) pieces", res.stdout).groups())
    assert 1 <= skipped < planned, res.stdout
    s3.invalidate_cache()
    resumed = json.loads(s3.cat("reviews/resume/out/stats.json"))
    assert {k: resumed[k] for k in COUNTS} == {k: stats[k] for k in COUNTS}
    for part in ("kept", "rejected"):
        got, want = (pd.read_parquet(f"s3://reviews/resume/{o}/{part}").sort_values(["source", "id"], ignore_index=True)
                     for o in ("out", "clean"))
        pd.testing.assert_frame_equal(got, want)
    assert not s3.glob("reviews/resume/out/_temporary/**")


def test_a_killed_score_job_resumes_to_exactly_the_uninterrupted_output(ray_cluster, tiny, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"review {i}: the shoes are [MASK] and the fit is [MASK].\n" for i in range(1200)))
    write_synth(str(tmp_path / "corpus"), 300, seed=10)
    reviews = str(tmp_path / "corpus")
    clean = tmp_path / "clean"
    score_models({"a": tiny, "b": tiny}, str(clean), prompts=gather_prompts([str(prompts)], None, True),
                 corpus=[reviews], word_sets=load_word_sets(None))
    out = tmp_path / "out"
    argv = [BIN / "reviewlm", "score", "--model", f"a={tiny}", "--model", f"b={tiny}", "--output", out,
            "--prompts", prompts, "--corpus", reviews, "--num-cpus", 2]
    kill_job_when(argv, ready=lambda: len(local_markers(out, "_ledger/*/*.json")) >= 2, timeout=240)
    written = recorded_files(out, "_ledger/*/*.json")
    assert written and not (out / "_SUCCESS").exists()
    res = run_job(*argv[1:], "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming prompts" in res.stdout, res.stdout
    summary, want = (json.loads((o / "summary.json").read_text()) for o in (out, clean))
    assert {k: v for k, v in summary.items() if k != "wall_time_s"} == {k: v for k, v in want.items()
                                                                        if k != "wall_time_s"}
    # every row once; values as an uninterrupted run's, up to the float noise of other batches
    # (the resumed run batches the prompts left differently): a near-tie may swap two ranks
    for part, by in (("prompts", ["model", "prompt_index"]), ("masks", ["model", "prompt_index", "mask_index"]),
                     ("predictions", ["model", "prompt_index", "mask_index", "rank"]), ("corpus", ["model", "id"])):
        got, want = rows(out, part, by), rows(clean, part, by)
        pd.testing.assert_frame_equal(got[by], want[by])
        ties = {"first_wanted_rank", "token", "token_id", "top_ids", "top_probs", "probability"} & set(got.columns)
        pd.testing.assert_frame_equal(got.drop(columns=list(ties)), want.drop(columns=list(ties)), rtol=1e-4)
        for column in ties - {"top_ids", "top_probs"}:
            same = np.isclose(got[column], want[column], rtol=1e-4) \
                if pd.api.types.is_numeric_dtype(got[column]) else got[column] == want[column]
            assert same.mean() > 0.999, (part, column, same.mean())
    for name, digest in written.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_a_killed_pipeline_reuses_its_finished_stages(ray_cluster, tmp_path):
    out = tmp_path / "demo"
    argv = [BIN / "reviewlm", "pipeline", "--demo", "--output", out, *TINY, "--num-cpus", 2]
    kill_job_when(argv, ready=lambda: (out / "train_v1" / "_SUCCESS").exists(), timeout=400)
    assert not (out / "_SUCCESS").exists()
    before = {stage: json.loads((out / stage / "_SUCCESS").read_text())["run_id"]
              for stage in ("corpus", "filter", "train_v1")}
    res = run_job(*argv[1:], "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in before:
        assert f"reusing {out / stage}: finished" in res.stdout, res.stdout
        assert json.loads((out / stage / "_SUCCESS").read_text())["run_id"] == before[stage]  # not run again
    result = json.loads((out / "pipeline.json").read_text())
    assert result["train"]["v1"]["steps"] == result["train"]["v2"]["steps"] == 3
    assert result["filter"]["kept"] == json.loads((out / "filter" / "stats.json").read_text())["kept"] > 0
    assert all((out / stage / "_SUCCESS").exists() for stage in ("train_v2", "score"))
