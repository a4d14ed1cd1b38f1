"""Read any review dump into the canonical review dataset, quarantining what cannot be parsed.

One streaming Ray Data datasource reads CSV, TSV, JSONL, JSON arrays and Parquet (plain or
compressed), a read task per piece: a big plain file is cut into byte ranges at record
boundaries (Parquet: runs of row groups), read in parallel (`split_file`). Every record
becomes one row of the same schema: the canonical columns, plus `_row` (record number in
its file) and `_raw`/`_error`, set only for quarantined records. Nothing is dropped here.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import sys
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import ijson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from reviewlm.errors import UsageError, storage_error
from reviewlm.io.storage import InputFile, Inputs, compressed, expand_inputs
from reviewlm.options import SPLIT_MB, option

CANONICAL = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("rating", pa.int64()), ("title", pa.string()),
    ("brand", pa.string()), ("product", pa.string()), ("source", pa.string()),
    ("_row", pa.int64()), ("_raw", pa.string()), ("_error", pa.string()),
])
OPTIONAL = ("rating", "title", "brand", "product")
BATCH_ROWS = 4096
MAX_RECORD_LINES = 10_000
MAX_RECORD_BYTES = 64 << 20
MAX_TEXT_CHARS = 1_000_000  # a longer "review" is a broken export, not a review: quarantined
RAW_LIMIT = 10_000  # characters of a broken record kept in quarantine
SPLIT_BYTES = SPLIT_MB << 20
SCAN_CHUNK = 8 << 20
csv.field_size_limit(MAX_RECORD_BYTES)  # the default (131,072) would refuse long quoted reviews


@dataclass(frozen=True)
class Columns:
    """Which input columns hold the canonical fields (`--text-column` and friends)."""

    text: str = option("text", help="input column holding the text")
    id: str = option("id", help="input column holding a row's id (without one: its file and record number)")
    rating: str = option("rating", help="input column holding the 1-5 star rating")
    title: str = option("title", help="input column holding the review title")
    brand: str = option("brand", help="input column holding the brand")
    product: str = option("product", help="input column holding the product")
    text_pair: str | None = option(None, help="classify: the second text of a pair (a product description)")
    label: str | None = option(None, help="classify: the class of each row, a string or an integer")

    @property
    def schema(self) -> pa.Schema:
        """The canonical schema, with `text_pair` and `label` (strings) when those columns are read."""
        schema = CANONICAL
        for name in ("label", "text_pair"):
            if getattr(self, name):
                schema = schema.insert(schema.get_field_index("_row"), pa.field(name, pa.string()))
        return schema

    def required(self, need_rating: bool = False) -> list[tuple[str, str]]:
        """(flag name, input column) pairs every input file must have."""
        need = [("text", self.text)] + [(n, getattr(self, n)) for n in ("text_pair", "label") if getattr(self, n)]
        return need + ([("rating", self.rating)] if need_rating else [])


class ParseError(ValueError):
    """A record that cannot become a canonical row."""


def parse_label(value) -> str | None:
    """A class label as a string ("3" for 3 or 3.0); None when empty (training quarantines it)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (dict, list)):
        raise ParseError(f"label must be a string or a number, not {type(value).__name__}")
    return None if value is None or not str(value).strip() else str(value).strip()


