"""Resume by finished rows: every write task records what it wrote, once it has written it.

A write task of `RoutedParquetSink` writes its files, then a marker `_ledger/<tag>.json` that
names them, the rows in them (as ranges of a key) and its counts. A resumed run removes every
file no marker names (a task killed between its files and its marker), skips the rows the
markers name, and adds their counts to its own: the output ends with every row once, as an
uninterrupted run's. DataTrove's per-task completion markers, at the grain of a write task.

Ray Data's own `checkpoint_config` was not used: it drops finished rows as they are read
(before `dedup`'s group-by, which must see every row), takes one id column, and needs a
shared file system for local paths.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from reviewlm.io.storage import LEDGER, filesystem

PIECES = "_pieces"  # under the ledger: the rows each read task of a filter run yielded


@dataclass(frozen=True)
class Keys:
    """The columns that name a row for good: an integer `index`, within a `group` when given
    (a file's record number within its `source`; a prompt's number across all prompts), and
    the `end` of its span of numbers (default: index + 1; a JSON Lines record, numbered by its
    byte offset, spans its line's bytes), so that the rows of a run of records make one range."""

    index: str
    group: str | None = None
    end: str | None = None

    def of(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Each row's group ("" without a group column) and index."""
        groups = table[self.group].to_numpy(zero_copy_only=False) if self.group else np.full(table.num_rows, "")
        return groups, table[self.index].to_numpy(zero_copy_only=False).astype(np.int64)

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.group, self.index, self.end) if c]

    def ranges(self, table: pa.Table) -> dict[str, list[list[int]]]:
        """The spans of `table`'s rows as sorted, merged [start, end) ranges per group."""
        groups, index = self.of(table)
        end = table[self.end].to_numpy(zero_copy_only=False).astype(np.int64) if self.end else index + 1
        return {str(g): _merged(np.stack([index[groups == g], end[groups == g]], axis=1)).tolist()
                for g in np.unique(groups)}


RECORDS = Keys("_row", "source", "_end")  # a review: its record number and span in its source file


@dataclass
class Done:
    """What the markers of earlier runs record: the rows to skip and the counts to add."""

    ranges: dict[str, np.ndarray] = field(default_factory=dict)  # group -> (n, 2) merged [start, end)
    rows: Counter = field(default_factory=Counter)  # per route
    counted: dict[str, Counter] = field(default_factory=dict)  # per count column, per value
    summed: Counter = field(default_factory=Counter)  # the write's `sums`
    files: set[str] = field(default_factory=set)  # route/name, relative to the output
    tasks: int = 0

    @property
    def total(self) -> int:
        """How many keys the ranges hold (rows, for keys without an `end`)."""
        return int(sum(r[:, 1].sum() - r[:, 0].sum() for r in self.ranges.values()))

    @property
    def written(self) -> int:
        """How many rows the markers record, over every route."""
        return sum(self.rows.values())

    def covers(self, record: dict) -> bool:
        """Whether every row a read task recorded (`record_piece`) is written: the markers' ranges
        hold as many record numbers of its span as its rows cover."""
        (low, high), ranges = record["rows"], self.ranges.get(record["source"], np.zeros((0, 2), np.int64))
        return int(np.clip(np.minimum(ranges[:, 1], high) - np.maximum(ranges[:, 0], low), 0, None).sum()) \
            == record.get("extent", -1)  # -1: a record of an older version, read again

    def pending(self, batch: pa.Table, keys: Keys) -> pa.Table:
        """The rows of `batch` no earlier run wrote."""
        if not self.ranges or batch.num_rows == 0:
            return batch
        groups, index = keys.of(batch)
        done = np.zeros(batch.num_rows, dtype=bool)
        for g in np.unique(groups):
            ranges = self.ranges.get(str(g))
            if ranges is None:
                continue
            mine = groups == g
            at = np.searchsorted(ranges[:, 0], index[mine], side="right") - 1
            done[mine] = (at >= 0) & (index[mine] < ranges[np.maximum(at, 0), 1])
        return batch.filter(pa.array(~done)) if done.any() else batch


def write_record(folder_uri: str, name: str, payload: dict) -> None:
    """Write `<folder>/<name>.json` whole or not at all."""
    fs, path = filesystem(folder_uri)
    data = json.dumps(payload).encode()
    fs.makedirs(path, exist_ok=True)
    if "file" in fs.protocol:  # write aside, then rename: a reader never sees half of it
        fs.pipe(f"{path}/.{name}.json", data)
        fs.mv(f"{path}/.{name}.json", f"{path}/{name}.json")
    else:  # an object store's PUT is atomic
        fs.pipe(f"{path}/{name}.json", data)


