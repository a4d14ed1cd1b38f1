""".json dumps as published: JSON Lines named .json (split into ranges) and a JSON array (streamed).

    .venv/bin/python bench/read_json.py [--mb 200]

Yelp-shaped reviews written as `--mb` MB of JSON Lines named `.json`, and the same rows as one
JSON array; and both at a tenth of the size. Each is read by the filter job (recipe
`non_null`, 2 CPUs): job time, read tasks, and the peak RSS of the process tree (driver,
raylet, workers). A streamed array's peak should not grow with the file: 10x / 1x near 1.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from filter_throughput import BIN, run_watched
from reviewlm.io.pieces import split_file
from reviewlm.io.readers import check_inputs

WORDS = "the sole held up after months of running and the fit is true to size".split()


def review(i: int) -> dict:
    text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(120 + i % 60))
    return {"review_id": f"KU_O5udG6zpxOg-{i:08d}", "user_id": f"mh_-eMZ6K5RLWhZyISBhwA{i}",
            "business_id": f"XQfwVwDr-v0ZS3_Cb{i % 97}", "stars": float(i % 5 + 1), "useful": i % 3, "funny": 0,
            "cool": 0, "text": text, "date": "2018-07-07 22:09:11"}


def write(d: Path, mb: float) -> tuple[Path, Path, int]:
    lines, size, i = [], 0, 0
    while size < mb * 1e6:
        line = json.dumps(review(i))
        lines.append(line)
        size += len(line) + 1
        i += 1
    jsonl, array = d / f"lines-{mb:g}.json", d / f"array-{mb:g}.json"
    jsonl.write_text("\n".join(lines) + "\n")
    array.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    return jsonl, array, i


def job(path: Path, out: Path) -> dict:
    recipe = out.parent / "non_null.yaml"
    recipe.write_text("non_null\n")
    cmd = [str(BIN / "reviewlm"), "filter", str(path), "--output", str(out), "--overwrite", "--num-cpus", "2",
           "--recipe", str(recipe), "--id-column", "review_id", "--rating-column", "stars"]
    peak, err = run_watched(cmd, {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    stats = json.loads((out / "stats.json").read_text())
    job_s = stats["wall_time_s"] - stats["ray_start_s"]
    return {"rows": stats["rows_read"], "quarantined": stats["quarantined"], "job_s": job_s,
            "mb_s": path.stat().st_size / 1e6 / job_s, "peak_mb": peak / 2**20,
            "sniffed": "as JSON Lines" in err}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reviewlm-json-"))
    results = {}
    for mb in (args.mb / 10, args.mb):
        jsonl, array, n = write(tmp, mb)
        inputs = check_inputs([str(jsonl)])
        pieces = len(split_file(inputs.filesystem, inputs.files[0], 64 << 20))
        for kind, path in (("JSON Lines named .json", jsonl), ("JSON array", array)):
            r = results[mb, kind] = job(path, tmp / f"out-{kind[:5]}-{mb:g}")
            assert r["rows"] == n and r["quarantined"] == 0, r
            print(f"{mb:g} MB {kind}: {n:,} rows in {r['job_s']:.1f} s ({r['mb_s']:.1f} MB/s), "
                  f"peak RSS {r['peak_mb']:,.0f} MB" + (f", sniffed, {pieces} read tasks at --split-mb 64"
                                                      if r["sniffed"] else ""), flush=True)
    for kind in ("JSON Lines named .json", "JSON array"):
        print(f"{kind}: peak RSS {args.mb:g} MB / {args.mb / 10:g} MB = "
              f"{results[args.mb, kind]['peak_mb'] / results[args.mb / 10, kind]['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
