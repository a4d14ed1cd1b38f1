"""One big file vs the same rows in eight: the filter job's time, as a ratio in one run.

    .venv/bin/python bench/read_split.py [--rows 400000] [--format jsonl]

Review dumps often ship as one big file per category. The same synthesized reviews are
written as one file and as eight; `reviewlm filter --mode annotate --num-cpus 2` reads each
(job time from `stats.json`: `wall_time_s - ray_start_s`, best of `--repeat`). With byte
ranges (`--split-mb`, default 64) the one file is read by several tasks; `--split-mb 100000`
reads it whole, as before. Kept/rejected/quarantined counts must agree across all runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from filter_throughput import RECIPE, reviewlm_run  # noqa: E402
from reviewlm.synth import write_synth  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reviewlm-split-"))
    recipe = tmp / "recipe.yaml"
    recipe.write_text(RECIPE)
    for shards in (1, 8):
        write_synth(str(tmp / f"s{shards}"), args.rows, seed=3, fmt=args.format, shards=shards,
                    min_words=20, max_words=150)
    size = sum(p.stat().st_size for p in (tmp / "s1").iterdir()) / 2**20
    print(f"{args.rows:,} reviews, {size:,.0f} MB of {args.format}, in one file and in eight ({tmp})", flush=True)
    runs = {"eight files": ("s8", []), "one file in ranges": ("s1", []),
            "one file read whole": ("s1", ["--split-mb", "100000"])}
    best, counts = {}, set()
    for name, (corpus, extra) in runs.items():
        results = [reviewlm_run(tmp / corpus, tmp / "out", 2, recipe, extra=extra) for _ in range(args.repeat)]
        best[name] = min(r["job_s"] for r in results)
        counts |= {(r["rows"], r["kept"]) for r in results}
        times = " / ".join(f"{r['job_s']:.1f}" for r in results)
        print(f"{name}: job {times} s, "
              f"peak {max(r['peak_rss_mb'] for r in results):,.0f} MB", flush=True)
    assert len(counts) == 1, f"the runs disagree: {counts}"
    print(f"ratio one file in ranges / eight files = {best['one file in ranges'] / best['eight files']:.2f}"
          "   (target <= 1.15)")
    print(f"ratio one file read whole / eight files = {best['one file read whole'] / best['eight files']:.2f}")


if __name__ == "__main__":
    main()
