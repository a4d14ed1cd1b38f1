"""The quarantine every job writes: the rows it cannot use, each with its reason, and how many
of each kind there were, from one pass that also counts what the job needs of the usable rows."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import ray

from reviewlm.errors import UsageError
from reviewlm.io.layout import QUARANTINE_SCHEMA
from reviewlm.io.records import PYTHON_LITERAL
from reviewlm.io.sink import RoutedParquetSink

QUARANTINE_WARN = 0.1  # a larger share of quarantined rows gets a warning line with a hint
KIND, ROUTE = "_error_kind", "_route"


def error_kind(error: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A quarantine error with its numbers as N ("invalid UTF-8 at byte N"): rows are counted
    per kind, so that the counts stay few whatever the data."""
    return pc.replace_substring_regex(error, pattern=r"([\s(])\d+", replacement=r"\1N")


@dataclass(frozen=True)
class Quarantined:
    """What a quarantine pass saw: rows read, rows quarantined per kind of error, for each
    column it was asked to count the usable rows per value, and the sums it was asked for."""

    read: int
    kinds: dict[str, int] = field(default_factory=dict)
    counted: dict[str, dict] = field(default_factory=dict)
    summed: dict[str, float] = field(default_factory=dict)

    @property
    def quarantined(self) -> int:
        return sum(self.kinds.values())

    @property
    def usable(self) -> int:
        return self.read - self.quarantined

    def commonest(self) -> tuple[str, int]:
        return max(self.kinds.items(), key=lambda kv: (kv[1], kv[0]))

    def check(self, what: str, warn_above: float = QUARANTINE_WARN) -> list[str]:
        """No success on nothing: a UsageError when every row of `what` was quarantined (or
        there were none), a warning line (returned too) when more than `warn_above` of them
        were; both name the commonest error and its likely fix."""
        if not self.read:
            raise UsageError(f"{what} has no rows")
        if not self.quarantined or self.quarantined <= warn_above * self.read:
            return []
        error, n = self.commonest()
        why = f'{n:,} with "{error}": {quarantine_hint(error)}'
        if not self.usable:
            raise UsageError(f"nothing in {what} could be read: all {self.read:,} rows quarantined, {why}")
        warning = f"{self.quarantined:,} of {self.read:,} rows quarantined, {why}"
        print(f"reviewlm: warning: {warning}", file=sys.stderr)
        return [warning]

    def to_json(self) -> dict:
        return {"read": self.read, "kinds": self.kinds, "counted": self.counted, "summed": self.summed}

    @classmethod
    def from_json(cls, data: dict) -> Quarantined:
        return cls(data["read"], data["kinds"], data["counted"], data["summed"])


def quarantine_hint(error: str) -> str:
    """What most likely made rows with this quarantine error unreadable, and the flag that fixes it."""
    if error.startswith("invalid") and " at byte " in error or "in the file" in error:
        return "the input is in another encoding: pass --encoding (cp1252, latin-1, utf-16…)"
    if error.startswith("expected ") and " fields" in error:
        return "the fields are separated by another character: pass --delimiter (';', '|', '\\t')"
    if error.startswith(("invalid JSON", "line is a JSON", "element is a JSON")):
        return "the input is in another format: pass --format (jsonl, json, csv, tsv, parquet)"
    if error.startswith("file has no column"):
        return "its header was not read as written: check --encoding, --delimiter and the column flags"
    if error == PYTHON_LITERAL:
        return "convert the file to JSON Lines first (docs/filter.md: real dumps as they are published)"
    return "see quarantine/ for the raw records and their errors"


def write_quarantine(rows: ray.data.Dataset, uri: str, counts: tuple[str, ...] = (),
                     sums: tuple[str, ...] = (), **write_args) -> Quarantined:
    """One pass over `rows`, in the quarantine layout (id, source, row, raw, error: null for a
    usable row) with the `counts` and `sums` columns: the rows with an error go to
    `uri/quarantine/`, and each write task counts what it saw (rows, errors per kind, the
    usable rows per value of each `counts` column, nulls left out; the sum of each `sums`
    column). The driver adds up those counts: no shuffle."""
    sink = RoutedParquetSink(uri, {"quarantine": QUARANTINE_SCHEMA}, route_column=ROUTE,
                             count_columns=(KIND, ROUTE, *counts), sums=partial(column_sums, columns=sums))
    rows.map_batches(_routed, fn_kwargs={"columns": counts + sums}, batch_format="pyarrow",
                     batch_size=None).write_datasink(sink, **write_args)
    counted = sink.result["counted"]
    return Quarantined(read=sum(counted[ROUTE].values()), kinds=dict(counted[KIND]),
                       counted={c: dict(counted[c]) for c in counts}, summed=dict(sink.result["summed"]))


def column_sums(block: pa.Table, columns: tuple[str, ...]) -> dict[str, int]:
    """The sum of each of `columns` (whole numbers) over a block."""
    return {c: pc.sum(block[c]).as_py() or 0 for c in columns}


def _routed(batch: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    error = batch["error"]
    return (batch.select([*QUARANTINE_SCHEMA.names, *columns]).append_column(KIND, error_kind(error))
            .append_column(ROUTE, pc.if_else(pc.is_valid(error), "quarantine", "usable")))
