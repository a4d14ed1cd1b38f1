"""`reviewlm train`: fine-tune on Ray Train; scaling, checkpoints and storage set here."""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, replace
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from ray.data import ActorPoolStrategy
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from reviewlm.errors import UsageError
from reviewlm.io.layout import Columns
from reviewlm.io.pieces import plan_pieces
from reviewlm.io.quarantine import Quarantined, write_quarantine
from reviewlm.io.readers import ReviewDatasource, check_inputs, read_reviews, read_source
from reviewlm.io.storage import OutputDir, arrow_filesystem, compressed, filesystem, fingerprints
from reviewlm.metrics import STARS, classification_metrics, confusion_matrix, imbalance, star_metrics
from reviewlm.models import portable_ref, resolve_model
from reviewlm.options import MATERIALIZED, STREAM_EVAL_BLOCKS, RunOptions, TrainArgs
from reviewlm.progress import Meter, progress
from reviewlm.results import ClassMetrics, Epoch, Evaluation, TrainResult
from reviewlm.runtime import actor_pool, init_ray
from reviewlm.tally import tally
from reviewlm.train import data
from reviewlm.train.loop import STATE, LoopConfig, train_func
from reviewlm.train.masking import mask_eval_blocks
from reviewlm.train.shards import FixedShards

FEW_STEPS = 50  # fewer optimizer steps than this: warn that the model may learn little
COMPRESSION = 5  # --streaming auto: a compressed file's bytes, counted this many times
PROBE_ROWS = 2048  # masked LM with --max-steps: the first rows, read to learn the tokens per row
PREFIX_MARGIN = 1.25  # with --max-steps, the rows read hold this many times the tokens (or rows) the steps need
PREFIX_SHARE = 4  # ... and only the first rows are read when the corpus holds this many times them
BYTES_PER_TOKEN = 8  # --streaming auto: a prefix's bytes in the object store per token it must hold
# Ray Train's controller polls the workers this often per worker (Ray's default: 2 s whatever their
# number): a report (a worker waits for it), a run's end and a lost worker are seen at the next poll.
# bench/train_poll.py: the fit() of two workers that report once, 11.3 s at 2 s, 8.2 s at 0.5 s, 7.2 s at 0.1 s
POLL_ENV, POLL_S_PER_WORKER, POLL_S_MIN, POLL_S_MAX = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 0.05, 0.1, 2.0


def _prepared(ds: ray.data.Dataset, args: TrainArgs, num_cpus: float | None = None) -> ray.data.Dataset:
    """The rows training reads, each usable or with its reason in `_error` (lazy)."""
    return ds.map_batches(data.training_rows, fn_kwargs={"task": args.task, "seed": args.seed, "labels": args.labels},
                          batch_format="pyarrow", num_cpus=num_cpus)


def _needed_tokens(args: TrainArgs) -> float | None:
    """Masked LM with `--max-steps`: the tokens its steps and `--max-eval-samples` need, before
    the split, with a margin; None when the schedule is set by epochs."""
    if args.task != "mlm" or not args.max_steps:
        return None
    train = args.max_steps * args.batch_size * args.num_workers * args.chunk_size / (1 - args.eval_fraction)
    evaluation = (args.max_eval_samples or 0) * args.chunk_size / args.eval_fraction
    return PREFIX_MARGIN * max(train, evaluation)


def _needed_rows(args: TrainArgs) -> int:
    """A classifier with `--max-steps`: the rows its steps and `--max-eval-samples` need, before
    the split, with a margin (its test split is a fifth of them)."""
    train = args.max_steps * args.batch_size * args.num_workers / 0.64
    evaluation = (args.max_eval_samples or 0) / 0.16
    return math.ceil(PREFIX_MARGIN * max(train, evaluation))


