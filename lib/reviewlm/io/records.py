"""Formats and record scanning: each reader turns a stream of one format (CSV/TSV, JSON Lines,
a JSON array, Parquet) into canonical rows (`Batcher`), from a record's byte offset to
another, quarantining what cannot be parsed with its reason. Nothing is dropped here.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
from typing import Iterator

import ijson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from reviewlm.io.layout import Columns
from reviewlm.io.storage import InputFile, compressed

BATCH_ROWS = 4096
MAX_RECORD_LINES = 10_000
MAX_RECORD_BYTES = 64 << 20
MAX_TEXT_CHARS = 1_000_000  # a longer "review" is a broken export, not a review: quarantined
RAW_LIMIT = 10_000  # characters of a broken record kept in quarantine
csv.field_size_limit(MAX_RECORD_BYTES)  # the default (131,072) would refuse long quoted reviews


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


class Batcher:
    """Collects canonical rows column-wise and hands out Arrow tables."""

    def __init__(self, source: str, columns: Columns):
        self.source, self.columns = source, columns
        self.schema = columns.schema
        self.cols = {name: [] for name in self.schema.names}

    def __len__(self):
        return len(self.cols["id"])

    def add(self, row_number: int, record: dict, raw: str | None = None, end: int | None = None) -> None:
        """Add one parsed record (input column name -> value), or quarantine it with `raw`; `end`
        is the record number just past it (default `row_number` + 1)."""
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
            for name, column in c.extra:
                v = record.get(column)
                if isinstance(v, (dict, list)):
                    raise ParseError(f"{column} must be a string or a number, not {type(v).__name__}")
                values[f"x_{name}"] = None if v is None else str(v)
            rid = record.get(c.id)
        except ParseError as exc:
            self.quarantine(row_number, raw if raw is not None else json.dumps(record, default=str), str(exc), end)
            return
        values["_row"], values["_end"] = row_number, row_number + 1 if end is None else end
        self._append(str(rid) if rid not in (None, "") else f"{self.source}:{row_number}", values)

    def quarantine(self, row_number: int, raw: str, error: str, end: int | None = None) -> None:
        self._append(f"{self.source}:{row_number}", {"_row": row_number, "_end": row_number + 1 if end is None else end,
                                                     "_raw": raw[:RAW_LIMIT], "_error": error})

    def _append(self, rid: str, values: dict) -> None:
        values.update(id=rid, source=self.source)
        for name, col in self.cols.items():
            col.append(values.get(name))

    def flush(self) -> pa.Table:
        table = pa.table(self.cols, schema=self.schema)
        self.cols = {name: [] for name in self.schema.names}
        return table


def byte_lines(f, offset: int = 0, chunk: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
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


def decode(raw: bytes, encoding: str = "utf-8") -> str:
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


def line_records(lines) -> Iterator[tuple[int, int, bytes, int]]:
    """JSONL records: one per line, as (number, offset, bytes, end), numbered by their byte offset
    (which needs no count of the lines before), `end` the offset after the line's newline."""
    for offset, line in lines:
        yield offset, offset, line, offset + len(line) + 1