def read_record(folder_uri: str, name: str) -> dict | None:
    fs, path = filesystem(folder_uri)
    return json.loads(fs.cat(f"{path}/{name}.json")) if fs.exists(f"{path}/{name}.json") else None


def write_marker(ledger_uri: str, tag: str, files: list[str], ranges: dict, rows: dict, counted: dict,
                 summed: dict) -> None:
    """Record a write task's files (relative to the output), rows, counts and sums."""
    write_record(ledger_uri, tag, {"files": files, "keys": ranges, "rows": rows,
                                   "counted": {c: dict(n) for c, n in counted.items()}, "summed": dict(summed)})


def markers(ledger_uri: str, prefix: str = "", batch: int = 64):
    """The records of the markers under `ledger_uri` whose tags start with `prefix`, read
    `batch` at a time (concurrently on an object store), so that no more are held at once."""
    fs, path = filesystem(ledger_uri)
    names = sorted(m for m in fs.glob(f"{path.rstrip('/')}/{prefix}*.json")
                   if not posixpath.basename(m).startswith("."))
    for start in range(0, len(names), batch):
        for data in fs.cat(names[start:start + batch], on_error="omit").values():
            try:
                yield json.loads(data)
            except ValueError:  # cannot happen with atomic writes; if it does, the task runs again
                continue


def recover(base_uri: str, routes: list[str], unit: str = "") -> Done:
    """Read the markers under `base_uri` (of one `unit`: its files are named `part-<unit>-…`),
    and remove the route files none of them names."""
    fs, base = filesystem(base_uri)
    base = base.rstrip("/")
    done, spans = Done(), {}
    for record in markers(f"{base_uri.rstrip('/')}/{ledger_path(unit)}"):
        done.tasks += 1
        done.files.update(record["files"])
        done.rows.update(record["rows"])
        for column, values in record["counted"].items():
            done.counted.setdefault(column, Counter()).update(values)
        done.summed.update(record.get("summed", {}))
        for group, ranges in record["keys"].items():
            spans.setdefault(group, []).extend(ranges)
    done.ranges = {g: _merged(np.array(r, dtype=np.int64).reshape(-1, 2)) for g, r in spans.items()}
    stray = [f for route in routes for f in fs.glob(f"{base}/{route}/part-{unit}-*" if unit else f"{base}/{route}/*")
             if f[len(base) + 1:] not in done.files]
    if stray:
        fs.rm(stray)
    return done


def record_piece(folder_uri: str, piece, extent: int, low: int | None, high: int | None) -> None:
    """Record that a read task yielded rows of `piece` in the span [low, high) whose own spans
    add up to `extent` record numbers. Nothing when one is numbered before the piece's first
    record (a stream that could not be decoded is quarantined just before it): those could
    belong to another piece."""
    if low is not None and low < piece.row:
        return
    span = [piece.row, piece.row] if low is None else [low, high]
    write_record(folder_uri, _piece_tag(piece), {"source": piece.file.uri, "rows": span, "extent": extent})


def unread(pieces: list, done: Done, folder_uri: str) -> list:
    """The pieces an interrupted run did not read and write whole (one at least: a job reads
    something). Only for jobs whose rows go from read to write without a pass over all rows."""
    fs, path = filesystem(folder_uri)
    finished = {posixpath.basename(m)[:-5] for m in fs.glob(f"{path}/*.json")
                if not posixpath.basename(m).startswith(".") and done.covers(json.loads(fs.cat(m)))}
    return [p for p in pieces if _piece_tag(p) not in finished] or pieces[-1:]


def _piece_tag(piece) -> str:
    return hashlib.blake2b(piece.key.encode(), digest_size=10).hexdigest()


def ledger_path(unit: str = "") -> str:
    """Where a unit's markers go, relative to the output's run folder."""
    return f"{LEDGER}/{unit}" if unit else LEDGER


def _merged(ranges: np.ndarray) -> np.ndarray:
    """Overlapping or touching [start, end) ranges merged, sorted by start."""
    if not len(ranges):
        return ranges
    ranges = ranges[np.argsort(ranges[:, 0], kind="stable")]
    reach = np.maximum.accumulate(ranges[:, 1])
    first = np.flatnonzero(np.r_[True, ranges[1:, 0] > reach[:-1]])
    return np.stack([ranges[first, 0], np.maximum.reduceat(ranges[:, 1], first)], axis=1)


def skip_done(ds, done: Done, keys: Keys, **resources):
    """`ds` without the rows an interrupted run wrote (the same `ds` on a fresh run)."""
    if not done.ranges:
        return ds
    return ds.map_batches(done.pending, fn_kwargs={"keys": keys}, batch_format="pyarrow", batch_size=None,
                          **resources)
