"""Choosing which teacher-scored candidates of each query become training pairs (`ettin select`).

The published retrieval subsets were built in two cuts per query (RECIPE.md, "The data"):

1. **Subsample** the up-to-2048 teacher-scored candidates to `keep` (256): every labelled positive, the `hard`
   (16) highest-scored other candidates, and the rest stratified across the teacher-score quantiles of what is
   left (quantile anchors), so the kept set still spans easy, medium and hard negatives instead of being all
   near-duplicates of the top.
2. **Pick** `head + band_count` (32 + 32 = 64) of those for training: the head of the teacher's ranking (the
   positives and the hardest negatives) plus `band_count` medium negatives sampled from a rank band further
   down. The head teaches the fine order at the top; the band keeps the student calibrated on the middle of
   the score range, where a pointwise MSE student otherwise drifts.

Everything random draws from a generator seeded by `(seed, query_id)`, so a query's selection does not depend
on which shard, rank or run it is processed in: same input and seed give byte-identical output.

Input is the sharded output of `ettin score` (rows of one query contiguous, as `ettin mine` writes them);
queries are streamed one at a time, so memory holds one input batch and one query's candidates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ettin_cli.core.distributed import current_rank
from ettin_cli.core.errors import EttinError
from ettin_cli.core.recipes import from_recipe
from ettin_cli.io.lifecycle import Counts, ShardedStep, run_step
from ettin_cli.io.shards import ShardedFolder, ShardWriter, is_sharded_output

# Roles written to the `selected_by` column: why a row was kept.
POSITIVE, HEAD, BAND, FILL = "positive", "head", "band", "fill"


@dataclass(frozen=True)
class SelectionConfig:
    """The two cuts' sizes; defaults live in `recipes/data.yaml` (`selection:`)."""

    keep: int = 256
    hard: int = 16
    head: int = 32
    band_count: int = 32
    band: tuple[int, int] = (64, 192)
    seed: int = 12

    @classmethod
    def from_recipe(cls, section: dict[str, Any], where: str = "recipes/data.yaml",
                    **overrides: Any) -> SelectionConfig:
        """The recipe's `selection:` with the options given (not None) on top; `band` as `START:END` or a pair."""
        band = overrides.pop("band", None)
        band = parse_band(band) if isinstance(band, str) else band
        if band is None and "band" in section:
            band = section["band"]
            if not isinstance(band, (list, tuple)) or len(band) != 2:
                raise EttinError(f"{where}: selection.band must be [START, END]")
        config = from_recipe(cls, section, **overrides, band=None if band is None else (int(band[0]), int(band[1])))
        return config

    @property
    def per_query(self) -> int:
        """Rows per query in the training set: the head plus the band sample."""
        return self.head + self.band_count

    def validate(self) -> SelectionConfig:
        """One-line errors for sizes that cannot be honoured; returns self so calls chain."""
        for name in ("keep", "head"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise EttinError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        for name in ("hard", "band_count"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise EttinError(f"--{name.replace('_', '-')} must be zero or a positive integer, got {value}")
        if self.hard > self.keep:
            raise EttinError(f"--hard {self.hard} is more than the {self.keep} candidates kept (--keep)")
        if self.per_query > self.keep:
            raise EttinError(f"--head {self.head} + --band-count {self.band_count} = {self.per_query} is more than "
                             f"the {self.keep} candidates kept per query (--keep)")
        start, end = self.band
        if not (0 <= start < end):
            raise EttinError(f"--band {start}:{end}: need 0 <= START < END (0-based ranks, END excluded)")
        if end > self.keep:
            raise EttinError(f"--band {start}:{end} is outside the {self.keep} candidates kept per query "
                             f"(--keep {self.keep}): END must be at most {self.keep}")
        usable = end - max(start, self.head)
        if usable < self.band_count:
            raise EttinError(f"--band {start}:{end} holds {max(usable, 0)} ranks below the head of {self.head}, "
                             f"fewer than --band-count {self.band_count}")
        return self

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["band"] = list(self.band)
        data["per_query"] = self.per_query
        return data


def parse_band(text: str) -> tuple[int, int]:
    """`"64:192"` -> `(64, 192)`: 0-based teacher ranks, END excluded (Python slice semantics)."""
    parts = str(text).split(":")
    if len(parts) != 2:
        raise EttinError(f"--band '{text}': expected START:END, e.g. 64:192")
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise EttinError(f"--band '{text}': START and END must be integers") from None


def query_rng(seed: int, query_id: object) -> np.random.Generator:
    """A generator that depends only on `(seed, query_id)`: selection is independent of sharding and order."""
    digest = hashlib.blake2b(str(query_id).encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(digest, "little")])


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Candidate indices best first by teacher score; ties keep input order (stable, deterministic)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(len(scores)), -scores))


