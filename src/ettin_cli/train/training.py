"""`ettin train`: pointwise MSE distillation of a teacher's raw logits into an Ettin (ModernBERT) student.

The run is the recipe's (../shared/RECIPE.md, recipes/*.yaml), executed by Sentence Transformers'
`CrossEncoderTrainer` with `MSELoss` on raw teacher scores. This module owns what sits around the trainer:

- **Config resolution** (`resolve_config`): recipe + CLI overrides -> one JSON-able dict (what `--print-config`
  shows, and what an output folder is bound to). Per-device batch = global // world size; with
  `--per-device-batch-size`, gradient accumulation keeps the global batch. Cadence ratios (eval/save every 5%,
  log every 2.5%) go to the trainer as ratios, which it turns into steps once the step count is known.
- **Data** (`load_pairs`): `ettin score` output folders, local parquet/jsonl, dataset folders or Hub ids, loaded
  with `datasets` into memory-mapped Arrow (the 143M-row set is never held in RAM; the cache on disk needs about
  the uncompressed size of the text). The score column is checked with pyarrow compute, chunk by chunk.
- **Evaluation**: online NanoBEIR (Sentence Transformers' `CrossEncoderNanoBEIREvaluator`, 13 sets, BM25
  top-100, positives not forced in) or offline BEIR folders (`--eval-data`: BM25 top-k with bm25s once, rerank
  at every evaluation, NDCG@10 through `evaluation.evaluate_reranker`). Either is the trainer's evaluator, so its
  mean NDCG@10 picks the best checkpoint; it also runs before training (`eval_on_start`) and after.
- **Fault tolerance**: every checkpoint gets a completion record once the trainer has fully written it; a
  rerun (or `--resume`) continues from the newest checkpoint whose record and files check out, moving a
  partial or corrupt one aside. The trainer restores optimizer, scheduler, RNG and the data position, and the
  sampler is seeded, so the data order is the same as in an uninterrupted run.
- **Outputs**: `OUT/final/` (the model, `ettin_training.json`, README.md card), `OUT/metrics.json`,
  `OUT/training_curves.png`, `OUT/checkpoint-*`. `OUT/ettin_run.json` binds the folder to one config.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ettin_cli import __version__
from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from datasets import Dataset

RUN_FILE = "ettin_run.json"
TRAINING_RECORD = "ettin_training.json"
CHECKPOINT_RECORD = "ettin_checkpoint.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# The recipe's precision names -> hardware.resolve_precision's.
_RECIPE_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
                  "fp32": "float32", "float32": "float32"}
# Keys of the resolved config that may change between a run and its resumption (hardware, launch, paths).
_RUNTIME_KEYS = {"output_dir", "world_size", "per_device_batch_size", "gradient_accumulation_steps", "precision",
                 "dataloader_num_workers", "resume", "cache_dir", "recipe_file", "save_initial"}


@dataclass
class TrainRequest:
    """What the user asked for: a size (or recipe file) plus overrides; `None` means "the recipe's value"."""

    size: str | None = None
    recipe_file: str | None = None
    data: list[str] | None = None
    validation_data: list[str] | None = None
    query_column: str | None = None
    document_column: str | None = None
    score_column: str | None = None
    base_model: str | None = None
    output_dir: str | None = None
    max_steps: int | None = None
    learning_rate: float | None = None
    global_batch_size: int | None = None
    per_device_batch_size: int | None = None
    max_length: int | None = None
    eval_data: list[str] | None = None
    eval_top_k: int | None = None
    eval_max_queries: int | None = None
    seed: int | None = None
    dtype: str = "auto"
    attn: str = "auto"
    dataloader_workers: int | None = None
    cache_dir: str | None = None
    resume: bool = False
    save_initial: bool = False


# --------------------------------------------------------------------------------------------- configuration


def _positive(name: str, value: Any, kind: type = int) -> Any:
    if value is None:
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise EttinError(f"{name} must be an integer, got {value!r}")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise EttinError(f"{name} must be a positive number, got {value!r}")
    return value


def _recipe_value(recipe: dict[str, Any], section: str, key: str, where: str) -> Any:
    try:
        return recipe[section][key]
    except (KeyError, TypeError):
        raise EttinError(f"{where}: the recipe has no '{section}.{key}'") from None


def _is_local(source: str) -> bool:
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or source.endswith(
        (".parquet", ".jsonl", ".json"))


def _normalise_source(source: str) -> str:
    """Local paths become absolute (so the run's identity does not depend on the working directory)."""
    return str(Path(source).expanduser().resolve()) if _is_local(source) else source


def primary_metric_name(benchmark: str, top_k: int) -> str:
    """The evaluator's key for mean NDCG@10, as the trainer sees it (without the `eval_` prefix)."""
    prefix = "NanoBEIR" if benchmark == "nanobeir" else "BEIR"
    return f"{prefix}_R{top_k}_mean_ndcg@10"


def resolve_config(req: TrainRequest, *, world_size: int | None = None, device: str | None = None) -> dict[str, Any]:
    """The fully resolved run configuration (JSON-able); loads no model and no data.

    `world_size` defaults to torchrun's `WORLD_SIZE`; `device` to what `hardware.resolve_device` picks here.
    """
    from ettin_cli.core.distributed import current_rank
    from ettin_cli.core.hardware import resolve_device, resolve_precision
    from ettin_cli.core.recipes import load_recipe

    if req.size is None and req.recipe_file is None:
        raise EttinError("give --size (17m, 32m, 68m, 150m, 400m, 1b) or --recipe FILE")
    recipe = load_recipe(req.size, req.recipe_file)
    where = req.recipe_file or f"recipes/{req.size}.yaml"
    size = req.size or recipe.get("size") or Path(req.recipe_file or "custom").stem
    train = recipe.get("training") or {}
    model = recipe.get("model") or {}
    data = recipe.get("data") or {}
    evaluation = recipe.get("evaluation") or {}

    world = world_size if world_size is not None else current_rank().world_size
    if world < 1:
        raise EttinError(f"world size must be at least 1, got {world}")
    lr = _positive("--learning-rate", req.learning_rate if req.learning_rate is not None
                   else _recipe_value(recipe, "training", "learning_rate", where), float)
    global_batch = _positive("--global-batch-size", req.global_batch_size if req.global_batch_size is not None
                             else _recipe_value(recipe, "training", "global_batch_size", where))
    base_accum = int(train.get("gradient_accumulation_steps", 1))
    if req.per_device_batch_size is not None:
        per_device = _positive("--per-device-batch-size", req.per_device_batch_size)
        if global_batch % (per_device * world):
            raise EttinError(f"--per-device-batch-size {per_device} x world size {world} does not divide the "
                             f"global batch {global_batch}: gradient accumulation needs a whole number of steps")
        accum = global_batch // (per_device * world)
    else:
        if global_batch % (world * base_accum):
            raise EttinError(f"global batch {global_batch} is not divisible by world size {world}"
                             + (f" x accumulation {base_accum}" if base_accum > 1 else "")
                             + ": choose --global-batch-size or --per-device-batch-size")
        accum = base_accum
        per_device = global_batch // (world * accum)
    max_steps = _positive("--max-steps", req.max_steps)
    max_length = _positive("--max-length", req.max_length if req.max_length is not None
                           else _recipe_value(recipe, "model", "max_length", where))
    if max_length < 8:
        raise EttinError(f"--max-length must be at least 8 tokens, got {max_length}")
    from ettin_cli.train.losses import resolve_loss
    from ettin_cli.train.student import HEAD_INITS, POOLING_MODES

    for key, allowed in (("pooling", POOLING_MODES), ("head_init", HEAD_INITS)):
        if str(model.get(key, allowed[0])) not in allowed:
            raise EttinError(f"{where}: model.{key} must be one of {', '.join(allowed)}, got {model.get(key)!r}")
    seed = req.seed if req.seed is not None else int(_recipe_value(recipe, "training", "seed", where))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise EttinError(f"--seed must be a non-negative integer, got {seed!r}")

    workers = train.get("dataloader_num_workers", 4)
    if world > 8:
        workers = train.get("dataloader_num_workers_beyond_8_processes", 0)
    if req.dataloader_workers is not None:
        if req.dataloader_workers < 0:
            raise EttinError(f"--dataloader-workers must be >= 0, got {req.dataloader_workers}")
        workers = req.dataloader_workers

    # Precision: the recipe's wish (bf16 + FA2) where the hardware allows it, fp32 + SDPA on CPU.
    device = device or resolve_device("auto")
    wanted_dtype = _RECIPE_DTYPES.get(str(train.get("precision", "bf16")).lower())
    if wanted_dtype is None:
        raise EttinError(f"{where}: training.precision '{train.get('precision')}' is not one of bf16, fp16, fp32")
    wanted_attn = str(train.get("attn_implementation", "flash_attention_2"))
    prec = resolve_precision(device, req.dtype, req.attn)
    if req.dtype == "auto" and prec.dtype != "float32" and wanted_dtype != prec.dtype:
        # The recipe's precision where the hardware runs mixed precision at all (fp32 on a CPU either way).
        prec = resolve_precision(device, wanted_dtype, "sdpa" if wanted_dtype == "float32" and req.attn == "auto"
                                 else req.attn)

    base_model = req.base_model or _recipe_value(recipe, "model", "backbone", where)
    if _is_local(base_model):
        base_model = str(Path(base_model).expanduser().resolve())

    # Data: CLI sources, or the recipe's Hub data set (its train split; its validation split for the eval loss).
    sources = [_normalise_source(s) for s in (req.data or [data.get("dataset")]) if s]
    if not sources:
        raise EttinError(f"{where}: no training data: give --data or set data.dataset in the recipe")
    validation = [_normalise_source(s) for s in req.validation_data] if req.validation_data else None
    columns = {
        "query": req.query_column or data.get("query_column", "query"),
        "document": req.document_column or data.get("document_column", "document"),
        "score": req.score_column or data.get("score_column", "score"),
    }

    top_k = _positive("--eval-top-k", req.eval_top_k if req.eval_top_k is not None else evaluation.get("top_k", 100))
    _positive("--eval-max-queries", req.eval_max_queries)
    if req.eval_data:
        bench = {"benchmark": "beir", "datasets": [_normalise_source(s) for s in req.eval_data]}
    else:
        from ettin_cli.measure.evaluation import NANOBEIR_SETS

        bench = {"benchmark": "nanobeir", "datasets": list(NANOBEIR_SETS)}
    primary = primary_metric_name(bench["benchmark"], top_k)

    cadence = {
        "eval_steps_ratio": float(train.get("eval_steps_ratio", 0.05)),
        "save_steps_ratio": float(train.get("save_steps_ratio", 0.05)),
        "logging_steps_ratio": float(train.get("logging_steps_ratio", 0.025)),
        "logging_first_step": bool(train.get("logging_first_step", True)),
        "save_total_limit": int(train.get("save_total_limit", 5)),
        "load_best_model_at_end": bool(train.get("load_best_model_at_end", True)),
        "metric_for_best_model": f"eval_{primary}",
        "eval_before_training": bool(train.get("eval_before_training", True)),
    }
    for key in ("eval_steps_ratio", "save_steps_ratio", "logging_steps_ratio"):
        if not 0 < cadence[key] < 1:
            raise EttinError(f"{where}: training.{key} must be in (0, 1), got {cadence[key]}")
    if max_steps is not None:
        for key in ("eval", "save", "logging"):
            cadence[f"{key}_steps"] = math.ceil(max_steps * cadence[f"{key}_steps_ratio"])

    return {
        "size": size,
        "recipe_file": str(Path(req.recipe_file).resolve()) if req.recipe_file else None,
        "backbone": base_model,
        "teacher": (recipe.get("teacher") or {}).get("model"),
        "architecture": {k: model[k] for k in ("hidden_size", "num_layers", "parameters") if k in model},
        "max_length": int(max_length),
        "pooling": str(model.get("pooling", "cls")),
        "head_init": str(model.get("head_init", "default")),
        "learning_rate": float(lr),
        "global_batch_size": int(global_batch),
        "world_size": int(world),
        "per_device_batch_size": int(per_device),
        "gradient_accumulation_steps": int(accum),
        "num_train_epochs": int(train.get("num_train_epochs", 1)),
        "max_steps": max_steps,
        "warmup_ratio": float(train.get("warmup_ratio", 0.03)),
        "lr_scheduler_type": str(train.get("lr_scheduler_type", "linear")),
        "loss": resolve_loss(train, where),  # issue #18: training.loss (mse default), see train/losses.py
        "precision": {"device": device, "dtype": prec.dtype, "attn": prec.attn, "unpadded": prec.unpadded,
                      "recipe": f"{str(train.get('precision', 'bf16'))} + {wanted_attn}"},
        "cadence": cadence,
        "seed": int(seed),
        "dataloader_num_workers": int(workers),
        "data": {"train": sources, "validation": validation, "train_split": data.get("train_split", "train"),
                 "eval_split": data.get("eval_split", "validation"), "columns": columns},
        "evaluation": {**bench, "retriever": evaluation.get("retriever", "bm25"), "top_k": int(top_k),
                       "max_queries": req.eval_max_queries, "force_positives": bool(evaluation.get(
                           "force_positives", False)), "metric": "ndcg@10", "primary_metric": primary},
        "output_dir": str(Path(req.output_dir or f"runs/ettin-reranker-{size}").expanduser().resolve()),
        "cache_dir": str(Path(req.cache_dir).resolve()) if req.cache_dir else None,
        "resume": bool(req.resume),
        "save_initial": bool(req.save_initial),
    }


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that defines a run: what must match for a rerun to continue it."""
    return {k: v for k, v in config.items() if k not in _RUNTIME_KEYS}


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {_short(old)} -> {_short(new)}"]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_output_dir(config: dict[str, Any]) -> str:
    """Read-only: "new", "resume" or "done" for this config's output folder; refuse a folder holding another run.

    Nothing is written here, so a run refused later for bad input leaves the folder as it was.
    """
    out = Path(config["output_dir"])
    run_file = out / RUN_FILE
    if run_file.is_file():
        try:
            saved = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise EttinError(f"{run_file}: unreadable run record ({exc}); use another --output-dir") from None
        differences = _diff(saved.get("identity", {}), run_identity(config))
        if differences:
            shown = "; ".join(differences[:3]) + (f" (+{len(differences) - 3} more)" if len(differences) > 3 else "")
            raise EttinError(f"{out} holds a run with a different config ({shown}); use another --output-dir")
        return "done" if (out / "final" / TRAINING_RECORD).is_file() else "resume"
    if config.get("resume"):
        raise EttinError(f"--resume: {out} holds no ettin train run to resume")
    if out.exists() and not out.is_dir():
        raise EttinError(f"{out}: exists and is not a directory; use another --output-dir")
    if out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise EttinError(f"{out} is not empty and holds no ettin train run; use another --output-dir")
    return "new"


def bind_output_dir(config: dict[str, Any]) -> None:
    """Write `OUT/ettin_run.json`, which ties the folder to this run's config (main process, once inputs passed)."""
    run_file = Path(config["output_dir"]) / RUN_FILE
    if not run_file.is_file():
        write_json_atomic(run_file, {"ettin_cli": __version__, "identity": run_identity(config),
                                     "created": time.time()})


# ---------------------------------------------------------------------------------------------- checkpoints


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    found = []
    if out.is_dir():
        for p in out.iterdir():
            m = _CHECKPOINT_RE.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    return sorted(found)


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint `path` cannot be resumed from, or None when it is complete and structurally sound.

    Complete = the completion record written after the trainer finished the checkpoint exists, every file it
    lists has the recorded size, the trainer state names this step, the weights' safetensors headers parse and
    the torch zip archives (optimizer, scheduler, RNG) have their central directory.
    """
    import zipfile

    record_path = path / CHECKPOINT_RECORD
    if not record_path.is_file():
        return "no completion record (interrupted while saving)"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        files = dict(record["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable completion record"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"missing {name}"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} recorded"
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable trainer_state.json"
    step = int(_CHECKPOINT_RE.match(path.name).group(1))
    if state.get("global_step") != step:
        return f"trainer_state.json is at step {state.get('global_step')}, not {step}"
    from safetensors import safe_open

    for name in files:
        f = path / name
        try:
            if name.endswith(".safetensors"):
                with safe_open(str(f), framework="pt") as handle:
                    handle.keys()
            elif name.endswith((".pt", ".pth", ".bin")) and zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as archive:
                    archive.namelist()
            elif name.endswith((".pt", ".pth")):
                return f"{name} is not a torch archive"
        except Exception as exc:  # noqa: BLE001 - any parse failure means the file is corrupt
            return f"{name} is corrupt ({type(exc).__name__})"
    return None


def write_checkpoint_record(path: Path, step: int) -> None:
    """Record a finished checkpoint: its files and sizes (written last, atomically)."""
    files = {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))
             if p.is_file() and p.name != CHECKPOINT_RECORD and not p.name.startswith(".")}
    write_json_atomic(path / CHECKPOINT_RECORD, {"step": step, "files": files, "written": time.time()})


def latest_complete_checkpoint(out: Path, *, move_aside: bool = True) -> Path | None:
    """The newest checkpoint that can be resumed from; newer broken ones are renamed `*.corrupt` (kept, not deleted).

    The rename matters: the trainer would otherwise pick the broken folder as "last checkpoint" and its
    rotation would count it.
    """
    for _step, path in reversed(_checkpoints(out)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning(f"checkpoint {path.name} is not usable: {problem}; falling back to the previous one")
        if move_aside:
            target = path.with_name(f"{path.name}.corrupt")
            n = 1
            while target.exists():
                n += 1
                target = path.with_name(f"{path.name}.corrupt{n}")
            path.rename(target)
            logger.warning(f"moved {path.name} to {target.name} (delete it when you no longer need it)")
    return None


# --------------------------------------------------------------------------------------------------- data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _source_kind(source: str) -> str:
    path = Path(source)
    if path.is_dir():
        from ettin_cli.io import shards

        if shards.is_sharded_output(path):
            shards.read_manifest(path)  # one line when the step that writes this folder has not finished
            return "score-dir"
        if (path / "README.md").is_file() or (path / "dataset_infos.json").is_file():
            return "dataset-dir"
        if any(path.rglob("*.parquet")) or any(path.rglob("*.jsonl")):
            return "files-dir"
        raise EttinError(f"{source}: no parquet or jsonl files, no manifest.json and no dataset card in this folder")
    if path.is_file():
        if path.suffix in (".parquet", ".jsonl", ".json"):
            return "file"
        raise EttinError(f"{source}: unsupported file type '{path.suffix}' (use .parquet, .jsonl or .json)")
    if _is_local(source):
        raise EttinError(f"{source}: no such file or directory")
    return "hub"


def _load_files(files: list[Path], cache_dir: str | None, source: str) -> Dataset:
    from datasets import load_dataset

    kinds = {"parquet" if f.suffix == ".parquet" else "json" for f in files}
    if len(kinds) > 1:
        raise EttinError(f"{source}: mixes parquet and json files; give them as separate --data sources")
    builder = kinds.pop()
    if _all_empty(files, builder):
        raise EttinError(f"{source}: the data is empty (0 rows)")
    try:
        return load_dataset(builder, data_files=[str(f) for f in files], split="train", cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for unreadable input
        raise EttinError(f"{source}: could not read it as {builder} ({_first_line(exc)})") from None


def _all_empty(files: list[Path], builder: str) -> bool:
    """True when no file holds a row (datasets cannot build a data set from empty files, and says so obscurely)."""
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            return all(pq.ParquetFile(f).metadata.num_rows == 0 for f in files)
        except Exception:  # noqa: BLE001 - unreadable files are reported by the loader with their reason
            return False
    return all(not f.read_bytes().strip() for f in files if f.stat().st_size < 1 << 20) and all(
        f.stat().st_size < 1 << 20 for f in files)


def _load_configs(source: str, split: str, cache_dir: str | None, *, required: bool,
                  holdout: str = "validation") -> Dataset | None:
    """All subsets (configs) of a Hub data set or a local dataset folder that have `split`, concatenated.

    The held-out set may be a split of some subsets (`validation` of `quora`) or a subset of its own named like
    the eval split (what `ettin mix` writes): such a subset is never trained on, and is the eval set.
    """
    from datasets import concatenate_datasets, get_dataset_config_names, get_dataset_split_names, load_dataset

    try:
        configs = get_dataset_config_names(source)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo
        raise EttinError(f"{source}: cannot read the data set's subsets ({_first_line(exc)})") from None
    parts = []
    for name in configs:
        try:
            splits = get_dataset_split_names(source, name)
            own_holdout = name == holdout  # a held-out subset: all of it for the eval set, none for training
            wanted = (splits if split == holdout else []) if own_holdout else [s for s in splits if s == split]
            parts += [load_dataset(source, name, split=s, cache_dir=cache_dir) for s in wanted]
        except Exception as exc:  # noqa: BLE001
            raise EttinError(f"{source} subset '{name}': cannot load split '{split}' ({_first_line(exc)})") from None
    if not parts:
        if required:
            raise EttinError(f"{source}: no subset has a '{split}' split")
        return None
    logger.info(f"{source}: {len(parts)} subsets/splits for '{split}'")
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _load_source(source: str, split: str, cache_dir: str | None, *, required: bool = True,
                 holdout: str = "validation") -> Dataset | None:
    kind = _source_kind(source)
    if kind == "score-dir":
        from ettin_cli.io.shards import shard_paths

        files = shard_paths(source)  # in order, each checked against the manifest's size and SHA-256
        if not files:
            raise EttinError(f"{source}: manifest.json lists no shards")
        return _load_files(files, cache_dir, source)
    if kind == "file":
        return _load_files([Path(source)], cache_dir, source)
    if kind == "files-dir":
        files = sorted([*Path(source).rglob("*.parquet"), *Path(source).rglob("*.jsonl")])
        return _load_files(files, cache_dir, source)
    return _load_configs(source, split, cache_dir, required=required, holdout=holdout)


def check_scores(ds: Dataset, source: str, columns: dict[str, str]) -> None:
    """Refuse missing columns, empty data, null texts and non-finite scores (count and first rows).

    Reads the Arrow columns chunk by chunk with pyarrow compute, so the check costs one pass over the score
    column and no copy of the data.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    names = list(ds.column_names)
    for role in ("query", "document", "score"):
        col = columns[role]
        if col not in names:
            option = f"--{role}-column"
            raise EttinError(f"{source}: no '{col}' column (columns: {', '.join(names)}); map it with {option}")
    if len(ds) == 0:
        raise EttinError(f"{source}: the data is empty (0 rows)")
    table = ds.data
    for role in ("query", "document"):
        chunked = table.column(columns[role])
        if chunked.null_count:
            first = _first_indices(chunked, lambda c: c.is_null())
            raise EttinError(f"{source}: column '{columns[role]}' has {chunked.null_count} missing values "
                             f"(first rows: {', '.join(map(str, first))})")
    score = table.column(columns["score"])
    if not (pa.types.is_floating(score.type) or pa.types.is_integer(score.type)):
        raise EttinError(f"{source}: column '{columns['score']}' holds {score.type}, not numbers")
    bad = 0
    if pa.types.is_floating(score.type):
        def is_bad(chunk: pa.Array) -> pa.Array:
            return pc.fill_null(pc.invert(pc.is_finite(chunk)), True)
    else:
        def is_bad(chunk: pa.Array) -> pa.Array:
            return chunk.is_null()
    for chunk in score.chunks:
        bad += pc.sum(is_bad(chunk)).as_py() or 0
    if bad:
        first = _first_indices(score, is_bad)
        raise EttinError(f"{source}: column '{columns['score']}' has {bad} NaN, infinite or missing scores "
                         f"(first rows: {', '.join(map(str, first))})")


def _first_indices(chunked, predicate, limit: int = 5) -> list[int]:
    import pyarrow.compute as pc

    found: list[int] = []
    offset = 0
    for chunk in chunked.chunks:
        if len(found) >= limit:
            break
        hits = pc.indices_nonzero(predicate(chunk)).to_pylist()
        found += [offset + i for i in hits[: limit - len(found)]]
        offset += len(chunk)
    return found


def load_pairs(sources: list[str], columns: dict[str, str], *, split: str = "train", cache_dir: str | None = None,
               required: bool = True, holdout: str = "validation") -> tuple[Dataset | None, list[dict[str, Any]]]:
    """(query, document, label) pairs from every source, concatenated, memory-mapped; plus a per-source summary."""
    from datasets import concatenate_datasets

    parts = []
    summary = []
    for source in sources:
        # The first load of a large source builds its Arrow cache (one pass; `-v` shows datasets' own bars).
        logger.info(f"loading {source} ({split} split; memory-mapped Arrow, cached for reruns)")
        ds = _load_source(source, split, cache_dir, required=required, holdout=holdout)
        if ds is None:
            continue
        check_scores(ds, source, columns)
        ds = ds.select_columns([columns["query"], columns["document"], columns["score"]])
        rename = {columns["query"]: "query", columns["document"]: "document", columns["score"]: "label"}
        ds = ds.rename_columns({k: v for k, v in rename.items() if k != v})
        parts.append(ds)
        kind = _source_kind(source)
        entry = {"source": source, "kind": kind.replace("files-dir", "files"), "rows": len(ds)}
        if kind == "score-dir":
            entry.update(_score_dir_teacher(source))
        summary.append(entry)
    if not parts:
        return None, summary
    if len(parts) > 1:
        first = parts[0].features
        parts = [p if p.features == first else p.cast(first) for p in parts]
        return concatenate_datasets(parts), summary
    return parts[0], summary


def _backbone_type(model: Any) -> str | None:
    """`modernbert` for an Ettin backbone (`bert` for the demo's MiniLM): the model card names it truthfully."""
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    return getattr(config, "model_type", None)


def _score_dir_teacher(source: str, depth: int = 0) -> dict[str, Any]:
    """The teacher a sharded folder's scores come from, from its manifest (Hub id, or the local model given).

    An `ettin select` (or mix) folder carries the scores of the `ettin score` folder it read: its manifest names
    that folder as `input`, which is followed back (a few steps at most).
    """
    from ettin_cli.io.shards import is_finished, read_manifest

    manifest = read_manifest(source)
    config = manifest.get("config") or {}
    teacher = manifest.get("teacher") or config.get("teacher") or (
        f"local model sha256:{config['teacher_sha256'][:12]}" if config.get("teacher_sha256") else None)
    upstream = config.get("input")
    if not teacher and depth < 4 and isinstance(upstream, str) and is_finished(upstream):
        return _score_dir_teacher(upstream, depth + 1)
    fmt = manifest.get("format") or config.get("format")
    return {k: v for k, v in {"teacher": teacher, "teacher_format": fmt}.items() if v}


def data_teacher(summary: list[dict[str, Any]], recipe_teacher: str | None) -> tuple[str | None, str | None]:
    """The teacher behind the training scores: the score folders' own when they all agree, else the recipe's."""
    teachers = {(d.get("teacher"), d.get("teacher_format")) for d in summary if d.get("teacher")}
    if len(teachers) == 1:
        return teachers.pop()
    return recipe_teacher, "mxbai-v2" if recipe_teacher and "mxbai-rerank" in recipe_teacher else None


def cache_bytes(ds: Dataset) -> int:
    """Bytes of the Arrow cache files behind a memory-mapped data set (what the cache disk must hold)."""
    return sum(os.path.getsize(f["filename"]) for f in ds.cache_files if os.path.exists(f["filename"]))


# --------------------------------------------------------------------------------------------- evaluation


def _limit_queries(datasets: list, max_queries: int | None) -> list:
    return [ds.first_queries(max_queries) for ds in datasets]


def make_beir_evaluator(dirs: list[str], *, top_k: int, batch_size: int, max_queries: int | None = None):
    """The offline evaluator: BM25 top-`top_k` computed once, reranked by the model at every evaluation."""
    from sentence_transformers.base.evaluation import BaseEvaluator

    from ettin_cli.measure.evaluation import evaluate_reranker, load_eval_data, retrieve_candidates

    datasets, known = load_eval_data(list(dirs), top_k=top_k)
    datasets = _limit_queries(datasets, max_queries)
    candidates = {**known, **retrieve_candidates([d for d in datasets if d.name not in known], "bm25", top_k)}

    class BeirRerankEvaluator(BaseEvaluator):
        """BEIR folders, BM25 top-k reranked by `model.predict`; mean NDCG@10 is the primary metric.

        `model.predict` goes through Sentence Transformers' distributed inference under DDP, so every rank
        helps score while rank 0 computes the metrics.
        """

        def __init__(self) -> None:
            super().__init__()
            self.name = f"BEIR_R{top_k}"
            self.primary_metric = "mean_ndcg@10"
            self.datasets = datasets
            self.candidates = candidates
            self.last_result: dict[str, Any] | None = None

        def __call__(self, model, output_path: str | None = None, epoch: float = -1, steps: int = -1,
                     *args, **kwargs) -> dict[str, float]:
            def score(queries: list[str], documents: list[str]):
                pairs = list(zip(queries, documents, strict=True))
                return model.predict(pairs, batch_size=batch_size, show_progress_bar=False)

            result = evaluate_reranker(score, self.datasets, top_k, candidates=self.candidates,
                                       description="Evaluating")
            self.last_result = result
            metrics: dict[str, float] = {}
            for name, values in result["datasets"].items():
                metrics[f"{name}_ndcg@10"] = values["ndcg@10"]
                metrics[f"{name}_mrr@10"] = values["mrr@10"]
            for metric, value in result["mean"].items():
                metrics[f"mean_{metric}"] = value
            metrics = self.prefix_name_to_metrics(metrics, self.name)
            self.store_metrics_in_model_card_data(model, metrics, int(epoch or 0), int(steps or 0))
            return metrics

        def get_config_dict(self) -> dict[str, Any]:
            return {"top_k": top_k, "datasets": [d.name for d in self.datasets]}

    return BeirRerankEvaluator()


def make_nanobeir_evaluator(names: list[str], *, top_k: int, batch_size: int):
    """The online evaluator of the recipe: all 13 NanoBEIR sets, BM25 top-k, positives not forced in (Hub data)."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderNanoBEIREvaluator

    try:
        return CrossEncoderNanoBEIREvaluator(dataset_names=list(names), rerank_k=top_k, at_k=10,
                                             always_rerank_positives=False, batch_size=batch_size)
    except Exception as exc:  # noqa: BLE001 - Hub unreachable, missing subsets
        raise EttinError(f"NanoBEIR: cannot load the evaluation sets from the Hub ({_first_line(exc)}); "
                         "evaluate offline with --eval-data DIR (BEIR layout)") from None


def make_evaluator(config: dict[str, Any]):
    ev = config["evaluation"]
    batch = config["per_device_batch_size"]
    if ev["benchmark"] == "beir":
        evaluator = make_beir_evaluator(ev["datasets"], top_k=ev["top_k"], batch_size=batch,
                                        max_queries=ev["max_queries"])
    else:
        evaluator = make_nanobeir_evaluator(ev["datasets"], top_k=ev["top_k"], batch_size=batch)
    if evaluator_metric_key(evaluator) != ev["primary_metric"]:  # a bug, not a user error
        raise RuntimeError(f"evaluator metric {evaluator_metric_key(evaluator)} != configured {ev['primary_metric']}")
    return evaluator


def evaluator_metric_key(evaluator) -> str:
    """The key under which `evaluator` reports its primary metric (Sentence Transformers prefixes it lazily)."""
    name, primary = evaluator.name, evaluator.primary_metric
    return primary if primary.startswith(f"{name}_") else f"{name}_{primary}"


def _metric_table(metrics: dict[str, float], primary: str) -> dict[str, float]:
    """`{dataset: ndcg@10, ..., "mean": ...}` from an evaluation's metrics (either evaluator's key layout)."""
    prefix = primary[: -len("mean_ndcg@10")]
    table = {}
    for key, value in metrics.items():
        key = key.removeprefix("eval_")
        if not key.endswith("ndcg@10") or "base_" in key:
            continue
        if key == primary:
            table["mean"] = float(value)
        elif key.startswith(prefix):
            table[key[len(prefix):-len("_ndcg@10")]] = float(value)
        elif key.startswith("Nano") and "_R" in key:
            table[key.split("_R", 1)[0]] = float(value)
    return table


# ------------------------------------------------------------------------------------------- trainer glue


class TokenMeter:
    """Counts the tokens the student reads in training forward passes (packed or padded), via a pre-hook.

    The collator hands raw text to the loss, which tokenizes; so the trainer cannot count tokens itself.
    """

    def __init__(self, model) -> None:
        self.tokens = 0
        self.max_rows = 0
        self._model = model
        self._handle = model[0].register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        if not module.training or not args:
            return
        features = args[0]
        if "cu_seq_lens_q" in features:
            self.tokens += int(features["input_ids"].numel())
            rows = int(features["cu_seq_lens_q"].numel()) - 1
        elif "attention_mask" in features:
            self.tokens += int(features["attention_mask"].sum().item())
            rows = int(features["attention_mask"].shape[0])
        else:
            return
        self.max_rows = max(self.max_rows, rows)

    def close(self) -> None:
        self._handle.remove()


def _callbacks(config: dict[str, Any], meter: TokenMeter):
    from transformers import TrainerCallback

    global_batch = config["global_batch_size"]
    world = config["world_size"]

    class CheckpointRecord(TrainerCallback):
        """Marks a checkpoint complete once the trainer has written every file of it (rank 0)."""

        def on_save(self, args, state, control, **kwargs):
            # Every rank writes its own RNG state into the checkpoint: wait for all before declaring it complete.
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            if state.is_world_process_zero:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if path.is_dir():
                    write_checkpoint_record(path, state.global_step)

    class Throughput(TrainerCallback):
        """Tokens seen (kept in the trainer state, so it survives a resume) and training rates in the logs.

        Rates count training steps only: the clock restarts after every evaluation, checkpoint and log, so an
        interval's pairs/s and tokens/s are the model's, not diluted by evaluation time.
        """

        def __init__(self) -> None:
            self.base_tokens = 0
            self.clock = 0.0
            self.busy = 0.0
            self.last: tuple[float, int, int] | None = None

        def _restart(self, *args, **kwargs):
            self.clock = time.perf_counter()

        on_evaluate = on_save = _restart

        def on_train_begin(self, args, state, control, **kwargs):
            self.base_tokens = int(state.num_input_tokens_seen or 0)
            self.busy = 0.0
            self.last = (0.0, state.global_step, self.base_tokens)
            self._restart()

        def on_step_end(self, args, state, control, **kwargs):
            self.busy += time.perf_counter() - self.clock
            local = meter.tokens
            if world > 1:
                import torch
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    t = torch.tensor([local], dtype=torch.long, device=args.device)
                    dist.all_reduce(t)
                    local = int(t.item())
            state.num_input_tokens_seen = self.base_tokens + local
            self._restart()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and self.last is not None and state.log_history:
                busy0, step0, tok0 = self.last
                entry = state.log_history[-1]
                dt = max(self.busy - busy0, 1e-9)
                entry["samples_per_second"] = round((state.global_step - step0) * global_batch / dt, 3)
                entry["tokens_per_second"] = round((state.num_input_tokens_seen - tok0) / dt, 1)
                entry["tokens_seen"] = int(state.num_input_tokens_seen)
                self.last = (self.busy, state.global_step, int(state.num_input_tokens_seen))
            self._restart()

    class Progress(TrainerCallback):
        """A console.progress bar in pairs (rate, ETA) and one log line per logging step, on rank 0."""

        def __init__(self) -> None:
            self._cm = None
            self._bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            from ettin_cli.core.console import progress

            remaining = max(state.max_steps - state.global_step, 0) * global_batch
            self._cm = progress(remaining, "training", unit="pairs")
            self._bar = self._cm.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self._bar is not None:
                self._bar.advance(global_batch)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs:
                logger.info(f"step {state.global_step}/{state.max_steps}: loss {logs['loss']:.4f}, "
                            f"lr {logs.get('learning_rate', 0):.3g}")
            primary = f"eval_{config['evaluation']['primary_metric']}"
            if primary in logs:
                logger.info(f"step {state.global_step}: {config['evaluation']['benchmark']} mean NDCG@10 "
                            f"{logs[primary]:.4f}" + (f", eval loss {logs['eval_loss']:.4f}"
                                                      if "eval_loss" in logs else ""))

        def on_train_end(self, args, state, control, **kwargs):
            if self._cm is not None:
                self._cm.__exit__(None, None, None)
                self._cm = self._bar = None

    return [CheckpointRecord(), Throughput(), Progress()]


def training_arguments(config: dict[str, Any], *, eval_on_start: bool) -> dict[str, Any]:
    """The recipe as `CrossEncoderTrainingArguments` keywords (cadences stay ratios; the trainer makes them steps)."""
    cad = config["cadence"]
    prec = config["precision"]
    on_cpu = not prec["device"].startswith("cuda")
    return dict(
        output_dir=config["output_dir"],
        num_train_epochs=config["num_train_epochs"],
        max_steps=config["max_steps"] or -1,
        per_device_train_batch_size=config["per_device_batch_size"],
        per_device_eval_batch_size=config["per_device_batch_size"],
        gradient_accumulation_steps=config["gradient_accumulation_steps"],
        learning_rate=config["learning_rate"],
        warmup_steps=config["warmup_ratio"],  # < 1: a ratio of the total steps
        lr_scheduler_type=config["lr_scheduler_type"],
        seed=config["seed"],
        bf16=prec["dtype"] == "bfloat16",
        fp16=prec["dtype"] == "float16",
        eval_strategy="steps",
        eval_steps=cad["eval_steps_ratio"],
        eval_on_start=eval_on_start,
        save_strategy="steps",
        save_steps=cad["save_steps_ratio"],
        save_total_limit=cad["save_total_limit"],
        logging_strategy="steps",
        logging_steps=cad["logging_steps_ratio"],
        logging_first_step=cad["logging_first_step"],
        load_best_model_at_end=cad["load_best_model_at_end"],
        metric_for_best_model=cad["metric_for_best_model"],
        greater_is_better=True,
        dataloader_num_workers=config["dataloader_num_workers"],
        report_to="none",
        disable_tqdm=True,
        use_cpu=on_cpu,
        ddp_backend="gloo" if on_cpu and config["world_size"] > 1 else None,
        ddp_find_unused_parameters=False,
        run_name=f"ettin-reranker-{config['size']}",
    )


def _trainer_class():
    """`CrossEncoderTrainer` that saves on the saving process only and evaluates under mixed precision.

    transformers 5 calls `_save` on every rank and leaves the "should this rank write" test to it; Sentence
    Transformers 6.2's override drops that test, so under torchrun every rank would write the same checkpoint
    files at once. The guard restores the transformers behaviour.
    """
    from sentence_transformers.cross_encoder import CrossEncoderTrainer

    class EttinTrainer(CrossEncoderTrainer):
        def _save(self, output_dir: str | None = None, state_dict=None) -> None:
            if not self.args.should_save:
                return
            super()._save(output_dir, state_dict)

        def evaluate(self, *args, **kwargs):
            # The evaluators call `model.predict` outside the trainer's autocast. With fp32 master weights,
            # Flash Attention would then get fp32 inputs (which it rejects) and bf16 training would be evaluated
            # in fp32: run the whole evaluation under the run's mixed precision (a no-op in fp32).
            with self.accelerator.autocast():
                return super().evaluate(*args, **kwargs)

    return EttinTrainer


def save_model_atomic(model: Any, path: Path) -> None:
    """Save a model folder under a temporary name and rename it into place: no half-written folder."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save(str(tmp))
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _training_args(config: dict[str, Any], *, eval_on_start: bool):
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

    return CrossEncoderTrainingArguments(**training_arguments(config, eval_on_start=eval_on_start))


