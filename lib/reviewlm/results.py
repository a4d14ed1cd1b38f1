"""What each job returns: frozen records that write their own JSON file (stats.json,
metrics.json, summary.json, pipeline.json) and, where another job reads one, read it back.

The CLI prints these, `pipeline` and the report read them; what a result holds is in its
type (`TrainResult.task`, `ModelScores.prompts`…), never guessed from which keys a dict has.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields


def _number(value):
    """A float for JSON: NaN is written as null."""
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass(frozen=True)
class StepStats:
    """One filter's line of the funnel."""

    name: str
    seen: int
    passed: int
    dropped: int


@dataclass(frozen=True)
class FilterStats:
    """What a filter job did (stats.json), like DataTrove's `PipelineStats`: the totals
    (`kept + rejected + quarantined == rows_read`) and the funnel in filter order."""

    rows_read: int
    kept: int
    rejected: int
    quarantined: int
    mode: str
    filters: tuple[StepStats, ...]
    wall_time_s: float
    ray_start_s: float
    would_keep: int | None = None  # annotate mode: rows that pass every filter

    def to_json(self) -> dict:
        return {k: list(v) if k == "filters" else v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: dict) -> FilterStats:
        return cls(**{**d, "filters": tuple(StepStats(**s) for s in d["filters"])})

    @property
    def totals(self) -> dict[str, int]:
        """The row counts (the output manifest's and pipeline.json's)."""
        return {k: getattr(self, k) for k in ("rows_read", "kept", "rejected", "quarantined")}


@dataclass(frozen=True)
class ClassMetrics:
    """A classifier's figures from its confusion matrix (rows: true class, columns: predicted)."""

    n: int
    accuracy: float
    macro_f1: float
    majority_baseline: float
    labels: tuple[str, ...]
    per_class: dict[str, dict]  # precision, recall, f1, support
    confusion_matrix: list[list[int]]
    binary_accuracy: float | None = None  # stars: <= 3 against > 3 stars
    within_one_accuracy: float | None = None  # stars: off by at most one star

    @property
    def stars(self) -> bool:
        return self.binary_accuracy is not None

    def to_json(self) -> dict:
        d = {**asdict(self), "labels": list(self.labels)}
        return d if self.stars else {k: v for k, v in d.items() if k not in ("binary_accuracy", "within_one_accuracy")}

    @classmethod
    def from_json(cls, d: dict) -> ClassMetrics:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names} | {"labels": tuple(d["labels"])})


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """Loss and accuracy on the eval split (per masked token or per text); perplexity for mlm."""

    eval_loss: float
    eval_accuracy: float
    perplexity: float | None = None

    def _eval_json(self) -> dict:
        d = {"eval_loss": self.eval_loss, "eval_accuracy": self.eval_accuracy}
        return d if self.perplexity is None else d | {"perplexity": self.perplexity}


@dataclass(frozen=True, kw_only=True)
class Epoch(Evaluation):
    """One epoch of training: where it ended, its mean training loss and the evaluation after it."""

    epoch: int
    step: int
    train_loss: float
    samples_per_s: float | None = None  # after the first (warm-up) step

    def to_json(self, rate: bool = True) -> dict:
        d = {"epoch": self.epoch, "step": self.step, "train_loss": self.train_loss, **self._eval_json()}
        return d | {"samples_per_s": self.samples_per_s} if rate else d


