"""Candidate id lists to (query, document) pairs, without mining (`ettin mine --lists`).

The 7 retrieval subsets of the release start from `lightonai/embeddings-fine-tuning`, whose candidates are
already mined: per source (one split each: `fiqa`, `nq`, `trivia`, ...) a `scores` config holds one row per
query (`query_id`, `document_ids` list of up to 2,048 ids, `scores`, `positive_ids`) beside separate `queries`
(`query_id`, `query`) and `documents` (`document_id`, `document`) configs. The teacher-rescored copy
`cross-encoder/lightonai-embeddings-fine-tuning-reranked-v1` has the same layout. This module turns one source
into the pairs schema `ettin mine` writes (`query_id, query, doc_id, document, retriever_rank` = 1-based
position in the list, `retriever_score` = the list's score, `is_positive`), so `ettin score` and `ettin select`
take it unchanged. A local folder in the same layout (a README whose YAML names the three configs) goes
through the same `datasets.load_dataset` call as the Hub id.

Scale (trivia: 21M documents, 741k lists): every table stays the memory-mapped Arrow cache `datasets` keeps on
disk; texts are gathered by row number with vectorised `take` on the chunk that holds them, so only the
texts of the pairs being written are ever in memory. An id becomes a row number without a dict: when the
integer ids of a table are dense (`id == first_id + row`) it is arithmetic; otherwise a sorted numpy copy of
the ids plus `searchsorted` (8-16 bytes per row, never the texts). Lists are cut into blocks of
`lists_per_shard` rows, one output shard each: the resumable unit of `io/shards.py` (completion records,
SHA-256 checked on rerun) and the unit torchrun ranks split (`i % world_size`), as in `ettin mine`. Inside a
shard the rows are streamed to disk `batch_lists` lists at a time.

Before anything is written, every pending block is checked (ids in the documents table, query ids in the
queries table, list and score lengths equal, list-typed columns), so bad input is one line and no file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ettin_cli.core import console
from ettin_cli.core.console import logger
from ettin_cli.core.distributed import current_rank
from ettin_cli.core.errors import EttinError
from ettin_cli.core.recipes import from_recipe
from ettin_cli.data.mining import pairs_schema
from ettin_cli.io.lifecycle import Counts, ShardedStep, run_step
from ettin_cli.io.shards import ShardedFolder, ShardWriter

PARTS = {"queries": ("query_id", "query"), "documents": ("document_id", "document"),
         "scores": ("query_id", "document_ids", "scores", "positive_ids")}
LIST_COLUMNS = ("document_ids", "scores", "positive_ids")
PUBLISHED = ("lightonai/embeddings-fine-tuning", "cross-encoder/lightonai-embeddings-fine-tuning-reranked-v1")


# --------------------------------------------------------------------------------------------------------------
# Loading the three parts.


def load_part(dataset: str, part: str, source: str, cache_dir: str | None = None) -> Any:
    """One part of a source as a `datasets.Dataset` (memory-mapped Arrow), its columns checked.

    The config and split lists are read first (card metadata only), so a missing part or source is one line
    naming it, before anything is downloaded or converted.
    """
    import datasets

    try:
        configs = datasets.get_dataset_config_names(dataset)
    except Exception as exc:  # noqa: BLE001 - offline, no such repo or folder: one line
        raise EttinError(f"--lists {dataset}: cannot read the dataset ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if part not in configs:
        raise EttinError(f"--lists {dataset}: no '{part}' part (configs: {', '.join(configs)}); the layout needs "
                         f"{', '.join(PARTS)}")
    try:
        splits = datasets.get_dataset_split_names(dataset, part)
    except Exception as exc:  # noqa: BLE001
        raise EttinError(f"--lists {dataset}: cannot read the splits of '{part}' ({type(exc).__name__})") from None
    if source not in splits:
        raise EttinError(f"--lists {dataset}: part '{part}' has no source '{source}' (sources: {', '.join(splits)})")
    try:
        ds = datasets.load_dataset(dataset, part, split=source, cache_dir=local_cache_dir(dataset, cache_dir))
    except Exception as exc:  # noqa: BLE001
        raise EttinError(f"--lists {dataset}: cannot load '{part}' of '{source}' ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    names = ds.column_names
    for column in PARTS[part]:
        if column not in names:
            raise EttinError(f"--lists {dataset}: part '{part}' of '{source}' has no column '{column}' "
                             f"(columns: {', '.join(names)})")
    return ds


def local_cache_dir(dataset: str, cache_dir: str | None) -> str | None:
    """For a local folder, an Arrow cache keyed by the folder's file names, sizes and mtimes.

    `datasets` keys the cache of a local folder by its name and file patterns only, so a folder whose files
    changed (or another folder with the same name) would silently reuse stale Arrow files.
    """
    root = Path(dataset)
    if not root.is_dir():
        return cache_dir
    import datasets

    base = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE)
    return str(base / "ettin-local" / folder_digest(root)[:16])


def folder_digest(root: Path) -> str:
    """SHA-256 over a folder's path and its files' names, sizes and mtimes (not their bytes: instant)."""
    import hashlib

    digest = hashlib.sha256(str(root.resolve()).encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def arrow_table(ds: Any) -> Any:
    """The memory-mapped pyarrow table behind a freshly loaded `datasets.Dataset` (no copy)."""
    if getattr(ds, "_indices", None) is not None:  # a selected/shuffled view: flatten it once
        ds = ds.flatten_indices()
    return ds.data.table


# --------------------------------------------------------------------------------------------------------------
# Ids to row numbers and texts by row number.


class IdIndex:
    """Row number of an id in one id column: arithmetic when dense, else a sorted numpy copy of the ids.

    `kind` says which (`dense` or `sorted`), and goes into the manifest.
    """

    def __init__(self, column: Any, where: str):
        import pyarrow as pa

        self.where = where
        self.size = len(column)
        self.type = column.type
        self.integer = pa.types.is_integer(column.type)
        if column.null_count:
            raise EttinError(f"{where}: {column.null_count} null id(s)")
        self.base = 0
        self.kind = "sorted"
        if self.integer and self.size:
            first = int(column[0].as_py())
            dense = True
            for offset, chunk in _chunks(column):
                values = chunk.to_numpy(zero_copy_only=False)
                if not np.array_equal(values, first + offset + np.arange(len(values), dtype=np.int64)):
                    dense = False
                    break
            if dense:
                self.kind, self.base = "dense", first
                return
        values = self._numpy(column)
        self.order = np.argsort(values, kind="stable")
        self.sorted = values[self.order]
        same = np.flatnonzero(self.sorted[1:] == self.sorted[:-1]) if self.size > 1 else np.empty(0, dtype=np.int64)
        if len(same):
            raise EttinError(f"{where}: id {self.sorted[same[0]].item()!r} appears more than once")

    def _numpy(self, values: Any) -> np.ndarray:
        """Ids as a numpy array comparable with this index's (int64, or unicode for string ids)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.integer:
            if not pa.types.is_integer(values.type):
                try:
                    values = pc.cast(values, pa.int64())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise EttinError(f"{self.where}: ids of type {values.type} do not match the table's "
                                     f"{self.type}") from None
            return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
        return np.asarray(pc.cast(values, pa.string()).to_numpy(zero_copy_only=False)).astype(str)

    def lookup(self, values: Any) -> np.ndarray:
        """Row numbers (int64) of `values` (an Arrow array of ids); -1 where an id is not in the column."""
        ids = self._numpy(values)
        if self.kind == "dense":
            rows = ids - self.base
            rows[(rows < 0) | (rows >= self.size)] = -1
            return rows
        pos = np.searchsorted(self.sorted, ids)
        pos_clip = np.minimum(pos, max(self.size - 1, 0))
        found = (pos < self.size) & (self.sorted[pos_clip] == ids) if self.size else np.zeros(len(ids), bool)
        return np.where(found, self.order[pos_clip], -1).astype(np.int64)


