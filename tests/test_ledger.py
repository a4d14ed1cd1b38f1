"""The write ledger behind --resume: keys as ranges, finished rows skipped, stray files removed."""

import json

import numpy as np
import pyarrow as pa
from reviewlm.io.ledger import (
    Done,
    Keys,
    _merged,
    read_record,
    record_piece,
    recover,
    unread,
    write_marker,
    write_record,
)


def test_keys_become_merged_ranges_per_group():
    table = pa.table({"source": ["a", "a", "b", "a", "a", "b"], "row": [3, 1, 7, 2, 9, 8]})
    assert Keys("row", "source").ranges(table) == {"a": [[1, 4], [9, 10]], "b": [[7, 9]]}
    assert Keys("prompt_index").ranges(pa.table({"prompt_index": [5, 4, 6, 0]})) == {"": [[0, 1], [4, 7]]}


def test_rows_numbered_by_byte_offset_make_one_range_per_run_of_lines():
    """JSON Lines rows are numbered by their offset and span their line: a run of lines, in any
    order, is one range; a blank line or a row not written leaves a gap."""
    lines = [b'{"a": 1}', b'{"b": 22}', b"", b'{"c": 333}', b'{"d": 4}']
    starts = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]])
    rows = [(s, s + len(line) + 1) for s, line in zip(starts, lines) if line][::-1]
    table = pa.table({"source": ["f"] * 4, "_row": [r[0] for r in rows], "_end": [r[1] for r in rows]})
    assert Keys("_row", "source", "_end").ranges(table) == {"f": [[0, 19], [20, 40]]}
    assert Keys("_row", "source", "_end").ranges(table.slice(0, 3)) == {"f": [[9, 19], [20, 40]]}


def test_overlapping_and_touching_ranges_merge():
    merged = _merged(np.array([[10, 12], [0, 3], [3, 5], [11, 20], [30, 31]]))
    assert merged.tolist() == [[0, 5], [10, 20], [30, 31]]
    assert _merged(np.zeros((0, 2), dtype=np.int64)).shape == (0, 2)


def test_pending_keeps_exactly_the_rows_no_range_holds():
    done = Done(ranges={"a": np.array([[0, 2], [5, 6]]), "b": np.array([[1, 2]])})
    batch = pa.table({"source": ["a"] * 7 + ["b", "b", "c"], "_row": list(range(7)) + [1, 2, 0]})
    left = done.pending(batch, Keys("_row", "source"))
    assert list(zip(left["source"].to_pylist(), left["_row"].to_pylist())) == [
        ("a", 2), ("a", 3), ("a", 4), ("a", 6), ("b", 2), ("c", 0)]
    assert done.total == 4


def test_recover_reads_markers_and_removes_files_no_marker_names(tmp_path):
    for route in ("kept", "rejected"):
        (tmp_path / route).mkdir()
        for tag in ("x-00000", "x-00001", "y-00000"):
            (tmp_path / route / f"part-{tag}.parquet").write_bytes(b"data")
    write_marker(str(tmp_path / "_ledger"), "x-00000", ["kept/part-x-00000.parquet", "rejected/part-x-00000.parquet"],
                 {"f": [[0, 10]]}, {"kept": 7, "rejected": 3}, {"dropped_by": {"sentiment": 3}}, {"m\x00n": 2**1200})
    write_marker(str(tmp_path / "_ledger"), "y-00000", ["kept/part-y-00000.parquet"], {"f": [[10, 12]], "g": [[0, 1]]},
                 {"kept": 3}, {"dropped_by": {}}, {"m\x00n": 1})
    (tmp_path / "_ledger" / ".x-00001.json").write_text('{"files": [')  # a marker never renamed into place
    done = recover(str(tmp_path), ["kept", "rejected"])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*.parquet")) == [
        "kept/part-x-00000.parquet", "kept/part-y-00000.parquet", "rejected/part-x-00000.parquet"]
    assert done.tasks == 2 and done.rows == {"kept": 10, "rejected": 3} and done.total == 13
    assert done.counted["dropped_by"] == {"sentiment": 3} and done.ranges["f"].tolist() == [[0, 12]]
    assert done.summed == {"m\x00n": 2**1200 + 1}  # exact sums are big whole numbers: kept whole


def test_a_unit_recovers_only_its_own_files(tmp_path):
    (tmp_path / "masks").mkdir()
    for name in ("part-m0-p-a-00000", "part-m0-p-b-00000", "part-m1-p-a-00000"):
        (tmp_path / "masks" / f"{name}.parquet").write_bytes(b"data")
    write_marker(str(tmp_path / "_ledger" / "m0-p"), "m0-p-a-00000", ["masks/part-m0-p-a-00000.parquet"],
                 {"": [[0, 5]]}, {"masks": 5}, {}, {})
    assert recover(str(tmp_path), ["masks"], "m0-p").total == 5
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [
        "part-m0-p-a-00000.parquet", "part-m1-p-a-00000.parquet"]


def test_a_record_is_read_back_whole(tmp_path):
    assert read_record(str(tmp_path), "quarantine") is None
    write_record(str(tmp_path), "quarantine", {"invalid JSON": 2})
    assert read_record(str(tmp_path), "quarantine") == {"invalid JSON": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["quarantine.json"]
    assert json.loads((tmp_path / "quarantine.json").read_text()) == {"invalid JSON": 2}


def test_a_piece_is_left_unread_only_when_every_row_its_read_yielded_is_written(tmp_path):
    """A read task records the span of its rows and how many record numbers their own spans
    cover (blank lines leave gaps); the markers' ranges must hold that many of its span."""
    from reviewlm.io.pieces import Piece
    from reviewlm.io.storage import InputFile

    file = InputFile(uri="a.jsonl", path="a.jsonl", size=100, format="jsonl")
    whole, half, broken, empty = (Piece(file, start, None, row) for start, row in ((0, 0), (50, 50), (70, 70),
                                                                                  (90, 90)))
    folder = str(tmp_path / "pieces")
    record_piece(folder, whole, extent=30, low=1, high=38)  # lines at bytes 1-5, 7-20 and 25-38
    record_piece(folder, half, extent=10, low=50, high=60)
    record_piece(folder, broken, extent=3, low=69, high=72)  # an undecodable stream quarantined before it
    record_piece(folder, empty, extent=0, low=None, high=None)
    assert len(list((tmp_path / "pieces").glob("*.json"))) == 3  # none for `broken`
    written = np.array([[1, 5], [7, 20], [25, 38], [50, 55], [70, 72], [0, 1]])  # bytes 55-59 not written
    done = Done(ranges={"a.jsonl": _merged(written)})
    assert unread([whole, half, broken, empty], done, folder) == [half, broken]
    assert unread([whole], done, folder) == [whole]  # all read and written: one is read again, its rows skipped
