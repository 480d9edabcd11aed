"""PNG charts of evaluation and benchmark results (matplotlib, headless Agg backend).

Charts sit beside the JSON they are drawn from, so a reader sees at a glance what the numbers say: a grouped
bar chart of NDCG@10 per dataset for every model (the retriever's bar is the line to beat), and a bar chart of
pairs/s per model and precision/attention setting (the ablation), and `ettin train`'s loss and metric
curves. Written atomically like every output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ettin_cli.core.files import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display on servers; never pick an interactive backend
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)


def eval_chart(entries: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], metric: str = "ndcg@10",
               title: str | None = None) -> None:
    """Grouped bars of `metric` per dataset (and the mean when there are several), one bar per model.

    `entries` are the rows of an evaluation report: `{"model": label, "datasets": {name: {metric: v}},
    "mean": {metric: v}}`, the retriever first.
    """
    plt = _pyplot()
    if not entries:
        raise ValueError("eval_chart: nothing to draw")
    datasets = list(entries[0]["datasets"])
    groups = datasets + (["mean"] if len(datasets) > 1 else [])
    n_models = len(entries)
    width = 0.8 / n_models
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, n_models) * 0.5 + 2), 4.2))
    for i, entry in enumerate(entries):
        values = [entry["datasets"][g][metric] if g != "mean" else entry["mean"][metric] for g in groups]
        xs = [x + (i - (n_models - 1) / 2) * width for x in range(len(groups))]
        bars = ax.bar(xs, values, width=width, label=str(entry.get("legend") or entry["model"]),
                      hatch="//" if entry.get("role") == "retriever" else None)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=7, rotation=90, padding=2)
    ax.set_xticks(range(len(groups)), groups, rotation=30 if len(groups) > 4 else 0, ha="right"
                  if len(groups) > 4 else "center")
    ax.set_ylabel(metric.upper().replace("NDCG", "nDCG"))
    top = max((e["mean"][metric] for e in entries), default=1.0)
    top = max(top, *(e["datasets"][d][metric] for e in entries for d in datasets))
    ax.set_ylim(0, min(1.0, top * 1.25 + 0.05))
    ax.set_title(title or f"{metric} after reranking")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def bench_chart(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str | None = None) -> None:
    """Horizontal bars of pairs/s for each (model, setting) that ran; skipped settings are left out."""
    plt = _pyplot()
    done = [r for r in rows if r.get("status") == "ok"]
    if not done:
        raise ValueError("bench_chart: no measured setting to draw")
    labels = [f"{r['model']}  [{r['setting']}]" for r in done]
    values = [float(r["pairs_per_second"]) for r in done]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(done) + 1.4))
    bars = ax.barh(range(len(done)), values)
    ax.bar_label(bars, labels=[f"{v:,.1f} (bs {r['batch_size']})" for v, r in zip(values, done, strict=True)],
                 fontsize=8, padding=3)
    ax.set_yticks(range(len(done)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("pairs / second (median of timed passes)")
    ax.set_xlim(0, max(values) * 1.3)
    ax.set_title(title or "Inference throughput")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def training_curves_chart(losses: Sequence[Mapping[str, Any]], evals: Sequence[Mapping[str, Any]], primary: str,
                          path: str | os.PathLike[str], kept_step: int | None = None) -> None:
    """`ettin train`'s curves: training (and eval) loss and the eval metric `primary` over steps; `kept_step`, the
    checkpoint kept as the final model, is marked on both (which point of the curve the model is)."""
    plt = _pyplot()
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([e["step"] for e in losses], [e["loss"] for e in losses], label="train loss")
    eval_losses = [(e["step"], e["eval_loss"]) for e in evals if "eval_loss" in e]
    if eval_losses:
        ax_loss.plot(*zip(*eval_losses, strict=True), marker="o", label="eval loss (MSE to the teacher)")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_loss.set_title("loss")
    points = [(e["step"], e[primary]) for e in evals if primary in e]
    if points:
        ax_metric.plot(*zip(*points, strict=True), marker="o")
    if kept_step is not None:
        for ax in (ax_loss, ax_metric):
            ax.axvline(kept_step, color="tab:red", linestyle="--", label=f"kept: step {kept_step}")
        kept = [v for s, v in points if s == kept_step]
        if kept:
            ax_metric.plot([kept_step], kept, marker="*", markersize=14, color="tab:red", linestyle="none")
        ax_metric.legend()
        ax_loss.legend()
    ax_metric.set_xlabel("step")
    ax_metric.set_ylabel("mean NDCG@10")
    ax_metric.set_title(primary.removeprefix("eval_"))
    fig.tight_layout()
    _save(fig, path)


def mteb_chart(report: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """`ettin eval --benchmark`'s chart: mean NDCG@10 per model, one bar per retriever, the published number as a
    black tick over the model's bars (a reranker: the release's mean over its six retrievers).

    With one retriever and several tasks the bars are per task instead (`eval_chart`'s grouped layout), so a
    quick look on one first stage still shows where each model wins.
    """
    blocks = report["blocks"]
    tasks = report["tasks"]
    if len(blocks) == 1 and len(tasks) > 1:
        entries = [{"model": row["model"], "role": row["role"],
                    "datasets": {t: {"ndcg@10": row["tasks"].get(t, 0.0)} for t in tasks},
                    "mean": {"ndcg@10": row["mean"] or 0.0}} for row in blocks[0]["rows"]]
        eval_chart(entries, path, title=f"{report['benchmark']}: NDCG@10, top-{report['top_k']} of "
                                        f"{blocks[0]['label']} reranked")
        return
    plt = _pyplot()
    models = [row["model"] for row in blocks[0]["rows"] if row["role"] == "reranker"]
    if not models:
        raise ValueError("mteb_chart: nothing to draw")
    width = 0.8 / len(blocks)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(models) * max(1, len(blocks)) * 0.5 + 2), 4.2))
    for i, block in enumerate(blocks):
        by_model = {row["model"]: row for row in block["rows"] if row["role"] == "reranker"}
        values = [by_model[m]["mean"] or 0.0 for m in models]
        xs = [x + (i - (len(blocks) - 1) / 2) * width for x in range(len(models))]
        bars = ax.bar(xs, values, width=width, label=str(block["label"]))
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=7, rotation=90, padding=2)
    published = {row["model"]: row["published"] for row in blocks[0]["rows"] if row["published"] is not None}
    for x, model in enumerate(models):
        if model in published:
            ax.hlines(published[model], x - 0.45, x + 0.45, colors="black", linewidth=2,
                      label="published" if x == min(models.index(m) for m in published) else None)
    ax.set_xticks(range(len(models)), models, rotation=30 if len(models) > 4 else 0,
                  ha="right" if len(models) > 4 else "center")
    ax.set_ylabel("mean nDCG@10")
    ax.set_ylim(0, 1.0)
    ax.set_title(f"{report['benchmark']}: mean NDCG@10 over {len(tasks)} task(s), top-{report['top_k']} reranked")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