def _chunks(column: Any) -> Iterator[tuple[int, Any]]:
    offset = 0
    for chunk in column.chunks:
        yield offset, chunk
        offset += len(chunk)


class TextColumn:
    """Texts of a memory-mapped column gathered by row number, chunk by chunk (nothing else is read)."""

    def __init__(self, column: Any):
        self.chunks = [c for c in column.chunks if len(c)]
        self.starts = np.cumsum([0] + [len(c) for c in self.chunks])[:-1]

    def take(self, rows: np.ndarray) -> Any:
        import pyarrow as pa

        if len(rows) == 0:
            return pa.array([], type=pa.string())
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        which = np.searchsorted(self.starts, ordered, side="right") - 1
        bounds = np.flatnonzero(np.diff(which)) + 1
        pieces = []
        for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(ordered)]]), strict=True):
            c = int(which[lo])
            local = ordered[lo:hi] - self.starts[c]
            pieces.append(self.chunks[c].take(pa.array(local, type=pa.int64())).cast(pa.string()))
        combined = pa.concat_arrays(pieces)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return combined.take(pa.array(inverse, type=pa.int64()))


# --------------------------------------------------------------------------------------------------------------
# One batch of lists -> pairs.


@dataclass
class Source:
    """The three loaded parts of one source, indexed."""

    dataset: str
    name: str
    queries: Any  # pyarrow tables (memory-mapped)
    documents: Any
    scores: Any
    query_index: IdIndex
    doc_index: IdIndex
    query_texts: TextColumn
    doc_texts: TextColumn
    fingerprints: dict[str, str]

    @property
    def where(self) -> str:
        return f"source '{self.name}' of {self.dataset}"


