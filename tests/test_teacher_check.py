"""`ettin check-teacher`: the teacher vs BM25 on dev queries, before scoring; a weak teacher stops the route."""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT, run_cli

from ettin_cli.core.errors import EttinError
from ettin_cli.measure.teacher_check import check_teacher

DEMO = REPO_ROOT / "src" / "ettin_cli" / "demo_data"


def test_a_random_teacher_is_weak_and_stops_the_route_unless_allowed(tiny_qwen2_teacher_path, tmp_path, capsys):
    """A random Qwen2 in the mxbai-v2 layout reranks the demo's dev queries worse than BM25's own order: the
    check names both NDCG@10 values and the margin, exits 2 in one line and writes no verdict file; with
    --allow-weak-teacher it goes on (exit 0) and records the weak verdict."""
    args = ["check-teacher", str(tiny_qwen2_teacher_path), "--data", str(DEMO), "--max-queries", "8",
            "--top-k", "10"]
    code, out, err = run_cli([*args, "--output", str(tmp_path / "a")], capsys)
    assert code == 2, err
    assert "margin" in out and "on 8 dev queries" in out
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--allow-weak-teacher" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "a" / "teacher_check.json").exists()
    report = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert report["split"] == "dev"
    bm25, teacher = (e["mean"]["ndcg@10"] for e in report["results"])
    assert teacher < bm25 + 0.01  # the recipe's margin, measured by `ettin eval`'s own code path
    code, out, err = run_cli([*args, "--output", str(tmp_path / "b"), "--allow-weak-teacher"], capsys)
    assert code == 0, err
    verdict = json.loads((tmp_path / "b" / "teacher_check.json").read_text())
    assert verdict["weak"] and verdict["margin"] == pytest.approx(teacher - bm25)
    assert verdict["min_margin"] == 0.01  # recipes/data.yaml teacher_check.min_margin


def test_the_check_never_reads_the_test_split(tiny_qwen2_teacher_path):
    with pytest.raises(EttinError, match="never the test queries"):
        check_teacher(str(tiny_qwen2_teacher_path), str(DEMO), min_margin=0.0, split="test")
