"""The five sharded steps write what they wrote before the lifecycle refactor (issue #22: nothing a user sees changes).

`tests/golden/step_outputs.json` was produced by the pre-refactor code at commit f918f0a (`git worktree add
/tmp/base f918f0a`, these test files copied in, `ETTIN_WRITE_GOLDEN=1 PYTHONPATH=/tmp/base/src pytest
tests/test_step_outputs.py`). This test reruns the same commands (`ettin mine`, `mine --lists`, `score`,
`select`, `mix`) with the current code on the same small real inputs and compares content digests: each
output's schema, its rows as a sorted multiset, the shard records and manifest totals and counts, the
command's printed summary. Timestamps, hosts, durations, speeds and temporary paths are left out; shard sizes
and SHA-256 are kept, so the parquet bytes must match too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_cli
from replicas import fine_tuning_sources, write_fine_tuning

from ettin_cli.io.shards import ShardedFolder

GOLDEN = Path(__file__).parent / "golden" / "step_outputs.json"
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


def _ok(args: list[str], capsys) -> str:
    code, out, err = run_cli(["-q", *args], capsys)
    assert code == 0, err
    return out


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return re.sub(r"[0-9.,]+ pairs/s", "(speed) pairs/s", text.strip())


@pytest.fixture(scope="module")
def step_inputs(cranfield, cranfield_dir, tmp_path_factory) -> dict[str, Path]:
    """Small real inputs: Cranfield (BEIR), real Cranfield pairs, the embeddings-fine-tuning replica."""
    from conftest import make_pairs

    root = tmp_path_factory.mktemp("step-inputs")
    pairs = root / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(make_pairs(cranfield, n_queries=12, negatives_per_query=5)), pairs)
    quora = root / "quora.parquet"
    pq.write_table(pa.Table.from_pylist([{"query": r["query"], "document": r["document"]}
                                         for r in make_pairs(cranfield, 10, 4, seed=1)]), quora)
    lists_root = write_fine_tuning(root / "ft", fine_tuning_sources(cranfield), rows_per_file=100)
    recipe = root / "data.yaml"
    recipe.write_text(yaml.safe_dump({
        "mix": {"seed": 5, "rows_per_shard": 16, "validation": {"source": "quora", "rows": 10, "take": "tail"}},
        "sources": [
            {"name": "quora", "group": "pre-training", "hub": "lightonai/embeddings-pre-training", "config": "quora",
             "cap": 25},
            {"name": "msmarco", "group": "retrieval", "hub": "lightonai/embeddings-fine-tuning", "config": "msmarco",
             "requires": "select", "columns": {"query": "query", "document": "document", "score": "score"}},
        ]}), encoding="utf-8")
    return {"root": root, "cranfield": cranfield_dir, "pairs": pairs, "quora": quora, "lists": lists_root,
            "recipe": recipe}


def run_steps(inputs: dict[str, Path], teacher: Path, out: Path, capsys) -> dict[str, Any]:
    """Every sharded step once, through the CLI, on `inputs`; returns each output's digest and printed summary."""
    printed = {
        "mine": _ok(["mine", "--corpus", str(inputs["cranfield"]), "--split", "test", "--top-k", "15",
                     "--queries-per-shard", "40", "--output", str(out / "mined")], capsys),
        "lists": _ok(["mine", "--lists", str(inputs["lists"]), "--source", "nq", "--queries-per-shard", "5",
                      "--cache-dir", str(inputs["root"] / "hf-cache"), "--output", str(out / "lists")], capsys),
        "score": _ok(["score", str(inputs["pairs"]), "--teacher", str(teacher), "--device", "cpu",
                      "--rows-per-shard", "25", "--sort-window", "16", "--output", str(out / "scored")], capsys),
    }
    printed["select"] = _ok(["select", str(out / "scored"), "--positive-column", "label", "--keep", "8", "--hard",
                             "2", "--head", "2", "--band-count", "2", "--band", "2:6", "--output",
                             str(out / "selected")], capsys)
    printed["mix"] = _ok(["mix", "--recipe", str(inputs["recipe"]), "--source", f"quora={inputs['quora']}",
                          "--source", f"msmarco={out / 'selected'}", "--output", str(out / "mix")], capsys)
    digests: dict[str, Any] = {}
    for step in ("mine", "lists", "score", "select"):
        name = {"mine": "mined", "lists": "lists", "score": "scored", "select": "selected"}[step]
        digests[step] = {"output": folder_digest(out / name), "printed": _json_or_text(printed[step])}
    summary = json.loads((out / "mix" / "summary.json").read_text(encoding="utf-8"))
    digests["mix"] = {"output": {sub: folder_digest(out / "mix" / sub) for sub in ("validation", "quora", "msmarco")},
                      "summary": summary}
    text = json.dumps(digests, sort_keys=True)
    for path, tag in ((inputs["root"], "<inputs>"), (out, "<out>"), (teacher, "<teacher>"),
                      (inputs["cranfield"], "<cranfield>")):
        text = text.replace(str(path), tag)
    return json.loads(text)


def test_each_step_writes_what_the_pre_refactor_code_wrote(step_inputs, minilm_path, tmp_path, capsys):
    digests = run_steps(step_inputs, minilm_path, tmp_path / "out", capsys)
    if os.environ.get("ETTIN_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert set(digests) == {"mine", "lists", "score", "select", "mix"}
    for step in golden:
        assert digests[step] == golden[step], step
