"""`ettin mine`: BM25 and bi-encoder candidates on Cranfield, sharded, resumable, split across ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ettin_cli.core.errors import EttinError
from ettin_cli.data import mining
from ettin_cli.io import shards

ETTIN = [sys.executable, "-m", "ettin_cli"]


def read_rows(directory: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in shards.ShardedFolder(directory).shards()]).to_pylist()


def by_query(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["query_id"], []).append(row)
    return out


@pytest.fixture(scope="module")
def bm25_run(cranfield_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mine") / "bm25"
    inputs = mining.resolve_inputs(cranfield_dir, split="test")
    summary = mining.mine(inputs, out, mining.MineOptions(top_k=200, queries_per_shard=100))
    return out, summary


def test_bm25_mining_recalls_most_judged_documents(bm25_run, cranfield):
    import ir_measures
    from ir_measures import R

    out, summary = bm25_run
    assert summary["complete"] and summary["shards"] == 3
    rows = read_rows(out)
    run = {q: {r["doc_id"]: float(r["retriever_score"]) for r in rs if r["retriever_rank"] is not None}
           for q, rs in by_query(rows).items()}
    qrels = {q: {d: g for d, g in judged.items() if g > 0} for q, judged in cranfield.qrels.items()}
    qrels = {q: j for q, j in qrels.items() if j}
    # recall@200 measured independently by ir_measures from the written rows agrees with the manifest
    measured = ir_measures.calc_aggregate([R @ 200], qrels, run)[R @ 200]
    assert measured == pytest.approx(summary["recall@200"], abs=1e-9)
    manifest = shards.ShardedFolder(out).manifest()
    assert manifest["summary"]["recall@200"] == pytest.approx(measured)
    # "most judged-relevant documents" are in the top 200 of 1400, far above a random pick (200/1400 = 0.14)
    assert measured > 0.5 and summary["recall@200_micro"] > 0.5
    # and a deeper pool recalls more than a shallow one
    run20 = {q: {d: s for d, s in docs.items() if s >= sorted(docs.values(), reverse=True)[:20][-1]}
             for q, docs in run.items() if docs}
    shallow = ir_measures.calc_aggregate([R @ 20], qrels, run20)[R @ 20]
    assert shallow < measured


def test_mined_rows_are_contiguous_ranked_and_flag_positives(bm25_run, cranfield):
    out, _ = bm25_run
    rows = read_rows(out)
    order = [r["query_id"] for r in rows]
    starts = [q for i, q in enumerate(order) if i == 0 or order[i - 1] != q]
    assert len(starts) == len(set(starts)) == len(cranfield.queries)  # each query's rows are contiguous
    assert starts == list(cranfield.queries)                            # in input order
    for qid, rs in by_query(rows).items():
        ranked = [r for r in rs if r["retriever_rank"] is not None]
        added = [r for r in rs if r["retriever_rank"] is None]
        assert [r["retriever_rank"] for r in ranked] == list(range(1, len(ranked) + 1))
        scores = [r["retriever_score"] for r in ranked]
        assert scores == sorted(scores, reverse=True) and len(ranked) <= 200
        assert len({r["doc_id"] for r in rs}) == len(rs)
        relevant = {d for d, g in cranfield.qrels[qid].items() if g > 0}
        assert all(r["is_positive"] == (r["doc_id"] in relevant) for r in rs)
        # positives the retriever missed are appended, and only those
        assert {r["doc_id"] for r in added} == relevant - {r["doc_id"] for r in ranked}
        assert all(r["document"] == cranfield.corpus[r["doc_id"]] for r in rs[:3] + added)
        assert all(r["query"] == cranfield.queries[qid] for r in rs)


def test_mined_candidates_equal_a_direct_bm25_search(bm25_run, cranfield):
    from ettin_cli.measure.retrieval import bm25_search

    out, _ = bm25_run
    rows = by_query(read_rows(out))
    some = dict(list(cranfield.queries.items())[:10])
    direct = bm25_search(cranfield.corpus, some, 200)
    for qid, hits in direct.items():
        assert [r["doc_id"] for r in rows[qid] if r["retriever_rank"] is not None] == [d for d, _ in hits]


def test_running_top_k_merge_equals_a_global_top_k():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=1000), 1)  # many ties: order must fall back to corpus position
    top = mining.RunningTopK(["q"], k=50)
    for start in range(0, 1000, 128):
        chunk = scores[start:start + 128]
        best = np.lexsort((np.arange(len(chunk)), -chunk))[:50]
        top.merge("q", chunk[best], best + start)
    expected = np.lexsort((np.arange(1000), -scores))[:50]
    assert top.positions["q"].tolist() == expected.tolist()


def test_mining_resumes_and_refuses_a_different_config(bm25_run, cranfield_dir, tmp_path):
    import shutil

    source, _ = bm25_run
    out = tmp_path / "resume"
    shutil.copytree(source, out)
    before = read_rows(source)
    kept_mtime = (out / "part-00000.parquet").stat().st_mtime_ns
    shards.ShardedFolder(out).remove(1)
    (out / ".ettin" / "manifest.json").unlink()
    inputs = mining.resolve_inputs(cranfield_dir, split="test")
    summary = mining.mine(inputs, out, mining.MineOptions(top_k=200, queries_per_shard=100))
    assert summary["complete"]
    assert (out / "part-00000.parquet").stat().st_mtime_ns == kept_mtime  # finished shards are skipped
    assert read_rows(out) == before
    with pytest.raises(EttinError, match="holds a different run"):
        mining.mine(inputs, out, mining.MineOptions(top_k=50, queries_per_shard=100))


def test_mining_split_across_ranks_matches_a_single_run(bm25_run, cranfield_dir, tmp_path):
    source, _ = bm25_run
    inputs = mining.resolve_inputs(cranfield_dir, split="test")
    options = mining.MineOptions(top_k=200, queries_per_shard=100)
    first = mining.mine(inputs, tmp_path / "ranks", options, num_shards=2, shard_index=0)
    assert not first["complete"] and not (tmp_path / "ranks" / ".ettin" / "manifest.json").exists()
    second = mining.mine(inputs, tmp_path / "ranks", options, num_shards=2, shard_index=1)
    assert second["complete"]
    assert read_rows(tmp_path / "ranks") == read_rows(source)


def _table_inputs(cranfield, tmp_path: Path, n_docs: int, n_queries: int) -> tuple[Path, Path, Path]:
    """A parquet corpus (id, text), jsonl queries and a qrels tsv built from real Cranfield text.

    Documents are cut to their first 40 words: a CPU bi-encoder on full Cranfield abstracts is too slow for a
    unit test on a shared 2-core machine, and the chunk-merge property does not depend on length.
    """
    queries = cranfield.judged_queries[:n_queries]
    wanted = {d for q in queries for d, g in cranfield.qrels[q].items() if g > 0}
    doc_ids = sorted(wanted) + [d for d in cranfield.corpus if d not in wanted][: n_docs - len(wanted)]
    texts = [" ".join(cranfield.corpus[d].split()[:40]) for d in doc_ids]
    pq.write_table(pa.table({"id": doc_ids, "text": texts}), tmp_path / "corpus.parquet")
    with open(tmp_path / "queries.jsonl", "w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps({"id": q, "text": cranfield.queries[q]}) + "\n")
    with open(tmp_path / "qrels.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q in queries:
            for d, g in cranfield.qrels[q].items():
                fh.write(f"{q}\t{d}\t{g}\n")
    return tmp_path / "corpus.parquet", tmp_path / "queries.jsonl", tmp_path / "qrels.tsv"


def test_dense_mining_streams_the_corpus_in_chunks_exactly(cranfield, minilm_path, tmp_path):
    corpus, queries, qrels = _table_inputs(cranfield, tmp_path, n_docs=80, n_queries=6)
    inputs = mining.resolve_inputs(corpus, queries, qrels)
    whole = mining.mine(inputs, tmp_path / "whole", mining.MineOptions(retriever=str(minilm_path), top_k=20))
    chunked = mining.mine(inputs, tmp_path / "chunked",
                          mining.MineOptions(retriever=str(minilm_path), top_k=20, chunk_size=24))
    a, b = by_query(read_rows(tmp_path / "whole")), by_query(read_rows(tmp_path / "chunked"))
    assert a.keys() == b.keys()
    for qid in a:
        assert [r["doc_id"] for r in a[qid]] == [r["doc_id"] for r in b[qid]]
        assert np.allclose([r["retriever_score"] or 0 for r in a[qid]], [r["retriever_score"] or 0 for r in b[qid]],
                           atol=1e-5)
    # a real embedder ranks judged documents far above chance (20 of 80 at random would recall 0.25)
    assert whole["recall@20"] == pytest.approx(chunked["recall@20"]) and whole["recall@20"] > 0.5


@pytest.mark.parametrize("line, message", [
    ("1\tno-such-doc\t2\n", "line 2: document id 'no-such-doc' is not in the corpus"),
    ("9999\t184\t2\n", "line 2: query id '9999' is not among the queries"),
    ("1\t184\n", "line 2: expected 3 tab-separated columns"),
    ("1\t184\tvery\n", "line 2: relevance 'very' is not a number"),
])
def test_bad_qrels_are_one_line_errors(cranfield_dir, tmp_path, line, message):
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + line, encoding="utf-8")
    inputs = mining.resolve_inputs(cranfield_dir, qrels=qrels)
    with pytest.raises(EttinError, match=message) as info:
        mining.mine(inputs, tmp_path / "out", mining.MineOptions(top_k=10))
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_bad_corpus_and_options_are_one_line_errors(tmp_path):
    pq.write_table(pa.table({"key": ["a"], "body": ["x"]}), tmp_path / "c.parquet")
    (tmp_path / "q.jsonl").write_text('{"id": "q1", "text": "x"}\n', encoding="utf-8")
    inputs = mining.resolve_inputs(tmp_path / "c.parquet", tmp_path / "q.jsonl")
    with pytest.raises(EttinError, match=r"c.parquet: no id column .*columns: key, body"):
        mining.mine(inputs, tmp_path / "out", mining.MineOptions(top_k=10))
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n',
                                           encoding="utf-8")
    (tmp_path / "qrels.tsv").write_text("q1\td1\t1\n", encoding="utf-8")
    dup = mining.resolve_inputs(tmp_path / "corpus.jsonl", tmp_path / "q.jsonl", tmp_path / "qrels.tsv")
    with pytest.raises(EttinError, match="corpus.jsonl line 2: duplicate document id 'd1'"):
        mining.mine(dup, tmp_path / "out", mining.MineOptions(top_k=10))
    with pytest.raises(EttinError, match="--top-k must be a positive integer"):
        mining.MineOptions(top_k=0).validate()
    with pytest.raises(EttinError, match="give --queries"):
        mining.resolve_inputs(tmp_path / "c.parquet")


def test_cli_mine_writes_shards_and_reports_bad_input_in_one_line(cranfield_dir, tmp_path):
    env = {**os.environ, "ETTIN_TEST": "1"}
    out = tmp_path / "cli"
    ok = subprocess.run([*ETTIN, "-q", "mine", "--corpus", str(cranfield_dir), "--split", "test", "--output",
                         str(out), "--top-k", "20"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["complete"] and summary["recall@20"] > 0
    assert shards.ShardedFolder(out).manifest()["totals"]["rows"] == summary["rows"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\tnope\t1\n", encoding="utf-8")
    fail = subprocess.run([*ETTIN, "mine", "--corpus", str(cranfield_dir), "--qrels", str(bad), "--output",
                           str(tmp_path / "failed")], capture_output=True, text=True, env=env)
    assert fail.returncode == 2
    assert fail.stderr.strip().splitlines() == [f"error: {bad} line 1: document id 'nope' is not in the corpus"]
    assert not (tmp_path / "failed").exists()


def test_beir_split_mines_only_its_judged_queries(tmp_path):
    """A BEIR folder's --split picks its queries: train queries never leak into a test-split mining run."""
    from ettin_cli.data.mining import MineOptions, mine, resolve_inputs

    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    docs = {f"d{i}": f"document {i} about wings and lift number {i}" for i in range(6)}
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in docs.items()))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"wings lift {i}"}) + "\n"
                                                for i in range(4)))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td2\t1\nq3\td3\t1\n")
    for split, expected in (("train", {"q0", "q1"}), ("test", {"q2", "q3"})):
        mine(resolve_inputs(root, split=split), tmp_path / split, MineOptions(top_k=3))
        table = pq.read_table(sorted((tmp_path / split).glob("part-*.parquet"))[0])
        assert set(table.column("query_id").to_pylist()) == expected


