"""`ettin mix`: subsets from local sources built from Cranfield text, caps, the held-out tail, resumption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from ettin_cli.core.errors import EttinError
from ettin_cli.core.recipes import load_data_recipe
from ettin_cli.data import mixing
from ettin_cli.io import shards

ETTIN = [sys.executable, "-m", "ettin_cli"]
VAL_ROWS = 20


def pairs(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["query"], r["document"]) for r in rows]


def read_subset(directory: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in shards.ShardedFolder(directory).shards()]).to_pylist()


@pytest.fixture(scope="module")
def sources(cranfield, tmp_path_factory):
    """Four local sources in three formats, from real Cranfield pairs; `agnews` repeats one validation pair."""
    from conftest import make_pairs

    root = tmp_path_factory.mktemp("mix-sources")
    quora = [{"query": r["query"], "document": r["document"], "extra": r["doc_id"]}
             for r in make_pairs(cranfield, n_queries=20, negatives_per_query=4, seed=1)]
    agnews = [{"q": r["query"], "d": r["document"]} for r in make_pairs(cranfield, 30, 3, seed=2)]
    agnews.insert(7, {"q": quora[-1]["query"], "d": quora[-1]["document"]})  # a validation pair, duplicated
    agnews.insert(3, {"q": "", "d": "a row with an empty query"})
    s2 = [{"query": r["query"], "document": r["document"]} for r in make_pairs(cranfield, 5, 2, seed=3)]
    pq.write_table(pa.Table.from_pylist(quora), root / "quora.parquet")
    with open(root / "agnews.jsonl", "w", encoding="utf-8") as fh:
        for row in agnews:
            fh.write(json.dumps(row) + "\n")
    pacsv.write_csv(pa.Table.from_pylist(s2), root / "s2.csv")
    selected = root / "msmarco"  # an `ettin select`-style output: sharded, with a score column
    shards.ShardedFolder(selected).prepare({"step": "select"})
    table = pa.Table.from_pylist([{"query_id": r["query_id"], "query": r["query"], "document": r["document"],
                                   "score": float(r["label"]) * 3.0 - 1.0}
                                  for r in make_pairs(cranfield, 8, 4, seed=4)])
    shards.ShardedFolder(selected).write(0, table.slice(0, 20))
    shards.ShardedFolder(selected).write(1, table.slice(20))
    shards.ShardedFolder(selected).finalize(2)
    recipe = {
        "mix": {"seed": 5, "rows_per_shard": 40,
                "validation": {"source": "quora", "rows": VAL_ROWS, "take": "tail"}},
        "sources": [
            {"name": "quora", "group": "pre-training", "hub": "lightonai/embeddings-pre-training", "config": "quora"},
            {"name": "agnews", "group": "pre-training", "hub": "lightonai/embeddings-pre-training",
             "config": "agnews", "cap": 50, "columns": {"query": "q", "document": "d"}},
            {"name": "s2", "group": "pre-training", "hub": "lightonai/embeddings-pre-training", "cap": 1000},
            {"name": "msmarco", "group": "retrieval", "hub": "lightonai/embeddings-fine-tuning",
             "config": "msmarco", "requires": "select",
             "columns": {"query": "query", "document": "document", "score": "score"}},
        ],
    }
    recipe_path = root / "data.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    overrides = {"quora": str(root / "quora.parquet"), "agnews": str(root / "agnews.jsonl"),
                 "s2": str(root / "s2.csv"), "msmarco": str(selected)}
    return {"root": root, "recipe": recipe_path, "overrides": overrides, "quora": quora, "agnews": agnews,
            "s2": s2, "msmarco": table.to_pylist()}


def plan_for(src, **kwargs) -> mixing.MixPlan:
    data, where = load_data_recipe(src["recipe"])
    plan = mixing.load_plan(data, where)
    return mixing.apply_options(plan, overrides=dict(src["overrides"]), **kwargs)


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("mix") / "out"
    reports = mixing.build_mix(plan_for(sources), out)
    return out, {r.name: r for r in reports}


def test_validation_is_the_tail_of_quora_and_never_in_training(sources, built):
    out, reports = built
    validation = read_subset(out / "validation")
    assert pairs(validation) == pairs(sources["quora"][-VAL_ROWS:])
    held = set(pairs(validation))
    for name in ("quora", "agnews", "s2", "msmarco"):
        assert not held & set(pairs(read_subset(out / name))), name
    # quora's training rows are its head, in order, less rows with an empty text (Cranfield has empty documents)
    # and rows equal to a held-out pair; the duplicate planted in agnews was dropped and counted
    head = [p for p in pairs(sources["quora"][:-VAL_ROWS]) if p[0].strip() and p[1].strip() and p not in held]
    assert pairs(read_subset(out / "quora")) == head
    assert reports["quora"].held_out == VAL_ROWS
    assert reports["quora"].dropped_empty == sum(not d.strip() for _, d in pairs(sources["quora"][:-VAL_ROWS]))
    agnews_pairs = [(r["q"], r["d"]) for r in sources["agnews"]]
    sampled = reports["agnews"].sampled
    assert reports["agnews"].rows + reports["agnews"].dropped_in_validation + reports["agnews"].dropped_empty \
        == sampled == 50
    planted = (sources["quora"][-1]["query"], sources["quora"][-1]["document"])
    assert planted in agnews_pairs and planted not in pairs(read_subset(out / "agnews"))


def test_caps_are_respected_with_a_seeded_ordered_sample(sources, built, tmp_path):
    out, reports = built
    agnews = read_subset(out / "agnews")
    source = [(r["q"], r["d"]) for r in sources["agnews"]]
    assert len(agnews) <= 50 < len(source)
    positions = [source.index(p) for p in pairs(agnews)]
    assert positions == sorted(positions)  # a subset of the source, in source order
    assert len(read_subset(out / "s2")) == len(sources["s2"])  # cap above the row count: every row
    # same seed -> the same sample; another seed -> another sample
    again = mixing.build_mix(plan_for(sources, only=["agnews"]), tmp_path / "again")
    assert pairs(read_subset(tmp_path / "again" / "agnews")) == pairs(agnews)
    assert again[0].name == "validation"
    other = plan_for(sources, only=["agnews"])
    other.seed = 6
    mixing.build_mix(other, tmp_path / "other")
    assert pairs(read_subset(tmp_path / "other" / "agnews")) != pairs(agnews)
    smaller = plan_for(sources, only=["agnews"], caps={"agnews": "10"})
    mixing.build_mix(smaller, tmp_path / "ten")
    assert len(read_subset(tmp_path / "ten" / "agnews")) <= 10


def test_subsets_keep_provenance_scores_and_a_summary(sources, built):
    out, reports = built
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["agnews", "msmarco", "quora", "s2", "validation"]
    msmarco = read_subset(out / "msmarco")
    assert [r["score"] for r in msmarco] == pytest.approx([r["score"] for r in sources["msmarco"]])
    assert "score" not in read_subset(out / "quora")[0]
    summary = json.loads((out / "summary.json").read_text())
    by_name = {s["name"]: s for s in summary["subsets"]}
    for name in ("quora", "agnews", "s2", "msmarco", "validation"):
        assert by_name[name]["rows"] == shards.ShardedFolder(out / name).manifest()["totals"]["rows"]
    assert summary["validation_rows"] == VAL_ROWS
    assert summary["train_rows"] == sum(by_name[n]["rows"] for n in ("quora", "agnews", "s2", "msmarco"))
    sizes = [entry["rows"] for entry in shards.ShardedFolder(out / "quora").manifest()["shards"]]
    assert sum(sizes) == by_name["quora"]["rows"] and all(n == 40 for n in sizes[:-1]) and 0 < sizes[-1] <= 40


def test_rerun_skips_finished_subsets(sources, built):
    out, _ = built
    before = {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")}
    summary = json.loads((out / "summary.json").read_text())
    reports = mixing.build_mix(plan_for(sources), out)
    assert all(r.skipped for r in reports if r.name != "validation")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")} == before
    again = json.loads((out / "summary.json").read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "skipped"} for r in rows]  # noqa: E731
    assert strip(again["subsets"]) == strip(summary["subsets"])  # the counts survive the rerun


# RECIPE.md, "Facts of the published release": the 32 pre-training configs of the released dataset.
PUBLISHED_CONFIGS = " ".join([
    "agnews altlex amazon_qa amazon_reviews arxiv_title_abstract beir_dbpedia biorxiv_title_abstract cc_news_en",
    "cnn_dailymail fw_edu gooaq_qa medrxiv_title_abstract msmarco mtp npr paq quora reddit reddit_body_comment",
    "s2orc_abstract_citation s2orc_citation_titles s2orc_title_abstract stackexchange_body_body",
    "stackexchange_duplicate_questions stackexchange_qa stackexchange_title_body stackoverflow_title_body",
    "wikianswers wikihow yahoo_answer yahoo_qa yahoo_question_body"]).split(" ")
RETRIEVAL = ("fever", "fiqa", "hotpotqa", "msmarco", "nq", "squadv2", "trivia")


def test_published_data_recipe_names_the_39_released_configs():
    data, where = load_data_recipe()
    plan = mixing.load_plan(data, where)
    by_name = {s.name: s for s in plan.sources}
    pre = [s.name for s in plan.sources if s.group == "pre-training"]
    assert sorted(pre) == sorted(PUBLISHED_CONFIGS) and len(pre) == 32
    assert {s.name: s.split for s in plan.sources if s.group == "retrieval"} == {f"rerank_{r}": r for r in RETRIEVAL}
    assert len(plan.sources) == 39
    assert by_name["fw_edu"].config == "fw-edu" and by_name["msmarco"].config == "msmarco"
    assert {s.name: s.cap for s in plan.sources if s.cap is not None} == {"amazon_reviews": 5_000_000,
                                                                          "beir_dbpedia": 2_500_000}
    assert plan.validation_source.name == "quora" and plan.validation_rows == 5000
    assert all(s.hub == "lightonai/embeddings-pre-training" for s in plan.sources if s.group == "pre-training")
    assert all(s.hub == "lightonai/embeddings-fine-tuning" and s.config == "scores" and s.requires == "select"
               for s in plan.sources if s.group == "retrieval")
    text = Path(where).read_text(encoding="utf-8")
    assert sum(line.lstrip("# ").startswith("Unknown:") for line in text.splitlines()) == 2


@pytest.mark.parametrize("change, message", [
    (lambda r: r["sources"][1].update(cap=-5), "source 'agnews': cap must be a positive integer or null, got -5"),
    (lambda r: r["sources"][1].update(cap=0), "source 'agnews': cap must be a positive integer or null, got 0"),
    (lambda r: r["sources"][1].update(cap="lots"), "cap must be a positive integer or null, got 'lots'"),
    (lambda r: r["sources"].append(dict(r["sources"][0])), "source 'quora': the name is used twice"),
    (lambda r: r["mix"]["validation"].update(source="nope"), "mix.validation.source 'nope' is not one of"),
    (lambda r: r["sources"][2].update(group="other"), "group must be one of"),
])
def test_bad_recipes_are_one_line_errors(sources, change, message):
    recipe = yaml.safe_load(sources["recipe"].read_text())
    change(recipe)
    with pytest.raises(EttinError, match=message.replace("(", r"\(")):
        mixing.load_plan(recipe, "data.yaml")


def test_bad_sources_are_one_line_errors_and_write_nothing(sources, tmp_path):
    with pytest.raises(EttinError, match="^--cap: cap must be a positive integer or null, got -3$"):
        plan_for(sources, caps={"agnews": "-3"})
    with pytest.raises(EttinError, match="--source nope=...: no source named 'nope'"):
        mixing.apply_options(plan_for(sources), overrides={"nope": str(tmp_path)})
    plan = plan_for(sources)
    next(s for s in plan.sources if s.name == "agnews").columns = {"query": "question", "document": "d"}
    with pytest.raises(EttinError, match=r"source 'agnews' .*: no column 'question' for the query"):
        mixing.build_mix(plan, tmp_path / "out")
    plan = plan_for(sources)
    next(s for s in plan.sources if s.name == "msmarco").path = None
    with pytest.raises(EttinError, match="must be scored and selected first"):
        mixing.build_mix(plan, tmp_path / "out")
    assert not list(tmp_path.rglob("part-*.parquet"))


def test_hub_source_offline_is_a_one_line_error(sources, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = plan_for(sources, only=["s2"])
    plan.sources[0].path = None
    plan.validation_source = None
    with pytest.raises(EttinError, match="lightonai/embeddings-pre-training") as info:
        mixing.build_mix(plan, tmp_path / "out")
    assert "\n" not in str(info.value)


def test_cli_mix(sources, tmp_path):
    env = {**os.environ}
    root = sources["root"]
    ok = subprocess.run([*ETTIN, "-q", "mix", "--recipe", str(sources["recipe"]), "--output", str(tmp_path / "m"),
                         "--sources-dir", str(root), "--only", "quora,s2", "--cap", "s2=3"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "validation" in ok.stdout and "s2" in ok.stdout and "training mix" in ok.stdout
    assert len(read_subset(tmp_path / "m" / "s2")) == 3
    listed = subprocess.run([*ETTIN, "mix", "--list"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and "39 sources" in listed.stdout and "lightonai/embeddings" in listed.stdout
    bad = subprocess.run([*ETTIN, "mix", "--recipe", str(sources["recipe"]), "--output", str(tmp_path / "bad"),
                          "--sources-dir", str(root), "--cap", "agnews=0"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --cap: cap must be a positive integer or null, got 0"
    assert not (tmp_path / "bad").exists()
