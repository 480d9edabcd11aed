"""Reading inputs: parquet/jsonl/csv files and directories, row numbers, row-group skipping, streamed Hub
datasets, fingerprints, and a one-line error for each kind of bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from ettin_cli.core.errors import EttinError
from ettin_cli.io.tables import open_input, scan_text_columns


def _rows(n, offset=0):
    return [{"query": f"q{i}", "document": f"document number {i}", "label": i % 3, "id": f"d{i}"}
            for i in range(offset, offset + n)]


def _write(path, rows):
    table = pa.Table.from_pylist(rows)
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=10)
    elif path.suffix == ".csv":
        pcsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read_all(source, **kwargs):
    starts, tables = [], []
    for start, table in source.iter_batches(**kwargs):
        starts.append(start)
        tables.append(table)
    return starts, pa.concat_tables(tables).to_pylist() if tables else []


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_each_format_reads_all_columns_with_row_numbers(tmp_path, suffix):
    rows = _rows(35)
    source = open_input(_write(tmp_path / f"pairs{suffix}", rows))
    assert source.column_names == ["query", "document", "label", "id"]
    starts, read = _read_all(source, batch_rows=8)
    assert read == rows
    assert starts[0] == 0 and all(b > a for a, b in zip(starts, starts[1:], strict=False))
    _, limited = _read_all(source, batch_rows=8, limit=13)
    assert limited == rows[:13]


def test_directory_reads_files_in_name_order_with_global_row_numbers(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder / "b.jsonl", _rows(7, offset=20))
    _write(folder / "a.parquet", _rows(20))
    (folder / "notes.txt").write_text("ignored")
    source = open_input(folder)
    seen = {}
    for start, table in source.iter_batches(batch_rows=6):
        for i, row in enumerate(table.to_pylist()):
            seen[start + i] = row
    assert seen == {i: r for i, r in enumerate(_rows(27))}


def test_parquet_skips_row_groups_outside_wanted_ranges(tmp_path):
    source = open_input(_write(tmp_path / "p.parquet", _rows(60)))  # row groups of 10
    assert source.num_rows() == 60
    starts, read = _read_all(source, batch_rows=100, wanted=[(25, 35)])
    assert starts == [20, 30]  # only the two row groups holding rows 25..34 are read
    assert [r["query"] for r in read] == [f"q{i}" for i in range(20, 40)]


def test_streamed_hub_dataset(tmp_path, monkeypatch):
    """The Hub path, offline: `datasets.load_dataset` is pointed at a local parquet file, streamed."""
    import datasets

    path = _write(tmp_path / "hub.parquet", _rows(23))
    real = datasets.load_dataset
    calls = []

    def fake(name, config=None, split=None, streaming=False, revision=None):
        calls.append((name, config, split, streaming))
        return real("parquet", data_files={"train": str(path)}, split=split, streaming=streaming)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    from ettin_cli.core import sources

    monkeypatch.setattr(sources, "is_offline", lambda: False)  # the Hub, as seen online
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=1.0: True)
    source = open_input("some-org/pairs", config="msmarco", split="train")
    assert source.kind == "hub"
    assert source.column_names == ["query", "document", "label", "id"]
    starts, read = _read_all(source, batch_rows=5, limit=17)
    assert read == _rows(17) and starts == [0, 5, 10, 15]
    assert all(c == ("some-org/pairs", "msmarco", "train", True) for c in calls)  # always streamed
    scan = scan_text_columns(source, "query", "document")
    assert scan.rows == 23
    assert source.fingerprint()["dataset"] == "some-org/pairs"


def test_scan_counts_null_rows_and_accepts_empty_strings(tmp_path):
    rows = _rows(30)
    rows[3]["query"] = None
    rows[17]["document"] = None
    rows[5]["query"] = ""  # valid
    source = open_input(_write(tmp_path / "p.parquet", rows))
    scan = scan_text_columns(source, "query", "document", batch_rows=7)
    assert (scan.rows, scan.invalid, scan.first_invalid) == (30, 2, [3, 17])
    assert scan_text_columns(source, "query", "document", limit=10).as_dict() == {
        "rows": 10, "invalid_rows": 1, "first_invalid_rows": [3]}


def test_fingerprint_is_stable_and_changes_with_content(tmp_path):
    path = _write(tmp_path / "p.parquet", _rows(30))
    first = open_input(path).fingerprint()
    assert open_input(path).fingerprint() == first
    changed = _rows(30)
    changed[4]["document"] = "a different document"
    _write(path, changed)
    assert open_input(path).fingerprint()["sha256"] != first["sha256"]
    jsonl = _write(tmp_path / "p.jsonl", _rows(5))
    fp = open_input(jsonl).fingerprint()
    jsonl.write_text(jsonl.read_text().replace("q1", "q9"))
    assert open_input(jsonl).fingerprint()["sha256"] != fp["sha256"]


def test_missing_column_lists_existing_columns(tmp_path):
    source = open_input(_write(tmp_path / "p.parquet", _rows(3)))
    with pytest.raises(EttinError, match=r"no column 'passage' \(columns: query, document, label, id\)"):
        source.require_columns("query", "passage")


def test_non_text_values_are_refused(tmp_path):
    rows = [{"query": i, "document": "x"} for i in range(5)]
    source = open_input(_write(tmp_path / "p.parquet", rows))
    with pytest.raises(EttinError, match="column 'query' holds int64 values, not text"):
        scan_text_columns(source, "query", "document")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"query": "a", "document": "b"}\n{"query": 5, "document": "c"}\n')
    with pytest.raises(EttinError, match=r"mixed\.jsonl: .*query"):
        scan_text_columns(open_input(mixed), "query", "document")
    binary = tmp_path / "binary.parquet"
    pq.write_table(pa.table({"query": pa.array([b"a"], pa.binary()), "document": ["x"]}), binary)
    with pytest.raises(EttinError, match="binary data, not UTF-8 text"):
        scan_text_columns(open_input(binary), "query", "document")


def test_undecodable_text_is_refused(tmp_path):
    bad = pa.Array.from_buffers(pa.string(), 3, [None, pa.py_buffer(bytes([0, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 5,
                                                                          0, 0, 0])),
                                                pa.py_buffer(b"ok\xff\xfex")])
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"query": ["a", "b", "c"], "document": bad}), path)
    with pytest.raises(EttinError, match=r"row 1, column 'document': undecodable text"):
        scan_text_columns(open_input(path), "query", "document")
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"query": "a", "document": "b"}\n{"query": "\xff\xfe", "document": "c"}\n')
    with pytest.raises(EttinError, match=r"bad\.jsonl"):
        scan_text_columns(open_input(jsonl), "query", "document")
    csv = tmp_path / "bad.csv"
    csv.write_bytes(b"query,document\na,\xff\n")
    with pytest.raises(EttinError, match=r"bad\.csv.*not UTF-8 text"):
        scan_text_columns(open_input(csv), "query", "document")


def test_unreadable_inputs_are_one_line_errors(tmp_path):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(EttinError, match=r"corrupt\.parquet: not a readable parquet file"):
        _ = open_input(corrupt).column_names
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(EttinError, match=r"empty\.jsonl: not readable as JSON lines"):
        _ = open_input(empty).column_names
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"query": "a", "document": "b"}\n{"query": "x", broken\n')
    with pytest.raises(EttinError, match=r"broken\.jsonl"):
        list(open_input(broken).iter_batches())
    text = tmp_path / "x.txt"
    text.write_text("a")
    with pytest.raises(EttinError, match="unsupported input type"):
        open_input(text)
    with pytest.raises(EttinError, match="no such file or folder"):
        open_input(tmp_path / "missing" / "pairs.parquet")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(EttinError, match=r"no \.parquet, \.jsonl, \.csv or \.tsv files"):
        open_input(tmp_path / "emptydir")
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    _write(mismatch / "a.parquet", _rows(3))
    _write(mismatch / "b.jsonl", [{"query": "q", "text": "t"}])
    with pytest.raises(EttinError, match=r"b\.jsonl: columns"):
        open_input(mismatch)


def test_a_sharded_output_folder_reads_its_verified_shards_only(tmp_path):
    """`ettin score work/mined`: the folder of another step gives its shards, never manifest/run/done json."""
    import pyarrow as pa

    from ettin_cli.io import shards
    from ettin_cli.io.tables import open_input

    out = tmp_path / "mined"
    config = {"step": "test"}
    shards.ShardedFolder(out).prepare(config)
    for i in range(2):
        shards.ShardedFolder(out).write(i, pa.table({"query": [f"q{i}"], "document": [f"d{i}"]}))
    with pytest.raises(EttinError, match="unfinished sharded output"):
        open_input(out)
    shards.ShardedFolder(out).finalize(2, extra={})
    source = open_input(out)
    assert [p.name for p in source.files] == ["part-00000.parquet", "part-00001.parquet"]
    assert sorted(source.column_names) == ["document", "query"]
