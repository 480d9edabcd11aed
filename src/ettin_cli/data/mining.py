"""First-stage candidates for every query of a corpus (`ettin mine`): the pool the teacher later scores.

The published retrieval subsets start from "up to 2048 candidates per query, first ranked by a bi-encoder"
(RECIPE.md, "The data"). This module builds the same kind of pool from any corpus: BM25 (`bm25s`, through
`retrieval.bm25_search`) or a Sentence Transformers embedder (`retrieval.dense_search`), top `--top-k` per query,
one parquet row per (query, candidate): `query_id, query, doc_id, document, retriever_rank, retriever_score`
and, when qrels are given, `is_positive`. Rows of a query are contiguous and best first, which is what
`ettin select` streams on.

Scale: the work is split into blocks of queries, one output shard per block (the resumable unit: a rerun skips
blocks whose shard carries a valid completion record, and with `--num-shards/--shard-index` or torchrun each
rank takes blocks `i % world_size`). Inside a block the corpus is read in chunks of `chunk_size` documents;
each chunk is searched and its hits are merged into a running top-k per query, so memory holds one chunk of
text plus the block's (queries x top_k) candidates, never the whole corpus. A corpus that fits in one chunk is
read once for all blocks. For a dense retriever the merge across chunks is exact (scores are comparable); for
BM25 each chunk has its own term statistics, so with more than one chunk the ranking approximates global BM25
(raise `chunk_size` when the corpus fits in memory).

Judged positives the retriever missed are appended after a query's candidates (`retriever_rank` null) when
`add_positives` is on, so selection can keep "all positives"; recall@k in the manifest counts only what the
retriever found.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ettin_cli.core.console import logger
from ettin_cli.core.distributed import current_rank
from ettin_cli.core.errors import EttinError
from ettin_cli.core.hardware import resolve_device
from ettin_cli.core.recipes import from_recipe
from ettin_cli.io import tables
from ettin_cli.io.beir import document_text, iter_jsonl_rows
from ettin_cli.io.beir import read_qrels as read_beir_qrels
from ettin_cli.io.lifecycle import Counts, ShardedStep, run_step
from ettin_cli.io.shards import ShardedFolder, ShardWriter
from ettin_cli.measure import retrieval
from ettin_cli.measure.retrieval import RunningTopK

ID_COLUMNS = ("_id", "id", "doc_id", "docid", "corpus_id", "query_id", "qid")
TEXT_COLUMNS = ("text", "document", "contents", "content", "passage", "body", "query")
OUTPUT_COLUMNS = ("query_id", "query", "doc_id", "document", "retriever_rank", "retriever_score", "is_positive")

SearchFn = Callable[[dict[str, str], dict[str, str], int], dict[str, list[tuple[str, float]]]]


# --------------------------------------------------------------------------------------------------------------
# Inputs: a BEIR folder, or a table (parquet / jsonl / csv file or folder) with an id and a text column.


@dataclass(frozen=True)
class TextSource:
    """Where (id, text) rows come from. BEIR jsonl rows join `title` and `text` the way `beir.py` does."""

    path: Path
    beir: bool = False
    id_column: str | None = None
    text_column: str | None = None
    title_column: str | None = None

    def describe(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class MineInputs:
    corpus: TextSource
    queries: TextSource
    qrels: Path | None
    # A BEIR folder's split: only the queries its qrels judge are mined (the BEIR convention), so the queries
    # of a train split never mix with those of a test split sharing the same queries.jsonl.
    judged_only: bool = False


def resolve_inputs(corpus: str | Path, queries: str | Path | None = None, qrels: str | Path | None = None,
                   split: str = "train", id_column: str | None = None, text_column: str | None = None,
                   query_id_column: str | None = None, query_text_column: str | None = None) -> MineInputs:
    """Work out corpus, queries and qrels from what the user gave; a BEIR folder supplies all three."""
    corpus_path = Path(corpus)
    if not corpus_path.exists():
        raise EttinError(f"--corpus {corpus_path}: no such file or folder")
    beir_dir = corpus_path.is_dir() and (corpus_path / "corpus.jsonl").is_file()
    if beir_dir:
        corpus_src = TextSource(corpus_path / "corpus.jsonl", beir=True)
    elif corpus_path.name == "corpus.jsonl":
        corpus_src = TextSource(corpus_path, beir=True)
    else:
        corpus_src = TextSource(corpus_path, id_column=id_column, text_column=text_column)
    root = corpus_src.path.parent if corpus_src.beir else None
    if queries is None:
        if root is None or not (root / "queries.jsonl").is_file():
            raise EttinError(f"--corpus {corpus_path} is not a BEIR folder with queries.jsonl: give --queries")
        queries_src = TextSource(root / "queries.jsonl", beir=True)
    else:
        qpath = Path(queries)
        if not qpath.exists():
            raise EttinError(f"--queries {qpath}: no such file or folder")
        if qpath.is_dir() and (qpath / "queries.jsonl").is_file():
            qpath = qpath / "queries.jsonl"
        # BEIR rows (`_id`, `text`) only inside a BEIR folder; any other file is a table with id/text columns.
        beir = qpath.name == "queries.jsonl" and (qpath.parent / "corpus.jsonl").is_file() and not (
            query_id_column or query_text_column)
        queries_src = TextSource(qpath, beir=beir, id_column=query_id_column, text_column=query_text_column)
    qrels_path: Path | None = None
    if qrels is not None:
        qrels_path = Path(qrels)
        if not qrels_path.is_file():
            raise EttinError(f"--qrels {qrels_path}: no such file")
    elif root is not None and (root / "qrels" / f"{split}.tsv").is_file():
        qrels_path = root / "qrels" / f"{split}.tsv"
        return MineInputs(corpus_src, queries_src, qrels_path, judged_only=queries is None)
    elif root is not None and queries is None and (root / "qrels").is_dir():
        # Mining every query of a folder whose judged split is another one would train on the queries that
        # split evaluates: refuse instead of falling back to all queries.
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise EttinError(f"{root / 'qrels' / (split + '.tsv')}: no such split (this folder has: "
                         f"{', '.join(have) or 'none'}); mine the split you train on and evaluate on another "
                         "(`ettin split` makes train/dev/test from one judged set)")
    return MineInputs(corpus_src, queries_src, qrels_path)


def _iter_beir_rows(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, id, text) from a BEIR jsonl file, one line at a time."""

    for line_no, row in iter_jsonl_rows(path):
        yield line_no, str(row["_id"]), document_text(row)


