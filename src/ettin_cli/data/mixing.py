"""The whole training mix from `recipes/data.yaml` (`ettin mix`): 39 subsets, per-source caps, a held-out split.

The published set keeps "one subset per source, provenance visible" (RECIPE.md, "The data"), so the mix is one
output directory per subset (`OUT/<name>/part-*.parquet` + manifest), never one shuffled blob, plus
`OUT/validation/` and `OUT/summary.json` (rows per subset). Each source is a Hub dataset (id + config + split,
streamed through `tables.open_input`) or a local parquet/jsonl/csv file or folder (`--source NAME=PATH`).

- **Cap**: a source with more rows than its `cap` contributes a uniform random sample of `cap` rows, drawn from
  a generator seeded by `(seed, source name)`; the sampled rows keep their source order. Sampling row numbers
  first and then streaming the source once keeps memory at O(cap) integers, whatever the source size.
- **Validation**: the last `rows` rows of the validation source (`quora`: "5K rows, the tail") go to
  `OUT/validation/` and never to training: they are cut from that source before its cap, and any training row
  of any subset whose (query, document) pair equals a validation pair is dropped and counted, so a duplicate
  elsewhere cannot leak the eval rows into training.
- **Resumable**: every subset is a sharded output (`shards.py`); a rerun skips finished subsets and finished
  shards, and refuses to mix outputs of a different configuration unless `--overwrite`.

Rows with an empty query or document are dropped and counted (a 100M-row source is not refused for one bad
row); a missing column, an unreadable source or a bad cap is a one-line error before anything is written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ettin_cli.core import console
from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import write_json_atomic
from ettin_cli.data import upstream_filter
from ettin_cli.io import tables
from ettin_cli.io.lifecycle import Counts, ShardedStep, run_stream
from ettin_cli.io.shards import ShardedFolder, config_hash, is_finished, is_sharded_output
from ettin_cli.io.tables import text_column

GROUPS = ("pre-training", "retrieval")
OUTPUT_COLUMNS = ("query", "document", "score")
VALIDATION = "validation"


@dataclass
class SourceSpec:
    """One subset of the mix: where its rows come from, how many to keep, and which columns hold the text."""

    name: str
    group: str = "pre-training"
    hub: str | None = None
    config: str | None = None
    split: str = "train"
    cap: int | None = None
    columns: dict[str, str] = field(default_factory=lambda: {"query": "query", "document": "document"})
    requires: str | None = None
    status: str | None = None
    path: str | None = None  # a local override (file or folder) instead of the Hub id

    @property
    def origin(self) -> str:
        if self.path:
            return str(self.path)
        return f"{self.hub} ({self.config + ', ' if self.config else ''}{self.split})"


@dataclass
class MixPlan:
    """Everything `build_mix` needs, validated: the sources, the held-out rows, the seed, the shard size."""

    sources: list[SourceSpec]
    validation_source: SourceSpec | None
    validation_rows: int
    seed: int = 12
    rows_per_shard: int = 500_000


def check_cap(value: Any, where: str) -> int | None:
    """A cap is null (no cap) or a positive integer; anything else is a one-line error naming where."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EttinError(f"{where}: cap must be a positive integer or null, got {value!r}")
    return value


def parse_cap(text: str) -> int | None:
    """The `N` of a `--cap NAME=N` option (`none` lifts the recipe's cap)."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise EttinError(f"--cap: '{text}' is not an integer") from None
    return check_cap(value, "--cap")


def parse_assignments(values: list[str], option: str) -> dict[str, str]:
    """`["a=x", "b=y"]` -> `{"a": "x", "b": "y"}` for `--source`/`--cap`."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, rhs = value.partition("=")
        if not sep or not name.strip() or not rhs.strip():
            raise EttinError(f"{option} '{value}': expected NAME=VALUE")
        out[name.strip()] = rhs.strip()
    return out


