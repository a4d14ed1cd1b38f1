"""A trained text classifier as a recipe step (`classifier:`), as NeMo Curator's classifier stages.

The filter stage runs the model on a Ray Data actor pool between the recipe's steps
(`RowClassifier`): in `drop` mode it labels only the rows the steps before it kept, in
`annotate` mode every parsed row. The step itself (`Classifier`) then only compares the
label and its probability that the actors wrote beside each row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reviewlm.errors import UsageError
from reviewlm.filters.base import Filter, scatter
from reviewlm.score.scorer import ClassifyScorer, _inference, class_names

ALIVE = "_alive"  # the rows no earlier step dropped, carried between the filter stage's maps


class Classifier(Filter):
    """Keep a row when the model's top label is in `keep` with a probability of at least
    `min_score`; score `{name}_label` and `{name}_score` (the top label's softmax probability)."""

    def __init__(self, model: str, keep: list, min_score: float = 0.0, name: str = "classifier",
                 batch_size: int | None = None):
        if not isinstance(keep, list) or not keep:
            raise ValueError("keep takes a non-empty list of labels")
        if not 0 <= float(min_score) <= 1:
            raise ValueError("min_score must be between 0 and 1")
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError("batch_size must be at least 1")
        self.model, self.keep, self.min_score = str(model), [str(k) for k in keep], float(min_score)
        self.name, self.batch_size = name, batch_size and int(batch_size)
        self.score_fields = [pa.field(f"{name}_label", pa.string()), pa.field(f"{name}_score", pa.float64())]

    @property
    def columns(self) -> tuple[str, str]:
        """The columns the actors write: the top label and its probability."""
        return f"_label:{self.name}", f"_score:{self.name}"

    def check(self) -> str:
        """The model as every node can load it (a local directory made absolute), once its
        labels are known to include every label in `keep`."""
        from transformers import AutoConfig

        from reviewlm.models import portable_ref, resolve_model

        labels = class_names(AutoConfig.from_pretrained(resolve_model(self.model)))
        missing = [k for k in self.keep if k not in labels]
        if missing:
            raise UsageError(f"classifier {self.name!r}: {missing[0]!r} is not a label of {self.model} "
                             f"(its labels: {', '.join(labels)})")
        return portable_ref(self.model)

    def apply(self, batch):
        label, score = self.columns
        if label not in batch.column_names:
            raise RuntimeError(f"{self.name} needs the filter stage's RowClassifier to run before it")
        keep = pc.and_(pc.is_in(batch[label], value_set=pa.array(self.keep)),
                       pc.greater_equal(batch[score], self.min_score))
        return pc.fill_null(keep, False).to_numpy(zero_copy_only=False), {
            f"{self.name}_label": batch[label], f"{self.name}_score": batch[score]}


class RowClassifier(ClassifyScorer):
    """A Ray Data actor: the top label and its probability for each row the step sees (texts
    bucketed by length, cut to the tokenizer's `model_max_length`), null for the others."""

    def __init__(self, step: Classifier, ref: str, use_gpu: bool, mode: str):
        super().__init__(step.name, ref, use_gpu, micro_batch=step.batch_size)
        self.columns, self.mode = step.columns, mode

    @_inference
    def __call__(self, batch: pa.Table) -> pa.Table:
        parsed = pc.is_null(batch["_error"]).to_numpy(zero_copy_only=False)
        seen = parsed if self.mode == "annotate" or ALIVE not in batch.column_names \
            else batch[ALIVE].to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(seen & pc.is_valid(batch["text"]).to_numpy(zero_copy_only=False))
        probs = self.probabilities(batch["text"].take(rows).to_pylist(), None) if len(rows) \
            else np.zeros((0, len(self.labels)))
        best = probs.argmax(-1)
        label = pa.array([self.labels[k] for k in best], pa.string())
        score = pa.array(probs[np.arange(len(rows)), best], pa.float64())
        return batch.append_column(self.columns[0], scatter(label, rows, batch.num_rows)).append_column(
            self.columns[1], scatter(score, rows, batch.num_rows))
