"""Classification metrics shared by training (test split) and scoring (a labelled corpus)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels, predictions, n: int = 5, counts=1) -> np.ndarray:
    """Counts of (true class, predicted class), classes 0..n-1; `counts` per pair if given."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, int), np.asarray(predictions, int)), np.asarray(counts, np.int64))
    return cm


def star_metrics(cm) -> dict:
    """Accuracy, binary (<=3 vs >3 stars), within-one, per-class F1 and the majority baseline
    from a 5x5 confusion matrix (rows: true stars - 1, columns: predicted stars - 1)."""
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    true, pred = np.indices(cm.shape)
    share = lambda where: float(cm[where].sum() / n) if n else 0.0  # noqa: E731
    f1 = {}
    for k in range(len(cm)):
        tp, fp, fn = cm[k, k], cm[:, k].sum() - cm[k, k], cm[k, :].sum() - cm[k, k]
        f1[str(k + 1)] = float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0
    return {"n": n, "accuracy": share(true == pred), "binary_accuracy": share((true >= 3) == (pred >= 3)),
            "within_one_accuracy": share(np.abs(true - pred) <= 1),
            "majority_baseline": float(cm.sum(1).max() / n) if n else 0.0, "f1_per_class": f1,
            "confusion_matrix": cm.tolist()}
