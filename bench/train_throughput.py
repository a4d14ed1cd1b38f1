"""Training throughput: `reviewlm train` against transformers' Trainer and our own one-process loop.

    .venv/bin/python bench/train_throughput.py [--model starter] [--steps 10] [--batch-size 16]
        [--previous REF] [--words 20 150] [--rows 4000]

All in one run, for masked LM (128-token blocks, whole-word masking 0.2) and star
classification (reviews of --words words, default 20-150, up to 128 tokens; `--words 0 0`:
synth's own short reviews of 4-11 words):
- transformers' `Trainer`, the run_mlm.py / run_glue.py way: one process, 2 threads, the same
  model, data and global batch (2 x --batch-size), padding per batch (`DataCollatorWithPadding`);
- our own loop in one process with 2 threads (what a Ray Train worker runs, without Ray);
- `reviewlm train`: Ray Train, 2 CPU workers x 1 thread, --batch-size each;
- with --previous, the classification job of an earlier commit (run from a git worktree).
Samples/s leave out the first step everywhere. Prints the ratios the issue sets targets for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from reviewlm.metrics import STARS
from reviewlm.models import resolve_model
from reviewlm.options import DEFAULT_LR, TrainArgs
from reviewlm.synth import synth_rows, write_synth
from reviewlm.train.data import tokenize_and_chunk, tokenize_reviews
from reviewlm.train.job import train_model
from reviewlm.train.loop import LoopConfig, MLMCollate, SparseEmbeddingGrad, TensorCollate, adamw, load_model, trainable

LABELS = {"mlm": (), "stars": STARS}


def examples(task: str, tok, rows: int, words: tuple[int, int]) -> list[dict]:
    """The same training examples for every contender: 128-token blocks, or reviews with labels."""
    table = synth_rows(rows, seed=5, min_words=words[0], max_words=words[1])
    batch = {"text": np.array(table["text"].to_pylist(), dtype=object),
             "label": np.array([str(r) for r in table["rating"].to_pylist()], dtype=object)}
    enc = tokenize_and_chunk(batch, tok, 128) if task == "mlm" else \
        tokenize_reviews(batch, tok, 128, {label: i for i, label in enumerate(STARS)})
    return [{k: v[i] for k, v in enc.items()} for i in range(len(enc["input_ids"]))]


def collator(task: str, tok):
    """Examples -> a training batch: fresh whole-word masks, or reviews padded to the batch's longest."""
    collate = MLMCollate(tok, 0.2, True, seed=0) if task == "mlm" else TensorCollate(tok.pad_token_id)

    def collate_examples(rows: list[dict]) -> dict:
        keys = rows[0].keys()
        if task == "mlm":
            return collate({k: np.stack([r[k] for r in rows]) for k in keys})
        ids = np.empty(len(rows), dtype=object)
        ids[:] = [r["input_ids"] for r in rows]
        return collate({"input_ids": ids, "labels": np.array([r["labels"] for r in rows])})

    return collate_examples


def hf_trainer(task: str, model_path: str, data: list[dict], batch: int, steps: int) -> float:
    """transformers' Trainer on the CPU, 2 threads, one process."""
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model_path)
    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter())

    if task == "mlm":
        rows, collate = data, collator(task, tok)
    else:  # the way run_glue.py pads: per batch, with the tokenizer's collator
        rows = [{"input_ids": r["input_ids"].tolist(), "labels": int(r["labels"])} for r in data]
        collate = DataCollatorWithPadding(tok)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, per_device_train_batch_size=batch, max_steps=steps + 1,
                                 learning_rate=DEFAULT_LR[task], use_cpu=True, report_to=[], save_strategy="no",
                                 logging_strategy="no", dataloader_num_workers=0, disable_tqdm=True, seed=0,
                                 remove_unused_columns=False)
        Trainer(model=load_model(task, model_path, LABELS[task]), args=args, train_dataset=rows, data_collator=collate,
                callbacks=[Clock()]).train()
    return steps * batch / (times[-1] - times[0])


