"""Throughput benchmark: settings plan, batch-size search, timed passes, and `ettin bench` on CPU."""

from __future__ import annotations

import json
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import run_cli

from ettin_cli.core.errors import EttinError
from ettin_cli.measure import bench
from ettin_cli.measure.bench import bench_pairs, find_batch_size, measure, set_unpadded
from ettin_cli.measure.settings import ABLATION, Setting, plan_settings

# ------------------------------------------------------------------------------------------ settings plan


def test_ablation_labels_are_the_published_four():
    assert [s.label for s in ABLATION] == ["fp32+SDPA", "bf16+SDPA", "bf16+FA2 padded", "bf16+FA2 unpadded"]


def test_ablation_on_cpu_skips_flash_attention_with_the_reason():
    plan = plan_settings("cpu", ablation=True)
    assert [s.label for s, _ in plan] == [s.label for s in ABLATION]
    reasons = dict((s.label, r) for s, r in plan)
    assert reasons["fp32+SDPA"] is None and reasons["bf16+SDPA"] is None
    assert "needs a CUDA GPU" in reasons["bf16+FA2 padded"]
    assert "needs a CUDA GPU" in reasons["bf16+FA2 unpadded"]


def test_ablation_on_gpus_follows_the_hardware_facts():
    """GPU logic tested on CPU: the capability and flash-attn presence are passed in."""
    h100 = plan_settings("cuda:0", ablation=True, capability=(9, 0), fa2_available=True)
    assert all(reason is None for _, reason in h100)
    assert [s.unpadded for s, _ in h100] == [False, False, False, True]
    no_fa2 = dict((s.label, r) for s, r in plan_settings("cuda:0", ablation=True, capability=(8, 0),
                                                          fa2_available=False))
    assert no_fa2["bf16+SDPA"] is None and "flash_attn package is not installed" in no_fa2["bf16+FA2 unpadded"]
    t4 = dict((s.label, r) for s, r in plan_settings("cuda:0", ablation=True, capability=(7, 5),
                                                      fa2_available=True))
    assert t4["fp32+SDPA"] is None
    assert "compute capability" in t4["bf16+SDPA"]


def test_auto_and_padding_choices():
    assert plan_settings("cpu") == [(Setting("float32", "sdpa", False), None)]
    auto_gpu = plan_settings("cuda", capability=(9, 0), fa2_available=True)
    assert auto_gpu == [(Setting("bfloat16", "flash_attention_2", True), None)]
    both = plan_settings("cuda", ["bfloat16"], ["flash_attention_2", "sdpa"], "both", capability=(9, 0),
                         fa2_available=True)
    assert [s.label for s, _ in both] == ["bf16+FA2 padded", "bf16+FA2 unpadded", "bf16+SDPA"]
    (setting, reason), = plan_settings("cpu", ["float32"], ["sdpa"], "unpadded")
    assert setting.unpadded and "need --attn flash_attention_2" in reason
    with pytest.raises(EttinError, match="--padding"):
        plan_settings("cpu", padding="sideways")
    with pytest.raises(EttinError, match="--dtype"):
        plan_settings("cpu", ["int3"])


# -------------------------------------------------------------------------------------------------- pairs


def test_bench_pairs_from_beir_are_real_and_seeded(cranfield_dir, cranfield):
    pairs = bench_pairs(cranfield_dir, 50, seed=1)
    assert len(pairs) == 50 and pairs == bench_pairs(cranfield_dir, 50, seed=1)
    assert pairs != bench_pairs(cranfield_dir, 50, seed=2)
    queries, documents = set(cranfield.queries.values()), set(cranfield.corpus.values())
    assert all(q in queries and d in documents for q, d in pairs)


def test_bench_pairs_from_a_parquet_file(cranfield_pairs_parquet, cranfield_pairs, tmp_path):
    pairs = bench_pairs(cranfield_pairs_parquet, len(cranfield_pairs) + 5)
    assert len(pairs) == len(cranfield_pairs) + 5  # fewer rows than asked: pairs repeat
    assert set(pairs) == {(r["query"], r["document"]) for r in cranfield_pairs}
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"query": ["q"], "text": ["d"]}), bad)
    with pytest.raises(EttinError, match="no 'document' column"):
        bench_pairs(bad, 4)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"query": ["q", " "], "document": ["d", "e"]}), empty)
    with pytest.raises(EttinError, match="row 1: column 'query' is empty"):
        bench_pairs(empty, 4)
    with pytest.raises(EttinError, match="no such file or folder"):
        bench_pairs(tmp_path / "nowhere", 4)
    with pytest.raises(EttinError, match="--num-pairs"):
        bench_pairs(cranfield_pairs_parquet, 0)


