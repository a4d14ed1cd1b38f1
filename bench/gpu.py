"""GPU figures: the classifier step, score and train with `--use-gpu`, on a machine with one GPU.

    python bench/gpu.py --tokenizer DIR [--rows 40000] [--prompts 20000] [--parts classifier,filter,score,train]

The models have DistilBERT-base's shape (6 layers, 768 wide, 66M parameters), drawn at random
with a seed and `--tokenizer`'s vocabulary (a directory holding a tokenizer, e.g. the starter's):
the speed does not depend on the weights, and this runs offline. The classifier's weights are
drawn 5x wider than the default so that its labels vary (a default draw gives every row one label).

- classifier: in one process, transformers' pipeline (`truncation=True`, fp32 and fp16) and
  reviewlm's `RowClassifier` (fp16) on the GPU, on the same reviews: rows/s, and reviewlm's labels
  and probabilities against the fp32 pipeline's; then `RowClassifier` on one CPU thread.
- filter: the job as a whole process (`--num-cpus` = the machine's) with `non_null` alone, and
  with `non_null` + the classifier on the GPU.
- score: `score --prompts` on every CPU, then with `--use-gpu`.
- train: `train --task mlm --use-gpu --precision bf16` and fp32, one worker, `--max-steps`.
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from reviewlm.synth import synth_rows

CPUS = os.cpu_count() or 1
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def distilbert_base(tokenizer: str, folder: Path, labels: list[str] | None = None) -> Path:
    """A DistilBERT-base-shaped masked LM (or, with `labels`, a classifier) drawn with seed 0."""
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM, DistilBertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer)
    torch.manual_seed(0)
    if labels:
        config = DistilBertConfig(vocab_size=len(tok), num_labels=len(labels), id2label=dict(enumerate(labels)),
                                  label2id={v: i for i, v in enumerate(labels)}, initializer_range=0.1)
        DistilBertForSequenceClassification(config).save_pretrained(folder)
        tok.model_max_length = 128  # as `train --task stars` saves it
    else:
        DistilBertForMaskedLM(DistilBertConfig(vocab_size=len(tok))).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def rate(fn, rows: int) -> float:
    import torch

    fn()  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return rows / (time.perf_counter() - start)


def classifier(model: Path, texts: list[str], report: dict) -> None:
    import torch
    from reviewlm.filters.classifier import Classifier, RowClassifier
    from transformers import AutoModelForSequenceClassification, pipeline

    table = pa.table({"text": texts, "_error": pa.nulls(len(texts), pa.string())})

    def ours(actor):
        return pa.concat_tables(actor(table.slice(i, 4096)) for i in range(0, len(texts), 4096))

    out = {}
    for dtype in ("fp32", "fp16"):
        pipe = pipeline("text-classification", model=str(model), truncation=True, device=0,
                        dtype=torch.float16 if dtype == "fp16" else torch.float32)
        out[f"pipeline {dtype}, batch 256"] = rate(lambda pipe=pipe: pipe(texts, batch_size=256), len(texts))
        if dtype == "fp32":
            want = pipe(texts, batch_size=256)
    for batch in (32, 256, 1024):
        actor = RowClassifier(Classifier(str(model), keep=["5"], batch_size=batch), str(model), True, "drop")
        out[f"RowClassifier fp16, micro-batch {batch}"] = rate(lambda actor=actor: ours(actor), len(texts))
    want_labels = np.array([w["label"] for w in want])
    want_probs = np.array([w["score"] for w in want])
    report["classifier"] = {"rows/s": out}
    actor = RowClassifier(Classifier(str(model), keep=["5"]), str(model), True, "drop")  # the defaults
    for name, dtype in (("fp16 weights (the default)", None), ("fp16 autocast", torch.float16),
                        ("bf16 autocast", torch.bfloat16)):
        if dtype is not None:  # the weights as saved, in fp32 (not the default's, rounded to fp16)
            actor.model = AutoModelForSequenceClassification.from_pretrained(model).eval().cuda()
        with torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None):
            out[f"RowClassifier {name}"] = rate(lambda actor=actor: ours(actor), len(texts))
            got = ours(actor)
        labels = np.array(got["_label:classifier"].to_pylist())
        same = labels == want_labels
        diff = np.abs(np.array(got["_score:classifier"].to_pylist()) - want_probs)[same]
        report["classifier"][name] = {"same label vs fp32 pipeline": float(same.mean()),
                                      "labels seen": sorted(set(labels.tolist())), "max |dp| where same":
                                      float(diff.max()), "p99 |dp|": float(np.quantile(diff, 0.99))}
    torch.set_num_threads(1)
    cpu = RowClassifier(Classifier(str(model), keep=["5"]), str(model), False, "drop")
    start = time.perf_counter()
    cpu(table.slice(0, 256))
    report["classifier"]["RowClassifier fp32, one CPU thread, rows/s"] = 256 / (time.perf_counter() - start)


def job(args: list[str], name: str, report: dict, rows: int) -> None:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "reviewlm.cli", *args], capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - start
    report.setdefault("jobs", {})[name] = {"rc": done.returncode, "wall s": round(wall, 1),
                                           "rows/s": round(rows / wall, 1), "stdout": done.stdout[-1500:],
                                           "stderr": done.stderr[-1500:] if done.returncode else ""}
    print(name, json.dumps(report["jobs"][name], indent=1), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--prompts", type=int, default=20_000)
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--parts", default="classifier,filter,score,train")
    ap.add_argument("--report", default="gpu.json")
    args = ap.parse_args()
    parts = args.parts.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="reviewlm-gpu-"))
    report: dict = {"cpus": CPUS, "args": vars(args)}
    stars = distilbert_base(args.tokenizer, tmp / "stars", [str(k) for k in range(1, 6)])
    mlm = distilbert_base(args.tokenizer, tmp / "mlm")
    reviews = synth_rows(args.rows, seed=21, min_words=20, max_words=80)
    (tmp / "reviews").mkdir()
    for i in range(16):  # a dump's files: the reads run as 16 tasks
        pq.write_table(reviews.slice(i * args.rows // 16, args.rows // 16), tmp / "reviews" / f"part-{i:02d}.parquet")
    try:
        if "classifier" in parts:
            classifier(stars, reviews["text"].to_pylist()[:8192], report)
            print(json.dumps(report["classifier"], indent=1), flush=True)
        if "filter" in parts:
            (tmp / "plain.yaml").write_text("non_null\n")
            (tmp / "step.yaml").write_text(f"all:\n  - non_null\n  - classifier: {{model: {stars}, keep: [4, 5]}}\n")
            for name, extra in (("plain", []), ("step", ["--use-gpu"])):
                job(["filter", str(tmp / "reviews"), "--output", str(tmp / f"filter-{name}"), "--recipe",
                     str(tmp / f"{name}.yaml"), "--num-cpus", str(CPUS), *extra], f"filter {name}", report, args.rows)
        if "score" in parts:
            words = [t.split() for t in reviews["text"].to_pylist()[:args.prompts]]
            (tmp / "prompts.txt").write_text("".join(" ".join([*w[:6], "[MASK]", *w[7:16]]) + "\n" for w in words))
            for name, extra in (("cpu", []), ("gpu", ["--use-gpu"])):
                job(["score", "--model", f"base={mlm}", "--prompts", str(tmp / "prompts.txt"), "--output",
                     str(tmp / f"score-{name}"), "--num-cpus", str(CPUS), *extra], f"score {name}", report,
                    args.prompts)
        if "train" in parts:
            for precision in ("bf16", "fp32"):
                job(["train", "--data", str(tmp / "reviews"), "--model", str(mlm), "--output",
                     str(tmp / f"train-{precision}"), "--max-steps", str(args.train_steps), "--batch-size", "32",
                     "--num-workers", "1", "--use-gpu", "--precision", precision, "--num-cpus", str(CPUS)],
                    f"train {precision}", report, args.train_steps * 32)
    finally:
        Path(args.report).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
