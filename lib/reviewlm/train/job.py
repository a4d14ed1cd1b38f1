"""`reviewlm train`: fine-tune on Ray Train; scaling, checkpoints and storage set here."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import ray
import torch
from ray.data import ActorPoolStrategy
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from reviewlm.errors import UsageError
from reviewlm.io.readers import Columns, check_inputs, read_reviews
from reviewlm.io.storage import OutputDir, arrow_filesystem, filesystem, fingerprints
from reviewlm.metrics import confusion_matrix, star_metrics
from reviewlm.models import portable_ref, resolve_model
from reviewlm.runtime import init_ray
from reviewlm.train import data
from reviewlm.train.loop import STATE, LoopConfig, train_func

FEW_STEPS = 50  # fewer optimizer steps than this: warn that the model may learn little
# Measured on 1,000 reviews, 2 epochs, batch 16 x 2 workers (bench/RESULTS.md): a classifier
# at 5e-5 stays at the majority class; at 2e-4 it learns.
DEFAULT_LR = {"mlm": 5e-5, "stars": 2e-4}


@dataclass
class TrainArgs:
    """Hugging Face-style training arguments."""

    task: str = "mlm"
    model: str | None = None
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 16
    lr: float | None = None  # 5e-5 for mlm; 2e-4 for stars, whose head starts untrained
    chunk_size: int = 128
    max_length: int = 128
    mlm_probability: float = 0.15
    whole_word_mask: float = 0.2
    eval_fraction: float = 0.1
    max_eval_samples: int | None = None
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
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise UsageError("--max-eval-samples must be at least 1")
        if not 0 <= self.whole_word_mask <= 1 or not 0 < self.mlm_probability <= 1:
            raise UsageError("masking probabilities must be between 0 and 1")

    @property
    def learning_rate(self) -> float:
        return self.lr or DEFAULT_LR[self.task]

    @property
    def whole_word(self) -> bool:
        return self.whole_word_mask > 0

    @property
    def mask_probability(self) -> float:
        """Whole words with `whole_word_mask`, or single tokens with `mlm_probability` when it is 0."""
        return self.whole_word_mask or self.mlm_probability


def _datasets(ds, args: TrainArgs, tokenizer) -> tuple[dict, dict, dict]:
    """Training datasets (tokenized, materialized), the raw splits, and the row counts per split."""
    ds.context.execution_options.preserve_order = True  # the same blocks in the same order every run
    if args.task == "mlm":
        bounds = [("eval", 0.0, args.eval_fraction), ("train", args.eval_fraction, 1.0)]
    else:  # 64/16/20: the same fractions within every rating (a hash split independent of rating)
        bounds = [("train", 0.0, 0.64), ("eval", 0.64, 0.80), ("test", 0.80, 1.0)]
    splits = data.split_datasets(ds, bounds, args.seed, need_rating=args.task == "stars")
    counts = data.require_rows(splits)
    if args.task == "mlm":
        chunk = {"tokenizer": tokenizer, "chunk_size": args.chunk_size}
        mask = {"tokenizer": tokenizer, "probability": args.mask_probability, "whole_word": args.whole_word,
                "seed": args.seed}
        tokenized = {k: v.map_batches(data.tokenize_and_chunk, fn_kwargs=chunk, batch_format="numpy", batch_size=256)
                     for k, v in splits.items()}
        tokenized["eval"] = tokenized["eval"].map_batches(data.mask_eval_blocks, fn_kwargs=mask,
                                                          batch_format="numpy", batch_size=256)
    else:
        tokenized = {k: v.map_batches(data.tokenize_reviews, fn_kwargs={"tokenizer": tokenizer,
                                                                        "max_length": args.max_length},
                                      batch_format="numpy", batch_size=256)
                     for k, v in splits.items() if k != "test"}
    if args.max_eval_samples:
        tokenized["eval"] = tokenized["eval"].limit(args.max_eval_samples)
    tokenized = {k: v.materialize() for k, v in tokenized.items()}
    counts.update({f"{k}_{'blocks' if args.task == 'mlm' else 'samples'}": v.count() for k, v in tokenized.items()})
    short = [k for k in ("train", "eval") if counts.get(f"{k}_blocks") == 0]
    if short:
        raise UsageError(f"the {' and '.join(short)} text makes no block of --chunk-size {args.chunk_size} tokens: "
                         "give more data or a smaller --chunk-size")
    return tokenized, splits, counts


def train_model(inputs: list[str], output: str, args: TrainArgs, *, columns: Columns = Columns(),
                fmt: str | None = None, storage: str | None = None, overwrite: bool = False,
                resume: bool = False, address: str | None = None, num_cpus: int | None = None,
                arguments: dict | None = None) -> dict:
    """Fine-tune `args.model` on the reviews in `inputs`; write model/, metrics.json, plots.

    model/ is the checkpoint with the lowest eval loss (like `load_best_model_at_end`); the
    test metrics of the star task are computed from it.
    """
    from transformers import AutoTokenizer

    args.check()
    fs_in, files = check_inputs(inputs, columns, fmt, need_rating=args.task == "stars")
    model_path = resolve_model(args.model)
    out = OutputDir(output, "train", overwrite).prepare(resume=resume)
    started = time.time()
    with out:
        init_ray(address, num_cpus)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        datasets, splits, counts = _datasets(read_reviews(fs_in, files, columns), args, tokenizer)
        if args.task == "mlm":  # the masked blocks every eval loss is computed on, for anyone to recompute
            datasets["eval"].write_parquet(f"{out.tmp}/eval", filesystem=arrow_filesystem(out.fs))
        train_rows = counts["train_blocks" if args.task == "mlm" else "train_samples"]
        steps_per_epoch = math.ceil(train_rows / args.batch_size / args.num_workers)
        total = min(args.max_steps or 10**12, steps_per_epoch * args.epochs)
        warnings = _few_steps(total, steps_per_epoch, args)
        config = LoopConfig(task=args.task, model=portable_ref(args.model), epochs=args.epochs, total_steps=total,
                            batch_size=args.batch_size, lr=args.learning_rate, seed=args.seed, precision=args.precision,
                            whole_word=args.whole_word, mask_probability=args.mask_probability)
        storage_uri = (storage or out.uri).rstrip("/") + "/checkpoints"
        sfs, spath = filesystem(storage_uri)
        run_config = RunConfig(name="run", storage_path=spath if "file" not in sfs.protocol else os.path.abspath(spath),
                               storage_filesystem=None if "file" in sfs.protocol else arrow_filesystem(sfs),
                               checkpoint_config=CheckpointConfig(num_to_keep=args.keep_checkpoints,
                                                                  checkpoint_score_attribute="eval_loss",
                                                                  checkpoint_score_order="min"),
                               failure_config=FailureConfig(max_failures=args.max_failures))
        scaling = ScalingConfig(num_workers=args.num_workers, use_gpu=args.use_gpu,
                                resources_per_worker=None if args.use_gpu else {"CPU": 1})
        # the same run name and storage: Ray Train continues from the latest checkpoint there
        trainer = TorchTrainer(train_func, train_loop_config=asdict(config), scaling_config=scaling,
                               run_config=run_config, datasets=datasets,
                               dataset_config=data.FixedShards(datasets, args.num_workers))
        result = trainer.fit()
        metrics = _metrics(result, args, model_path, counts, warnings)
        _export(result.get_best_checkpoint("eval_loss", "min"), out)
        if args.task == "stars":
            metrics["test"] = _test_metrics(splits["test"], out.tmp_uri("model"), args.use_gpu)
        _plots(metrics, out)
        out.commit(arguments or asdict(args), fingerprints(files), counts, {"metrics.json": metrics})
        metrics["wall_time_s"] = round(time.time() - started, 1)
        return metrics


def _few_steps(total: int, per_epoch: int, args: TrainArgs) -> list[str]:
    """A warning when the run makes too few optimizer steps to learn much."""
    if total >= FEW_STEPS:
        return []
    message = (f"this run makes only {total} optimizer steps ({per_epoch} per epoch: the train split over "
               f"--batch-size {args.batch_size} x {args.num_workers} workers); fine-tuning usually needs "
               f"{FEW_STEPS} or more: give more --epochs, a smaller --batch-size or more data")
    print(f"reviewlm: warning: {message}", file=sys.stderr)
    return [message]


def _metrics(result, args: TrainArgs, model_path: str, counts: dict, warnings: list[str]) -> dict:
    """The run's history (kept in its latest checkpoint) and the epoch model/ comes from."""
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        history = torch.load(os.path.join(d, STATE), weights_only=True)["history"]
    epochs = history["epochs"]
    best = min(epochs, key=lambda e: e["eval_loss"])
    metrics = {"task": args.task, "model": args.model or "distilbert-base-uncased", "model_path": model_path,
               "rows": counts, "warnings": warnings,
               **{f"{k}_before": v for k, v in history["before"].items()},
               "epochs": epochs, "best_epoch": best["epoch"],
               "best": {k: v for k, v in best.items() if k != "samples_per_s"},
               "restarts": history["restarts"]}
    return metrics