def open_source(dataset: str, source: str, cache_dir: str | None = None) -> Source:
    """Load and index `source` of DATASET; a missing part, column or a non-list column is one line."""
    import pyarrow as pa

    loaded = {part: load_part(dataset, part, source, cache_dir) for part in PARTS}
    tables = {part: arrow_table(ds) for part, ds in loaded.items()}
    where = f"source '{source}' of {dataset}"
    for column in LIST_COLUMNS:
        kind = tables["scores"].schema.field(column).type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
            raise EttinError(f"{where}: scores column '{column}' is {kind}, not a list")
    value_type = tables["scores"].schema.field("scores").type.value_type
    if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
        raise EttinError(f"{where}: scores column 'scores' holds {value_type}, not numbers")
    q, d = tables["queries"], tables["documents"]
    return Source(dataset, source, q, d, tables["scores"],
                  IdIndex(q.column("query_id"), f"{where}, queries"),
                  IdIndex(d.column("document_id"), f"{where}, documents"),
                  TextColumn(q.column("query")), TextColumn(d.column("document")),
                  {**{part: ds._fingerprint for part, ds in loaded.items()},
                   **({"folder": folder_digest(Path(dataset))} if Path(dataset).is_dir() else {})})


@dataclass
class BatchStats(Counts):
    """Counts over a batch of lists, added up per shard (stored flat in its record) and into the manifest."""

    lists: int = 0
    pairs: int = 0
    duplicates: int = 0
    positives_not_listed: int = 0
    lists_without_positive: int = 0
    empty_lists: int = 0


