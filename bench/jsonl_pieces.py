"""A big JSON Lines file's read, planned with a counting pass (before) and with none (now).

    .venv/bin/python bench/jsonl_pieces.py [--mb 2000] [--split-mb 64] [--num-cpus 2]

Before, every `--split-mb` range of a JSON Lines file was read by a Ray task that counted its
newlines, so that records could be numbered by line, before any read task could start. Now a
record is numbered by its byte offset and the file is cut at equal offsets with nothing read.
On a Ray of `--num-cpus`, a file of `--mb` MB of synthesized reviews (read from the page
cache): the counting pass as it was (reproduced here), the plan now, and the parse of every
piece by a task each (`read_piece`), which must yield each line once.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ray
from reviewlm.io.layout import Columns
from reviewlm.io.pieces import plan_pieces
from reviewlm.io.readers import check_inputs, read_piece
from reviewlm.synth import synth_rows


def write(path: Path, mb: float) -> int:
    rows = synth_rows(20_000, seed=5, min_words=20, max_words=80).to_pylist()
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    copies = int(mb * 1e6 // len(lines.encode())) + 1
    with path.open("w") as f:
        for _ in range(copies):
            f.write(lines)
    return copies * len(rows)


@ray.remote(num_cpus=1)
def count_newlines(path: str, lo: int, hi: int) -> int:
    """The counting pass as it was: one task per range reads its bytes for their newlines."""
    with open(path, "rb") as f:
        f.seek(lo)
        return f.read(hi - lo).count(b"\n")


@ray.remote(num_cpus=1)
def parse(fs, piece) -> int:
    return sum(t.num_rows for t in read_piece(fs, piece, Columns()))


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
    lines = write(path, args.mb)
    inputs, size = check_inputs([str(path)]), int(args.split_mb * (1 << 20))
    ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    path.read_bytes()  # into the page cache, for both
    pieces, t_plan = timed(lambda: plan_pieces(inputs, size))
    ends = [p.start for p in pieces[1:]] + [path.stat().st_size]
    counted, t_count = timed(lambda: sum(ray.get([count_newlines.remote(str(path), p.start, e)
                                                  for p, e in zip(pieces, ends)])))
    rows, t_parse = timed(lambda: sum(ray.get([parse.remote(inputs.filesystem, p) for p in pieces])))
    assert rows == counted == lines, (rows, counted, lines)
    mb = os.path.getsize(path) / 1e6
    print(f"{mb:,.0f} MB, {lines:,} lines, {len(pieces)} pieces, {args.num_cpus} CPUs")
    print(f"  plan before: the counting pass {t_count:.2f} s; plan now {t_plan:.4f} s")
    print(f"  parse of every piece {t_parse:.2f} s: the read was {(t_count + t_parse) / t_parse:.3f}x what it is "
          f"now, and read {2 * mb:,.0f} MB of storage where it now reads {mb:,.0f}")
    ray.shutdown()
    path.unlink()


if __name__ == "__main__":
    main()
