"""The table of an `ettin eval --benchmark` run, with the release's published numbers beside ours.

Rows are models (the retriever alone first), columns the tasks and the mean NDCG@10, one block per retriever,
and a last pair of columns with the release's number for the same model and the difference, so a reproduction
reads as a difference. The published numbers are data (`recipes/eval/mteb.yaml`), never Python constants: per
reranker the release's mean over its six retrievers, per retriever its retriever-only NDCG@10.

A MODEL is matched to a published entry by the `size` its `ettin_training.json` records (a student trained by
this tool), or by one of the entry's `names` appearing in its id or folder (`cross-encoder/ettin-reranker-17m-v1`,
`mixedbread-ai/mxbai-rerank-large-v2`). A retriever is matched by its Hub id's name appearing in its value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import write_json_atomic
from ettin_cli.core.recipes import read_yaml, recipes_dir
from ettin_cli.measure.charts import mteb_chart


def protocol_file() -> Path:
    """`recipes/eval/mteb.yaml`: the release's protocol (benchmark, top-k, six retrievers) and published numbers."""
    return recipes_dir() / "eval" / "mteb.yaml"


def load_protocol(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The protocol file, checked for the keys the table reads."""
    file = Path(path) if path is not None else protocol_file()
    data = read_yaml(file)
    published = data.get("published")
    if not isinstance(published, dict) or not isinstance(published.get("rerankers"), dict) \
            or not isinstance(published.get("retrievers"), dict):
        raise EttinError(f"{file}: needs a 'published' mapping with 'rerankers' and 'retrievers'")
    for key, entry in published["rerankers"].items():
        if not isinstance(entry, dict) or "score" not in entry:
            raise EttinError(f"{file}: published.rerankers.{key} needs a 'score'")
    return data


def _norm(text: str) -> str:
    return str(text).lower().replace("_", "-")


def _trained_size(path: str | None) -> str | None:
    if not path:
        return None
    info = Path(path) / "ettin_training.json"
    if not info.is_file():
        return None
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    size = data.get("size") or (data.get("recipe") or {}).get("size")
    return str(size) if size else None


def published_reranker(source: str, path: str | None, protocol: Mapping[str, Any]) -> tuple[str, float] | None:
    """(published key, score) of the release's reranker a MODEL stands for, or None."""
    entries = protocol["published"]["rerankers"]
    size = _trained_size(path)
    if size is not None and size in entries:
        return size, float(entries[size]["score"])
    text = _norm(source)
    for key, entry in entries.items():
        if any(_norm(n) in text for n in entry.get("names") or []):
            return str(key), float(entry["score"])
    return None


def published_retriever(value: str, protocol: Mapping[str, Any]) -> tuple[str, float] | None:
    """(Hub id, retriever-only NDCG@10) of the release's retriever that `value` is, or None."""
    text = _norm(value)
    for hub_id, score in protocol["published"]["retrievers"].items():
        if _norm(hub_id) in text or _norm(hub_id.split("/")[-1]) in text:
            return str(hub_id), float(score)
    return None


def comparable(config: Any, task_names: Sequence[str], protocol: Mapping[str, Any]) -> str | None:
    """None when a run measures what the release published (its benchmark, every retrieval task, its top-k, every
    query); else why the published column is not comparable (then no difference is shown)."""
    mteb_tasks = protocol.get("tasks")
    if str(config.benchmark) != str(protocol.get("benchmark")):
        return f"benchmark {config.benchmark} is not the release's {protocol.get('benchmark')}"
    if config.tasks:
        return f"only {len(task_names)} of the benchmark's retrieval tasks"
    if mteb_tasks and len(task_names) != len(mteb_tasks):
        return f"{len(task_names)} tasks, the release has {len(mteb_tasks)}"
    if int(config.top_k) != int(protocol.get("top_k", config.top_k)):
        return f"top-{config.top_k}, the release reranks the top {protocol.get('top_k')}"
    if config.max_queries:
        return f"only the first {config.max_queries} queries per task"
    return None


def _row(model: str, role: str, per_task: Mapping[str, float], task_names: Sequence[str],
         published: tuple[str, float] | None, show: bool, **extra: Any) -> dict[str, Any]:
    complete = all(t in per_task for t in task_names)
    mean = sum(per_task[t] for t in task_names) / len(task_names) if complete and task_names else None
    published = published if show else None
    row = {"model": model, "role": role, "tasks": {t: per_task[t] for t in task_names if t in per_task},
           "mean": mean, "published": published[1] if published else None,
           "published_as": published[0] if published else None,
           "difference": (mean - published[1]) if (mean is not None and published) else None, **extra}
    return row


def build_report(config: Any, task_names: Sequence[str], retrievers: Sequence[Any], folders: Mapping[str, Path],
                 rerankers: Sequence[Any], scores: Mapping[str, Mapping[str, Mapping[str, float]]],
                 retriever_only: Mapping[str, Mapping[str, float]],
                 protocol: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report: one block per retriever (its own row first), then a summary over retrievers."""
    protocol = protocol if protocol is not None else load_protocol()
    why_not = comparable(config, task_names, protocol)
    show = why_not is None
    blocks = []
    for r in retrievers:
        rows = []
        if retriever_only.get(r.value):
            rows.append(_row(f"{r.label} (retriever)", "retriever", retriever_only[r.value], task_names,
                             published_retriever(r.value, protocol), show, source=r.value))
        for rr in rerankers:
            rows.append(_row(rr.label, "reranker", scores[r.value][rr.label], task_names,
                             published_reranker(rr.model, rr.path, protocol), show, source=rr.model, format=rr.format,
                             revision=rr.mteb_model_meta.revision))
        blocks.append({"retriever": r.value, "label": r.label, "kind": r.kind, "results": str(folders[r.value]),
                       "rows": rows})
    summary = []
    for rr in rerankers:
        means = [row["mean"] for b in blocks for row in b["rows"] if row["model"] == rr.label and row["role"] ==
                 "reranker"]
        mean = sum(means) / len(means) if means and all(m is not None for m in means) else None
        pub = published_reranker(rr.model, rr.path, protocol) if show else None
        summary.append({"model": rr.label, "retrievers": len(means), "mean": mean,
                        "published": pub[1] if pub else None,
                        "difference": (mean - pub[1]) if (mean is not None and pub) else None})
    return {
        "benchmark": config.benchmark,
        "metric": "ndcg_at_10",
        "top_k": config.top_k,
        "max_queries": config.max_queries,
        "tasks": list(task_names),
        "published_metric": protocol["published"].get("metric", "published"),
        "published_not_comparable": why_not,
        "blocks": blocks,
        "summary": summary,
        "config": config.to_dict(),
    }


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def report_tables(report: Mapping[str, Any]) -> list[Any]:
    """Rich tables: one per retriever (models x tasks + mean + published + difference), then the summary."""
    from rich.table import Table

    tables = []
    tasks = report["tasks"]
    for block in report["blocks"]:
        table = Table(title=f"{report['benchmark']}: NDCG@10, top-{report['top_k']} of {block['label']} reranked"
                      + (f" (first {report['max_queries']} queries per task)" if report.get("max_queries") else ""))
        table.add_column("model")
        for name in tasks:
            table.add_column(name, justify="right")
        table.add_column("mean", justify="right", style="bold")
        table.add_column("published", justify="right")
        table.add_column("diff", justify="right")
        for row in block["rows"]:
            table.add_row(row["model"], *(_fmt(row["tasks"].get(t)) for t in tasks), _fmt(row["mean"]),
                          _fmt(row["published"]), _fmt(row["difference"], signed=True))
        why_not = report.get("published_not_comparable")
        table.caption = (f"published: not comparable ({why_not})" if why_not else
                         "published: a reranker's " + report["published_metric"] + "; a retriever's own NDCG@10")
        tables.append(table)
    if len(report["blocks"]) > 1:
        table = Table(title=f"mean NDCG@10 over {len(report['blocks'])} retrievers")
        for column in ("model", "retrievers", "mean", "published", "diff"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for row in report["summary"]:
            table.add_row(row["model"], str(row["retrievers"]), _fmt(row["mean"]), _fmt(row["published"]),
                          _fmt(row["difference"], signed=True))
        tables.append(table)
    return tables


def write_outputs(report: dict[str, Any], output: Path) -> None:
    """`OUTPUT/mteb_eval.json` (the report) and `OUTPUT/mteb_eval.png` (NDCG@10 per model and retriever)."""
    output.mkdir(parents=True, exist_ok=True)
    mteb_chart(report, output / "mteb_eval.png")
    report["chart"] = str(output / "mteb_eval.png")
    write_json_atomic(output / "mteb_eval.json", report)