def _list_values(table: Any, column: str, where: str, qids: list[Any]) -> tuple[np.ndarray, Any]:
    """(lengths, flat values) of a list column; a null list is one line naming its query id."""
    import pyarrow.compute as pc

    lists = table.column(column).combine_chunks()
    if lists.null_count:
        row = int(np.flatnonzero(~np.asarray(lists.is_valid().to_numpy(zero_copy_only=False)))[0])
        raise EttinError(f"{where}: query id {qids[row]!r} has no '{column}' list (null)")
    lengths = np.asarray(pc.list_value_length(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
    return lengths, pc.list_flatten(lists)


def lists_to_pairs(src: Source, table: Any, top_k: int | None, texts: bool = True) -> tuple[Any, BatchStats]:
    """The pairs of a slice of the `scores` table (texts=False: check only, return None and the counts)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    where = src.where
    qid_col = table.column("query_id").combine_chunks()
    qids = qid_col.to_pylist()
    n = len(qids)
    lengths, flat_ids = _list_values(table, "document_ids", where, qids)
    score_lengths, flat_scores = _list_values(table, "scores", where, qids)
    bad = np.flatnonzero(lengths != score_lengths)
    if len(bad):
        i = int(bad[0])
        raise EttinError(f"{where}: query id {qids[i]!r} lists {lengths[i]} document ids but {score_lengths[i]} "
                         "scores")
    if flat_ids.null_count:
        at = int(np.flatnonzero(~np.asarray(flat_ids.is_valid().to_numpy(zero_copy_only=False)))[0])
        raise EttinError(f"{where}: query id {qids[int(np.searchsorted(np.cumsum(lengths), at, 'right'))]!r} lists "
                         "a null document id")
    q_rows = src.query_index.lookup(qid_col)
    if (q_rows < 0).any():
        i = int(np.flatnonzero(q_rows < 0)[0])
        raise EttinError(f"{where}: query id {qids[i]!r} has no query in the queries table")
    d_rows = src.doc_index.lookup(flat_ids)
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
    if (d_rows < 0).any():
        at = int(np.flatnonzero(d_rows < 0)[0])
        raise EttinError(f"{where}: query id {qids[owner[at]]!r} lists document id {flat_ids[at].as_py()!r}, "
                         "which is not in the documents table")
    pos_lengths, flat_pos = _list_values(table, "positive_ids", where, qids)
    pos_owner = np.repeat(np.arange(n, dtype=np.int64), pos_lengths)
    if flat_pos.null_count:
        flat_pos, pos_owner = flat_pos.filter(flat_pos.is_valid()), pos_owner[
            np.asarray(flat_pos.is_valid().to_numpy(zero_copy_only=False))]
    pos_rows = src.doc_index.lookup(flat_pos)
    if (pos_rows < 0).any():
        at = int(np.flatnonzero(pos_rows < 0)[0])
        raise EttinError(f"{where}: query id {qids[pos_owner[at]]!r} has positive id {flat_pos[at].as_py()!r}, "
                         "which is not in the documents table")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n else np.empty(0, dtype=np.int64)
    rank = np.arange(len(d_rows), dtype=np.int64) - np.repeat(starts, lengths) + 1
    keep = np.ones(len(d_rows), dtype=bool)
    if top_k is not None:
        keep &= rank <= top_k
    # Every listed id once per query (the first listing wins): a key per (query in batch, document row).
    stride = np.int64(max(src.doc_index.size, 1))
    key = owner * stride + d_rows
    _, first = np.unique(np.where(keep, key, -1 - np.arange(len(key))), return_index=True)
    unique = np.zeros(len(key), dtype=bool)
    unique[first] = True
    stats = BatchStats(lists=n, empty_lists=int((lengths == 0).sum()))
    stats.duplicates = int((keep & ~unique).sum())
    keep &= unique
    pos_key = pos_owner * stride + pos_rows
    positive = np.isin(key, pos_key) & keep
    listed = np.isin(pos_key, key[keep])
    stats.positives_not_listed = int((~listed).sum())
    has_pos = np.zeros(n, dtype=bool)
    has_pos[owner[positive]] = True
    stats.lists_without_positive = int(n - has_pos.sum())
    stats.pairs = int(keep.sum())
    if not texts:
        return None, stats
    idx = np.flatnonzero(keep)
    sel = pa.array(idx, type=pa.int64())
    pair_owner = owner[idx]
    out = pa.Table.from_arrays([
        pc.cast(qid_col, pa.string()).take(pa.array(pair_owner, type=pa.int64())),
        src.query_texts.take(q_rows[pair_owner]),
        pc.cast(flat_ids, pa.string()).take(sel),
        src.doc_texts.take(d_rows[idx]),
        pa.array(rank[idx], type=pa.int32()),
        pc.cast(flat_scores, pa.float32()).take(sel),
        pa.array(positive[idx], type=pa.bool_()),
    ], schema=pairs_schema())
    return out, stats


# --------------------------------------------------------------------------------------------------------------
# The command's library function.


@dataclass
class ListsOptions:
    """What `ettin mine --lists` does; `lists_per_shard` from `recipes/data.yaml` (`mining:`)."""

    top_k: int | None = None
    lists_per_shard: int = 500
    batch_lists: int = 64
    cache_dir: str | None = None

    @classmethod
    def from_recipe(cls, section: dict[str, Any], **overrides: Any) -> ListsOptions:
        """The recipe's `mining:` `lists_per_shard` with the options given (not None) on top, validated (the
        section's `top_k` is the retriever's: a list is kept whole unless `top_k` is given)."""
        recipe = {k: section[k] for k in ("lists_per_shard",) if k in section}
        return from_recipe(cls, recipe, **overrides).validate()

    def validate(self) -> ListsOptions:
        for name in ("lists_per_shard", "batch_lists") + (("top_k",) if self.top_k is not None else ()):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EttinError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        return self


def _blocks(n_lists: int, per_shard: int) -> list[tuple[int, int]]:
    return [(s, min(s + per_shard, n_lists)) for s in range(0, n_lists, per_shard)]


def _slices(start: int, stop: int, step: int) -> Iterator[tuple[int, int]]:
    for s in range(start, stop, step):
        yield s, min(s + step, stop)


class ListsStep(ShardedStep[BatchStats]):
    """Shard b holds the pairs of lists `[b*L, (b+1)*L)`, streamed `batch_lists` lists at a time."""

    unit, counts = "lists", BatchStats

    def __init__(self, src: Source, options: ListsOptions):
        self.src, self.options = src, options
        self.blocks = _blocks(src.scores.num_rows, options.lists_per_shard)
        self.name = f"lists {src.name}"

    def shards(self) -> int:
        return len(self.blocks)

    def describe(self) -> str:
        return self.src.where

    def schema(self, index: int) -> Any:
        return pairs_schema()

    def units(self, index: int) -> int:
        return self.blocks[index][1] - self.blocks[index][0]

    def check(self, pending: list[int]) -> None:
        """The check pass over `pending` blocks (every rank the same), so bad input writes nothing anywhere."""
        with console.progress(sum(self.units(b) for b in pending), "check lists", unit="lists") as bar:
            for b in pending:
                for lo, hi in _slices(*self.blocks[b], 4096):
                    lists_to_pairs(self.src, self.src.scores.slice(lo, hi - lo), self.options.top_k, texts=False)
                    bar.advance(hi - lo)

    def work(self, index: int, writer: ShardWriter) -> BatchStats:
        stats = BatchStats()
        for lo, hi in _slices(*self.blocks[index], self.options.batch_lists):
            table, part = lists_to_pairs(self.src, self.src.scores.slice(lo, hi - lo), self.options.top_k)
            writer.write(table)
            stats += part
            writer.progress.advance(hi - lo)
        if writer.rows == 0:
            writer.write(pairs_schema().empty_table())
        writer.extra["lists_range"] = list(self.blocks[index])
        return stats

    def summary(self, finished: int, total: BatchStats) -> dict[str, Any]:
        src = self.src
        return {"source": src.name, "dataset": src.dataset, "shards": len(self.blocks), "shards_complete": finished,
                "rows": total.pairs, **total.as_dict(), "document_ids": src.doc_index.kind,
                "query_ids": src.query_index.kind}

    def manifest_extra(self, records: list[dict[str, Any]], total: BatchStats) -> dict[str, Any]:
        return {"summary": {**self.summary(len(records), total), "complete": True}}


def mine_lists(dataset: str, source: str, output: str | Path, options: ListsOptions, *, overwrite: bool = False,
               verify: bool = False, num_shards: int | None = None, shard_index: int | None = None) -> dict[str, Any]:
    """Write the pairs of every list of `source` as sharded parquet under `output`; returns the summary.

    Resumable and rank-split like `ettin mine` (`io.lifecycle`): shard `b` (lists `[b*L, (b+1)*L)`) belongs
    to rank `b % world_size`, finished shards are skipped. Every pending block is checked before the first
    write; a source with no lists is refused.
    """
    options.validate()
    rank = current_rank(num_shards, shard_index)
    out = ShardedFolder(output)
    if out.root.exists() and not out.root.is_dir():
        raise EttinError(f"--output {out.root}: is a file, not a directory")
    src = open_source(dataset, source, options.cache_dir)
    n_lists = src.scores.num_rows
    if n_lists == 0:
        raise EttinError(f"{src.where}: 0 lists in its 'scores' part; nothing to write")
    step = ListsStep(src, options)
    config = {"step": "mine-lists", "dataset": dataset, "source": source, "top_k": options.top_k,
              "lists_per_shard": options.lists_per_shard, "lists": n_lists, "fingerprints": src.fingerprints}
    same_run = out.check(config, overwrite) == out.config_sha256()
    done = set(out.completed(verify)) if same_run else set()  # another run's shards are redone
    pending = [b for b in range(len(step.blocks)) if b not in done]
    logger.info(f"mine --lists: {source}: {n_lists:,} lists, {src.documents.num_rows:,} documents (ids "
                f"{src.doc_index.kind}), {len(step.blocks)} shard(s), {len(pending)} to do")
    step.check(pending)
    run = run_step(step, out, config, rank=rank, overwrite=overwrite, verify=verify)
    return {**step.summary(len(run.records), run.counts), "complete": run.complete}
