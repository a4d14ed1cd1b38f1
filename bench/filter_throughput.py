"""Filter throughput: reviewlm on Ray vs a plain pandas loop, as ratios measured in one run.

    .venv/bin/python bench/filter_throughput.py [--rows 200000] [--skip-memory]

(a) single-process pandas loop: read the JSONL, then per row nltk VADER + keyword checks;
(b) `reviewlm filter --mode annotate --num-cpus 1`; (c) the same with 2 CPUs. Annotate mode
runs every filter on every row, the same work the loop does. Compute limits: nltk's VADER
alone, per core; the same in two processes at once (what two busy cores of this machine
give); and reviewlm's VADER alone (nltk's scores, tokens found in linear time, see
`reviewlm.filters.vader`), the limit of the job itself. Peak memory (summed RSS of the
process tree sampled every second: driver, raylet, workers; shared object-store pages count
once per process) at 4x the corpus vs 1x. Also: how many of 25,000 template sentences the
default recipe keeps (the reference study kept 8,950 of 24,996).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
from nltk.sentiment.vader import SentimentIntensityAnalyzer
from reviewlm import words
from reviewlm.filters import vader
from reviewlm.synth import write_synth

BIN = Path(sys.executable).parent
RECIPE = """all:
  - non_null
  - brand
  - product
  - sentiment: {min_compound: 0.0}
  - wanted
"""


def baseline(corpus: Path) -> tuple[float, int]:
    """(a): the notebook way, one process, one row at a time."""
    start = time.perf_counter()
    df = pd.concat(pd.read_json(p, lines=True) for p in sorted(corpus.glob("*.jsonl")))
    sia = vader.load(SentimentIntensityAnalyzer)
    brand = re.compile(r"\b(" + "|".join(map(re.escape, words.BRANDS)) + r")\b", re.I)
    product = re.compile(r"\b(" + "|".join(map(re.escape, words.PRODUCTS)) + r")\b", re.I)
    wanted = re.compile(r"\b(" + "|".join(map(re.escape, words.WANTED)) + r")\b", re.I)
    kept = 0
    for text in df["text"]:
        ok = isinstance(text, str) and text.strip() != ""
        compound = sia.polarity_scores(text)["compound"]
        ok = ok and bool(brand.search(text)) and bool(product.search(text)) and compound >= 0
        kept += ok and bool(wanted.search(text))
    return len(df) / (time.perf_counter() - start), kept


def vader_alone(corpus: Path, cls: type = SentimentIntensityAnalyzer, n: int = 20_000) -> float:
    texts = pd.read_json(sorted(corpus.glob("*.jsonl"))[0], lines=True)["text"].tolist()[:n]
    sia = vader.load(cls)
    start = time.perf_counter()
    for text in texts:
        sia.polarity_scores(text)
    return len(texts) / (time.perf_counter() - start)


def vader_pair(corpus: Path) -> float:
    """nltk's VADER alone in two processes at once: what two busy cores of this machine give."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        return sum(pool.map(vader_alone, [corpus, corpus]))


def peak_rss(proc: subprocess.Popen, stop: threading.Event, out: list, tree: bool, every: float) -> None:
    """Sample the summed RSS of `proc` (and, with `tree`, its descendants) until `stop`; append the peak."""
    peak = 0
    while not stop.is_set():
        total = 0
        try:
            root = psutil.Process(proc.pid)
            processes = [root] + (root.children(recursive=True) if tree else [])
        except psutil.NoSuchProcess:
            break
        for p in processes:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak = max(peak, total)
        stop.wait(every)
    out.append(peak)


