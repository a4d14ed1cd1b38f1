"""Filters and their algebra.

A filter has a `name`, computes its score columns for an Arrow batch and returns a boolean
keep-mask. Filters combine with `&`, `|` and `~` (or `all:`/`any:`/`not:` in a recipe).
Filters never do I/O: the filter stage owns routing, counting and writing.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


class Expr:
    """A boolean expression over filters."""

    name: str

    def __and__(self, other: "Expr") -> "All":
        return All([self, other])

    def __or__(self, other: "Expr") -> "Any":
        return Any([self, other])

    def __invert__(self) -> "Not":
        return Not(self)

    def leaves(self) -> list["Filter"]:
        raise NotImplementedError

    def evaluate(self, batch: pa.Table) -> tuple[np.ndarray, dict[str, pa.Array]]:
        """Keep-mask over `batch` and the score columns computed for it."""
        raise NotImplementedError

    def conjuncts(self) -> list["Expr"]:
        """The funnel steps: the members of a top-level `all`, else the expression itself."""
        return [self]


class Filter(Expr):
    """One named predicate. Subclasses set `name` and `score_fields` and implement `apply`."""

    name = "filter"
    score_fields: list[pa.Field] = []

    def apply(self, batch: pa.Table) -> tuple[np.ndarray, dict[str, pa.Array]]:
        """Decide for every row of `batch`; return (keep-mask, score columns)."""
        raise NotImplementedError

    def prepare(self, ds, inputs, pieces: int):
        """The dataset this filter decides on: a filter that needs a pass over all rows first
        (such as dedup) adds its columns here, once per name in a recipe. `inputs` are the job's
        `Inputs`: their URIs' order (then the record number) says which of two rows came first;
        the read cuts them into `pieces` (--split-mb), which a filter that regroups rows keeps
        as its number of blocks."""
        return ds

    def leaves(self) -> list["Filter"]:
        return [self]

    def evaluate(self, batch):
        keep, scores = self.apply(batch)
        return np.asarray(keep, dtype=bool), scores

    def __repr__(self):
        return self.name


class _Node(Expr):
    def __init__(self, children: list[Expr], name: str | None = None):
        self.children = children
        self._name = name

    def leaves(self):
        return [leaf for child in self.children for leaf in child.leaves()]

    def _scores(self, batch):
        masks, scores = [], {}
        for child in self.children:
            keep, s = child.evaluate(batch)
            masks.append(keep)
            scores.update(s)
        return masks, scores


class All(_Node):
    """True where every child is true."""

    def __and__(self, other):
        return All(self.children + [other]) if self._name is None else All([self, other])

    @property
    def name(self):
        return self._name or "all(" + ",".join(c.name for c in self.children) + ")"

    def conjuncts(self):
        return self.children if self._name is None else [self]

    def evaluate(self, batch):
        masks, scores = self._scores(batch)
        return np.logical_and.reduce(masks), scores


class Any(_Node):
    """True where at least one child is true."""

    @property
    def name(self):
        return self._name or "any(" + ",".join(c.name for c in self.children) + ")"

    def evaluate(self, batch):
        masks, scores = self._scores(batch)
        return np.logical_or.reduce(masks), scores


class Not(_Node):
    """True where the child is false."""

    def __init__(self, child: Expr, name: str | None = None):
        super().__init__([child], name)

    @property
    def name(self):
        return self._name or f"not({self.children[0].name})"

    def evaluate(self, batch):
        keep, scores = self.children[0].evaluate(batch)
        return ~keep, scores


def scatter(values: pa.Array, positions: np.ndarray, n: int) -> pa.Array:
    """A length-`n` column holding `values` at `positions` and nulls elsewhere."""
    index = np.full(n, -1, dtype=np.int64)
    index[positions] = np.arange(len(positions))
    return values.take(pa.array(index, mask=index < 0))