def _head(rows: ray.data.Dataset, args: TrainArgs, tokenizer) -> tuple[ray.data.Dataset, list[str]]:
    """Every row (materialized, in input order); with `--max-steps`, only the first rows that
    its steps need, when the corpus holds `PREFIX_SHARE` times that many: a short run does not
    read, split, tokenize (and, for a classifier, test) the whole corpus before its first step.

    A masked LM's rows are counted by their tokens: the first `PROBE_ROWS` rows give the tokens
    per row (rows without text count as rows).
    """
    rows.context.execution_options.preserve_order = True  # the same blocks in the same order every run
    if not args.max_steps:
        return rows.materialize(), []
    probe = rows.limit(PROBE_ROWS).materialize()
    if args.task == "mlm":
        if probe.count() < PROBE_ROWS:  # the whole corpus
            return probe, []
        need = _needed_tokens(args)
        first = probe.to_pandas()
        texts = first.loc[first["_error"].isna(), "text"].tolist()
        tokens = sum(len(x) for x in tokenizer(texts, truncation=False, verbose=False)["input_ids"]) if texts else 0
        if not tokens:
            return rows.materialize(), []
        n = math.ceil(need * PROBE_ROWS / tokens)
        what = f"about {need:,.0f} tokens before the eval split"
    else:
        n = _needed_rows(args)
        what = ("the rows its steps need, with their validation and test splits; a corpus in the order of its "
                "classes gives it too few of them")
    head = probe if PREFIX_SHARE * n <= PROBE_ROWS else rows.limit(PREFIX_SHARE * n).materialize()
    if head.count() < PREFIX_SHARE * n:  # the whole corpus
        return head, []
    return head.limit(n).materialize(), _warn(
        f"--max-steps {args.max_steps} trains on the corpus's first {n:,} rows in input order ({what}); "
        "without --max-steps every row is read")


def _classes(found: Quarantined, args: TrainArgs, columns: Columns) -> dict[str, int]:
    """Usable rows per class, in class id order; an error when fewer than two classes have any."""
    seen = found.counted["_class"]
    labels = list(STARS) if args.task == "stars" else args.labels or data.sort_labels(seen)
    counts = {label: int(seen.get(label, 0)) for label in labels}
    present = [k for k, v in counts.items() if v]
    if len(present) < 2:
        column = columns.rating if args.task == "stars" else columns.label
        raise UsageError(f"the label column {column!r} holds {len(present)} class(es) among the usable rows "
                         f"({', '.join(present) or 'none'}): a classifier needs two or more")
    return counts


def _bounds(args: TrainArgs) -> list[tuple[str, float, float]]:
    if args.task == "mlm":
        return [("eval", 0.0, args.eval_fraction), ("train", args.eval_fraction, 1.0)]
    return [("train", 0.0, 0.64), ("eval", 0.64, 0.80), ("test", 0.80, 1.0)]  # within every class


def _mlm_blocks(split: ray.data.Dataset, args: TrainArgs, tokenizer, num_cpus: float | None = None):
    return split.map_batches(data.tokenize_and_chunk, fn_kwargs={"tokenizer": tokenizer, "chunk_size": args.chunk_size},
                             batch_format="numpy", batch_size=256, num_cpus=num_cpus)


def _eval_blocks(split: ray.data.Dataset, args: TrainArgs, tokenizer, limit: int | None) -> ray.data.Dataset:
    """The eval split's blocks with their masks fixed, at most `limit` (materialized)."""
    mask = {"tokenizer": tokenizer, "probability": args.mask_probability, "whole_word": args.whole_word,
            "seed": args.seed}
    blocks = _mlm_blocks(split, args, tokenizer).map_batches(mask_eval_blocks, fn_kwargs=mask,
                                                             batch_format="numpy", batch_size=256)
    return (blocks.limit(limit) if limit else blocks).materialize()


def _no_blocks(counts: dict, args: TrainArgs) -> None:
    short = [k for k in ("train", "eval") if counts.get(f"{k}_blocks") == 0]
    if short:
        raise UsageError(f"the {' and '.join(short)} text makes no block of {{o}} {args.chunk_size} tokens: "
                         "give more data or a smaller {o}", o="chunk_size")