def parse_rating(value) -> int | None:
    """An int 1..5 from 4, "4", 4.0 or "4.0"; None for empty; ParseError otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParseError(f"rating {value!r} is not a number") from None
    if number != int(number) or not 1 <= number <= 5:
        raise ParseError(f"rating {value!r} is not an integer from 1 to 5")
    return int(number)


class _Batcher:
    """Collects canonical rows column-wise and hands out Arrow tables."""

    def __init__(self, source: str, columns: Columns):
        self.source, self.columns = source, columns
        self.schema = columns.schema
        self.cols = {name: [] for name in self.schema.names}

    def __len__(self):
        return len(self.cols["id"])

    def add(self, row_number: int, record: dict, raw: str | None = None) -> None:
        """Add one parsed record (input column name -> value), or quarantine it with `raw`."""
        c = self.columns
        try:
            text = record.get(c.text)
            if text is not None and not isinstance(text, str):
                raise ParseError(f"text must be a string, not {type(text).__name__}")
            if text is not None and len(text) > MAX_TEXT_CHARS:
                raise ParseError(f"text has {len(text):,} characters, more than {MAX_TEXT_CHARS:,}")
            values = {"text": text, "rating": parse_rating(record.get(c.rating))}
            for name in ("title", "brand", "product"):
                v = record.get(getattr(c, name))
                values[name] = None if v is None else str(v)
            if c.text_pair:
                pair = record.get(c.text_pair)
                if pair is not None and not isinstance(pair, str):
                    raise ParseError(f"text pair must be a string, not {type(pair).__name__}")
                values["text_pair"] = pair
            if c.label:
                values["label"] = parse_label(record.get(c.label))
            rid = record.get(c.id)
        except ParseError as exc:
            self.quarantine(row_number, raw if raw is not None else json.dumps(record, default=str), str(exc))
            return
        values["_row"] = row_number
        self._append(str(rid) if rid not in (None, "") else f"{self.source}:{row_number}", values)

    def quarantine(self, row_number: int, raw: str, error: str) -> None:
        self._append(f"{self.source}:{row_number}",
                     {"_row": row_number, "_raw": raw[:RAW_LIMIT], "_error": error})

    def _append(self, rid: str, values: dict) -> None:
        values.update(id=rid, source=self.source)
        for name, col in self.cols.items():
            col.append(values.get(name))

    def flush(self) -> pa.Table:
        table = pa.table(self.cols, schema=self.schema)
        self.cols = {name: [] for name in self.schema.names}
        return table


def _lines(f, offset: int = 0, chunk: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """Physical lines of a byte stream that starts at `offset`: (where each begins, the line
    without its newline)."""
    rest = b""
    while True:
        data = f.read(chunk)
        if not data:
            break
        parts = (rest + data).split(b"\n")
        rest = parts.pop()
        for part in parts:
            yield offset, part
            offset += len(part) + 1
    if rest:
        yield offset, rest


def _decode(raw: bytes, encoding: str = "utf-8") -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        name = "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding
        raise ParseError(f"invalid {name} at byte {exc.start}") from None


def _raw_text(raw: bytes, encoding: str = "utf-8") -> str:
    return raw.decode(encoding, errors="backslashreplace")


def ascii_compatible(encoding: str) -> bool:
    """Whether newlines, quotes and delimiters are single ASCII bytes in `encoding` (UTF-8,
    latin-1, cp1252…), so records can be found in its bytes (not so UTF-16 or UTF-32)."""
    return '\n",;|\t{}[]'.encode(encoding) == b'\n",;|\t{}[]'


class Utf8Stream:
    """A binary stream in an encoding that is not ASCII-compatible, read as UTF-8 bytes."""

    def __init__(self, f, encoding: str):
        self._text = codecs.getreader(encoding)(f)

    def close(self) -> None:
        self._text.close()

    def read(self, size: int = -1) -> bytes:
        try:
            return self._text.read(size).encode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(f"invalid {exc.encoding} in the file: {exc.reason}") from None


def _line_records(lines, number: int = 1) -> Iterator[tuple[int, int, bytes]]:
    """JSONL records: one per line, as (line number, offset, bytes)."""
    for n, (offset, line) in enumerate(lines, start=number):
        yield n, offset, line


def _records(lines, number: int = 1) -> Iterator[tuple[int, int, bytes]]:
    """CSV records as (first line number, its offset, bytes): lines are joined while a quote is open.

    A quote that never closes (within MAX_RECORD_LINES lines or MAX_RECORD_BYTES, or before
    the end of the file) makes its first line a broken record; reading resumes on the next.
    Whatever came before, reading from a record's offset gives the same records after it.
    """
    numbered = ((n, o, line.rstrip(b"\r")) for n, (o, line) in enumerate(lines, start=number))
    replay: list[tuple[int, int, bytes]] = []
    pending: list[tuple[int, int, bytes]] = []
    quotes = size = 0
    while True:
        item = replay.pop(0) if replay else next(numbered, None)
        if item is None and not pending:
            return
        if item is not None:
            pending.append(item)
            quotes += item[2].count(b'"')
            size += len(item[2])
            if quotes % 2 == 0:
                yield pending[0][0], pending[0][1], b"\n".join(line for _, _, line in pending)
                pending, quotes, size = [], 0, 0
                continue
            if len(pending) <= MAX_RECORD_LINES and size <= MAX_RECORD_BYTES:
                continue
        yield pending[0]
        replay, pending, quotes, size = pending[1:] + replay, [], 0, 0


def _split(text: str, delimiter: str) -> list[str]:
    if '"' not in text:
        return text.split(delimiter)
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    if len(rows) != 1:
        raise ParseError("record spans several rows")
    return rows[0]


def _content(records, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Numbered records that start before `end`, without the UTF-8 byte-order mark and blank ones."""
    for number, offset, raw in records:
        if end is not None and offset >= end:
            return
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        if raw.strip():
            yield number, raw


