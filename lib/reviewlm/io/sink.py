"""A Ray Data sink that splits every block by a route column into Parquet sub-directories."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.datasource import Datasink
from ray.data.datasource.datasink import WriteResult

from reviewlm.io.ledger import Done, Keys, ledger_path, markers, write_marker
from reviewlm.io.storage import arrow_filesystem, filesystem
from reviewlm.progress import count


class RoutedParquetSink(Datasink):
    """Writes the rows of each route to `<base>/<route>/part-<prefix><task>.parquet` in one pass.

    File names depend only on `prefix` and the task index, so Ray's retry of a killed task
    replaces what the killed attempt left; writes that share `base_uri` need distinct prefixes.

    `routes` maps a route name to the columns written for it (in that order; missing
    columns are written as nulls of the given type). Each write task returns the rows it
    wrote per route, for each of `count_columns` the counts of its non-null values, and the
    sum over its blocks of `sums(block)` (a mapping of whole numbers: counts, or exact sums,
    reviewlm.tally.exact_sum).
    Each block's rows (of route `tally_route` only, when given) are added to `tally`
    (reviewlm.progress) as it is written.

    With `keys`, a resumable write (reviewlm.io.ledger): each task, once its files are
    written, records them with the keys of their rows and its counts, and returns nothing
    (Ray hands the driver every task's return at once, at the end: the counts of thousands of
    tasks); the result folds this write's records a few at a time, and adds the counts of what
    earlier runs recorded (`done`). Writes of several `unit`s into one output keep their own
    ledgers; their prefixes start with `<unit>-`.
    """

    def __init__(self, base_uri: str, routes: dict[str, pa.Schema], route_column: str = "_route",
                 count_columns: tuple[str, ...] = (), sums=None, prefix: str = "",
                 tally=None, tally_route: str | None = None, keys: Keys | None = None, done: Done | None = None,
                 unit: str = ""):
        self.base_uri, self.routes, self.prefix = base_uri.rstrip("/"), routes, prefix
        self.tally, self.tally_route = tally, tally_route
        self.route_column, self.count_columns, self.sums = route_column, count_columns, sums
        self.keys, self.done, self.unit = keys, done or Done(), unit
        self.on_write_complete(WriteResult(0, 0, []))  # what earlier runs wrote, should no task write now

    def write(self, blocks, ctx) -> dict:
        fs, base = filesystem(self.base_uri)
        afs = arrow_filesystem(fs)
        writers: dict[str, pq.ParquetWriter] = {}
        rows: Counter = Counter()
        counted = {c: Counter() for c in self.count_columns}
        summed: Counter = Counter()
        tag = f"{self.prefix}{ctx.task_idx:05d}"
        written = []  # the key columns of the rows written, for the ledger
        try:
            for block in blocks:
                if block.num_rows == 0:  # e.g. from an empty input file: no columns to route on
                    continue
                for c in self.count_columns:
                    counted[c].update(value_counts(block[c]))
                if self.sums is not None:
                    summed.update(self.sums(block))
                for route, schema in self.routes.items():
                    part = block.filter(pc.equal(block[self.route_column], route))
                    if part.num_rows == 0:
                        continue
                    if route not in writers:
                        fs.makedirs(f"{base}/{route}", exist_ok=True)
                        writers[route] = pq.ParquetWriter(f"{base}/{route}/part-{tag}.parquet",
                                                          schema, filesystem=afs)
                    writers[route].write_table(conform(part, schema))
                    rows[route] += part.num_rows
                    if self.keys is not None:
                        written.append(part.select(self.keys.columns))
                    if route == (self.tally_route or route):
                        count(self.tally, {"rows": part.num_rows})
            for w in writers.values():
                w.close()
            if self.keys is not None and written:
                files = [f"{route}/part-{tag}.parquet" for route in writers]
                write_marker(f"{self.base_uri}/{ledger_path(self.unit)}", tag, files,
                             self.keys.ranges(pa.concat_tables(written)), dict(rows), counted, summed)
        except PermissionError as exc:  # name the place: the storage error alone does not
            raise PermissionError(f"writing {self.base_uri}: {exc}") from None
        finally:
            for w in writers.values():
                w.close()  # a no-op when closed
        return None if self.keys is not None else {"rows": dict(rows), "counted": counted, "summed": dict(summed)}

    def on_write_complete(self, write_result):
        rows: Counter = Counter(self.done.rows)
        counted = {c: Counter(self.done.counted.get(c, {})) for c in self.count_columns}
        summed: Counter = Counter(self.done.summed)
        written = write_result.write_returns if self.keys is None else \
            markers(f"{self.base_uri}/{ledger_path(self.unit)}", self.prefix)
        for r in written:
            rows.update(r["rows"])
            for c in self.count_columns:
                counted[c].update(r["counted"][c])
            summed.update(r["summed"])
        self.result = {"rows": dict(rows), "counted": {c: dict(n) for c, n in counted.items()},
                       "summed": dict(summed)}


def value_counts(values: pa.ChunkedArray | pa.Array) -> dict:
    """How many times each non-null value occurs (vectorized)."""
    if values.null_count == len(values):
        return {}
    counts = pc.value_counts(values.drop_null())
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly the columns of `schema`, cast, nulls for missing ones."""
    cols = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.table(cols, schema=schema)