def _counted(rows: ray.data.Dataset, args: TrainArgs, out: OutputDir, tokenizer=None) -> tuple[Quarantined, list]:
    """One pass over the training rows: what cannot be used goes to quarantine/, and the rows,
    errors, classes (with their split hashes' bins) or splits (with the train split's tokens,
    given a tokenizer) are counted; a warning says how many rows were quarantined and why."""
    counts = ("_class",) if args.task == "mlm" else ("_class", "_bin")
    found = write_quarantine(rows.map_batches(data.counted, fn_kwargs={
        "task": args.task, "bounds": _bounds(args), "tokenizer": tokenizer}, batch_format="pyarrow"),
        out.tmp_uri(), counts, sums=("_tokens",) if tokenizer is not None else ())
    return found, found.check("the training data", warn_above=0)


def _datasets(rows: ray.data.Dataset, found: Quarantined, classes: dict[str, int] | None, args: TrainArgs,
              tokenizer):
    """Training datasets (tokenized, materialized), the raw splits, and the row counts per split."""
    bounds = _bounds(args)
    if classes is None:
        splits = data.mlm_splits(rows, bounds)
        counts = {name: int(found.counted["_class"].get(name, 0)) for name, _, _ in bounds}
    else:
        present = {k: v for k, v in classes.items() if v}
        splits, counts = data.stratified_splits(rows, present, found.counted["_bin"], bounds)
    counts = data.require_rows(counts)
    if args.task == "mlm":
        tokenized = {"train": _mlm_blocks(splits["train"], args, tokenizer),
                     "eval": _eval_blocks(splits["eval"], args, tokenizer, args.max_eval_samples)}
    else:
        encode = {"tokenizer": tokenizer, "max_length": args.max_length,
                  "label2id": {label: i for i, label in enumerate(classes)}}
        tokenized = {k: v.map_batches(data.tokenize_reviews, fn_kwargs=encode, batch_format="numpy", batch_size=256)
                     for k, v in splits.items() if k != "test"}
        if args.max_eval_samples:
            tokenized["eval"] = tokenized["eval"].limit(args.max_eval_samples)
    # the rows stay in input order up to here: training takes the blocks in a seeded random order
    tokenized["train"] = tokenized["train"].randomize_block_order(seed=args.seed)
    tokenized = {k: v.materialize() for k, v in tokenized.items()}
    counts.update({f"{k}_{'blocks' if args.task == 'mlm' else 'samples'}": v.count() for k, v in tokenized.items()})
    _no_blocks(counts, args)
    return tokenized, splits, counts


def _streams(args: TrainArgs, inputs) -> bool:
    """Whether masked-LM data streams: `--streaming on`, or (auto) when holding what the run
    reads would fill the object store: the corpus (rows with their raw text, splits and tokens:
    about `MATERIALIZED` times the input's bytes, compressed files counted `COMPRESSION`
    times) or, with `--max-steps`, the first rows it needs (see `_head`)."""
    if args.task != "mlm" or args.streaming == "off":
        return False
    size = sum(f.size * (COMPRESSION if compressed(f.path) else 1) for f in inputs.files)
    store = ray.cluster_resources().get("object_store_memory", 0)
    need = _needed_tokens(args)
    held = min(size, PREFIX_SHARE * need * BYTES_PER_TOKEN) if need else size
    if args.streaming == "auto" and held * MATERIALIZED < store:
        return False
    print(f"reviewlm: streaming the training data ({size / 2**20:,.0f} MB of input, {store / 2**20:,.0f} MB "
          "of object store)", file=sys.stderr)
    return True


