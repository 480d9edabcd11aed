"""`ettin select`: the two per-query cuts (subsample to --keep, then head + band), on synthetic scores and on
real BM25 candidates from Cranfield, streamed from sharded parquet, resumable and deterministic."""

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
from ettin_cli.data.selection import (
    BAND,
    FILL,
    HEAD,
    POSITIVE,
    Columns,
    SelectionConfig,
    parse_band,
    pick_training,
    query_rng,
    rank_order,
    select,
    select_query,
    subsample,
)
from ettin_cli.io import shards

ETTIN = [sys.executable, "-m", "ettin_cli"]

CFG = SelectionConfig(keep=256, hard=16, head=32, band_count=32, band=(64, 192), seed=12)


def _query(n: int, n_pos: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` candidate scores on the teacher's scale and `n_pos` positives at random ranks (some low)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0, 5.0, size=n).astype(np.float32)
    positive = np.zeros(n, dtype=bool)
    positive[rng.choice(n, size=n_pos, replace=False)] = True
    return scores, positive


# ---- configuration ------------------------------------------------------------------------------------------


def test_recipe_defaults_match_the_recipe():
    """#22: the data recipe is read in one place (`core.recipes`) and the typed config is built from it."""
    from ettin_cli.core.recipes import load_data_recipe, recipe_section

    data, where = load_data_recipe()
    section = recipe_section(data, "selection", where)
    cfg = SelectionConfig.from_recipe(section, where).validate()
    assert (cfg.keep, cfg.hard, cfg.per_query, cfg.head, cfg.band_count) == (256, 16, 64, 32, 32)
    assert cfg == SelectionConfig()  # the dataclass defaults say what the recipe says
    over = SelectionConfig.from_recipe(section, where, keep=128, band="32:96", seed=None)
    assert (over.keep, over.band, over.seed, over.hard) == (128, (32, 96), section["seed"], section["hard"])
    with pytest.raises(EttinError, match=r"data.yaml: selection.band must be \[START, END\]"):
        SelectionConfig.from_recipe({**section, "band": [1, 2, 3]}, where)


@pytest.mark.parametrize("kwargs, message", [
    ({"band": (64, 300)}, "outside the 256 candidates"),
    ({"band": (100, 50)}, "START < END"),
    ({"band": (-1, 50)}, "START < END"),
    ({"band": (0, 40)}, "fewer than --band-count"),
    ({"keep": 0}, "--keep must be a positive integer"),
    ({"head": -3}, "--head must be a positive integer"),
    ({"hard": 300}, "more than the 256"),
    ({"head": 200, "band_count": 100}, "is more than the 256"),
])
def test_bad_sizes_are_one_line_errors(kwargs, message):
    with pytest.raises(EttinError, match=message) as info:
        SelectionConfig(**{**CFG.__dict__, **kwargs}).validate()
    assert "\n" not in str(info.value)


def test_parse_band():
    assert parse_band("64:192") == (64, 192)
    for bad in ("64", "a:b", "1:2:3"):
        with pytest.raises(EttinError, match="--band"):
            parse_band(bad)


# ---- cut 1: subsample ---------------------------------------------------------------------------------------


def test_subsample_keeps_positives_hardest_and_one_per_quantile_stratum():
    scores, positive = _query(2048, n_pos=3)
    idx, roles = subsample(scores, positive, keep=256, hard=16, rng=query_rng(12, "q1"))
    assert len(idx) == 256 and len(set(idx.tolist())) == 256
    assert set(np.flatnonzero(positive)) <= set(idx.tolist())
    # the 16 best-scored non-positives, computed independently
    negatives = [i for i in np.argsort(-scores, kind="stable") if not positive[i]]
    assert set(negatives[:16]) <= set(idx.tolist())
    # the other 237 come one from each of 237 equal-count strata of the remaining ranking
    rest = negatives[16:]
    picked_positions = sorted(rest.index(i) for i in idx.tolist() if i in set(rest))
    assert len(picked_positions) == 256 - 3 - 16
    bounds = np.floor(np.linspace(0, len(rest), len(picked_positions) + 1)).astype(int)
    for j, pos in enumerate(picked_positions):
        assert bounds[j] <= pos < bounds[j + 1]
    assert roles.count(POSITIVE) == 3 and roles.count(HEAD) == 16 and roles.count(BAND) == 237
    # output is in teacher-rank order
    assert list(scores[idx]) == sorted(scores[idx], reverse=True)


def test_subsample_spans_the_whole_score_range():
    scores, positive = _query(2048, n_pos=1)
    idx, _ = subsample(scores, positive, keep=256, hard=16, rng=query_rng(12, "q"))
    kept = np.sort(scores[idx])
    # quantile anchors reach both tails: the kept set is not just the top of the ranking
    assert kept[0] <= np.quantile(scores, 0.01) and kept[-1] == scores.max()
    # and its median is near the full candidate median (a top-k cut would be far above it)
    assert abs(np.median(kept) - np.median(scores)) < 1.0


def test_subsample_keeps_everything_when_short_and_every_positive_when_many():
    scores, positive = _query(100, n_pos=2)
    idx, _ = subsample(scores, positive, keep=256, hard=16, rng=query_rng(12, "q"))
    assert sorted(idx.tolist()) == list(range(100))
    scores, positive = _query(600, n_pos=300)
    idx, roles = subsample(scores, positive, keep=256, hard=16, rng=query_rng(12, "q"))
    assert set(np.flatnonzero(positive)) == set(idx.tolist()) and set(roles) == {POSITIVE}


# ---- cut 2: head + band -------------------------------------------------------------------------------------


def test_pick_training_head_and_band():
    scores, positive = _query(256, n_pos=2, seed=3)
    idx, roles, filled = pick_training(scores, positive, head=32, band=(64, 192), band_count=32,
                                       rng=query_rng(12, "q"))
    assert len(idx) == 64 and not filled
    assert set(np.flatnonzero(positive)) <= set(idx.tolist())
    rank = np.empty(256, dtype=int)
    rank[rank_order(scores)] = np.arange(256)
    head_rows = [i for i, r in zip(idx, roles, strict=True) if r in (POSITIVE, HEAD)]
    band_rows = [i for i, r in zip(idx, roles, strict=True) if r == BAND]
    assert len(head_rows) == 32 and len(band_rows) == 32
    negatives_by_rank = [i for i in rank_order(scores) if not positive[i]]
    assert {i for i, r in zip(idx, roles, strict=True) if r == HEAD} == set(negatives_by_rank[:30])
    assert all(64 <= rank[i] < 192 for i in band_rows)


def test_band_sample_is_spread_over_the_band_not_its_top():
    scores, positive = _query(256, n_pos=1, seed=4)
    rank = np.empty(256, dtype=int)
    rank[rank_order(scores)] = np.arange(256)
    ranks = []
    for q in range(40):
        idx, roles, _ = pick_training(scores, positive, 32, (64, 192), 32, query_rng(12, f"q{q}"))
        ranks += [rank[i] for i, r in zip(idx, roles, strict=True) if r == BAND]
    # uniform over 64..191: mean near 127.5, both halves of the band used
    assert 115 < np.mean(ranks) < 140
    assert min(ranks) < 80 and max(ranks) > 175


def test_short_queries_fill_from_other_ranks_and_tiny_queries_keep_all():
    scores, positive = _query(100, n_pos=1, seed=5)  # band 64:100 still holds 36 >= 32 candidates
    sel = select_query("short", scores, positive, CFG)
    assert len(sel.indices) == 64 and not sel.band_filled and sel.roles.count(BAND) == 32
    scores, positive = _query(80, n_pos=1, seed=5)  # band 64:80 holds 16: the other 16 come from ranks 32..63
    sel = select_query("short", scores, positive, CFG)
    assert len(sel.indices) == 64 and sel.band_filled
    assert sel.roles.count(BAND) == 16 and sel.roles.count(FILL) == 16
    scores, positive = _query(40, n_pos=1, seed=6)
    sel = select_query("tiny", scores, positive, CFG)
    assert sorted(sel.indices.tolist()) == list(range(40))


def test_select_query_exact_counts_positives_and_ranks():
    for seed in range(20):
        n_pos = seed % 4
        scores, positive = _query(2048, n_pos=n_pos, seed=seed)
        sel = select_query(f"q{seed}", scores, positive, CFG)
        assert len(sel.indices) == 64 and len(set(sel.indices.tolist())) == 64
        assert set(np.flatnonzero(positive)) <= set(sel.indices.tolist())
        # teacher_rank is the 1-based rank among all 2048 candidates
        for i, r in zip(sel.indices, sel.teacher_rank, strict=True):
            assert r == 1 + int((scores > scores[i]).sum() + (scores[:i] == scores[i]).sum())
        assert not sel.band_filled


def test_selection_is_deterministic_per_seed_and_query():
    scores, positive = _query(2048, n_pos=2)
    a = select_query("q7", scores, positive, CFG)
    b = select_query("q7", scores.copy(), positive.copy(), CFG)
    assert a.indices.tolist() == b.indices.tolist() and a.roles == b.roles
    other_seed = select_query("q7", scores, positive, SelectionConfig(**{**CFG.__dict__, "seed": 13}))
    other_query = select_query("q8", scores, positive, CFG)
    assert other_seed.indices.tolist() != a.indices.tolist()
    assert other_query.indices.tolist() != a.indices.tolist()


# ---- streaming sharded, scored candidates (Cranfield) --------------------------------------------------------



def write_scored(table: pa.Table, directory: Path, rows_per_shard: int) -> Path:
    """`table` as an `ettin score`-style output: shards cut every `rows_per_shard` rows (mid-query), manifest."""
    shards.ShardedFolder(directory).prepare({"step": "score", "rows_per_shard": rows_per_shard})
    n = 0
    for i, start in enumerate(range(0, table.num_rows, rows_per_shard)):
        shards.ShardedFolder(directory).write(i, table.slice(start, rows_per_shard))
        n += 1
    shards.ShardedFolder(directory).finalize(n)
    return directory


@pytest.fixture(scope="module")
def scored(cranfield_dir, tmp_path_factory):
    """BM25 top-300 candidates of every Cranfield query with a stand-in teacher score (BM25 + seeded noise)."""
    from ettin_cli.data import mining

    root = tmp_path_factory.mktemp("select")
    mining.mine(mining.resolve_inputs(cranfield_dir, split="test"), root / "mined", mining.MineOptions(top_k=300))
    table = pa.concat_tables([pq.read_table(p) for p in shards.ShardedFolder(root / "mined").shards()])
    rng = np.random.default_rng(0)
    base = np.nan_to_num(table.column("retriever_score").to_numpy(zero_copy_only=False).astype(float), nan=0.0)
    score = (base + rng.normal(0, 2.0, table.num_rows)).astype(np.float32)
    table = table.append_column("score", pa.array(score, type=pa.float32()))
    return table, write_scored(table, root / "scored", rows_per_shard=7001)


def read_dir(directory: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in shards.ShardedFolder(directory).shards()])


def groups(table: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        out.setdefault(row["query_id"], []).append(row)
    return out


def test_select_on_cranfield_keeps_positives_and_exact_counts(scored, tmp_path):
    table, scored_dir = scored
    summary = select(scored_dir, tmp_path / "sel", CFG)
    assert summary["complete"]
    src, out = groups(table), groups(read_dir(tmp_path / "sel"))
    assert list(out) == list(src)  # every query exactly once, in input order, though shards cut queries
    short = 0
    for qid, rows in src.items():
        got = out[qid]
        n = len(rows)
        short += n < CFG.keep
        n_pos = sum(r["is_positive"] for r in rows)
        assert len(got) == min(n, max(CFG.per_query, n_pos))  # positives beyond the head take band slots
        assert {r["doc_id"] for r in rows if r["is_positive"]} <= {r["doc_id"] for r in got}
        # rows are the input rows (every column), plus an independently checked teacher rank
        by_doc = {r["doc_id"]: r for r in rows}
        ranking = sorted(rows, key=lambda r: -r["score"])
        rank_of = {r["doc_id"]: i + 1 for i, r in enumerate(ranking)}
        for r in got:
            assert {k: r[k] for k in by_doc[r["doc_id"]]} == by_doc[r["doc_id"]]
            assert r["teacher_rank"] == rank_of[r["doc_id"]]
        head = [r for r in got if r["selected_by"] in ("positive", "head")]
        assert len(head) == min(n, max(CFG.head, n_pos))
    manifest = shards.ShardedFolder(tmp_path / "sel").manifest()["summary"]
    assert manifest["queries"] == len(src) and manifest["queries_short"] == short
    assert manifest["positives_out"] == manifest["positives_in"] == sum(r["is_positive"] for r in table.to_pylist())
    assert manifest["rows_out"] == sum(len(rows) for rows in out.values())
    assert manifest["queries_positives_over_head"] == sum(
        sum(r["is_positive"] for r in rows) > CFG.head for rows in src.values())


def test_select_is_deterministic_whatever_the_sharding(scored, tmp_path):
    table, scored_dir = scored
    select(scored_dir, tmp_path / "a", CFG)
    select(scored_dir, tmp_path / "b", CFG)
    sha = [[entry["sha256"] for entry in shards.ShardedFolder(tmp_path / d).manifest()["shards"]] for d in "ab"]
    assert sha[0] == sha[1]  # the same input and options give byte-identical shards
    other_layout = write_scored(table, tmp_path / "scored-3333", rows_per_shard=3333)
    select(other_layout, tmp_path / "c", CFG)
    assert read_dir(tmp_path / "a").equals(read_dir(tmp_path / "c"))
    reseeded = select(scored_dir, tmp_path / "d", SelectionConfig(**{**CFG.__dict__, "seed": 99}))
    assert reseeded["rows_out"] == shards.ShardedFolder(tmp_path / "a").manifest()["summary"]["rows_out"]
    a, d = groups(read_dir(tmp_path / "a")), groups(read_dir(tmp_path / "d"))
    src = groups(table)
    for q, rows in src.items():
        # positives and the best-scored others that fill the head (at most `hard` of them: those are always
        # in the kept 256) are selected whatever the seed
        fixed = {r["doc_id"] for r in rows if r["is_positive"]}
        fill = max(0, min(CFG.hard, CFG.head - len(fixed)))
        fixed |= {r["doc_id"] for r in sorted((r for r in rows if not r["is_positive"]),
                                              key=lambda r: -r["score"])[:fill]}
        assert fixed <= {r["doc_id"] for r in a[q]} and fixed <= {r["doc_id"] for r in d[q]}
    assert any({r["doc_id"] for r in a[q]} != {r["doc_id"] for r in d[q]} for q in a)  # the samples are not


def test_select_resumes_and_splits_across_ranks(scored, tmp_path):
    _, scored_dir = scored
    select(scored_dir, tmp_path / "full", CFG)
    expected = read_dir(tmp_path / "full")
    first = select(scored_dir, tmp_path / "ranks", CFG, num_shards=2, shard_index=0)
    assert not first["complete"]
    assert select(scored_dir, tmp_path / "ranks", CFG, num_shards=2, shard_index=1)["complete"]
    assert read_dir(tmp_path / "ranks").equals(expected)
    shards.ShardedFolder(tmp_path / "full").remove(2)
    (tmp_path / "full" / ".ettin" / "manifest.json").unlink()
    kept = (tmp_path / "full" / "part-00000.parquet").stat().st_mtime_ns
    assert select(scored_dir, tmp_path / "full", CFG)["complete"]
    assert (tmp_path / "full" / "part-00000.parquet").stat().st_mtime_ns == kept
    assert read_dir(tmp_path / "full").equals(expected)
    with pytest.raises(EttinError, match="holds a different run"):
        select(scored_dir, tmp_path / "full", SelectionConfig(**{**CFG.__dict__, "hard": 8}))


def _scored_file(tmp_path: Path, **columns) -> Path:
    path = tmp_path / "scored.parquet"
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize("columns, message", [
    ({"query_id": ["a"], "document": ["x"]}, "need a score column 'score'"),
    ({"qid": ["a"], "score": [1.0]}, "need a query id column 'query_id'"),
    ({"query_id": ["a", "a", "b"], "score": [1.0, None, 2.0]}, "row 1: score in column 'score' is missing"),
    ({"query_id": ["a", None], "score": [1.0, 2.0]}, "row 1: empty query id"),
    ({"query_id": ["a", "a"], "score": ["high", "low"]}, "holds string, not numbers"),
    ({"query_id": ["a", "b", "a"], "score": [1.0, 2.0, 3.0]}, "row 2: query id 'a' appears again"),
])
def test_bad_scored_rows_are_one_line_errors(tmp_path, columns, message):
    path = _scored_file(tmp_path, **columns)
    with pytest.raises(EttinError, match=message) as info:
        select(path, tmp_path / "out", CFG)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "out").glob("part-*.parquet"))  # nothing half-written


def test_positive_column_may_hold_grades(tmp_path):
    scores, _ = _query(300, n_pos=0, seed=9)
    grades = np.zeros(300, dtype=np.int64)
    grades[[5, 250]] = [2, 1]
    grades[7] = -1  # a negative grade is not a positive
    path = _scored_file(tmp_path, query_id=["q"] * 300, doc=[str(i) for i in range(300)], score=scores,
                        label=grades)
    summary = select(path, tmp_path / "out", CFG, Columns(positive="label", positive_required=True))
    assert summary["positives_in"] == summary["positives_out"] == 2
    rows = pq.read_table(shards.ShardedFolder(tmp_path / "out").shards()[0]).to_pylist()
    assert {"5", "250"} <= {r["doc"] for r in rows}
    assert {r["doc"] for r in rows if r["selected_by"] == "positive"} == {"5", "250"}


def test_cli_select(scored, tmp_path):
    table, scored_dir = scored
    env = {**os.environ}
    ok = subprocess.run([*ETTIN, "-q", "select", str(scored_dir), "--output", str(tmp_path / "o"), "--keep", "128",
                         "--hard", "8", "--head", "16", "--band-count", "16", "--band", "32:96"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    expected = sum(min(len(rows), max(32, sum(r["is_positive"] for r in rows))) for rows in groups(table).values())
    assert summary["complete"] and summary["rows_out"] == expected
    assert shards.ShardedFolder(tmp_path / "o").manifest()["config"]["selection"]["band"] == [32, 96]
    for args, message in (
        (["--band", "64:300"], "error: --band 64:300 is outside the 256 candidates kept per query"),
        (["--per-query", "50"], "error: --per-query 50 must equal --head 32 + --band-count 32 = 64"),
        (["--keep", "-1"], "error: --keep must be a positive integer, got -1"),
    ):
        bad = subprocess.run([*ETTIN, "select", str(scored_dir), "--output", str(tmp_path / "bad"), *args],
                             capture_output=True, text=True, env=env)
        assert bad.returncode == 2 and bad.stderr.strip().splitlines()[0].startswith(message), bad.stderr
        assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


def test_a_corrupt_parquet_input_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("garbage, not parquet")
    proc = subprocess.run([sys.executable, "-m", "ettin_cli", "select", str(bad), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {bad}: not a readable parquet file (ArrowInvalid)"]
    assert not (tmp_path / "out").exists()
