"""Counts and sums over a dataset without a shuffle: each task adds up what it sees of its
block, and the driver adds up the tasks' partial sums as they arrive (one small record per
block, never the rows). Sums of floats are kept exact (`exact_sum`), so that no figure
depends on the order the tasks finished in."""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable
from fractions import Fraction

import numpy as np
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


SCALE = 1126  # every finite double is m x 2**e with |m| < 2**53 and e >= -1126


def exact_sum(values) -> int:
    """The exact sum of the finite numbers among `values`, as a whole number of 2**-1126: sums of
    such sums are exact too, so a mean from per-task partial sums has the same bits in any order
    of the tasks (as `math.fsum` of all the values would give it)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    mantissa, exponent = np.frexp(v)  # v = mantissa x 2**exponent, 0.5 <= |mantissa| < 1
    whole = (mantissa * 2.0**53).astype(np.int64)
    shift = exponent.astype(np.int64) - 53 + SCALE
    total = 0
    for s in np.unique(shift):
        part = whole[shift == s]  # an int64 holds a sum of 512 values below 2**53
        total += sum(int(part[i:i + 512].sum()) for i in range(0, len(part), 512)) << int(s)
    return total


def as_float(total: int) -> float:
    """An `exact_sum`, correctly rounded to the nearest float."""
    return float(Fraction(total, 1 << SCALE))