def _streamed(source, args: TrainArgs, tokenizer, out: OutputDir):
    """Masked-LM datasets for `--streaming`: the train blocks are read and tokenized while
    the workers train, every epoch anew; the eval blocks, at most `--max-eval-samples`, are
    materialized. One pass first counts the rows (and, without `--max-steps`, the tokens for
    the schedule) and quarantines what cannot be used."""
    bounds = _bounds(args)
    rows = read_source(source)
    rows.context.execution_options.preserve_order = True  # the same eval blocks and quarantine every run
    rows = _prepared(rows, args)
    found, warnings = _counted(rows, args, out, tokenizer=None if args.max_steps else tokenizer)
    counts = {"read": found.read, "quarantined": found.quarantined,
              **{name: int(found.counted["_class"].get(name, 0)) for name, _, _ in bounds}}
    data.require_rows({"train": counts["train"], "eval": counts["eval"]})

    def split(ds: ray.data.Dataset, name: str, num_cpus: float | None = None) -> ray.data.Dataset:
        return ds.map_batches(data.split_rows, fn_kwargs={"name": name, "bounds": bounds}, batch_format="pyarrow",
                              num_cpus=num_cpus)

    stream = read_source(source, data.DATA_CPUS)
    stream.context.target_max_block_size = data.STREAM_BLOCK_BYTES  # what a task holds in the store
    train = _mlm_blocks(split(_prepared(stream, args, data.DATA_CPUS), "train", data.DATA_CPUS), args, tokenizer,
                        data.DATA_CPUS)
    evaluation = _eval_blocks(split(rows, "eval"), args, tokenizer, args.max_eval_samples or STREAM_EVAL_BLOCKS)
    counts["eval_blocks"] = evaluation.count()
    if "_tokens" in found.summed:
        counts["train_blocks"] = int(found.summed["_tokens"]) // args.chunk_size  # about: batches drop their tails
    _no_blocks(counts, args)
    return {"train": train, "eval": evaluation}, counts, warnings


def train_model(inputs: list[str], output: str, args: TrainArgs, *, columns: Columns = Columns(),
                fmt: str | None = None, run: RunOptions = RunOptions()) -> TrainResult:
    """Fine-tune `args.model` on the reviews in `inputs`; write model/, metrics.json, plots.

    model/ is the checkpoint with the lowest eval loss (like `load_best_model_at_end`); the
    test metrics of a classifier are computed from it. Rows training cannot use go to
    quarantine/ with their reason.
    """
    from transformers import AutoTokenizer

    if (args.task == "classify") != bool(columns.label):
        raise UsageError("the classify task needs {o} (and only it reads one)", o="label_column")
    data_in = check_inputs(inputs, columns, fmt, need_rating=args.task == "stars", delimiter=run.delimiter,
                           encoding=run.encoding)
    model_path = resolve_model(args.model)
    out = OutputDir(output, "train", run.overwrite, carry=("checkpoints",))
    out.prepare(run.resume, run.arguments or asdict(args), fingerprints(data_in))
    started = time.time()
    with out:
        init_ray(run)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        stream = _streams(args, data_in)
        if stream:
            source = ReviewDatasource(data_in, plan_pieces(data_in, run.split_bytes), columns)
            datasets, counts, warnings = _streamed(source, args, tokenizer, out)
            labels = classes = None
        else:
            rows, notes = _head(_prepared(read_reviews(data_in, columns, run.split_bytes), args), args, tokenizer)
            found, warnings = _counted(rows, args, out)
            warnings = notes + warnings
            classes = _classes(found, args, columns) if args.task != "mlm" else None
            labels = list(classes) if classes else None
            datasets, splits, counts = _datasets(rows, found, classes, args, tokenizer)
            counts = {"read": found.read, "quarantined": found.quarantined, **counts}
        arrow_fs = arrow_filesystem(out.fs)
        if args.task == "mlm":  # the masked blocks every eval loss is computed on, for anyone to recompute
            datasets["eval"].write_parquet(f"{out.tmp}/eval", filesystem=arrow_fs)
        else:  # the rows the test metrics are computed on
            splits["test"].drop_columns(["split", "_h", "source", "_row", "_raw", "_error"]).write_parquet(
                f"{out.tmp}/test", filesystem=arrow_fs)
        train_rows = counts.get("train_blocks" if args.task == "mlm" else "train_samples")
        steps_per_epoch = math.ceil(train_rows / args.batch_size / args.num_workers) if train_rows is not None else None
        total = min(args.max_steps or 10**12, steps_per_epoch * args.epochs if steps_per_epoch else 10**12)
        warnings += _few_steps(total, steps_per_epoch, args) + _unbalanced(classes, args)
        config = LoopConfig.derive(args, model=portable_ref(args.model), total_steps=total, labels=tuple(labels or ()),
                                   class_weights=_weights(classes, args))
        # an output being replaced keeps its checkpoints until the commit: this run's go with its data
        storage_uri = (args.storage or (out.tmp_uri() if out.replacing else out.uri)).rstrip("/") + "/checkpoints"
        sfs, spath = filesystem(storage_uri)
        run_config = RunConfig(name="run", storage_path=spath if "file" not in sfs.protocol else os.path.abspath(spath),
                               storage_filesystem=None if "file" in sfs.protocol else arrow_filesystem(sfs),
                               checkpoint_config=CheckpointConfig(num_to_keep=args.keep_checkpoints,
                                                                  checkpoint_score_attribute="eval_loss",
                                                                  checkpoint_score_order="min"),
                               failure_config=FailureConfig(max_failures=args.max_failures))
        scaling = ScalingConfig(num_workers=args.num_workers, use_gpu=args.use_gpu,  # streaming: CPUs for Ray Data
                                resources_per_worker=None if args.use_gpu else {"CPU": 1 - data.DATA_CPUS * stream})
        # the same run name and storage: Ray Train continues from the latest checkpoint there
        meter = Meter("training", key="step", unit="steps", total=total, extra=partial(_step_extra, args=args))
        with progress(meter) as tally, _polled(args.num_workers):
            trainer = TorchTrainer(train_func, train_loop_config=asdict(config) | {"tally": tally},
                                   scaling_config=scaling, run_config=run_config, datasets=datasets,
                                   dataset_config=FixedShards(datasets, args.num_workers,
                                                                   stream=("train",) if stream else ()))
            fitted = trainer.fit()
        _export(fitted.get_best_checkpoint("eval_loss", "min"), out)
        result = _result(fitted, args, model_path, counts, warnings, stream)
        if labels:
            # from test/ as written: the split is not made again from the input
            test, loss = _test_metrics(ray.data.read_parquet(f"{out.tmp}/test", filesystem=arrow_fs),
                                       out.tmp_uri("model"), args.use_gpu, labels, stars=args.task == "stars")
            result = replace(result, labels=tuple(labels), classes=classes, class_weights=config.class_weights,
                             test=test, test_loss=loss)
        _plots(result, out)
        out.commit(run.arguments or asdict(args), fingerprints(data_in), counts, {"metrics.json": result.to_json()})
        return replace(result, wall_time_s=round(time.time() - started, 1))


