"""Reading pair tables in bounded memory: parquet/jsonl/csv files, a directory of them, or a streamed Hub dataset.

Every step that reads (query, document) rows goes through `open_input`, which yields the input as batches of
rows tagged with their input row numbers (0-based, counted across files in name order). Nothing ever holds
the whole input: parquet is read batch by batch (whole row groups are skipped when a caller does not want
them), JSON lines and CSV through pyarrow's streaming readers, Hub datasets with `datasets` streaming. A
143M-row input therefore costs the same peak memory as a 1000-row one.

Bad input fails with one line naming the file, the row or the column: a missing column (listing the columns
that exist), non-text values, undecodable text, a corrupt file. `scan_text_columns` is the cheap pre-pass that
finds null queries/documents before any expensive work starts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import sha256_file
from ettin_cli.core.sources import resolve_source
from ettin_cli.io import shards

EXTENSIONS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv",
              ".tsv": "csv"}
DEFAULT_BATCH_ROWS = 4096
JSON_BLOCK_BYTES = 16 << 20  # one JSON line must fit in a block; documents of 8k tokens are ~40 KB
MAX_REPORTED_ROWS = 10
PARQUET_BUFFER_BYTES = 8 << 20

RowRanges = list[tuple[int, int]]


def _arrow_error(path: Path | str, exc: BaseException, what: str) -> EttinError:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return EttinError(f"{path}: {what} ({message})")


@dataclass
class InputSource:
    """An opened input: where the rows come from and what columns they have.

    `kind` is `files` (local parquet/jsonl/csv) or `hub` (a streamed Hugging Face dataset).
    """

    spec: str
    kind: str
    files: list[Path] = field(default_factory=list)
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    _schema: Any = None
    _file_rows: list[int] | None = None

    # -- schema and size -------------------------------------------------------------------------------

    @property
    def schema(self):
        """The pyarrow schema of the rows (the first file's, which every other file must match)."""
        if self._schema is None:
            if self.kind == "hub":
                self._schema = _hub_schema(self)
            else:
                self._schema = _file_schema(self.files[0])
        return self._schema

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)

    def num_rows(self) -> int | None:
        """Total rows when known without reading the data (parquet footers), else None."""
        if self.kind != "files" or any(EXTENSIONS[f.suffix.lower()] != "parquet" for f in self.files):
            return None
        if self._file_rows is None:
            self._file_rows = [_parquet_file(f).metadata.num_rows for f in self.files]
        return sum(self._file_rows)

    def require_columns(self, *columns: str) -> None:
        """Fail with the list of existing columns when one of `columns` is missing."""
        names = self.column_names
        for column in columns:
            if column not in names:
                raise EttinError(f"{self.spec}: no column '{column}' (columns: {', '.join(names) or 'none'})")

    # -- identity --------------------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this input, so a rerun on different data into the same output is caught.

        Files: names, sizes and a SHA-256 per file; for parquet the hash covers the footer (schema, row-group
        offsets, sizes and column statistics) rather than every byte, so fingerprinting a 100 GB input is
        instant. Hub datasets: id, config, split and the resolved commit when the Hub answers.
        """
        if self.kind == "hub":
            return {"kind": "hub", "dataset": self.spec, "config": self.config, "split": self.split,
                    "revision": self.revision or _hub_revision(self.spec)}
        entries = []
        digest = hashlib.sha256()
        for f in self.files:
            size = f.stat().st_size
            file_hash = _parquet_footer_hash(f) if EXTENSIONS[f.suffix.lower()] == "parquet" else _sha256(f)
            entries.append({"name": f.name, "bytes": size, "sha256": file_hash})
            digest.update(f"{f.name}\0{size}\0{file_hash}\n".encode())
        return {"kind": "files", "path": str(self.spec), "files": entries, "sha256": digest.hexdigest()}

    # -- rows ------------------------------------------------------------------------------------------

    def iter_batches(self, batch_rows: int = DEFAULT_BATCH_ROWS, columns: list[str] | None = None,
                     limit: int | None = None, wanted: RowRanges | None = None) -> Iterator[tuple[int, Any]]:
        """Yield `(first_row_number, pyarrow.Table)` in input order, at most `limit` rows in all.

        `wanted` (sorted, non-overlapping [start, stop) row ranges) lets parquet skip row groups that hold
        none of those rows; other formats read through them (callers slice what they need either way).
        """
        if batch_rows < 1:
            raise EttinError(f"batch size must be >= 1, got {batch_rows}")
        if self.kind == "hub":
            iterator = _iter_hub(self, batch_rows, columns)
        else:
            iterator = self._iter_files(batch_rows, columns, wanted)
        for start, table in iterator:
            if limit is not None:
                if start >= limit:
                    return
                if start + table.num_rows > limit:
                    table = table.slice(0, limit - start)
            if table.num_rows:
                yield start, table

    def _iter_files(self, batch_rows: int, columns: list[str] | None,
                    wanted: RowRanges | None) -> Iterator[tuple[int, Any]]:
        target = self.schema if columns is None else _select_schema(self.schema, columns)
        offset = 0
        for path in self.files:
            kind = EXTENSIONS[path.suffix.lower()]
            reader = {"parquet": _iter_parquet, "json": _iter_json, "csv": _iter_csv}[kind]
            rows_in_file = 0
            for start_in_file, table in reader(path, batch_rows, columns, wanted, offset):
                yield offset + start_in_file, _conform(table, target, path)
                rows_in_file = start_in_file + table.num_rows
            if kind == "parquet":
                rows_in_file = _parquet_file(path).metadata.num_rows
            offset += rows_in_file


def open_input(spec: str | os.PathLike[str], *, config: str | None = None, split: str = "train",
               revision: str | None = None, option: str = "INPUT") -> InputSource:
    """Open INPUT: a parquet/jsonl/csv file, a directory of them (name order), or a Hub dataset id.

    Local-or-Hub is decided by `core.sources.resolve_source` (a mistyped path fails at once, an offline Hub id
    within a second); a finished sharded output is read as exactly its shards, in order.
    """

    source = resolve_source(spec, option=option, offline_hint=f"{option} a local parquet/jsonl/csv file or folder",
                            repo_type="dataset")
    if not source.is_local:
        return InputSource(spec=str(spec), kind="hub", config=config, split=split, revision=revision)
    path = source.path
    assert path is not None
    if path.is_file():
        if path.suffix.lower() not in EXTENSIONS:
            raise EttinError(f"{path}: unsupported input type '{path.suffix}' (use .parquet, .jsonl, .csv or .tsv)")
        return InputSource(spec=str(spec), kind="files", files=[path])
    files = folder_files(path)
    source_files = InputSource(spec=str(spec), kind="files", files=files)
    first = set(source_files.column_names)
    for other in files[1:]:
        names = set(_file_schema(other).names)
        if names != first:
            raise EttinError(f"{other}: columns {sorted(names)} differ from {files[0].name}'s {sorted(first)}")
    return source_files


def folder_files(path: Path) -> list[Path]:
    """The data files of a folder: a sharded output's verified shards (in order), else its table files by name."""

    if shards.is_sharded_output(path):
        # The output of a sharded step (mine, score, select, mix): exactly its shards, once it is finished.
        return shards.ShardedFolder(path).shards()
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS
                   and not p.name.startswith((".", "_")))
    if not files:
        raise EttinError(f"{path}: no .parquet, .jsonl, .csv or .tsv files in this directory")
    return files


