"""An empty result is never reported as success (issue #23): a step that would write zero rows, or reads a split
with zero judged queries, exits 2 with one line naming the split or source and the count, and no manifest says
"complete" over an empty output. The refusal for an empty output lives in the one lifecycle (`io.lifecycle`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from conftest import run_cli
from replicas import write_fine_tuning

from ettin_cli.io.shards import MANIFEST_FILE


def error_of(args: list[str], capsys) -> str:
    code, _, err = run_cli(["-q", *args], capsys)
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def no_manifest(out: Path) -> bool:
    return not list(out.rglob(MANIFEST_FILE)) if out.exists() else True


def test_mine_refuses_a_split_with_zero_judged_queries(cranfield_dir, tmp_path, capsys):
    """The newcomer's case: qrels/train.tsv with only its header mined 0 rows and said "complete"."""
    beir = tmp_path / "beir"
    shutil.copytree(cranfield_dir, beir)
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n", encoding="utf-8")
    out = tmp_path / "mined"
    line = error_of(["mine", "--corpus", str(beir), "--split", "train", "--output", str(out)], capsys)
    assert line == (f"error: {beir / 'qrels' / 'train.tsv'}: split 'train' has 0 judged queries; nothing to mine "
                    "(give a qrels file that judges the queries you train on)")
    assert not out.exists()


def test_mine_lists_refuses_a_source_whose_lists_give_zero_pairs(tmp_path, capsys):
    schema = pa.schema([("query_id", pa.int64()), ("document_ids", pa.list_(pa.int64())),
                        ("scores", pa.list_(pa.float64())), ("positive_ids", pa.list_(pa.int64()))])
    data = {"nq": {"queries": [{"query_id": 1, "query": "what lifts a wing"}],
                   "documents": [{"document_id": 0, "document": "lift of a wing"}],
                   "scores": [{"query_id": 1, "document_ids": [], "scores": [], "positive_ids": []}]}}
    root = write_fine_tuning(tmp_path / "ft", data, schemas={"scores": schema})
    out = tmp_path / "lists"
    line = error_of(["mine", "--lists", str(root), "--source", "nq", "--cache-dir", str(tmp_path / "cache"),
                     "--output", str(out)], capsys)
    assert line == (f"error: source 'nq' of {root}: 0 rows to write; an empty output is not marked complete")
    assert no_manifest(out)


def test_score_refuses_when_every_row_is_skipped(tmp_path, minilm_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"query": None, "document": f"d{i}"}) + "\n" for i in range(3)))
    out = tmp_path / "scored"
    line = error_of(["score", str(path), "--teacher", str(minilm_path), "--device", "cpu", "--skip-invalid",
                     "--output", str(out)], capsys)
    assert line == f"error: {path}: 0 rows to write: all 3 rows have a null 'query' or 'document'"
    assert not out.exists()  # refused before the teacher loads


def test_select_refuses_an_input_with_zero_rows(tmp_path, capsys):
    path = tmp_path / "scored.parquet"
    pq.write_table(pa.table({"query_id": pa.array([], pa.string()), "score": pa.array([], pa.float32())}), path)
    out = tmp_path / "selected"
    line = error_of(["select", str(path), "--output", str(out)], capsys)
    assert line == f"error: select {path}: 0 rows to write; an empty output is not marked complete"
    assert no_manifest(out)


def test_mix_refuses_a_source_left_with_zero_rows(tmp_path, capsys):
    source = tmp_path / "blank.jsonl"
    source.write_text("".join(json.dumps({"query": " ", "document": f"d{i}"}) + "\n" for i in range(4)))
    recipe = tmp_path / "data.yaml"
    recipe.write_text(yaml.safe_dump({"mix": {"seed": 1, "rows_per_shard": 10},
                                      "sources": [{"name": "blank", "hub": "lightonai/embeddings-pre-training"}]}))
    out = tmp_path / "mix"
    line = error_of(["mix", "--recipe", str(recipe), "--source", f"blank={source}", "--validation-rows", "0",
                     "--output", str(out)], capsys)
    assert line == (f"error: source 'blank' ({source}): 4 rows taken, 4 empty, 0 in validation, 0 flagged upstream: "
                    "0 rows to write; an empty output is not marked complete")
    assert no_manifest(out) and not (out / "summary.json").exists()
