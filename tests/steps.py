"""The five sharded steps on small real inputs, and a content digest of what they write.

Shared by `test_step_outputs.py` (the outputs equal those of the pre-refactor code) and `test_step_faults.py`
(a run killed with SIGKILL and rerun equals an uninterrupted run). Inputs are real: Cranfield (BEIR folder and
pairs), and the `lightonai/embeddings-fine-tuning` replica of `replicas.py`; the teacher is the real
all-MiniLM-L6-v2 (a bi-encoder, the offline teacher).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from conftest import make_pairs
from replicas import fine_tuning_sources, write_fine_tuning

from ettin_cli.io.shards import ShardedFolder

STEPS = ("mine", "lists", "score", "select", "mix")
OUTPUTS = {"mine": "mined", "lists": "lists", "score": "scored", "select": "selected", "mix": "mix"}
MIX_SUBSETS = ("validation", "quora", "msmarco")
VOLATILE = {"started_at", "finished_at", "host", "seconds", "throughput", "environment", "tool_version",
            "version", "scoring_seconds", "wall_seconds", "pairs_per_second", "pairs_per_second_per_worker"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def folder_digest(folder: Path) -> dict[str, Any]:
    """Schema, rows as a sorted multiset (hashed), row count, shard records and manifest totals of one output."""
    output = ShardedFolder(folder)
    table = pa.concat_tables([pq.read_table(p) for p in output.shards()])
    rows = sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())
    manifest = output.manifest()
    return {
        "schema": [f"{f.name}:{f.type}" for f in table.schema],
        "rows": len(rows),
        "rows_sha256": hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest(),
        "shards": _strip(manifest["shards"]),
        **{key: _strip(manifest[key]) for key in ("totals", "summary", "report", "subset") if key in manifest},
    }


def step_digest(step: str, out: Path) -> dict[str, Any]:
    """The digest of one step's output under `out` (mix: each subset and `summary.json`)."""
    if step != "mix":
        return folder_digest(out / OUTPUTS[step])
    summary = json.loads((out / "mix" / "summary.json").read_text(encoding="utf-8"))
    return {**{sub: folder_digest(out / "mix" / sub) for sub in MIX_SUBSETS}, "summary.json": summary}


def write_step_inputs(cranfield: Any, cranfield_dir: Path, root: Path) -> dict[str, Path]:
    """Small real inputs under `root`: Cranfield pairs, a quora-like pairs file, the lists replica, two mix
    recipes (`recipe`: 16 rows per shard, `recipe_small`: 4)."""
    pairs = root / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(make_pairs(cranfield, n_queries=12, negatives_per_query=5)), pairs)
    quora = root / "quora.parquet"
    pq.write_table(pa.Table.from_pylist([{"query": r["query"], "document": r["document"]}
                                         for r in make_pairs(cranfield, 10, 4, seed=1)]), quora)
    lists_root = write_fine_tuning(root / "ft", fine_tuning_sources(cranfield), rows_per_file=100)
    inputs = {"root": root, "cranfield": cranfield_dir, "pairs": pairs, "quora": quora, "lists": lists_root}
    for name, per_shard in (("recipe", 16), ("recipe_small", 4)):
        inputs[name] = root / f"{name}.yaml"
        inputs[name].write_text(yaml.safe_dump({
            "mix": {"seed": 5, "rows_per_shard": per_shard,
                    "validation": {"source": "quora", "rows": 10, "take": "tail"}},
            "sources": [
                {"name": "quora", "group": "pre-training", "hub": "lightonai/embeddings-pre-training",
                 "config": "quora", "cap": 25},
                {"name": "msmarco", "group": "retrieval", "hub": "lightonai/embeddings-fine-tuning",
                 "config": "msmarco", "requires": "select",
                 "columns": {"query": "query", "document": "document", "score": "score"}},
            ]}), encoding="utf-8")
    return inputs


def step_commands(inputs: dict[str, Path], teacher: Path, out: Path, *, small: bool = False,
                  scored: Path | None = None, selected: Path | None = None) -> dict[str, list[str]]:
    """The `ettin` arguments of each step writing under `out`; `small`: small shards, less teacher work.

    select reads `scored` (default: score's output under `out`), mix reads `selected` (default: select's).
    """
    scored = scored or out / "scored"
    selected = selected or out / "selected"
    return {
        "mine": ["mine", "--corpus", str(inputs["cranfield"]), "--split", "test", "--top-k", "15",
                 "--queries-per-shard", "40", "--output", str(out / "mined")],
        "lists": ["mine", "--lists", str(inputs["lists"]), "--source", "nq", "--queries-per-shard",
                  "3" if small else "5", "--cache-dir", str(inputs["root"] / "hf-cache"), "--output",
                  str(out / "lists")],
        "score": ["score", str(inputs["pairs"]), "--teacher", str(teacher), "--device", "cpu", "--output",
                  str(out / "scored"), *(["--rows-per-shard", "8", "--sort-window", "4", "--limit", "40"] if small
                                         else ["--rows-per-shard", "25", "--sort-window", "16"])],
        "select": ["select", str(scored), "--positive-column", "label", "--keep", "8", "--hard", "2", "--head", "2",
                   "--band-count", "2", "--band", "2:6", "--output", str(out / "selected")],
        "mix": ["mix", "--recipe", str(inputs["recipe_small" if small else "recipe"]), "--source",
                f"quora={inputs['quora']}", "--source", f"msmarco={selected}", "--output", str(out / "mix")],
    }
