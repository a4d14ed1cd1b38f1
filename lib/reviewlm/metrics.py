"""Metrics shared by training and scoring: perplexity, and classification metrics (a test
split, a labelled corpus)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from reviewlm.results import ClassMetrics

STARS = ("1", "2", "3", "4", "5")  # the star task's class names, class id = stars - 1
UNBALANCED = 5.0  # largest class over smallest: above this, accuracy alone misleads


def perplexity(loss: float) -> float:
    """exp(mean loss per token), clamped at exp(50) so that a diverged loss stays a number."""
    return math.exp(min(loss, 50.0))


def confusion_matrix(labels, predictions, n: int = 5, counts=1) -> np.ndarray:
    """Counts of (true class, predicted class), classes 0..n-1; `counts` per pair if given."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, int), np.asarray(predictions, int)), np.asarray(counts, np.int64))
    return cm


def classification_metrics(cm, labels: list[str]) -> ClassMetrics:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the majority baseline from a
    confusion matrix (rows: true class, columns: predicted class, in `labels` order)."""
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    per_class = {}
    for k, name in enumerate(labels):
        tp, predicted, true = int(cm[k, k]), int(cm[:, k].sum()), int(cm[k, :].sum())
        precision, recall = (tp / predicted if predicted else 0.0), (tp / true if true else 0.0)
        f1 = 2 * tp / (predicted + true) if predicted + true else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": true}
    present = [m["f1"] for m in per_class.values() if m["support"]]
    return ClassMetrics(n=n, accuracy=float(np.trace(cm) / n) if n else 0.0,
                        macro_f1=float(np.mean(present)) if present else 0.0,
                        majority_baseline=float(cm.sum(1).max() / n) if n else 0.0,
                        labels=tuple(labels), per_class=per_class, confusion_matrix=cm.tolist())


def star_metrics(cm) -> ClassMetrics:
    """`classification_metrics` of the five star classes, plus binary (<=3 vs >3 stars) and
    within-one accuracy."""
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    true, pred = np.indices(cm.shape)
    share = lambda where: float(cm[where].sum() / n) if n else 0.0  # noqa: E731
    return replace(classification_metrics(cm, list(STARS)), binary_accuracy=share((true >= 3) == (pred >= 3)),
                   within_one_accuracy=share(np.abs(true - pred) <= 1))


def imbalance(counts: dict[str, int]) -> str | None:
    """A sentence when the largest class outnumbers the smallest (with rows) more than `UNBALANCED` times."""
    present = {k: v for k, v in counts.items() if v}
    big, small = max(present, key=present.get), min(present, key=present.get)
    if counts[big] <= UNBALANCED * counts[small]:
        return None
    return (f"classes are unbalanced: {big!r} has {counts[big]:,} rows, {small!r} {counts[small]:,}; "
            "accuracy alone can mislead (see macro_f1 and per_class); balanced class weights "
            "(--class-weights balanced) weigh each class's errors by its rarity")
