"""near_dedup at two sizes against exact dedup and against datasketch's MinHashLSH, ratios in one run.

    .venv/bin/python bench/near_dedup.py [--rows 200000] [--scale 4] [--datasketch-rows 200000]

Corpora: `--rows` and `--scale` x that many synthesized reviews of 20-150 words, 10% of them
near-copies of an earlier review (one edit), in 8 and 32 JSONL files. For each: the filter
job (2 CPUs) with the recipe `near_dedup` and with `dedup`, job time from Ray up to
`_SUCCESS` (stats.json), rows/s and input MB/s per core, peak RSS of the process tree.
Then datasketch (MinHash + MinHashLSH, the same n-grams, permutations and bands) in one
process on the first `--datasketch-rows` rows, its candidates verified by the same exact
Jaccard and joined by the same components: the rows each drops, compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson
from datasketch import MinHash, MinHashLSH
from filter_throughput import BIN, run_watched
from reviewlm.filters.near_dedup import lsh_params, words
from reviewlm.synth import write_synth
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def job(corpus: Path, out: Path, recipe: Path) -> dict:
    cmd = [str(BIN / "reviewlm"), "filter", str(corpus), "--output", str(out), "--overwrite",
           "--num-cpus", "2", "--recipe", str(recipe)]
    peak, err = run_watched(cmd, {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    stats = json.loads((out / "stats.json").read_text())
    job_s = stats["wall_time_s"] - stats["ray_start_s"]
    mb = sum(p.stat().st_size for p in corpus.glob("*.jsonl")) / 1e6
    line = next((ln for ln in err.splitlines() if "candidate pairs" in ln), "")
    return {"rows": stats["rows_read"], "dropped": stats["rejected"], "job_s": job_s,
            "rows_s": stats["rows_read"] / job_s, "mb_s_core": mb / job_s / 2, "peak_mb": peak / 2**20,
            "line": line}


def datasketch_drops(texts: list[str], threshold: float = 0.8, num_perm: int = 128, n: int = 5) -> tuple:
    """The rows datasketch's LSH makes near-duplicates of an earlier row (same verification and
    connected components), and its rows/s."""
    bands, rows = lsh_params(threshold, num_perm)
    start = time.perf_counter()
    lsh, pairs = MinHashLSH(num_perm=num_perm, params=(bands, rows)), []
    grams = [{" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))} if w else set()
             for w in words(pa.array(texts)).to_pylist()]
    for i, g in enumerate(grams):
        if not g:
            continue
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([s.encode() for s in g])
        pairs += [(i, j) for j in lsh.query(m)]
        lsh.insert(i, m)
    rate = len(texts) / (time.perf_counter() - start)
    edges = np.array([p for p in pairs if len(grams[p[0]] & grams[p[1]]) / len(grams[p[0]] | grams[p[1]]) >= threshold]
                     or np.empty((0, 2)), dtype=np.int64)
    n = len(texts)
    _, label = connected_components(coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)))
    first = np.full(label.max() + 1, n)
    np.minimum.at(first, label, np.arange(n))  # a cluster's first row is its smallest
    return set(np.flatnonzero(first[label] != np.arange(n)).tolist()), rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--datasketch-rows", type=int, default=200_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reviewlm-near-"))
    near, exact = tmp / "near.yaml", tmp / "exact.yaml"
    near.write_text("near_dedup\n")
    exact.write_text("dedup\n")
    results = {}
    for k, rows, shards in ((1, args.rows, 8), (args.scale, args.scale * args.rows, 32)):
        corpus = tmp / f"c{k}"
        write_synth(str(corpus), rows, seed=5, shards=shards, min_words=20, max_words=150, near_copies=0.1)
        for name, recipe in (("near_dedup", near), ("dedup", exact)):
            r = results[k, name] = job(corpus, tmp / f"o{k}{name}", recipe)
            print(f"{rows:,} rows, {name}: {r['job_s']:.1f} s, {r['rows_s']:,.0f} rows/s, "
                  f"{r['mb_s_core']:.2f} MB/s per core, peak {r['peak_mb']:,.0f} MB, drops {r['dropped']:,}"
                  f"{'  (' + r['line'] + ')' if r['line'] else ''}", flush=True)
    one, big = results[1, "near_dedup"], results[args.scale, "near_dedup"]
    print(f"near_dedup / dedup throughput: {one['rows_s'] / results[1, 'dedup']['rows_s']:.2f} (1x), "
          f"{big['rows_s'] / results[args.scale, 'dedup']['rows_s']:.2f} ({args.scale}x)")
    print(f"near_dedup peak memory {args.scale}x / 1x = {big['peak_mb'] / one['peak_mb']:.2f}   (goal <= 1.3); "
          f"dedup: {results[args.scale, 'dedup']['peak_mb'] / results[1, 'dedup']['peak_mb']:.2f}")
    print(f"near_dedup MB/s per core: {one['mb_s_core']:.2f} (1x), {big['mb_s_core']:.2f} ({args.scale}x)   "
          "(goal >= 4: 10x Data-Juicer's published 0.35-0.47)")

    table = pa.concat_tables(pajson.read_json(p) for p in sorted((tmp / "c1").glob("*.jsonl")))
    table = table.slice(0, args.datasketch_rows)
    theirs, rate = datasketch_drops(table["text"].to_pylist())
    ids = table["id"].to_pylist()
    out = tmp / "ods"
    (tmp / "cds").mkdir()
    (tmp / "cds" / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    mine = job(tmp / "cds", out, near)
    import pandas as pd

    dropped = set(pd.read_parquet(out / "rejected")["id"])
    ours = {i for i, rid in enumerate(ids) if rid in dropped}
    differ = len(ours ^ theirs)
    print(f"datasketch MinHashLSH, 1 process, {len(ids):,} rows: {rate:,.0f} rows/s; the job on 2 CPUs "
          f"{mine['rows_s']:,.0f} rows/s = {mine['rows_s'] / rate:.1f}x")
    print(f"rows dropped: job {len(ours):,}, datasketch {len(theirs):,}, in one but not the other {differ} "
          f"({differ / max(len(theirs), 1):.2%})")


if __name__ == "__main__":
    sys.exit(main())