# ---------------------------------------------------------------------------------------------------------
# Validation of the text columns
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TextScan:
    """What the pre-pass found: total rows, and rows whose query or document is null."""

    rows: int = 0
    invalid: int = 0
    first_invalid: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "invalid_rows": self.invalid, "first_invalid_rows": self.first_invalid}


def text_column(table: Any, column: str, first_row: int, where: str) -> Any:
    """The column as a validated pyarrow string array: text type, valid UTF-8; nulls are kept."""
    import pyarrow as pa
    import pyarrow.types as pat

    col = table.column(column)
    kind = col.type
    if pat.is_dictionary(kind):
        col = col.cast(kind.value_type)
        kind = col.type
    if pat.is_null(kind):
        return col.cast(pa.string())
    if pat.is_large_string(kind) or pat.is_string_view(kind):
        col = col.cast(pa.string())
    elif pat.is_binary(kind) or pat.is_large_binary(kind):
        raise EttinError(f"{where}: column '{column}' holds binary data, not UTF-8 text (undecodable text)")
    elif not pat.is_string(kind):
        raise EttinError(f"{where}: column '{column}' holds {kind} values, not text")
    for chunk_start, chunk in _chunks_with_offsets(col):
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid as exc:
            detail = str(exc)
            row = first_row + chunk_start
            if "string index" in detail:
                row += int(detail.rsplit(" ", 1)[-1])
            raise EttinError(f"{where}: row {row}, column '{column}': undecodable text (not valid UTF-8)") from None
    return col


def _chunks_with_offsets(col: Any) -> Iterator[tuple[int, Any]]:
    offset = 0
    for chunk in col.chunks:
        yield offset, chunk
        offset += len(chunk)


