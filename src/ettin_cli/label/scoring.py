"""`ettin score`: label (query, document) pairs with a teacher into sharded parquet, resumable and rank-aware.

The loop is built for ~143M pairs through a 1.5B teacher, where a crash at hour 60 must cost minutes:

1. The input is opened and its text columns are checked in one cheap pass (types, UTF-8, nulls) before any
   scoring, so bad input fails at second 1. The pass is cached in the output directory.
2. Rows are cut into shards of `rows_per_shard` contiguous input rows; shard `i` belongs to rank
   `i % world_size` (torchrun's RANK/WORLD_SIZE, or `--num-shards/--shard-index` for job arrays). No process
   talks to another: each computes the same plan from the same input.
3. Each rank skips its shards that carry a valid completion record (size checked; checksum with --verify),
   and scores the rest
   in windows of `window_rows` pairs aligned to the shard start, so the batches (and the scores, bit for bit)
   do not depend on which rank, how many ranks, or which attempt scored the shard.
4. Shards stream into a temp file renamed into place, then get a completion record; the manifest is
   assembled from the records by whichever rank finishes last (see `ettin_cli.io.shards`).
"""

from __future__ import annotations

import itertools
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ettin_cli import __version__
from ettin_cli.core import console
from ettin_cli.core.console import logger
from ettin_cli.core.distributed import Rank, current_rank
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import atomic_path, local_model_identity, write_json_atomic
from ettin_cli.io.lifecycle import ShardedStep, run_step
from ettin_cli.io.shards import ShardedFolder, ShardWriter, manifest_path, sidecar_path
from ettin_cli.io.tables import invalid_rows, open_input, scan_text_columns, text_column
from ettin_cli.label.batching import ScoreStats
from ettin_cli.label.judges import builtin_dir
from ettin_cli.label.teacher import TeacherSpec, resolve_teacher

SCAN_FILE = "input_scan.json"
DEFAULT_ROWS_PER_SHARD = 100_000
DEFAULT_WINDOW_ROWS = 8192


@dataclass
class ScoreJob:
    """Everything `ettin score` needs; the CLI fills it from its options."""

    input: str
    output: Path
    teacher: Any  # a Hub id / local path, or an already loaded teacher (tests, notebooks)
    teacher_format: str = "auto"
    teacher_revision: str | None = None
    query_column: str = "query"
    document_column: str = "document"
    score_column: str = "score"
    config: str | None = None
    split: str = "train"
    input_revision: str | None = None
    max_length: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    attn: str = "auto"
    instruction: str | None = None
    batch_size: int | None = None
    max_tokens_per_batch: int | None = None
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    limit: int | None = None
    skip_invalid: bool = False
    overwrite: bool = False
    num_shards: int | None = None
    shard_index: int | None = None
    window_rows: int = DEFAULT_WINDOW_ROWS
    read_rows: int = 4096
    verify: bool = False  # hash finished shards (SHA-256) before skipping them


@dataclass
class ScoreResult:
    """What this process did, and the manifest if the whole output is now complete."""

    rank: Rank
    shards_total: int
    shards_owned: list[int]
    shards_skipped: list[int]
    shards_scored: list[int]
    rows_scored: int
    manifest: dict[str, Any] | None
    seconds: float = 0.0


def _check_job(job: ScoreJob) -> None:
    if job.rows_per_shard < 1:
        raise EttinError(f"--rows-per-shard must be >= 1, got {job.rows_per_shard}")
    if job.limit is not None and job.limit < 1:
        raise EttinError(f"--limit must be >= 1, got {job.limit}")
    if job.window_rows < 1 or job.read_rows < 1:
        raise EttinError("window and read sizes must be >= 1")
    if job.max_length is not None and job.max_length < 1:
        raise EttinError(f"--max-length must be >= 1, got {job.max_length}")
    if job.batch_size is not None and job.batch_size < 1:
        raise EttinError(f"--batch-size must be >= 1, got {job.batch_size}")
    if job.max_tokens_per_batch is not None and job.max_tokens_per_batch < 1:
        raise EttinError(f"--max-tokens-per-batch must be >= 1, got {job.max_tokens_per_batch}")


