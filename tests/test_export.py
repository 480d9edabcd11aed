"""`ettin export`: the whole scorer as ONNX / OpenVINO in Sentence Transformers' layout, each file proven.

The student is the tiny ModernBERT Ettin student of conftest (built by `student.build_student`, saved by
Sentence Transformers, as `ettin train` does), the check pairs Cranfield's BM25 top-k (a real BEIR folder), the
calibration pairs the model's own training data named in its `ettin_training.json`. The reference scores come
from Sentence Transformers' `CrossEncoder.predict`, the agreement figures are recomputed here with scipy and
ir-measures, never copied from the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from test_push import ORG, parse_dry_run, run_push, training_record
from test_push import hub_server as hub_server  # noqa: F401  (the stand-in Hub fixtures of test_push)
from test_push import stand_in as stand_in_hub

ISA = "avx2"
FORMATS = "onnx,onnx-o2,onnx-int8,openvino,openvino-int8"
FILES = ["onnx/model.onnx", "onnx/model_O2.onnx", f"onnx/model_qint8_{ISA}.onnx", "openvino/openvino_model.xml",
         "openvino/openvino_model_qint8_quantized.xml"]


@pytest.fixture(scope="module")
def small_recipe(tmp_path_factory) -> Path:
    """recipes/export.yaml with a small check (4 queries x BM25 top 8) and calibration (24 pairs)."""
    from ettin_cli.publish.export import load_export_recipe

    recipe = load_export_recipe()
    recipe["check"].update({"max_queries": 4, "top_k": 8})
    recipe["calibration"]["num_pairs"] = 24
    path = tmp_path_factory.mktemp("recipe") / "export.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def student(tiny_student_path, cranfield_pairs_parquet, tmp_path_factory) -> Path:
    """The tiny student laid out like `ettin train`'s OUT/final, its record naming its (local) training data."""
    import shutil

    from ettin_cli.core.files import write_json_atomic

    out = tmp_path_factory.mktemp("run") / "final"
    shutil.copytree(tiny_student_path, out)
    record = training_record("tiny-modernbert")  # what `ettin train` writes, as test_push replicates it
    record["data"] = [{"source": str(cranfield_pairs_parquet), "kind": "files", "rows": 160}]
    write_json_atomic(out / "ettin_training.json", record)
    return out


@pytest.fixture(scope="module")
def exported(student, small_recipe, cranfield_dir) -> Path:
    """One `ettin export` of every format family. The tiny random student's scores spread too little for int8
    to keep their order, so the int8 order bounds are opened here; their figures are still checked below.
    The model is named relative to the working folder, as a user types it (`ettin export runs/x/final`)."""
    import os

    from ettin_cli.cli import main

    here = Path.cwd()
    os.chdir(student.parent)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["export", student.name, "--formats", FORMATS, "--isa", ISA, "--check-data", str(cranfield_dir),
                  "--recipe", str(small_recipe), "--bound", "int8.min_spearman=-1", "--bound",
                  "int8.max_ndcg_drop=1"])
    finally:
        os.chdir(here)
    assert exit_info.value.code in (0, None)
    return student


def check_pairs(cranfield, n_queries: int = 4, top_k: int = 8) -> tuple[list, list]:
    """The same held-out pairs the export checks on: the first judged queries' BM25 top-k (bm25s)."""
    from ettin_cli.measure.retrieval import bm25_search

    queries = {q: cranfield.queries[q] for q in cranfield.judged_queries[:n_queries]}
    hits = bm25_search(cranfield.corpus, queries, top_k)
    keys = [(q, d) for q in queries for d, _ in hits[q]]
    return keys, [(cranfield.queries[q], cranfield.corpus[d]) for q, d in keys]