def test_mining_says_which_split_fed_its_queries(tmp_path):
    """The log names the qrels split and how many of all queries it kept (train vs test must not be mixed up)."""
    import io
    import logging

    from ettin_cli.core.console import logger
    from ettin_cli.data.mining import MineOptions, mine, resolve_inputs

    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": f"wing {i}"}) + "\n"
                                               for i in range(4)))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"wing {i}"}) + "\n"
                                                for i in range(3)))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\n")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        mine(resolve_inputs(root, split="train"), tmp_path / "out", MineOptions(top_k=2))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert "the 2 of 3 queries judged in" in stream.getvalue() and "(split 'train')" in stream.getvalue()


def test_mining_a_split_the_folder_lacks_is_refused_not_widened_to_every_query(cranfield_dir, tmp_path, capsys):
    """Cranfield judges only `test`: the default `--split train` must not quietly mine all 225 queries, the
    test ones included (training on them would make the later evaluation meaningless)."""
    from conftest import run_cli

    out = tmp_path / "mined"
    code, _, err = run_cli(["mine", "--corpus", str(cranfield_dir), "--output", str(out)], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {cranfield_dir / 'qrels' / 'train.tsv'}: no such split (this folder has: test); mine the split "
        "you train on and evaluate on another (`ettin split` makes train/dev/test from one judged set)"]
    assert not out.exists()


