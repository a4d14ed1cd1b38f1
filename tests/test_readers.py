"""Parsing every input format into canonical rows; broken records are quarantined."""

import gzip
import io
import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from reviewlm.io.layout import Columns
from reviewlm.io.pieces import plan_pieces, split_file
from reviewlm.io.readers import check_inputs, read_piece
from reviewlm.io.records import (
    Batcher,
    ParseError,
    clean_rows,
    parse_rating,
    read_delimited,
    read_json_array,
    read_jsonl,
    read_parquet_file,
)
from reviewlm.io.storage import InputFile, infer_format


def rows(reader, data: bytes, *args, columns=Columns()):
    batcher = Batcher("src", columns)
    tables = list(reader(io.BytesIO(data), batcher, *args))
    if len(batcher):
        tables.append(batcher.flush())
    return pa.concat_tables(tables).to_pylist() if tables else []


def test_csv_good_rows_with_bom_crlf_quotes_and_multiline():
    data = b'\xef\xbb\xbfid,text,rating\r\n1,"hello, world",5\r\n2,"two\nlines ""quoted""",4\r\n,no id,\r\n'
    out = rows(read_delimited, data, ",")
    assert [r["text"] for r in out] == ["hello, world", 'two\nlines "quoted"', "no id"]
    assert [r["id"] for r in out] == ["1", "2", "src:5"]
    assert [r["rating"] for r in out] == [5, 4, None]
    assert all(r["_error"] is None for r in out)


@pytest.mark.parametrize("line, error", [
    (b'3,"broken"quote,5', "expected after"),
    (b"3,too,many,fields", "expected 3 fields, got 4"),
    (b"3,too few", "expected 3 fields, got 2"),
    (b"3,caf\xe9 latte,5", "invalid UTF-8"),
    (b"3,bad rating,five", "not a number"),
    (b"3,bad rating,7", "integer from 1 to 5"),
    (b"3,bad rating,4.5", "integer from 1 to 5"),
])
def test_csv_broken_rows_are_quarantined_with_raw_and_reason(line, error):
    data = b"id,text,rating\n1,good,5\n" + line + b"\n4,also good,4\n"
    out = rows(read_delimited, data, ",")
    assert [r["text"] for r in out if r["_error"] is None] == ["good", "also good"]
    bad = [r for r in out if r["_error"] is not None]
    assert len(bad) == 1 and error in bad[0]["_error"]
    assert bad[0]["_raw"].startswith("3,") and bad[0]["_row"] == 3 and bad[0]["id"] == "src:3"


def test_csv_unterminated_quote_loses_only_its_own_line():
    data = b'id,text\n1,"never closed\n2,fine\n3,"also ""fine"""\n'
    out = rows(read_delimited, data, ",")
    assert [r["_error"] is not None for r in out] == [True, False, False]
    assert [r["text"] for r in out[1:]] == ["fine", 'also "fine"']


def test_tsv_and_column_mapping():
    data = b"review_id\tbody\tstars\nr1\tGreat shoes\t5\n"
    out = rows(read_delimited, data, "\t", columns=Columns(text="body", id="review_id", rating="stars"))
    assert out[0]["id"] == "r1" and out[0]["text"] == "Great shoes" and out[0]["rating"] == 5


def test_csv_file_without_the_text_column_quarantines_its_rows():
    out = rows(read_delimited, b"a,b\n1,2\n", ",")
    assert out[0]["_error"] == "file has no column 'text'"


def test_jsonl_quarantines_invalid_lines():
    data = b'{"text": "ok", "rating": 4}\n{not json\n[1, 2]\n{"text": 12}\n\n{"text": "fine"}\n'
    out = rows(read_jsonl, data)
    lines = [0, 28, 38, 45, 59]  # each line's byte offset numbers it; the blank line is skipped
    assert [(r["_row"], r["_end"], r["_error"] is None) for r in out] == [
        (0, 28, True), (28, 38, False), (38, 45, False), (45, 58, False), (59, 76, True)]
    assert [data[r - 1:r] for r in lines[1:]] == [b"\n"] * 4 and out[4]["id"] == "src:59"
    assert "invalid JSON" in out[1]["_error"] and "not an object" in out[2]["_error"]
    assert "must be a string, not int" in out[3]["_error"]