def test_export_writes_the_sentence_transformers_layout_with_measured_parity(exported, cranfield):
    import ir_measures
    import numpy as np
    from scipy.stats import spearmanr
    from sentence_transformers import CrossEncoder

    from ettin_cli.label.exported import ExportedCrossEncoder

    folder = exported
    for rel in FILES:
        assert (folder / rel).is_file(), rel
    assert (folder / "openvino/openvino_model.bin").is_file()
    assert (folder / "openvino/openvino_model_qint8_quantized.bin").is_file()
    assert not list(folder.glob(".ettin-export-*"))  # the temp folder is gone

    onnx_record = json.loads((folder / "onnx/parity.json").read_text())
    ov_record = json.loads((folder / "openvino/parity.json").read_text())
    assert set(onnx_record["exports"]) == {"onnx", "onnx-o2", "onnx-int8"}
    assert set(ov_record["exports"]) == {"openvino", "openvino-int8"}
    assert onnx_record["inputs"] == ["input_ids", "attention_mask"]  # ModernBERT takes no token_type_ids
    assert ov_record["calibration"].endswith("cranfield_pairs.parquet") and ov_record["calibration_pairs"] == 24

    keys, pairs = check_pairs(cranfield)
    assert onnx_record["check_pairs"] == len(pairs)
    assert onnx_record["config"]["formats"] == FORMATS.split(",") and onnx_record["config"]["isa"] == ISA
    reference = CrossEncoder(str(folder), device="cpu").predict(pairs, batch_size=16)
    qrels = [ir_measures.Qrel(q, d, g) for q in {k[0] for k in keys} for d, g in cranfield.qrels[q].items()]
    for name, row in {**onnx_record["exports"], **ov_record["exports"]}.items():
        scores = ExportedCrossEncoder(folder, row["file"]).predict(pairs)
        figures = row["parity"]
        assert figures["pairs"] == len(pairs)
        assert figures["max_abs_diff"] == pytest.approx(float(np.max(np.abs(scores - reference))), abs=2e-6)
        assert figures["spearman"] == pytest.approx(spearmanr(scores, reference).statistic, abs=1e-6), name
        run = [ir_measures.ScoredDoc(q, d, float(s)) for (q, d), s in zip(keys, scores, strict=True)]
        ndcg = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]
        assert figures["ndcg@10"] == pytest.approx(ndcg, abs=1e-9), name
        assert row["pairs_per_second"] > 0 and row["passed"]
        if row["kind"] == "fp32":  # the whole scorer, head included, to rounding
            assert figures["max_abs_diff"] <= 1e-4 and figures["ndcg_drop"] == pytest.approx(0, abs=1e-12)
        else:
            assert figures["max_abs_diff"] > 1e-6  # int8 is not a silent copy of the fp32 graph


