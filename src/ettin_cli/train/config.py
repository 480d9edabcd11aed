"""The one training config: `TrainConfig`, resolved from a recipe plus command-line overrides.

The same object is what `--print-config` prints, what `OUT/ettin_run.json` binds an output folder to, what the
trainer's arguments are built from, and what the training record stores (`to_dict()` / `from_dict()` are
symmetric, so a config read back from any of those places is the config that ran).

The recipe's `training:` keys are `CrossEncoderTrainingArguments` field names and pass through unchanged
(`learning_rate`, `warmup_steps`, `eval_steps`, `optim`, ...): a misspelt one is refused when the arguments are
built, before any data is read. The few keys that are not trainer fields are ettin's own and listed in
`ETTIN_TRAINING_KEYS`; each is validated here. YAML reads `1e-4` (no dot) as a string: numeric strings are
coerced to numbers. Per-device batch = global // world size; with `--per-device-batch-size`, gradient
accumulation keeps the global batch. Cadences below 1 are ratios of the total steps (the trainer makes them
steps); with `--max-steps` they are turned into step counts here, so the printed config shows them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ettin_cli.core.distributed import current_rank
from ettin_cli.core.errors import EttinError
from ettin_cli.core.hardware import resolve_device, resolve_precision
from ettin_cli.core.recipes import load_recipe
from ettin_cli.core.sources import resolve_source
from ettin_cli.io import kinds
from ettin_cli.measure.eval_data import NANOBEIR_SETS
from ettin_cli.train.data import parse_data_sources
from ettin_cli.train.losses import resolve_loss
from ettin_cli.train.student import HEAD_ACTIVATIONS, HEAD_CHOICES, HEAD_INITS, POOLING_MODES

# The recipe's precision names -> hardware.resolve_precision's.
_RECIPE_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
                  "fp32": "float32", "float32": "float32"}
# `training:` keys that are not CrossEncoderTrainingArguments fields: each drives code in ettin and is validated.
ETTIN_TRAINING_KEYS = {
    "global_batch_size": "pairs per optimizer step over all processes",
    "precision": "bf16, fp16 or fp32 where the hardware allows it",
    "attn_implementation": "the attention the recipe asks for (flash_attention_2 with unpadded inputs)",
    "dataloader_num_workers_beyond_8_processes": "data loader workers when more than 8 processes train",
    "loss": "mse, listnet or mse+listnet (train/losses.py)",
    "list_size": "candidates per query list of a listwise loss",
    "listwise_temperature": "score temperature of the ListNet term",
}
# Trainer fields that depend on the machine or the launch, not on what is trained: a rerun may change them.
_RUNTIME_TRAINING = {"per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "dataloader_num_workers"}
_RUNTIME_KEYS = {"output_dir", "world_size", "precision", "resume", "cache_dir", "recipe_file", "save_initial"}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_CADENCES = ("eval_steps", "save_steps", "logging_steps")


def coerce_number(value: Any) -> Any:
    """`"1e-4"` -> 1e-4 and `"100"` -> 100 (YAML 1.1 reads exponent floats without a dot as strings)."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    return value


def primary_metric_name(benchmark: str, top_k: int) -> str:
    """The evaluator's key for mean NDCG@10, as the trainer sees it (without the `eval_` prefix)."""
    prefix = "NanoBEIR" if benchmark == "nanobeir" else "BEIR"
    return f"{prefix}_R{top_k}_mean_ndcg@10"


