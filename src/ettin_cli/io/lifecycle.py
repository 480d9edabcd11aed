"""The one lifecycle of a sharded step: prepare the folder, skip finished shards, work the rest, write the manifest.

Every sharded step (`score`, `select`, `mine`, `mine --lists`, `mix`) runs through `run_step` (datatrove's
`executor/base.py` shape: one function does the bookkeeping for one rank, a step only says how to write one
shard). A step is a `ShardedStep`: how many shards, what one shard's rows are (`work(index, writer) -> Counts`),
and what goes into the manifest. The lifecycle, for one rank:

1. binds the output folder to the step's config (`ShardedFolder.prepare`: the config hash, the overwrite rules;
   a folder holding a different run is refused, naming what differs);
2. skips the shards this rank owns (`i % world_size == rank`) that carry a valid completion record (size
   checked; SHA-256 too with `verify`), so a rerun after a crash or kill -9 redoes only unfinished shards;
3. calls `work` for the rest, each inside `ShardedFolder.writer` (a temp file renamed into place, then the
   completion record holding the shard's `Counts`);
4. sums the `Counts` of every finished shard (this attempt's, an earlier attempt's, other ranks') and, once all
   shards exist, writes `.ettin/manifest.json`. An output of zero rows is refused (`EttinError`, exit 2) rather
   than marked complete: an empty result is never reported as success.

`run_stream` is the same lifecycle for a step whose shards are cut from one stream of tables as it goes (`mix`:
the number of rows left after filtering is known only at the end).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Generic, TypeVar

from ettin_cli.core import console
from ettin_cli.core.console import logger
from ettin_cli.core.distributed import Rank, current_rank
from ettin_cli.core.errors import EttinError
from ettin_cli.io.shards import ShardedFolder, ShardWriter


def _combine(a: Any, b: Any, sign: int) -> Any:
    if isinstance(a, dict):
        return {k: a.get(k, 0) + sign * b.get(k, 0) for k in {**a, **b}}
    return a + sign * b


@dataclass
class Counts:
    """What a step counted in one shard; the fields add up (`a + b`, `sum(..., Counts())`) over shards.

    A subclass is a dataclass of numbers (and `dict[str, int]` tallies). Each shard's counts are stored in its
    completion record (flat, or under `record_key`), so the totals are summed from the records whichever rank
    or attempt wrote them. The plain `Counts()` counts nothing (a step with only rows to count).
    """

    record_key: ClassVar[str | None] = None

    def __add__(self, other: Any) -> Any:
        return self._combine(other, 1)

    def __sub__(self, other: Any) -> Any:
        """Counts accumulated since the snapshot `other` (a teacher's lifetime counters, per shard)."""
        return self._combine(other, -1)

    def _combine(self, other: Any, sign: int) -> Any:
        if type(other) is not type(self):
            return NotImplemented
        return type(self)(**{f.name: _combine(getattr(self, f.name), getattr(other, f.name), sign)
                             for f in fields(self)})

    def copy(self) -> Any:
        return type(self).from_dict(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Any:
        return cls.from_dict(record.get(cls.record_key) or {} if cls.record_key else record)

    def to_record(self) -> dict[str, Any]:
        data = self.as_dict()
        return {self.record_key: data} if self.record_key else data


C = TypeVar("C", bound=Counts)


class ShardedStep(Generic[C]):
    """A sharded step as the lifecycle sees it; a step subclasses it and implements `shards` and `work`."""

    name: str = "step"  # the progress bar's label and the log's prefix
    unit: str = "rows"  # what `units` counts, for the progress bar
    counts: type[C] = Counts  # type: ignore[assignment]

    def shards(self) -> int:
        raise NotImplementedError

    def describe(self) -> str:
        """What the step reads (`--lists X, source 'nq'`): named when the output would be empty."""
        return self.name

    def schema(self, index: int) -> Any:
        """The Arrow schema of shard `index` (also the schema of an empty shard)."""
        raise NotImplementedError

    def units(self, index: int) -> int:
        """Progress units in shard `index` (rows, queries, lists)."""
        return 0

    def setup(self, todo: list[int]) -> None:
        """Load what the work needs (a teacher, a retriever), once, only when this rank has shards to do."""

    def work(self, index: int, writer: ShardWriter) -> C:
        """Write shard `index` through `writer` (`writer.progress` is the step's bar); return its counts."""
        raise NotImplementedError

    def manifest_extra(self, records: list[dict[str, Any]], total: C) -> dict[str, Any]:
        """Step fields of the manifest, from the ordered completion records and their summed counts."""
        return {}


@dataclass
class StepRun(Generic[C]):
    """What one rank's run did, and the state of the whole output after it."""

    rank: Rank
    shards: int
    owned: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # found finished (earlier attempt) and left alone
    done: list[int] = field(default_factory=list)  # written by this run
    records: dict[int, dict[str, Any]] = field(default_factory=dict)  # every finished shard, any rank
    counts: Any = None  # C: summed over `records`
    manifest: dict[str, Any] | None = None  # written when every shard is finished

    @property
    def rows(self) -> int:
        return sum(int(r.get("rows", 0)) for r in self.records.values())

    @property
    def complete(self) -> bool:
        return self.manifest is not None


def run_step(step: ShardedStep[C], folder: ShardedFolder, config: dict[str, Any], *, rank: Rank | None = None,
             overwrite: bool = False, verify: bool = False) -> StepRun[C]:
    """The lifecycle of `step` on this rank (see the module docstring); returns what it did."""
    rank = rank or current_rank()
    total = step.shards()
    folder.prepare(config, overwrite)
    finished, todo = folder.pending(total, rank, verify)
    run: StepRun[C] = StepRun(rank=rank, shards=total, owned=sorted([*finished, *todo]), skipped=sorted(finished))
    logger.info(f"{step.name}: {total} shard(s); {len(todo)} to do on rank {rank.rank}/{rank.world_size}, "
                f"{len(finished)} already complete")
    if todo:
        step.setup(todo)
        with console.progress(sum(step.units(i) for i in todo), step.name, unit=step.unit) as bar:
            for index in todo:
                with folder.writer(index, step.schema(index)) as writer:
                    writer.progress = bar
                    counts = step.work(index, writer)
                    writer.extra.update(counts.to_record())
                run.done.append(index)
    return _finish(step, folder, total, run)


def _finish(step: ShardedStep[C], folder: ShardedFolder, total: int, run: StepRun[C]) -> StepRun[C]:
    """Sum the finished shards' counts; write the manifest when all exist (refused for an empty output)."""
    run.records = folder.completed(verify=False, indices=list(range(total)))
    run.counts = sum((step.counts.from_record(run.records[i]) for i in sorted(run.records)), step.counts())
    if len(run.records) == total:
        if run.rows == 0:
            raise EttinError(f"{step.describe()}: 0 rows to write; an empty output is not marked complete")
        run.manifest = folder.finalize(total, extra=lambda records: step.manifest_extra(records, run.counts))
    return run


def run_stream(step: ShardedStep[C], folder: ShardedFolder, config: dict[str, Any], tables: Iterable[Any],
               rows_per_shard: int, *, record: dict[str, Any] | None = None, overwrite: bool = False,
               verify: bool = False) -> StepRun[C]:
    """The lifecycle for shards cut every `rows_per_shard` rows from a stream of tables (one process).

    The stream is always read to its end (its row count is what decides the shards); a shard that already has
    a valid record is not written again. `step.work` is not called: the rows are the stream's. Shard records
    get `record` and `rows_range` (`[first, end)` rows of the stream).
    """
    rank = current_rank(1, 0)
    folder.prepare(config, overwrite)
    finished = folder.completed(verify=verify)
    run: StepRun[C] = StepRun(rank=rank, shards=0, skipped=sorted(finished))

    def write(index: int, first_row: int, table: Any) -> None:
        if index in finished:
            return
        with folder.writer(index, table.schema) as writer:
            writer.write(table)
            writer.extra.update({**(record or {}), "rows_range": [first_row, first_row + table.num_rows]})
        run.done.append(index)

    first_row = 0
    for table in _cut(tables, rows_per_shard):
        write(run.shards, first_row, table)
        first_row += table.num_rows
        run.shards += 1
    if run.shards == 0:
        raise EttinError(f"{step.describe()}: 0 rows to write; an empty output is not marked complete")
    run.owned = list(range(run.shards))
    return _finish(step, folder, run.shards, run)


def _cut(tables: Iterable[Any], size: int) -> Iterator[Any]:
    """Re-cut a stream of tables into tables of exactly `size` rows (the last one shorter, none empty)."""
    import pyarrow as pa

    pending: list[Any] = []
    pending_rows = 0
    for table in tables:
        pending.append(table)
        pending_rows += table.num_rows
        while pending_rows >= size:
            merged = pa.concat_tables(pending)
            yield merged.slice(0, size)
            rest = merged.slice(size)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
    if pending_rows:
        yield pa.concat_tables(pending)