def test_the_single_graph_runs_with_onnxruntime_alone(exported, cranfield_pairs):
    """torch made unimportable in a fresh interpreter: tokenizers + onnxruntime + numpy score like PyTorch."""
    from sentence_transformers import CrossEncoder

    folder = exported
    pairs = [(r["query"], r["document"]) for r in cranfield_pairs[:12]]
    script = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from ettin_cli.label.exported import ExportedCrossEncoder\n"
        f"model = ExportedCrossEncoder({str(folder)!r}, 'onnx/model.onnx')\n"
        "pairs = json.loads(sys.stdin.read())\n"
        "ranked = model.rank(pairs[0][0], [d for _, d in pairs], top_k=3, return_documents=True)\n"
        "print(json.dumps({'scores': model.predict([tuple(p) for p in pairs]).tolist(), 'ranked': ranked,\n"
        "                  'torch': 'torch' in sys.modules and sys.modules['torch'] is not None}))\n")
    result = subprocess.run([sys.executable, "-c", script], input=json.dumps(pairs), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["torch"] is False
    reference = CrossEncoder(str(folder), device="cpu").predict(pairs)
    assert got["scores"] == pytest.approx(reference.tolist(), abs=1e-4)
    expected = CrossEncoder(str(folder), device="cpu").rank(pairs[0][0], [d for _, d in pairs], top_k=3)
    assert [h["corpus_id"] for h in got["ranked"]] == [h["corpus_id"] for h in expected]
    assert got["ranked"][0]["text"] == pairs[got["ranked"][0]["corpus_id"]][1]


def test_a_failing_parity_refuses_the_export_and_writes_nothing(student, small_recipe, cranfield_dir, tmp_path,
                                                               capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["export", str(student), "--output", str(out), "--formats", "onnx",
                            "--check-data", str(cranfield_dir), "--recipe", str(small_recipe),
                            "--bound", "fp32.max_abs_diff=1e-12"], capsys)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "max_abs_diff" in errors[0] and "> 1e-12" in errors[0], err
    assert "Traceback" not in err
    assert [p.name for p in out.iterdir()] == []  # no onnx/, no openvino/, no temp folder


@pytest.mark.parametrize(("args", "needle"), [
    (["--formats", "onnx,tflite"], "unknown format tflite"),
    (["--bound", "fp16.max_abs_diff=1"], "--bound fp16.max_abs_diff=1"),
    (["--isa", "sse2"], "--isa sse2"),
    ([], "--check-data no/such/dir"),
])
def test_bad_options_are_one_line(args, needle, student, small_recipe, tmp_path, capsys):
    code, _, err = run_cli(["export", str(student), "--output", str(tmp_path / "o"), "--recipe",
                            str(small_recipe), "--check-data", "no/such/dir", *args], capsys)
    assert code == 2 and needle in err and "Traceback" not in err, err


def test_a_missing_extra_names_the_install(student, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    code, _, err = run_cli(["export", str(student), "--formats", "onnx,openvino"], capsys)
    assert code == 2
    assert err.strip() == 'error: ettin export needs openvino: pip install "ettin-cli[export]"'


def test_bench_backends_times_each_export_on_the_same_pairs(exported, cranfield_dir, tmp_path, capsys):
    from ettin_cli.label.exported import ExportedCrossEncoder
    from ettin_cli.measure.bench import bench_pairs

    out = tmp_path / "bench"
    code, stdout, err = run_cli(["bench", str(exported), "--backend", "torch,onnx,onnx-int8,openvino", "--data",
                                 str(cranfield_dir), "--num-pairs", "24", "--batch-size", "8", "--passes", "1",
                                 "--output", str(out)], capsys)
    assert code == 0, err
    report = json.loads((out / "bench.json").read_text())
    rows = {r["backend"]: r for r in report["results"]}
    assert list(rows) == ["torch", "onnx", "onnx-int8", "openvino"]
    assert rows["onnx-int8"]["file"] == f"onnx/model_qint8_{ISA}.onnx"
    assert rows["torch"]["speedup_vs_torch"] == 1.0
    for name, row in rows.items():
        assert row["pairs"] == 24 and row["pairs_per_second"] > 0 and row["peak_memory_mb"] > 0, name
        assert row["speedup_vs_torch"] == pytest.approx(row["pairs_per_second"] / rows["torch"]["pairs_per_second"])
    assert rows["torch"]["parity"]["max_abs_diff"] <= 1e-6  # the same model; batches padded differently
    assert rows["onnx"]["parity"]["max_abs_diff"] <= 1e-4 and rows["openvino"]["parity"]["max_abs_diff"] <= 1e-4
    # The int8 row's figure is the int8 file's own disagreement with PyTorch on these pairs, scored in the
    # bench's batches of 8 (dynamic quantization scales activations per batch, so batching matters to int8).
    from sentence_transformers import CrossEncoder

    pairs = bench_pairs(cranfield_dir, 24, seed=0)
    reference = CrossEncoder(str(exported), device="cpu").predict(pairs)
    int8 = ExportedCrossEncoder(exported, f"onnx/model_qint8_{ISA}.onnx").predict(pairs, batch_size=8)
    assert rows["onnx-int8"]["parity"]["max_abs_diff"] == pytest.approx(float(abs(int8 - reference).max()),
                                                                         abs=1e-5)
    assert "onnx-int8" in stdout and "x torch" in stdout


stand_in = stand_in_hub


def test_push_uploads_the_exports_in_the_model_commit_and_cards_them(exported, stand_in, tmp_path, cranfield_pairs):
    from ettin_cli.label.exported import ExportedCrossEncoder

    repo = f"{ORG}/ettin-reranker-17m-v1"
    dry = run_push([str(exported), "--repo-id", repo, "--dry-run"], stand_in, tmp_path)
    assert dry.returncode == 0, dry.stderr
    sizes, _, _, card = parse_dry_run(dry.stdout)
    for rel in [*FILES, "onnx/parity.json", "openvino/parity.json", "openvino/openvino_model.bin",
                "openvino/openvino_model_qint8_quantized.bin", "model.safetensors"]:
        assert sizes[rel] == (exported / rel).stat().st_size, rel
    assert "## Exported models (ONNX / OpenVINO)" in card
    parity = {**json.loads((exported / "onnx/parity.json").read_text())["exports"],
              **json.loads((exported / "openvino/parity.json").read_text())["exports"]}
    for row in parity.values():
        line = next(x for x in card.splitlines() if x.startswith(f"| `{row['file']}` |"))
        assert f"{row['parity']['max_abs_diff']:.2e}" in line and f"{row['pairs_per_second']:,.1f}" in line
    assert f'ExportedCrossEncoder("{repo}", "onnx/model.onnx")' in card
    assert card.count("ettin-export:start") == 1

    result = run_push([str(exported), "--repo-id", repo], stand_in, tmp_path)
    assert result.returncode == 0, result.stderr
    (commit,) = [c for c in stand_in.commits_to(repo) if c.summary != "initial commit"]
    assert set(commit.files) == set(sizes)  # the exports went up in the model's one commit
    clone = stand_in.materialize(repo, tmp_path / "clone")
    pairs = [(r["query"], r["document"]) for r in cranfield_pairs[:8]]
    for rel in ("onnx/model.onnx", "openvino/openvino_model.xml"):
        pushed = ExportedCrossEncoder(clone, rel).predict(pairs)
        assert pushed == pytest.approx(ExportedCrossEncoder(exported, rel).predict(pairs), abs=1e-6)
