"""Filter, train, score and recommend at N and 4N rows: wall time, rows/s per core, and the private
memory (RssAnon) of the largest single process and of the driver, as ratios.

    .venv/bin/python bench/scale.py [--rows 250000] [--parts filter,train,score,recommend] [--cpus 2]

Each job runs as a whole process (`reviewlm ... --num-cpus CPUS`, its own local Ray) on
inputs that grow with the data (one Parquet file per 31,250 rows). Every process under the
job (driver, raylet, workers) is sampled every 0.25 s; a Ray worker keeps its memory between
tasks, so the title a process had at its peak (`ray::MapWorker(MapBatches(EachModel))`...) is an indication only.

- filter: `filter` with `dedup`, `near_dedup` and `sentiment` on N and 4N synthesized reviews
  of 20-80 words, 30% of them near copies, in JSON Lines files of 37,500 reviews; input MB/s
  per core of the job (stats.json: Ray's start left out); then, at N, `dedup` alone and
  `near_dedup` alone (goals, issue 37: MB/s per core at 4N >= 0.9 of N's, exact dedup's >=
  near_dedup's);
- train: `train --task classify --label-column label --model tiny --max-steps 2` on a
  two-class corpus where one class is half the rows, at N/4, N and 4N (the short run's time
  at 16x the rows is the issue's goal);
- train-full: the same with `--max-eval-samples 50000`, so that every row is read, counted,
  split by its hash and quarantined, and the test split (a fifth) scored, at N and 4N;
- score: `score --model t=tiny --prompts` at N and 4N prompts;
- recommend: a 2,000-product catalogue, its 22 needs, and N and 4N reviews of its products
  (`--reviews`: review count and mean rating per candidate).

Goals (issues 37 and 38): largest process and driver 4N/N <= 1.15; the classifier's short run at 16x
the rows <= 1.3x the time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from reviewlm.synth import synth_catalog, synth_rows, write_synth

BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
PER_FILE = 31_250
REVIEWS_PER_FILE = 37_500


def rss_anon(p: psutil.Process) -> int:
    with open(f"/proc/{p.pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def watched(argv: list) -> dict:
    """Run `reviewlm *argv` to the end: wall seconds, the driver's and the largest process's peak RssAnon."""
    proc = subprocess.Popen([str(BIN / "reviewlm"), *map(str, argv)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peaks: dict[int, tuple[int, str]] = {}
    done = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in tree:
                try:
                    mem = rss_anon(p)
                    if mem > peaks.get(p.pid, (0, ""))[0]:
                        peaks[p.pid] = (mem, " ".join(p.cmdline()).strip()[:60])
                except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError, StopIteration):
                    pass
            done.wait(0.25)

    start = time.perf_counter()
    watcher = threading.Thread(target=sample)
    watcher.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    if proc.returncode:
        sys.exit(f"reviewlm {' '.join(map(str, argv[:3]))} failed:\n{err[-3000:]}")
    top = max((pid for pid in peaks if pid != proc.pid), key=lambda pid: peaks[pid][0])
    return {"s": wall, "driver_mb": peaks[proc.pid][0] / 2**20, "largest_mb": peaks[top][0] / 2**20,
            "largest": peaks[top][1]}


def filter_job(data: Path, out: Path, recipe: str, cpus: list) -> dict:
    """The filter job with `recipe` (YAML): `watched`'s figures and the input MB/s per core."""
    (out.parent / f"{out.name}.yaml").write_text(recipe)
    run = watched(["filter", data, "--output", out, "--recipe", out.parent / f"{out.name}.yaml", *cpus])
    stats = json.loads((out / "stats.json").read_text())
    mb = sum(f.stat().st_size for f in data.glob("*.jsonl")) / 1e6
    return run | {"mb_s_core": mb / (stats["wall_time_s"] - stats["ray_start_s"]) / cpus[1], "kept": stats["kept"]}