@dataclass
class TrainConfig:
    """Everything a training run is: the recipe resolved against the command line and this machine."""

    size: str
    backbone: str
    training: dict[str, Any]          # CrossEncoderTrainingArguments keywords, as the recipe names them
    global_batch_size: int
    world_size: int
    max_length: int | str | None      # None: the backbone's maximum; "auto": fitted to the training pairs
    precision: dict[str, Any]
    data: dict[str, Any]
    evaluation: dict[str, Any]
    output_dir: str
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "mse"})
    pooling: str = "cls"
    head_init: str = "default"
    head: str = "auto"                # keep a cross-encoder base's own head (auto, keep) or build a new one (new)
    head_activation: str = "refuse"   # a kept head's non-identity activation: refuse, or replace with identity
    max_length_cap: int | None = None  # with max_length "auto": --max-length, the most it may pick
    teacher: str | None = None
    architecture: dict[str, Any] = field(default_factory=dict)
    recipe_file: str | None = None
    cache_dir: str | None = None
    resume: bool = False
    save_initial: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; `from_dict(to_dict())` gives the same config back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config written by `to_dict` (in `ettin_run.json` or a training record); unknown keys refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise EttinError(f"not an ettin train config (unknown keys: {', '.join(unknown)})")
        return cls(**data)

    def identity(self) -> dict[str, Any]:
        """What must match for a rerun to continue this run (hardware, launch and paths may change)."""
        out = {k: v for k, v in self.to_dict().items() if k not in _RUNTIME_KEYS}
        out["training"] = {k: v for k, v in self.training.items() if k not in _RUNTIME_TRAINING}
        return out

    @property
    def primary_metric(self) -> str:
        return self.evaluation["primary_metric"]

    @property
    def per_device_batch_size(self) -> int:
        return int(self.training["per_device_train_batch_size"])

    def trainer_kwargs(self, *, eval_on_start: bool | None = None) -> dict[str, Any]:
        """`CrossEncoderTrainingArguments` keywords: the recipe's `training` fields plus what this launch implies."""
        on_cpu = not self.precision["device"].startswith("cuda")
        kwargs = {k: v for k, v in self.training.items() if k not in ETTIN_TRAINING_KEYS}
        kwargs.update(
            output_dir=self.output_dir,
            bf16=self.precision["dtype"] == "bfloat16",
            fp16=self.precision["dtype"] == "float16",
            use_cpu=on_cpu,
            ddp_backend="gloo" if on_cpu and self.world_size > 1 else None,
            report_to="none",
            disable_tqdm=True,
        )
        for key, value in (("eval_strategy", "steps"), ("save_strategy", "steps"), ("logging_strategy", "steps"),
                           ("ddp_find_unused_parameters", False), ("run_name", f"ettin-reranker-{self.size}")):
            kwargs.setdefault(key, value)
        for key in _CADENCES:  # 0: no periodic evaluation or checkpoint, only before and after training
            if kwargs.get(key) == 0:
                kwargs.pop(key)
                kwargs[key.replace("_steps", "_strategy")] = "no"
        if kwargs.get("eval_strategy") == "no" or kwargs.get("save_strategy") == "no":
            kwargs["load_best_model_at_end"] = False  # nothing to choose from
        if eval_on_start is not None:
            kwargs["eval_on_start"] = eval_on_start
        return kwargs

    def trainer_arguments(self, *, eval_on_start: bool | None = None):
        """The trainer's arguments; a `training:` key that is no trainer field is refused here, in one line."""
        from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

        try:
            return CrossEncoderTrainingArguments(**self.trainer_kwargs(eval_on_start=eval_on_start))
        except TypeError as exc:
            m = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            if not m:
                raise
            raise EttinError(f"training.{m.group(1)}: not a CrossEncoderTrainingArguments field, nor one of "
                             f"ettin's ({', '.join(ETTIN_TRAINING_KEYS)})") from None
        except ValueError as exc:
            raise EttinError(f"training: {str(exc).strip().splitlines()[0]}") from None


# --------------------------------------------------------------------------------------------- resolution


def _positive(name: str, value: Any, kind: type = int) -> Any:
    value = coerce_number(value)
    if value is None:
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise EttinError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise EttinError(f"{name} must be a positive number, got {value!r}")
    return value


def _required(section: dict[str, Any], name: str, key: str, where: str) -> Any:
    if key not in section:
        raise EttinError(f"{where}: the recipe has no '{name}.{key}'")
    return section[key]


def _source(value: str, option: str, repo_type: str, pairs: frozenset[str] = frozenset({kinds.SCORED})) -> str:
    """A local path (made absolute, so the run's identity does not depend on the working directory) or a Hub id.

    A value that can only be a path and does not exist is refused at once ("no such file or folder"); the Hub
    is not asked here (`--print-config` loads nothing), but when the data or model is read.
    """

    hint = "--data DIR (a local copy)" if repo_type == "dataset" else f"{option} DIR (a local copy)"
    src = resolve_source(value, option=option, offline_hint=hint, repo_type=repo_type, check_hub=False)
    if src.is_local and repo_type == "dataset":  # a collection, a mined folder or a model is named as such
        kinds.require_kind(src.path, kinds.SCORED, option, accepted=pairs)
    return str(src.path.resolve()) if src.is_local else value