def invalid_rows(table: Any, columns: tuple[str, ...], first_row: int, where: str) -> list[int]:
    """Input row numbers (ascending) where any of `columns` is null; also type- and UTF-8-checks them."""
    import numpy as np
    import pyarrow.compute as pc

    mask = np.zeros(table.num_rows, dtype=bool)
    for column in columns:
        col = text_column(table, column, first_row, where)
        if col.null_count:
            mask |= pc.is_null(col).to_numpy(zero_copy_only=False)
    return (np.flatnonzero(mask) + first_row).tolist()


def scan_text_columns(source: InputSource, query_column: str, document_column: str, *,
                      limit: int | None = None, batch_rows: int = 65536,
                      progress: Callable[[int], None] | None = None) -> TextScan:
    """Read only the two text columns once: row count, type/UTF-8 checks, and null rows (first few listed).

    Run before any scoring so that bad input fails at second 1, not at hour 60.
    """
    scan = TextScan()
    columns = [query_column] if query_column == document_column else [query_column, document_column]
    for start, table in source.iter_batches(batch_rows, columns=columns, limit=limit):
        bad = invalid_rows(table, tuple(columns), start, source.spec)
        scan.invalid += len(bad)
        room = MAX_REPORTED_ROWS - len(scan.first_invalid)
        if room > 0:
            scan.first_invalid.extend(bad[:room])
        scan.rows = start + table.num_rows
        if progress is not None:
            progress(table.num_rows)
    return scan


# ---------------------------------------------------------------------------------------------------------
# Format readers
# ---------------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return sha256_file(path)


def _parquet_footer_hash(path: Path) -> str:
    """SHA-256 of a parquet file's size and footer (schema, row groups, offsets, statistics), read by pyarrow."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except (pa.ArrowException, OSError) as exc:
        raise _arrow_error(path, exc, "not a readable parquet file") from None
    footer = json.dumps(meta.to_dict(), sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(str(path.stat().st_size).encode() + b"\0" + footer).hexdigest()


def _parquet_file(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # Buffered page reads: memory is bounded by the batch, not by a (possibly huge) column chunk.
        return pq.ParquetFile(path, buffer_size=PARQUET_BUFFER_BYTES)
    except (pa.ArrowException, OSError) as exc:
        raise _arrow_error(path, exc, "not a readable parquet file") from None


def _file_schema(path: Path):
    """A file's columns and types: the parquet footer, or the first block of a JSON lines / CSV file."""
    kind = EXTENSIONS[path.suffix.lower()]
    if kind == "parquet":
        return _parquet_file(path).schema_arrow
    reader = _open_json(path) if kind == "json" else _open_csv(path, None)
    return ids_as_text(reader.schema.empty_table()).schema


def _select_schema(schema: Any, columns: list[str]):
    import pyarrow as pa

    return pa.schema([schema.field(c) for c in columns])


def _conform(table: Any, target: Any, path: Path):
    """Put a batch in the reference schema (column order and types) so every shard has the same schema."""
    import pyarrow as pa

    if table.schema.equals(target):
        return table
    names = set(table.column_names)
    missing = [f.name for f in target if f.name not in names]
    if missing:
        raise EttinError(f"{path}: no column '{missing[0]}' (columns: {', '.join(table.column_names)})")
    table = table.select(target.names)
    try:
        return table.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _arrow_error(path, exc, "column types differ from the first input file") from None


def _ranges_hit(start: int, stop: int, wanted: RowRanges | None) -> bool:
    if wanted is None:
        return True
    return any(a < stop and start < b for a, b in wanted)


def _iter_parquet(path: Path, batch_rows: int, columns: list[str] | None, wanted: RowRanges | None,
                  offset: int) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa

    pf = _parquet_file(path)
    meta = pf.metadata
    position = 0
    for group in range(meta.num_row_groups):
        group_rows = meta.row_group(group).num_rows
        group_start = position
        position += group_rows
        if not _ranges_hit(offset + group_start, offset + position, wanted):
            continue
        start = group_start
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns):
                yield start, pa.Table.from_batches([batch])
                start += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise _arrow_error(path, exc, f"corrupt parquet data in row group {group}") from None


def _open_json(path: Path):
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        return pj.open_json(path, read_options=pj.ReadOptions(block_size=JSON_BLOCK_BYTES))
    except (pa.ArrowException, OSError) as exc:
        raise _arrow_error(path, exc, "not readable as JSON lines") from None
    except UnicodeDecodeError:
        raise EttinError(f"{path}: undecodable text (not valid UTF-8)") from None


def _iter_json(path: Path, batch_rows: int, columns: list[str] | None, wanted: RowRanges | None,
               offset: int) -> Iterator[tuple[int, Any]]:
    return _iter_reader(path, _open_json(path), "JSON lines", batch_rows, columns, offset)