CLEAN_RUNS = [  # each a run Arrow parses: the rows must be those the line-by-line reader makes
    ([{"id": "a1", "text": "Nike shoes", "rating": 4, "title": "Great", "brand": "Nike", "product": "shoes",
       "extra": {"nested": [1, 2]}}, {"id": "", "text": "empty id", "rating": None},
      {"text": "no id", "title": "Fine"}],
     Columns()),
    ([{"review_id": 7, "body": "int ids, float stars", "stars": 5.0}, {"review_id": 8, "body": "x", "stars": 1.0}],
     Columns(text="body", id="review_id", rating="stars")),
    ([{"q": "nike shoes", "t": "Nike Air", "l": " Exact "}, {"q": "socks", "t": "Puma tee", "l": "3"},
      {"q": "hat", "t": "cap", "l": ""}], Columns(text="q", text_pair="t", label="l")),
    ([{}, {"text": None, "rating": 2}, {"text": "int titles", "title": 12}], Columns()),
    ([{"text": "int labels", "label": 3}, {"text": "b", "label": 1}], Columns(label="label")),
]


@pytest.mark.parametrize("records, columns", CLEAN_RUNS)
def test_clean_runs_parsed_by_arrow_equal_the_line_by_line_rows(records, columns):
    lines = [json.dumps(r) for r in records]
    expected, offset, run = Batcher("src", columns), 0, []
    for line in lines:  # CRLF files keep the \r
        expected.add(offset, json.loads(line), line, offset + len(line) + 2)
        run.append((offset, line.encode() + b"\r", offset + len(line) + 2))
        offset += len(line) + 2
    assert clean_rows(run, Batcher("src", columns)) is not None  # Arrow's path was taken
    assert rows(read_jsonl, ("\r\n".join(lines) + "\r\n").encode(), columns=columns) == expected.flush().to_pylist()


@pytest.mark.parametrize("line", ['{"text": 42}', '{"text": "a", "rating": 7}', '{"text": "a", "rating": 2.5}',
                                  '{"text": "a", "rating": "4"}', '{"text": "a", "id": true}', '[1, 2]',
                                  '{"text": "a", "title": 1.5}', '{"text": "a", "id": "2024-01-01"}'])
def test_runs_arrow_would_read_differently_go_line_by_line(line):
    run = [(0, b'{"text": "fine", "rating": 3}', 31), (31, line.encode(), 32 + len(line))]
    assert clean_rows(run, Batcher("src", Columns())) is None


def test_json_array_and_broken_json_file():
    out = rows(read_json_array, json.dumps([{"text": "a"}, "x", {"text": "b"}]).encode())
    assert [r["_error"] is None for r in out] == [True, False, True]
    out = rows(read_json_array, b'[{"text": "a"},')  # streamed: what came before the break is read
    assert out[0]["text"] == "a" and len(out) == 2 and "invalid JSON file after element 1" in out[1]["_error"]
    out = rows(read_json_array, b'{"text": "a"}')
    assert len(out) == 1 and "must hold an array of objects" in out[0]["_error"]


def test_parquet_rows_and_corrupt_file():
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["a", "b"], "rating": [1, 9]}), buf)
    out = rows(read_parquet_file, buf.getvalue())
    assert out[0]["rating"] == 1 and "integer from 1 to 5" in out[1]["_error"]
    out = rows(read_parquet_file, b"PAR1 this is not parquet")
    assert len(out) == 1 and "unreadable Parquet" in out[0]["_error"]


def test_rating_parsing():
    assert [parse_rating(v) for v in (1, "5", 4.0, "3.0", None, "  ")] == [1, 5, 4, 3, None, None]
    for bad in ("0", 6, "x", 2.5, True and "true"):
        with pytest.raises(ParseError):
            parse_rating(bad)


def test_format_inference_looks_through_compression():
    assert infer_format("s3://b/x/part-1.jsonl.gz") == "jsonl"
    assert infer_format("a.CSV") == "csv" and infer_format("a.tsv.bz2") == "tsv"
    assert infer_format("a.parquet") == "parquet" and infer_format("a.txt") is None
    assert gzip.decompress(gzip.compress(b"x")) == b"x"


