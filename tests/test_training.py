"""`ettin train`: the recipe resolved for six sizes, a real distillation run, outputs, resume, torchrun, bad input.

The training runs use the tiny ModernBERT backbone, real Cranfield pairs scored by the real all-MiniLM-L6-v2
(bi-encoder teacher, through `ettin score`'s own library call), and a small test recipe (`--recipe`) whose cadence
is coarser than the production 5%, so a run of 8 steps evaluates 4 times instead of 8.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, make_pairs, run_cli

from ettin_cli.core.errors import EttinError
from ettin_cli.io.beir import BeirDataset
from ettin_cli.train.checkpoints import CHECKPOINT_RECORD, bind_output_dir, checkpoint_problem
from ettin_cli.train.config import TrainConfig, resolve_config
from ettin_cli.train.data import load_pairs
from ettin_cli.train.evaluators import make_nanobeir_evaluator
from ettin_cli.train.run import run_training

RECIPE_MD = REPO_ROOT.parent / "shared" / "RECIPE.md"
SIZES = ["17m", "32m", "68m", "150m", "400m", "1b"]
STEPS = 8


# ------------------------------------------------------------------------------------------------ helpers




def recipe_md_table() -> dict[str, dict[str, str]]:
    """The students table of RECIPE.md, parsed independently of the recipes/ YAML files."""
    if not RECIPE_MD.is_file():
        pytest.skip(f"{RECIPE_MD} not found")
    rows = {}
    for line in RECIPE_MD.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in SIZES:
            rows[cells[0]] = dict(zip(["size", "hidden", "layers", "params", "lr", "batch"], cells, strict=True))
    assert sorted(rows, key=SIZES.index) == SIZES
    return rows


def weights(path: Path) -> dict:
    """Every tensor of a saved student (backbone safetensors + the head modules' safetensors)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.rglob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            out[f"{f.relative_to(path).parent}/{k}"] = v
    return out


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst <= atol, f"max weight difference {worst}"


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def teacher(minilm_path):
    from ettin_cli.label.teacher import load_teacher

    return load_teacher(str(minilm_path), "bi-encoder", device="cpu", max_length=64)


@pytest.fixture(scope="module")
def scored(cranfield, teacher, tmp_path_factory):
    """Cranfield pairs labelled by the teacher: training pairs as an `ettin score` folder, and held-out pairs
    from other queries (with their teacher scores) for the distillation check."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ettin_cli.label.scoring import ScoreJob, run_score

    root = tmp_path_factory.mktemp("scored")
    train_rows = make_pairs(cranfield, n_queries=24, negatives_per_query=3, seed=3)
    later = cranfield.judged_queries[24:36]
    held_view = BeirDataset(cranfield.name, cranfield.corpus, {q: cranfield.queries[q] for q in later},
                            {q: cranfield.qrels[q] for q in later})
    held = make_pairs(held_view, n_queries=12, negatives_per_query=3, seed=4)
    pq.write_table(pa.Table.from_pylist(train_rows), root / "pairs.parquet")
    result = run_score(ScoreJob(input=str(root / "pairs.parquet"), output=root / "score_dir", teacher=teacher,
                                rows_per_shard=64, device="cpu"))
    assert result.manifest is not None
    held_scores = teacher.score([r["query"] for r in held], [r["document"] for r in held])
    pq.write_table(pa.Table.from_pylist([{"query": r["query"], "document": r["document"], "score": float(v)}
                                         for r, v in zip(held, held_scores, strict=True)]), root / "held.parquet")
    return {"dir": root / "score_dir", "rows": len(train_rows), "held": held, "held_scores": held_scores,
            "held_path": root / "held.parquet", "root": root}


@pytest.fixture(scope="module")
def test_recipe(tiny_modernbert_path, tmp_path_factory) -> Path:
    """The shared recipe with a tiny backbone, a higher learning rate for 8 steps and a 25% cadence."""
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(
        "size: tiny\n"
        f"model:\n  backbone: {tiny_modernbert_path}\n  hidden_size: 32\n  max_length: 64\n"
        "training:\n  learning_rate: 3.0e-3\n  global_batch_size: 16\n  eval_steps: 0.25\n"
        "  save_steps: 0.25\n  logging_steps: 0.125\n  dataloader_num_workers: 0\n",
        encoding="utf-8")
    return path


def train_request(test_recipe, scored, cranfield_dir, out: Path, **kw) -> TrainConfig:
    base = dict(recipe_file=str(test_recipe), data=[str(scored["dir"])], validation_data=[str(scored["held_path"])],
                output_dir=str(out), max_steps=STEPS,
                eval_data=[str(cranfield_dir)], eval_top_k=10, eval_max_queries=8,
                cache_dir=str(scored["root"] / "cache"))
    base.update(kw)
    return resolve_config(**base)


@pytest.fixture(scope="module")
def trained(test_recipe, scored, cranfield_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    config = train_request(test_recipe, scored, cranfield_dir, out)
    record = run_training(config)
    return {"out": out, "config": config, "record": record}


# ------------------------------------------------------------------------------------- config resolution


def test_print_config_matches_recipe_md_for_all_six_sizes(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    table = recipe_md_table()
    for size in SIZES:
        code, out, err = run_cli(["train", "--size", size, "--print-config"], capsys)
        assert code == 0, err
        cfg = json.loads(out)
        row = table[size]
        train = cfg["training"]
        assert cfg["backbone"] == f"jhu-clsp/ettin-encoder-{size}"
        assert train["learning_rate"] == float(row["lr"])
        assert cfg["global_batch_size"] == int(row["batch"])
        assert cfg["architecture"]["hidden_size"] == int(row["hidden"])
        assert cfg["architecture"]["num_layers"] == int(row["layers"])
        assert cfg["architecture"]["parameters"] == row["params"]
        # the same for every size (RECIPE.md "Same for all sizes")
        assert cfg["world_size"] == 1 and train["per_device_train_batch_size"] == int(row["batch"])
        assert train["gradient_accumulation_steps"] == 1
        assert train["num_train_epochs"] == 1 and "max_steps" not in train
        assert train["warmup_steps"] == 0.03 and train["lr_scheduler_type"] == "linear"
        assert train["seed"] == 12
        assert cfg["precision"]["recipe"] == "bf16 + flash_attention_2"
        assert cfg["precision"]["dtype"] == "float32" and cfg["precision"]["attn"] == "sdpa"  # this CPU box
        assert (train["eval_steps"], train["save_steps"], train["logging_steps"]) == (0.05, 0.05, 0.025)
        assert train["save_total_limit"] == 5 and train["logging_first_step"] and train["load_best_model_at_end"]
        assert train["metric_for_best_model"] == "eval_NanoBEIR_R100_mean_ndcg@10"
        assert train["dataloader_num_workers"] == 4
        assert cfg["teacher"] == "mixedbread-ai/mxbai-rerank-large-v2"
        assert cfg["data"]["train"] == ["cross-encoder/ettin-reranker-v1-data"]
        assert cfg["data"]["eval_split"] == "validation"
        ev = cfg["evaluation"]
        assert ev["benchmark"] == "nanobeir" and len(ev["datasets"]) == 13
        assert ev["top_k"] == 100 and ev["retriever"] == "bm25" and ev["force_positives"] is False
        assert cfg["output_dir"].endswith(f"runs/ettin-reranker-{size}")
        # no max length set: the student keeps the backbone's maximum, read from the recipe's backbone facts
        assert cfg["max_length"] is None and cfg["architecture"]["max_length"] == 7999
        # the release's arguments beyond the recipe table (RECIPE.md, "Facts of the published release")
        assert (train["dataloader_drop_last"], train["optim"], train["weight_decay"], train["max_grad_norm"]) == (
            True, "adamw_torch", 0.0, 1.0)
        assert cfg["data"]["columns"]["score"] is None  # label or score, whichever exists
        assert TrainConfig.from_dict(cfg).to_dict() == cfg  # one config, symmetric


def test_print_config_loads_nothing(tmp_path):
    code = ("import sys, json; from ettin_cli.cli import main\n"
            "try:\n    main(['-q', 'train', '--size', '17m', '--print-config'])\nexcept SystemExit: pass\n"
            "print(json.dumps(['datasets' in sys.modules, 'sentence_transformers' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, False]
    assert list(tmp_path.iterdir()) == []


def test_world_size_splits_the_global_batch_and_workers_drop_beyond_8():
    for world, per_device, workers in ((2, 512, 4), (8, 128, 4), (16, 64, 0)):
        cfg = resolve_config(size="17m", world_size=world, device="cpu")
        assert (cfg.per_device_batch_size, cfg.training["gradient_accumulation_steps"]) == (per_device, 1)
        assert cfg.training["dataloader_num_workers"] == workers
    cfg = resolve_config(size="150m", per_device_batch_size=24, world_size=4, device="cpu")
    assert (cfg.per_device_batch_size, cfg.training["gradient_accumulation_steps"]) == (24, 2)  # 24 x 4 x 2 = 192
    with pytest.raises(EttinError, match="does not divide"):
        resolve_config(size="150m", per_device_batch_size=50, world_size=1, device="cpu")
    with pytest.raises(EttinError, match="not divisible by world size 5"):
        resolve_config(size="17m", world_size=5, device="cpu")
    with pytest.raises(EttinError, match="--learning-rate"):
        resolve_config(size="17m", learning_rate=-1.0, device="cpu")


def test_overrides_and_environment_world_size(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "8")
    code, out, err = run_cli(["train", "--size", "1b", "--print-config", "--learning-rate", "1e-5", "--max-steps",
                              "1000", "--global-batch-size", "256", "--max-length", "1024", "--seed", "7",
                              "--base-model", "someone/encoder", "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 0, err
    cfg = json.loads(out)
    train = cfg["training"]
    assert (train["learning_rate"], train["max_steps"], cfg["global_batch_size"]) == (1e-5, 1000, 256)
    assert (cfg["world_size"], train["per_device_train_batch_size"], cfg["max_length"], train["seed"]) == (
        8, 32, 1024, 7)
    assert cfg["backbone"] == "someone/encoder"
    # with the step count known, the ratios become the trainer's step counts
    assert (train["eval_steps"], train["save_steps"], train["logging_steps"]) == (50, 50, 25)
    assert not (tmp_path / "o").exists()


def test_trainer_arguments_carry_the_recipe(tmp_path):
    cfg = resolve_config(size="68m", output_dir=str(tmp_path / "o"), world_size=1, device="cpu")
    args = cfg.trainer_arguments(eval_on_start=True)
    assert args.learning_rate == 3e-5 and args.per_device_train_batch_size == 256
    assert args.gradient_accumulation_steps == 1 and args.num_train_epochs == 1 and args.seed == 12
    assert args.get_warmup_steps(1000) == 30 and args.lr_scheduler_type == "linear"
    assert (args.eval_steps, args.save_steps, args.logging_steps) == (0.05, 0.05, 0.025)
    assert args.logging_first_step and args.save_total_limit == 5 and args.load_best_model_at_end
    assert args.metric_for_best_model == "eval_NanoBEIR_R100_mean_ndcg@10" and args.greater_is_better
    assert args.eval_on_start and args.dataloader_num_workers == 4
    assert not args.bf16  # CPU: fp32
    assert args.use_cpu and not args.bf16
    gpu = TrainConfig.from_dict({**cfg.to_dict(), "precision": {**cfg.precision, "device": "cuda:0",
                                                                 "dtype": "bfloat16", "attn": "flash_attention_2"}})
    kwargs = gpu.trainer_kwargs(eval_on_start=False)
    assert kwargs["bf16"] is True and kwargs["use_cpu"] is False and kwargs["ddp_backend"] is None
    assert not (tmp_path / "o").exists()


def test_recipe_training_keys_pass_through_and_unknown_ones_are_refused(tmp_path):
    """`training:` keys are trainer field names (numeric strings coerced); a misspelt one is one line."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("size: x\nmodel: {backbone: b}\ntraining: {learning_rate: 1e-4, global_batch_size: 8, "
                      "adam_beta2: '0.98', weight_decay: 1e-2}\n")
    cfg = resolve_config(recipe_file=str(recipe), data=["someone/pairs"], world_size=1, device="cpu")
    args = cfg.trainer_arguments()
    assert (args.learning_rate, args.adam_beta2, args.weight_decay) == (1e-4, 0.98, 0.01)
    recipe.write_text("size: x\nmodel: {backbone: b}\ntraining: {learning_rate: 1e-4, global_batch_size: 8, "
                      "warmup_ration: 0.1}\n")
    cfg = resolve_config(recipe_file=str(recipe), data=["someone/pairs"], world_size=1, device="cpu")
    with pytest.raises(EttinError, match=r"training\.warmup_ration: not a CrossEncoderTrainingArguments field"):
        cfg.trainer_arguments()


def test_online_evaluator_is_nanobeir_13_sets_top100_positives_not_forced(monkeypatch):
    """Constructed only: the Hub is unreachable, so the dataset loading is stubbed out."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderNanoBEIREvaluator

    import ettin_cli.train.evaluators as evaluators

    loaded = []
    monkeypatch.setattr(CrossEncoderNanoBEIREvaluator, "_load_dataset",
                        lambda self, name, **kw: loaded.append((name, kw)) or name)
    monkeypatch.setattr(evaluators, "require_nanobeir", lambda: None)  # the Hub check (tested below)
    cfg = resolve_config(size="17m", world_size=1, device="cpu")
    ev = make_nanobeir_evaluator(cfg.evaluation["datasets"], top_k=100, batch_size=64)
    assert len(loaded) == 13 and {"arguana", "touche2020"} <= {n for n, _ in loaded}
    assert ev.rerank_k == 100 and ev.at_k == 10 and ev.always_rerank_positives is False
    assert all(kw["always_rerank_positives"] is False for _, kw in loaded)
    assert f"{ev.name}_{ev.primary_metric}" == cfg.primary_metric


def test_offline_default_evaluation_fails_in_a_second_before_loading_anything(tmp_path, capsys):
    """No --eval-data on an offline machine: NanoBEIR cannot be fetched; one line naming the offline alternative,
    within a second of starting (not the Hub client's ~23 s of retries), before the data or a model is read."""
    import time

    scored = tmp_path / "pairs.parquet"  # never read: the check comes first
    scored.write_bytes(b"")
    start = time.perf_counter()
    code, _, err = run_cli(["train", "--size", "17m", "--data", str(scored), "--output-dir", str(tmp_path / "out")],
                           capsys)
    elapsed = time.perf_counter() - start
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "NanoBEIR" in err and "--eval-data DIR" in err
    assert elapsed < 1.5, f"took {elapsed:.1f}s"
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------- data


def test_score_folder_and_files_load_memory_mapped(scored):
    ds, summary = load_pairs([str(scored["dir"])], {"query": "query", "document": "document", "score": "score"},
                             cache_dir=str(scored["root"] / "cache"))
    assert ds.column_names == ["query", "document", "label"]
    assert len(ds) == scored["rows"] and summary[0]["kind"] == "score-dir" and summary[0]["rows"] == len(ds)
    assert summary[0]["teacher_format"] == "bi-encoder"
    # the folder also carries the qrels `label` of its input: its manifest names `score` as the target
    assert summary[0]["target_column"] == "score"
    ds_auto, _ = load_pairs([str(scored["dir"])], {"query": "query", "document": "document", "score": None},
                            cache_dir=str(scored["root"] / "cache"))
    assert ds_auto["label"][:5] == ds["label"][:5]
    assert ds.cache_files  # backed by Arrow files on disk, not an in-memory table
    import pyarrow.parquet as pq

    first = pq.read_table(sorted(scored["dir"].glob("part-*.parquet"))[0]).to_pylist()[0]
    assert ds[0]["query"] == first["query"] and ds[0]["label"] == pytest.approx(first["score"])


def test_dataset_folder_with_subsets_concatenates_train_and_finds_validation(tmp_path):
    """The Hub code path (all subsets concatenated, `validation` split for the eval loss) on a local repo layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path / "repo"
    for name, n in (("msmarco", 3), ("quora", 2)):
        (repo / name).mkdir(parents=True)
        pq.write_table(pa.table({"query": [f"{name} q{i}" for i in range(n)], "document": ["d"] * n,
                                 "score": [float(i) for i in range(n)]}), repo / name / "train.parquet")
    pq.write_table(pa.table({"query": ["v"], "document": ["d"], "score": [1.5]}), repo / "quora" / "validation.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: msmarco\n  data_files:\n  - split: train\n    path: msmarco/train.parquet\n"
        "- config_name: quora\n  data_files:\n  - split: train\n    path: quora/train.parquet\n"
        "  - split: validation\n    path: quora/validation.parquet\n---\n", encoding="utf-8")
    cols = {"query": "query", "document": "document", "score": "score"}
    train, summary = load_pairs([str(repo)], cols, split="train", cache_dir=str(tmp_path / "cache"))
    assert len(train) == 5 and summary[0]["kind"] == "dataset-dir"
    assert sorted(train["query"]) == sorted([f"msmarco q{i}" for i in range(3)] + ["quora q0", "quora q1"])
    val, _ = load_pairs([str(repo)], cols, split="validation", cache_dir=str(tmp_path / "cache"), required=False)
    assert val["query"] == ["v"] and val["label"] == [1.5]

    # the held-out set as a subset of its own (the `ettin mix` layout): never trained on, used for the eval loss
    (repo / "validation").mkdir()
    pq.write_table(pa.table({"query": ["held"], "document": ["d"], "score": [2.5]}), repo / "validation" / "x.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: msmarco\n  data_files:\n  - split: train\n    path: msmarco/train.parquet\n"
        "- config_name: validation\n  data_files:\n  - split: train\n    path: validation/x.parquet\n---\n",
        encoding="utf-8")
    train, _ = load_pairs([str(repo)], cols, split="train", cache_dir=str(tmp_path / "cache2"))
    assert "held" not in train["query"] and len(train) == 3
    val, _ = load_pairs([str(repo)], cols, split="validation", cache_dir=str(tmp_path / "cache2"), required=False)
    assert val["query"] == ["held"]


# ------------------------------------------------------------------------------------------- bad input


def bad_parquet(tmp_path: Path, name: str, **columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return path


def assert_refused(capsys, args: list[str], pattern: str, out_dir: Path) -> None:
    before = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else None
    code, _, err = run_cli(["-q", *args], capsys)  # -q: only the error, no progress lines
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
    after = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else None
    assert after == before, "the output folder changed"


def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, tiny_modernbert_path, cranfield_dir):
    out = tmp_path / "out"
    common = ["--base-model", str(tiny_modernbert_path), "--output-dir", str(out), "--eval-data", str(cranfield_dir),
              "--dataloader-workers", "0", "--cache-dir", str(tmp_path / "cache"), "--max-steps", "2"]
    good = {"query": ["q1", "q2", "q3"], "document": ["d1", "d2", "d3"]}

    assert_refused(capsys, ["train", "--size", "3m", "--print-config"],
                   r"unknown size '3m': choose one of 17m, 32m, 68m, 150m, 400m, 1b", out)
    no_score = bad_parquet(tmp_path, "no_score.parquet", **good, teacher=[1.0, 2.0, 3.0])
    assert_refused(capsys, ["train", "--size", "17m", "--data", str(no_score), *common],
                   r"no_score\.parquet: neither a 'label' nor a 'score' column \(columns: query, document, "
                   r"teacher\); name the target with --score-column", out)
    nan = bad_parquet(tmp_path, "nan.parquet", query=[f"q{i}" for i in range(12)], document=["d"] * 12,
                      score=[1.0, 2.0, 3.0, float("nan"), 1.0, 1.0, 1.0, float("inf"), 0.0, 0.0, float("-inf"), 1.0])
    assert_refused(capsys, ["train", "--size", "17m", "--data", str(nan), *common],
                   r"nan\.parquet: column 'score' has 3 NaN, infinite or missing scores \(first rows: 3, 7, 10\)", out)
    text_score = bad_parquet(tmp_path, "text.parquet", **good, score=["1", "2", "3"])
    assert_refused(capsys, ["train", "--size", "17m", "--data", str(text_score), *common], r"not numbers", out)
    import pyarrow as pa

    empty = bad_parquet(tmp_path, "empty.parquet", query=pa.array([], pa.string()),
                        document=pa.array([], pa.string()), score=pa.array([], pa.float32()))
    assert_refused(capsys, ["train", "--size", "17m", "--data", str(empty), *common], r"empty \(0 rows\)", out)
    assert_refused(capsys, ["train", "--size", "17m", "--data", str(tmp_path / "nope.parquet"), *common],
                   r"nope\.parquet: no such file", out)
    ok = bad_parquet(tmp_path, "ok.parquet", **good, score=[1.0, 2.0, 3.0])
    missing_model = ["--base-model", str(tmp_path / "no-model")]
    assert_refused(capsys, ["train", "--size", "17m", "--data", str(ok), *common, *missing_model],
                   r"no-model: no such file or folder", out)
    assert not out.exists()

    # an output folder holding another run: refused, nothing in it touched
    other = resolve_config(size="17m", data=[str(ok)], base_model=str(tiny_modernbert_path),
                           output_dir=str(out), eval_data=[str(cranfield_dir)], max_steps=2, learning_rate=0.5)
    bind_output_dir(other)
    (out / "checkpoint-3").mkdir()
    assert_refused(capsys, ["train", "--size", "17m", "--data", str(ok), *common],
                   r"holds a run with a different config \(training\.learning_rate: 0\.5 -> 0\.00024\); use another",
                   out)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine", encoding="utf-8")
    assert_refused(capsys, ["train", "--size", "17m", "--data", str(ok), *common[:2], "--output-dir", str(stray)],
                   r"not empty and holds no ettin train run", stray)
    assert_refused(capsys, ["train", "--size", "17m", "--data", str(ok), *common[:2], "--output-dir",
                            str(tmp_path / "fresh"), "--resume"], r"--resume: .* holds no ettin train run", out)


# -------------------------------------------------------------------------------------------- training


def test_trainer_eval_loss_is_the_held_out_mse_computed_independently(trained, scored, tiny_modernbert_path):
    """MSE to the teacher on pairs of queries never trained on, computed here with `predict`: the weights at the
    end of the 8 training steps against the untrained student (same seed). The trainer's own eval loss on the same
    held-out pairs must agree with this independent computation.

    Tiny random models: this checks the bookkeeping, not quality (a random head's offset makes "the MSE halves"
    easy). Whether a real student learns a real teacher's order on held-out queries (MSE < 0.5 x the teacher
    scores' variance, positive Spearman) is `test_demo.py`'s check."""
    from sentence_transformers import CrossEncoder

    from ettin_cli.core.hardware import Precision
    from ettin_cli.train.student import build_student

    pairs = [(r["query"], r["document"]) for r in scored["held"]]
    target = np.asarray(scored["held_scores"], dtype=np.float64)
    untrained = build_student(str(tiny_modernbert_path), max_length=64, precision=Precision("float32", "sdpa"),
                              seed=12)
    end = CrossEncoder(str(trained["out"] / f"checkpoint-{STEPS}"), device="cpu")
    mse_before = float(np.mean((untrained.predict(pairs) - target) ** 2))
    mse_after = float(np.mean((end.predict(pairs) - target) ** 2))
    assert mse_after <= 0.5 * mse_before, (mse_before, mse_after)

    evals = {e["step"]: e for e in json.loads((trained["out"] / "metrics.json").read_text())["evaluations"]}
    assert evals[0]["eval_loss"] == pytest.approx(mse_before, rel=1e-3)
    assert evals[STEPS]["eval_loss"] == pytest.approx(mse_after, rel=1e-3)


def test_outputs_record_card_metrics_and_curves(trained, scored, teacher):
    out, record = trained["out"], trained["record"]
    final = out / "final"
    saved = json.loads((final / "ettin_training.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(record))
    assert saved["size"] == "tiny" and saved["train_rows"] == scored["rows"]
    assert saved["teacher_format"] == "bi-encoder" and saved["teacher"] == teacher.name
    assert saved["hyperparameters"]["total_steps"] == STEPS and saved["observed_per_device_batch"] == 16
    before, after = saved["metrics"]["before"], saved["metrics"]["after"]
    assert set(before) == set(after) == {"cranfield", "mean"}
    assert all(0.0 <= v <= 1.0 for v in [*before.values(), *after.values()])
    card = (final / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlicense: apache-2.0") and "| cranfield |" in card
    assert f"{before['mean']:.4f}".rstrip("0").rstrip(".") in card

    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    steps = [e["step"] for e in metrics["loss_curve"]]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]  # first step, then every 12.5% of 8
    assert all(e["samples_per_second"] > 0 and e["tokens_per_second"] > 0 for e in metrics["loss_curve"])
    assert metrics["loss_curve"][-1]["tokens_seen"] > metrics["loss_curve"][0]["tokens_seen"] > 0
    assert [e["step"] for e in metrics["evaluations"]] == [0, 2, 4, 6, 8]  # before training, then every 25%
    primary = metrics["primary_metric"]
    assert primary == "eval_BEIR_R10_mean_ndcg@10" and all(primary in e for e in metrics["evaluations"])
    assert metrics["before"]["mean"] == metrics["evaluations"][0][primary]
    train = metrics["train"]
    assert train["train_tokens_per_second"] > train["train_pairs_per_second"] > 0
    # the training-steps-only rate excludes evaluation and checkpoint time, so it beats the wall-clock rate
    assert train["train_pairs_per_second"] > train["train_samples_per_second"] > 0
    png = (out / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    assert all(checkpoint_problem(p) is None for p in out.glob("checkpoint-*"))


def test_final_model_is_the_best_checkpoint(trained):
    from sentence_transformers import CrossEncoder

    out, record = trained["out"], trained["record"]
    evals = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["evaluations"]
    primary = "eval_BEIR_R10_mean_ndcg@10"
    best = max((e for e in evals if e["step"] > 0), key=lambda e: (e[primary], -e["step"]))
    assert record["metrics"]["best_step"] == best["step"]
    assert record["metrics"]["after"]["mean"] == pytest.approx(best[primary], abs=1e-9)
    pairs = [("supersonic flow over a wing", "the wing was tested at mach 2"), ("heat", "transfer of heat")]
    final = CrossEncoder(str(out / "final"), device="cpu").predict(pairs)
    ckpt = CrossEncoder(str(out / f"checkpoint-{best['step']}"), device="cpu").predict(pairs)
    assert np.array_equal(final, ckpt)


def test_rerun_of_a_finished_run_does_nothing(trained, capsys):
    final = trained["out"] / "final" / "ettin_training.json"
    stamp = final.stat().st_mtime_ns
    again = run_training(trained["config"])
    assert again == json.loads(final.read_text(encoding="utf-8"))
    assert final.stat().st_mtime_ns == stamp


class Interrupt(Exception):
    pass


def test_an_interruption_while_writing_the_outputs_is_finished_by_a_rerun_without_training(
        test_recipe, scored, cranfield_dir, tmp_path, monkeypatch):
    """Killed while drawing the curves (the last output before): the run is not "complete" (no final/), and the
    rerun writes what is missing from the saved model without building a student or training again."""
    import ettin_cli.train.outputs as outputs
    import ettin_cli.train.run as run_module

    out = tmp_path / "out"
    config = train_request(test_recipe, scored, cranfield_dir, out, max_steps=2)
    drawn = outputs.training_curves_chart

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "training_curves_chart", killed)
    with pytest.raises(KeyboardInterrupt):
        run_training(config)
    assert not (out / "final").exists() and not (out / "training_curves.png").exists()
    monkeypatch.setattr(outputs, "training_curves_chart", drawn)
    monkeypatch.setattr(run_module, "build_student_for", lambda *a, **k: pytest.fail("the rerun trained again"))
    record = run_training(config)
    final = out / "final"
    for path in (final / "ettin_training.json", final / "README.md", final / "model.safetensors",
                 out / "metrics.json", out / "training_curves.png"):
        assert path.is_file(), path
    assert record == json.loads((final / "ettin_training.json").read_text(encoding="utf-8"))
    assert not (out / ".final.tmp").exists()
    assert run_training(config) == record  # and now it is complete: nothing to do
    # Every file of the model folder as readable as any other output (the weights came 0600 from the library).
    import stat

    from ettin_cli.core.files import current_umask

    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in final.rglob("*") if p.is_file()}
    assert modes["model.safetensors"] == 0o666 & ~current_umask() and set(modes.values()) == {modes["README.md"]}


def test_resume_after_a_crash_with_a_corrupt_last_checkpoint_ends_with_the_same_weights(
        trained, test_recipe, scored, cranfield_dir, tmp_path):
    from transformers import TrainerCallback

    class CrashAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise Interrupt("simulated crash")

    out = tmp_path / "out"
    config = train_request(test_recipe, scored, cranfield_dir, out)
    with pytest.raises(Interrupt):
        run_training(config, callbacks=[CrashAfterSave()])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / "final").exists()
    # the crash also tore the newest checkpoint: its optimizer state is cut short
    opt = out / "checkpoint-4" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])
    assert "optimizer.pt has" in checkpoint_problem(out / "checkpoint-4")

    record = run_training(train_request(test_recipe, scored, cranfield_dir, out, resume=True))
    assert record["resumed_from"] == "checkpoint-2"
    assert (out / "checkpoint-4.corrupt").is_dir()  # kept aside, not deleted
    assert_same_weights(out / "final", trained["out"] / "final")
    assert_same_weights(out / f"checkpoint-{STEPS}", trained["out"] / f"checkpoint-{STEPS}")
    assert record["metrics"]["before"] == trained["record"]["metrics"]["before"]  # kept from the first attempt
    losses = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["loss_curve"]
    assert [e["step"] for e in losses] == list(range(1, STEPS + 1))


def test_checkpoint_without_completion_record_is_incomplete(trained, tmp_path):
    import shutil

    copy = tmp_path / "checkpoint-2"
    shutil.copytree(trained["out"] / "checkpoint-2", copy)
    assert checkpoint_problem(copy) is None
    (copy / "model.safetensors").write_bytes(b"\0" * (copy / "model.safetensors").stat().st_size)
    assert "model.safetensors is corrupt" in checkpoint_problem(copy)
    (copy / CHECKPOINT_RECORD).unlink()
    assert "no completion record" in checkpoint_problem(copy)


def test_two_process_torchrun_halves_the_per_device_batch(test_recipe, scored, cranfield_dir, tmp_path):
    import signal

    out = tmp_path / "out"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "ettin_cli", "-q", "train",
           "--recipe", str(test_recipe), "--data", str(scored["dir"]), "--output-dir", str(out), "--max-steps", "2",
           "--eval-data", str(cranfield_dir), "--eval-top-k", "5", "--eval-max-queries", "4",
           "--cache-dir", str(scored["root"] / "cache")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        proc.communicate()
        pytest.fail("torchrun did not finish in 240 s")
    assert proc.returncode == 0, stderr[-3000:]
    record = json.loads((out / "final" / "ettin_training.json").read_text(encoding="utf-8"))
    hyper = record["hyperparameters"]
    assert (hyper["world_size"], hyper["global_batch_size"], hyper["per_device_batch_size"]) == (2, 16, 8)
    assert record["observed_per_device_batch"] == 8
    assert hyper["total_steps"] == 2
    assert set(record["metrics"]["after"]) == {"cranfield", "mean"}
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert all(checkpoint_problem(p) is None for p in out.glob("checkpoint-*"))
    recorded = json.loads((out / "checkpoint-2" / CHECKPOINT_RECORD).read_text(encoding="utf-8"))["files"]
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "model.safetensors"} <= set(recorded)


def test_evaluation_runs_under_the_training_mixed_precision(tiny_modernbert_path, tmp_path):
    """GPU logic on CPU: with bf16 training (fp32 master weights), evaluators must predict under autocast, or
    Flash Attention would receive fp32 inputs. CPU autocast stands in for CUDA's."""
    import torch
    from datasets import Dataset
    from sentence_transformers.base.evaluation import BaseEvaluator
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import MSELoss

    from ettin_cli.core.hardware import Precision
    from ettin_cli.train.callbacks import trainer_class
    from ettin_cli.train.student import build_student

    seen = []

    class Probe(BaseEvaluator):
        def __init__(self):
            super().__init__()
            self.primary_metric = "probe"

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return {"probe": 1.0}

    model = build_student(str(tiny_modernbert_path), max_length=32, precision=Precision("float32", "sdpa"))
    data = Dataset.from_dict({"query": ["q"], "document": ["d"], "label": [1.0]})
    for bf16 in (True, False):
        args = CrossEncoderTrainingArguments(output_dir=str(tmp_path / str(bf16)), bf16=bf16, use_cpu=True,
                                             report_to="none", disable_tqdm=True)
        trainer = trainer_class()(model=model, args=args, train_dataset=data, loss=MSELoss(model),
                                   evaluator=Probe())
        assert trainer.evaluate()["eval_probe"] == 1.0
    assert len(seen) == 2 and seen[0] == (True, torch.bfloat16) and seen[1][0] is False


def test_the_teacher_of_a_selected_folder_is_traced_back_to_its_score_run(tmp_path):
    """select -> score: the training record (and so the card) names the teacher that really made the scores."""
    import pyarrow as pa

    from ettin_cli.io import shards
    from ettin_cli.train.data import score_dir_teacher

    scored, selected = tmp_path / "scored", tmp_path / "selected"
    for folder, config, extra in ((scored, {"step": "score", "teacher": None, "teacher_sha256": "ab" * 32},
                                   {"teacher": "/models/minilm", "format": "bi-encoder"}),
                                  (selected, {"step": "select", "input": str(scored)}, {})):
        shards.ShardedFolder(folder).prepare(config)
        shards.ShardedFolder(folder).write(0, pa.table({"query": ["q"], "document": ["d"], "score": [0.5]}))
        shards.ShardedFolder(folder).finalize(1, extra=extra)
    assert score_dir_teacher(str(scored)) == {"teacher": "/models/minilm", "teacher_format": "bi-encoder"}
    assert score_dir_teacher(str(selected)) == score_dir_teacher(str(scored))


def test_a_folder_of_parquet_and_jsonl_is_refused_not_half_read(tmp_path):
    """Files of both kinds in one --data folder: an error, never the parquet half silently alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "mixed"
    folder.mkdir()
    pq.write_table(pa.table({"query": ["q"], "document": ["d"], "score": [1.0]}), folder / "a.parquet")
    (folder / "b.jsonl").write_text('{"query": "q2", "document": "d2", "score": 2.0}\n')
    with pytest.raises(EttinError, match="mixes parquet and json files"):
        load_pairs([str(folder)], {"query": "query", "document": "document", "score": "score"},
                   cache_dir=str(tmp_path / "cache"))


def test_the_recipe_precision_is_honoured_where_the_hardware_runs_mixed_precision(monkeypatch, tmp_path):
    """On a (faked) H100 with flash-attn: the recipe's bf16 -> bf16 + FA2, fp16 -> fp16, fp32 -> fp32 + SDPA."""
    import torch

    from ettin_cli.core import hardware

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(hardware, "flash_attn_installed", lambda: True)
    got = {}
    for precision in ("bf16", "fp16", "fp32"):
        recipe = tmp_path / f"{precision}.yaml"
        recipe.write_text(f"size: x\nmodel: {{backbone: b}}\ntraining: {{learning_rate: 1.0e-4, "
                          f"global_batch_size: 8, precision: {precision}}}\n")
        config = resolve_config(recipe_file=str(recipe), data=["someone/pairs"], world_size=1, device="cuda:0")
        got[precision] = (config.precision["dtype"], config.precision["attn"])
    assert got == {"bf16": ("bfloat16", "flash_attention_2"), "fp16": ("float16", "flash_attention_2"),
                   "fp32": ("float32", "sdpa")}
    cpu = resolve_config(size="17m", data=["someone/pairs"], world_size=1, device="cpu")
    assert (cpu.precision["dtype"], cpu.precision["attn"]) == ("float32", "sdpa")


def test_a_run_worse_than_its_start_is_flagged_with_a_warning(trained, scored, caplog):
    """Held-out NDCG@10 after < before, or eval MSE above the teacher scores' variance: a WARNING and a flag."""
    import logging

    from ettin_cli.publish.training_record import TrainingRecord
    from ettin_cli.train.outputs import check_quality

    real = trained["record"]
    expected = [name for name, bad in (
        ("ndcg_after_below_before", real["metrics"]["after"]["mean"] < real["metrics"]["before"]["mean"]),
        ("mse_above_variance", real["metrics"]["after_eval_loss"] > float(np.var(scored["held_scores"]))))
        if bad]
    assert real["quality_flags"] == expected  # 8 tiny steps: the MSE is still above the cosines' small variance
    record = TrainingRecord(config={"loss": {"name": "mse"}},
                            metrics={"before": {"mean": 0.40}, "after": {"mean": 0.35}, "after_eval_loss": 2.5})
    with caplog.at_level(logging.WARNING):
        flags = check_quality(record, targets_variance=2.0)
    assert flags == ["ndcg_after_below_before", "mse_above_variance"]
    text = caplog.text
    assert "NDCG@10 0.3500 is BELOW the untrained student's 0.4000: training made the ranking worse" in text
    assert "MSE to the teacher 2.5000 is ABOVE the variance of its scores 2.0000" in text
    good = TrainingRecord(config=record.config,
                          metrics={"before": {"mean": 0.40}, "after": {"mean": 0.45}, "after_eval_loss": 1.0})
    assert check_quality(good, targets_variance=2.0) == []


def test_the_best_checkpoint_is_named_and_not_evaluated_again(trained):
    """load_best_model_at_end: the kept model's evaluation is the one logged at its step (no second pass), and the
    record and the last log line say which step was loaded and why."""
    from types import SimpleNamespace

    from ettin_cli.train.outputs import final_evaluation

    record = trained["record"]
    best = record["metrics"]["best_step"]
    assert record["final_model"]["step"] == best and f"checkpoint-{best} loaded at the end" in record[
        "final_model"]["why"]
    metrics = json.loads((trained["out"] / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["final_evaluation"]["step"] == best  # the logged evaluation of that step, not a new one
    assert [e["step"] for e in metrics["evaluations"]] == [0, 2, 4, 6, 8]

    def no_second_pass():
        raise AssertionError("evaluated again")

    key = "eval_BEIR_R10_mean_ndcg@10"
    history = [{"step": 0, key: 0.3}, {"step": 2, key: 0.5}, {"step": 4, key: 0.4}]
    args = SimpleNamespace(metric_for_best_model=key, load_best_model_at_end=True, greater_is_better=True)
    state = SimpleNamespace(best_model_checkpoint="/o/checkpoint-2", global_step=4, best_global_step=2)
    after, kept = final_evaluation(SimpleNamespace(state=state, args=args, evaluate=no_second_pass), history)
    assert after == history[1] and kept["step"] == 2
    assert kept["why"].startswith("checkpoint-2 loaded at the end (step 2 of 4): the highest "
                                  "BEIR_R10_mean_ndcg@10 of 3 evaluations, 0.5000")
    # no best loaded, training ended between evaluations: one evaluation after training
    args.load_best_model_at_end = False
    state.global_step = 5
    after, kept = final_evaluation(SimpleNamespace(state=state, args=args, evaluate=lambda: {key: 0.6}), history)
    assert after == {key: 0.6} and kept == {"step": 5, "why": "the model at the last step 5, evaluated after training"}


def test_the_training_rate_and_eta_leave_out_evaluation_time():
    """The progress bar's clock runs from a step's start to its end only: a pause between steps (an evaluation)
    does not lower the rate or lengthen the ETA."""
    import time
    from types import SimpleNamespace

    from ettin_cli.train.callbacks import make_callbacks

    config = SimpleNamespace(global_batch_size=100, world_size=1, primary_metric="m",
                             evaluation={"benchmark": "beir"})
    progress = make_callbacks(config, SimpleNamespace(tokens=0))[2]
    state = SimpleNamespace(is_world_process_zero=True, max_steps=4, global_step=0)
    progress.on_train_begin(None, state, None)
    bar = progress._bar
    time.sleep(0.2)  # the evaluation before training
    for _ in range(2):
        progress.on_step_begin(None, state, None)
        time.sleep(0.02)  # a training step
        progress.on_step_end(None, state, None)
        time.sleep(0.2)  # an evaluation and a checkpoint
    assert bar.done == 200 and bar.paused >= 0.35  # the last pause is still running
    assert bar.rate() > 2500  # 200 pairs in ~0.04 s of steps; wall clock would give under 400 pairs/s
    assert bar.eta_seconds() < 0.2  # 200 pairs left at the steps' rate, not at the wall-clock one
    progress.on_train_end(None, state, None)


def test_training_reports_the_pairs_cut_at_max_length(trained, scored, tiny_modernbert_path):
    """Counted from tokenized lengths: on every row of a small set, on a seeded sample of a large one."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from ettin_cli.train.data import count_cut_pairs

    tok = AutoTokenizer.from_pretrained(str(tiny_modernbert_path))
    rows = load_pairs([str(scored["dir"])], {"query": "query", "document": "document", "score": None},
                      cache_dir=str(scored["root"] / "cache"))[0]
    lengths = [len(tok(q, d)["input_ids"]) for q, d in zip(rows["query"], rows["document"], strict=True)]
    truncation = trained["record"]["truncation"]
    assert truncation["max_length"] == 64 and truncation["sampled"] is False
    assert truncation["counted"] == truncation["of"] == len(rows)
    assert truncation["cut"] == sum(n > 64 for n in lengths) > 0  # Cranfield abstracts are longer than 64 tokens

    big = Dataset.from_dict({"query": ["q"] * 500, "document": ["short"] * 250 + ["long " * 100] * 250})
    sampled = count_cut_pairs(tok, big, 32, sample=100, seed=1)
    assert sampled["sampled"] and sampled["counted"] == 100 and sampled["of"] == 500
    assert 25 <= sampled["cut"] <= 75  # about half of a random sample
    assert count_cut_pairs(tok, big, 32, sample=100, seed=1) == sampled  # seeded


def test_eval_and_save_cadence_options(capsys, tmp_path, test_recipe, scored, cranfield_dir):
    """--eval-steps / --save-steps: a ratio < 1, a count >= 1, or 0 (only before and after); 1.0 in a recipe is
    once, at the end."""
    code, out, err = run_cli(["train", "--size", "17m", "--print-config", "--eval-steps", "0.1", "--save-steps",
                              "250"], capsys)
    assert code == 0, err
    train = json.loads(out)["training"]
    assert (train["eval_steps"], train["save_steps"]) == (0.1, 250)
    cfg = resolve_config(size="17m", eval_steps="0", save_steps="0", world_size=1, device="cpu")
    kwargs = cfg.trainer_kwargs()
    assert kwargs["eval_strategy"] == kwargs["save_strategy"] == "no" and not kwargs["load_best_model_at_end"]
    assert "eval_steps" not in kwargs and kwargs["eval_on_start"]  # still evaluated before (and after) training
    for bad in ("-1", "2.5", "often"):
        with pytest.raises(EttinError, match="--eval-steps must be a ratio in \\(0, 1\\], a step count >= 1 or 0"):
            resolve_config(size="17m", eval_steps=bad, world_size=1, device="cpu")
    recipe = tmp_path / "once.yaml"
    recipe.write_text(test_recipe.read_text() + "  eval_steps: 1.0\n  save_steps: 1.0\n")
    once = resolve_config(recipe_file=str(recipe), world_size=1, device="cpu")
    assert (once.training["eval_steps"], once.training["save_steps"]) == (0, 0)  # the evaluation after training
    assert resolve_config(recipe_file=str(recipe), max_steps=8, world_size=1, device="cpu").training[
        "eval_steps"] == 8

    out_dir = tmp_path / "run"
    record = run_training(train_request(test_recipe, scored, cranfield_dir, out_dir, max_steps=2, eval_steps="0",
                                        save_steps="0"))
    evals = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))["evaluations"]
    assert [e["step"] for e in evals] == [0] and not list(out_dir.glob("checkpoint-*"))
    assert record["final_model"]["why"] == "the model at the last step 2, evaluated after training"
    assert set(record["metrics"]["after"]) == {"cranfield", "mean"}


SITECUSTOMIZE = '''
import os, traceback
if os.environ.get("COUNT_COLLECTIVES_DIR"):
    import torch.distributed as dist
    _all_reduce = dist.all_reduce
    def all_reduce(*args, **kwargs):
        caller = traceback.extract_stack(limit=2)[0].filename
        with open(os.path.join(os.environ["COUNT_COLLECTIVES_DIR"], f"{os.getpid()}.txt"), "a") as fh:
            fh.write(caller + "\\n")
        return _all_reduce(*args, **kwargs)
    dist.all_reduce = all_reduce
'''


def test_two_process_run_reduces_the_token_count_once_per_logging_step(tiny_modernbert_path, scored, cranfield_dir,
                                                                      tmp_path):
    """Issue #16.3: no per-step host sync or collective for the token meter. 6 steps, a log every 3 steps, no
    periodic checkpoint or evaluation; the release logs the first step too: each rank's ettin code calls all_reduce
    at the 3 logging steps (1, 3 and 6), not at every one of the 6 steps."""
    import signal

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"size: tiny\nmodel:\n  backbone: {tiny_modernbert_path}\n  hidden_size: 32\n  max_length: 64\n"
                      "training:\n  learning_rate: 3.0e-3\n  global_batch_size: 16\n  eval_steps: 0\n  save_steps: 0\n"
                      "  logging_steps: 3\n  dataloader_num_workers: 0\n", encoding="utf-8")
    hooks, counts, out = tmp_path / "hooks", tmp_path / "counts", tmp_path / "out"
    hooks.mkdir()
    counts.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COUNT_COLLECTIVES_DIR": str(counts),
           "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")])}
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "ettin_cli", "-q", "train",
           "--recipe", str(recipe), "--data", str(scored["dir"]), "--output-dir", str(out), "--max-steps", "6",
           "--eval-data", str(cranfield_dir), "--eval-top-k", "5", "--eval-max-queries", "2",
           "--cache-dir", str(scored["root"] / "cache")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun did not finish in 240 s")
    assert proc.returncode == 0, stderr[-3000:]
    record = json.loads((out / "final" / "ettin_training.json").read_text(encoding="utf-8"))
    per_rank = [[line for line in f.read_text().splitlines() if "ettin_cli" in line] for f in counts.glob("*.txt")]
    ettin_calls = [calls for calls in per_rank if calls]
    assert len(ettin_calls) == 2, per_rank  # both workers reduced the count ...
    assert [len(calls) for calls in ettin_calls] == [3, 3]  # ... at the logging steps 1, 3 and 6 only
    assert all(c.endswith("train/callbacks.py") for calls in ettin_calls for c in calls)
    assert record["throughput"]["tokens_seen"] > 0