def _pick(names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    if wanted:
        if wanted not in names:
            raise EttinError(f"{path}: no {what} column '{wanted}' (columns: {', '.join(names)})")
        return wanted
    for name in candidates:
        if name in names:
            return name
    raise EttinError(f"{path}: no {what} column (looked for {', '.join(candidates)}; columns: {', '.join(names)}); "
                     f"name it with the {what} column option")


def _iter_table_rows(src: TextSource, batch_size: int = 8192) -> Iterator[tuple[int, str, str]]:
    """(row number, id, text) from a parquet/jsonl/csv table, read in batches through `tables`."""

    source = tables.open_input(src.path)
    names = source.column_names
    id_col = _pick(names, src.id_column, ID_COLUMNS, "id", src.path)
    text_col = _pick(names, src.text_column, TEXT_COLUMNS, "text", src.path)
    title_col = src.title_column or ("title" if "title" in names and text_col != "title" else None)
    wanted = [id_col, text_col] + ([title_col] if title_col else [])
    for start, batch in source.iter_batches(batch_size, columns=wanted):
        ids = batch.column(id_col).to_pylist()
        texts = tables.text_column(batch, text_col, start, str(src.path)).to_pylist()
        titles = batch.column(title_col).to_pylist() if title_col else None
        for i, (rid, text) in enumerate(zip(ids, texts, strict=True)):
            if rid is None or str(rid) == "":
                raise EttinError(f"{src.path} row {start + i}: empty id in column '{id_col}'")
            text = "" if text is None else text
            if titles is not None:
                text = document_text({"title": titles[i], "text": text})
            yield start + i, str(rid), text


def iter_rows(src: TextSource) -> Iterator[tuple[int, str, str]]:
    """(line/row number, id, text) from any supported source, streamed."""
    return _iter_beir_rows(src.path) if src.beir else _iter_table_rows(src)


def _where(src: TextSource, row: int) -> str:
    return f"{src.path} {'line' if src.beir else 'row'} {row}"


def read_queries(src: TextSource, empty: dict[str, str] | None = None) -> dict[str, str]:
    """All queries in input order (queries are small next to a corpus); duplicate ids are errors.

    An empty query text is an error, unless `empty` is given: then it is left out and recorded there
    (id -> where), so that the caller can refuse the judged ones and skip the others with a count.
    """
    queries: dict[str, str] = {}
    for row, qid, text in iter_rows(src):
        if qid in queries or (empty is not None and qid in empty):
            raise EttinError(f"{_where(src, row)}: duplicate query id '{qid}'")
        if not text.strip():
            if empty is None:
                raise EttinError(f"{_where(src, row)}: query '{qid}' is empty")
            empty[qid] = _where(src, row)
            continue
        queries[qid] = text
    if not queries:
        raise EttinError(f"{src.path}: no queries")
    return queries


def scan_corpus_ids(src: TextSource) -> set[str]:
    """One pass over the corpus ids (texts are not kept): checks duplicates and empties, feeds qrels checks."""
    ids: set[str] = set()
    for row, did, _text in iter_rows(src):
        if did in ids:
            raise EttinError(f"{_where(src, row)}: duplicate document id '{did}'")
        ids.add(did)
    if not ids:
        raise EttinError(f"{src.path}: the corpus is empty")
    return ids


def read_qrels(path: Path, queries: dict[str, str], doc_ids: set[str]) -> dict[str, dict[str, int]]:
    """The qrels of a mining run, checked against the queries and the corpus ids (see `beir.read_qrels`)."""

    return read_beir_qrels(path, corpus=doc_ids, queries=queries)


def iter_corpus_chunks(src: TextSource, chunk_size: int) -> Iterator[tuple[int, list[str], list[str]]]:
    """(first global position, ids, texts) for consecutive chunks of at most `chunk_size` documents."""
    ids: list[str] = []
    texts: list[str] = []
    start = 0
    for _row, did, text in iter_rows(src):
        ids.append(did)
        texts.append(text)
        if len(ids) >= chunk_size:
            yield start, ids, texts
            start += len(ids)
            ids, texts = [], []
    if ids:
        yield start, ids, texts


# --------------------------------------------------------------------------------------------------------------
# Search and merge.


def make_search(retriever: str, *, batch_size: int = 64, device: str | None = None) -> tuple[SearchFn, str]:
    """A search function for `bm25` or a bi-encoder (loaded once, reused for every chunk and block)."""

    if retriever.lower() == "bm25":
        return (lambda corpus, queries, k: retrieval.bm25_search(corpus, queries, k)), "bm25"

    model = retrieval._load_bi_encoder(retriever, resolve_device(device))

    def search(corpus: dict[str, str], queries: dict[str, str], k: int) -> dict[str, list[tuple[str, float]]]:
        return retrieval.dense_search(model, corpus, queries, k, batch_size=batch_size)

    return search, retriever


def search_block(search: SearchFn, block: dict[str, str], chunks: Iterator[tuple[int, list[str], list[str]]],
                 top_k: int, needed_ids: set[str]) -> tuple[RunningTopK, dict[int, tuple[str, str]], dict[str, str]]:
    """Search every corpus chunk for the block's queries and merge the hits into one top-k per query.

    Returns the top-k, the (doc id, text) of every position still referenced, and the texts of `needed_ids`
    (judged positives to append) met on the way.
    """
    top = RunningTopK(list(block), top_k)
    docs: dict[int, tuple[str, str]] = {}
    extra: dict[str, str] = {}
    for start, ids, texts in chunks:
        chunk = dict(zip(ids, texts, strict=True))
        if len(chunk) != len(ids):
            raise EttinError("the corpus has duplicate document ids")
        local = {did: start + i for i, did in enumerate(ids)}
        results = search(chunk, block, top_k)
        top.merge_hits({qid: (np.asarray([s for _, s in hits], dtype=np.float64),
                              np.asarray([local[d] for d, _ in hits], dtype=np.int64))
                        for qid, hits in results.items() if hits})
        keep = top.referenced()
        docs = {p: v for p, v in docs.items() if p in keep}
        for pos in keep:
            if start <= pos < start + len(ids) and pos not in docs:
                docs[pos] = (ids[pos - start], texts[pos - start])
        for did in needed_ids.intersection(chunk):
            extra[did] = chunk[did]
    return top, docs, extra


def pairs_schema() -> Any:
    """The rows `ettin mine` writes (with qrels; without, no `is_positive`): what score and select read."""
    import pyarrow as pa

    return pa.schema([("query_id", pa.string()), ("query", pa.string()), ("doc_id", pa.string()),
                      ("document", pa.string()), ("retriever_rank", pa.int32()),
                      ("retriever_score", pa.float32()), ("is_positive", pa.bool_())])


def block_table(block: dict[str, str], top: RunningTopK, docs: dict[int, tuple[str, str]],
                qrels: dict[str, dict[str, int]] | None, extra_texts: dict[str, str], add_positives: bool) -> Any:
    """The block's rows as an Arrow table, queries in input order, candidates best first."""
    import pyarrow as pa

    cols: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS}
    for qid, qtext in block.items():
        relevant = {d for d, g in (qrels or {}).get(qid, {}).items() if g > 0}
        seen = set()
        for rank, (score, pos) in enumerate(zip(top.scores[qid], top.positions[qid], strict=True), start=1):
            did, text = docs[int(pos)]
            seen.add(did)
            row = (qid, qtext, did, text, rank, float(score), did in relevant)
            for name, value in zip(OUTPUT_COLUMNS, row, strict=True):
                cols[name].append(value)
        if add_positives:
            for did in sorted(relevant - seen):
                row = (qid, qtext, did, extra_texts[did], None, None, True)
                for name, value in zip(OUTPUT_COLUMNS, row, strict=True):
                    cols[name].append(value)
    table = pa.Table.from_pydict(cols, schema=pairs_schema())
    return table if qrels is not None else table.drop_columns(["is_positive"])