def broken_csv(n: int = 120) -> bytes:
    """A CSV with a BOM, CRLF, blank lines, quoted newlines and commas, and broken records."""
    lines = [b"\xef\xbb\xbfid,text,rating"]
    for i in range(n):
        if i % 17 == 3:
            lines.append(f'{i},"a review over\nthree lines, ""quoted""\nand done",4'.encode())
        elif i % 23 == 5:
            lines.append(f"{i},too,many,fields".encode())
        elif i % 29 == 7:
            lines.append(f"{i},caf".encode() + b"\xe9,5")
        elif i % 31 == 11:
            lines.append(b"")
        else:
            lines.append(f"{i},review number {i} is fine,{1 + i % 5}\r".encode())
    lines.insert(n // 2, b'999,"a quote that never closes,3')
    return b"\n".join(lines) + b"\n"


def broken_jsonl(n: int = 200) -> bytes:
    lines = []
    for i in range(n):
        record = {"id": str(i), "text": f"review {i} " * (1 + i % 7), "rating": 1 + i % 5}
        lines.append(b"{broken" if i % 13 == 4 else b"" if i % 19 == 2 else json.dumps(record).encode())
    return b"\xef\xbb\xbf" + b"\n".join(lines)  # no newline at the end


def read_in_pieces(tmp_path, name: str, data: bytes, size: int) -> tuple[list[dict], int]:
    path = tmp_path / name
    path.write_bytes(data)
    fs = pafs.LocalFileSystem()
    pieces = split_file(fs, InputFile(str(path), str(path), infer_format(name), len(data)), size)
    return [r for p in pieces for t in read_piece(fs, p, Columns()) for r in t.to_pylist()], len(pieces)


@pytest.mark.parametrize("name, data", [("r.csv", broken_csv()), ("r.jsonl", broken_jsonl())], ids=["csv", "jsonl"])
def test_a_file_read_in_byte_ranges_gives_the_rows_it_gives_read_whole(tmp_path, name, data):
    """Every cut from 40 bytes to the whole file: the same records, numbers, ids and quarantine."""
    whole, n = read_in_pieces(tmp_path, name, data, len(data))
    assert n == 1 and any(r["_error"] for r in whole) and len({r["id"] for r in whole}) == len(whole)
    for size in range(40, len(data), 23):
        rows_, pieces = read_in_pieces(tmp_path, name, data, size)
        assert rows_ == whole and (pieces > 1 or size > len(data) // 2), size


def test_a_json_lines_file_is_cut_at_byte_offsets_with_no_scan_and_read_as_whole(tmp_path):
    """The job's plan reads nothing of a JSON Lines file: equal byte ranges, each read from the
    first line that starts in it (a cut inside a line, on a newline, on a line's first byte),
    with lines longer than a range and ranges of blank lines; the rows are those of the file
    read whole, each numbered by its line's byte offset."""
    data = broken_jsonl(300) + b"\n" + json.dumps({"text": "long " * 200}).encode() + b"\n" * 30 + b'{"text": "x"}'
    path = tmp_path / "r.jsonl"
    path.write_bytes(data)
    fs, whole = pafs.LocalFileSystem(), read_in_pieces(tmp_path, "r.jsonl", data, len(data))[0]
    assert whole[0]["_row"] == 0 and all(data[r["_row"] - 1] == ord("\n") for r in whole[1:])
    assert [r["_end"] for r in whole[:-1]] == [data.index(b"\n", r["_row"]) + 1 for r in whole[:-1]]
    for size in (1, 2, 97, 500, 1024, 3000):
        pieces = plan_pieces(check_inputs([str(path)]), size)
        step = pieces[1].start
        assert [p.start for p in pieces] == list(range(0, len(data), step)) and step <= size, size
        assert [r for p in pieces for t in read_piece(fs, p, Columns()) for r in t.to_pylist()] == whole, size


def test_a_quoted_newline_on_a_range_edge_stays_one_record(tmp_path):
    data = b'id,text\n1,"first half\nsecond half"\n2,plain\n'
    cut = data.index(b"second")  # the range edge falls inside the quoted field
    rows_, pieces = read_in_pieces(tmp_path, "q.csv", data, cut)
    assert pieces == 2 and [r["text"] for r in rows_] == ["first half\nsecond half", "plain"]


def test_parquet_splits_by_row_groups_and_compressed_files_stay_whole(tmp_path):
    table = pa.table({"text": [f"review {i}" for i in range(1000)], "rating": [1 + i % 5 for i in range(1000)]})
    pq.write_table(table, tmp_path / "r.parquet", row_group_size=100)
    fs, size = pafs.LocalFileSystem(), (tmp_path / "r.parquet").stat().st_size
    file = InputFile(str(tmp_path / "r.parquet"), str(tmp_path / "r.parquet"), "parquet", size)
    pieces = split_file(fs, file, size // 4)
    rows_ = [r for p in pieces for t in read_piece(fs, p, Columns()) for r in t.to_pylist()]
    assert 3 <= len(pieces) <= 5 and [r["_row"] for r in rows_] == list(range(1, 1001))
    assert [r["text"] for r in rows_] == table["text"].to_pylist()
    (tmp_path / "r.jsonl.gz").write_bytes(gzip.compress(broken_jsonl()))
    gz = InputFile(str(tmp_path / "r.jsonl.gz"), str(tmp_path / "r.jsonl.gz"), "jsonl", 10**9)
    assert len(split_file(fs, gz, 100)) == 1
