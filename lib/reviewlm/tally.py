"""Counts and sums over a dataset without a shuffle: each task adds up what it sees of its
block, and the driver adds up the tasks' partial sums as they arrive (one small record per
block, never the rows)."""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable

import pyarrow as pa
import ray

PART = pa.schema([("_partial", pa.binary())])


def tally(ds: ray.data.Dataset, count: Callable[..., dict], kwargs: dict | None = None, **map_args) -> Counter:
    """The sum over every block of `ds` of `count(block, **kwargs)`: a mapping of numbers
    (counts or sums)."""
    parts = ds.map_batches(_partial, fn_kwargs={"count": count, "kwargs": kwargs or {}}, batch_format="pyarrow",
                           batch_size=None, **map_args)
    total: Counter = Counter()
    for block in parts.iter_batches(batch_format="pyarrow", batch_size=None):
        for blob in block["_partial"].to_pylist():
            total.update(pickle.loads(blob))
    return total


def _partial(block: pa.Table, count: Callable[..., dict], kwargs: dict) -> pa.Table:
    return pa.table([[pickle.dumps(dict(count(block, **kwargs)))]], schema=PART)
