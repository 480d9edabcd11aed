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
                      parts: tuple[str, ...] = PARTS, rows_per_file: int | None = None) -> Path:
    """`sources[name][part]` = rows of that part; parquet files `PART/NAME-0000i.parquet` + README configs."""
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
                pq.write_table(pa.Table.from_pylist(rows[start:start + step]), root / part / f"{name}-{i:05d}.parquet")
            lines += [f"  - split: {name}", f"    path: {part}/{name}-*.parquet"]
    lines += ["---", "", "A local replica of lightonai/embeddings-fine-tuning (test fixture).", ""]
    (root / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return root


def pretraining_rows(pairs: list[tuple[str, str]], flags: list[tuple[bool | None, int | None]]) -> list[dict]:
    """Rows of an embeddings-pre-training config: one (drop, duplicate) flag pair per (query, document)."""
    return [{"query": q, "document": d, "similarity": 0.5 + 0.001 * i, "drop": drop, "duplicate": dup}
            for i, ((q, d), (drop, dup)) in enumerate(zip(pairs, flags, strict=True))]