def run_watched(cmd: list[str], env: dict, tree: bool = True, every: float = 1.0) -> tuple[int, str]:
    """Run `cmd` to the end; return its peak RSS in bytes (see `peak_rss`) and its stderr. Exits on failure."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stop, peak = threading.Event(), []
    watcher = threading.Thread(target=peak_rss, args=(proc, stop, peak, tree, every))
    watcher.start()
    _, err = proc.communicate()
    stop.set()
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {err[-3000:]}")
    return peak[0], err


def reviewlm_run(corpus: Path, out: Path, cpus: int, recipe: Path, mode: str = "annotate",
                 extra: list[str] = ()) -> dict:
    """Run the CLI; return job time and rows/s (from Ray up to `_SUCCESS`), process wall time and peak RSS."""
    cmd = [str(BIN / "reviewlm"), "filter", str(corpus), "--output", str(out), "--overwrite",
           "--num-cpus", str(cpus), "--mode", mode, "--recipe", str(recipe), *extra]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    start = time.perf_counter()
    peak, _ = run_watched(cmd, env)
    stats = json.loads((out / "stats.json").read_text())
    job_s = stats["wall_time_s"] - stats["ray_start_s"]
    return {"rows": stats["rows_read"], "job_s": job_s, "job_rows_s": stats["rows_read"] / job_s,
            "ray_start_s": stats["ray_start_s"],
            "process_s": time.perf_counter() - start, "peak_rss_mb": peak / 2**20,
            "kept": stats.get("would_keep", stats["kept"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--skip-memory", action="store_true", help="skip the 4x memory run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reviewlm-bench-"))
    recipe = tmp / "recipe.yaml"
    recipe.write_text(RECIPE)
    print(f"corpus: {args.rows} synthesized reviews of 20-150 words in {tmp}", flush=True)
    write_synth(str(tmp / "c1"), args.rows, seed=1, shards=8, min_words=20, max_words=150)

    vader_nltk = vader_alone(tmp / "c1")
    print(f"nltk's VADER alone, 1 core: {vader_nltk:,.0f} rows/s", flush=True)
    pair = vader_pair(tmp / "c1")
    print(f"nltk's VADER alone, 2 processes at once: {pair:,.0f} rows/s together "
          f"({pair / (2 * vader_nltk):.2f} of 2 x one core)", flush=True)
    vader_ours = vader_alone(tmp / "c1", vader.Vader)
    print(f"reviewlm's VADER alone (same scores), 1 core: {vader_ours:,.0f} rows/s "
          f"({vader_ours / vader_nltk:.2f} x nltk's)", flush=True)
    a_rate, a_kept = baseline(tmp / "c1")
    print(f"(a) pandas loop, 1 process: {a_rate:,.0f} rows/s (keeps {a_kept})", flush=True)
    b = reviewlm_run(tmp / "c1", tmp / "o1", 1, recipe)
    print(f"(b) reviewlm, 1 CPU: {b['job_rows_s']:,.0f} rows/s (job), {b['process_s']:.1f} s process, "
          f"peak {b['peak_rss_mb']:,.0f} MB, keeps {b['kept']}", flush=True)
    c = reviewlm_run(tmp / "c1", tmp / "o2", 2, recipe)
    print(f"(c) reviewlm, 2 CPUs: {c['job_rows_s']:,.0f} rows/s (job), {c['process_s']:.1f} s process, "
          f"peak {c['peak_rss_mb']:,.0f} MB, keeps {c['kept']}", flush=True)
    print(f"starting Ray took {b['ray_start_s']:.1f} s (1 CPU) and {c['ray_start_s']:.1f} s (2 CPUs)")
    print(f"ratio (c)/(a) = {c['job_rows_s'] / a_rate:.2f}   (target >= 1.7)")
    print(f"ratio (c)/(2 x nltk's VADER alone) = {c['job_rows_s'] / (2 * vader_nltk):.2f}   (target >= 0.8)")
    print(f"ratio (c)/(nltk's VADER alone in 2 processes at once) = {c['job_rows_s'] / pair:.2f}")
    print(f"ratio (c)/(2 x reviewlm's VADER alone): parallel efficiency = {c['job_rows_s'] / (2 * vader_ours):.2f}")
    print(f"ratio (c)/(b) = {c['job_rows_s'] / b['job_rows_s']:.2f}")
    print(f"ratio (c)/(a) counting Ray start-up = {args.rows / c['process_s'] / a_rate:.2f}")
    if not args.skip_memory:
        write_synth(str(tmp / "c4"), 4 * args.rows, seed=4, shards=32, min_words=20, max_words=150)
        c4 = reviewlm_run(tmp / "c4", tmp / "o4", 2, recipe)
        print(f"4x corpus, 2 CPUs: {c4['job_rows_s']:,.0f} rows/s, peak {c4['peak_rss_mb']:,.0f} MB, "
              f"{c4['job_rows_s'] / (2 * vader_ours):.2f} of 2 x reviewlm's VADER alone")
        print(f"ratio peak memory 4x/1x = {c4['peak_rss_mb'] / c['peak_rss_mb']:.2f}   (target <= 1.3)")

    write_synth(str(tmp / "t25"), 25_000, seed=0)
    d = reviewlm_run(tmp / "t25", tmp / "o25", 2, recipe, mode="drop")
    default = subprocess.run([str(BIN / "reviewlm"), "filter", str(tmp / "t25"), "--output", str(tmp / "od"),
                              "--num-cpus", "2"], capture_output=True, text=True,
                             env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    stats = json.loads((tmp / "od" / "stats.json").read_text())
    print(f"25,000 template sentences: default recipe keeps {stats['kept']} "
          f"(reference study: 8,950 of 24,996); all-brands variant keeps {d['kept']}")
    print(default.stdout)


if __name__ == "__main__":
    main()
