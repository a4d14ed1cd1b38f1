"""A `classifier:` recipe step against transformers' text-classification pipeline, and its cost in the filter job.

    .venv/bin/python bench/classifier_filter.py [--rows 4000] [--model starter] [--batch-size 32]
        [--min-words 20] [--max-words 80]

The classifier: `--model`'s body with a 5-star head (drawn with a seed: the speed does not
depend on the weights), saved as `train --task stars` saves one (`model_max_length` 128).
Reviews: synthesized, `--min-words` to `--max-words` words, in one JSON Lines file.

1. Per core: transformers' pipeline (`truncation=True`, `batch_size`) and reviewlm's
   `RowClassifier` actor class called in-process, both on one thread, on the same rows
   (goal: reviewlm >= 2x).
2. The filter job as a whole process (`reviewlm filter --num-cpus 2`, Ray's start
   included) with `non_null` alone and with `non_null` + the classifier: rows/s of each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from reviewlm.models import resolve_model
from reviewlm.synth import synth_rows

BIN = Path(sys.executable).parent


def star_classifier(base: str, folder: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    labels = [str(k) for k in range(1, 6)]
    config = AutoConfig.from_pretrained(base, num_labels=5, id2label=dict(enumerate(labels)),
                                        label2id={v: i for i, v in enumerate(labels)})
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(base, config=config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(folder)
    return folder


def per_core(model: Path, texts: list[str], batch_size: int) -> None:
    import torch
    from reviewlm.filters.classifier import Classifier, RowClassifier
    from transformers import pipeline

    torch.set_num_threads(1)
    classify = pipeline("text-classification", model=str(model), truncation=True)
    start = time.perf_counter()
    classify(texts, batch_size=batch_size)
    base = len(texts) / (time.perf_counter() - start)
    actor = RowClassifier(Classifier(str(model), keep=[5], batch_size=batch_size), str(model), False, "drop")
    batch = pa.table({"text": texts, "_error": pa.nulls(len(texts), pa.string())})
    start = time.perf_counter()
    for i in range(0, len(texts), 1024):
        actor(batch.slice(i, 1024))
    ours = len(texts) / (time.perf_counter() - start)
    print(f"one thread: pipeline {base:,.0f} rows/s, RowClassifier {ours:,.0f} rows/s: {ours / base:.2f}x "
          "(goal >= 2)", flush=True)


def job(data: Path, out: Path, recipe: str) -> float:
    (out.parent / f"{out.name}.yaml").write_text(recipe)
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "reviewlm"), "filter", str(data), "--output", str(out), "--recipe",
                           str(out.parent / f"{out.name}.yaml"), "--num-cpus", "2"], capture_output=True, text=True,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--model", default="starter")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--min-words", type=int, default=20)
    ap.add_argument("--max-words", type=int, default=80)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reviewlm-classifier-"))
    model = star_classifier(resolve_model(args.model), tmp / "stars")
    texts = synth_rows(args.rows, seed=21, min_words=args.min_words, max_words=args.max_words)["text"].to_pylist()
    (tmp / "reviews.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    per_core(model, texts[:1024], args.batch_size)
    plain = job(tmp / "reviews.jsonl", tmp / "plain", "non_null\n")
    step = job(tmp / "reviews.jsonl", tmp / "step",
               f"all:\n  - non_null\n  - classifier: {{model: {model}, keep: [4, 5], batch_size: {args.batch_size}}}\n")
    print(f"filter job, 2 CPUs, {args.rows:,} reviews of {args.min_words}-{args.max_words} words: "
          f"non_null {plain:.1f} s ({args.rows / plain:,.0f} rows/s), "
          f"with the classifier {step:.1f} s ({args.rows / step:,.0f} rows/s)")


if __name__ == "__main__":
    main()
