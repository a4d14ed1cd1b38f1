"""A job killed at 60% and resumed, against the same job uninterrupted, in one run.

    .venv/bin/python bench/resume.py [--rows 200000] [--prompts 6000] [--at 0.6] [--jobs filter,dedup,score]
        [--split-mb 64] [--corpus 10000]

filter: `--rows` synthesized reviews of 20-150 words in 8 files, the default recipe (and
one with `dedup`, whose shuffle a resumed run redoes). score: `--prompts` prompts, the
`starter` model. score-tiny (issue 38): the offline `tiny` model on `--prompts` prompts, on a
corpus of `--corpus` reviews (masked tokens), and two star classifiers (`train --task stars
--model tiny|starter --max-steps 2` on that corpus) on it: the tiny one scores 10,000 reviews
in seconds, so its run is mostly start-up; the DistilBERT-sized `starter` one is the work a
real classifier does. Each job runs uninterrupted; then again,
SIGKILLed with every process under it once its ledger records `--at` of the rows, and
resumed with `--resume`. Times are whole processes (Ray start included); the resumed
output's counts and summary must equal the uninterrupted one's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from reviewlm.synth import write_synth

BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1"}
DEDUP = "all:\n  - non_null\n  - dedup\n  - brand: {words: [nike]}\n  - product\n  - sentiment: {min_compound: 0.0}\n"


def recorded(out: Path) -> int:
    """Rows the ledger of the run in `out` records as written."""
    total = 0
    for marker in out.glob("_temporary/*/_ledger/**/*.json"):
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        total += sum(end - start for ranges in record.get("keys", {}).values() for start, end in ranges)
    return total


def timed(argv: list) -> float:
    start = time.perf_counter()
    res = subprocess.run(list(map(str, argv)), capture_output=True, text=True, env=ENV)
    if res.returncode:
        raise SystemExit(f"{argv[1]} failed: {res.stderr[-3000:]}")
    return time.perf_counter() - start


def killed_at(argv: list, out: Path, rows: int) -> float:
    """Run `argv` until its ledger records `rows`, then SIGKILL its process group; the time."""
    start = time.perf_counter()
    job = subprocess.Popen(list(map(str, argv)), start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=ENV)
    while recorded(out) < rows:
        if job.poll() is not None:
            raise SystemExit(f"{argv[1]} ended before {rows:,} rows were recorded: lower --at")
        time.sleep(0.2)
    under = psutil.Process(job.pid).children(recursive=True)  # Ray's workers: process groups of their own
    os.killpg(job.pid, signal.SIGKILL)
    for p in under:
        with contextlib.suppress(psutil.Error):
            p.kill()
    job.wait()
    return time.perf_counter() - start


def compare(name: str, argv: list, out: Path, rows: int, at: float, counts, target: float = 0.75) -> None:
    full = timed(argv)
    want = counts(out)
    shutil.rmtree(out)
    kill = killed_at(argv, out, int(at * rows))
    done = recorded(out)
    resumed = timed([*argv, "--resume"])
    assert counts(out) == want, (counts(out), want)
    print(f"{name}: uninterrupted {full:.1f} s; killed after {kill:.1f} s with {done / rows:.0%} recorded; "
          f"resumed {resumed:.1f} s = {resumed / full:.2f} of uninterrupted (target <= {target})", flush=True)
    shutil.rmtree(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--prompts", type=int, default=6000)
    ap.add_argument("--at", type=float, default=0.6)
    ap.add_argument("--split-mb", type=float, default=64, help="filter: read files in pieces of this many MB")
    ap.add_argument("--corpus", type=int, default=10_000, help="score-tiny: reviews in the scored corpus")
    ap.add_argument("--jobs", default="filter,dedup,score", help="which of filter, dedup, score and score-tiny")
    args = ap.parse_args()
    jobs = args.jobs.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="reviewlm-resume-"))
    write_synth(str(tmp / "corpus"), args.rows, seed=1, shards=8, min_words=20, max_words=150)
    (tmp / "dedup.yaml").write_text(DEDUP)
    size = sum(p.stat().st_size for p in (tmp / "corpus").iterdir()) / 2**20
    print(f"filter: {args.rows:,} reviews, {size:,.0f} MB in 8 files; score: {args.prompts:,} prompts ({tmp})",
          flush=True)

    def stats(out):
        s = json.loads((out / "stats.json").read_text())
        return s["rows_read"], s["kept"], s["rejected"], s["quarantined"]

    filter_argv = [BIN / "reviewlm", "filter", tmp / "corpus", "--output", tmp / "out", "--num-cpus", 2,
                   "--split-mb", args.split_mb]
    if "filter" in jobs:
        compare("filter, default recipe", filter_argv, tmp / "out", args.rows, args.at, stats)
    if "dedup" in jobs:
        compare("filter, with dedup", [*filter_argv, "--recipe", tmp / "dedup.yaml"], tmp / "out", args.rows,
                args.at, stats)
    prompts = tmp / "prompts.txt"
    prompts.write_text("".join(f"review {i}: these shoes are [MASK] and the fit is [MASK].\n"
                               for i in range(args.prompts)))

    def summary(out):
        s = json.loads((out / "summary.json").read_text())
        return {k: v for k, v in s["models"]["base"].items() if k not in ("path",)}

    score_argv = [BIN / "reviewlm", "score", "--model", "base=starter", "--prompts", prompts, "--output",
                  tmp / "scored", "--num-cpus", 2]
    if "score" in jobs:
        compare("score, starter model", score_argv, tmp / "scored", args.prompts, args.at, summary)
    if "score-tiny" in jobs:
        score_tiny(tmp, prompts, args)


def score_tiny(tmp: Path, prompts: Path, args) -> None:
    """The three scoring paths: prompts and a corpus's masked tokens with the tiny model, classes
    with a star classifier trained from tiny and one from starter."""
    write_synth(str(tmp / "reviews"), args.corpus, seed=2, shards=4, min_words=20, max_words=80)
    for model in ("tiny", "starter"):
        timed([BIN / "reviewlm", "train", "--task", "stars", "--data", tmp / "reviews", "--model", model,
               "--max-steps", 2, "--output", tmp / f"stars-{model}", "--num-cpus", 2])

    def summary(out):
        return json.loads((out / "summary.json").read_text())["models"]

    base = [BIN / "reviewlm", "score", "--output", tmp / "scored", "--num-cpus", 2]
    runs = {"score, tiny, prompts": (["--model", "base=tiny", "--prompts", prompts], args.prompts),
            "score, tiny, corpus": (["--model", "base=tiny", "--corpus", tmp / "reviews"], args.corpus),
            **{f"score, {model} stars classifier, corpus": (
                ["--task", "stars", "--model", f"base={tmp / f'stars-{model}' / 'model'}", "--corpus", tmp / "reviews"],
                args.corpus) for model in ("tiny", "starter")}}
    for name, (extra, rows) in runs.items():
        compare(name, [*base, *extra], tmp / "scored", rows, args.at, summary, target=0.5)


if __name__ == "__main__":
    main()