def load_plan(recipe: dict[str, Any], where: str = "recipes/data.yaml") -> MixPlan:
    """Read and check the `sources:` and `mix:` sections of a data recipe."""
    raw = recipe.get("sources")
    if not isinstance(raw, list) or not raw:
        raise EttinError(f"{where}: 'sources' must be a non-empty list")
    known = set(SourceSpec.__dataclass_fields__)
    sources: list[SourceSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise EttinError(f"{where}: sources[{i}] needs a 'name'")
        name = str(entry["name"])
        here = f"{where}: source '{name}'"
        if name in seen:
            raise EttinError(f"{here}: the name is used twice")
        if name == VALIDATION:
            raise EttinError(f"{here}: '{VALIDATION}' is reserved for the held-out split")
        seen.add(name)
        spec = SourceSpec(**{k: v for k, v in entry.items() if k in known})
        spec.cap = check_cap(entry.get("cap"), here)
        if spec.group not in GROUPS:
            raise EttinError(f"{here}: group must be one of {', '.join(GROUPS)}, got '{spec.group}'")
        if not spec.hub and not spec.path:
            raise EttinError(f"{here}: needs a 'hub' id or a 'path'")
        cols = dict(spec.columns or {})
        for needed in ("query", "document"):
            if not cols.get(needed):
                raise EttinError(f"{here}: columns needs a '{needed}' entry")
        spec.columns = cols
        sources.append(spec)
    mix = recipe.get("mix") or {}
    val = mix.get("validation") or {}
    val_source = None
    val_rows = 0
    if val:
        names = {s.name: s for s in sources}
        if val.get("source") not in names:
            raise EttinError(f"{where}: mix.validation.source '{val.get('source')}' is not one of the sources")
        if val.get("take", "tail") != "tail":
            raise EttinError(f"{where}: mix.validation.take must be 'tail' (the recipe holds out the tail)")
        val_rows = check_cap(val.get("rows"), f"{where}: mix.validation.rows") or 0
        val_source = names[val["source"]]
    seed = mix.get("seed", 12)
    per_shard = check_cap(mix.get("rows_per_shard", 500_000), f"{where}: mix.rows_per_shard") or 500_000
    return MixPlan(sources=sources, validation_source=val_source, validation_rows=val_rows, seed=int(seed),
                   rows_per_shard=per_shard)


def apply_options(plan: MixPlan, *, overrides: dict[str, str] | None = None, caps: dict[str, str] | None = None,
                  sources_dir: str | Path | None = None, only: list[str] | None = None,
                  skip: list[str] | None = None) -> MixPlan:
    """Apply the command line: local paths for sources, cap changes, and which subsets to build."""
    names = {s.name: s for s in plan.sources}
    for option, mapping in (("--source", overrides or {}), ("--cap", caps or {})):
        for name in mapping:
            if name not in names:
                raise EttinError(f"{option} {name}=...: no source named '{name}' in the data recipe")
    for name, path in (overrides or {}).items():
        if not Path(path).exists():
            raise EttinError(f"--source {name}={path}: no such file or folder")
        names[name].path = str(path)
    for name, cap in (caps or {}).items():
        names[name].cap = parse_cap(cap)
    if sources_dir is not None:
        root = Path(sources_dir)
        if not root.is_dir():
            raise EttinError(f"--sources-dir {root}: not a folder")
        for spec in plan.sources:
            if spec.path is None:
                for suffix in ("", ".parquet", ".jsonl", ".csv"):
                    candidate = root / f"{spec.name}{suffix}"
                    if candidate.exists():
                        spec.path = str(candidate)
                        break
    for option, chosen in (("--only", only), ("--skip", skip)):
        for name in chosen or []:
            if name not in names:
                raise EttinError(f"{option} {name}: no source named '{name}' in the data recipe")
    selected = [s for s in plan.sources if (not only or s.name in only) and s.name not in (skip or [])]
    if not selected:
        raise EttinError("no sources left to build (check --only/--skip)")
    plan.sources = selected
    return plan


# --------------------------------------------------------------------------------------------------------------
# Reading a source.


def _paths_of(path: Path, verify: bool = False) -> Path | list[Path]:
    """A folder written by `ettin score`/`select`/`mix` (manifest + shards) is read through its shard list."""
    if path.is_dir() and is_sharded_output(path):
        return list(ShardedFolder(path).shards(verify=verify))
    return path


class SourceReader:
    """Row count and batches of one source, through `tables.open_input` (local files or a streamed Hub id)."""

    def __init__(self, spec: SourceSpec, verify: bool = False):
        self.spec = spec
        if spec.path:
            target = _paths_of(Path(spec.path), verify)
            if isinstance(target, list):
                self.inputs = [tables.open_input(p) for p in target]
            else:
                self.inputs = [tables.open_input(target)]
        else:
            if spec.requires == "select":
                raise EttinError(f"source '{spec.name}' ({spec.group}): the raw candidates of {spec.hub} must be "
                                 f"scored and selected first (ettin mine --lists, ettin score, ettin select); "
                                 f"pass --source {spec.name}=DIR with the select output, or leave it out with "
                                 f"--skip {spec.name}")
            self.inputs = [tables.open_input(spec.hub, config=spec.config, split=spec.split)]
        names = self.inputs[0].column_names
        for out_name in ("query", "document"):
            column = spec.columns[out_name]
            if column not in names:
                raise EttinError(f"source '{spec.name}' ({spec.origin}): no column '{column}' for the {out_name} "
                                 f"(columns: {', '.join(names)})")
        score_col = spec.columns.get("score")
        self.score_column = score_col if score_col and score_col in names else None
        self.read_columns = [spec.columns["query"], spec.columns["document"]] + (
            [self.score_column] if self.score_column else [])
        self._count: int | None = None

    def num_rows(self) -> int:
        """Total rows: parquet footers or the Hub dataset's split info when possible, else one pass over the
        query column (the sample's row numbers and the held-out tail need it before rows are written)."""
        if self._count is None:
            total = 0
            for source in self.inputs:
                known = source.num_rows() if source.kind == "files" else _hub_num_rows(source)
                if known is None:
                    known = 0
                    for start, table in source.iter_batches(65_536, columns=[self.spec.columns["query"]]):
                        known = start + table.num_rows
                total += known
            self._count = total
        return self._count

    def iter_batches(self, wanted: list[tuple[int, int]] | None = None) -> Iterator[tuple[int, Any]]:
        """`(first_row, table)` with columns renamed to query/document[/score], across every input file."""
        offset = 0
        for source in self.inputs:
            local = None
            if wanted is not None:
                local = [(a - offset, b - offset) for a, b in wanted if b > offset]
            last = 0
            for start, table in source.iter_batches(8192, columns=self.read_columns, wanted=local):
                yield offset + start, _standardize(table, self.spec, self.score_column)
                last = start + table.num_rows
            known = source.num_rows()
            offset += known if known is not None else last


def _hub_num_rows(source: Any) -> int | None:
    """A Hub split's row count from its dataset card metadata (no data download), or None when unknown."""
    try:
        import datasets

        builder = datasets.load_dataset_builder(source.spec, source.config, revision=source.revision)
        split = (builder.info.splits or {}).get(source.split)
        return int(split.num_examples) if split is not None and split.num_examples else None
    except Exception:  # noqa: BLE001 - offline or no metadata: fall back to counting the rows
        return None


def _standardize(table: Any, spec: SourceSpec, score_column: str | None) -> Any:
    import pyarrow as pa

    where = f"source '{spec.name}' ({spec.origin})"
    arrays = [text_column(table, spec.columns["query"], 0, where),
              text_column(table, spec.columns["document"], 0, where)]
    names = ["query", "document"]
    if score_column:
        try:
            arrays.append(table.column(score_column).cast(pa.float32()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise EttinError(f"{where}: column '{score_column}' is not numeric") from None
        names.append("score")
    return pa.Table.from_arrays(arrays, names=names)


def pair_key(query: str, document: str) -> bytes:
    """A 16-byte digest of a (query, document) pair: what 'the same row' means for the hold-out check."""
    return hashlib.blake2b(query.encode("utf-8") + b"\x00" + document.encode("utf-8"), digest_size=16).digest()


def sample_rows(total: int, cap: int | None, seed: int, name: str) -> np.ndarray | None:
    """Sorted row numbers of a seeded uniform sample of `cap` out of `total` (None: keep every row)."""
    if cap is None or cap >= total:
        return None
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    rng = np.random.default_rng([seed & 0xFFFFFFFF, int.from_bytes(digest, "little")])
    return np.sort(rng.choice(total, size=cap, replace=False))


# --------------------------------------------------------------------------------------------------------------
# Building.


@dataclass
class SubsetReport:
    """One line of the summary table."""

    name: str
    group: str
    origin: str
    source_rows: int = 0
    held_out: int = 0
    cap: int | None = None
    sampled: int = 0
    dropped_empty: int = 0
    dropped_in_validation: int = 0
    dropped_flagged: int = 0  # upstream `drop` not False (data/upstream_filter.py)
    dropped_duplicate: int = 0  # upstream `duplicate` set
    rows: int = 0
    has_score: bool = False
    status: str | None = None
    skipped: bool = False  # already complete from an earlier run

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SubsetStep(ShardedStep[Counts]):
    """One subset of the mix as a sharded output: its rows are a stream (`lifecycle.run_stream`), cut into
    shards of `rows_per_shard`; the subset's report (drop counts included) goes into the manifest, so a rerun
    that skips the finished subset still reports what it did."""

    unit = "rows"

    def __init__(self, report: SubsetReport):
        self.report = report
        self.name = f"mix {report.name}"

    def describe(self) -> str:
        r = self.report
        return (f"source '{r.name}' ({r.origin}): {r.sampled:,} rows taken, {r.dropped_empty:,} empty, "
                f"{r.dropped_in_validation:,} in validation, {r.dropped_flagged + r.dropped_duplicate:,} flagged "
                "upstream")

    def manifest_extra(self, records: list[dict[str, Any]], total: Counts) -> dict[str, Any]:
        self.report.rows = sum(int(r["rows"]) for r in records)
        return {"subset": self.report.name, "report": self.report.as_dict()}


def _write_subset(out: Path, config: dict[str, Any], batches: Iterator[Any], rows_per_shard: int, overwrite: bool,
                  verify: bool, bar: Any, report: SubsetReport) -> int:
    """Stream `batches` (already filtered, standardized) into the sharded folder `out/<subset>`; returns rows."""

    def advancing() -> Iterator[Any]:
        for table in batches:
            bar.advance(table.num_rows)
            yield table

    run_stream(SubsetStep(report), ShardedFolder(out / report.name), config, advancing(), rows_per_shard,
               record={"subset": report.name}, overwrite=overwrite, verify=verify)
    return report.rows


def _clean(table: Any, report: SubsetReport, exclude: set[bytes] | None) -> Any:
    """Drop rows with an empty query/document, and (for training subsets) rows equal to a validation pair."""
    import pyarrow.compute as pc

    q, d = table.column("query"), table.column("document")
    ok = pc.and_(pc.and_(pc.is_valid(q), pc.is_valid(d)),
                 pc.and_(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(q.fill_null(""))), 0),
                         pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(d.fill_null(""))), 0)))
    kept = table.filter(ok)
    report.dropped_empty += table.num_rows - kept.num_rows
    if exclude:
        mask = [pair_key(a, b) not in exclude for a, b in zip(kept.column("query").to_pylist(),
                                                               kept.column("document").to_pylist(), strict=True)]
        before = kept.num_rows
        import pyarrow as pa

        kept = kept.filter(pa.array(mask, type=pa.bool_()))
        report.dropped_in_validation += before - kept.num_rows
    return kept


