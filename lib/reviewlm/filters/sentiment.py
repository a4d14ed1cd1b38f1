"""VADER sentiment from nltk, with the lexicon shipped by the vaderSentiment package."""

import functools

import numpy as np
import pyarrow as pa

from reviewlm.filters.base import Filter

VADER_FIELDS = ("compound", "pos", "neu", "neg")


@functools.cache
def analyzer():
    """The VADER analyzer, built once per process: nltk's scores, offline (see `vader`)."""
    from reviewlm.filters import vader

    return vader.load()


def vader_scores(texts: list) -> dict[str, np.ndarray]:
    """VADER compound/pos/neu/neg per text (NaN for null text)."""
    sia = analyzer()
    out = {k: np.full(len(texts), np.nan) for k in VADER_FIELDS}
    for i, text in enumerate(texts):
        if text is not None:
            scores = sia.polarity_scores(text)
            for k in VADER_FIELDS:
                out[k][i] = scores[k]
    return out


class Sentiment(Filter):
    """Keep rows with `min_compound <= VADER compound <= max_compound`."""

    score_fields = [pa.field(f"vader_{k}", pa.float64()) for k in VADER_FIELDS]

    def __init__(self, min_compound: float | None = 0.05, max_compound: float | None = None,
                 name: str = "sentiment"):
        self.min_compound, self.max_compound, self.name = min_compound, max_compound, name

    def apply(self, batch):
        scores = vader_scores(batch["text"].to_pylist())
        compound = scores["compound"]
        keep = ~np.isnan(compound)
        if self.min_compound is not None:
            keep &= compound >= self.min_compound
        if self.max_compound is not None:
            keep &= compound <= self.max_compound
        return keep, {f"vader_{k}": pa.array(v, from_pandas=True) for k, v in scores.items()}