def csv_records(lines, number: int = 1) -> Iterator[tuple[int, int, bytes, int]]:
    """CSV records as (first line number, its offset, bytes, the line number after its last line):
    lines are joined while a quote is open.

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
                yield pending[0][0], pending[0][1], b"\n".join(line for _, _, line in pending), pending[-1][0] + 1
                pending, quotes, size = [], 0, 0
                continue
            if len(pending) <= MAX_RECORD_LINES and size <= MAX_RECORD_BYTES:
                continue
        yield *pending[0], pending[0][0] + 1
        replay, pending, quotes, size = pending[1:] + replay, [], 0, 0


def split_fields(text: str, delimiter: str) -> list[str]:
    if '"' not in text:
        return text.split(delimiter)
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    if len(rows) != 1:
        raise ParseError("record spans several rows")
    return rows[0]


def content(records, end: int | None = None) -> Iterator[tuple[int, bytes, int]]:
    """(number, bytes, number after) of the records that start before byte `end`, without the
    UTF-8 byte-order mark and blank ones."""
    for number, offset, raw, after in records:
        if end is not None and offset >= end:
            return
        if offset == 0:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        if raw.strip():
            yield number, raw, after


def read_delimited(f, batcher: Batcher, delimiter: str, start: int = 0, end: int | None = None,
                   row: int = 1, encoding: str = "utf-8") -> Iterator[pa.Table]:
    """CSV/TSV records from the one at byte `start` (numbered `row`) to those starting at `end`."""
    header, missing_text = None, False
    if start:  # the header is the file's first record
        first = next(content(csv_records(byte_lines(f))))[1]
        header = [h.strip() for h in split_fields(decode(first, encoding), delimiter)]
        missing_text = batcher.columns.text not in header
        f.seek(start)
    for number, raw, after in content(csv_records(byte_lines(f, start), row), end):
        try:
            text = decode(raw, encoding)
            values = split_fields(text, delimiter)
            if header is None:
                header = [h.strip() for h in values]
                missing_text = batcher.columns.text not in header
                continue
            if len(values) != len(header):
                raise ParseError(f"expected {len(header)} fields, got {len(values)}")
            if missing_text:
                raise ParseError(f"file has no column {batcher.columns.text!r}")
            batcher.add(number, {k: (v if v != "" else None) for k, v in zip(header, values)}, text, after)
        except (ParseError, csv.Error) as exc:
            batcher.quarantine(number, _raw_text(raw, encoding), str(exc), after)
        if len(batcher) >= BATCH_ROWS:
            yield batcher.flush()


PYTHON_LITERAL = "a Python dict literal, not JSON (as in Amazon's older review dumps)"


def read_jsonl(f, batcher: Batcher, start: int = 0, end: int | None = None,
               encoding: str = "utf-8") -> Iterator[pa.Table]:
    """JSONL lines that start at byte `start` or after, up to those starting at `end`, each
    numbered by its byte offset. `start` need not be a line's: the line it falls in belongs to
    the range before (as Hadoop's and Spark's line readers cut a file), so ranges need no scan.

    Runs of `BATCH_ROWS` lines are parsed by Arrow's JSON reader when every line of the run is a
    clean record (`clean_rows`); any other run is read line by line, so a broken line is
    quarantined with its own reason and the rows are the same either way.
    """
    lines = byte_lines(f)
    if start:
        f.seek(start - 1)
        lines = byte_lines(f, start - 1)
        next(lines, None)  # up to the first newline at or after start - 1: the rest of a line begun before
    utf8 = codecs.lookup(encoding).name == "utf-8"
    for run in _runs(content(line_records(lines), end), BATCH_ROWS):
        table = clean_rows(run, batcher) if utf8 else None
        if table is not None:
            yield table
            continue
        for number, raw, after in run:
            try:
                text = decode(raw, encoding)
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ParseError(f"line is a JSON {type(record).__name__}, not an object")
                batcher.add(number, record, text, after)
            except (ParseError, json.JSONDecodeError) as exc:
                reason = str(exc)
                if isinstance(exc, json.JSONDecodeError):
                    reason = PYTHON_LITERAL if text.lstrip().startswith("{'") else f"invalid JSON: {exc}"
                batcher.quarantine(number, _raw_text(raw, encoding), reason, after)
        yield batcher.flush()


def _runs(items, size: int) -> Iterator[list]:
    items = iter(items)
    while run := list(itertools.islice(items, size)):
        yield run


_AS_STRING = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_null)


def clean_rows(run: list[tuple[int, bytes, int]], batcher: Batcher) -> pa.Table | None:
    """The canonical rows of numbered UTF-8 JSON lines (`content`) parsed by Arrow, or None unless each line is
    an object whose fields Arrow types as `Batcher.add` would read them: texts strings, ratings
    integers 1-5 (or integral floats), ids, labels and the other fields strings or integers."""
    c = batcher.columns
    try:
        table = pajson.read_json(pa.BufferReader(b"\n".join(raw for _, raw, _ in run)),
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
    extra = {f"x_{name}": column(source_column, _AS_STRING + (pa.types.is_floating,))
             for name, source_column in c.extra}
    if any(v is None for v in fields.values()) or (c.label and label is None) \
            or any(v is None for v in extra.values()):
        return None
    rows = pa.array([number for number, _, _ in run], pa.int64())
    source = pa.array([batcher.source] * n, pa.string())
    default_id = pc.binary_join_element_wise(source, rows.cast(pa.string()), ":")
    given = fields.pop("id")
    values = {"id": pc.if_else(pc.fill_null(pc.not_equal(given, ""), False), given, default_id), "text": text,
              "rating": rating, **fields, "source": source, "_row": rows,
              "_end": pa.array([after for _, _, after in run], pa.int64())}
    if c.text_pair:
        values["text_pair"] = pair
    if c.label:
        trimmed = pc.utf8_trim_whitespace(label)
        values["label"] = pc.if_else(pc.equal(trimmed, ""), pa.nulls(n, pa.string()), trimmed)
    values.update(extra)
    return pa.table([values.get(f.name, pa.nulls(n, f.type)) for f in batcher.schema], schema=batcher.schema)


def read_json_array(f, batcher: Batcher) -> Iterator[pa.Table]:
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


def read_parquet_file(f, batcher: Batcher, start: int = 0, end: int | None = None,
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


def open_text(fs, file: InputFile) -> tuple[object, str]:
    """A file's bytes to find records in, and the encoding to decode each record with: a file in
    an encoding that is not ASCII-compatible is read as UTF-8 (`Utf8Stream`), whole."""
    seekable = file.format == "parquet" or not compressed(file.path)
    f = fs.open_input_file(file.path) if seekable else fs.open_input_stream(file.path, compression="detect")
    return (f, file.encoding) if file.format == "parquet" else as_records(f, file.encoding)


def as_records(f, encoding: str) -> tuple[object, str]:
    """A text stream whose records can be found in its bytes, and the encoding of those bytes."""
    return (f, encoding) if ascii_compatible(encoding) else (Utf8Stream(f, encoding), "utf-8")


def first_columns(fs, file: InputFile) -> list[str] | None:
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
                for _, raw, _ in content(csv_records(byte_lines(stream))):
                    return [h.strip() for h in split_fields(decode(raw, encoding), file.separator)]
            elif file.format == "jsonl":
                for _, raw, _ in content(line_records(byte_lines(stream))):
                    try:
                        record = json.loads(decode(raw, encoding))
                    except (ValueError, ParseError):
                        continue
                    if isinstance(record, dict):
                        return list(record)
        except (ParseError, csv.Error):
            return None
    return None