def _take_rows(reader: SourceReader, rows: np.ndarray | None, stop: int) -> Iterator[Any]:
    """Stream the source's rows [0, stop), keeping only `rows` (sorted row numbers) when given."""
    import pyarrow as pa

    wanted = [(0, stop)] if rows is None else _ranges(rows)
    for start, table in reader.iter_batches(wanted=wanted):
        if start >= stop:
            return
        table = table.slice(0, max(0, stop - start))
        if rows is not None:
            lo, hi = np.searchsorted(rows, [start, start + table.num_rows])
            local = rows[lo:hi] - start
            table = table.take(pa.array(local, type=pa.int64()))
        if table.num_rows:
            yield table


def _ranges(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted row numbers -> merged [start, stop) ranges (lets parquet skip row groups with none of them)."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1)
    starts = np.concatenate([[rows[0]], rows[breaks + 1]])
    stops = np.concatenate([rows[breaks] + 1, [rows[-1] + 1]])
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def build_mix(plan: MixPlan, output: str | Path, *, overwrite: bool = False,
              verify: bool = False) -> list[SubsetReport]:
    """Write every selected subset and the validation split; returns (and saves) the rows-per-subset summary.

    `verify`: hash (SHA-256) the shards of local sharded sources and of finished subsets before using them.
    """
    out = Path(output)
    # Open every source first: a missing column or an unreadable source fails before anything is written.

    readers = {spec.name: upstream_filter.wrap(SourceReader(spec, verify)) for spec in plan.sources}
    val_reader = None
    if plan.validation_source is not None and plan.validation_rows:
        val_reader = readers.get(plan.validation_source.name) or upstream_filter.wrap(
            SourceReader(plan.validation_source, verify))
    if out.exists() and not out.is_dir():
        raise EttinError(f"--output {out}: is a file, not a directory")
    for reader in readers.values():  # row counts and upstream flags first: a bad flag column writes nothing
        reader.num_rows()
    out.mkdir(parents=True, exist_ok=True)
    reports: list[SubsetReport] = []
    exclude: set[bytes] = set()
    holdout_start: int | None = None
    if val_reader is not None:
        spec = val_reader.spec
        total = val_reader.num_rows()
        if total <= plan.validation_rows:
            raise EttinError(f"source '{spec.name}' ({spec.origin}) has {total:,} rows, not more than the "
                             f"{plan.validation_rows:,} validation rows held out from its tail")
        holdout_start = total - plan.validation_rows
        report = SubsetReport(VALIDATION, spec.group, f"{spec.origin}, last {plan.validation_rows:,} rows",
                              source_rows=total, held_out=plan.validation_rows, has_score=bool(val_reader.score_column))
        config = {"step": "mix", "subset": VALIDATION, "source": spec.origin, "rows": plan.validation_rows,
                  "from_row": holdout_start, "has_score": report.has_score}
        validation_tables: list[Any] = []
        with console.progress(plan.validation_rows, f"mix {VALIDATION}", unit="rows") as bar:
            for table in _tail(val_reader, holdout_start, total):
                validation_tables.append(_clean(table, report, None))
            for t in validation_tables:
                for a, b in zip(t.column("query").to_pylist(), t.column("document").to_pylist(), strict=True):
                    exclude.add(pair_key(a, b))
            report.sampled = sum(t.num_rows for t in validation_tables)
            report.rows = _write_subset(out, config, iter(validation_tables), plan.rows_per_shard, overwrite,
                                        verify, bar, report)
        reports.append(report)
    exclude_digest = hashlib.sha256(b"".join(sorted(exclude))).hexdigest() if exclude else None
    for spec in plan.sources:
        reader = readers[spec.name]
        total = reader.num_rows()
        stop = holdout_start if (val_reader is not None and spec.name == val_reader.spec.name) else total
        rows = sample_rows(stop, spec.cap, plan.seed, spec.name)
        report = SubsetReport(spec.name, spec.group, spec.origin, source_rows=total, held_out=total - stop,
                              cap=spec.cap, sampled=stop if rows is None else len(rows),
                              has_score=bool(reader.score_column), status=spec.status)
        upstream_filter.annotate(report, reader)
        config = {"step": "mix", "subset": spec.name, "source": spec.origin, "cap": spec.cap, "seed": plan.seed,
                  "source_rows": total, "stop": stop, "validation": exclude_digest, "has_score": report.has_score}
        done = _finished_report(out / spec.name, config, verify) if not overwrite else None
        if done is not None:
            report = done
            logger.info(f"mix: {spec.name} already complete ({report.rows:,} rows), skipped")
            reports.append(report)
            continue
        with console.progress(report.sampled, f"mix {spec.name}", unit="rows") as bar:
            batches = (_clean(t, report, exclude) for t in _take_rows(reader, rows, stop))
            report.rows = _write_subset(out, config, batches, plan.rows_per_shard, overwrite, verify, bar, report)
        logger.info(f"mix: {spec.name}: {report.rows:,} rows from {spec.origin}")
        reports.append(report)
    write_json_atomic(out / "summary.json", {"subsets": [r.as_dict() for r in reports],
                                             "train_rows": sum(r.rows for r in reports if r.name != VALIDATION),
                                             "validation_rows": sum(r.rows for r in reports if r.name == VALIDATION),
                                             "seed": plan.seed})
    return reports


def _tail(reader: SourceReader, start: int, stop: int) -> Iterator[Any]:
    for first, table in reader.iter_batches(wanted=[(start, stop)]):
        lo, hi = max(start - first, 0), min(stop - first, table.num_rows)
        if hi > lo:
            yield table.slice(lo, hi - lo)


def _finished_report(directory: Path, config: dict[str, Any], verify: bool = False) -> SubsetReport | None:
    """The saved report of a finished subset built with exactly `config` (every shard checked), else None."""
    if not is_finished(directory):
        return None
    folder = ShardedFolder(directory)
    try:
        manifest = folder.manifest()
    except EttinError:
        return None
    if manifest.get("config_sha256") != config_hash(config) or "report" not in manifest:
        return None
    try:
        folder.shards(verify=verify)  # sizes (and checksums with verify) still match
    except EttinError:
        return None
    report = SubsetReport(**manifest["report"])
    report.skipped = True
    return report


def _table(title: str, headers: list[str], rows: list[list[str]], numeric: set[str]) -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="right" if header in numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    # Off a terminal (a log file, a pipe) rich would assume 80 columns and fold every cell.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def print_sources(plan: MixPlan) -> None:
    """`ettin mix --list`: name, group, origin, cap and status of every selected source."""
    rows = [[s.name, s.group, s.origin, "none" if s.cap is None else f"{s.cap:,}", s.status or "",
             s.requires or ""] for s in plan.sources]
    _table(f"{len(plan.sources)} sources", ["subset", "group", "origin", "cap", "status", "requires"], rows,
           {"cap"})
    if plan.validation_source is not None and plan.validation_rows:
        print(f"validation: last {plan.validation_rows:,} rows of '{plan.validation_source.name}'")


def print_summary(reports: list[SubsetReport]) -> None:
    """The rows-per-subset table printed at the end of `ettin mix` (also in OUT/summary.json)."""
    rows = []
    for r in reports:
        rows.append([r.name, r.group, f"{r.source_rows:,}", f"{r.held_out:,}",
                     "none" if r.cap is None else f"{r.cap:,}", f"{r.dropped_flagged:,}/{r.dropped_duplicate:,}",
                     f"{r.dropped_empty:,}",
                     f"{r.dropped_in_validation:,}", f"{r.rows:,}", "yes" if r.has_score else "no",
                     "skipped (done)" if r.skipped else ""])
    train = sum(r.rows for r in reports if r.name != VALIDATION)
    _table(f"training mix: {train:,} rows in {sum(r.name != VALIDATION for r in reports)} subsets",
           ["subset", "group", "source rows", "held out", "cap", "drop/duplicate", "empty", "in validation", "rows",
            "score", ""],
           rows, {"source rows", "held out", "cap", "empty", "in validation", "rows"})