# ----------------------------------------------------------------------------------------------------- run


def run_training(config: dict[str, Any], *, callbacks: list | None = None) -> dict[str, Any]:
    """Train (or continue training) the run described by `config`; return the training record.

    `callbacks` are extra `transformers.TrainerCallback`s (tests use one to interrupt a run).
    """
    import torch
    from transformers import PrinterCallback, ProgressCallback

    from ettin_cli.core.distributed import current_rank
    from ettin_cli.core.hardware import Precision
    from ettin_cli.train.losses import prepare_loss
    from ettin_cli.train.student import build_student, check_unpadding, count_parameters, init_head

    rank = current_rank()
    if rank.world_size != config["world_size"]:
        raise EttinError(f"the config was resolved for world size {config['world_size']}, "
                         f"but this launch has {rank.world_size} processes")
    out = Path(config["output_dir"])
    state = check_output_dir(config)
    if state == "done":
        record = json.loads((out / "final" / TRAINING_RECORD).read_text(encoding="utf-8"))
        logger.info(f"{out}: this run is already complete (final model in {out / 'final'}); nothing to do")
        return record
    args = _training_args(config, eval_on_start=False)  # initialises torch.distributed under torchrun

    # Inputs are loaded and checked before anything is written, so bad input leaves the folder untouched.
    data_cfg = config["data"]
    with args.main_process_first(desc="loading data"):
        train_ds, train_summary = load_pairs(data_cfg["train"], data_cfg["columns"], split=data_cfg["train_split"],
                                             cache_dir=config["cache_dir"], holdout=data_cfg["eval_split"])
        eval_sources = data_cfg["validation"] or [s for s in data_cfg["train"]
                                                  if _source_kind(s) in ("hub", "dataset-dir")]
        eval_ds, eval_summary = (None, [])
        if eval_sources:
            eval_ds, eval_summary = load_pairs(eval_sources, data_cfg["columns"], split=data_cfg["eval_split"],
                                               cache_dir=config["cache_dir"], holdout=data_cfg["eval_split"],
                                               required=bool(data_cfg["validation"]))
    assert train_ds is not None
    logger.info(f"training pairs: {len(train_ds):,} (Arrow cache on disk: {cache_bytes(train_ds) / 1e9:.2f} GB)"
                + (f"; eval-loss pairs: {len(eval_ds):,}" if eval_ds is not None else ""))

    prec = Precision(config["precision"]["dtype"], config["precision"]["attn"])
    model = build_student(config["backbone"], max_length=config["max_length"], precision=prec, seed=config["seed"],
                          device="cpu", for_training=True, pooling=config.get("pooling", "cls"))
    head_start = None
    if config.get("head_init", "default") != "default":
        targets = train_ds.with_format("numpy")["label"]  # one column, read once (memory-mapped)
        head_start = init_head(model, config["head_init"], targets, seed=config["seed"])
    if head_start:
        logger.info(f"head: output bias at the targets' mean {head_start['bias']:.4g} "
                    f"(targets' std {head_start['targets_std']:.4g}), small output weights")
    check_unpadding(model, prec)
    if config["precision"]["recipe"].endswith("flash_attention_2") and not prec.unpadded \
            and config["precision"]["device"].startswith("cuda"):
        logger.warning("!!! the recipe trains with bf16 + Flash Attention 2 on unpadded inputs, but this GPU run "
                       f"uses {prec.dtype} + {prec.attn}: expect a several-fold slower run (see `ettin env`) !!!")
    evaluator = make_evaluator(config)

    # The global main process binds the folder and moves broken checkpoints aside before the others look.
    with args.main_process_first(local=False, desc="output folder"):
        if args.process_index == 0:
            bind_output_dir(config)
        resume_from = latest_complete_checkpoint(out, move_aside=args.process_index == 0)
        if config.get("save_initial") and args.process_index == 0 and not (out / "initial").exists():
            # The untrained student (same seed, same head init): the "before" line of an `ettin eval` table.
            save_model_atomic(model, out / "initial")
    if config.get("resume") and resume_from is None:
        logger.warning(f"--resume: no complete checkpoint in {out}; starting from the beginning")
    args.eval_on_start = bool(config["cadence"]["eval_before_training"] and resume_from is None)
    if resume_from is not None:
        logger.info(f"resuming from {resume_from.name}")
    meter = TokenMeter(model)

    loss, train_ds, eval_ds = prepare_loss(config.get("loss", "mse"), model, train_ds, eval_ds, args)  # issue #18
    trainer = _trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                               loss=loss, evaluator=evaluator,
                               callbacks=[*_callbacks(config, meter), *(callbacks or [])])
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)

    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    history = list(trainer.state.log_history)
    best_step = _best_step(trainer.state)
    after = trainer.evaluate()
    meter.close()

    primary = config["evaluation"]["primary_metric"]
    teacher, teacher_format = data_teacher(train_summary, config["teacher"])
    before = next((h for h in history if h.get("step") == 0 and f"eval_{primary}" in h), None)
    record = {
        "format": "ettin-training/1",
        "ettin_cli": __version__,
        "size": config["size"],
        "base_model": config["backbone"],
        "backbone_type": _backbone_type(model),
        "teacher": teacher,
        "teacher_format": teacher_format,
        "data": train_summary,
        "validation_data": eval_summary,
        "train_rows": len(train_ds),
        "parameters": count_parameters(model),
        "max_length": config["max_length"],
        "hyperparameters": {
            "learning_rate": config["learning_rate"],
            "global_batch_size": config["global_batch_size"],
            "per_device_batch_size": config["per_device_batch_size"],
            "world_size": config["world_size"],
            "gradient_accumulation_steps": config["gradient_accumulation_steps"],
            "num_train_epochs": config["num_train_epochs"],
            "max_steps": config["max_steps"],
            "total_steps": int(trainer.state.max_steps),
            "warmup_ratio": config["warmup_ratio"],
            "lr_scheduler_type": config["lr_scheduler_type"],
            "seed": config["seed"],
            "precision": f"{prec.dtype} + {prec.attn}" + (" (unpadded)" if prec.unpadded else ""),
            "max_length": config["max_length"],
            "loss": config.get("loss", "mse"),  # issue #18
            "pooling": config.get("pooling", "cls"),
            "head_init": config.get("head_init", "default"),
        },
        "evaluation": {"benchmark": "NanoBEIR" if config["evaluation"]["benchmark"] == "nanobeir" else "BEIR",
                       "datasets": [Path(d).name for d in config["evaluation"]["datasets"]],
                       "retriever": "BM25", "top_k": config["evaluation"]["top_k"], "metric": "NDCG@10",
                       "max_queries": config["evaluation"]["max_queries"]},
        "metrics": {"before": _metric_table(before, primary) if before else {},
                    "after": _metric_table(after, primary), "best_step": best_step,
                    "after_eval_loss": after.get("eval_loss")},
        "throughput": {**{f"train_{k}": v for k, v in _training_rates(history, config["global_batch_size"]).items()},
                       "wall_samples_per_second": result.metrics.get("train_samples_per_second"),
                       "train_runtime_seconds": result.metrics.get("train_runtime"),
                       "tokens_seen": int(trainer.state.num_input_tokens_seen or 0)},
        "observed_per_device_batch": meter.max_rows,
        "resumed_from": resume_from.name if resume_from else None,
        "config": run_identity(config),
    }

    if rank.is_main:
        final_tmp = out / ".final.tmp"
        if final_tmp.exists():
            shutil.rmtree(final_tmp)
        trainer.save_model(str(final_tmp))
        _write_outputs(out, final_tmp, record, history, after, primary)
    if args.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def _best_step(state) -> int | None:
    path = getattr(state, "best_model_checkpoint", None)
    if path:
        m = _CHECKPOINT_RE.match(Path(path).name)
        if m:
            return int(m.group(1))
    return getattr(state, "best_global_step", None)


