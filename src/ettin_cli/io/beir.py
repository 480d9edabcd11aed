"""BEIR-layout test collections: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`.

The offline evaluation format of the project (Cranfield in tests, any BEIR set in production). Loading checks
what later steps rely on and fails with the file and line at fault: a missing file, a line that is not JSON,
a row without `_id`, qrels naming ids that are not in the corpus or the queries.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ettin_cli.core.errors import EttinError


@dataclass
class BeirDataset:
    """A test collection held in memory: id -> text maps and graded judgements."""

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def judged_queries(self) -> list[str]:
        """Query ids with at least one positive judgement, in file order."""
        return [qid for qid in self.queries if any(g > 0 for g in self.qrels.get(qid, {}).values())]

    def first_queries(self, n: int | None) -> BeirDataset:
        """The first `n` judged queries (all of them when `n` is None): a cheaper evaluation, same corpus."""
        if not n:
            return self
        keep = self.judged_queries[:n]
        return BeirDataset(name=self.name, corpus=self.corpus, queries={q: self.queries[q] for q in keep},
                           qrels={q: self.qrels[q] for q in keep})


def iter_jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a BEIR jsonl file, one line at a time; a bad line names itself."""
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EttinError(f"{path} line {line_no}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict) or row.get("_id") in (None, ""):
                    raise EttinError(f"{path} line {line_no}: a row needs an '_id' field")
                yield line_no, row
        except UnicodeDecodeError:
            raise EttinError(f"{path}: not valid UTF-8 text") from None


def _read_jsonl(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise EttinError(f"{path}: {what} file not found (BEIR layout: corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    return [row for _, row in iter_jsonl_rows(path)]


def document_text(row: dict) -> str:
    """BEIR documents are title + text; the title, when present, comes first on its own line."""
    title = (row.get("title") or "").strip()
    text = str(row.get("text") or "")
    return f"{title}\n{text}" if title else text


def load_beir(path: str | Path, split: str = "test", require_qrels: bool = True) -> BeirDataset:
    """Load a BEIR-layout directory; only queries that have judgements are kept when qrels exist."""
    root = Path(path)
    if not root.is_dir():
        raise EttinError(f"{root}: not a directory (expected a BEIR layout: corpus.jsonl, queries.jsonl, qrels/)")
    corpus = {str(r["_id"]): document_text(r) for r in _read_jsonl(root / "corpus.jsonl", "corpus")}
    queries = {str(r["_id"]): str(r.get("text") or "") for r in _read_jsonl(root / "queries.jsonl", "queries")}
    if not corpus:
        raise EttinError(f"{root / 'corpus.jsonl'}: the corpus is empty")
    qrels_path = root / "qrels" / f"{split}.tsv"
    qrels: dict[str, dict[str, int]] = {}
    if qrels_path.is_file():
        qrels = read_qrels(qrels_path, corpus, queries)
        queries = {qid: text for qid, text in queries.items() if qid in qrels}
    elif require_qrels:
        raise EttinError(f"{qrels_path}: qrels file not found" + (
            " (make train/dev/test with `ettin split`)" if split != "test" else ""))
    # Only the queries read matter: an empty query another split (or no split) judges is not this one's problem.
    empty = [qid for qid, text in queries.items() if not text.strip()]
    if empty:
        raise EttinError(f"{root / 'queries.jsonl'}: {len(empty)} empty queries (first ids: {', '.join(empty[:5])})")
    if not queries:
        raise EttinError(f"{root}: no queries with judgements")
    return BeirDataset(name=root.name, corpus=corpus, queries=queries, qrels=qrels)


def read_qrels(path: Path, corpus: Container[str], queries: Container[str]) -> dict[str, dict[str, int]]:
    """Read `query-id<TAB>corpus-id<TAB>score` (header optional); an id the corpus or queries lack is an error.

    `corpus` and `queries` only need `in`: id -> text maps, or the id sets of a corpus streamed from disk.
    """
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not row or (line_no == 1 and row[0].strip() in ("query-id", "query_id", "qid")):
                continue
            if len(row) < 3:
                raise EttinError(f"{path} line {line_no}: expected 3 tab-separated columns "
                                 f"(query-id, corpus-id, score), got {len(row)}")
            qid, did, grade = row[0].strip(), row[1].strip(), row[2].strip()
            try:
                value = int(float(grade))
            except ValueError:
                raise EttinError(f"{path} line {line_no}: relevance '{grade}' is not a number") from None
            if qid not in queries:
                raise EttinError(f"{path} line {line_no}: query id '{qid}' is not among the queries")
            if did not in corpus:
                raise EttinError(f"{path} line {line_no}: document id '{did}' is not in the corpus")
            qrels.setdefault(qid, {})[did] = value
    return qrels