def is_id_column(name: str) -> bool:
    """Columns that hold identifiers (`_id`, `query_id`, `doc_id`, `corpus-id`, `qid`, ...): read as text, so
    `010` stays `010` and matches the same id in qrels or in another file."""
    lowered = name.strip().lower()
    return lowered in _ID_NAMES or lowered.endswith(("_id", "-id", " id", ".id"))


_ID_NAMES = frozenset({"id", "_id", "qid", "pid", "did", "docid", "queryid", "corpusid", "docno", "qno"})


def _csv_header(path: Path, delimiter: str) -> list[str]:
    """The header row's names (decoding errors in it are left to the CSV reader, which names the row)."""
    import csv

    try:
        with open(path, "rb") as fh:
            first = fh.readline().decode("utf-8", errors="replace")
    except OSError as exc:
        raise EttinError(f"{path}: not readable ({exc.strerror})") from None
    return next(csv.reader([first], delimiter=delimiter), [])


def _open_csv(path: Path, columns: list[str] | None):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    ids = {name: pa.string() for name in _csv_header(path, delimiter) if is_id_column(name)}
    convert = pcsv.ConvertOptions(strings_can_be_null=False, include_columns=columns, column_types=ids)
    try:
        return pcsv.open_csv(path, convert_options=convert, parse_options=pcsv.ParseOptions(delimiter=delimiter))
    except (pa.ArrowException, OSError) as exc:
        raise _arrow_error(path, exc, f"not readable as {'TSV' if delimiter != ',' else 'CSV'}") from None


def ids_as_text(table: Any) -> Any:
    """Cast numeric id columns (a JSON `"query_id": 10`) to text, so ids compare equal across formats."""
    import pyarrow as pa
    import pyarrow.types as pat

    for i, field_ in enumerate(table.schema):
        if is_id_column(field_.name) and (pat.is_integer(field_.type) or pat.is_floating(field_.type)):
            table = table.set_column(i, pa.field(field_.name, pa.string()), table.column(i).cast(pa.string()))
    return table


def _iter_csv(path: Path, batch_rows: int, columns: list[str] | None, wanted: RowRanges | None,
              offset: int) -> Iterator[tuple[int, Any]]:
    # The CSV reader already dropped the other columns (include_columns).
    return _iter_reader(path, _open_csv(path, columns), "CSV", batch_rows, None, offset)


def _iter_reader(path: Path, reader: Any, what: str, batch_rows: int, columns: list[str] | None,
                 offset: int) -> Iterator[tuple[int, Any]]:
    """Slices of at most `batch_rows` rows from a streaming pyarrow JSON/CSV reader, with their row numbers."""
    import pyarrow as pa

    start = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise _arrow_error(path, exc, f"not readable as {what} after row {offset + start}") from None
        except UnicodeDecodeError:
            raise EttinError(f"{path}: undecodable text (not valid UTF-8) after row {offset + start}") from None
        table = ids_as_text(pa.Table.from_batches([batch]))
        if columns is not None:
            table = table.select(columns)
        for piece_start in range(0, table.num_rows, batch_rows):
            yield start + piece_start, table.slice(piece_start, batch_rows)
        start += table.num_rows


# ---------------------------------------------------------------------------------------------------------
# Hugging Face Hub datasets (streamed)
# ---------------------------------------------------------------------------------------------------------


def _load_stream(source: InputSource):
    import datasets

    try:
        ds = datasets.load_dataset(source.spec, source.config, split=source.split, streaming=True,
                                   revision=source.revision)
    except Exception as exc:  # unknown id, offline, bad config/split: all user-facing
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EttinError(f"{source.spec}: not a local file or directory, and not loadable as a Hugging Face "
                         f"dataset (config={source.config}, split={source.split}): {first}") from None
    return ds


def _hub_schema(source: InputSource):
    ds = _load_stream(source)
    if ds.features is not None:
        return ds.features.arrow_schema
    for _, table in _iter_hub(source, 64, None):  # features unknown until data is seen: peek one batch
        return table.schema
    raise EttinError(f"{source.spec}: the dataset split '{source.split}' has no rows")


def _iter_hub(source: InputSource, batch_rows: int, columns: list[str] | None) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa

    ds = _load_stream(source)
    if columns is not None:
        ds = ds.select_columns(columns)
    schema = ds.features.arrow_schema if ds.features is not None else None
    start = 0
    for batch in ds.iter(batch_size=batch_rows):
        table = pa.Table.from_pydict(batch, schema=schema) if schema is not None else pa.Table.from_pydict(batch)
        yield start, table
        start += table.num_rows


def _hub_revision(dataset: str) -> str | None:
    """The commit a Hub dataset id resolves to now, or None when the Hub cannot be asked."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset).sha
    except Exception:
        return None
