"""Byte-range pieces: a big plain file is cut so that several read tasks read it in parallel,
each record once, under the record number it has when the file is read whole. A JSON Lines
file is cut at equal byte offsets with no scan (its records are numbered by byte offset, and a
read task starts at the first line that begins in its range); a CSV file at record boundaries
found by one quote-aware scan; a Parquet file into runs of row groups."""

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
    """What one read task reads of a file: the records that start at byte `start` or after (for
    Parquet, a row group) up to those that start at `end` (None: the end of the file). `row`
    numbers its first record (CSV: its line number; JSON Lines: at least `start`, the lowest
    byte offset it can have) and `size` is about the bytes it reads."""

    file: InputFile
    start: int = 0
    end: int | None = None
    row: int = 1
    size: int = 0

    @classmethod
    def whole(cls, file: InputFile) -> Piece:
        """All of `file`, as one piece."""
        return cls(file, row=0 if file.format == "jsonl" else 1, size=file.size)

    @property
    def key(self) -> str:
        """Names the piece for good: its file and first byte (or row group)."""
        return f"{self.file.uri}@{self.start}"


def _record_cuts(f, size: int) -> list[tuple[int, int]]:
    """(offset, line number) of the first CSV record starting at or after each multiple of `size`."""
    cuts, target = [], size
    for number, offset, _, _ in csv_records(byte_lines(f, chunk=SCAN_CHUNK)):
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
    starts, ends = [(0, Piece.whole(file).row)] + cuts, [c[0] for c in cuts] + [file.size]
    return [Piece(file, start, end if end < file.size else None, row, end - start)
            for (start, row), end in zip(starts, ends)]


def split_file(fs, file: InputFile, size: int) -> list[Piece]:
    """`file` in equal pieces of at most about `size` bytes, so that each record is read once, by
    the piece it starts in, under the same record number as when the file is read whole: a
    JSON Lines file at byte offsets (no scan), a CSV file at record boundaries (a quote-aware
    scan). Compressed files and JSON arrays are one piece."""
    whole = [Piece.whole(file)]
    if not splittable(file) or file.size <= size:
        return whole
    size = equal_size(file, size)
    if file.format == "jsonl":
        return _pieces(file, [(k * size, k * size) for k in range(1, -(-file.size // size))])
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
    """Every input file's pieces. A CSV file that needs cutting is scanned (quote-aware) and a
    Parquet file's footer read by a Ray task each, in parallel; a JSON Lines file needs neither."""
    scan, fs = ray.remote(num_cpus=1)(split_file), inputs.filesystem
    found = {f: scan.remote(fs, f, size) for f in inputs.files
             if f.size > size and splittable(f) and f.format != "jsonl"}
    return [p for f in inputs.files for p in (ray.get(found[f]) if f in found else split_file(fs, f, size))]