def backbone_shape(backbone: str, model: dict[str, Any], recipe_backbone: str | None) -> dict[str, Any]:
    """The shape of the student to be built, without loading it: the backbone's own config.json when it is a
    local folder, the recipe's facts when it is the recipe's backbone, else "read at load time".

    `max_length` is what the student keeps without `--max-length`: Sentence Transformers' rule, the smaller of
    the tokenizer's `model_max_length` and the config's `max_position_embeddings`.
    """
    import json

    rule = "min(tokenizer model_max_length, config max_position_embeddings)"
    path = Path(backbone)
    if path.is_dir():
        try:
            cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
            tok = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8")) \
                if (path / "tokenizer_config.json").is_file() else {}
        except (OSError, ValueError):
            return {"source": f"{backbone} (read at load time)", "max_length": f"{rule}, read at load time"}
        positions = cfg.get("max_position_embeddings")
        limits = [v for v in (positions, tok.get("model_max_length")) if isinstance(v, int) and v > 0]
        return {"source": f"{backbone}/config.json", "model_type": cfg.get("model_type"),
                "hidden_size": cfg.get("hidden_size"), "num_layers": cfg.get("num_hidden_layers"),
                "max_position_embeddings": positions, "max_length": min(limits) if limits else rule}
    if backbone == recipe_backbone and model.get("hidden_size"):
        shape = {"source": "the recipe's backbone facts (recipes/*.yaml)"}
        shape.update({k: model[k] for k in ("hidden_size", "num_layers", "parameters", "max_position_embeddings")
                      if k in model})
        shape["max_length"] = model.get("max_position_embeddings", f"{rule}, read at load time")
        return shape
    return {"source": f"{backbone} (read at load time)", "max_length": f"{rule}, read at load time"}


def cadence(value: Any, name: str, where: str) -> float | int:
    """A cadence: a ratio of the total steps (0 < r <= 1), a step count (an integer >= 1) or 0 (no periodic one:
    only before and after training).

    `1.0` is a ratio (once, at the end); `1` is every step.
    """
    value = coerce_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise EttinError(f"{where}: {name} must be a ratio in (0, 1], a step count >= 1 or 0, got {value!r}")
    if isinstance(value, float) and value > 1:
        if not value.is_integer():
            raise EttinError(f"{where}: {name} must be a ratio in (0, 1], a step count >= 1 or 0, got {value!r}")
        return int(value)
    if isinstance(value, float) and value == 0:
        return 0
    return value