# ------------------------------------------------------------------------------------ batch-size search


class FakeClock:
    """Stands in for `time.perf_counter` inside `ettin_cli.measure.bench`, so timings are exact and instant."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class FakeScorer:
    """Costs `per_pair(batch_size)` seconds per pair on the fake clock: the fastest batch size is known."""

    def __init__(self, clock: FakeClock, per_pair, oom_from: int | None = None, split_from: int | None = None):
        self.clock, self.per_pair, self.oom_from, self.split_from = clock, per_pair, oom_from, split_from
        self.stats = SimpleNamespace(oom_splits=0)
        self.calls: list[int] = []

    def score(self, queries, documents, batch_size=None):
        import torch

        self.calls.append(batch_size)
        if self.oom_from is not None and batch_size >= self.oom_from:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.split_from is not None and batch_size >= self.split_from:
            self.stats.oom_splits += 1
        self.clock.now += len(queries) * self.per_pair(batch_size)
        return np.zeros(len(queries), dtype=np.float32)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(bench, "time", fake)
    return fake


PAIRS = [("q", "d")] * 128


def test_cpu_search_stops_when_throughput_stops_rising(clock):
    scorer = FakeScorer(clock, lambda bs: {8: 2e-3, 16: 1e-3, 32: 5e-4}.get(bs, 2e-3))
    best, probes = find_batch_size(scorer, PAIRS, "cpu", min_probe_pairs=32)
    assert best == 32
    assert [p["batch_size"] for p in probes] == [8, 16, 32, 64]  # 64 was slower: the search stopped there
    assert all(p["status"] == "ok" for p in probes)


def test_cpu_search_respects_the_cap_and_the_memory_limit(clock, monkeypatch):
    scorer = FakeScorer(clock, lambda bs: 8e-3 / bs)
    best, probes = find_batch_size(scorer, PAIRS, "cpu", max_batch=16, min_probe_pairs=32)
    assert best == 16 and [p["batch_size"] for p in probes] == [8, 16]
    monkeypatch.setattr(bench, "peak_memory_bytes", lambda device: (1000 * scorer.calls[-1], "peak_rss"))
    best, probes = find_batch_size(scorer, PAIRS, "cpu", memory_limit=20_000, min_probe_pairs=32)
    assert best == 16 and probes[-1] == {**probes[-1], "batch_size": 32, "status": "memory limit"}
    with pytest.raises(EttinError, match="no batch size"):
        find_batch_size(scorer, PAIRS, "cpu", memory_limit=10, min_probe_pairs=32)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Run the GPU branch of the search on CPU: no-op synchronisation and a fake allocator peak."""
    monkeypatch.setattr(bench, "sync", lambda device: None)
    monkeypatch.setattr(bench, "reset_peak_memory", lambda device: None)
    monkeypatch.setattr(bench, "peak_memory_bytes", lambda device: (2**30, "cuda_max_memory_allocated"))
    monkeypatch.setattr(bench, "_release", lambda device: None)


def test_gpu_search_doubles_until_out_of_memory(fake_cuda, clock):
    """On GPU a slower batch size does not stop the search (only OOM does); the fastest probe wins."""
    scorer = FakeScorer(clock, lambda bs: {8: 2e-3, 16: 5e-4, 32: 1.5e-3}.get(bs, 1e-3), oom_from=64)
    best, probes = find_batch_size(scorer, PAIRS, "cuda:0", min_probe_pairs=32)
    assert best == 16
    assert [(p["batch_size"], p["status"]) for p in probes] == [(8, "ok"), (16, "ok"), (32, "ok"),
                                                                (64, "out of memory")]
    split = FakeScorer(clock, lambda bs: 8e-3 / bs, split_from=32)  # the scorer survived by splitting: counts as OOM
    best, probes = find_batch_size(split, PAIRS, "cuda:0", min_probe_pairs=32)
    assert best == 16 and probes[-1]["status"] == "out of memory"


def test_measure_keeps_the_median_of_three_passes(fake_cuda, clock):
    costs = iter([1e-4, 3e-4, 1e-4, 2e-4])  # warm-up, then passes at 3333, 10000 and 5000 pairs/s
    scorer = FakeScorer(clock, lambda bs: next(costs))
    result = measure(scorer, PAIRS[:40], "cuda:0", passes=3, batch_size=8)
    assert result["passes"] == pytest.approx([40 / (40 * 3e-4), 40 / (40 * 1e-4), 40 / (40 * 2e-4)])
    assert result["pairs_per_second"] == pytest.approx(5000)
    assert result["batch_size"] == 8 and result["pairs"] == 40 and result["batch_search"] == []
    assert scorer.calls == [8, 8, 8, 8]  # warm-up + three passes
    assert result["memory_kind"] == "cuda_max_memory_allocated" and result["peak_memory_mb"] == 1024


