"""`ettin doctor` on CPU: the real checks pass, the report has its schema, and a broken fast path is caught."""

from __future__ import annotations

import json
import os
import socket

import pytest
from conftest import run_cli

FP32 = ["--only", "fp32+sdpa", "--pairs", "8"]


def _by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_the_cpu_run_passes_and_writes_the_json_report(tmp_path, capsys):
    out = tmp_path / "report" / "doctor.json"
    code, stdout, stderr = run_cli(["doctor", "--json", str(out), "--pairs", "8"], capsys)
    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert set(report) == {"checks", "fa2_backend"}
    for check in report["checks"]:
        assert set(check) == {"name", "status", "figure", "detail", "device"}
        assert check["status"] in ("pass", "fail", "skip") and check["device"] == "cpu"
        assert all(isinstance(v, str) for v in check.values())
        if check["status"] == "skip":
            assert check["detail"], f"{check['name']}: a skip must say why"
    checks = _by_name(report)
    assert sum(c["status"] == "pass" for c in report["checks"]) >= 4
    for label in ("fp32+sdpa", "bf16+sdpa"):
        for name in (f"teacher fast path = naive forward ({label})", f"student padded batch = pairs alone ({label})",
                     f"one training step lowers MSE ({label})"):
            assert checks[name]["status"] == "pass", checks[name]
        assert checks[f"teacher pairs/s ({label})"]["figure"].endswith("pairs/s")
    # The padded student really processed padding on CPU (no FA2 here), and said how much.
    detail = checks["student padded batch = pairs alone (fp32+sdpa)"]["detail"]
    processed, real = (int(x) for x in detail.replace(",", "").split()[2:5:2])
    assert processed > real
    assert checks["teacher fast path (bf16+fa2)"]["status"] == "skip"
    assert "CUDA" in checks["teacher fast path (bf16+fa2)"]["detail"]
    assert checks["all_reduce across ranks"]["status"] == "skip"
    # The table on stdout names every check.
    assert "ettin doctor" in stdout and "teacher fast path = naive forward (fp32+sdpa)" in stdout


def test_a_wrong_teacher_head_vector_fails_the_doctor(monkeypatch, tmp_path, capsys):
    from ettin_cli.measure import doctor

    real_load = doctor.load_teacher

    def broken_load(*args, **kwargs):
        teacher = real_load(*args, **kwargs)
        teacher.head_vector = teacher.head_vector.roll(1)  # the wrong lm_head difference
        return teacher

    monkeypatch.setattr(doctor, "load_teacher", broken_load)
    out = tmp_path / "doctor.json"
    code, _, stderr = run_cli(["doctor", *FP32, "--json", str(out)], capsys)
    assert code == 1
    failed = [line for line in stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "teacher fast path = naive forward (fp32+sdpa)" in failed[0]
    assert "differs from the naive forward" in failed[0]
    checks = _by_name(json.loads(out.read_text()))
    assert checks["teacher fast path = naive forward (fp32+sdpa)"]["status"] == "fail"
    assert checks["student padded batch = pairs alone (fp32+sdpa)"]["status"] == "pass"


def test_a_padded_student_reported_as_unpadded_fails_the_doctor(monkeypatch, capsys):
    from ettin_cli.measure import doctor

    monkeypatch.setattr(doctor, "student_unpadded", lambda model: True)
    code, _, stderr = run_cli(["doctor", *FP32], capsys)
    assert code == 1
    failed = [line for line in stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "student unpadded batch" in failed[0]
    assert "reported unpadded, but the backbone processed" in failed[0]


def test_a_student_that_pads_into_its_scores_fails_the_doctor(monkeypatch, capsys):
    """Batching must not change a score: here padding positions leak into CLS (attention mask dropped)."""
    from ettin_cli.measure import doctor

    real_scores = doctor._student_scores

    def no_mask(model, pairs, device):
        if len(pairs) == 1:
            return real_scores(model, pairs, device)
        features = model.preprocess(list(pairs))
        features["attention_mask"] = features["attention_mask"].new_ones(features["attention_mask"].shape)
        return model(features)["scores"].reshape(-1)

    monkeypatch.setattr(doctor, "_student_scores", no_mask)
    code, _, stderr = run_cli(["doctor", *FP32], capsys)
    assert code == 1
    assert "batched scores differ from each pair alone" in stderr


def test_doctor_refuses_bad_options(tmp_path, capsys):
    code, _, stderr = run_cli(["doctor", "--only", "fp16+sdpa"], capsys)
    assert code == 2 and stderr.strip().startswith("error: --only fp16+sdpa: not a setting")
    code, _, stderr = run_cli(["doctor", "--json", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in stderr
    code, _, stderr = run_cli(["doctor", "--pairs", "2"], capsys)
    assert code == 2 and "--pairs must be at least 8" in stderr


def test_all_reduce_runs_under_a_torchrun_environment(monkeypatch):
    from ettin_cli.measure.doctor import check_all_reduce

    assert check_all_reduce("cpu").status == "skip"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    check = check_all_reduce("cpu")
    assert check.status == "pass", check
    assert check.figure == "1 (expected 1)" and "gloo" in check.detail


@pytest.mark.parametrize(("device", "capability", "fa2", "runs"), [
    ("cpu", None, True, ["fp32+sdpa", "bf16+sdpa"]),
    ("cuda:0", (9, 0), True, ["fp32+sdpa", "bf16+sdpa", "bf16+fa2"]),
    ("cuda:0", (9, 0), False, ["fp32+sdpa", "bf16+sdpa"]),
    ("cuda:0", (7, 5), True, ["fp32+sdpa"]),
])
def test_the_settings_follow_the_hardware(device, capability, fa2, runs):
    from ettin_cli.measure.doctor import SETTINGS
    from ettin_cli.measure.settings import plan_settings

    plan = plan_settings(device, settings=SETTINGS, capability=capability, fa2_available=fa2)
    assert [s.name for s in SETTINGS] == ["fp32+sdpa", "bf16+sdpa", "bf16+fa2"]
    assert [setting.name for setting, reason in plan if reason is None] == runs
    assert [setting for setting, _ in plan] == list(SETTINGS)


def test_a_wrong_gradient_fails_the_training_step(monkeypatch, capsys):
    """Scores keep their values but their gradient is reversed (a broken backward): the step must go uphill."""
    from ettin_cli.measure import doctor

    real_scores = doctor._student_scores

    def reversed_gradient(model, pairs, device):
        scores = real_scores(model, pairs, device)
        return 2 * scores.detach() - scores

    monkeypatch.setattr(doctor, "_student_scores", reversed_gradient)
    code, _, stderr = run_cli(["doctor", *FP32], capsys)
    assert code == 1
    failed = [line for line in stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "one training step lowers MSE (fp32+sdpa)" in failed[0]
    assert "the step did not lower the loss" in failed[0]


def test_offline_blocks_downloads_and_restores_the_setting(monkeypatch):
    from huggingface_hub import constants

    from ettin_cli.measure.doctor import offline

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with offline():
        assert constants.HF_HUB_OFFLINE is True
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert constants.HF_HUB_OFFLINE is False
    assert "HF_HUB_OFFLINE" not in os.environ