def _teacher_identity(job: ScoreJob) -> tuple[dict[str, Any], Any]:
    """(identity for the run config, a TeacherSpec to load later or the teacher object given)."""

    if isinstance(job.teacher, (str, Path)):
        spec = resolve_teacher(str(job.teacher), job.teacher_format, device=job.device, dtype=job.dtype,
                               attn=job.attn, revision=job.teacher_revision)
        name, path, revision, fmt, dtype = spec.name, spec.path, spec.revision, spec.format, spec.dtype
        judge = spec.judge
        handle: Any = spec
    else:
        t = job.teacher
        name, path, revision, fmt, dtype = t.name, Path(t.path), t.revision, t.format, t.dtype
        judge = getattr(t, "judge", None)
        handle = t
    identity = {
        # A Hub teacher is its id at a commit; a local one is its config plus weight sizes and mtimes (so moving
        # the folder is harmless, and no run hashes gigabytes of weights before its first pair).
        "teacher": name if revision else None,
        "teacher_revision": revision,
        "teacher_sha256": None if revision else local_model_identity(path),
        "format": fmt,
        "dtype": dtype,
    }
    if judge is not None and judge.source and Path(judge.source).parent != builtin_dir():
        # A user's own judge format file: its content is part of what produced the labels.
        identity["judge_format_sha256"] = judge.sha256
    return identity, handle