@contextmanager
def _polled(workers: int):
    """Ray Train's controller polls `workers` every `POLL_S_PER_WORKER` x `workers` seconds (within
    `POLL_S_MIN` and `POLL_S_MAX`), unless the environment sets its own interval; `fit` reads it."""
    own = os.environ.get(POLL_ENV)
    os.environ[POLL_ENV] = own or f"{min(POLL_S_MAX, max(POLL_S_MIN, POLL_S_PER_WORKER * workers)):g}"
    try:
        yield
    finally:
        if own is None:
            os.environ.pop(POLL_ENV, None)


def _step_extra(values: dict, rate: float, args: TrainArgs) -> str:
    """A training progress line's loss and samples per second."""
    parts = [f"loss {values['loss']:.3f}"] if "loss" in values else []
    if rate:
        parts.append(f"{rate * args.batch_size * args.num_workers:,.1f} samples/s")
    return ", ".join(parts)


def _warn(message: str) -> list[str]:
    """Print a warning (stderr) and return it for metrics.json."""
    print(f"reviewlm: warning: {message}", file=sys.stderr)
    return [message]


def _few_steps(total: int, per_epoch: int | None, args: TrainArgs) -> list[str]:
    """A warning when the run makes too few optimizer steps to learn much."""
    if total >= FEW_STEPS:
        return []
    why = (f"{per_epoch} per epoch: the train split over a batch of {args.batch_size} x {args.num_workers} workers"
           if per_epoch is not None else "--max-steps")
    return _warn(f"this run makes only {total} optimizer steps ({why}); fine-tuning usually needs "
                 f"{FEW_STEPS} or more: give more epochs, a smaller batch size or more data")


