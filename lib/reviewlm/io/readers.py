"""Read any review dump into the canonical review dataset, quarantining what cannot be parsed.

One streaming Ray Data datasource reads CSV, TSV, JSONL, JSON arrays and Parquet (plain or
compressed), a read task per piece (`reviewlm.io.pieces`), each piece's records parsed by its
format's reader (`reviewlm.io.records`) into the canonical layout (`reviewlm.io.layout`).
The inputs are checked here before Ray starts.
"""

from __future__ import annotations

import codecs
import sys
from functools import partial
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from reviewlm.errors import UsageError, storage_error
from reviewlm.io.layout import QUARANTINE, Columns
from reviewlm.io.ledger import record_piece
from reviewlm.io.pieces import SPLIT_BYTES, Piece, plan_pieces
from reviewlm.io.records import (
    Batcher,
    ParseError,
    Utf8Stream,
    ascii_compatible,
    first_columns,
    open_text,
    read_delimited,
    read_json_array,
    read_jsonl,
    read_parquet_file,
)
from reviewlm.io.storage import Inputs, expand_inputs
from reviewlm.progress import count


def read_piece(fs, piece: Piece, columns: Columns, tally=None, record: str | None = None) -> Iterator[pa.Table]:
    """The canonical rows of one piece of a file; its bytes added to `tally` (reviewlm.progress)
    once it is read, and, given a `record` folder, the span of record numbers its rows cover
    (reviewlm.io.ledger)."""
    extent, low, high = 0, None, None
    for table in _piece_rows(fs, piece, columns):
        if record is not None and table.num_rows:
            first, last = pc.min(table["_row"]).as_py(), pc.max(table["_end"]).as_py()
            low, high = (first, last) if low is None else (min(low, first), max(high, last))
            extent += pc.sum(pc.subtract(table["_end"], table["_row"])).as_py()
        yield table
    if record is not None:
        record_piece(record, piece, extent, low, high)
    count(tally, {"bytes": piece.size}, once=piece.key)


def _piece_rows(fs, piece: Piece, columns: Columns) -> Iterator[pa.Table]:
    file = piece.file
    batcher = Batcher(file.uri, columns)
    where = (piece.start, piece.end)
    f, encoding = open_text(fs, file)
    try:
        if file.format in ("csv", "tsv"):
            yield from read_delimited(f, batcher, file.separator, *where, piece.row, encoding=encoding)
        elif file.format == "jsonl":
            yield from read_jsonl(f, batcher, *where, encoding=encoding)
        elif file.format == "json":
            utf8 = codecs.lookup(encoding).name == "utf-8"
            yield from read_json_array(Utf8Stream(f, "utf-8-sig" if utf8 else encoding), batcher)
        else:
            yield from read_parquet_file(f, batcher, *where, piece.row)
    except ParseError as exc:  # the stream itself cannot be decoded any further
        batcher.quarantine(piece.row - 1, "", str(exc))
    finally:
        f.close()
    if len(batcher):
        yield batcher.flush()


class ReviewDatasource(Datasource):
    """Streams review files of any supported format into canonical rows: a read task per piece."""

    def __init__(self, inputs: Inputs, pieces: list[Piece], columns: Columns, tally=None, record: str | None = None):
        self._fs, self.pieces, self._columns, self._tally = inputs.filesystem, pieces, columns, tally
        self._record = record  # a folder: each read task records there the rows it yielded

    def estimate_inmemory_data_size(self) -> int:
        return sum(p.size for p in self.pieces)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        return [ReadTask(partial(read_piece, self._fs, p, self._columns, self._tally, self._record),
                         BlockMetadata(num_rows=None, size_bytes=p.size, exec_stats=None, input_files=(p.file.path,)),
                         schema=self._columns.schema, per_task_row_limit=per_task_row_limit)
                for p in self.pieces]


