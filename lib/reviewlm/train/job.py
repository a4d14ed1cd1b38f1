"""`reviewlm train`: fine-tune on Ray Train; scaling, checkpoints and storage set here."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from reviewlm.errors import UsageError
from reviewlm.io.readers import Columns, check_inputs, read_reviews
from reviewlm.io.storage import OutputDir, arrow_filesystem, filesystem, fingerprints
from reviewlm.models import portable_ref, resolve_model
from reviewlm.runtime import init_ray
from reviewlm.train import data
from reviewlm.train.loop import train_func


@dataclass
class TrainArgs:
    """Hugging Face-style training arguments."""

    task: str = "mlm"
    model: str | None = None
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 5e-5
    chunk_size: int = 128
    max_length: int = 128
    mlm_probability: float = 0.15
    whole_word_mask: float = 0.2
    eval_fraction: float = 0.1
    num_workers: int = 2
    use_gpu: bool = False
    precision: str = "fp32"
    seed: int = 42
    keep_checkpoints: int = 2
    max_failures: int = 2

    def check(self) -> None:
        if self.task not in ("mlm", "stars"):
            raise UsageError(f"--task must be mlm or stars, not {self.task!r}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise UsageError(f"--precision must be fp32, fp16 or bf16, not {self.precision!r}")
        if not 0 < self.eval_fraction < 1:
            raise UsageError("--eval-fraction must be between 0 and 1")
        for name in ("epochs", "batch_size", "num_workers", "chunk_size", "max_length"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.whole_word_mask <= 1 or not 0 < self.mlm_probability <= 1:
            raise UsageError("masking probabilities must be between 0 and 1")


def _datasets(ds, args: TrainArgs, tokenizer) -> tuple[dict, dict]:
    ds.context.execution_options.preserve_order = True  # the same blocks in the same order every run
    if args.task == "mlm":
        bounds = [("eval", 0.0, args.eval_fraction), ("train", args.eval_fraction, 1.0)]
    else:  # 64/16/20: the same fractions within every rating (a hash split independent of rating)
        bounds = [("train", 0.0, 0.64), ("eval", 0.64, 0.80), ("test", 0.80, 1.0)]
    splits = data.split_datasets(ds, bounds, args.seed, need_rating=args.task == "stars")
    if args.task == "mlm":
        splits = {k: v.map_batches(data.tokenize_and_chunk, fn_kwargs={"tokenizer": tokenizer,
                                                                       "chunk_size": args.chunk_size},
                                   batch_format="numpy", batch_size=256).materialize()
                  for k, v in splits.items()}
    else:
        splits = {k: v.map_batches(data.tokenize_reviews, fn_kwargs={"tokenizer": tokenizer,
                                                                     "max_length": args.max_length},
                                   batch_format="numpy", batch_size=256).materialize()
                  for k, v in splits.items()}
    return splits, data.require_rows(splits)


def train_model(inputs: list[str], output: str, args: TrainArgs, *, columns: Columns = Columns(),
                fmt: str | None = None, storage: str | None = None, overwrite: bool = False,
                resume: bool = False, address: str | None = None, num_cpus: int | None = None,
                arguments: dict | None = None) -> dict:
    """Fine-tune `args.model` on the reviews in `inputs`; write model/, metrics.json, plots."""
    from transformers import AutoTokenizer

    args.check()
    fs_in, files = check_inputs(inputs, columns, fmt, need_rating=args.task == "stars")
    model_path = resolve_model(args.model)
    out = OutputDir(output, "train", overwrite).prepare(resume=resume)
    started = time.time()
    try:
        init_ray(address, num_cpus)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        splits, counts = _datasets(read_reviews(fs_in, files, columns), args, tokenizer)
        steps_per_epoch = math.ceil(counts["train"] / args.batch_size / args.num_workers)
        total = min(args.max_steps or 10**12, steps_per_epoch * args.epochs)
        whole_word = args.whole_word_mask > 0
        config = {"task": args.task, "model": portable_ref(args.model), "epochs": args.epochs, "total_steps": total,
                  "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "precision": args.precision,
                  "whole_word": whole_word,
                  "mask_probability": args.whole_word_mask if whole_word else args.mlm_probability}
        storage_uri = (storage or out.uri).rstrip("/") + "/checkpoints"
        sfs, spath = filesystem(storage_uri)
        run_config = RunConfig(name="run", storage_path=spath if "file" not in sfs.protocol else os.path.abspath(spath),
                               storage_filesystem=None if "file" in sfs.protocol else arrow_filesystem(sfs),
                               checkpoint_config=CheckpointConfig(num_to_keep=args.keep_checkpoints),
                               failure_config=FailureConfig(max_failures=args.max_failures))
        scaling = ScalingConfig(num_workers=args.num_workers, use_gpu=args.use_gpu,
                                resources_per_worker=None if args.use_gpu else {"CPU": 1})
        # the same run name and storage: Ray Train continues from the latest checkpoint there
        trainer = TorchTrainer(train_func, train_loop_config=config, scaling_config=scaling,
                               run_config=run_config, datasets=splits,
                               dataset_config=data.FixedShards(splits, args.num_workers))
        result = trainer.fit()
        metrics = _metrics(result, args, model_path, counts)
        _export(result, out)
        _plots(metrics, out)
        out.commit(arguments or asdict(args), fingerprints(files),
                   {k: v for k, v in counts.items()}, {"metrics.json": metrics})
        metrics["wall_time_s"] = round(time.time() - started, 1)
        return metrics
    except BaseException:
        out.abort()
        raise


def _metrics(result, args: TrainArgs, model_path: str, counts: dict) -> dict:
    history = json.loads(result.metrics["history"])
    metrics = {"task": args.task, "model": args.model or "distilbert-base-uncased", "model_path": model_path,
               "rows": counts, "perplexity_before": history["before"]["perplexity"],
               "eval_loss_before": history["before"]["eval_loss"], "epochs": history["epochs"],
               "restarts": history["restarts"]}
    if args.task == "stars":
        test = json.loads(result.metrics["test"])
        metrics["test"] = star_metrics(np.asarray(test["predictions"]), np.asarray(test["labels"]))
        metrics["test"]["loss"] = test["loss"]
    return metrics


def star_metrics(pred: np.ndarray, label: np.ndarray) -> dict:
    """Accuracy, binary (<=3 vs >3), within-one, per-class F1 and the confusion matrix (0-based)."""
    cm = np.zeros((5, 5), dtype=int)
    np.add.at(cm, (label, pred), 1)
    f1 = {}
    for k in range(5):
        tp, fp, fn = cm[k, k], cm[:, k].sum() - cm[k, k], cm[k, :].sum() - cm[k, k]
        f1[str(k + 1)] = float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0
    majority = np.bincount(label, minlength=5).max() / max(len(label), 1)
    return {"n": int(len(label)), "accuracy": float((pred == label).mean()),
            "binary_accuracy": float(((pred >= 3) == (label >= 3)).mean()),
            "within_one_accuracy": float((np.abs(pred - label) <= 1).mean()),
            "majority_baseline": float(majority), "f1_per_class": f1, "confusion_matrix": cm.tolist()}


def _export(result, out: OutputDir) -> None:
    """Copy the last checkpoint's Hugging Face model (without the optimizer state) to model/."""
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    out.fs.makedirs(f"{out.tmp}/model", exist_ok=True)
    with result.checkpoint.as_directory() as d:
        for name in os.listdir(d):
            if name != "train_state.pt":
                out.fs.put(os.path.join(d, name), f"{out.tmp}/model/{name}")


def _plots(metrics: dict, out: OutputDir) -> None:
    from reviewlm.report import plots

    figures = {"loss.png": plots.loss_curve(metrics)}
    if "test" in metrics:
        figures["confusion.png"] = plots.confusion(metrics["test"]["confusion_matrix"], "Star classifier, test split")
    for name, png in figures.items():
        with out.fs.open(f"{out.tmp}/{name}", "wb") as fh:
            fh.write(png)
