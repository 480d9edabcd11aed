"""Adapting a trained reranker (issue #26): a cross-encoder base continues from its own head, bad heads are refused,
`recipes/adapt.yaml`, the `--data SOURCE:FRACTION` mix, and `model.max_length: auto` on long queries.

The base student is a real `ettin train` output folder (the tiny ModernBERT backbone, 2 steps on real Cranfield
pairs with their qrels grades as targets); the long-query pairs come from the demo corpus, scored by the real
all-MiniLM-L6-v2 teacher through `ettin score`'s own library call (so the score folder's manifest records the
teacher's input limit as a real run writes it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, make_pairs

from ettin_cli.core.errors import EttinError
from ettin_cli.core.hardware import Precision
from ettin_cli.train.config import resolve_config
from ettin_cli.train.data import load_mix, parse_data_sources
from ettin_cli.train.run import build_student_for, fit_max_length, run_training
from ettin_cli.train.student import head_plan, load_cross_encoder_base

DEMO_DATA = REPO_ROOT / "src" / "ettin_cli" / "demo_data"
FP32 = Precision("float32", "sdpa")


def write_parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def tiny_recipe(tiny_modernbert_path, tmp_path_factory) -> Path:
    """A small recipe on the tiny backbone: fixed 64 tokens, no periodic evaluation or checkpoint."""
    path = tmp_path_factory.mktemp("adapt-recipe") / "tiny.yaml"
    path.write_text(f"size: tiny\nmodel:\n  backbone: {tiny_modernbert_path}\n  max_length: 64\n"
                    "training:\n  learning_rate: 3.0e-3\n  global_batch_size: 8\n  warmup_steps: 0\n  eval_steps: 0\n"
                    "  save_steps: 0\n"
                    "  logging_steps: 1\n  dataloader_num_workers: 0\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pairs(cranfield, tmp_path_factory) -> dict:
    """Cranfield training pairs (qrels grade as `label`) and held-out pairs of other queries."""
    root = tmp_path_factory.mktemp("adapt-pairs")
    train = make_pairs(cranfield, n_queries=6, negatives_per_query=3, seed=1)
    held = make_pairs(cranfield, n_queries=30, negatives_per_query=2, seed=2)[-32:]
    return {"train": write_parquet(train, root / "train.parquet"), "held": [(r["query"], r["document"]) for r in held],
            "root": root}


def train_kwargs(recipe: Path, pairs: dict, out: Path, **kw) -> dict:
    base = dict(recipe_file=str(recipe), data=[str(pairs["train"])], output_dir=str(out), max_steps=2,
                eval_data=[str(DEMO_DATA)], eval_top_k=5, eval_max_queries=2, cache_dir=str(pairs["root"] / "cache"))
    return {**base, **kw}


@pytest.fixture(scope="module")
def student_dir(tiny_recipe, pairs, tmp_path_factory) -> Path:
    """A student folder as `ettin train` writes it (OUT/final)."""
    out = tmp_path_factory.mktemp("adapt-student") / "run"
    run_training(resolve_config(**train_kwargs(tiny_recipe, pairs, out)))
    return out / "final"


def scores(path_or_model, held) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(path_or_model), device="cpu") if isinstance(path_or_model, (str, Path)) \
        else path_or_model
    return np.asarray(model.predict(held, batch_size=16))


# ------------------------------------------------------------------------------------------ head: keep / new


def test_a_trained_student_as_base_continues_from_its_own_head(student_dir, tiny_recipe, pairs, tmp_path, caplog):
    out = tmp_path / "adapted"
    with caplog.at_level(logging.INFO, logger="ettin"):
        run_training(resolve_config(**train_kwargs(tiny_recipe, pairs, out, base_model=str(student_dir),
                                                   save_initial=True, max_steps=1)))
    assert "continuing from the model's own head" in caplog.text
    before, initial = scores(student_dir, pairs["held"]), scores(out / "initial", pairs["held"])
    assert np.array_equal(before, initial), float(np.abs(before - initial).max())
    assert before.std() > 0  # real, varied scores (not a constant head)
    assert not np.array_equal(scores(out / "final", pairs["held"]), before)  # and it did train on


def test_a_new_head_on_purpose_and_on_a_bare_encoder(student_dir, tiny_recipe, pairs, tiny_modernbert_path,
                                                     tmp_path, caplog):
    assert head_plan(str(student_dir), "auto")[0] == "keep"
    assert head_plan(str(tiny_modernbert_path), "auto")[0] == "new"
    with pytest.raises(EttinError, match="bare encoder without a scoring head"):
        head_plan(str(tiny_modernbert_path), "keep")
    recipe = tmp_path / "new-head.yaml"
    recipe.write_text(tiny_recipe.read_text().replace("  max_length: 64\n", "  max_length: 64\n  head: new\n"))
    config = resolve_config(**train_kwargs(recipe, pairs, tmp_path / "o", base_model=str(student_dir)))
    from datasets import Dataset

    with caplog.at_level(logging.INFO, logger="ettin"):
        model = build_student_for(config, Dataset.from_dict({"label": [0.0, 1.0]}))
    assert "new head on a bare encoder" in caplog.text and "model.head is new" in caplog.text
    base = load_cross_encoder_base(str(student_dir), max_length=64, precision=FP32)
    # Same encoder weights, a different (newly initialised) head: different scores.
    enc_new, enc_base = model[0].state_dict(), base[0].state_dict()
    assert all(np.array_equal(enc_new[k].numpy(), enc_base[k].numpy()) for k in enc_base)
    assert not np.allclose(scores(model, pairs["held"]), scores(base, pairs["held"]))


def test_a_sigmoid_head_is_refused_or_replaced_when_asked(student_dir, pairs, tmp_path):
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(student_dir), device="cpu")
    raw = scores(model, pairs["held"])
    model.activation_fn = torch.nn.Sigmoid()
    model.save_pretrained(str(tmp_path / "sigmoid"))
    assert json.loads((tmp_path / "sigmoid" / "config_sentence_transformers.json").read_text())[
        "activation_fn"].endswith("Sigmoid")
    with pytest.raises(EttinError, match=r"activation is Sigmoid.*head_activation: identity") as err:
        load_cross_encoder_base(str(tmp_path / "sigmoid"), max_length=None, precision=FP32)
    assert "\n" not in str(err.value)
    fixed = load_cross_encoder_base(str(tmp_path / "sigmoid"), max_length=None, precision=FP32,
                                    head_activation="identity")
    assert np.array_equal(scores(fixed, pairs["held"]), raw)


def test_a_sequence_classifier_with_two_outputs_is_refused(tiny_modernbert_path, tmp_path):
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertForSequenceClassification

    config = ModernBertConfig.from_pretrained(str(tiny_modernbert_path), num_labels=2)
    ModernBertForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    AutoTokenizer.from_pretrained(str(tiny_modernbert_path)).save_pretrained(tmp_path / "clf")
    assert head_plan(str(tmp_path / "clf"), "auto")[0] == "keep"  # found as a cross-encoder from its config
    with pytest.raises(EttinError, match="its head has 2 outputs"):
        load_cross_encoder_base(str(tmp_path / "clf"), max_length=None, precision=FP32)


# ------------------------------------------------------------------------------------------ adapt.yaml, mix


def test_adapt_recipe_drives_the_config(student_dir, pairs, tmp_path):
    recipe = str(REPO_ROOT / "recipes" / "adapt.yaml")
    kw = dict(recipe_file=recipe, base_model=str(student_dir), data=[str(pairs["train"])],
              output_dir=str(tmp_path / "o"))
    with pytest.raises(EttinError, match="require_eval_data.*--eval-data"):
        resolve_config(**kw)
    config = resolve_config(**kw, eval_data=[str(DEMO_DATA)], max_length=256)
    assert (config.head, config.head_activation, config.max_length, config.max_length_cap) == ("keep", "refuse",
                                                                                              "auto", 256)
    demo = resolve_config(recipe_file=str(REPO_ROOT / "recipes" / "demo.yaml"), data=[str(pairs["train"])],
                          eval_data=[str(DEMO_DATA)], output_dir=str(tmp_path / "d"))
    assert config.training["learning_rate"] < demo.training["learning_rate"]
    assert config.training["warmup_steps"] < demo.training["warmup_steps"]
    assert config.trainer_kwargs()["eval_on_start"] is True
    assert demo.max_length == 128  # the CPU budget's fixed length; adapt fits its own


@pytest.mark.parametrize("values, message", [
    (["mine/", "general:1.5"], "between 0 and 1"),
    (["mine/", "general:0"], "between 0 and 1"),
    (["general:0.2"], "every source has a fraction"),
    (["mine/", "a:0.6", "b:0.5"], "add up to 1.1"),
    (["mine/", "mine/:0.2"], "given twice"),
])
def test_bad_fractions_are_refused_in_one_line(values, message):
    with pytest.raises(EttinError, match=message) as err:
        parse_data_sources(values)
    assert "\n" not in str(err.value)


def test_the_mix_has_the_asked_share(cranfield, tmp_path):
    mine = write_parquet(make_pairs(cranfield, n_queries=16, negatives_per_query=3, seed=5), tmp_path / "m.parquet")
    general = write_parquet([{**r, "query": "general " + r["query"]}
                             for r in make_pairs(cranfield, n_queries=60, negatives_per_query=4, seed=6)],
                            tmp_path / "g.parquet")
    sources, fractions = parse_data_sources([str(mine), f"{general}:0.2"])
    assert sources == [str(mine), str(general)] and fractions == [None, 0.2]
    columns = {"query": "query", "document": "document", "score": "label"}
    ds, summary = load_mix(sources, fractions, columns, cache_dir=str(tmp_path / "c"), seed=3)
    n_mine = summary[0]["rows"]
    drawn = sum(q.startswith("general ") for q in ds["query"])
    assert len(ds) == n_mine + drawn and drawn == summary[-1]["rows_drawn"]
    assert abs(drawn / len(ds) - 0.2) <= 1 / len(ds)
    again, _ = load_mix(sources, fractions, columns, cache_dir=str(tmp_path / "c"), seed=3)
    assert again["query"] == ds["query"]  # seeded
    other, _ = load_mix(sources, fractions, columns, cache_dir=str(tmp_path / "c"), seed=4)
    assert other["query"] != ds["query"]
    with pytest.raises(EttinError, match="lower the fraction"):
        load_mix([str(general), str(mine)], [None, 0.9], columns, cache_dir=str(tmp_path / "c"))


# ------------------------------------------------------------------------------------- max_length: auto


@pytest.fixture(scope="module")
def long_query_scores(minilm_path, tmp_path_factory) -> Path:
    """Pairs with long queries from the demo corpus (a query is the opening of another document: ~100 tokens),
    scored by the real MiniLM teacher with `ettin score`'s library call at its 256-token limit."""
    from ettin_cli.io.beir import load_beir
    from ettin_cli.label.scoring import ScoreJob, run_score
    from ettin_cli.label.teacher import load_teacher

    demo = load_beir(DEMO_DATA)
    docs = list(demo.corpus.items())
    rows = []
    for i in range(0, 60, 2):
        (_, query_doc), (did, doc) = docs[i], docs[i + 1]
        rows.append({"query": " ".join(query_doc.split()[:70]), "document": doc, "doc_id": did})
    root = tmp_path_factory.mktemp("long-queries")
    write_parquet(rows, root / "pairs.parquet")
    teacher = load_teacher(str(minilm_path), "bi-encoder", device="cpu", max_length=256)
    run_score(ScoreJob(input=str(root / "pairs.parquet"), output=root / "scored", teacher=teacher, device="cpu"))
    return root / "scored"