def parquet(table: pa.Table, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(0, table.num_rows, PER_FILE):
        pq.write_table(table.slice(i, PER_FILE), folder / f"part-{i // PER_FILE:05d}.parquet")
    return folder


def labelled(rows: int, folder: Path) -> Path:
    """Synthesized reviews with a `label`: every other row "pos", the rest "neg"."""
    table = synth_rows(rows, seed=7, min_words=20, max_words=80)
    return parquet(table.append_column("label", pa.array(["pos", "neg"] * (rows // 2) + ["pos"] * (rows % 2))), folder)


def tiled_reviews(reviews: pa.Table, rows: int, folder: Path) -> Path:
    """`rows` reviews: the catalogue's reviews over and over, each with an id of its own."""
    table = pa.concat_tables([reviews] * -(-rows // reviews.num_rows)).slice(0, rows)
    return parquet(table.set_column(0, "id", pa.array([f"r{i}" for i in range(rows)])), folder)


def report(part: str, runs: dict[int, dict], rows_word: str, cpus: int) -> None:
    for n, r in sorted(runs.items()):
        print(f"{part:<11}{n:>11,} {rows_word:<8}{r['s']:>8.1f} s{n / r['s'] / cpus:>10,.0f}/s/core"
              f"{r['driver_mb']:>9,.0f} MB driver{r['largest_mb']:>9,.0f} MB largest ({r['largest']})", flush=True)
    small, big = (runs[n] for n in sorted(runs)[-2:])
    print(f"{part:<11}4N/N: time {big['s'] / small['s']:.2f}, driver {big['driver_mb'] / small['driver_mb']:.2f}, "
          f"largest process {big['largest_mb'] / small['largest_mb']:.2f} (goal <= 1.15)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=250_000, help="N")
    ap.add_argument("--parts", default="filter,train,train-full,score,recommend")
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    tmp, parts = Path(tempfile.mkdtemp(prefix="reviewlm-scale-")), args.parts.split(",")
    cpus = ["--num-cpus", args.cpus]
    sizes = {"N": args.rows, "4N": 4 * args.rows}
    if "filter" in parts:
        runs, data = {}, {}
        for n in sizes.values():
            data[n] = tmp / f"reviews-{n}"
            write_synth(str(data[n]), n, seed=9, shards=-(-n // REVIEWS_PER_FILE), min_words=20, max_words=80,
                        near_copies=0.3)
            runs[n] = filter_job(data[n], tmp / f"filter-{n}", "all:\n  - dedup\n  - near_dedup\n  - sentiment\n",
                                 cpus)
        report("filter", runs, "reviews", args.cpus)
        small, big = runs[args.rows]["mb_s_core"], runs[4 * args.rows]["mb_s_core"]
        print(f"filter     MB/s per core: N {small:.2f}, 4N {big:.2f}: {big / small:.2f} (goal >= 0.9)", flush=True)
        alone = {name: filter_job(data[args.rows], tmp / f"{name}-{args.rows}", f"all:\n  - {name}\n", cpus)
                 for name in ("dedup", "near_dedup")}
        print(f"filter     at N alone, MB/s per core: dedup {alone['dedup']['mb_s_core']:.2f}, near_dedup "
              f"{alone['near_dedup']['mb_s_core']:.2f} (goal: dedup >= near_dedup)", flush=True)
    if "train" in parts:
        runs = {}
        for n in (args.rows // 4, *sizes.values()):
            data = labelled(n, tmp / f"labelled-{n}")
            runs[n] = watched(["train", "--task", "classify", "--label-column", "label", "--data", data, "--model",
                               "tiny", "--max-steps", 2, "--output", tmp / f"train-{n}", *cpus])
            read = json.loads((tmp / f"train-{n}" / "metrics.json").read_text())["rows"]["read"]
            print(f"train     {n:,} reviews: the short run read {read:,} of them", flush=True)
        report("train", runs, "reviews", args.cpus)
        small, big = runs[args.rows // 4], runs[4 * args.rows]
        print(f"train     16x the rows: time {big['s'] / small['s']:.2f} (goal <= 1.3)", flush=True)
    if "train-full" in parts:  # every row read, split, quarantined and tested; 2 steps, eval capped
        runs = {}
        for n in sizes.values():
            data = tmp / f"labelled-{n}"
            if not data.exists():
                labelled(n, data)
            runs[n] = watched(["train", "--task", "classify", "--label-column", "label", "--data", data, "--model",
                               "tiny", "--max-steps", 2, "--max-eval-samples", 50_000, "--output",
                               tmp / f"train-full-{n}", *cpus])
            metrics = json.loads((tmp / f"train-full-{n}" / "metrics.json").read_text())
            print(f"train-full {n:,} reviews: read {metrics['rows']['read']:,}, splits {metrics['rows']}", flush=True)
        report("train-full", runs, "reviews", args.cpus)
    if "score" in parts:
        runs = {}
        for n in sizes.values():
            prompts = tmp / f"prompts-{n}.txt"
            prompts.write_text("".join(f"review {i}: the shoes are very [MASK].\n" for i in range(n)))
            runs[n] = watched(["score", "--model", "t=tiny", "--prompts", prompts, "--output", tmp / f"score-{n}",
                               *cpus])
        report("score", runs, "prompts", args.cpus)
    if "recommend" in parts:
        shop = synth_catalog(2000, seed=3)
        (tmp / "shop").mkdir()
        catalog = parquet(shop["catalog"], tmp / "shop" / "catalog")
        (tmp / "shop" / "needs.txt").write_text("".join(n + "\n" for n in shop["needs"]))
        runs = {}
        for n in sizes.values():
            reviews = tiled_reviews(shop["reviews"], n, tmp / f"reviews-{n}")
            runs[n] = watched(["recommend", "--catalog", catalog, "--queries", tmp / "shop" / "needs.txt",
                               "--reviews", reviews, "--output", tmp / f"recommend-{n}", *cpus])
        report("recommend", runs, "reviews", args.cpus)


if __name__ == "__main__":
    main()