def own_loop(task: str, model_path: str, data: list[dict], batch: int, steps: int) -> float:
    """The training step of `reviewlm train` (head at the masked positions only), in one process, 2 threads."""
    from transformers import AutoTokenizer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_path)
    config = LoopConfig(task=task, model=model_path, epochs=1, total_steps=steps + 1, batch_size=batch,
                        learning_rate=DEFAULT_LR[task], seed=0, precision="fp32", whole_word=True, mask_probability=0.2,
                        labels=LABELS[task])
    hf = load_model(task, model_path, LABELS[task])
    dense_grads = SparseEmbeddingGrad(hf, torch.device("cpu"))
    model = trainable(config, hf).train()
    opt = adamw(model, DEFAULT_LR[task])
    collate = collator(task, tok)
    start = None
    for step in range(steps + 1):
        rows = [data[i % len(data)] for i in range(step * batch, (step + 1) * batch)]
        model(**collate(rows)).loss.backward()
        dense_grads()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        start = start or time.perf_counter()
    return steps * batch / (time.perf_counter() - start)


def ray_job(task: str, corpus: str, out: str, model: str, batch: int, steps: int) -> float:
    metrics = train_model([corpus], out, TrainArgs(task=task, model=model, epochs=1, max_steps=steps + 1,
                                                   batch_size=batch, num_workers=2, eval_fraction=0.02,
                                                   max_eval_samples=32))
    return metrics.epochs[-1].samples_per_s


def previous_job(ref: str, corpus: str, out: str, model: str, batch: int, steps: int) -> float:
    """The star job of commit `ref`, from a git worktree, with the same model, batch and steps."""
    tree = f"{out}-src"
    subprocess.run(["git", "worktree", "add", "-f", "--detach", tree, ref], check=True, capture_output=True)
    try:
        env = {**os.environ, "PYTHONPATH": f"{tree}/lib"}
        subprocess.run([sys.executable, "-m", "reviewlm.cli", "train", "--task", "stars", "--data", corpus,
                        "--output", out, "--model", model, "--epochs", "1", "--max-steps", str(steps + 1),
                        "--batch-size", str(batch), "--num-cpus", "2"], env=env, check=True, capture_output=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", tree], capture_output=True)
    return json.load(open(f"{out}/metrics.json"))["epochs"][-1]["samples_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="starter")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up step)")
    ap.add_argument("--batch-size", type=int, default=16, help="per Ray Train worker; the others get twice it")
    ap.add_argument("--previous", help="git ref of an earlier reviewlm whose star job to time as well")
    ap.add_argument("--words", type=int, nargs=2, default=(20, 150), metavar=("MIN", "MAX"),
                    help="review length in words (0 0: synth's own short reviews)")
    ap.add_argument("--rows", type=int, default=4000, help="reviews in the corpus")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from transformers import AutoTokenizer

    model_path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(model_path)
    tmp = tempfile.mkdtemp(prefix="reviewlm-train-bench-")
    write_synth(f"{tmp}/corpus", args.rows, seed=5, min_words=args.words[0], max_words=args.words[1])
    batch, steps = args.batch_size, args.steps
    print(f"model {args.model}, reviews of {args.words[0]}-{args.words[1]} words, global batch {2 * batch}, "
          f"{steps} timed steps; samples/s:", flush=True)
    result = {}
    for task in ("mlm", "stars"):
        data = examples(task, tok, args.rows, tuple(args.words))
        result[task] = {"trainer": hf_trainer(task, model_path, data, 2 * batch, steps),
                        "own loop": own_loop(task, model_path, data, 2 * batch, steps)}
        print(f"  {task}: Trainer {result[task]['trainer']:.2f}, own loop {result[task]['own loop']:.2f}", flush=True)
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    for task in ("mlm", "stars"):
        result[task]["job"] = ray_job(task, f"{tmp}/corpus", f"{tmp}/{task}", args.model, batch, steps)
        print(f"  {task}: reviewlm train (Ray Train, 2 workers) {result[task]['job']:.2f}", flush=True)
    ray.shutdown()
    if args.previous:
        result["stars"]["previous job"] = previous_job(args.previous, f"{tmp}/corpus", f"{tmp}/previous",
                                                       args.model, batch, steps)
        print(f"  stars: previous job ({args.previous}) {result['stars']['previous job']:.2f}")
    m, s = result["mlm"], result["stars"]
    print(f"masked LM:      job / Trainer = {m['job'] / m['trainer']:.2f} (target >= 1.6); "
          f"job / own loop = {m['job'] / m['own loop']:.2f} (target >= 0.9)")
    print(f"classification: job / Trainer = {s['job'] / s['trainer']:.2f} (target >= 1.2); "
          f"job / own loop = {s['job'] / s['own loop']:.2f} (target >= 0.9)"
          + (f"; job / previous job = {s['job'] / s['previous job']:.2f} (target >= 2)" if args.previous else ""))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
