"""Rerank candidates with a (need, product) pair classifier that `reviewlm train --task classify
--text-pair-column` made: a product's score is its expected relevance gain over the classes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from reviewlm.errors import UsageError
from reviewlm.score.scorer import ClassifyScorer

ESCI_GAINS = {"exact": 1.0, "substitute": 0.1, "complement": 0.01, "irrelevant": 0.0}  # the ESCI standard


def class_gains(labels: list[str]) -> np.ndarray:
    """The gain of each class: ESCI names (or their initials E/S/C/I) get ESCI's gains; numeric
    classes their value over the largest (0/1 relevance: P(1); grades 0–3: expected grade / 3)."""
    esci = {k[0]: v for k, v in ESCI_GAINS.items()} | ESCI_GAINS
    if all(label.strip().lower() in esci for label in labels):
        return np.array([esci[label.strip().lower()] for label in labels])
    try:
        values = np.array([float(label) for label in labels])
    except ValueError:
        raise UsageError(f"the reranker's classes {labels} are neither ESCI labels (Exact, Substitute, Complement, "
                         "Irrelevant) nor numbers: reviewlm cannot tell which are relevant") from None
    if values.min() < 0 or values.max() <= 0:
        raise UsageError(f"the reranker's numeric classes {labels} must be grades of at least 0, one above 0")
    return values / values.max()


class Reranker(ClassifyScorer):
    """Per candidate: the classifier's expected gain for (need, product title)."""

    def __init__(self, ref: str, use_gpu: bool, queries: list[str], micro_batch: int | None = None):
        super().__init__("reranker", ref, use_gpu, micro_batch=micro_batch)
        self.gains, self.queries = class_gains(self.labels), queries

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        needs = [self.queries[i] for i in batch["query_index"].to_pylist()]
        with torch.inference_mode():
            probs = self.probabilities(needs, batch["title"].to_pylist())
        return batch.append_column("rerank_score", pa.array(probs @ self.gains, pa.float64()))
