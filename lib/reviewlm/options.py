"""Job arguments (`RunOptions`, `TrainArgs`, `ScoreArgs`) are dataclasses whose fields carry
their help, as in transformers' run_mlm.py; the command line's options are built from them,
so each is written once, and their checks run in `__post_init__` for every caller.

transformers' `HfArgumentParser` does this for one flat namespace; here the input-column
options are named `--<field>-column`, booleans are plain switches, and a bad value exits 2
with one line (the CLI's own parser), so the few lines below build them.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import typing
from dataclasses import MISSING, dataclass, field
from typing import Literal

from reviewlm.errors import UsageError
from reviewlm.models import DEFAULT_MODEL


def option(default=MISSING, *, help: str, type=None, default_factory=MISSING):  # noqa: A002 - argparse's names
    """A dataclass field with its command-line help (and a parsing function, when not its type's)."""
    return field(default=default, default_factory=default_factory, metadata={"help": help, "type": type})


def names(value: str) -> list[str]:
    """Comma-separated names (two or more), as `--labels a,b,c` takes them."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if len(items) < 2:
        raise argparse.ArgumentTypeError("give two or more comma-separated class names")
    return items


def add_options(parser: argparse.ArgumentParser, cls, *, only: tuple[str, ...] | None = None,
                suffix: str = "", keep_defaults: bool = True) -> None:
    """Options for the fields of `cls` that have help: `--field-name` (+ `suffix`); a `bool` is
    a switch, a `Literal` a choice; an option left out keeps the dataclass's default, or, with
    `keep_defaults=False`, is absent from the parsed namespace (for defaults set elsewhere)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or (only is not None and f.name not in only):
            continue
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        flag = f"--{f.name.replace('_', '-')}{suffix}"
        kw = {"dest": flag[2:].replace("-", "_"), "help": f.metadata["help"]}
        if kind is bool:
            kw["action"] = "store_true"
        elif typing.get_origin(kind) is typing.Literal:
            kw["choices"] = args
        else:
            kw["type"] = f.metadata["type"] or (args[0] if args else kind)
        if not keep_defaults:
            kw["default"] = argparse.SUPPRESS
        elif f.default is not MISSING and f.default is not None and kind is not bool:
            kw["default"] = f.default
            kw["help"] += f" (default: {f.default})"
        parser.add_argument(flag, **kw)


def from_options(cls, namespace: argparse.Namespace, **given):
    """`cls` from the parsed options that name its fields (and `given`); the rest keep their defaults."""
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{**{k: v for k, v in vars(namespace).items() if k in known}, **given})


SPLIT_MB = 64  # files larger than this many MB are read in ranges (see reviewlm.io.pieces.split_file)


def delimiter(value: str) -> str:
    """One field-separator character; `\\t` (as typed in a shell) is a tab."""
    value = {"\\t": "\t", "tab": "\t"}.get(value, value)
    if len(value) != 1 or value in "\"\r\n":
        raise argparse.ArgumentTypeError(f"a delimiter is one character other than a quote or newline, not {value!r}")
    return value


@dataclass(frozen=True)
class RunOptions:
    """Where a job runs, how it reads its inputs and what it may replace: the same for every job."""

    address: str | None = option(None, help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray)")
    num_cpus: int | None = option(None, help="CPUs of a local Ray (default: all cores)")
    overwrite: bool = option(False, help="replace an existing output (the old one stays whole until the new commits)")
    resume: bool = option(False, help="continue an interrupted run with the same arguments and inputs: "
                                      "train from its last checkpoint, filter and score without redoing what it wrote; "
                                      "with --overwrite, an interrupted --overwrite")
    verbose: bool = option(False, help="show Ray's own log lines on the console too")
    split_mb: float = option(SPLIT_MB, help="plain JSONL/CSV/TSV and Parquet files larger than this many MB are read "
                                      "by several tasks, cut at record boundaries (compressed files: one task)")
    delimiter: str | None = option(None, type=delimiter, help="CSV/TSV field separator, e.g. ';' or '|' or '\\t' "
                                                             "(default: from the extension, ',' or tab)")
    encoding: str = option("utf-8", help="text encoding of the inputs, any Python codec: cp1252, latin-1, utf-16… "
                                         "(a UTF-8 byte-order mark is skipped)")
    arguments: dict = field(default_factory=dict)  # what the output's manifest records (secrets masked)

    def __post_init__(self):
        if not self.split_mb > 0:
            raise UsageError(f"{{o}} must be positive, not {self.split_mb}", o="split_mb")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise UsageError(f"{{o}}: unknown encoding {self.encoding!r}", o="encoding") from None
        if self.delimiter is not None:
            try:
                delimiter(self.delimiter)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"{{o}}: {exc}", o="delimiter") from None

    @property
    def split_bytes(self) -> int:
        return max(1, int(self.split_mb * (1 << 20)))


