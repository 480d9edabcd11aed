"""`ettin bench --backend`: the same reranker timed as PyTorch, ONNX and OpenVINO files, with their parity.

A model folder exported by `ettin export` holds `onnx/` and `openvino/` files and their `parity.json`. Each
backend is timed by `bench.measure` (the batch-size search and median of timed passes the rest of the bench
uses) on the same pairs, its peak RSS recorded, and its scores on those very pairs compared with the PyTorch
fp32 scores (max |diff|, Spearman: `parity.parity_figures`); the NDCG@10 change measured by the export on its
check data is carried over from `parity.json`. The table answers one question: how much faster, at what cost.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ettin_cli.core import console
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import write_json_atomic
from ettin_cli.core.hardware import describe
from ettin_cli.label.exported import ONNX_DIR, OPENVINO_DIR, ExportedCrossEncoder
from ettin_cli.label.teacher import load_teacher
from ettin_cli.measure.bench import measure
from ettin_cli.measure.parity import CheckSet, parity_figures

BACKENDS = ("torch", "onnx", "onnx-o1", "onnx-o2", "onnx-o3", "onnx-int8", "openvino", "openvino-int8")
PARITY_FILE = "parity.json"


def parse_backends(text: str) -> list[str]:
    """`torch,onnx,...` -> the backends asked (order kept); an unknown one is refused."""
    items = list(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    unknown = [t for t in items if t not in BACKENDS]
    if unknown or not items:
        raise EttinError(f"--backend: unknown backend {', '.join(unknown) or '(none)'} (choose from "
                         f"{', '.join(BACKENDS)})")
    return items


def export_rows(model_dir: Path) -> dict[str, dict[str, Any]]:
    """The export rows (format -> file, parity, speed) of a model folder's onnx/ and openvino/ parity.json."""
    import json

    rows: dict[str, dict[str, Any]] = {}
    for folder in (ONNX_DIR, OPENVINO_DIR):
        path = model_dir / folder / PARITY_FILE
        if path.is_file():
            try:
                rows.update(json.loads(path.read_text(encoding="utf-8")).get("exports", {}))
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
                raise EttinError(f"{path}: not a parity record ({exc})") from None
    return rows


def _load(model_dir: Path, backend: str, exports: dict[str, dict[str, Any]], max_length: int | None) -> Any:
    if backend == "torch":

        return load_teacher(str(model_dir), "cross-encoder", device="cpu", dtype="float32", attn="sdpa",
                            max_length=max_length)
    row = exports.get(backend)
    if row is None or not (model_dir / row["file"]).is_file():
        raise EttinError(f"{model_dir}: no {backend} export (run `ettin export {model_dir} --formats {backend}`)")
    return ExportedCrossEncoder(model_dir, row["file"], max_length=max_length)


def run_backend_bench(models: Sequence[str], pairs: Sequence[tuple[str, str]], backends: Sequence[str], *,
                      passes: int = 3, start_batch: int = 8, max_batch: int | None = None,
                      memory_limit: int | None = None, batch_size: int | None = None,
                      max_length: int | None = None) -> dict[str, Any]:
    """Time every backend of every model folder on `pairs` (CPU); each row with its parity to PyTorch fp32."""

    rows: list[dict[str, Any]] = []
    check = CheckSet("bench pairs", list(pairs))
    for model in models:
        model_dir = Path(model)
        if not model_dir.is_dir():
            raise EttinError(f"MODEL {model}: --backend needs a local model folder written by `ettin export`")
        exports = export_rows(model_dir)
        missing = [b for b in backends if b != "torch" and b not in exports]
        if missing:
            raise EttinError(f"{model_dir}: no {', '.join(missing)} export (run `ettin export {model_dir} "
                             f"--formats {','.join(missing)}`)")
        reference_scorer = _load(model_dir, "torch", exports, max_length)
        reference = reference_scorer.score([q for q, _ in pairs], [d for _, d in pairs], batch_size=32)
        torch_speed = None
        del reference_scorer
        for backend in backends:
            scorer = _load(model_dir, backend, exports, max_length)
            console.logger.info("%s [%s]: searching the batch size, then %d timed passes", model_dir.name, backend,
                                passes)
            result = measure(scorer, pairs, "cpu", passes=passes, start_batch=start_batch, max_batch=max_batch,
                             memory_limit=memory_limit, batch_size=batch_size)
            scores = scorer.score([q for q, _ in pairs], [d for _, d in pairs], batch_size=result["batch_size"])
            figures = parity_figures(check, reference, scores)
            export = exports.get(backend, {})
            row = {"model": model_dir.name, "source": str(model_dir), "backend": backend,
                   "file": export.get("file", "model.safetensors" if backend == "torch" else None),
                   "status": "ok", **result, "parity": figures,
                   "export_parity": export.get("parity"), "export_kind": export.get("kind", "fp32")}
            if backend == "torch":
                torch_speed = result["pairs_per_second"]
            rows.append(row)
            del scorer
            gc.collect()
        for row in rows:
            if row["source"] == str(model_dir) and torch_speed:
                row["speedup_vs_torch"] = row["pairs_per_second"] / torch_speed
    return {"device": "cpu", "pairs": len(pairs), "passes": passes, "hardware": describe(),
            "backends": list(backends), "results": rows}


def backend_table(report: dict[str, Any]) -> Any:
    """A rich table: one row per model and backend, speed beside parity."""
    from rich.table import Table

    table = Table(title=f"Backends on CPU: {report['pairs']} pairs, median of {report['passes']} passes; parity to "
                        "PyTorch fp32 on the same pairs (NDCG@10 change: the export's check)")
    for name in ("model", "backend", "file", "batch", "pairs/s", "x torch", "peak RSS", "max |diff|", "Spearman",
                 "NDCG@10 change"):
        table.add_column(name, justify="left" if name in ("model", "backend", "file") else "right")
    for row in report["results"]:
        figures = row["parity"]
        drop = (row.get("export_parity") or {}).get("ndcg_drop")
        speedup = row.get("speedup_vs_torch")
        table.add_row(row["model"], row["backend"], str(row["file"]), str(row["batch_size"]),
                      f"{row['pairs_per_second']:,.1f}", f"{speedup:.2f}x" if speedup else "-",
                      f"{row['peak_memory_mb']:,.0f} MB", f"{figures['max_abs_diff']:.2e}",
                      f"{figures['spearman']:.5f}", "-" if drop is None else f"{-drop:+.4f}")
    return table


def write_backend_bench(report: dict[str, Any], output_dir: str | Path) -> Path:
    """`OUTPUT/bench.json` (atomic), as the rest of `ettin bench` writes it."""

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise EttinError(f"--output {out}: exists and is not a directory")
    write_json_atomic(out / "bench.json", report)
    return out / "bench.json"