def read_delimited(f, batcher: _Batcher, delimiter: str, start: int = 0, end: int | None = None,
                   row: int = 1, encoding: str = "utf-8") -> Iterator[pa.Table]:
    """CSV/TSV records from the one at byte `start` (numbered `row`) to those starting at `end`."""
    header, missing_text = None, False
    if start:  # the header is the file's first record
        header = [h.strip() for h in _split(_decode(next(_content(_records(_lines(f))))[1], encoding), delimiter)]
        missing_text = batcher.columns.text not in header
        f.seek(start)
    for number, raw in _content(_records(_lines(f, start), row), end):
        try:
            text = _decode(raw, encoding)
            values = _split(text, delimiter)
            if header is None:
                header = [h.strip() for h in values]
                missing_text = batcher.columns.text not in header
                continue
            if len(values) != len(header):
                raise ParseError(f"expected {len(header)} fields, got {len(values)}")
            if missing_text:
                raise ParseError(f"file has no column {batcher.columns.text!r}")
            batcher.add(number, {k: (v if v != "" else None) for k, v in zip(header, values)}, text)
        except (ParseError, csv.Error) as exc:
            batcher.quarantine(number, _raw_text(raw, encoding), str(exc))
        if len(batcher) >= BATCH_ROWS:
            yield batcher.flush()


PYTHON_LITERAL = "a Python dict literal, not JSON (as in Amazon's older review dumps)"


def read_jsonl(f, batcher: _Batcher, start: int = 0, end: int | None = None, row: int = 1,
               encoding: str = "utf-8") -> Iterator[pa.Table]:
    """JSONL lines from the one at byte `start` (numbered `row`) to those starting at `end`.

    Runs of `BATCH_ROWS` lines are parsed by Arrow's JSON reader when every line of the run is a
    clean record (`clean_rows`); any other run is read line by line, so a broken line is
    quarantined with its own reason and the rows are the same either way.
    """
    if start:
        f.seek(start)
    utf8 = codecs.lookup(encoding).name == "utf-8"
    for run in _runs(_content(_line_records(_lines(f, start), row), end), BATCH_ROWS):
        table = clean_rows(run, batcher) if utf8 else None
        if table is not None:
            yield table
            continue
        for number, raw in run:
            try:
                text = _decode(raw, encoding)
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ParseError(f"line is a JSON {type(record).__name__}, not an object")
                batcher.add(number, record, text)
            except (ParseError, json.JSONDecodeError) as exc:
                reason = str(exc)
                if isinstance(exc, json.JSONDecodeError):
                    reason = PYTHON_LITERAL if text.lstrip().startswith("{'") else f"invalid JSON: {exc}"
                batcher.quarantine(number, _raw_text(raw, encoding), reason)
        yield batcher.flush()


def _runs(items, size: int) -> Iterator[list]:
    items = iter(items)
    while run := list(itertools.islice(items, size)):
        yield run


_AS_STRING = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_null)


