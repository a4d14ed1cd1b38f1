"""Byte-range pieces: a big plain file is cut at record boundaries (Parquet: runs of row
groups) so that several read tasks read it in parallel, each record once, under the record
number it has when the file is read whole. A JSON Lines file's ranges are counted by as many
tasks, in parallel, for those numbers."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from reviewlm.io.records import ascii_compatible, byte_lines, csv_records
from reviewlm.io.storage import InputFile, Inputs, compressed
from reviewlm.options import SPLIT_MB

SPLIT_BYTES = SPLIT_MB << 20
SCAN_CHUNK = 8 << 20


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

    @property
    def key(self) -> str:
        """Names the piece for good: its file and first byte (or row group)."""
        return f"{self.file.uri}@{self.start}"


def line_range(fs, file: InputFile, k: int, size: int) -> tuple[int, int | None]:
    """Range `k` of a JSON Lines file, bytes k*size-1 up to (k+1)*size-1 (from 0 for k = 0): the
    newlines in it and, for k >= 1, the offset of the first line that starts at or after k*size
    (None: none does). The ranges of a file are counted apart, by as many tasks as it has."""
    lo, hi = max(k * size - 1, 0), min((k + 1) * size - 1, file.size)
    newlines, first, at = 0, None, lo
    with fs.open_input_file(file.path) as f:
        f.seek(lo)
        while (at < hi or (k and first is None)) and (data := f.read(SCAN_CHUNK if at >= hi else
                                                                    min(SCAN_CHUNK, hi - at))):
            if k and first is None and (q := data.find(b"\n")) >= 0:
                first = at + q + 1
            if at < hi:
                newlines += data.count(b"\n", 0, hi - at)
            at += len(data)
    return newlines, first


def _line_cuts(counts: list[tuple[int, int | None]], total: int) -> list[tuple[int, int]]:
    """(offset, line number) of each range's first line, from every range's `line_range`: its
    number is 2 + the newlines before its range (the one that ends the line before it is in it)."""
    cuts, before = [], 0
    for k, (newlines, first) in enumerate(counts):
        if k and first is not None and first < total and (not cuts or first > cuts[-1][0]):
            cuts.append((first, before + 2))
        before += newlines
    return cuts


def _record_cuts(f, size: int) -> list[tuple[int, int]]:
    """(offset, line number) of the first CSV record starting at or after each multiple of `size`."""
    cuts, target = [], size
    for number, offset, _ in csv_records(byte_lines(f, chunk=SCAN_CHUNK)):
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


def equal_size(file: InputFile, size: int) -> int:
    """As many pieces as `size` asks for, of equal size."""
    return -(-file.size // -(-file.size // size))


def _pieces(file: InputFile, cuts: list[tuple[int, int]]) -> list[Piece]:
    starts, ends = [(0, 1)] + cuts, [c[0] for c in cuts] + [file.size]
    return [Piece(file, start, end if end < file.size else None, row, end - start)
            for (start, row), end in zip(starts, ends)]


def split_file(fs, file: InputFile, size: int) -> list[Piece]:
    """`file` in equal pieces of at most about `size` bytes, cut at record boundaries (CSV: quote-aware), so
    that each record is read once, by the piece it starts in, under the same record number
    as when the file is read whole. Compressed files and JSON arrays are one piece. (In a
    job, `plan_pieces` counts a JSON Lines file's ranges in parallel tasks instead.)"""
    whole = [Piece(file, size=file.size)]
    if not splittable(file) or file.size <= size:
        return whole
    size = equal_size(file, size)
    if file.format == "jsonl":
        return _pieces(file, _line_cuts([line_range(fs, file, k, size) for k in range(-(-file.size // size))],
                                        file.size))
    with fs.open_input_file(file.path) as f:
        if file.format == "parquet":
            try:
                return _row_group_pieces(pq.ParquetFile(f), file, size)
            except (pa.ArrowInvalid, OSError):  # its reader quarantines the file
                return whole
        return _pieces(file, _record_cuts(f, size))


def splittable(file: InputFile) -> bool:
    """Whether a file can be read in byte ranges: not compressed, not a JSON array, and records
    findable in its bytes (an ASCII-compatible encoding; Parquet always)."""
    return not compressed(file.path) and file.format != "json" and (
        file.format == "parquet" or ascii_compatible(file.encoding))


def plan_pieces(inputs: Inputs, size: int = SPLIT_BYTES) -> list[Piece]:
    """Every input file's pieces. The files that need cutting are scanned by Ray tasks, in
    parallel: a CSV file (quote-aware) or a Parquet file's footer by one task; a JSON Lines
    file by a task per range, each counting its own bytes' newlines, so that no one task reads
    a whole big file."""
    scan, count = ray.remote(num_cpus=1)(split_file), ray.remote(num_cpus=1)(line_range)
    fs, found = inputs.filesystem, {}
    for f in inputs.files:
        if f.size > size and splittable(f):
            step = equal_size(f, size)
            found[f] = [count.remote(fs, f, k, step) for k in range(-(-f.size // step))] \
                if f.format == "jsonl" else scan.remote(fs, f, size)

    def pieces(f: InputFile) -> list[Piece]:
        if f not in found:
            return [Piece(f, size=f.size)]
        return _pieces(f, _line_cuts(ray.get(found[f]), f.size)) if f.format == "jsonl" else ray.get(found[f])

    return [p for f in inputs.files for p in pieces(f)]