def _unbalanced(classes: dict[str, int] | None, args: TrainArgs) -> list[str]:
    message = imbalance(classes) if classes and args.class_weights == "none" else None
    return _warn(message) if message else []


def _weights(classes: dict[str, int] | None, args: TrainArgs) -> tuple[float, ...]:
    """`balanced`: n / (classes x rows of the class), as scikit-learn's; 0 for a class with no rows."""
    if not classes or args.class_weights == "none":
        return ()
    n, k = sum(classes.values()), sum(1 for v in classes.values() if v)
    return tuple(round(n / (k * v), 6) if v else 0.0 for v in classes.values())


def _result(fitted, args: TrainArgs, model_path: str, counts: dict, warnings: list[str],
            streaming: bool) -> TrainResult:
    """The run's history, kept in its latest checkpoint."""
    if fitted.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with fitted.checkpoint.as_directory() as d:
        history = torch.load(os.path.join(d, STATE), weights_only=True)["history"]
    return TrainResult(task=args.task, model=args.model_name, model_path=model_path, rows=counts,
                       warnings=tuple(warnings), before=Evaluation(**history["before"]),
                       epochs=tuple(Epoch(**e) for e in history["epochs"]), restarts=tuple(history["restarts"]),
                       streaming=streaming)


def _test_metrics(test: ray.data.Dataset, model_uri: str, use_gpu: bool, labels: list[str],
                  stars: bool) -> tuple[ClassMetrics, float]:
    """Metrics and mean loss of the exported model on the test split, scored as `reviewlm score`
    does, on an actor pool; each task counts its block's (label, predicted) cells and losses."""
    from reviewlm.score.scorer import ClassifyScorer

    pool = actor_pool(None, use_gpu, fed_by_tasks=True)  # read tasks feed the actors as they score
    scored = test.map_batches(ClassifyScorer, fn_constructor_kwargs={"name": "model", "ref": model_uri,
                                                                     "use_gpu": use_gpu}, batch_size=256,
                              batch_format="numpy", compute=ActorPoolStrategy(size=pool.size), **pool.resources)
    cells = tally(scored, _cells)
    index = {label: i for i, label in enumerate(labels)}
    cell = {(index[k[1]], index[k[2]]): n for k, n in cells.items() if isinstance(k, tuple)}
    cm = confusion_matrix([t for t, _ in cell], [p for _, p in cell], n=len(labels), counts=list(cell.values()))
    metrics = star_metrics(cm) if stars else classification_metrics(cm, labels)
    return metrics, cells["nll"] / max(cells["n"], 1)


def _cells(block: pa.Table) -> Counter:
    """A scored block's rows per (label, predicted) cell, and its losses' sum and count."""
    out = Counter({("cell", *k): n for k, n in Counter(zip(block["label"].to_pylist(),
                                                            block["predicted"].to_pylist())).items()})
    out["nll"], out["n"] = pc.sum(block["nll"]).as_py() or 0.0, block.num_rows
    return out


def _export(checkpoint, out: OutputDir) -> None:
    """Copy a checkpoint's Hugging Face model and tokenizer (not the training state) to model/."""
    out.fs.makedirs(f"{out.tmp}/model", exist_ok=True)
    with checkpoint.as_directory() as d:
        for name in os.listdir(d):
            if name != STATE:
                out.fs.put(os.path.join(d, name), f"{out.tmp}/model/{name}")


def _plots(result: TrainResult, out: OutputDir) -> None:
    from reviewlm.report import plots

    figures = {"loss.png": plots.loss_curve(result)}
    if result.test:
        figures["confusion.png"] = plots.confusion(result.test.confusion_matrix, list(result.labels),
                                                   f"{result.task} classifier, test split")
    for name, png in figures.items():
        with out.fs.open(f"{out.tmp}/{name}", "wb") as fh:
            fh.write(png)