# ---------------------------------------------------------------------------------------------- padding


def test_set_unpadded_switches_the_teacher_packing_without_changing_scores(tiny_qwen2_teacher_path, cranfield_pairs):
    """The packed (FA2 production) path of the mxbai-v2 teacher, exercised on CPU: same scores as padded."""
    from ettin_cli.label.teacher import load_teacher

    teacher = load_teacher(str(tiny_qwen2_teacher_path), device="cpu", max_length=256)
    queries = [r["query"] for r in cranfield_pairs[:6]]
    documents = [r["document"] for r in cranfield_pairs[:6]]
    assert set_unpadded(teacher, False) is False
    padded = teacher.score(queries, documents, batch_size=6)
    assert set_unpadded(teacher, True) is True
    packed = teacher.score(queries, documents, batch_size=6)
    np.testing.assert_allclose(packed, padded, atol=1e-4)


def test_set_unpadded_on_a_student_needs_flash_attention(tiny_student_path):
    from ettin_cli.label.teacher import load_teacher

    student = load_teacher(str(tiny_student_path), device="cpu")
    assert set_unpadded(student, True) is False  # SDPA on CPU: ST cannot flatten inputs, so run_bench skips
    assert set_unpadded(student, False) is False
    assert student.model[0].unpad_inputs is False


# -------------------------------------------------------------------------------------------------- CLI