def _test_metrics(test: ray.data.Dataset, model_uri: str, use_gpu: bool) -> dict:
    """Star metrics of the exported model on the test split, scored as `reviewlm score` does."""
    from reviewlm.score.scorer import StarScorer

    scored = test.map_batches(StarScorer, fn_constructor_args=("model", model_uri, use_gpu), batch_size=256,
                              batch_format="numpy", compute=ActorPoolStrategy(size=1),
                              **({"num_gpus": 1} if use_gpu else {"num_cpus": 1})).materialize()
    cells = scored.groupby(["rating", "predicted"]).count().to_pandas()
    cm = confusion_matrix(cells["rating"] - 1, cells["predicted"] - 1, counts=cells["count()"])
    return {**star_metrics(cm), "loss": scored.mean("nll")}


def _export(checkpoint, out: OutputDir) -> None:
    """Copy a checkpoint's Hugging Face model and tokenizer (not the training state) to model/."""
    out.fs.makedirs(f"{out.tmp}/model", exist_ok=True)
    with checkpoint.as_directory() as d:
        for name in os.listdir(d):
            if name != STATE:
                out.fs.put(os.path.join(d, name), f"{out.tmp}/model/{name}")


def _plots(metrics: dict, out: OutputDir) -> None:
    from reviewlm.report import plots

    figures = {"loss.png": plots.loss_curve(metrics)}
    if "test" in metrics:
        figures["confusion.png"] = plots.confusion(metrics["test"]["confusion_matrix"], "Star classifier, test split")
    for name, png in figures.items():
        with out.fs.open(f"{out.tmp}/{name}", "wb") as fh:
            fh.write(png)
