"""`ettin mix` on embeddings-pre-training rows: only `drop == False` and `duplicate` null, before caps and hold-out."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from replicas import pretraining_rows

from ettin_cli.core.errors import EttinError
from ettin_cli.core.recipes import load_data_recipe
from ettin_cli.data import mixing
from ettin_cli.io import shards

VAL = 10


def read_subset(directory):
    return pa.concat_tables([pq.read_table(p) for p in shards.ShardedFolder(directory).shards()]).to_pylist()


def flags_for(n: int, seed: int) -> list[tuple[bool | None, int | None]]:
    """Flags as upstream has them: mostly kept, some dropped, some duplicates (of an earlier row), a few both."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = rng.random()
        drop = None if r < 0.03 else r < 0.25
        dup = rng.randrange(i) if i and rng.random() < 0.2 else None
        out.append((drop, dup))
    return out


@pytest.fixture(scope="module")
def flagged(cranfield, tmp_path_factory):
    from conftest import make_pairs

    root = tmp_path_factory.mktemp("pretraining")
    tables = {}
    for name, seed, n_queries in (("quora", 1, 30), ("agnews", 2, 40)):
        pairs = [(r["query"], r["document"] or f"document {i}")
                 for i, r in enumerate(make_pairs(cranfield, n_queries, 4, seed=seed))]
        rows = pretraining_rows(pairs, flags_for(len(pairs), seed))
        # several files, so the kept-row space crosses file boundaries
        (root / name).mkdir()
        for i, start in enumerate(range(0, len(rows), 50)):
            pq.write_table(pa.Table.from_pylist(rows[start:start + 50]), root / name / f"train-{i:05d}.parquet")
        tables[name] = rows
    recipe = {"mix": {"seed": 3, "rows_per_shard": 25, "validation": {"source": "quora", "rows": VAL,
                                                                      "take": "tail"}},
              "sources": [{"name": n, "group": "pre-training", "hub": "lightonai/embeddings-pre-training",
                           "config": n} for n in ("quora", "agnews")]}
    (root / "data.yaml").write_text(yaml.safe_dump(recipe))
    return root, tables


def plan(root, caps=None):
    data, where = load_data_recipe(root / "data.yaml")
    return mixing.apply_options(mixing.load_plan(data, where), overrides={
        "quora": str(root / "quora"), "agnews": str(root / "agnews")}, caps=caps)


def intended(rows):
    return [(r["query"], r["document"]) for r in rows if r["drop"] is False and r["duplicate"] is None]


def test_only_intended_rows_are_kept_before_the_hold_out(flagged, tmp_path):
    root, tables = flagged
    reports = {r.name: r for r in mixing.build_mix(plan(root), tmp_path / "mix")}
    quora = intended(tables["quora"])
    pairs = lambda rows: [(r["query"], r["document"]) for r in rows]  # noqa: E731
    assert pairs(read_subset(tmp_path / "mix" / "validation")) == quora[-VAL:]
    held = set(quora[-VAL:])
    assert pairs(read_subset(tmp_path / "mix" / "quora")) == [p for p in quora[:-VAL]]
    assert pairs(read_subset(tmp_path / "mix" / "agnews")) == [p for p in intended(tables["agnews"])
                                                              if p not in held]
    for name in ("quora", "agnews"):
        rows = tables[name]
        report = reports[name]
        assert report.source_rows == len(rows)
        assert report.dropped_flagged == sum(r["drop"] is not False for r in rows)
        assert report.dropped_duplicate == sum(r["drop"] is False and r["duplicate"] is not None for r in rows)
        assert report.dropped_flagged > 0 and report.dropped_duplicate > 0


def test_a_cap_samples_among_the_intended_rows(flagged, tmp_path):
    root, tables = flagged
    reports = {r.name: r for r in mixing.build_mix(plan(root, caps={"agnews": "30"}), tmp_path / "mix")}
    kept = intended(tables["agnews"])
    got = [(r["query"], r["document"]) for r in read_subset(tmp_path / "mix" / "agnews")]
    assert reports["agnews"].sampled == 30 and len(got) <= 30
    positions = [kept.index(p) for p in got]
    assert positions == sorted(positions)  # a subset of the intended rows, in source order
    summary = (tmp_path / "mix" / "summary.json").read_text()
    assert '"dropped_duplicate"' in summary and '"dropped_flagged"' in summary


def test_a_non_bool_drop_column_is_one_line(flagged, tmp_path):
    root, tables = flagged
    bad = tmp_path / "bad"
    bad.mkdir()
    rows = [{**r, "drop": "no"} for r in tables["agnews"]]
    pq.write_table(pa.Table.from_pylist(rows), bad / "train.parquet")
    p = plan(root)
    next(s for s in p.sources if s.name == "agnews").path = str(bad)
    with pytest.raises(EttinError, match=r"source 'agnews' .*column 'drop' is string, not bool"):
        mixing.build_mix(p, tmp_path / "mix")
    assert not (tmp_path / "mix").exists()