def subsample(scores: np.ndarray, positive: np.ndarray, keep: int, hard: int,
              rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Cut one query's candidates to `keep`: positives + `hard` top-scored others + quantile-stratified rest.

    Returns candidate indices (in teacher-rank order) and each one's role. With `n <= keep` candidates all are
    kept. The stratified part splits the remaining candidates, ranked by teacher score, into as many
    equal-count strata as slots are left (the strata are the score quantiles) and draws one per stratum.
    More positives than `keep` are all kept: a labelled positive is never dropped.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = rank_order(scores)
    if len(scores) <= keep:
        return order, [POSITIVE if positive[i] else HEAD for i in order]
    pos = order[positive[order]]
    others = order[~positive[order]]
    n_hard = max(0, min(hard, keep - len(pos)))
    hard_idx = others[:n_hard]
    rest = others[n_hard:]
    slots = max(0, keep - len(pos) - n_hard)
    picks: list[int] = []
    if slots:
        bounds = np.floor(np.linspace(0, len(rest), slots + 1)).astype(int)
        picks = [int(rest[rng.integers(lo, hi)]) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    roles = {int(i): POSITIVE for i in pos}
    roles.update({int(i): HEAD for i in hard_idx})
    roles.update({i: BAND for i in picks})
    chosen = [int(i) for i in order if int(i) in roles]
    return np.asarray(chosen, dtype=np.int64), [roles[i] for i in chosen]


def pick_training(scores: np.ndarray, positive: np.ndarray, head: int, band: tuple[int, int], band_count: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, list[str], bool]:
    """Pick the training rows from the kept candidates: the head of the teacher ranking plus a band sample.

    The head is every positive, then the best-scored others up to `head` rows (positives beyond `head` use up
    band slots, so the total stays `head + band_count` unless there are even more positives). The band sample draws
    `band_count` candidates uniformly from teacher ranks `band[0]:band[1]` (0-based, among the kept candidates)
    that are not in the head. When the band holds too few (a query with fewer candidates), the missing rows are
    drawn from the other non-head candidates (`fill`) so every query with enough candidates still gives
    `head + band_count` rows. Returns indices in teacher-rank order, roles, and whether filling was needed.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = rank_order(scores)
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    pos = [int(i) for i in order if positive[i]]
    head_rows = pos + [int(i) for i in order if not positive[i]][: max(0, head - len(pos))]
    roles = {i: POSITIVE for i in pos}
    roles.update({i: HEAD for i in head_rows if i not in roles})
    # More positives than the head: the extra ones take band slots, so the query still gives head + band_count
    # rows (every positive is kept; only a query with more positives than that gives more).
    band_count = max(0, band_count - max(0, len(pos) - head))
    start, end = band
    in_band = [int(i) for i in order[start:end] if int(i) not in roles]
    take = min(band_count, len(in_band))
    if take:
        for i in rng.choice(np.asarray(in_band), size=take, replace=False):
            roles[int(i)] = BAND
    filled = False
    missing = band_count - take
    if missing > 0:
        spare = [int(i) for i in order if int(i) not in roles]
        if spare:
            filled = True
            for i in rng.choice(np.asarray(spare), size=min(missing, len(spare)), replace=False):
                roles[int(i)] = FILL
    chosen = sorted(roles, key=lambda i: rank_of[i])
    return np.asarray(chosen, dtype=np.int64), [roles[i] for i in chosen], filled


@dataclass
class QuerySelection:
    """One query's selected candidates: indices into its input rows, role, and teacher rank (1-based)."""

    query_id: str
    indices: np.ndarray
    roles: list[str]
    teacher_rank: np.ndarray
    n_candidates: int
    n_kept: int
    band_filled: bool


def select_query(query_id: object, scores: np.ndarray, positive: np.ndarray,
                 config: SelectionConfig) -> QuerySelection:
    """Both cuts for one query; `teacher_rank` is the rank among all the query's candidates (1 = best)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    rng = query_rng(config.seed, query_id)
    kept, _ = subsample(scores, positive, config.keep, config.hard, rng)
    local, roles, filled = pick_training(scores[kept], positive[kept], config.head, config.band,
                                         config.band_count, rng)
    indices = kept[local]
    full_rank = np.empty(len(scores), dtype=np.int64)
    full_rank[rank_order(scores)] = np.arange(1, len(scores) + 1)
    return QuerySelection(query_id=str(query_id), indices=indices, roles=roles, teacher_rank=full_rank[indices],
                          n_candidates=len(scores), n_kept=len(kept), band_filled=filled)


@dataclass
class SelectionCounts(Counts):
    """What `ettin select` did, summed over queries (and shards: `+`); written to the manifest and printed."""

    record_key: ClassVar[str] = "counts"

    queries: int = 0
    rows_in: int = 0
    rows_out: int = 0
    positives_in: int = 0
    positives_out: int = 0
    queries_without_positive: int = 0
    queries_short: int = 0            # fewer than --keep candidates: kept all they had
    queries_below_per_query: int = 0  # fewer than head + band-count candidates: all of them are training rows
    queries_band_filled: int = 0      # the band held too few candidates; the rest came from other ranks
    queries_positives_over_head: int = 0
    by_role: dict[str, int] = field(default_factory=dict)

    def count(self, sel: QuerySelection, positive: np.ndarray, config: SelectionConfig) -> None:
        """Add one query's selection."""
        positive = np.asarray(positive, dtype=bool)
        n_pos = int(positive.sum())
        self.queries += 1
        self.rows_in += sel.n_candidates
        self.rows_out += len(sel.indices)
        self.positives_in += n_pos
        self.positives_out += int(positive[sel.indices].sum())
        self.queries_without_positive += int(n_pos == 0)
        self.queries_short += int(sel.n_candidates < config.keep)
        self.queries_below_per_query += int(sel.n_kept < config.per_query)
        self.queries_band_filled += int(sel.band_filled)
        self.queries_positives_over_head += int(n_pos > config.head)
        for role in sel.roles:
            self.by_role[role] = self.by_role.get(role, 0) + 1


# --------------------------------------------------------------------------------------------------------------
# Streaming the scored shards one query at a time.


@dataclass(frozen=True)
class Columns:
    """Which input columns hold the query id, the teacher score and (optionally) the positive flag."""

    query_id: str = "query_id"
    score: str = "score"
    positive: str | None = "is_positive"
    positive_required: bool = False


def check_columns(path: Path, schema: Any, columns: Columns) -> bool:
    """Raise a one-line error naming the file for a missing id/score column; return whether positives exist."""
    import pyarrow.types as pat

    names = list(schema.names)
    for what, name in (("query id", columns.query_id), ("score", columns.score)):
        if name not in names:
            raise EttinError(f"{path}: scored rows need a {what} column '{name}' (columns: {', '.join(names)})")
    score_type = schema.field(columns.score).type
    if not (pat.is_floating(score_type) or pat.is_integer(score_type)):
        raise EttinError(f"{path}: score column '{columns.score}' holds {score_type}, not numbers")
    if columns.positive and columns.positive not in names:
        if columns.positive_required:
            raise EttinError(f"{path}: no positive column '{columns.positive}' (columns: {', '.join(names)})")
        return False
    if columns.positive:
        kind = schema.field(columns.positive).type
        if not (pat.is_boolean(kind) or pat.is_integer(kind) or pat.is_floating(kind)):
            raise EttinError(f"{path}: positive column '{columns.positive}' holds {kind}, not flags or grades")
    return bool(columns.positive)


def _validate_batch(path: Path, first_row: int, ids: list, scores: np.ndarray, columns: Columns) -> None:
    for offset, qid in enumerate(ids):
        if qid is None or str(qid) == "":
            raise EttinError(f"{path} row {first_row + offset}: empty query id in column '{columns.query_id}'")
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise EttinError(f"{path} row {first_row + int(bad[0])}: score in column '{columns.score}' is missing "
                         f"or not a finite number")


def _last_query_id(path: Path, columns: Columns) -> str | None:
    """The query id of a shard's last row (to know whether the next shard starts mid-query)."""

    pf = open_parquet(path)
    if pf.metadata.num_rows == 0:
        return None
    group = pf.read_row_group(pf.metadata.num_row_groups - 1, columns=[columns.query_id])
    value = group.column(0)[-1].as_py()
    return None if value is None else str(value)


@dataclass
class QueryGroup:
    """One query's candidates as an Arrow table, with where they start in the input (for error messages)."""

    query_id: str
    table: Any
    scores: np.ndarray
    positive: np.ndarray
    path: Path
    first_row: int


def iter_shard_queries(paths: Sequence[Path], index: int, columns: Columns,
                       batch_size: int = 65_536) -> Iterator[QueryGroup]:
    """Yield the queries whose first row is in `paths[index]`, reading on into later shards to finish the last.

    Rows of a query must be contiguous (the order `ettin mine` writes and `ettin score` keeps). A query that
    spans a shard boundary belongs to the shard it starts in, so every query is processed by exactly one
    output shard whatever the shard sizes. A query id that comes back after another query is an error.
    """
    import pyarrow as pa

    skip_id = _last_query_id(paths[index - 1], columns) if index > 0 else None
    seen: set[str] = set()
    current: str | None = None
    pieces: list[Any] = []
    start_path, start_row = paths[index], 0
    has_positive = None

    def flush() -> QueryGroup:
        table = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
        scores = table.column(columns.score).to_numpy(zero_copy_only=False).astype(np.float64)
        if has_positive:
            flags = table.column(columns.positive).to_pylist()
            positive = np.asarray([f is not None and f > 0 for f in flags], dtype=bool)  # flag or grade
        else:
            positive = np.zeros(table.num_rows, dtype=bool)
        return QueryGroup(current, table, scores, positive, start_path, start_row)

    for file_index in range(index, len(paths)):
        path = paths[file_index]
        pf = open_parquet(path)
        file_has_positive = check_columns(path, pf.schema_arrow, columns)
        if has_positive is None:
            has_positive = file_has_positive
        elif has_positive != file_has_positive:
            raise EttinError(f"{path}: column '{columns.positive}' is in some shards and not others")
        row = 0
        for batch in pf.iter_batches(batch_size=batch_size):
            table = pa.Table.from_batches([batch])
            ids = table.column(columns.query_id).to_pylist()
            scores = table.column(columns.score).cast("float64").fill_null(float("nan")).to_numpy()
            _validate_batch(path, row, ids, scores, columns)
            ids = [str(q) for q in ids]
            pos = 0
            while pos < len(ids):
                qid = ids[pos]
                end = pos
                while end < len(ids) and ids[end] == qid:
                    end += 1
                if skip_id is not None:
                    if qid == skip_id:  # the tail of a query that started in the previous shard
                        pos = end
                        continue
                    skip_id = None
                if qid != current:
                    if current is not None:
                        yield flush()
                        seen.add(current)
                    if file_index > index:
                        return  # a query starting in a later shard belongs to that shard
                    if qid in seen:
                        raise EttinError(f"{path} row {row + pos}: query id '{qid}' appears again after other "
                                         f"queries; rows of a query must be contiguous (sort by query id)")
                    current, pieces = qid, []
                    start_path, start_row = path, row + pos
                pieces.append(table.slice(pos, end - pos))
                pos = end
            row += len(ids)
        skip_id = None
    if current is not None:
        yield flush()


def open_parquet(path: Any) -> Any:
    """`pq.ParquetFile(path)`, with a one-line error for a file that is not readable parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise EttinError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None


def select_table(group: QueryGroup, config: SelectionConfig) -> tuple[Any, QuerySelection]:
    """The selected rows of one query as an Arrow table, with `teacher_rank` and `selected_by` appended."""
    import pyarrow as pa

    sel = select_query(group.query_id, group.scores, group.positive, config)
    out = group.table.take(pa.array(sel.indices))
    out = out.append_column("teacher_rank", pa.array(sel.teacher_rank, type=pa.int32()))
    out = out.append_column("selected_by", pa.array(sel.roles, type=pa.string()))
    return out, sel


def short_summary(counts: dict[str, Any]) -> str:
    """One line for the log: how many queries and rows, and how many queries had too few candidates."""
    ratio = counts["rows_out"] / counts["queries"] if counts.get("queries") else math.nan
    return (f"{counts['queries']:,} queries, {counts['rows_in']:,} candidates -> {counts['rows_out']:,} rows "
            f"({ratio:.1f}/query); {counts['queries_short']:,} queries had fewer than --keep candidates, "
            f"{counts['queries_below_per_query']:,} fewer than head+band, "
            f"{counts['queries_without_positive']:,} without a positive")


# --------------------------------------------------------------------------------------------------------------
# The command's library function.


def input_shards(path: str | Path, verify: bool = False) -> list[Path]:
    """The parquet files of a scored input, in order: a sharded output (checked against its manifest; SHA-256
    too with `verify`), one parquet file, or a folder of parquet files (name order)."""
    root = Path(path)
    if root.is_file():
        if root.suffix.lower() != ".parquet":
            raise EttinError(f"{root}: select reads parquet (the output of ettin score), not '{root.suffix}'")
        return [root]
    if not root.is_dir():
        raise EttinError(f"{root}: no such file or folder")
    if is_sharded_output(root):
        return ShardedFolder(root).shards(verify=verify)  # the one sharded-folder reader (refuses an unfinished one)
    files = sorted(p for p in root.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise EttinError(f"{root}: no parquet files in this folder")
    return files


class SelectStep(ShardedStep[SelectionCounts]):
    """Output shard i holds the queries that start in input shard i (read on into later shards to finish the
    last one), so the work splits across ranks without coordination."""

    name, unit, counts = "select", "rows", SelectionCounts

    def __init__(self, input_path: str | Path, paths: list[Path], config: SelectionConfig, columns: Columns):
        self.input_path, self.paths, self.config, self.columns = input_path, paths, config, columns

    def shards(self) -> int:
        return len(self.paths)

    def describe(self) -> str:
        return f"select {self.input_path}"

    def schema(self, index: int) -> Any:
        import pyarrow as pa

        schema = open_parquet(self.paths[index]).schema_arrow
        return schema.append(pa.field("teacher_rank", pa.int32())).append(pa.field("selected_by", pa.string()))

    def units(self, index: int) -> int:
        return open_parquet(self.paths[index]).metadata.num_rows

    def work(self, index: int, writer: ShardWriter) -> SelectionCounts:
        import pyarrow as pa

        counts = SelectionCounts()
        pending: list[Any] = []
        pending_rows = 0
        for group in iter_shard_queries(self.paths, index, self.columns):
            table, sel = select_table(group, self.config)
            counts.count(sel, group.positive, self.config)
            pending.append(table)
            pending_rows += table.num_rows
            writer.progress.advance(group.table.num_rows)
            if pending_rows >= 65_536:
                writer.write(pa.concat_tables(pending))
                pending, pending_rows = [], 0
        if pending:
            writer.write(pa.concat_tables(pending))
        writer.extra["input_file"] = self.paths[index].name
        return counts

    def manifest_extra(self, records: list[dict[str, Any]], total: SelectionCounts) -> dict[str, Any]:
        return {"summary": total.as_dict()}


def select(input_path: str | Path, output: str | Path, config: SelectionConfig, columns: Columns = Columns(), *,
           overwrite: bool = False, verify: bool = False, num_shards: int | None = None,
           shard_index: int | None = None) -> dict[str, Any]:
    """Run both cuts over every query of a scored input into sharded parquet; returns the counts.

    A rerun skips finished shards; counts are summed from the completion records into the manifest once every
    shard exists (`io.lifecycle`).
    """
    config.validate()
    rank = current_rank(num_shards, shard_index)
    paths = input_shards(input_path, verify)
    for path in paths:  # fail on a missing column before any work
        check_columns(path, open_parquet(path).schema_arrow, columns)
    run_config = {
        "step": "select",
        "input": str(input_path),
        "input_files": [{"name": p.name, "bytes": p.stat().st_size} for p in paths],
        "selection": config.as_dict(),
        "columns": asdict(columns),
    }
    run = run_step(SelectStep(input_path, paths, config, columns), ShardedFolder(output), run_config, rank=rank,
                   overwrite=overwrite, verify=verify)
    summary = run.counts.as_dict()
    summary["complete"] = run.complete
    return summary
