"""`ettin mine --lists`: mined candidate lists (the embeddings-fine-tuning layout) to pairs, without mining."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from replicas import fine_tuning_sources, write_fine_tuning

from ettin_cli.core.errors import EttinError
from ettin_cli.data import lists, mining
from ettin_cli.io import shards

ETTIN = [sys.executable, "-m", "ettin_cli"]


def read_rows(directory: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in shards.ShardedFolder(directory).shards()]).to_pylist()


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("part-*.parquet"))}


@pytest.fixture(scope="module")
def replica(cranfield, tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings-fine-tuning")
    data = fine_tuning_sources(cranfield)
    write_fine_tuning(root / "ft", data, rows_per_file=100)
    return {"root": root / "ft", "data": data, "cache": str(root / "hf-cache")}


def expected_pairs(data: dict, top_k: int | None = None) -> list[dict]:
    """The pairs the lists describe, worked out row by row with dicts (the test's own reading)."""
    queries = {q["query_id"]: q["query"] for q in data["queries"]}
    docs = {d["document_id"]: d["document"] for d in data["documents"]}
    rows = []
    for entry in data["scores"]:
        seen = set()
        for i, (did, score) in enumerate(zip(entry["document_ids"], entry["scores"], strict=True)):
            if (top_k is not None and i >= top_k) or did in seen:
                continue
            seen.add(did)
            rows.append({"query_id": str(entry["query_id"]), "query": queries[entry["query_id"]],
                         "doc_id": str(did), "document": docs[did], "retriever_rank": i + 1,
                         "retriever_score": score, "is_positive": did in entry["positive_ids"]})
    return rows


def run_lists(replica, source: str, out: Path, **kwargs) -> dict:
    options = lists.ListsOptions(cache_dir=replica["cache"], lists_per_shard=kwargs.pop("per_shard", 5),
                                 batch_lists=kwargs.pop("batch", 3), top_k=kwargs.pop("top_k", None))
    return lists.mine_lists(str(replica["root"]), source, out, options, **kwargs)


@pytest.mark.parametrize("source, kind", [("fiqa", "dense"), ("nq", "sorted")])
def test_pairs_are_exactly_the_listed_ids_with_their_positives(replica, tmp_path, source, kind):
    out = tmp_path / source
    summary = run_lists(replica, source, out)
    assert summary["complete"] and summary["document_ids"] == kind
    rows = read_rows(out)
    expected = expected_pairs(replica["data"][source])
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected, strict=True):
        assert got["retriever_score"] == pytest.approx(want.pop("retriever_score"), abs=1e-6)
        assert {k: got[k] for k in want} == want
    assert summary["duplicates"] == 1 and summary["empty_lists"] == 1
    assert summary["rows"] == len(expected) == shards.ShardedFolder(out).manifest()["totals"]["rows"]
    assert summary["lists_without_positive"] == sum(
        not any(r["is_positive"] for r in expected if r["query_id"] == str(e["query_id"]))
        for e in replica["data"][source]["scores"])
    # the same schema `ettin mine` writes with qrels: score and select read it unchanged
    schema = pq.read_schema(shards.ShardedFolder(out).shards()[0])
    assert schema.names == list(mining.OUTPUT_COLUMNS)


def test_top_k_keeps_the_head_of_each_list(replica, tmp_path):
    run_lists(replica, "fiqa", tmp_path / "k", top_k=4)
    rows = read_rows(tmp_path / "k")
    expected = expected_pairs(replica["data"]["fiqa"], top_k=4)
    assert [(r["query_id"], r["doc_id"], r["is_positive"]) for r in rows] == [
        (r["query_id"], r["doc_id"], r["is_positive"]) for r in expected]
    assert max(r["retriever_rank"] for r in rows) == 4


def test_score_and_select_take_the_pairs_unchanged(replica, tiny_qwen2_teacher_path, tmp_path):
    from ettin_cli.data.selection import SelectionConfig, select
    from ettin_cli.label.scoring import ScoreJob, run_score

    pairs = tmp_path / "mined"
    run_lists(replica, "fiqa", pairs, top_k=6)
    result = run_score(ScoreJob(input=str(pairs), output=tmp_path / "scored", teacher=str(tiny_qwen2_teacher_path),
                                max_length=256, rows_per_shard=40, device="cpu"))
    assert result.manifest is not None
    counts = select(tmp_path / "scored", tmp_path / "selected",
                    SelectionConfig(keep=5, hard=1, head=2, band_count=2, band=(2, 5), seed=12).validate())
    selected = read_rows(tmp_path / "selected")
    mined = read_rows(pairs)
    assert selected and counts
    assert {r["query_id"] for r in selected} <= {r["query_id"] for r in mined}
    by_pair = {(r["query_id"], r["doc_id"]): r for r in mined}
    for row in selected:  # every selected row is a listed pair, its flags and texts carried through
        source = by_pair[(row["query_id"], row["doc_id"])]
        assert (row["query"], row["document"], row["is_positive"]) == (source["query"], source["document"],
                                                                       source["is_positive"])
    positives = {(r["query_id"], r["doc_id"]) for r in mined if r["is_positive"]}
    assert positives <= {(r["query_id"], r["doc_id"]) for r in selected}  # all positives kept by select