def test_bench_cli_on_cpu_prints_the_table(tiny_student_path, tiny_qwen2_teacher_path, cranfield_dir, tmp_path,
                                           capsys):
    out = tmp_path / "bench"
    code, stdout, err = run_cli(["-q", "bench", str(tiny_student_path), str(tiny_qwen2_teacher_path), "--data",
                                 str(cranfield_dir), "--num-pairs", "16", "--max-batch-size", "16", "--device",
                                 "cpu", "--dtype", "float32", "--attn", "sdpa", "--attn", "flash_attention_2",
                                 "--max-length", "256", "-o", str(out)], capsys)
    assert code == 0, err
    assert "fp32+SDPA" in stdout and "pairs/s" in stdout and "skipped" in stdout
    report = json.loads((out / "bench.json").read_text())
    assert report["device"] == "cpu" and report["pairs"] == 16 and report["max_length"] == 256
    assert {r["max_length"] for r in report["results"] if r["status"] == "ok"} == {256}
    assert {s["max_length"] for s in report["pair_lengths"].values()} == {256}
    rows = report["results"]
    assert [(r["model"], r["setting"], r["status"]) for r in rows] == [
        (tiny_student_path.name, "fp32+SDPA", "ok"), (tiny_student_path.name, "fp32+FA2 padded", "skipped"),
        (tiny_qwen2_teacher_path.name, "fp32+SDPA", "ok"), (tiny_qwen2_teacher_path.name, "fp32+FA2 padded", "skipped")]
    for row in rows:
        if row["status"] == "skipped":
            assert "CUDA GPU" in row["reason"]
            continue
        assert row["format"] in ("cross-encoder", "mxbai-v2")
        assert len(row["passes"]) == 3 and row["pairs_per_second"] == statistics.median(row["passes"])
        assert row["batch_size"] in (8, 16)
        assert row["batch_size"] == max((p for p in row["batch_search"] if p["status"] == "ok"),
                                        key=lambda p: p["pairs_per_second"])["batch_size"]
        assert all(p["batch_size"] <= 16 for p in row["batch_search"])
        assert row["peak_memory_mb"] > 0 and row["memory_kind"].startswith("peak_rss")
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", ["unknown model", "empty queries", "missing data", "bad batch cap"])
def test_bench_cli_refuses_bad_input_with_one_line(case, tiny_student_path, cranfield, tmp_path, capsys):
    from test_evaluation import write_beir

    model, data, extra = str(tiny_student_path), tmp_path / "data", []
    queries = dict(list(cranfield.queries.items())[:3])
    if case == "unknown model":
        write_beir(data, dict(list(cranfield.corpus.items())[:5]), queries, None)
        model, expected = "./no/such/model", "no/such/model"
    elif case == "empty queries":
        write_beir(data, dict(list(cranfield.corpus.items())[:5]), {**queries, "x": ""}, None)
        expected = "empty queries"
    elif case == "missing data":
        expected = "no such file or folder"
    else:
        write_beir(data, dict(list(cranfield.corpus.items())[:5]), queries, None)
        extra, expected = ["--max-batch-size", "4"], "--max-batch-size (4) is below --start-batch-size (8)"
    out = tmp_path / "out"
    code, _, err = run_cli(["bench", model, "--data", str(data), "--device", "cpu", "-o", str(out), *extra], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err and not (out / "bench.json").exists()


# ------------------------------------------------------------------------------------------- pair lengths


def test_pair_lengths_follow_each_format(tiny_student_path, tiny_qwen2_teacher_path, minilm_path, cranfield_pairs):
    """Uncut lengths and cut flags, checked against what each format really builds (independent counts)."""
    from ettin_cli.label.teacher import load_teacher
    from ettin_cli.measure.bench import length_summary, pair_lengths

    pairs = [(r["query"], r["document"]) for r in cranfield_pairs[:20]]
    queries, documents = [q for q, _ in pairs], [d for _, d in pairs]

    student = load_teacher(str(tiny_student_path), device="cpu", max_length=64)
    lengths, cut = pair_lengths(student, pairs)
    full = [len(x) for x in student.tokenizer(queries, documents)["input_ids"]]
    assert lengths.tolist() == full and cut.tolist() == [n > 64 for n in full] and 0 < cut.sum() < len(pairs)

    # Judge format: a pair is cut exactly when `encode_pairs` cuts it; an uncut pair's length is its sequence's.
    judge = load_teacher(str(tiny_qwen2_teacher_path), device="cpu", max_length=256)
    lengths, cut = pair_lengths(judge, pairs)
    seqs, trunc_q, trunc_d = judge.encode_pairs(queries, documents)
    assert cut.tolist() == (trunc_q | trunc_d).tolist() and 0 < cut.sum() < len(pairs)
    assert all(n == len(s) for n, s, c in zip(lengths, seqs, cut, strict=True) if not c)
    assert all(n > len(s) for n, s, c in zip(lengths, seqs, cut, strict=True) if c)

    # Bi-encoder: each text is its own sequence; the pair counts its longer text and is cut if either side is.
    bi = load_teacher(str(minilm_path), device="cpu", max_length=32)
    lengths, cut = pair_lengths(bi, pairs)
    q = [len(x) for x in bi.tokenizer(queries)["input_ids"]]
    d = [len(x) for x in bi.tokenizer(documents)["input_ids"]]
    assert lengths.tolist() == [max(a, b) for a, b in zip(q, d, strict=True)]
    assert cut.tolist() == [a > 32 or b > 32 for a, b in zip(q, d, strict=True)]

    summary = length_summary(np.array([10, 20, 30, 40, 200]), np.array([False] * 4 + [True]), 128)
    assert summary == {"max_length": 128, "pairs": 5, "median": 30.0, "p90": pytest.approx(136.0),
                       "p99": pytest.approx(193.6), "max": 200, "cut": 1, "cut_share": 0.2}


def test_bench_cli_defaults_to_the_models_own_max_length(tiny_modernbert_path, cranfield_dir, tmp_path, capsys):
    """A student trained at 128 is timed at 128 (not 512), and the pairs' length distribution is printed."""
    from ettin_cli.core.hardware import Precision
    from ettin_cli.label.teacher import load_teacher
    from ettin_cli.train.student import build_student

    student = tmp_path / "student-128"
    build_student(str(tiny_modernbert_path), max_length=128, precision=Precision("float32", "sdpa"),
                  for_training=False).save_pretrained(str(student))
    out = tmp_path / "bench"
    args = ["-q", "bench", str(student), "--data", str(cranfield_dir), "--num-pairs", "16", "--batch-size", "8",
            "--passes", "1", "--device", "cpu", "-o", str(out)]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads((out / "bench.json").read_text())
    assert report["max_length"] is None and report["results"][0]["max_length"] == 128
    lengths = report["pair_lengths"]["student-128"]
    pairs = bench_pairs(cranfield_dir, 16)
    tokenizer = load_teacher(str(student), device="cpu").tokenizer
    full = [len(x) for x in tokenizer([q for q, _ in pairs], [d for _, d in pairs])["input_ids"]]
    assert lengths["max_length"] == 128 and lengths["max"] == max(full)
    assert lengths["median"] == statistics.median(full) and lengths["cut"] == sum(n > 128 for n in full) > 0
    assert "Pair lengths" in stdout and "cut at max length" in stdout and "max length (128)" in stdout
    # --max-length still overrides the model's own
    code, _, err = run_cli([*args, "--max-length", "64"], capsys)
    assert code == 0, err
    report = json.loads((out / "bench.json").read_text())
    assert report["max_length"] == 64 and report["results"][0]["max_length"] == 64
    assert report["pair_lengths"]["student-128"]["cut"] == sum(n > 64 for n in full)