def _training_rates(history: list[dict[str, Any]], global_batch: int) -> dict[str, float | None]:
    """Pairs/s and tokens/s over the training steps alone (each logged interval weighted by its duration)."""
    seconds = pairs = tokens = 0.0
    prev_step, prev_tokens = 0, 0
    for h in history:
        if "samples_per_second" not in h:
            continue
        n_pairs = (h["step"] - prev_step) * global_batch
        if h["samples_per_second"] > 0 and n_pairs > 0:
            dt = n_pairs / h["samples_per_second"]
            seconds += dt
            pairs += n_pairs
            tokens += h["tokens_seen"] - prev_tokens
        prev_step, prev_tokens = h["step"], h["tokens_seen"]
    if seconds <= 0:
        return {"pairs_per_second": None, "tokens_per_second": None}
    return {"pairs_per_second": round(pairs / seconds, 3), "tokens_per_second": round(tokens / seconds, 1)}


def _write_outputs(out: Path, final_tmp: Path, record: dict[str, Any], history: list[dict[str, Any]],
                   after: dict[str, Any], primary: str) -> None:
    from ettin_cli.publish.model_card import render_model_card

    write_json_atomic(final_tmp / TRAINING_RECORD, record)
    write_text_atomic(final_tmp / "README.md", render_model_card(record))
    final = out / "final"
    if final.exists():
        shutil.rmtree(final)  # a leftover from a crash between these two lines; the run rewrites it whole
    final_tmp.rename(final)

    losses = [{k: h[k] for k in ("step", "epoch", "loss", "learning_rate", "grad_norm", "samples_per_second",
                                 "tokens_per_second", "tokens_seen") if k in h} for h in history if "loss" in h]
    evals = [{k: v for k, v in h.items() if k.startswith("eval_") or k in ("step", "epoch")}
             for h in history if any(k.startswith("eval_") for k in h)]
    summary = next((h for h in history if "train_runtime" in h), {})
    metrics = {
        "primary_metric": f"eval_{primary}",
        "loss_curve": losses,
        "evaluations": evals,
        "final_evaluation": after,
        "before": record["metrics"]["before"],
        "after": record["metrics"]["after"],
        "best_step": record["metrics"]["best_step"],
        "train": {**summary, **record["throughput"]},
        "observed_per_device_batch": record["observed_per_device_batch"],
        "resumed_from": record["resumed_from"],
    }
    write_json_atomic(out / METRICS_FILE, metrics)
    plot_curves(out / CURVES_FILE, losses, evals, f"eval_{primary}")
    logger.info(f"final model: {final}")
    if record["metrics"]["before"].get("mean") is not None and record["metrics"]["after"].get("mean") is not None:
        logger.info(f"mean NDCG@10: {record['metrics']['before']['mean']:.4f} before -> "
                    f"{record['metrics']['after']['mean']:.4f} after training")


def plot_curves(path: Path, losses: list[dict[str, Any]], evals: list[dict[str, Any]], primary: str) -> None:
    """Training loss (and eval loss) and the eval metric over steps, as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ettin_cli.core.files import atomic_path

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([e["step"] for e in losses], [e["loss"] for e in losses], label="train loss (MSE)")
    eval_losses = [(e["step"], e["eval_loss"]) for e in evals if "eval_loss" in e]
    if eval_losses:
        ax_loss.plot(*zip(*eval_losses, strict=True), marker="o", label="eval loss (MSE)")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("MSE to teacher")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_loss.set_title("loss")
    points = [(e["step"], e[primary]) for e in evals if primary in e]
    if points:
        ax_metric.plot(*zip(*points, strict=True), marker="o")
    ax_metric.set_xlabel("step")
    ax_metric.set_ylabel("mean NDCG@10")
    ax_metric.set_title(primary.removeprefix("eval_"))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
