"""Small local replicas of the two upstream layouts the release was built from (RECIPE.md, "Upstream sources").

- `write_fine_tuning(root, sources)`: `lightonai/embeddings-fine-tuning` (and its teacher-rescored copy
  `cross-encoder/lightonai-embeddings-fine-tuning-reranked-v1`): configs `queries` (`query_id`, `query`),
  `documents` (`document_id`, `document`) and `scores` (`query_id`, `document_ids`, `scores`, `positive_ids`),
  one split per source (`fiqa`, `nq`, ...), declared in the README's YAML the way the Hub declares them, so
  `datasets.load_dataset(root, "scores", split="fiqa")` works on the folder as on the Hub id.
- `pretraining_rows(...)`: rows of a `lightonai/embeddings-pre-training` config: `query`, `document`,
  `similarity`, `drop` (bool) and `duplicate` (nullable int).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PARTS = ("queries", "documents", "scores")


def write_fine_tuning(root: Path, sources: dict[str, dict[str, list[dict[str, Any]]]],
                      parts: tuple[str, ...] = PARTS, rows_per_file: int | None = None,
                      schemas: dict[str, Any] | None = None) -> Path:
    """`sources[name][part]` = rows of that part; parquet files `PART/NAME-0000i.parquet` + README configs.

    `schemas[part]` fixes a part's Arrow schema (rows whose types cannot be inferred, e.g. only empty lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    lines = ["---", "configs:"]
    for part in parts:
        lines += [f"- config_name: {part}", "  data_files:"]
        for name, data in sources.items():
            rows = data[part]
            step = rows_per_file or max(len(rows), 1)
            (root / part).mkdir(exist_ok=True)
            for i, start in enumerate(range(0, max(len(rows), 1), step)):
                table = pa.Table.from_pylist(rows[start:start + step], schema=(schemas or {}).get(part))
                pq.write_table(table, root / part / f"{name}-{i:05d}.parquet")
            lines += [f"  - split: {name}", f"    path: {part}/{name}-*.parquet"]
    lines += ["---", "", "A local replica of lightonai/embeddings-fine-tuning (test fixture).", ""]
    (root / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return root


def pretraining_rows(pairs: list[tuple[str, str]], flags: list[tuple[bool | None, int | None]]) -> list[dict]:
    """Rows of an embeddings-pre-training config: one (drop, duplicate) flag pair per (query, document)."""
    return [{"query": q, "document": d, "similarity": 0.5 + 0.001 * i, "drop": drop, "duplicate": dup}
            for i, ((q, d), (drop, dup)) in enumerate(zip(pairs, flags, strict=True))]


def fine_tuning_sources(cranfield) -> dict:
    """Two sources with real Cranfield text: `fiqa` with dense ids (id = row), `nq` with sparse shuffled ids.

    Lists mix judged and random documents, in a shuffled order; planted: a duplicated id, an empty list, a
    positive that is not in its list, and a list without positives.
    """
    import random

    rng = random.Random(7)
    doc_ids = sorted(cranfield.corpus, key=int)[:300]
    out = {}
    for name, sparse in (("fiqa", False), ("nq", True)):
        ids = list(range(len(doc_ids)))
        if sparse:
            ids = rng.sample(range(10_000, 90_000), len(doc_ids))
        id_of = dict(zip(doc_ids, ids, strict=True))
        documents = [{"document_id": id_of[d], "document": cranfield.corpus[d]} for d in doc_ids]
        if sparse:
            rng.shuffle(documents)
        queries, scores = [], []
        judged = [q for q in cranfield.judged_queries if any(d in id_of for d in cranfield.qrels[q])][:24]
        for n, qid in enumerate(judged):
            qnum = 500 + n if sparse else n
            queries.append({"query_id": qnum, "query": cranfield.queries[qid]})
            pos = [id_of[d] for d, g in cranfield.qrels[qid].items() if g > 0 and d in id_of]
            listed = pos[:2] + [id_of[d] for d in rng.sample(doc_ids, 12)]
            listed = list(dict.fromkeys(listed))
            rng.shuffle(listed)
            if n == 3:
                listed.append(listed[0])  # a duplicate listing
            if n == 5:
                listed = []  # an empty list
            positives = pos[:3]
            if n == 7:
                positives = []
            scores.append({"query_id": qnum, "document_ids": listed,
                           "scores": [round(1.0 - 0.01 * i, 4) for i in range(len(listed))],
                           "positive_ids": positives})
        rng.shuffle(queries)
        out[name] = {"queries": queries, "documents": documents, "scores": scores}
    return out
