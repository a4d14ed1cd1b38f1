"""recommend: quality of each retriever (and a trained reranker) on labelled needs, and time and
driver memory as the catalogue grows 10x.

    .venv/bin/python bench/recommend.py [--products 2000] [--quality-products 1100] [--reranker-steps 300]

Quality: a synthesized catalogue (`synth --kind catalog`), its 22 needs written in other words
than the products' and their judgments; nDCG@10, MRR@10 and recall@100 of `dense`, `bm25`,
`hybrid`, and `dense` reranked by a pair classifier that `reviewlm train --task classify`
fine-tunes from `starter` on synthesized ESCI pairs (`synth --kind relevance`, queries in the
products' own words). Scale: `recommend` (dense, with reviews) on N and 10 x N products, 2 CPUs:
wall time of the process, products embedded per second per core (the 9 N more products over the
extra time), and the driver's peak RSS (the `reviewlm` process alone).
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

BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def cli(*args, tree: bool = False) -> tuple[float, float]:
    """Run `reviewlm ARGS`; its wall time in s and peak RSS in MB (the driver, or with `tree` all under it)."""
    start = time.perf_counter()
    peak, _ = run_watched([str(BIN / "reviewlm"), *map(str, args)], ENV, tree=tree, every=0.2)
    return time.perf_counter() - start, peak / 2**20


def quality(tmp: Path, products: int, steps: int) -> None:
    shop = tmp / "shop"
    cli("synth", "--kind", "catalog", "--rows", products, "--output", shop)
    common = ["--catalog", shop / "catalog.jsonl", "--queries", shop / "needs.txt", "--judgments",
              shop / "judgments.jsonl", "--num-cpus", 2]
    runs = {name: ["--retriever", name] for name in ("dense", "bm25", "hybrid")}
    if steps:
        cli("synth", "--kind", "relevance", "--rows", 4000, "--output", tmp / "pairs")
        cli("train", "--task", "classify", "--model", "starter", "--data", tmp / "pairs", "--text-column", "query",
            "--text-pair-column", "product_title", "--label-column", "esci_label", "--max-steps", steps,
            "--output", tmp / "reranker", "--num-cpus", 2)
        metrics = json.loads((tmp / "reranker" / "metrics.json").read_text())
        print(f"reranker: {steps} steps from starter on 4,000 ESCI pairs, test accuracy "
              f"{metrics['test']['accuracy']:.3f}", flush=True)
        runs["dense + reranker"] = ["--retriever", "dense", "--reranker", tmp / "reranker" / "model"]
    print(f"{'retriever':<18}{'ndcg@10':>9}{'mrr@10':>9}{'recall@100':>12}{'seconds':>9}")
    for name, extra in runs.items():
        out = tmp / f"q-{name.replace(' ', '')}"
        wall, _ = cli("recommend", *common, *extra, "--output", out)
        m = json.loads((out / "summary.json").read_text())["metrics"]
        print(f"{name:<18}{m['ndcg@10']:>9.3f}{m['mrr@10']:>9.3f}{m['recall@100']:>12.3f}{wall:>9.1f}", flush=True)


def scale(tmp: Path, products: int) -> None:
    results = {}
    for n in (products, 10 * products):
        shop = tmp / f"shop-{n}"
        cli("synth", "--kind", "catalog", "--rows", n, "--output", shop)
        wall, rss = cli("recommend", "--catalog", shop / "catalog.jsonl", "--queries", shop / "needs.txt",
                        "--reviews", shop / "reviews.jsonl", "--output", tmp / f"s-{n}", "--num-cpus", 2)
        results[n] = (wall, rss)
        print(f"{n:>7,} products: {wall:6.1f} s, driver peak {rss:,.0f} MB, "
              f"{22 / wall:.2f} needs/s end to end", flush=True)
    (w1, r1), (w10, r10) = results[products], results[10 * products]
    print(f"10x / 1x: time {w10 / w1:.2f}, driver peak RSS {r10 / r1:.2f} (target <= 1.3); "
          f"{9 * products / (w10 - w1) / 2:,.0f} products embedded/s per core (the extra products over the extra time)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--products", type=int, default=2000, help="scale: the smaller catalogue")
    ap.add_argument("--quality-products", type=int, default=1100)
    ap.add_argument("--reranker-steps", type=int, default=300, help="0: no reranker")
    ap.add_argument("--only", choices=["quality", "scale"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reviewlm-recommend-"))
    if args.only != "scale":
        quality(tmp, args.quality_products, args.reranker_steps)
    if args.only != "quality":
        scale(tmp, args.products)


if __name__ == "__main__":
    main()
