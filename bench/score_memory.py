"""The score job's driver memory at 10x the prompts: peak RSS of the driver process alone.

    .venv/bin/python bench/score_memory.py [--prompts 20000] [--previous REF]

`reviewlm score --model tiny --top-k 10` on N and 10 x N synthesized prompts, two models
(so substitutions are computed too), 2 CPUs. The driver is the `reviewlm` process (Ray's
raylet and workers are its children and not counted); its RSS is sampled every 0.2 s.
With --previous, the same small run by an earlier commit (from a git worktree): its
summary.json must equal this one's (paths and times aside).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from filter_throughput import run_watched  # noqa: E402
from score_throughput import make_prompts  # noqa: E402


def driver_run(prompts: Path, out: Path, env: dict | None = None) -> tuple[float, dict]:
    """Run the score CLI; return the driver's peak RSS in MB and summary.json."""
    cmd = [sys.executable, "-m", "reviewlm.cli", "score", "--model", "a=tiny", "--model", "b=tiny",
           "--prompts", str(prompts), "--output", str(out), "--top-k", "10", "--num-cpus", "2", "--overwrite"]
    peak, _ = run_watched(cmd, {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}, tree=False, every=0.2)
    return peak / 2**20, json.loads((out / "summary.json").read_text())


def comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("models", "wall_time_s")} | {
        "models": {n: {k: v for k, v in m.items() if k != "path"} for n, m in summary["models"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=20_000)
    ap.add_argument("--previous", help="git ref of an earlier reviewlm to compare the small run's summary with")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reviewlm-score-memory-"))
    small, big = tmp / "small.txt", tmp / "big.txt"
    prompts = make_prompts(10 * args.prompts)
    small.write_text("\n".join(prompts[:args.prompts]) + "\n")
    big.write_text("\n".join(prompts) + "\n")
    rss_small, summary = driver_run(small, tmp / "s")
    print(f"{args.prompts:,} prompts: driver peak {rss_small:,.0f} MB", flush=True)
    rss_big, _ = driver_run(big, tmp / "b")
    print(f"{10 * args.prompts:,} prompts: driver peak {rss_big:,.0f} MB", flush=True)
    print(f"ratio driver peak RSS 10x / 1x = {rss_big / rss_small:.2f}   (target <= 1.3)")
    if args.previous:
        tree = tmp / "previous-src"
        subprocess.run(["git", "worktree", "add", "-f", "--detach", str(tree), args.previous], check=True,
                       capture_output=True)
        try:
            rss_prev, before = driver_run(small, tmp / "p", env={"PYTHONPATH": f"{tree}/lib"})
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], capture_output=True)
        same = comparable(before) == comparable(summary)
        print(f"{args.previous}, {args.prompts:,} prompts: driver peak {rss_prev:,.0f} MB; "
              f"summary.json {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
