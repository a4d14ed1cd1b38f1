"""A Ray Data sink that splits every block by a route column into Parquet sub-directories."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.datasource import Datasink

from reviewlm.io.storage import arrow_filesystem, filesystem


class RoutedParquetSink(Datasink):
    """Writes the rows of each route to `<base>/<route>/part-<prefix><task>.parquet` in one pass.

    File names depend only on `prefix` and the task index, so Ray's retry of a killed task
    replaces what the killed attempt left; writes that share `base_uri` need distinct prefixes.

    `routes` maps a route name to the columns written for it (in that order; missing
    columns are written as nulls of the given type). Each write task returns the rows it
    wrote per route and the counts of the (non-null) values in `count_column`.
    """

    def __init__(self, base_uri: str, routes: dict[str, pa.Schema], route_column: str = "_route",
                 count_column: str | None = None, prefix: str = ""):
        self.base_uri, self.routes, self.prefix = base_uri.rstrip("/"), routes, prefix
        self.route_column, self.count_column = route_column, count_column
        self.result = {"rows": {}, "counted": {}}

    def write(self, blocks, ctx) -> dict:
        fs, base = filesystem(self.base_uri)
        afs = arrow_filesystem(fs)
        writers: dict[str, pq.ParquetWriter] = {}
        rows: Counter = Counter()
        counted: Counter = Counter()
        tag = f"{self.prefix}{ctx.task_idx:05d}"
        try:
            for block in blocks:
                if block.num_rows == 0:  # e.g. from an empty input file: no columns to route on
                    continue
                if self.count_column:
                    counted.update(v for v in block[self.count_column].to_pylist() if v is not None)
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
            for w in writers.values():
                w.close()
        except PermissionError as exc:  # name the place: the storage error alone does not
            raise PermissionError(f"writing {self.base_uri}: {exc}") from None
        finally:
            for w in writers.values():
                w.close()  # a no-op when closed
        return {"rows": dict(rows), "counted": dict(counted)}

    def on_write_complete(self, write_result):
        rows: Counter = Counter()
        counted: Counter = Counter()
        for r in write_result.write_returns:
            rows.update(r["rows"])
            counted.update(r["counted"])
        self.result = {"rows": dict(rows), "counted": dict(counted)}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly the columns of `schema`, cast, nulls for missing ones."""
    cols = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.table(cols, schema=schema)