def clean_rows(run: list[tuple[int, bytes]], batcher: _Batcher) -> pa.Table | None:
    """The canonical rows of numbered UTF-8 JSON lines parsed by Arrow, or None unless each line is
    an object whose fields Arrow types as `_Batcher.add` would read them: texts strings, ratings
    integers 1-5 (or integral floats), ids, labels and the other fields strings or integers."""
    c = batcher.columns
    try:
        table = pajson.read_json(pa.BufferReader(b"\n".join(raw for _, raw in run)),
                                 read_options=pajson.ReadOptions(use_threads=False, block_size=1 << 30))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(run):
        return None
    n = table.num_rows

    def column(name: str | None, ok=_AS_STRING) -> pa.Array | None:
        if not name or name not in table.column_names:
            return pa.nulls(n, pa.string())
        values = table[name].combine_chunks()
        if not any(test(values.type) for test in ok):
            return None
        return values.cast(pa.string()) if not pa.types.is_null(values.type) else pa.nulls(n, pa.string())

    text, pair = column(c.text, _AS_STRING[:2] + _AS_STRING[3:]), column(c.text_pair, _AS_STRING[:2] + _AS_STRING[3:])
    if text is None or pair is None or (pc.max(pc.utf8_length(text)).as_py() or 0) > MAX_TEXT_CHARS:
        return None
    rating = pa.nulls(n, pa.int64())
    if c.rating in table.column_names and not pa.types.is_null(table[c.rating].type):
        values = table[c.rating].combine_chunks()
        if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
            return None
        valid = values.drop_null()
        if len(valid) and not pc.all(pc.and_(pc.equal(pc.floor(valid), valid),
                                             pc.and_(pc.greater_equal(valid, 1), pc.less_equal(valid, 5)))).as_py():
            return None
        rating = values.cast(pa.int64())
    fields = {name: column(getattr(c, name)) for name in ("id", "title", "brand", "product")}
    label = column(c.label) if c.label else None
    if any(v is None for v in fields.values()) or (c.label and label is None):
        return None
    rows = pa.array([number for number, _ in run], pa.int64())
    source = pa.array([batcher.source] * n, pa.string())
    default_id = pc.binary_join_element_wise(source, rows.cast(pa.string()), ":")
    given = fields.pop("id")
    values = {"id": pc.if_else(pc.fill_null(pc.not_equal(given, ""), False), given, default_id), "text": text,
              "rating": rating, **fields, "source": source, "_row": rows}
    if c.text_pair:
        values["text_pair"] = pair
    if c.label:
        trimmed = pc.utf8_trim_whitespace(label)
        values["label"] = pc.if_else(pc.equal(trimmed, ""), pa.nulls(n, pa.string()), trimmed)
    return pa.table([values.get(f.name, pa.nulls(n, f.type)) for f in batcher.schema], schema=batcher.schema)


def read_json_array(f, batcher: _Batcher) -> Iterator[pa.Table]:
    """The objects of a JSON array (UTF-8 bytes), parsed as a stream: the file is never held whole."""
    number = 0
    try:
        for number, record in enumerate(ijson.items(f, "item", use_float=True), start=1):
            if isinstance(record, dict):
                batcher.add(number, record)
            else:
                batcher.quarantine(number, json.dumps(record),
                                   f"element is a JSON {type(record).__name__}, not an object")
            if len(batcher) >= BATCH_ROWS:
                yield batcher.flush()
        if number == 0:
            raise ParseError("a .json input must hold an array of objects, or one object per line")
    except (ParseError, ijson.JSONError) as exc:
        batcher.quarantine(number + 1, "", f"invalid JSON file after element {number}: {exc}")


def read_parquet_file(f, batcher: _Batcher, start: int = 0, end: int | None = None,
                      row: int = 1) -> Iterator[pa.Table]:
    """Parquet rows of row groups `start` to `end`, the first numbered `row`."""
    try:
        pf = pq.ParquetFile(f)
        if batcher.columns.text not in pf.schema_arrow.names:
            raise ParseError(f"file has no column {batcher.columns.text!r}")
        groups = range(start, pf.num_row_groups if end is None else end)
        number = row - 1
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups):
            for record in batch.to_pylist():
                number += 1
                batcher.add(number, record)
            yield batcher.flush()
    except (ParseError, pa.ArrowInvalid, OSError) as exc:
        batcher.quarantine(row - 1, "", f"unreadable Parquet file: {exc}")
        yield batcher.flush()


@dataclass(frozen=True)
class Piece:
    """What one read task reads of a file: the records from `start` (a record's byte offset;
    for Parquet, a row group) up to those that start at `end` (None: the end of the file).
    `row` numbers its first record (a line number in text files) and `size` is about the
    bytes it reads."""

    file: InputFile
    start: int = 0
    end: int | None = None
    row: int = 1
    size: int = 0


def _line_cuts(f, size: int, total: int) -> list[tuple[int, int]]:
    """(offset, line number) of the first line starting at or after each multiple of `size`."""
    cuts, k, base, newlines = [], 1, 0, 0
    while data := f.read(SCAN_CHUNK):
        while k * size - 1 < base + len(data):
            q = data.find(b"\n", max(k * size - 1 - base, 0))
            if q < 0:
                break
            start = base + q + 1
            if start < total:
                cuts.append((start, 1 + newlines + data.count(b"\n", 0, q + 1)))
            k = start // size + 1
        newlines += data.count(b"\n")
        base += len(data)
    return cuts