def resolve_config(size: str | None = None, recipe_file: str | None = None, *, world_size: int | None = None,
                   device: str | None = None, dtype: str = "auto", attn: str = "auto",
                   **overrides: Any) -> TrainConfig:
    """The run's config from the recipe and the command line (`None` overrides mean "the recipe's"); loads nothing.

    `overrides` are the `ettin train` options by name (`learning_rate=`, `data=`, `max_steps=`, ...).
    `world_size` defaults to torchrun's `WORLD_SIZE`; `device` to what `hardware.resolve_device` picks here.
    """

    known = {"data", "validation_data", "query_column", "document_column", "score_column", "base_model",
             "output_dir", "max_steps", "learning_rate", "global_batch_size", "per_device_batch_size", "max_length",
             "eval_data", "eval_split", "eval_top_k", "eval_max_queries", "seed", "dataloader_workers", "cache_dir",
             "resume",
             "save_initial", "eval_steps", "save_steps"}
    if set(overrides) - known:
        raise TypeError(f"unknown overrides: {sorted(set(overrides) - known)}")
    opt = {k: v for k, v in overrides.items() if v is not None}
    if size is None and recipe_file is None:
        raise EttinError("give --size (17m, 32m, 68m, 150m, 400m, 1b) or --recipe FILE")
    recipe = load_recipe(size, recipe_file)
    where = recipe_file or f"recipes/{size}.yaml"
    name = size or recipe.get("size") or Path(recipe_file or "custom").stem
    model = recipe.get("model") or {}
    data = recipe.get("data") or {}
    evaluation = recipe.get("evaluation") or {}
    raw = {k: coerce_number(v) for k, v in (recipe.get("training") or {}).items()}

    world = world_size if world_size is not None else current_rank().world_size
    if world < 1:
        raise EttinError(f"world size must be at least 1, got {world}")
    ettin = {k: raw.pop(k) for k in list(raw) if k in ETTIN_TRAINING_KEYS}
    training = dict(raw)  # the trainer's own fields, unchanged
    training["learning_rate"] = float(_positive("--learning-rate", opt.get(
        "learning_rate", _required(training, "training", "learning_rate", where)), float))
    global_batch = _positive("--global-batch-size", opt.get(
        "global_batch_size", _required(ettin, "training", "global_batch_size", where)))
    accum = _positive("training.gradient_accumulation_steps", training.get("gradient_accumulation_steps", 1))
    if "per_device_batch_size" in opt:
        per_device = _positive("--per-device-batch-size", opt["per_device_batch_size"])
        if global_batch % (per_device * world):
            raise EttinError(f"--per-device-batch-size {per_device} x world size {world} does not divide the "
                             f"global batch {global_batch}: gradient accumulation needs a whole number of steps")
        accum = global_batch // (per_device * world)
    else:
        if global_batch % (world * accum):
            raise EttinError(f"global batch {global_batch} is not divisible by world size {world}"
                             + (f" x accumulation {accum}" if accum > 1 else "")
                             + ": choose --global-batch-size or --per-device-batch-size")
        per_device = global_batch // (world * accum)
    training.update(per_device_train_batch_size=per_device, per_device_eval_batch_size=per_device,
                    gradient_accumulation_steps=accum)
    if "max_steps" in opt:
        training["max_steps"] = _positive("--max-steps", opt["max_steps"])
    seed = coerce_number(opt.get("seed", _required(training, "training", "seed", where)))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise EttinError(f"--seed must be a non-negative integer, got {seed!r}")
    training["seed"] = seed
    workers = training.get("dataloader_num_workers", 4)
    if world > 8:
        workers = ettin.get("dataloader_num_workers_beyond_8_processes", 0)
    if "dataloader_workers" in opt:
        if opt["dataloader_workers"] < 0:
            raise EttinError(f"--dataloader-workers must be >= 0, got {opt['dataloader_workers']}")
        workers = opt["dataloader_workers"]
    training["dataloader_num_workers"] = int(workers)
    for key in _CADENCES:
        option = f"--{key.replace('_', '-')}"
        if key in opt:
            training[key] = cadence(opt[key], option, "command line")
        elif key in training:
            training[key] = cadence(training[key], f"training.{key}", where)
        value = training.get(key)
        if isinstance(value, float) and 0 < value <= 1 and "max_steps" in training:
            training[key] = math.ceil(training["max_steps"] * value)  # what the trainer would make of the ratio
        elif value == 1.0 and isinstance(value, float):
            # 1.0 = once, at the end; the trainer would read it as "every step". The evaluation after training
            # (and the final model) are that once, so no periodic one is needed.
            training[key] = 0

    max_length, max_length_cap = model.get("max_length"), None
    if max_length == "auto":  # fitted to the training pairs when they are read; --max-length is then its cap
        max_length_cap = opt.get("max_length")
    elif "max_length" in opt:
        max_length = opt["max_length"]
    for value in (max_length if max_length != "auto" else None, max_length_cap):
        if value is not None and _positive("--max-length", value) < 8:
            raise EttinError(f"--max-length must be at least 8 tokens, got {value}")
    for key, allowed in (("pooling", POOLING_MODES), ("head_init", HEAD_INITS), ("head", HEAD_CHOICES),
                         ("head_activation", HEAD_ACTIVATIONS)):
        if str(model.get(key, allowed[0])) not in allowed:
            raise EttinError(f"{where}: model.{key} must be one of {', '.join(allowed)}, got {model.get(key)!r}")

    # Precision: the recipe's wish (bf16 + FA2) where the hardware allows it, fp32 + SDPA on CPU.
    device = device or resolve_device("auto")
    wanted_dtype = _RECIPE_DTYPES.get(str(ettin.get("precision", "bf16")).lower())
    if wanted_dtype is None:
        raise EttinError(f"{where}: training.precision '{ettin.get('precision')}' is not one of bf16, fp16, fp32")
    wanted_attn = str(ettin.get("attn_implementation", "flash_attention_2"))
    prec = resolve_precision(device, dtype, attn)
    if dtype == "auto" and prec.dtype != "float32" and wanted_dtype != prec.dtype:
        # The recipe's precision where the hardware runs mixed precision at all (fp32 on a CPU either way).
        prec = resolve_precision(device, wanted_dtype, "sdpa" if wanted_dtype == "float32" and attn == "auto"
                                 else attn)

    recipe_backbone = _required(model, "model", "backbone", where)
    base_model = _source(opt.get("base_model") or recipe_backbone, "--base-model", "model")
    named, fractions = parse_data_sources([s for s in (opt.get("data") or [data.get("dataset")]) if s])
    # With --score-column NAME the pairs' score column has a name of its own: any pairs folder may hold it.
    pairs = frozenset({kinds.SCORED, kinds.MINED}) if opt.get("score_column") else frozenset({kinds.SCORED})
    sources = [_source(s, "--data", "dataset", pairs) for s in named]
    if not sources:
        raise EttinError(f"{where}: no training data: give --data or set data.dataset in the recipe")
    validation = ([_source(s, "--validation-data", "dataset", pairs) for s in opt["validation_data"]]
                  if opt.get("validation_data") else None)
    columns = {"query": opt.get("query_column") or data.get("query_column", "query"),
               "document": opt.get("document_column") or data.get("document_column", "document"),
               "score": opt.get("score_column") or data.get("score_column")}  # None: label or score, found

    top_k = _positive("--eval-top-k", opt.get("eval_top_k", evaluation.get("top_k", 100)))
    _positive("--eval-max-queries", opt.get("eval_max_queries"))
    if opt.get("eval_data"):
        split = str(opt.get("eval_split") or "test")
        if not split.strip() or "/" in split:
            raise EttinError(f"--eval-split must name a qrels file (qrels/SPLIT.tsv), got {split!r}")
        for folder in opt["eval_data"]:
            kinds.require_kind(Path(folder).expanduser(), kinds.BEIR, "--eval-data")
        bench = {"benchmark": "beir", "datasets": [str(Path(s).expanduser().resolve()) for s in opt["eval_data"]],
                 "split": split}
    elif evaluation.get("require_eval_data"):
        raise EttinError(f"{where}: evaluation.require_eval_data is set: give --eval-data DIR, your own held-out "
                         "queries in BEIR layout, so the run is measured on your domain before and after training")
    else:

        if opt.get("eval_split"):
            raise EttinError("--eval-split applies to --eval-data BEIR folders (NanoBEIR has one split)")
        bench = {"benchmark": "nanobeir", "datasets": list(NANOBEIR_SETS)}
    primary = primary_metric_name(bench["benchmark"], top_k)
    training.setdefault("metric_for_best_model", f"eval_{primary}")

    return TrainConfig(
        size=str(name),
        recipe_file=str(Path(recipe_file).resolve()) if recipe_file else None,
        backbone=base_model,
        teacher=(recipe.get("teacher") or {}).get("model"),
        architecture=backbone_shape(base_model, model, recipe_backbone),
        max_length=max_length if max_length in (None, "auto") else int(max_length),
        max_length_cap=int(max_length_cap) if max_length_cap is not None else None,
        pooling=str(model.get("pooling", "cls")),
        head_init=str(model.get("head_init", "default")),
        head=str(model.get("head", "auto")),
        head_activation=str(model.get("head_activation", "refuse")),
        global_batch_size=int(global_batch),
        world_size=int(world),
        training=training,
        loss=resolve_loss(ettin, where),
        precision={"device": device, "dtype": prec.dtype, "attn": prec.attn, "unpadded": prec.unpadded,
                   "recipe": f"{ettin.get('precision', 'bf16')} + {wanted_attn}"},
        data={"train": sources, "fractions": fractions, "validation": validation,
              "train_split": data.get("train_split", "train"),
              "eval_split": data.get("eval_split", "validation"), "columns": columns},
        evaluation={**bench, "retriever": "bm25", "top_k": int(top_k), "max_queries": opt.get("eval_max_queries"),
                    "force_positives": False, "metric": "ndcg@10", "primary_metric": primary},
        output_dir=str(Path(opt.get("output_dir") or f"runs/ettin-reranker-{name}").expanduser().resolve()),
        cache_dir=str(Path(opt["cache_dir"]).resolve()) if opt.get("cache_dir") else None,
        resume=bool(opt.get("resume", False)),
        save_initial=bool(opt.get("save_initial", False)),
    )