def block_recall(block: dict[str, str], top: RunningTopK, docs: dict[int, tuple[str, str]],
                 qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Sums for recall@k over the block's judged queries (macro: mean of per-query recall)."""
    judged = 0
    recall_sum = 0.0
    found = total = 0
    for qid in block:
        relevant = {d for d, g in qrels.get(qid, {}).items() if g > 0}
        if not relevant:
            continue
        retrieved = {docs[int(p)][0] for p in top.positions[qid]}
        hit = len(relevant & retrieved)
        judged += 1
        recall_sum += hit / len(relevant)
        found += hit
        total += len(relevant)
    return {"judged_queries": judged, "recall_sum": recall_sum, "positives_found": found, "positives_total": total}


# --------------------------------------------------------------------------------------------------------------
# The command's library function.


@dataclass
class MineOptions:
    """What `ettin mine` does; defaults from `recipes/data.yaml` (`mining:`)."""

    retriever: str = "bm25"
    top_k: int = 2048
    chunk_size: int = 1_000_000
    queries_per_shard: int = 10_000
    add_positives: bool = True
    batch_size: int = 64
    device: str | None = None

    @classmethod
    def from_recipe(cls, section: dict[str, Any], **overrides: Any) -> MineOptions:
        """The recipe's `mining:` with the options given (not None) on top, validated."""
        return from_recipe(cls, section, **overrides).validate()

    def validate(self) -> MineOptions:
        for name in ("top_k", "chunk_size", "queries_per_shard", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise EttinError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        return self


@dataclass
class RecallCounts(Counts):
    """Sums for recall@k over a shard's judged queries (macro: mean of per-query recall; micro: found / total)."""

    judged_queries: int = 0
    recall_sum: float = 0.0
    positives_found: int = 0
    positives_total: int = 0


class MineStep(ShardedStep[Counts]):
    """One output shard per block of `queries_per_shard` queries; the corpus is searched chunk by chunk."""

    name, unit = "mine", "queries"

    def __init__(self, inputs: MineInputs, queries: dict[str, str], qrels: dict[str, dict[str, int]] | None,
                 options: MineOptions, empty_skipped: int = 0):
        self.inputs, self.queries, self.qrels, self.options = inputs, queries, qrels, options
        self.empty_skipped = empty_skipped  # unjudged queries with no text, left out (counted in the summary)
        self.query_ids = list(queries)
        self.counts = RecallCounts if qrels is not None else Counts  # type: ignore[assignment]
        self.search: SearchFn | None = None
        self.retriever_name = options.retriever
        self.cached: list[tuple[int, list[str], list[str]]] | None = None

    def block_ids(self, index: int) -> list[str]:
        size = self.options.queries_per_shard
        return self.query_ids[index * size:(index + 1) * size]

    def shards(self) -> int:
        return (len(self.query_ids) + self.options.queries_per_shard - 1) // self.options.queries_per_shard

    def describe(self) -> str:
        return f"mine {self.inputs.queries.path}"

    def schema(self, index: int) -> Any:
        schema = pairs_schema()
        return schema if self.qrels is not None else schema.remove(schema.get_field_index("is_positive"))

    def units(self, index: int) -> int:
        return len(self.block_ids(index))

    def setup(self, todo: list[int]) -> None:
        self.search, self.retriever_name = make_search(self.options.retriever, batch_size=self.options.batch_size,
                                                       device=self.options.device)
        # A corpus that fits in one chunk is read once and kept for every block; a larger one streams per block.
        first = list(itertools.islice(iter_corpus_chunks(self.inputs.corpus, self.options.chunk_size), 2))
        self.cached = first if len(first) == 1 else None

    def work(self, index: int, writer: ShardWriter) -> Counts:
        block_ids = self.block_ids(index)
        block = {q: self.queries[q] for q in block_ids}
        needed = set()
        if self.qrels is not None and self.options.add_positives:
            needed = {d for q in block_ids for d, g in self.qrels.get(q, {}).items() if g > 0}
        chunks = iter(self.cached) if self.cached is not None else iter_corpus_chunks(self.inputs.corpus,
                                                                                     self.options.chunk_size)
        assert self.search is not None
        top, docs, extra = search_block(self.search, block, chunks, self.options.top_k, needed)
        writer.write(block_table(block, top, docs, self.qrels, extra, self.options.add_positives))
        first = index * self.options.queries_per_shard
        writer.extra.update({"queries": [first, first + len(block)], "retriever": self.retriever_name})
        writer.progress.advance(len(block_ids))
        if self.qrels is None:
            return Counts()
        return RecallCounts(**block_recall(block, top, docs, self.qrels))

    def summary(self, finished: int, rows: int, c: Any) -> dict[str, Any]:
        """The printed summary and the manifest's `summary` (recall@k when judged)."""
        summary: dict[str, Any] = {"shards": self.shards(), "shards_complete": finished, "rows": rows}
        if self.empty_skipped:
            summary["empty_queries_skipped"] = self.empty_skipped
        if self.qrels is not None:
            summary[f"recall@{self.options.top_k}"] = c.recall_sum / c.judged_queries if c.judged_queries else None
            summary[f"recall@{self.options.top_k}_micro"] = (c.positives_found / c.positives_total
                                                             if c.positives_total else None)
            summary["judged_queries"] = c.judged_queries
        return summary

    def manifest_extra(self, records: list[dict[str, Any]], total: Counts) -> dict[str, Any]:
        return {"summary": self.summary(len(records), sum(int(r["rows"]) for r in records), total)}


def mine(inputs: MineInputs, output: str | Path, options: MineOptions, *, overwrite: bool = False,
         verify: bool = False, num_shards: int | None = None, shard_index: int | None = None) -> dict[str, Any]:
    """Mine candidates for every query into sharded parquet under `output`; returns the run summary.

    Resumable: shards already complete (valid completion record) are skipped. Returns the manifest summary
    once every shard exists (on the rank that finishes last), else a partial summary of this rank's work.
    A qrels split that judges no query is refused (exit 2) before anything is written.
    """
    options.validate()
    rank = current_rank(num_shards, shard_index)
    empty: dict[str, str] = {}
    queries = read_queries(inputs.queries, empty)
    qrels = None
    needs_ids = inputs.qrels is not None
    doc_ids = scan_corpus_ids(inputs.corpus) if needs_ids else None
    if inputs.qrels is not None:
        qrels = read_qrels(inputs.qrels, {**queries, **empty}, doc_ids or set())
        judged_empty = [q for q in empty if q in qrels]
        if judged_empty:  # a judged query without text cannot be mined, and dropping it would bias recall
            raise EttinError(f"{empty[judged_empty[0]]}: query '{judged_empty[0]}' is empty (judged in "
                             f"{inputs.qrels}; {len(judged_empty)} judged queries are empty)")
        if not qrels:
            raise EttinError(f"{inputs.qrels}: split '{inputs.qrels.stem}' has 0 judged queries; nothing to mine "
                             "(give a qrels file that judges the queries you train on)")
    if empty:
        logger.warning(f"mine: skipped {len(empty):,} empty unjudged queries (first: {next(iter(empty.values()))})")
    if not queries:
        raise EttinError(f"{inputs.queries.path}: no queries with text")
    if inputs.judged_only and qrels is not None:
        total = len(queries)
        queries = {qid: text for qid, text in queries.items() if qid in qrels}
        # Say which split fed the queries: mining the split you later evaluate on trains on the test queries.
        logger.info(f"mine: the {len(queries):,} of {total:,} queries judged in {inputs.qrels} "
                    f"(split '{inputs.qrels.stem}'); evaluate on another split")
    elif qrels is not None:
        logger.info(f"mine: all {len(queries):,} queries of {inputs.queries.path}; positives from {inputs.qrels}")
    else:
        logger.info(f"mine: all {len(queries):,} queries of {inputs.queries.path} (no qrels: no positives flagged)")
    config = {
        "step": "mine",
        "corpus": str(inputs.corpus.path),
        "corpus_bytes": _size(inputs.corpus.path),  # a changed corpus at the same path is a different run
        "queries": str(inputs.queries.path),
        "queries_bytes": _size(inputs.queries.path),
        "qrels": str(inputs.qrels) if inputs.qrels else None,
        "judged_only": inputs.judged_only,
        "retriever": options.retriever,
        "top_k": options.top_k,
        "chunk_size": options.chunk_size,
        "queries_per_shard": options.queries_per_shard,
        "add_positives": options.add_positives,
        "num_queries": len(queries),
    }
    step = MineStep(inputs, queries, qrels, options, empty_skipped=len(empty))
    run = run_step(step, ShardedFolder(output), config, rank=rank, overwrite=overwrite, verify=verify)
    return {**step.summary(len(run.records), run.rows, run.counts), "complete": run.complete}


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