def test_auto_length_fits_long_queries_and_warns_when_capped(long_query_scores, tiny_modernbert_path, tmp_path,
                                                             caplog):
    from ettin_cli.train.data import load_train_and_eval, pair_lengths

    recipe = tmp_path / "auto.yaml"
    recipe.write_text(f"size: auto\nmodel:\n  backbone: {tiny_modernbert_path}\n  max_length: auto\n"
                      "training:\n  learning_rate: 1.0e-4\n  global_batch_size: 8\n", encoding="utf-8")
    kw = dict(recipe_file=str(recipe), data=[str(long_query_scores)], eval_data=[str(DEMO_DATA)],
              output_dir=str(tmp_path / "o"), cache_dir=str(tmp_path / "c"))
    config = resolve_config(**kw)
    train_ds, _, summary = load_train_and_eval(config)
    assert summary["teacher_max_length"] == 256  # recorded by `ettin score` in its manifest
    model = build_student_for(config, train_ds)
    lengths, _ = pair_lengths(model.tokenizer, train_ds)
    assert np.median(lengths) > 128  # long queries: the demo's former fixed 128 would cut most pairs
    with caplog.at_level(logging.INFO, logger="ettin"):
        fitted = fit_max_length(config, model, train_ds, summary["teacher_max_length"])
    chosen = fitted["max_length"]
    assert model.max_seq_length == chosen and chosen % 32 == 0 and chosen >= np.percentile(lengths, 95)
    assert chosen - 32 < np.percentile(lengths, 95) and fitted["cut_fraction"] <= 0.05
    assert "max length auto" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "are cut" in r.getMessage()]

    caplog.clear()
    capped = resolve_config(**kw, max_length=128)  # --max-length caps what auto may pick
    model = build_student_for(capped, train_ds)
    with caplog.at_level(logging.INFO, logger="ettin"):
        cut = fit_max_length(capped, model, train_ds, summary["teacher_max_length"])
    assert cut["max_length"] == 128 == model.max_seq_length and cut["cut_fraction"] > 0.25
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"--max-length {chosen}" in warnings[0] and "the teacher read up to 256" in warnings[0]
    assert f"{cut['fitted_cost']:.1f}x the tokens" in warnings[0] and cut["fitted_length"] == chosen
    assert "capped at 128 by --max-length" in caplog.text
