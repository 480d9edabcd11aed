"""The offline demo (scripts/demo.sh, `make demo`) end to end on a cut-down input, and the Makefile chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT


def test_demo_pipeline_runs_end_to_end_and_the_student_learns_the_teachers_order(tmp_path, minilm_path):
    """The quick demo trains the real MiniLM student on the real teacher's labels of the training queries; on
    held-out queries it must beat the teacher-variance baseline by half (MSE < 0.5 x the variance of the teacher's
    scores, the MSE of predicting their mean) and rank like the teacher (positive mean per-query Spearman)."""
    out = tmp_path / "demo"
    env = {**os.environ, "DEMO_QUICK": "1", "DEMO_OUT": str(out), "VENV": str(Path(sys.executable).parents[1])}
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Every step says what it does and where its output went.
    for step in range(1, 9):
        assert f"==> {step}/8" in proc.stdout
    for folder in ("mined", "scored", "selected", "heldout"):
        assert (out / folder / ".ettin" / "manifest.json").is_file(), folder
    # Only the 90 training queries are mined for training: no dev or test query leaks into the train data.
    train_qids = set(pq.read_table(out / "scored" / "part-00000.parquet").column("query_id").to_pylist())
    qrels = REPO_ROOT / "src/ettin_cli/demo_data/qrels"
    split_qids = {name: {line.split("\t")[0] for line in (qrels / f"{name}.tsv").read_text().splitlines()[1:]}
                  for name in ("train", "dev", "test")}
    assert train_qids and train_qids <= split_qids["train"]
    assert not split_qids["train"] & split_qids["dev"] and not split_qids["dev"] & split_qids["test"]
    # Selection and report never share queries: the run record names the split that picked the checkpoint, the
    # eval report the one it reports on; the eval-loss pairs are dev queries too.
    record = json.loads((out / "student" / "final" / "ettin_training.json").read_text())
    report = json.loads((out / "eval" / "eval.json").read_text())
    selected_on, reported_on = record["evaluation"]["split"], report["split"]
    assert selected_on != reported_on and not split_qids[selected_on] & split_qids[reported_on]
    assert "demo_data" in record["evaluation"]["datasets"] and "demo_data" in report["datasets"]
    heldout_qids = set(pq.read_table(out / "heldout" / "part-00000.parquet").column("query_id").to_pylist())
    assert heldout_qids and not heldout_qids & split_qids[reported_on]
    # The teacher was checked against BM25 on the dev queries before any scoring.
    check = json.loads((out / "teacher-check" / "teacher_check.json").read_text())
    assert check["split"] == "dev" and not check["weak"], check
    assert proc.stdout.index("==> 2/8 check-teacher") < proc.stdout.index("==> 3/8 score")
    # The student was trained, saved before (initial/) and after (final/), evaluated against the teacher.
    entries = {e["model"]: e for e in report["results"]}
    assert [e["role"] for e in report["results"]] == ["retriever", "reranker", "reranker", "reranker"]
    before, after = entries["student/initial"], entries["student/final"]
    assert after["agreement"]["mse"] < before["agreement"]["mse"]
    agree = after["agreement"]
    assert agree["mse"] < 0.5 * agree["reference_variance"], agree
    assert agree["spearman"] > 0, agree
    assert (out / "eval" / "eval.png").is_file()
    assert record["teacher"] == str(minilm_path) and record["teacher_format"] == "bi-encoder"
    assert "dry run: nothing is contacted" in proc.stdout


def make_dry(*args: str) -> str:
    proc = subprocess.run(["make", "-n", *args], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def work(tmp_path) -> Path:
    """A work folder as `make mix` and `make mine` leave it: one pre-training subset, validation, one mined."""
    for sub in ("mix/agnews", "mix/validation", "mined/nq"):
        (tmp_path / sub / ".ettin").mkdir(parents=True)
        (tmp_path / sub / ".ettin" / "manifest.json").write_text("{}")
    (tmp_path / "mix" / "summary.json").write_text("{}")
    return tmp_path


def test_make_train_shows_the_whole_chain_with_torchrun(work):
    stamp = f"VENV={Path(sys.executable).parents[1]}"
    out = make_dry("train", "SIZE=1b", "NPROC=8", f"WORK={work}", stamp)
    lines = [line for line in out.splitlines() if "ettin_cli" in line or "ettin " in line]
    assert any(f"score {work}/mix/agnews" in line and "--nproc_per_node 8" in line for line in lines)
    assert any(f"score {work}/mined/nq" in line for line in lines)
    assert any(f"select {work}/scored/nq" in line for line in lines)
    train = [line for line in out.splitlines() if " train --size 1b" in line]
    assert train and f"--data {work}/scored/agnews --data {work}/selected/nq" in train[0]
    assert f"--validation-data {work}/scored/validation" in out


RELEASE_LISTS = ("fever", "fiqa", "hotpotqa", "msmarco", "nq", "squadv2", "trivia")


def test_make_builds_the_7_release_lists_then_scores_and_selects_them(work):
    stamp = f"VENV={Path(sys.executable).parents[1]}"
    out = make_dry("train", "SIZE=17m", f"WORK={work}", stamp)
    lines = out.splitlines()
    train = next(i for i, line in enumerate(lines) if " train --size 17m" in line)
    for source in RELEASE_LISTS:
        name = f"rerank_{source}"
        steps = [f" mine --lists lightonai/embeddings-fine-tuning --source {source} --output {work}/mined/{name} ",
                 f" score {work}/mined/{name} ", f" select {work}/scored/{name} "]
        at = [next(i for i, line in enumerate(lines) if step in line + " ") for step in steps]
        assert at == sorted(at) and at[-1] < train, source  # lists -> score -> select -> train
        assert f"--data {work}/selected/{name}" in lines[train]
    push = make_dry("push-data", "ORG=o", f"WORK={work}", stamp)
    assert all(f"rerank_{s}={work}/selected/rerank_{s}" in push for s in RELEASE_LISTS)
    assert f"agnews={work}/scored/agnews" in push


def test_make_reruns_only_what_is_missing(work):
    stamp = f"VENV={Path(sys.executable).parents[1]}"
    release = [f"{step}/rerank_{s}" for s in RELEASE_LISTS for step in ("mined", "scored", "selected")]
    for step in ("scored/agnews", "scored/nq", "selected/nq", *release):
        (work / step / ".ettin").mkdir(parents=True)
        (work / step / ".ettin" / "manifest.json").write_text("{}")
    out = make_dry("train", "SIZE=17m", f"WORK={work}", stamp)
    assert " score " not in out and " select " not in out and " train --size 17m" in out


def test_make_help_lists_the_pipeline_targets():
    proc = subprocess.run(["make", "help"], capture_output=True, text=True, cwd=REPO_ROOT)
    for target in ("test", "demo", "mix", "mine", "lists", "lists-all", "score", "score-all", "select", "train",
                   "train-all", "push",
                   "push-data", "eval", "bench"):
        assert f"  {target} " in proc.stdout, target