def test_ranks_split_the_shards_and_resume_after_a_partial_shard(replica, tmp_path):
    whole = tmp_path / "whole"
    run_lists(replica, "nq", whole)
    reference = shard_bytes(whole)
    split = tmp_path / "split"
    first = run_lists(replica, "nq", split, num_shards=2, shard_index=0)
    assert not first["complete"] and not (split / ".ettin" / "manifest.json").exists()
    assert run_lists(replica, "nq", split, num_shards=2, shard_index=1)["complete"]
    assert shard_bytes(split) == reference
    # a kill -9 mid-write: shard 2 truncated with no record, a temp file left behind, the manifest not yet written
    (split / ".ettin" / "manifest.json").unlink()
    (split / ".ettin" / "part-00002.parquet.done.json").unlink()
    data = (split / "part-00002.parquet").read_bytes()
    (split / "part-00002.parquet").write_bytes(data[: len(data) // 2])
    (split / ".part-00002.parquet.abc.tmp").write_bytes(b"half")
    before = {p: p.stat().st_mtime_ns for p in split.glob("part-*.parquet") if p.name != "part-00002.parquet"}
    assert run_lists(replica, "nq", split)["complete"]
    assert shard_bytes(split) == reference
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished shards were not redone
    assert not list(split.glob(".*.tmp"))


def test_id_index_on_string_ids():
    index = lists.IdIndex(pa.chunked_array([["d7", "a1"], ["zz", "b2"]]), "docs")
    assert index.kind == "sorted"
    assert index.lookup(pa.array(["b2", "d7", "nope", "zz", "a1"])).tolist() == [3, 0, -1, 2, 1]
    dense = lists.IdIndex(pa.chunked_array([[10, 11], [12, 13]]), "docs")
    assert dense.kind == "dense" and dense.lookup(pa.array([13, 10, 9, 14])).tolist() == [3, 0, -1, -1]
    with pytest.raises(EttinError, match="docs: id 'a1' appears more than once"):
        lists.IdIndex(pa.chunked_array([["a1", "b", "a1"]]), "docs")


def broken(replica, tmp_path, change) -> Path:
    import copy

    data = copy.deepcopy(replica["data"])
    parts = change(data)
    return write_fine_tuning(tmp_path / "broken", data, **({"parts": parts} if parts else {}))


@pytest.mark.parametrize("case, needles", [
    ("unknown-id", ["source 'fiqa'", "query id 2", "document id 999999", "not in the documents table"]),
    ("no-query", ["source 'fiqa'", "query id 4", "has no query"]),
    ("no-scores-part", ["no 'scores' part"]),
    ("lengths", ["source 'fiqa'", "query id 6 lists", "scores"]),
    ("not-a-list", ["source 'fiqa'", "'document_ids'", "not a list"]),
])
def test_bad_lists_are_one_line_and_write_nothing(replica, tmp_path, case, needles, capsys):
    from conftest import run_cli

    def change(data):
        fiqa = data["fiqa"]
        if case == "unknown-id":
            fiqa["scores"][2]["document_ids"][1] = 999_999
        elif case == "no-query":
            fiqa["queries"] = [q for q in fiqa["queries"] if q["query_id"] != 4]
        elif case == "no-scores-part":
            return ("queries", "documents")
        elif case == "lengths":
            fiqa["scores"][6]["scores"] = fiqa["scores"][6]["scores"][:-1]
        else:
            for name in data:
                for row in data[name]["scores"]:
                    row["document_ids"] = ",".join(map(str, row["document_ids"]))
        return None

    root = broken(replica, tmp_path, change)
    out = tmp_path / "out"
    code, _stdout, err = run_cli(["mine", "--lists", str(root), "--source", "fiqa", "--output", str(out),
                                  "--queries-per-shard", "3", "--cache-dir", replica["cache"]], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not out.exists()


def test_lists_and_corpus_are_exclusive(capsys, tmp_path):
    from conftest import run_cli

    code, _, err = run_cli(["mine", "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "give --corpus" in err
    code, _, err = run_cli(["mine", "--lists", "x/y", "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "--lists needs --source" in err
    shutil.rmtree(tmp_path, ignore_errors=True)