@dataclass(frozen=True)
class TrainResult:
    """What a train job did (metrics.json). model/ holds the `best` epoch (lowest eval loss)."""

    task: str
    model: str
    model_path: str
    rows: dict[str, int]  # read, quarantined, per split, and blocks or samples
    warnings: tuple[str, ...]
    before: Evaluation
    epochs: tuple[Epoch, ...]
    restarts: tuple[dict, ...]  # from_epoch, from_step of each restart from a checkpoint
    streaming: bool
    labels: tuple[str, ...] = ()  # classifiers: the classes in id order
    classes: dict[str, int] | None = None  # classifiers: usable rows per class
    class_weights: tuple[float, ...] = ()
    test: ClassMetrics | None = None  # classifiers: model/ on the test split
    test_loss: float | None = None
    wall_time_s: float | None = None  # not in metrics.json

    @property
    def best(self) -> Epoch:
        return min(self.epochs, key=lambda e: e.eval_loss)

    def to_json(self) -> dict:
        d = {"task": self.task, "model": self.model, "model_path": self.model_path, "rows": self.rows,
             "warnings": list(self.warnings), **{f"{k}_before": v for k, v in self.before._eval_json().items()},
             "epochs": [e.to_json() for e in self.epochs], "best_epoch": self.best.epoch,
             "best": self.best.to_json(rate=False), "restarts": list(self.restarts), "streaming": self.streaming}
        if self.labels:
            d.update(labels=list(self.labels), classes=self.classes, class_weights=list(self.class_weights) or None)
            d["test"] = {**self.test.to_json(), "loss": self.test_loss}
        return d | ({"wall_time_s": self.wall_time_s} if self.wall_time_s is not None else {})

    @classmethod
    def from_json(cls, d: dict) -> TrainResult:
        test = d.get("test")
        return cls(task=d["task"], model=d["model"], model_path=d["model_path"], rows=d["rows"],
                   warnings=tuple(d["warnings"]),
                   before=Evaluation(eval_loss=d["eval_loss_before"], eval_accuracy=d["eval_accuracy_before"],
                                     perplexity=d.get("perplexity_before")),
                   epochs=tuple(Epoch(**e) for e in d["epochs"]), restarts=tuple(d["restarts"]),
                   streaming=d.get("streaming", False), labels=tuple(d.get("labels") or ()),
                   classes=d.get("classes"), class_weights=tuple(d.get("class_weights") or ()),
                   test=ClassMetrics.from_json(test) if test else None, test_loss=test["loss"] if test else None,
                   wall_time_s=d.get("wall_time_s"))