def test_empty_unjudged_queries_are_skipped_with_a_count_and_judged_ones_refused(tmp_path):
    """The issue's collection: query '0' at line 65 is empty and judged by no split. Mining skips it (the count is
    in the summary and the manifest) and evaluation of the same folder reads it; an empty *judged* query is
    still refused in one line naming its line."""
    from ettin_cli.io.beir import load_beir

    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": f"wing lift {i}"}) + "\n"
                                               for i in range(6)))
    queries = [{"_id": f"q{i}", "text": f"wing {i}"} for i in range(4)] + [{"_id": "0", "text": ""}]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td2\t1\nq3\td3\t1\n")
    summary = mining.mine(mining.resolve_inputs(root, split="train"), tmp_path / "out", mining.MineOptions(top_k=3))
    assert summary["complete"] and summary["empty_queries_skipped"] == 1
    assert shards.ShardedFolder(tmp_path / "out").manifest()["summary"]["empty_queries_skipped"] == 1
    assert set(pq.read_table(tmp_path / "out").column("query_id").to_pylist()) == {"q0", "q1"}
    assert set(load_beir(root, "test").queries) == {"q2", "q3"}
    # Without qrels every query is unjudged: the empty one is skipped, the others mined.
    plain = mining.resolve_inputs(root / "corpus.jsonl", root / "queries.jsonl")
    assert mining.mine(plain, tmp_path / "plain", mining.MineOptions(top_k=3))["empty_queries_skipped"] == 1
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td2\t1\n0\td3\t1\n")
    with pytest.raises(EttinError, match=r"queries.jsonl line 5: query '0' is empty \(judged in .*test.tsv"):
        mining.mine(mining.resolve_inputs(root, split="test"), tmp_path / "judged", mining.MineOptions(top_k=3))
    assert not (tmp_path / "judged").exists()
    with pytest.raises(EttinError, match="1 empty queries"):
        load_beir(root, "test")
