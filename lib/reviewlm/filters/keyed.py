"""Key-partitioned steps that both dedups share: rows cut into parts by a hash of a key, and
the rows to drop brought back to the rows by key range.

A row's key is an int64: the rank of its source among the job's inputs (sorted URIs) in the
high bits, its record number in the low `ROW_BITS` (a JSON Lines record's number is its byte
offset: files up to 1 TiB, and up to 8M input files); key order is the order that says which
of two copies came first. No step gathers every row, pair or drop into one task: a part holds
about `PARTITION_BYTES`, and the number of parts grows with the data.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

KEY = "_key"
PARTITION_BYTES = 64 << 20  # of rows per part
SAMPLES = 64  # keys per block from which the drops' range bounds are picked
ROW_BITS = 40


def row_keys(batch: pa.Table, ranks: dict[str, int]) -> np.ndarray:
    """Each row's int64 key: its source's rank, then its record number."""
    rank = np.array([ranks[s] for s in batch["source"].to_pylist()], dtype=np.int64)
    rows = batch["_row"].to_numpy(zero_copy_only=False).astype(np.int64)
    if len(ranks) >> (63 - ROW_BITS) or (len(rows) and rows.max() >> ROW_BITS):
        raise ValueError(f"a row key holds at most {1 << (63 - ROW_BITS):,} inputs, record numbers under 2**{ROW_BITS}")
    return (rank << ROW_BITS) | rows


def usable(batch: pa.Table) -> np.ndarray:
    """Which rows were parsed and have a text: the rows either dedup compares."""
    return pc.and_(pc.is_null(batch["_error"]), pc.is_valid(batch["text"])).to_numpy(zero_copy_only=False)


def source_rows(keys: np.ndarray, uris: list[str]) -> pa.Array:
    """`source:row` of each key (`uris` in rank order)."""
    rows = pa.array(keys & ((1 << ROW_BITS) - 1)).cast(pa.string())
    return pc.binary_join_element_wise(pa.array(uris, pa.string()).take(pa.array(keys >> ROW_BITS)), rows, ":")


def fmix(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def part_of(values: np.ndarray, parts: int) -> np.ndarray:
    """The part (0..parts-1) of each key or hash."""
    return (fmix(values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) % np.uint64(parts)).astype(np.int64)


def partitions(nbytes: int) -> int:
    """How many parts `nbytes` of rows are cut into: at least two per CPU, at most `PARTITION_BYTES` each."""
    return max(2 * int(ray.cluster_resources().get("CPU", 1)), -(-nbytes // PARTITION_BYTES))


def cut(table: pa.Table, part: np.ndarray, parts: int) -> list[pa.Table]:
    """The rows of `table` in `parts` tables by their `part` index, each in the order it had."""
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(parts + 1))
    return [table.take(pa.array(order[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]


def run_starts(*columns: np.ndarray) -> np.ndarray:
    """A mask of where each run of equal rows (across `columns`, sorted) starts."""
    starts = np.ones(len(columns[0]), bool)
    starts[1:] = np.logical_or.reduce([c[1:] != c[:-1] for c in columns])
    return starts


def run_firsts(keys: np.ndarray, *columns: np.ndarray) -> np.ndarray:
    """For rows sorted by `columns`, then `keys`: each row's run's first key."""
    starts = np.flatnonzero(run_starts(*columns))
    return np.repeat(keys[starts], np.diff(np.r_[starts, len(keys)]))


def concat(tables: tuple[pa.Table, ...] | list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables).combine_chunks() if tables else schema.empty_table()


@ray.remote
def split(table: pa.Table, column: str, parts: int) -> list[pa.Table]:
    """`table` cut into `parts` by the hash of `column` (call with `num_returns=parts`)."""
    return cut(table, part_of(table[column].to_numpy(), parts), parts)


def by_key(table: pa.Table, column: str = KEY) -> pa.Table:
    return table.take(pa.array(np.argsort(table[column].to_numpy(), kind="stable")))


@ray.remote
def gather(schema: pa.Schema, *tables: pa.Table) -> pa.Table:
    """The rows of one part from every block, in key order."""
    return by_key(concat(tables, schema))


@ray.remote
def _sample(table: pa.Table) -> np.ndarray:
    keys = np.sort(table[KEY].to_numpy())
    return keys[np.linspace(0, len(keys) - 1, min(len(keys), SAMPLES)).astype(np.int64)] if len(keys) else keys


@ray.remote
def _split_ranges(table: pa.Table, bounds: np.ndarray) -> list[pa.Table]:
    return cut(table, np.searchsorted(bounds, table[KEY].to_numpy(), side="right"), len(bounds) + 1)


class Drops:
    """The rows to drop and their columns, in parts by key range, so that a block of rows
    (a piece of one file: a narrow key range) fetches the one or two parts it needs."""

    def __init__(self, schema: pa.Schema, bounds: np.ndarray, refs: list[ray.ObjectRef]):
        self.schema, self.bounds, self.refs = schema, bounds, refs

    @classmethod
    def build(cls, blocks: list[ray.ObjectRef], rows: int, schema: pa.Schema) -> "Drops":
        """From `blocks` of drops (KEY and the columns of `schema`) holding `rows` rows in all."""
        ranges = max(1, -(-rows * sum(f.type.byte_width if pa.types.is_primitive(f.type) else 32 for f in schema)
                          // PARTITION_BYTES))
        if rows == 0:
            return cls(schema, np.empty(0, np.int64), [])
        bounds = np.empty(0, np.int64)
        if ranges > 1:
            samples = np.sort(np.concatenate(ray.get([_sample.remote(b) for b in blocks])))
            bounds = np.unique(samples[np.linspace(0, len(samples) - 1, ranges + 1).astype(np.int64)[1:-1]])
        if len(bounds) == 0:
            return cls(schema, bounds, [gather.remote(schema, *blocks)])
        splits = [_split_ranges.options(num_returns=len(bounds) + 1).remote(b, bounds) for b in blocks]
        return cls(schema, bounds, [gather.remote(schema, *[s[r] for s in splits]) for r in range(len(bounds) + 1)])

    def attach(self, batch: pa.Table, *, ranks: dict[str, int], names: dict[str, str]) -> pa.Table:
        """`batch` with each drop column (renamed by `names`), null for the rows not dropped."""
        mine = row_keys(batch, ranks)
        at = np.full(len(mine), -1, np.int64)
        columns = {c: [] for c in names}
        part = np.searchsorted(self.bounds, mine, side="right")
        offset = 0
        for r in np.unique(part) if self.refs else []:
            table = _fetch(self.refs[r])
            keys = table[KEY].to_numpy()
            rows = np.flatnonzero(part == r)
            pos = np.minimum(np.searchsorted(keys, mine[rows]), max(len(keys) - 1, 0))
            hit = keys[pos] == mine[rows] if len(keys) else np.zeros(len(rows), bool)
            at[rows[hit]] = offset + pos[hit]
            for c in names:
                columns[c].append(table[c])
            offset += len(keys)
        for c, name in names.items():
            values = pa.chunked_array(columns[c], self.schema.field(c).type).combine_chunks()
            batch = batch.append_column(name, values.take(pa.array(np.maximum(at, 0), mask=at < 0)) if len(values)
                                        else pa.nulls(batch.num_rows, self.schema.field(c).type))
        return batch


@lru_cache(maxsize=4)
def _fetch(ref: ray.ObjectRef) -> pa.Table:
    """A part of the drops, fetched once per worker process."""
    return ray.get(ref)
