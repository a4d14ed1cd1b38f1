"""A short masked-LM run at 20x the data: time and peak memory of the process tree, as ratios.

    .venv/bin/python bench/train_scale.py [--reviews 20000] [--model starter] [--streaming on|off|auto]

`reviewlm train --max-steps 5 --max-eval-samples 256 --num-cpus 2` on N and 20 x N
synthesized reviews (eight JSONL files each). Time is the process's wall time (Ray's start
included); memory is the peak of the summed RSS of the `reviewlm` process and all its
descendants (raylet, object store, workers), sampled every 0.5 s. `--streaming off` measures
the materialized path, as before streaming.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from filter_throughput import run_watched  # noqa: E402
from reviewlm.synth import write_synth  # noqa: E402


def train_run(corpus: Path, out: Path, model: str, streaming: str) -> dict:
    cmd = [sys.executable, "-m", "reviewlm.cli", "train", "--data", str(corpus), "--output", str(out), "--model", model,
           "--max-steps", "5", "--max-eval-samples", "256", "--num-cpus", "2", "--streaming", streaming, "--overwrite"]
    start = time.perf_counter()
    peak, _ = run_watched(cmd, {**os.environ, "RAY_AUTH_MODE": "disabled"}, tree=True, every=0.5)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"s": time.perf_counter() - start, "peak_mb": peak / 2**20, "read": metrics["rows"]["read"],
            "steps": metrics["epochs"][-1]["step"], "streaming": metrics["streaming"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reviews", type=int, default=20_000)
    ap.add_argument("--model", default="starter")
    ap.add_argument("--streaming", choices=["auto", "on", "off"], default="on")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reviewlm-train-scale-"))
    write_synth(str(tmp / "big"), 20 * args.reviews, seed=3, shards=8, min_words=20, max_words=150)
    write_synth(str(tmp / "small"), args.reviews, seed=3, shards=8, min_words=20, max_words=150)
    runs = {}
    for name in ("small", "big"):
        size = sum(p.stat().st_size for p in (tmp / name).glob("*.jsonl")) / 2**20
        runs[name] = r = train_run(tmp / name, tmp / f"out-{name}", args.model, args.streaming)
        print(f"{r['read']:,} reviews ({size:,.0f} MB): {r['s']:.1f} s, peak {r['peak_mb']:,.0f} MB, "
              f"{r['steps']} steps, streaming {r['streaming']}", flush=True)
    small, big = runs["small"], runs["big"]
    print(f"ratio 20x / 1x: time {big['s'] / small['s']:.2f} (target <= 1.3), "
          f"peak memory {big['peak_mb'] / small['peak_mb']:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
