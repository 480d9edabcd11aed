"""A pushed mix loads like `cross-encoder/ettin-reranker-v1-data`: one config per subset, query/document/label,
and the held-out rows as the `validation` split of `quora` (publish/dataset_layout.py, through the stand-in Hub)."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest
from hub_server import StandInHub
from test_push import ORG, TOKEN, USER, api_requests, run_push

from ettin_cli.io import shards

TEACHER = "mixedbread-ai/mxbai-rerank-large-v2"


@pytest.fixture(scope="module")
def stand_in_hub():
    server = StandInHub()
    server.start()
    server.add_account(TOKEN, USER, (ORG,))
    yield server
    server.stop()


def scored_dir(root: Path, name: str, rows: list[dict], per_shard: int = 7) -> Path:
    """A folder laid out as `ettin score` writes it: input columns + `score` float32, shards, manifest."""
    folder = root / name
    shards.ShardedFolder(folder).prepare({"step": "score", "teacher": TEACHER, "subset": name})
    table = pa.Table.from_pylist(rows).append_column(
        "score", pa.array([r.pop("_score") for r in rows], type=pa.float32())).drop_columns(["_score"])
    n = max(1, math.ceil(table.num_rows / per_shard))
    for i in range(n):
        shards.ShardedFolder(folder).write(i, table.slice(i * per_shard, per_shard))
    shards.ShardedFolder(folder).finalize(n, {"teacher": TEACHER})
    return folder


@pytest.fixture(scope="module")
def mix(cranfield_pairs, tmp_path_factory):
    """quora (train), its held-out tail as `validation/`, and agnews, with real text and logit-like scores."""
    root = tmp_path_factory.mktemp("scored")

    def rows(part, offset):
        return [{"query_id": r["query_id"], "query": r["query"], "document": r["document"], "doc_id": r["doc_id"],
                 "_score": float((i * 37 + offset) % 170) / 10.0 - 3.0} for i, r in enumerate(part)]

    quora = rows(cranfield_pairs[:40], 1)
    return {"quora": scored_dir(root, "quora", [dict(r) for r in quora[:30]]),
            "validation": scored_dir(root, "validation", [dict(r) for r in quora[30:]]),
            "agnews": scored_dir(root, "agnews", rows(cranfield_pairs[40:75], 2)),
            "root": root}


def local_rows(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(p) for p in shards.ShardedFolder(folder).shards()])
    return [{"query": q, "document": d, "label": s} for q, d, s in zip(
        table.column("query").to_pylist(), table.column("document").to_pylist(),
        table.column("score").cast(pa.float32()).to_pylist(), strict=True)]


def test_a_pushed_mix_loads_like_the_published_data(mix, stand_in_hub, tmp_path):
    import datasets

    stand_in_hub.reset()
    repo = f"{ORG}/ettin-reranker-v1-data"
    args = [f"quora={mix['quora']}", f"agnews={mix['agnews']}", f"validation={mix['validation']}",
            "--repo-id", repo, "--repo-type", "dataset"]
    result = run_push(args, stand_in_hub, tmp_path)
    assert result.returncode == 0, result.stderr
    clone = stand_in_hub.materialize(repo, tmp_path / "clone", "dataset")
    cache = str(tmp_path / "cache")
    held = datasets.load_dataset(str(clone), "quora", split="validation", cache_dir=cache)
    assert held.column_names == ["query", "document", "label"] and held.features["label"].dtype == "float32"
    assert held.to_list() == local_rows(mix["validation"])
    quora = datasets.load_dataset(str(clone), "quora", cache_dir=cache)
    assert sorted(quora) == ["train", "validation"] and quora["train"].to_list() == local_rows(mix["quora"])
    agnews = datasets.load_dataset(str(clone), "agnews", cache_dir=cache)
    assert list(agnews) == ["train"] and agnews["train"].to_list() == local_rows(mix["agnews"])
    assert sorted(datasets.get_dataset_config_names(str(clone))) == ["agnews", "quora"]  # no `validation` config


def refused(result, server, *needles):
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert api_requests(server) == []
    return errors[0]


def test_a_validation_split_without_its_config_is_refused(mix, stand_in_hub, tmp_path):
    stand_in_hub.reset()
    result = run_push([f"agnews={mix['agnews']}", f"validation={mix['validation']}", "--repo-id", f"{ORG}/d",
                       "--repo-type", "dataset"], stand_in_hub, tmp_path)
    refused(result, stand_in_hub, "config 'quora'", "missing from this push")


@pytest.mark.parametrize("bad, needles", [
    ([2.0, float("nan"), 1.0, float("inf"), 0.5, float("nan")], ["config 'broken'", "3 row(s)", "first rows: 1, 3, 5"]),
    (["high", "low", "mid"], ["config 'broken'", "column 'score' is string, not numeric"]),
])
def test_bad_targets_are_one_line_and_nothing_is_written(bad, needles, stand_in_hub, tmp_path):
    stand_in_hub.reset()
    folder = tmp_path / "broken"
    shards.ShardedFolder(folder).prepare({"step": "score"})
    table = pa.table({"query": [f"q{i}" for i in range(len(bad))], "document": ["d"] * len(bad),
                      "score": pa.array(bad)})
    shards.ShardedFolder(folder).write(0, table.slice(0, 2))
    shards.ShardedFolder(folder).write(1, table.slice(2))
    shards.ShardedFolder(folder).finalize(2)
    result = run_push([str(folder), "--repo-id", f"{ORG}/d", "--repo-type", "dataset"], stand_in_hub, tmp_path)
    refused(result, stand_in_hub, *needles)
    assert not (folder / ".ettin" / "release").exists()
