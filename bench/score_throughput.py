"""Scoring throughput: `reviewlm score` (2 CPUs) vs transformers' fill-mask pipeline.

    .venv/bin/python bench/score_throughput.py [--prompts 20000] [--model starter] [--batch-size 64]

Prompts are synthesized review sentences with their adjective masked. The pipeline runs in
one process with torch's default threads (2 here) and `batch_size`; reviewlm runs one actor
per CPU with micro-batches of the same size. reviewlm's time is the whole job (reading
prompts, scoring, writing predictions, summary and report) with Ray already started.
Prints the ratio (target >= 3), and the per-core ratio: both on one thread, in one
process, reviewlm's scoring actor called directly on the same prompts.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time

from reviewlm import words
from reviewlm.models import resolve_model
from reviewlm.score.job import ScoreArgs, score_models
from reviewlm.score.prompts import load_word_sets
from reviewlm.synth import synth_rows


def make_prompts(n: int) -> list[str]:
    adjectives = words.WANTED + words.UNWANTED + words.NEUTRAL
    pattern = re.compile(r"\b(" + "|".join(sorted(adjectives, key=len, reverse=True)) + r")\b")
    return [pattern.sub("[MASK]", t, count=1) for t in synth_rows(n, seed=11)["text"].to_pylist()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=20_000)
    ap.add_argument("--model", default="starter")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    path = resolve_model(args.model)
    prompts = make_prompts(args.prompts)
    assert all("[MASK]" in p for p in prompts)

    from transformers import pipeline

    fill = pipeline("fill-mask", model=path, top_k=10)
    start = time.perf_counter()
    fill(prompts, batch_size=args.batch_size)
    base = len(prompts) / (time.perf_counter() - start)
    print(f"transformers fill-mask pipeline, batch {args.batch_size}: {base:,.0f} prompts/s", flush=True)
    per_core(fill, prompts[:4096], args)

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = tempfile.mkdtemp(prefix="reviewlm-score-bench-")
    start = time.perf_counter()
    score_models({args.model: args.model}, f"{out}/score", prompts=prompts, word_sets=load_word_sets(None),
                 args=ScoreArgs(top_k=10, batch_size=4 * args.batch_size, num_actors=2))
    ours = len(prompts) / (time.perf_counter() - start)
    print(f"reviewlm score, 2 actors x 1 CPU: {ours:,.0f} prompts/s (whole job)")
    print(f"ratio reviewlm / pipeline = {ours / base:.2f}   (target >= 3)")


def per_core(fill, prompts: list[str], args) -> None:
    """One thread each: the pipeline vs reviewlm's MaskScorer actor class called in-process."""
    import numpy as np
    import torch
    from reviewlm.score.scorer import MaskScorer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    fill(prompts, batch_size=args.batch_size)
    base = len(prompts) / (time.perf_counter() - start)
    scorer = MaskScorer(args.model, args.model, False, 10, load_word_sets(None), 20, micro_batch=args.batch_size)
    batch = {"prompt": np.array(prompts, dtype=object), "prompt_index": np.arange(len(prompts))}
    start = time.perf_counter()
    for i in range(0, len(prompts), 4 * args.batch_size):
        scorer({k: v[i:i + 4 * args.batch_size] for k, v in batch.items()})
    ours = len(prompts) / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    print(f"one thread: pipeline {base:,.0f} prompts/s, MaskScorer {ours:,.0f} prompts/s, "
          f"per-core ratio {ours / base:.2f}", flush=True)


if __name__ == "__main__":
    main()