# score: prompts per read task and block, at most, unless a run has more than MAX_PROMPT_BLOCKS
# of them: the driver keeps some 25 KB of Ray's state for every block (its read, score and write
# tasks), so the number of blocks is bounded, not their size
PROMPTS_PER_PIECE = 4096
MAX_PROMPT_BLOCKS = 10_000
MATERIALIZED = 8  # train --streaming auto: the object store a materialized corpus needs, in input bytes
STREAM_EVAL_BLOCKS = 10_000  # streaming: the eval set, materialized, is at most this many blocks by default

# Measured on 1,000 reviews, 2 epochs, batch 16 x 2 workers (bench/RESULTS.md): a classifier
# at 5e-5 stays at the majority class; at 2e-4 it learns.
DEFAULT_LR = {"mlm": 5e-5, "stars": 2e-4, "classify": 2e-4}
TASKS = tuple(DEFAULT_LR)


@dataclass
class TrainArgs:
    """Hugging Face-style training arguments; the `train` command's options are built from them."""

    task: Literal["mlm", "classify", "stars"] = option(
        "mlm", help="mlm: masked-LM domain adaptation; classify: the --label-column classes of texts or pairs; "
                    "stars: the 1-5 rating as classes")
    model: str | None = option(None, help=f"hub id (default {DEFAULT_MODEL}), local or s3:// directory, "
                                          "starter or tiny (offline)")
    epochs: int = option(3, help="passes over the training split")
    max_steps: int | None = option(None, help="stop after this many optimizer steps")
    batch_size: int = option(16, help="per worker")
    lr: float | None = option(None, help="peak learning rate (default: 5e-5 for mlm, 2e-4 for classifiers, "
                                         "whose head starts untrained)")
    chunk_size: int = option(128, help="mlm: tokens per training block")
    max_length: int = option(128, help="classifiers: tokens per text or pair")
    mlm_probability: float = option(0.15, help="mlm: token masking probability (with --whole-word-mask 0)")
    whole_word_mask: float = option(0.2, help="mlm: whole-word masking probability; 0: single tokens")
    eval_fraction: float = option(0.1, help="mlm: held-out fraction")
    max_eval_samples: int | None = option(None, help="evaluate on at most this many blocks or texts (streaming: "
                                                     f"{STREAM_EVAL_BLOCKS:,} blocks unless given)")
    streaming: Literal["auto", "on", "off"] = option(
        "auto", help="mlm: tokenize while the workers train, the corpus never held in the object store; off: "
                     "materialize it (the same losses every run); auto: stream when what the run reads (the "
                     f"input; with --max-steps, its first rows) is over 1/{MATERIALIZED} of the object store")
    num_workers: int = option(2, help="Ray Train workers")
    use_gpu: bool = option(False, help="one GPU per worker")
    precision: Literal["fp32", "fp16", "bf16"] = option("fp32", help="AMP on GPU")
    seed: int = option(42, help="splits, shuffles, masks and initialization")
    labels: list[str] | None = option(None, type=names, help="classify: the classes in id order, comma-separated "
                                                              "(default: every label in the data)")
    class_weights: Literal["none", "balanced"] = option(
        "none", help="classifiers: balanced weighs each class's training loss by its rarity")
    storage: str | None = option(None, help="where checkpoints go (default: OUT/checkpoints), local or s3://")
    keep_checkpoints: int = option(2, help="checkpoints kept, the best by eval loss (and the latest)")
    max_failures: int = option(2, help="worker failures to recover from (from the last checkpoint)")

    def __post_init__(self):
        choices = {"task": TASKS, "class_weights": ("none", "balanced"), "precision": ("fp32", "fp16", "bf16"),
                   "streaming": ("auto", "on", "off")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UsageError(f"{{o}} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}", o=name)
        if self.streaming == "on" and self.task != "mlm":
            raise UsageError("{o} is for the mlm task: a classifier's split is stratified over all its rows",
                             o="streaming")
        if self.labels is not None and (self.task != "classify" or len(set(self.labels)) != len(self.labels)):
            raise UsageError("{o} is for the classify task: distinct class names, in class id order", o="labels")
        if not 0 < self.eval_fraction < 1:
            raise UsageError("{o} must be between 0 and 1", o="eval_fraction")
        for name in ("epochs", "batch_size", "num_workers", "chunk_size", "max_length"):
            if getattr(self, name) < 1:
                raise UsageError("{o} must be at least 1", o=name)
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise UsageError("{o} must be at least 1", o="max_eval_samples")
        for name, low in (("whole_word_mask", 0), ("mlm_probability", 1e-9)):
            if not low <= getattr(self, name) <= 1:
                raise UsageError("{o} must be between 0 and 1", o=name)

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODEL

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


@dataclass(frozen=True)
class ScoreArgs:
    """How the models are scored; the `score` command's options are built from these."""

    task: Literal["mlm", "stars", "classify"] = option(
        "mlm", help="mlm: [MASK] fills; stars, classify: class probabilities per --corpus row")
    top_k: int = option(10, help="mlm: predictions kept per mask")
    batch_size: int = option(256, help="rows per actor call")
    num_actors: int | None = option(None, help="actors per model (default: one per CPU, or GPU)")
    use_gpu: bool = option(False, help="one GPU per actor, fp16")
    train_metrics: str | None = option(None, help="a train job's metrics.json, for its loss curve (a model given "
                                                  "as a train output's model/ gets its curve and perplexity anyway)")
    filter_stats: str | None = option(None, help="a filter job's stats.json, for the funnel")

    def __post_init__(self):
        if self.task not in ("mlm", "stars", "classify"):
            raise UsageError(f"{{o}} must be mlm, stars or classify, not {self.task!r}", o="task")
        if not 1 <= self.top_k <= 1000:
            raise UsageError("{o} must be between 1 and 1000", o="top_k")


@dataclass(frozen=True)
class RecommendArgs:
    """How needs become ranked products; the `recommend` command's options are built from these."""

    model: str = option("starter", help="sentence encoder for dense retrieval: starter (all-MiniLM-L6-v2, shipped, "
                                        "offline), a hub id, local or s3:// directory")
    retriever: Literal["dense", "bm25", "hybrid"] = option(
        "dense", help="dense: sentence embeddings; bm25: words of title and description; hybrid: both, "
                      "reciprocal-rank fused")
    reranker: str | None = option(None, help="a (need, product title) pair classifier to reorder the candidates: a "
                                             "train --task classify --text-pair-column output's model/")
    candidates: int = option(100, help="products retrieved per need (reranked, then cut to --top-k)")
    top_k: int = option(10, help="products ranked per need")
    order: Literal["relevance", "rating", "price"] = option(
        "relevance", help="order of the top-k relevance chose: by relevance, by rating (the reviews' mean with "
                          "--reviews, else the catalogue's; highest first) or by price (lowest first)")
    max_price: float | None = option(None, help="rank only products priced at most this (unpriced ones left out)")
    query_column: str | None = option(None, help="--queries is a table: the column holding the needs "
                                                 "(default: a text file, one need per line)")
    embeddings: str | None = option(None, help="reuse a previous run's OUT/embeddings/ (same --model) instead of "
                                               "encoding the catalogue again")
    judgments: str | None = option(None, help="table of query, product_id, gain: nDCG, MRR and recall in "
                                              "summary.json")
    batch_size: int = option(256, help="rows per actor call")
    num_actors: int | None = option(None, help="encoder and reranker actors (default: one per CPU, or GPU)")
    use_gpu: bool = option(False, help="one GPU per actor")

    def __post_init__(self):
        for name, allowed in (("retriever", ("dense", "bm25", "hybrid")), ("order", ("relevance", "rating", "price"))):
            if getattr(self, name) not in allowed:
                raise UsageError(f"{{o}} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}", o=name)
        for name in ("candidates", "top_k", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError("{o} must be at least 1", o=name)
        if self.top_k > self.candidates:
            raise UsageError("{o} must be at most {c}", o="top_k", c="candidates")
        if self.max_price is not None and not self.max_price >= 0:
            raise UsageError("{o} must be at least 0", o="max_price")
        if self.embeddings and self.retriever == "bm25":
            raise UsageError("{o} is for the dense and hybrid retrievers", o="embeddings")