@dataclass(frozen=True)
class PromptScores:
    """A masked LM on the prompts: means over prompts of the wanted and unwanted words in its top k."""

    prompts_scored: int
    masks_scored: int
    wanted_share: float
    unwanted_share: float
    wanted_mass: float
    unwanted_mass: float
    median_first_wanted_rank: float
    mean_filled_vader: float  # VADER compound of the prompts filled with the top fill

    def to_json(self) -> dict:
        return {k: _number(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class CorpusScores:
    """A masked LM on held-out reviews with 15% of their words masked."""

    reviews: int
    masked_tokens: int
    accuracy_at_1: float
    accuracy_at_10: float
    pseudo_perplexity: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabelScores:
    """A classifier on a corpus: what it predicted and, over the rows with a known label, how well."""

    rows: int
    labels: tuple[str, ...]
    predicted_distribution: dict[str, int]
    unknown_labels: int | None = None  # rows whose label is none of the model's classes (when rows have labels)
    metrics: ClassMetrics | None = None
    mean_nll: float | None = None

    @classmethod
    def from_json(cls, d: dict) -> LabelScores:
        metrics = ClassMetrics.from_json(d) if "accuracy" in d else None
        return cls(rows=d["rows"], labels=tuple(d["labels"]), predicted_distribution=d["predicted_distribution"],
                   unknown_labels=d.get("unknown_labels"), metrics=metrics, mean_nll=d.get("mean_nll"))

    def to_json(self) -> dict:
        d = {"rows": self.rows, "labels": list(self.labels), "predicted_distribution": self.predicted_distribution}
        if self.unknown_labels is not None:
            d["unknown_labels"] = self.unknown_labels
        if self.metrics is not None:
            d |= self.metrics.to_json() | {"mean_nll": self.mean_nll}
        return d


@dataclass(frozen=True)
class ModelScores:
    """One scored model: what was scored of it."""

    ref: str
    path: str
    prompts: PromptScores | None = None
    corpus: CorpusScores | None = None
    labels: LabelScores | None = None


@dataclass(frozen=True)
class ScoreResult:
    """What a score job found (summary.json), per model in the order given."""

    task: str
    word_sets: dict[str, list[str]]
    models: dict[str, ModelScores]
    invalid_prompts: tuple[dict, ...] = ()  # prompt_index, prompt, error
    corpus_reviews: int | None = None
    corpus_quarantined: int | None = None  # corpus rows no model could score (quarantine/)
    substitutions: dict[str, list[dict]] = field(default_factory=dict)  # "other vs first": per prompt
    wall_time_s: float | None = None  # not in summary.json

    def to_json(self) -> dict:
        models = {}
        for name, m in self.models.items():
            entry = {"ref": m.ref, "path": m.path} | (m.prompts.to_json() if m.prompts else {})
            if m.corpus:
                entry["corpus"] = m.corpus.to_json()
            if m.labels:
                entry[self.task] = m.labels.to_json()
            models[name] = entry
        d = {"task": self.task, "word_sets": self.word_sets, "models": models,
             "invalid_prompts": list(self.invalid_prompts)}
        if self.corpus_reviews is not None:
            d["corpus_reviews"] = self.corpus_reviews
        if self.corpus_quarantined is not None:
            d["corpus_quarantined"] = self.corpus_quarantined
        if self.substitutions:
            d["substitutions"] = self.substitutions
        return d | ({"wall_time_s": self.wall_time_s} if self.wall_time_s is not None else {})

    @classmethod
    def from_json(cls, d: dict) -> ScoreResult:
        prompt_fields = [f.name for f in fields(PromptScores)]
        models = {name: ModelScores(
            ref=e["ref"], path=e["path"],
            prompts=PromptScores(**{k: e[k] for k in prompt_fields}) if "prompts_scored" in e else None,
            corpus=CorpusScores(**e["corpus"]) if "corpus" in e else None,
            labels=LabelScores.from_json(e[d["task"]]) if d["task"] in e else None) for name, e in d["models"].items()}
        return cls(task=d["task"], word_sets=d["word_sets"], models=models,
                   invalid_prompts=tuple(d.get("invalid_prompts", ())), corpus_reviews=d.get("corpus_reviews"),
                   corpus_quarantined=d.get("corpus_quarantined"), substitutions=d.get("substitutions", {}),
                   wall_time_s=d.get("wall_time_s"))


@dataclass(frozen=True)
class PipelineResult:
    """The reference study's stages (pipeline.json): filter, v1 and v2 trained, all scored."""

    filter: FilterStats
    train: dict[str, TrainResult]
    score: ScoreResult
    report: str
    wall_time_s: float

    def to_json(self) -> dict:
        return {"filter": self.filter.totals,
                "train": {n: {"perplexity_before": t.before.perplexity, "perplexity_after": t.best.perplexity,
                              "best_epoch": t.best.epoch, "steps": t.epochs[-1].step} for n, t in self.train.items()},
                "score": {n: {k: v for k, v in m.prompts.to_json().items()
                              if k in ("wanted_share", "unwanted_share", "wanted_mass", "unwanted_mass",
                                       "mean_filled_vader")}
                          for n, m in self.score.models.items()},
                "report": self.report, "wall_time_s": self.wall_time_s}


@dataclass(frozen=True)
class RecommendResult:
    """What a recommend job did (summary.json): the needs ranked, the catalogue read and, with
    judgments, the means of the ranking metrics (`ndcg@10`…) and each need's."""

    retriever: str
    model: str | None  # the dense encoder (None for bm25)
    reranker: str | None
    order: str
    candidates: int
    top_k: int
    queries: int
    empty_queries: tuple[int, ...]  # line (or row) numbers of empty needs, not ranked
    products: int  # catalogue rows ranked
    quarantined: int  # catalogue rows that could not be (quarantine/)
    ranked_rows: int
    reviews: int | None = None  # --reviews: the reviews naming a product, aggregated per product
    metrics: dict = field(default_factory=dict)  # with --judgments: means, queries_judged, queries_without_relevant
    per_query: tuple[dict, ...] = ()
    wall_time_s: float | None = None  # not in summary.json

    def to_json(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k != "wall_time_s"}
        return d | ({"wall_time_s": self.wall_time_s} if self.wall_time_s is not None else {})

    @classmethod
    def from_json(cls, d: dict) -> RecommendResult:
        return cls(**{**d, "empty_queries": tuple(d["empty_queries"]), "per_query": tuple(d.get("per_query", ()))})
