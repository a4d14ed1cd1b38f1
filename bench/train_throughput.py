"""Training throughput: the Ray Train job (2 CPU workers) vs a plain single-process torch loop.

    .venv/bin/python bench/train_throughput.py [--model starter] [--steps 40] [--batch-size 8]

Same model, same tokenized 128-token chunks, same masking collator, the same global batch
(2 workers x batch vs one process x 2 x batch), the same number of steps and the same total
threads (2 workers with 1 thread each vs one process with 2 threads). Samples/s exclude the
first, warm-up step on both sides. Prints the ratio (target >= 0.85).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from reviewlm.models import resolve_model
from reviewlm.synth import synth_rows, write_synth
from reviewlm.train.data import tokenize_and_chunk
from reviewlm.train.job import TrainArgs, train_model
from reviewlm.train.loop import MLMCollate, load_model


def plain_loop(model_path: str, chunks: dict, batch: int, steps: int) -> float:
    """One process, 2 threads: the baseline a data scientist would write."""
    from transformers import AutoTokenizer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = load_model("mlm", model_path).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    collate = MLMCollate(tok, 0.2, whole_word=True, seed=0)
    n = len(chunks["input_ids"])
    start = None
    for step in range(steps + 1):
        idx = np.arange(step * batch, (step + 1) * batch) % n
        out = model(**collate({k: v[idx] for k, v in chunks.items()}))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if start is None:
            start = time.perf_counter()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="starter")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8, help="per worker")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    model_path = resolve_model(args.model)
    tmp = tempfile.mkdtemp(prefix="reviewlm-train-bench-")
    rows = 4000
    write_synth(f"{tmp}/corpus", rows, seed=5, min_words=20, max_words=150)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    texts = np.array(synth_rows(rows, seed=5, min_words=20, max_words=150)["text"].to_pylist(), dtype=object)
    chunks = tokenize_and_chunk({"text": texts}, tok, 128)
    print(f"model {args.model}: {len(chunks['input_ids'])} chunks of 128 tokens; "
          f"{args.steps} steps, global batch {2 * args.batch_size}", flush=True)
    base = plain_loop(model_path, chunks, 2 * args.batch_size, args.steps)
    print(f"plain torch loop, 1 process x 2 threads: {base:.2f} samples/s", flush=True)

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    metrics = train_model([f"{tmp}/corpus"], f"{tmp}/out", TrainArgs(
        model=args.model, epochs=1, max_steps=args.steps, batch_size=args.batch_size, num_workers=2,
        eval_fraction=0.02))
    ours = metrics["epochs"][-1]["samples_per_s"]
    print(f"reviewlm train, Ray Train 2 workers x 1 thread: {ours:.2f} samples/s")
    print(f"ratio Ray Train / plain loop = {ours / base:.2f}   (target >= 0.85)")
    print(f"whole job wall time {metrics['wall_time_s']:.0f} s (Ray start, tokenizing, evaluation, checkpoint)")


if __name__ == "__main__":
    main()
