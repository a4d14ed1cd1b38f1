"""Planning a big JSON Lines file's read pieces: one task reading it whole against a task per range.

    .venv/bin/python bench/plan_pieces.py [--mb 2000] [--split-mb 64] [--num-cpus 2]

A JSON Lines file of `--mb` MB (synthesized reviews, written once and read from the page
cache) is cut into `--split-mb` pieces, numbered by line, two ways on a Ray of `--num-cpus`:
`split_file` in one Ray task (the whole file read by one task, as every big JSON Lines file
was before the first read task could start) and `plan_pieces` (a task per range, each
counting its own bytes' newlines). Both must give the same pieces; the ratio is the wall time
of the one task over the ranges'.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ray
from reviewlm.io.pieces import plan_pieces, split_file
from reviewlm.io.readers import check_inputs
from reviewlm.synth import synth_rows


def write(path: Path, mb: float) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in synth_rows(20_000, seed=5, min_words=20, max_words=80).to_pylist())
    with path.open("w") as f:
        for _ in range(int(mb * 1e6 // len(lines.encode())) + 1):
            f.write(lines)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=2000)
    ap.add_argument("--split-mb", type=float, default=64)
    ap.add_argument("--num-cpus", type=int, default=2)
    args = ap.parse_args()
    path = Path(tempfile.mkdtemp(prefix="reviewlm-plan-")) / "reviews.jsonl"
    write(path, args.mb)
    inputs, size = check_inputs([str(path)]), int(args.split_mb * (1 << 20))
    ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    path.read_bytes()  # into the page cache, for both
    one_task = ray.remote(num_cpus=1)(split_file)
    whole, t_whole = timed(lambda: ray.get(one_task.remote(inputs.filesystem, inputs.files[0], size)))
    ranges, t_ranges = timed(lambda: plan_pieces(inputs, size))
    assert whole == ranges, "the two plans differ"
    print(f"{os.path.getsize(path) / 1e6:,.0f} MB, {len(ranges)} pieces, {args.num_cpus} CPUs: one task "
          f"{t_whole:.2f} s, a task per range {t_ranges:.2f} s: {t_whole / t_ranges:.2f}x")
    ray.shutdown()
    path.unlink()


if __name__ == "__main__":
    main()