def _load_scan(output: Path, config_sha256: str) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(sidecar_path(output, SCAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("scan") if data.get("config_sha256") == config_sha256 else None


def _scan_input(job: ScoreJob, source: Any, config_sha256: str) -> dict[str, Any]:
    cached = _load_scan(Path(job.output), config_sha256) if Path(job.output).is_dir() else None
    if cached is not None:
        logger.debug("input check: reusing the cached pass in %s", job.output)
        return cached
    known = source.num_rows()
    total = min(job.limit, known) if job.limit and known is not None else (job.limit or known)
    with console.progress(total, "checking input", "rows") as bar:
        scan = scan_text_columns(source, job.query_column, job.document_column, limit=job.limit,
                                 progress=bar.advance).as_dict()
    return scan


def _pieces(source: Any, todo: list[int], ranges: dict[int, tuple[int, int]], job: ScoreJob,
            total_rows: int) -> Iterator[tuple[int, Any]]:
    """(shard index, table slice) for the rows of the shards in `todo`, in input order."""
    wanted = [ranges[i] for i in todo]
    pointer = 0
    for start, table in source.iter_batches(job.read_rows, limit=total_rows, wanted=wanted):
        end = start + table.num_rows
        while pointer < len(todo) and ranges[todo[pointer]][1] <= start:
            pointer += 1
        k = pointer
        while k < len(todo) and ranges[todo[k]][0] < end:
            lo, hi = max(ranges[todo[k]][0], start), min(ranges[todo[k]][1], end)
            if lo < hi:
                yield todo[k], table.slice(lo - start, hi - lo)
            k += 1


def _windows(pieces: Iterator[tuple[int, Any]], size: int) -> Iterator[Any]:
    """Re-cut a shard's slices into tables of exactly `size` rows (the last one shorter)."""
    import pyarrow as pa

    buffer: list[Any] = []
    buffered = 0
    for _, piece in pieces:
        while piece.num_rows:
            take = min(size - buffered, piece.num_rows)
            buffer.append(piece.slice(0, take))
            buffered += take
            piece = piece.slice(take)
            if buffered == size:
                yield pa.concat_tables(buffer)
                buffer, buffered = [], 0
    if buffered:
        yield pa.concat_tables(buffer)


def _merge_first(lists: list[list[int]], limit: int = 10) -> list[int]:
    return sorted(itertools.chain.from_iterable(lists))[:limit]


def summarize_records(records: list[dict[str, Any]], stats: ScoreStats, run_info: dict[str, Any]) -> dict[str, Any]:
    """Manifest fields computed from the shard records alone (`stats`: their summed teacher counts), so any
    rank that finalises writes the same."""
    rows = sum(int(r["rows"]) for r in records)
    stats_keys = ("truncated_pairs", "truncated_queries", "truncated_documents", "oom_splits", "tokens",
                  "padding_tokens", "batches")
    totals: dict[str, Any] = {"rows_scored": rows}
    for key in stats_keys:
        totals[key] = getattr(stats, key)
    processed = totals["tokens"] + totals["padding_tokens"]
    totals["padding_share"] = round(totals["padding_tokens"] / processed, 6) if processed else 0.0
    totals["skipped_invalid"] = sum(int(r.get("skipped_invalid", 0)) for r in records)
    totals["first_skipped_rows"] = _merge_first([r.get("first_skipped_rows", []) for r in records])
    totals["input_rows"] = sum(r["input_rows"][1] - r["input_rows"][0] for r in records)
    seconds = sum(float(r.get("seconds", 0.0)) for r in records)
    wall = max(r["finished_at"] for r in records) - min(r["started_at"] for r in records) if records else 0.0
    teacher_runtime = sorted({(r.get("teacher", {}).get("device"), r.get("teacher", {}).get("attn"),
                               r.get("teacher", {}).get("max_length")) for r in records}, key=str)
    max_lengths = sorted({r.get("teacher", {}).get("max_length") for r in records}, key=str)
    return {
        **run_info,
        "max_length": max_lengths[0] if len(max_lengths) == 1 else max_lengths,
        "runtime": [{"device": d, "attn": a, "max_length": m} for d, a, m in teacher_runtime],
        "totals": totals,
        "throughput": {
            "scoring_seconds": round(seconds, 3),
            "pairs_per_second_per_worker": round(rows / seconds, 3) if seconds else None,
            "wall_seconds": round(wall, 3),
            "pairs_per_second": round(rows / wall, 3) if wall else None,
        },
    }


class ScoreStep(ShardedStep[ScoreStats]):
    """Shard i holds input rows `[i*R, (i+1)*R)` plus their scores; the input is read once, in order, for the
    shards this rank does, and each shard is scored in windows aligned to its start."""

    name, unit, counts = "scoring", "pairs", ScoreStats

    def __init__(self, job: ScoreJob, source: Any, handle: Any, ranges: dict[int, tuple[int, int]],
                 total_rows: int, run_info: dict[str, Any], scan: dict[str, Any], rank: Rank):
        import pyarrow as pa

        self.job, self.source, self.handle, self.ranges = job, source, handle, ranges
        self.total_rows, self.run_info, self.scan, self.rank = total_rows, run_info, scan, rank
        self.output_existed = Path(job.output).exists()
        self.output_schema = source.schema.append(pa.field(job.score_column, pa.float32()))
        self.teacher: Any = None
        self.groups: Iterator[tuple[int, Iterator[tuple[int, Any]]]] = iter(())
        self.rows_scored = 0

    def shards(self) -> int:
        return len(self.ranges)

    def describe(self) -> str:
        return f"{self.job.input}"

    def schema(self, index: int) -> Any:
        return self.output_schema

    def units(self, index: int) -> int:
        return self.ranges[index][1] - self.ranges[index][0]

    def setup(self, todo: list[int]) -> None:
        job = self.job
        write_json_atomic(sidecar_path(job.output, SCAN_FILE), {"config_sha256": ShardedFolder(job.output)
                                                                 .config_sha256(), "scan": self.scan})
        try:
            self.teacher = (self.handle.load(job.max_length, job.instruction) if isinstance(self.handle, TeacherSpec)
                            else self.handle)
        except EttinError:
            if not self.output_existed:  # a refused teacher leaves no half-made output folder
                shutil.rmtree(job.output, ignore_errors=True)
            raise
        t = self.teacher
        logger.info("scoring %s rows in %d shards with %s (%s, %s) -> %s", f"{sum(map(self.units, todo)):,}",
                    len(todo), t.name, t.format, t.dtype, job.output)
        self.groups = itertools.groupby(_pieces(self.source, todo, self.ranges, job, self.total_rows),
                                        key=lambda p: p[0])

    def work(self, index: int, writer: ShardWriter) -> ScoreStats:
        """Score one shard window by window into its writer; the counts are the teacher's for this shard.

        Each scored window is also committed at once as a piece (`ShardedFolder.pieces_dir`: one parquet file,
        renamed into place, its counts in the file's metadata). A rerun after a kill takes the committed windows
        back instead of scoring them again, so an interruption loses at most the window in flight; the shard
        itself still appears atomically, with the same bytes as an uninterrupted run's.
        """
        job, rows, bar = self.job, self.ranges[index], writer.progress
        found, group = next(self.groups, (None, iter(())))
        if found != index:
            raise EttinError(f"{job.input}: the input ended before shard {index} (rows {rows[0]}-{rows[1] - 1}); "
                             "did it change during the run?")
        started = time.perf_counter()
        pieces = Pieces(ShardedFolder(job.output), index)
        total = ScoreStats()
        seen = skipped = 0
        first_skipped: list[int] = []
        for k, window in enumerate(_windows(group, job.window_rows)):
            first_row = rows[0] + seen
            seen += window.num_rows
            target = bar.done + window.num_rows
            piece = pieces.take(k, window.num_rows)
            if piece is None:
                piece = self._score_window(window, first_row, bar)
                pieces.commit(k, window.num_rows, piece)
            table, stats, bad = piece
            total += stats
            skipped += len(bad)
            first_skipped.extend(bad[: max(0, 10 - len(first_skipped))])
            writer.write(table)
            bar.advance_to(target)
        if seen != rows[1] - rows[0]:
            raise EttinError(f"{job.input}: shard {index} expected input rows {rows[0]}-{rows[1] - 1} but read "
                             f"{seen}; did the input change during the run?")
        teacher = self.teacher
        writer.extra.update({
            "input_rows": [rows[0], rows[1]],
            "skipped_invalid": skipped,
            "first_skipped_rows": first_skipped,
            "seconds": round(time.perf_counter() - started, 3),
            "teacher": {"device": teacher.device, "attn": teacher.attn, "max_length": teacher.max_length},
            "rank": self.rank.rank,
            "world_size": self.rank.world_size,
        })
        self.rows_scored += writer.rows
        return total

    def _score_window(self, window: Any, first_row: int, bar: Any) -> tuple[Any, ScoreStats, list[int]]:
        """(the window with its scores, the teacher's counts for it, input rows skipped as invalid)."""
        import numpy as np
        import pyarrow as pa

        job, teacher = self.job, self.teacher
        before = teacher.stats.copy()
        bad: list[int] = []
        if job.skip_invalid:
            bad = invalid_rows(window, (job.query_column, job.document_column), first_row, job.input)
            if bad:
                keep = np.ones(window.num_rows, dtype=bool)
                keep[np.asarray(bad) - first_row] = False
                window = window.filter(pa.array(keep))
        queries = text_column(window, job.query_column, first_row, job.input).to_pylist()
        documents = text_column(window, job.document_column, first_row, job.input).to_pylist()
        # The bar moves per batch when the teacher reports batches (`on_batch`), else per window: a shard
        # of 100,000 pairs on a 1.5B teacher is many minutes, far too long between updates.
        if hasattr(teacher, "on_batch"):
            teacher.on_batch = bar.advance
        try:
            scores = teacher.score(queries, documents, batch_size=job.batch_size,
                                   max_tokens_per_batch=job.max_tokens_per_batch)
        finally:
            if hasattr(teacher, "on_batch"):
                teacher.on_batch = None
        table = window.append_column(self.output_schema.field(job.score_column), pa.array(scores, type=pa.float32()))
        return table, teacher.stats - before, list(bad)

    def manifest_extra(self, records: list[dict[str, Any]], total: ScoreStats) -> dict[str, Any]:
        return summarize_records(records, total, self.run_info)


class Pieces:
    """The committed windows of one shard being scored (`.ettin/pieces/<shard>/<k>.parquet`), for this config.

    A piece is window k's output rows, written to a temp file and renamed (a kill leaves a whole piece or none);
    its metadata holds the config hash, the window's input rows, the teacher's counts and the skipped rows. Only
    an unbroken run of pieces 0..k-1 of the current config is taken back.
    """

    KEY = b"ettin_piece"

    def __init__(self, folder: ShardedFolder, index: int):
        self.root = folder.pieces_dir(index)
        self.digest = folder.config_sha256()
        self.usable = True

    def path(self, k: int) -> Path:
        return self.root / f"{k:06d}.parquet"

    def take(self, k: int, input_rows: int) -> tuple[Any, ScoreStats, list[int]] | None:
        """Window k as committed by an earlier attempt (rows, counts, skipped rows), or None to score it."""
        import json

        import pyarrow.parquet as pq

        if not self.usable or not self.path(k).is_file():
            self.usable = False
            return None
        try:
            table = pq.read_table(self.path(k))
            meta = json.loads((table.schema.metadata or {}).get(self.KEY, b"{}"))
        except Exception:  # noqa: BLE001 - an unreadable piece is scored again
            meta = {}
        if meta.get("config_sha256") != self.digest or meta.get("input_rows") != input_rows:
            self.usable = False
            return None
        return (table.replace_schema_metadata(self._plain(table.schema.metadata)), ScoreStats.from_dict(meta["stats"]),
                list(meta["skipped"]))

    def commit(self, k: int, input_rows: int, piece: tuple[Any, ScoreStats, list[int]]) -> None:
        import json

        import pyarrow.parquet as pq

        table, stats, bad = piece
        meta = {"config_sha256": self.digest, "input_rows": input_rows, "stats": stats.as_dict(), "skipped": bad}
        tagged = table.replace_schema_metadata({**(table.schema.metadata or {}), self.KEY: json.dumps(meta)})
        with atomic_path(self.path(k)) as tmp:
            pq.write_table(tagged, tmp)

    def _plain(self, metadata: dict[bytes, bytes] | None) -> dict[bytes, bytes] | None:
        rest = {k: v for k, v in (metadata or {}).items() if k != self.KEY}
        return rest or None


def run_score(job: ScoreJob) -> ScoreResult:
    """Score `job.input` into `job.output` (this rank's shards), then finalise the manifest if all are done."""

    began = time.perf_counter()
    _check_job(job)
    rank = current_rank(job.num_shards, job.shard_index)
    output = ShardedFolder(job.output)
    if output.root.exists() and not output.root.is_dir():  # before the (slow) input checks
        raise EttinError(f"--output {output.root}: is a file, not a directory")

    source = open_input(job.input, config=job.config, split=job.split, revision=job.input_revision)
    source.require_columns(job.query_column, job.document_column)
    if job.score_column in source.column_names:
        raise EttinError(f"{job.input}: already has a column '{job.score_column}'; name the new one with "
                         "--score-column")
    identity, handle = _teacher_identity(job)
    fingerprint = source.fingerprint()
    config = {
        "step": "score",
        **identity,
        "max_length": job.max_length,
        "instruction": job.instruction,
        "input": {k: v for k, v in fingerprint.items() if k != "path"},
        "query_column": job.query_column,
        "document_column": job.document_column,
        "score_column": job.score_column,
        "rows_per_shard": job.rows_per_shard,
        "limit": job.limit,
        "skip_invalid": job.skip_invalid,
    }
    # Everything is validated before anything is written: a refused run leaves no trace in --output.
    config_sha = output.check(config, job.overwrite)
    scan = _scan_input(job, source, config_sha)
    total_rows = int(scan["rows"])
    if total_rows == 0:
        raise EttinError(f"{job.input}: no rows to score")
    if scan["invalid_rows"] >= total_rows:  # with --skip-invalid: nothing left, refused before the teacher loads
        raise EttinError(f"{job.input}: 0 rows to write: all {total_rows} rows have a null '{job.query_column}' or "
                         f"'{job.document_column}'")
    if scan["invalid_rows"] and not job.skip_invalid:
        first = ", ".join(str(r) for r in scan["first_invalid_rows"])
        raise EttinError(f"{job.input}: {scan['invalid_rows']} rows with a null '{job.query_column}' or "
                         f"'{job.document_column}' (first input rows, 0-based: {first}); fix them or pass "
                         "--skip-invalid")
    n_shards = math.ceil(total_rows / job.rows_per_shard)
    ranges = {i: (i * job.rows_per_shard, min((i + 1) * job.rows_per_shard, total_rows)) for i in range(n_shards)}
    run_info = {
        "teacher": identity["teacher"] or (str(job.teacher) if isinstance(job.teacher, (str, Path))
                                           else job.teacher.name),
        "teacher_revision": identity["teacher_revision"],
        "teacher_sha256": identity["teacher_sha256"],
        "format": identity["format"],
        "dtype": identity["dtype"],
        "instruction": job.instruction,
        "input": fingerprint,
        "input_check": scan,
        "environment": _environment(),
        "tool_version": __version__,
    }
    step = ScoreStep(job, source, handle, ranges, total_rows, run_info, scan, rank)
    run = run_step(step, output, config, rank=rank, overwrite=job.overwrite, verify=job.verify)
    for index in run.records:  # a finished shard's committed windows are no longer needed
        shutil.rmtree(output.pieces_dir(index), ignore_errors=True)
    if run.manifest is None:
        logger.info("this worker's shards are done; the manifest is written once every shard is finished")
    else:
        logger.info("wrote %d shards (%s rows) and %s", n_shards, f"{run.manifest['totals']['rows']:,}",
                    manifest_path(output.root))
    return ScoreResult(rank=rank, shards_total=n_shards, shards_owned=run.owned, shards_skipped=run.skipped,
                       shards_scored=run.done, rows_scored=step.rows_scored, manifest=run.manifest,
                       seconds=time.perf_counter() - began)


def _environment() -> dict[str, str]:
    import platform

    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
