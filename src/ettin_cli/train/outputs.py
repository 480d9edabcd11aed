"""What a finished run leaves: `OUT/final/` (model, `ettin_training.json`, README.md card), `OUT/metrics.json` and
`OUT/training_curves.png`.

The training record holds the run's `TrainConfig` (`config`) and what came of it (metrics, throughput, the data
read). Its `hyperparameters` and `evaluation` entries are the model card's table, rendered from the config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ettin_cli import __version__
from ettin_cli.core.console import logger
from ettin_cli.core.files import apply_umask, write_json_atomic, write_text_atomic
from ettin_cli.measure.agreement import quality_flags, warn_quality
from ettin_cli.measure.charts import training_curves_chart
from ettin_cli.publish.training_record import FORMAT, TrainingRecord
from ettin_cli.train.checkpoints import CHECKPOINT_RE
from ettin_cli.train.config import TrainConfig
from ettin_cli.train.evaluators import metric_table
from ettin_cli.train.student import count_parameters

METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
FINAL_TMP = ".final.tmp"
# In OUT/.final.tmp/ once the final model is saved: what the other outputs are made from, so that a run interrupted
# while writing them is finished by a rerun (`finish_pending`) instead of retraining or passing for complete.
PENDING_FILE = "pending_outputs.json"


def build_record(config: TrainConfig, *, model: Any, state: Any, history: list[dict[str, Any]],
                 train_metrics: dict[str, Any], final_model: dict[str, Any],
                 after: dict[str, Any], data: dict[str, Any], observed_batch: int,
                 resumed_from: str | None) -> TrainingRecord:
    """The training record (`ettin_training.json`): the config, the data read and the results.

    `data` holds `train` / `validation` (per-source summaries), `train_rows`, `teacher` and `teacher_format`.
    """

    primary = config.primary_metric
    before = next((h for h in history if h.get("step") == 0 and f"eval_{primary}" in h), None)
    training = config.training
    prec = config.precision
    max_length = int(getattr(model, "max_length", None) or config.max_length or 0) or None
    return TrainingRecord.from_dict({
        "format": FORMAT,
        "ettin_cli": __version__,
        "size": config.size,
        "base_model": config.backbone,
        "backbone_type": backbone_type(model),
        "teacher": data["teacher"],
        "teacher_format": data["teacher_format"],
        "data": data["train"],
        "validation_data": data["validation"],
        "train_rows": data["train_rows"],
        "truncation": data.get("truncation"),
        "parameters": count_parameters(model),
        "max_length": max_length,
        "hyperparameters": {  # the model card's table, from the config
            "learning_rate": training["learning_rate"],
            "global_batch_size": config.global_batch_size,
            "per_device_batch_size": config.per_device_batch_size,
            "world_size": config.world_size,
            "gradient_accumulation_steps": training["gradient_accumulation_steps"],
            "num_train_epochs": training.get("num_train_epochs", 1),
            "max_steps": training.get("max_steps"),
            "total_steps": int(state.max_steps),
            "warmup_steps": training.get("warmup_steps"),
            "lr_scheduler_type": training.get("lr_scheduler_type", "linear"),
            "seed": training["seed"],
            "precision": f"{prec['dtype']} + {prec['attn']}" + (" (unpadded)" if prec["unpadded"] else ""),
            "max_length": max_length,
            "loss": config.loss,
            "pooling": config.pooling,
            "head_init": config.head_init,
        },
        "evaluation": {"benchmark": "NanoBEIR" if config.evaluation["benchmark"] == "nanobeir" else "BEIR",
                       "datasets": [Path(d).name for d in config.evaluation["datasets"]],
                       "retriever": "BM25", "top_k": config.evaluation["top_k"], "metric": "NDCG@10",
                       "max_queries": config.evaluation["max_queries"],
                       # the qrels split that picked the checkpoint: a report on another split is not selected on
                       **({"split": config.evaluation.get("split", "test")}
                          if config.evaluation["benchmark"] == "beir" else {})},
        "metrics": {"before": metric_table(before, primary) if before else {},
                    "after": metric_table(after, primary), "best_step": best_step(state),
                    "after_eval_loss": after.get("eval_loss")},
        "throughput": {**{f"train_{k}": v for k, v in training_rates(history, config.global_batch_size).items()},
                       "wall_samples_per_second": train_metrics.get("train_samples_per_second"),
                       "train_runtime_seconds": train_metrics.get("train_runtime"),
                       "tokens_seen": int(state.num_input_tokens_seen or 0)},
        "observed_per_device_batch": observed_batch,
        "resumed_from": resumed_from,
        "final_model": final_model,
        "config": config.to_dict(),
    })


# quality_flags' names -> the training record's (the "retriever" of an eval table is the untrained student here).
_TRAINING_FLAGS = {"below_retriever": "ndcg_after_below_before", "mse_above_variance": "mse_above_variance"}


def check_quality(record: TrainingRecord, targets_variance: float | None) -> list[str]:
    """Flag a run that did not earn its place, with a WARNING line each (`evaluation.quality_flags`' rules):
    held-out mean NDCG@10 after training below the untrained student's, or the eval MSE to the teacher above the
    variance of the teacher's held-out scores (worse than predicting their mean). Returns the record's flags."""

    metrics = record.metrics
    before, after = metrics["before"].get("mean"), metrics["after"].get("mean")
    student = {"model": "the trained student", "role": "reranker", "mean": {"ndcg@10": after}}
    mse = metrics.get("after_eval_loss")
    if mse is not None and targets_variance is not None and record.config["loss"]["name"] == "mse":
        student["agreement"] = {"mse": mse, "reference_variance": targets_variance, "reference": "the teacher"}
    entries = [{"model": "before training", "role": "retriever", "mean": {"ndcg@10": before}}, student]
    if before is None or after is None:
        entries = [{**student, "mean": {"ndcg@10": 0.0}}]  # no NDCG pair: only the MSE check applies
    flags = quality_flags(entries)
    warn_quality(entries, flags, baseline="the untrained student's", why="training made the ranking worse")
    return [_TRAINING_FLAGS[f] for f in flags.get(student["model"], [])]


def backbone_type(model: Any) -> str | None:
    """`modernbert` for an Ettin backbone (`bert` for the demo's MiniLM): the model card names it truthfully."""
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    return getattr(config, "model_type", None)


def save_model_atomic(model: Any, path: Path) -> None:
    """Save a model folder under a temporary name and rename it into place: no half-written folder."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save(str(tmp))
        apply_umask(tmp)  # mkdtemp's 0700 and the library's 0600 weights: readable like every other output
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_final(trainer: Any, out: Path, record: TrainingRecord, history: list[dict[str, Any]],
               after: dict[str, Any]) -> None:
    """The final model into `OUT/.final.tmp/`, with what the other outputs are made from; then those outputs.

    The completion mark (`final/ettin_training.json`, which `check_output_dir` and the Makefile read) appears last:
    `OUT/final/` is the temporary folder renamed once the card, metrics.json and the curves are written.
    """
    final_tmp = out / FINAL_TMP
    if final_tmp.exists():
        shutil.rmtree(final_tmp)
    trainer.save_model(str(final_tmp))
    apply_umask(final_tmp)  # model.safetensors comes 0600 from the library's temp file; 0644 like every output
    state = {"record": record.to_dict(), "history": history, "after": after}
    # numpy scalars as numbers (not the str() that write_json_atomic falls back to): a rerun draws from these
    write_text_atomic(final_tmp / PENDING_FILE, json.dumps(state, default=_plain) + "\n")
    write_outputs(out, final_tmp, record, history, after, record.config["evaluation"]["primary_metric"])


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def has_pending(out: Path) -> bool:
    """True when a run saved its final model but was interrupted before its last output."""
    return (out / FINAL_TMP / PENDING_FILE).is_file()


def finish_pending(out: Path) -> TrainingRecord:
    """Write the outputs of a saved final model (card, metrics, curves, then the record and `final/`); the record."""
    final_tmp = out / FINAL_TMP
    state = json.loads((final_tmp / PENDING_FILE).read_text(encoding="utf-8"))
    record = TrainingRecord.from_dict(state["record"])
    write_outputs(out, final_tmp, record, state["history"], state["after"],
                  record.config["evaluation"]["primary_metric"])
    return record


def final_evaluation(trainer: Any, history: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The evaluation of the model that is kept, and which model that is (`{"step", "why"}`).

    When `load_best_model_at_end` loaded a checkpoint, its evaluation is already in the history: it is reused,
    not run a second time. Otherwise the last step's evaluation is reused when there is one, and the model is
    evaluated once more only when training ended between evaluations.
    """
    state, args = trainer.state, trainer.args
    metric = args.metric_for_best_model
    key = metric if metric and metric.startswith("eval_") else f"eval_{metric}"
    evals = [h for h in history if key in h]
    step = best_step(state)
    if args.load_best_model_at_end and state.best_model_checkpoint and step is not None:
        entry = next((h for h in reversed(evals) if h.get("step") == step), None)
        if entry is not None:
            best = "highest" if args.greater_is_better else "lowest"
            why = (f"checkpoint-{step} loaded at the end (step {step} of {state.global_step}): the {best} "
                   f"{key.removeprefix('eval_')} of {len(evals)} evaluations, {entry[key]:.4f} "
                   "(load_best_model_at_end); its evaluation is reused, not run again")
            return entry, {"step": step, "why": why}
    last = evals[-1] if evals else None
    if last is not None and last.get("step") == state.global_step:
        return last, {"step": state.global_step, "why": f"the model at the last step {state.global_step}, "
                                                        "as evaluated at that step"}
    return trainer.evaluate(), {"step": state.global_step,
                                "why": f"the model at the last step {state.global_step}, evaluated after training"}


def best_step(state: Any) -> int | None:
    """The step of the checkpoint `load_best_model_at_end` chose (None when none was chosen)."""
    path = getattr(state, "best_model_checkpoint", None)
    if path:
        m = CHECKPOINT_RE.match(Path(path).name)
        if m:
            return int(m.group(1))
    return getattr(state, "best_global_step", None)


def training_rates(history: list[dict[str, Any]], global_batch: int) -> dict[str, float | None]:
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


def write_outputs(out: Path, final_tmp: Path, record: TrainingRecord, history: list[dict[str, Any]],
                  after: dict[str, Any], primary: str) -> None:
    """Metrics.json and curves, then the card and the record, then `final/`: the completion mark is written last."""
    final = out / "final"

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
        "before": record.metrics["before"],
        "after": record.metrics["after"],
        "best_step": record.metrics["best_step"],
        "train": {**summary, **record.throughput},
        "observed_per_device_batch": record.observed_per_device_batch,
        "resumed_from": record.resumed_from,
    }
    write_json_atomic(out / METRICS_FILE, metrics)

    training_curves_chart(losses, evals, f"eval_{primary}", out / CURVES_FILE,
                          kept_step=(record.final_model or {}).get("step"))
    record.write_with_card(final_tmp)  # the card, then the record that holds its hash
    (final_tmp / PENDING_FILE).unlink(missing_ok=True)
    if final.exists():
        shutil.rmtree(final)  # a leftover of an earlier layout or a crash; the run rewrites it whole
    final_tmp.rename(final)
    before, after_mean = record.metrics["before"].get("mean"), record.metrics["after"].get("mean")
    if before is not None and after_mean is not None:
        logger.info(f"mean NDCG@10: {before:.4f} before -> {after_mean:.4f} after training")
    logger.info(f"final model {final}: {record.final_model['why']}")  # the last line: which step, and why
