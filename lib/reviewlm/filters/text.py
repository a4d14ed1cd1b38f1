"""Filters on the text itself: present, and of a sensible length."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reviewlm.filters.base import Filter


def word_counts(text: pa.ChunkedArray) -> pa.Array:
    """Whitespace-separated words per row (null for null text)."""
    return pc.list_value_length(pc.utf8_split_whitespace(text))


class NonNull(Filter):
    """Keep rows whose text is present and not blank."""

    name = "non_null"

    def apply(self, batch):
        text = batch["text"]
        keep = pc.and_kleene(pc.is_valid(text), pc.not_equal(pc.utf8_trim_whitespace(text), ""))
        return pc.fill_null(keep, False).to_numpy(zero_copy_only=False), {}


class Length(Filter):
    """Keep rows with `min_words <= words <= max_words` (either bound optional)."""

    name = "length"
    score_fields = [pa.field("n_words", pa.int64())]

    def __init__(self, min_words: int | None = None, max_words: int | None = None, name: str = "length"):
        if min_words is None and max_words is None:
            raise ValueError("length needs min_words or max_words")
        self.min_words, self.max_words, self.name = min_words, max_words, name

    def apply(self, batch):
        n = pc.cast(word_counts(batch["text"]), pa.int64())
        counts = n.to_numpy(zero_copy_only=False)
        counts = np.where(pc.is_valid(n).to_numpy(zero_copy_only=False), counts, -1)
        keep = counts >= (self.min_words or 0)
        if self.max_words is not None:
            keep &= counts <= self.max_words
        return keep, {"n_words": pa.array(n)}