def _record_cuts(f, size: int) -> list[tuple[int, int]]:
    """(offset, line number) of the first CSV record starting at or after each multiple of `size`."""
    cuts, target = [], size
    for number, offset, _ in _records(_lines(f, chunk=SCAN_CHUNK)):
        if offset >= target:
            cuts.append((offset, number))
            target = (offset // size + 1) * size
    return cuts


def _row_group_pieces(pf: pq.ParquetFile, file: InputFile, size: int) -> list[Piece]:
    """Runs of whole row groups of about `size` bytes each (by their share of the rows)."""
    meta, pieces, start, row, rows = pf.metadata, [], 0, 1, 0
    per_row = file.size / max(meta.num_rows, 1)
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows * per_row >= size or g == meta.num_row_groups - 1:
            pieces.append(Piece(file, start, g + 1, row, int(rows * per_row)))
            start, row, rows = g + 1, row + rows, 0
    return pieces


def split_file(fs, file: InputFile, size: int) -> list[Piece]:
    """`file` in equal pieces of at most about `size` bytes, cut at record boundaries (CSV: quote-aware), so
    that each record is read once, by the piece it starts in, under the same record number
    as when the file is read whole. Compressed files and JSON arrays are one piece."""
    whole = [Piece(file, size=file.size)]
    if not splittable(file) or file.size <= size:
        return whole
    size = -(-file.size // -(-file.size // size))  # as many pieces as `size` asks for, of equal size
    with fs.open_input_file(file.path) as f:
        if file.format == "parquet":
            try:
                return _row_group_pieces(pq.ParquetFile(f), file, size)
            except (pa.ArrowInvalid, OSError):  # its reader quarantines the file
                return whole
        cuts = _line_cuts(f, size, file.size) if file.format == "jsonl" else _record_cuts(f, size)
    starts, ends = [(0, 1)] + cuts, [c[0] for c in cuts] + [file.size]
    return [Piece(file, start, end if end < file.size else None, row, end - start)
            for (start, row), end in zip(starts, ends)]


def splittable(file: InputFile) -> bool:
    """Whether a file can be read in byte ranges: not compressed, not a JSON array, and records
    findable in its bytes (an ASCII-compatible encoding; Parquet always)."""
    return not compressed(file.path) and file.format != "json" and (
        file.format == "parquet" or ascii_compatible(file.encoding))


def plan_pieces(inputs: Inputs, size: int = SPLIT_BYTES) -> list[Piece]:
    """Every input file's pieces; the files that need cutting are scanned by Ray tasks, in parallel."""
    scan = ray.remote(num_cpus=1)(split_file)
    found = {f: scan.remote(inputs.filesystem, f, size) for f in inputs.files if f.size > size and splittable(f)}
    return [p for f in inputs.files for p in (ray.get(found[f]) if f in found else [Piece(f, size=f.size)])]


def open_text(fs, file: InputFile) -> tuple[object, str]:
    """A file's bytes to find records in, and the encoding to decode each record with: a file in
    an encoding that is not ASCII-compatible is read as UTF-8 (`Utf8Stream`), whole."""
    seekable = file.format == "parquet" or not compressed(file.path)
    f = fs.open_input_file(file.path) if seekable else fs.open_input_stream(file.path, compression="detect")
    return (f, file.encoding) if file.format == "parquet" else as_records(f, file.encoding)


def as_records(f, encoding: str) -> tuple[object, str]:
    """A text stream whose records can be found in its bytes, and the encoding of those bytes."""
    return (f, encoding) if ascii_compatible(encoding) else (Utf8Stream(f, encoding), "utf-8")


def read_piece(fs, piece: Piece, columns: Columns) -> Iterator[pa.Table]:
    """The canonical rows of one piece of a file."""
    file = piece.file
    batcher = _Batcher(file.uri, columns)
    where = (piece.start, piece.end, piece.row)
    f, encoding = open_text(fs, file)
    try:
        if file.format in ("csv", "tsv"):
            yield from read_delimited(f, batcher, file.separator, *where, encoding=encoding)
        elif file.format == "jsonl":
            yield from read_jsonl(f, batcher, *where, encoding=encoding)
        elif file.format == "json":
            utf8 = codecs.lookup(encoding).name == "utf-8"
            yield from read_json_array(Utf8Stream(f, "utf-8-sig" if utf8 else encoding), batcher)
        else:
            yield from read_parquet_file(f, batcher, *where)
    except ParseError as exc:  # the stream itself cannot be decoded any further
        batcher.quarantine(0, "", str(exc))
    finally:
        f.close()
    if len(batcher):
        yield batcher.flush()


class ReviewDatasource(Datasource):
    """Streams review files of any supported format into canonical rows: a read task per piece."""

    def __init__(self, inputs: Inputs, pieces: list[Piece], columns: Columns):
        self._fs, self.pieces, self._columns = inputs.filesystem, pieces, columns

    def estimate_inmemory_data_size(self) -> int:
        return sum(p.size for p in self.pieces)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        return [ReadTask(partial(read_piece, self._fs, p, self._columns),
                         BlockMetadata(num_rows=None, size_bytes=p.size, exec_stats=None, input_files=(p.file.path,)),
                         schema=self._columns.schema, per_task_row_limit=per_task_row_limit)
                for p in self.pieces]


def _first_columns(fs, file: InputFile) -> list[str] | None:
    """Column names of a file from its header, schema or first record (None if unknown)."""
    if file.format == "parquet":
        with fs.open_input_file(file.path) as f:
            try:
                return pq.ParquetFile(f).schema_arrow.names
            except pa.ArrowInvalid:  # the reader quarantines the file
                return None
    with fs.open_input_stream(file.path, compression="detect") as f:
        stream, encoding = as_records(f, file.encoding)
        try:
            if file.format in ("csv", "tsv"):
                for _, raw in _content(_records(_lines(stream))):
                    return [h.strip() for h in _split(_decode(raw, encoding), file.separator)]
            elif file.format == "jsonl":
                for _, raw in _content(_line_records(_lines(stream))):
                    try:
                        record = json.loads(_decode(raw, encoding))
                    except (ValueError, ParseError):
                        continue
                    if isinstance(record, dict):
                        return list(record)
        except (ParseError, csv.Error):
            return None
    return None


def check_columns(inputs: Inputs, required: list[tuple[str, str]]) -> None:
    """UsageError when the first readable file of a format lacks a required (field, column)."""
    checked = set()
    for f in inputs.files:
        if f.format in checked or f.size == 0 or f.format == "json":
            continue
        names = _first_columns(inputs.filesystem, f)
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
                 need_rating: bool = False, *, delimiter: str | None = None, encoding: str = "utf-8") -> Inputs:
    """Expand and check the inputs without Ray (UsageError when they cannot be read); say which
    `.json` files are read as JSON Lines."""
    inputs = expand_inputs(uris, fmt, delimiter, encoding)
    sniffed = [f.uri for f in inputs.files if f.sniffed]
    if sniffed:
        more = f" and {len(sniffed) - 1} more" if len(sniffed) > 1 else ""
        print(f"reading {sniffed[0]}{more} as JSON Lines: the first line is a whole JSON object "
              "(--format json reads a file as one array)", file=sys.stderr)
    if not ascii_compatible(encoding) and any(f.format != "parquet" for f in inputs.files):
        print(f"reading each input whole, by one task: {encoding} text is not cut into byte ranges", file=sys.stderr)
    try:
        check_columns(inputs, columns.required(need_rating))
    except OSError as exc:
        raise UsageError(f"cannot read {inputs.files[0].uri}: {storage_error(exc)}") from None
    return inputs


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


def read_reviews(inputs: Inputs, columns: Columns = Columns(), split_bytes: int = SPLIT_BYTES) -> ray.data.Dataset:
    """The canonical review dataset: one row per record, quarantined ones included."""
    return read_source(ReviewDatasource(inputs, plan_pieces(inputs, split_bytes), columns))


def read_source(source: ReviewDatasource, num_cpus: float | None = None) -> ray.data.Dataset:
    """A dataset of `source`'s pieces, read again on every pass (`num_cpus` per read task).

    Each piece of a file (see `split_file`) is one read task. With at least two pieces per
    CPU, Ray Data fuses each read with the map steps after it (those without a
    `batch_size`) into one task, with no hand-off through the object store. With fewer,
    larger pieces Ray splits what is read so the steps after it run in parallel.
    """
    cpus = int(ray.cluster_resources().get("CPU", 1))
    pieces = len(source.pieces)
    return ray.data.read_datasource(source, num_cpus=num_cpus,
                                    override_num_blocks=pieces if pieces >= 2 * cpus else None)


def with_text(batch: pa.Table) -> pa.Table:
    """The rows of a canonical batch that parsed and have a text (and text pair, when read)."""
    usable = pc.and_(pc.is_null(batch["_error"]), pc.is_valid(batch["text"]))
    if "text_pair" in batch.schema.names:
        usable = pc.and_(usable, pc.is_valid(batch["text_pair"]))
    return batch.filter(usable)