def check_columns(inputs: Inputs, required: list[tuple[str, str]]) -> None:
    """UsageError when the first readable file of a format lacks a required (field, column)."""
    checked = set()
    for f in inputs.files:
        if f.format in checked or f.size == 0 or f.format == "json":
            continue
        names = first_columns(inputs.filesystem, f)
        if names is None:
            continue
        checked.add(f.format)
        missing = [(field, c) for field, c in required if c not in names]
        if missing:
            field, column = missing[0]
            other = [d for d in (";", "\t", "|", ",") if len(names) == 1 and d in names[0]]
            if other:  # one column whose name holds another separator: the delimiter is wrong
                raise UsageError(f"{f.uri} has one column {names[0][:60]!r}: its fields are separated by "
                                 f"{other[0]!r}, not {f.separator!r}: pass {{o}} {other[0]!r}", o="delimiter")
            raise UsageError(f"no {field.replace('_', ' ')} column {column!r} in {f.uri} "
                             f"(columns: {', '.join(names[:12])}): pass {{o}}", o=f"{field}_column")


def check_inputs(uris: list[str], columns: Columns = Columns(), fmt: str | None = None,
                 need_rating: bool = False, *, delimiter: str | None = None, encoding: str = "utf-8",
                 required: list[tuple[str, str]] | None = None) -> Inputs:
    """Expand and check the inputs without Ray (UsageError when they cannot be read or lack a
    column: `required` (flag name, column) pairs, else the text's); say which `.json` files
    are read as JSON Lines."""
    inputs = expand_inputs(uris, fmt, delimiter, encoding)
    sniffed = [f.uri for f in inputs.files if f.sniffed]
    if sniffed:
        more = f" and {len(sniffed) - 1} more" if len(sniffed) > 1 else ""
        print(f"reading {sniffed[0]}{more} as JSON Lines: the first line is a whole JSON object "
              "(--format json reads a file as one array)", file=sys.stderr)
    if not ascii_compatible(encoding) and any(f.format != "parquet" for f in inputs.files):
        print(f"reading each input whole, by one task: {encoding} text is not cut into byte ranges", file=sys.stderr)
    try:
        check_columns(inputs, required or columns.required(need_rating))
    except OSError as exc:
        raise UsageError(f"cannot read {inputs.files[0].uri}: {storage_error(exc)}") from None
    return inputs


def read_reviews(inputs: Inputs, columns: Columns = Columns(), split_bytes: int = SPLIT_BYTES,
                 tally=None) -> ray.data.Dataset:
    """The canonical review dataset: one row per record, quarantined ones included; the bytes
    read are added to `tally` (reviewlm.progress)."""
    return read_source(ReviewDatasource(inputs, plan_pieces(inputs, split_bytes), columns, tally))


FUSE_CPUS = 4  # read tasks fuse with the steps after them unless there are more CPUs than this per piece


def read_source(source: ReviewDatasource, num_cpus: float | None = None) -> ray.data.Dataset:
    """A dataset of `source`'s pieces, read again on every pass (`num_cpus` per read task).

    Each piece of a file (see `split_file`) is one read task. With at least one piece per
    `FUSE_CPUS` CPUs, Ray Data fuses each read with the map steps after it (those without a
    `batch_size`) into one task, with no hand-off through the object store. With fewer,
    larger pieces Ray splits what is read so the steps after it run in parallel: that costs
    more than it gains below `FUSE_CPUS` CPUs per piece (filter, 2 CPUs: one 29 MB file 9 s
    split against 5 s fused; three 29 MB files 17 s against 9 s).
    """
    pieces, cpus = len(source.pieces), int(ray.cluster_resources().get("CPU", 1))
    return ray.data.read_datasource(source, num_cpus=num_cpus,
                                    override_num_blocks=pieces if FUSE_CPUS * pieces >= cpus else None)


def with_reasons(batch: pa.Table) -> pa.Table:
    """A canonical batch in the quarantine layout, each row that `with_text` leaves out with the
    reader's error or what it lacks in `error` (null for the others)."""
    error = batch["_error"]
    for column in ("text", "text_pair"):
        if column in batch.schema.names:
            missing = pc.and_(pc.is_null(error), pc.is_null(batch[column]))
            error = pc.if_else(missing, f"no {column.replace('_', ' ')}", error)
    batch = batch.set_column(batch.schema.get_field_index("_error"), "_error", error)
    return batch.select(list(QUARANTINE)).rename_columns(list(QUARANTINE.values()))


def with_text(batch: pa.Table) -> pa.Table:
    """The rows of a canonical batch that parsed and have a text (and text pair, when read)."""
    usable = pc.and_(pc.is_null(batch["_error"]), pc.is_valid(batch["text"]))
    if "text_pair" in batch.schema.names:
        usable = pc.and_(usable, pc.is_valid(batch["text_pair"]))
    return batch.filter(usable)
