"""The ground every command stands on: CLI shape and speed, errors, recipes, atomic files, ranks, hardware."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ettin_cli import __version__
from ettin_cli.cli import COMMAND_MODULES
from ettin_cli.core.distributed import Rank, current_rank, owned
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import atomic_path, sha256_file, write_json_atomic
from ettin_cli.core.hardware import resolve_precision
from ettin_cli.core.recipes import available_sizes, deep_merge, load_recipe

ETTIN = [sys.executable, "-m", "ettin_cli"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*ETTIN, *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_version():
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"ettin-cli {__version__}"


def test_help_lists_every_command_and_is_fast():
    start = time.perf_counter()
    out = run("--help")
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    for name in COMMAND_MODULES:
        assert name.replace("_", "-") in out.stdout
    assert elapsed < 2.0, f"ettin --help took {elapsed:.2f}s"


HEAVY = ["torch", "transformers", "datasets", "sentence_transformers", "pyarrow", "matplotlib", "scipy", "bm25s",
         "ir_measures", "mteb", "onnxruntime", "openvino", "huggingface_hub", "accelerate"]


def test_help_imports_no_heavy_library():
    """`ettin --help` imports every command module; the heavy libraries stay inside the functions that use them
    (and a command imports its library module when it runs)."""
    code = f"import sys; from ettin_cli import cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_command_has_help_with_examples():
    for name in COMMAND_MODULES:
        out = run(name.replace("_", "-"), "--help")
        assert out.returncode == 0, out.stderr
        assert "Example" in out.stdout, f"`ettin {name} --help` shows no example"


def test_user_error_is_one_line_exit_2_no_traceback():
    out = run("-v", "-q", "env")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --verbose and --quiet exclude each other"
    assert "Traceback" not in out.stderr


def test_env_command_reports_cpu_path():
    out = run("env", "--json")
    assert out.returncode == 0, out.stderr
    assert '"auto_precision": "float32 + sdpa"' in out.stdout


def test_error_message_is_folded_to_one_line():
    assert str(EttinError("a\nb   c")) == "a b c"


def test_recipes_cover_six_sizes():
    assert available_sizes() == ["17m", "32m", "68m", "150m", "400m", "1b"]
    recipe = load_recipe("150m")
    assert recipe["model"]["backbone"] == "jhu-clsp/ettin-encoder-150m"
    assert recipe["training"]["learning_rate"] == pytest.approx(1.5e-5)
    assert recipe["training"]["global_batch_size"] == 192
    assert recipe["training"]["seed"] == 12  # from shared.yaml


def test_unknown_size_lists_valid_ones():
    with pytest.raises(EttinError, match="unknown size '3m': choose one of 17m, 32m, 68m, 150m, 400m, 1b"):
        load_recipe("3m")


def test_bad_recipe_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  learning_rate: [1\n")
    with pytest.raises(EttinError, match=r"bad.yaml line \d+: invalid YAML"):
        load_recipe(recipe_file=bad)


def test_deep_merge_keeps_untouched_keys():
    assert deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}, "b": 1}


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    write_json_atomic(target, {"b": 1, "a": 2})
    assert target.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert len(sha256_file(target)) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_rank_assignment_is_a_partition(monkeypatch):
    for world in (1, 2, 3, 8):
        owners = [[r for r in range(world) if owned(i, Rank(r, world))] for i in range(20)]
        assert all(len(o) == 1 for o in owners)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert current_rank() == Rank(3, 4, 0)
    assert current_rank(num_shards=2, shard_index=1) == Rank(1, 2, 0)
    with pytest.raises(EttinError, match="go together"):
        current_rank(num_shards=2)
    with pytest.raises(EttinError, match=r"\[0, 2\)"):
        current_rank(num_shards=2, shard_index=2)


def test_precision_auto_rules():
    assert resolve_precision("cpu") == resolve_precision("cpu", "float32", "sdpa")
    gpu = resolve_precision("cuda:0", capability=(9, 0), fa2_available=True)
    assert (gpu.dtype, gpu.attn, gpu.unpadded) == ("bfloat16", "flash_attention_2", True)
    no_fa = resolve_precision("cuda:0", capability=(9, 0), fa2_available=False)
    assert (no_fa.dtype, no_fa.attn) == ("bfloat16", "sdpa")
    old = resolve_precision("cuda:0", capability=(7, 5), fa2_available=True)
    assert (old.dtype, old.attn) == ("float32", "sdpa")
    with pytest.raises(EttinError, match="needs a CUDA GPU"):
        resolve_precision("cpu", "bfloat16", "flash_attention_2", fa2_available=True)
    with pytest.raises(EttinError, match="compute capability"):
        resolve_precision("cuda:0", "bfloat16", "sdpa", capability=(7, 0), fa2_available=False)


def test_beir_loader_names_the_bad_line(tmp_path, cranfield_dir):
    from ettin_cli.io.beir import load_beir

    ds = load_beir(cranfield_dir)
    assert len(ds.corpus) == 1400 and len(ds.queries) == 225
    bad = tmp_path / "bad"
    (bad / "qrels").mkdir(parents=True)
    (bad / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    (bad / "queries.jsonl").write_text('{"_id": "q1", "text": "y"}\n')
    (bad / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    with pytest.raises(EttinError, match=r"test.tsv line 2: document id 'd9' is not in the corpus"):
        load_beir(bad)
    (bad / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\nnot json\n')
    with pytest.raises(EttinError, match=r"corpus.jsonl line 2: not valid JSON"):
        load_beir(bad)
    with pytest.raises(EttinError, match="not a directory"):
        load_beir(Path(tmp_path / "missing"))
