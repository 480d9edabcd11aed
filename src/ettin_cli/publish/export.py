"""`ettin export`: a reranker as ONNX / OpenVINO files in the layout Sentence Transformers loads, each proven.

Why not Sentence Transformers' own exporters: they go through Optimum, and as resolved on PyPI today
`optimum-onnx[onnxruntime]` needs transformers < 4.58 and `optimum-intel[openvino]` transformers < 5.6 (plus
another torch), so neither installs beside this project's transformers 5. Optimum also exports the Hugging Face
encoder and keeps a Sentence Transformers head (Pooling, Dense, LayerNorm, Dense) in PyTorch. So the export is
done here: the WHOLE scorer (encoder + pooling + head, raw score out) is traced into one ONNX graph with
`torch.onnx.export`, which onnxruntime alone runs (no torch: `label.exported.ExportedCrossEncoder`); the other
files derive from it with the field's own tools (onnxruntime graph optimizations and dynamic quantization,
OpenVINO's converter, NNCF's static quantization). File names follow Sentence Transformers' (`backend/`):

    onnx/model.onnx                       fp32                          (`onnx`)
    onnx/model_O3.onnx                    onnxruntime O1-O3             (`onnx-o1` .. `onnx-o3`)
    onnx/model_qint8_<isa>.onnx           dynamic int8 for avx512_vnni / avx512 / avx2 / arm64   (`onnx-int8`)
    openvino/openvino_model.xml/.bin      fp32 IR                       (`openvino`)
    openvino/openvino_model_qint8_quantized.xml/.bin  static int8 (NNCF, pair calibration)  (`openvino-int8`)
    onnx/parity.json, openvino/parity.json   the parity and speed of each file, measured here

Every file is written to a temporary folder, scored on held-out pairs beside the PyTorch fp32 model
(`measure.parity`), and moved into place only when every requested export is within its bounds; otherwise
nothing is written and `ParityError` (exit 1) names the first figure that missed.
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ettin_cli import __version__
from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import write_json_atomic
from ettin_cli.core.recipes import read_yaml, recipes_dir
from ettin_cli.core.sources import resolve_source
from ettin_cli.io.tables import open_input
from ettin_cli.label.exported import GRAPH_INPUTS, ONNX_DIR, OPENVINO_DIR, ExportedCrossEncoder, load_tokenizer
from ettin_cli.measure.bench import bench_pairs
from ettin_cli.measure.parity import ParityError, bound_violations, load_check_set, ndcg_at_10, parity_figures
from ettin_cli.publish.export_card import PARITY_FILE, read_parity
from ettin_cli.publish.training_record import TrainingRecord

FORMATS = ("onnx", "onnx-o1", "onnx-o2", "onnx-o3", "onnx-int8", "openvino", "openvino-int8")
DEFAULT_FORMATS = ("onnx", "onnx-o3", "onnx-int8", "openvino", "openvino-int8")
ISAS = ("avx512_vnni", "avx512", "avx2", "arm64")
INSTALL_HINT = 'pip install "ettin-cli[export]"'
DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data"


@dataclass
class ExportConfig:
    """One `ettin export` run: what to export, where, checked on what, within which bounds (recipe + flags)."""

    model: str
    output: str | None = None
    formats: list[str] = field(default_factory=lambda: list(DEFAULT_FORMATS))
    isa: str | None = None
    calibration: str | None = None
    check_data: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @property
    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path(self.model)


def load_export_recipe(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """`recipes/export.yaml` (or `path`): bounds, check and calibration sizes, optimization and ISA settings."""
    return read_yaml(path or recipes_dir() / "export.yaml")


def require_export_libraries(formats: Sequence[str]) -> None:
    """One line naming the extra when a library the asked formats need is missing."""
    import importlib.util

    needed = ["onnx", "onnxruntime"]
    if any(f.startswith("openvino") for f in formats):
        needed.append("openvino")
    if "openvino-int8" in formats:
        needed.append("nncf")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise EttinError(f"ettin export needs {', '.join(missing)}: {INSTALL_HINT}")


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """`onnx,onnx-o3,...` -> the formats, in the canonical order; an unknown name is refused."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [t for t in items if t not in FORMATS]
    if unknown or not items:
        raise EttinError(f"--formats: unknown format {', '.join(unknown) or '(none)'} (choose from "
                         f"{', '.join(FORMATS)})")
    return [f for f in FORMATS if f in items]


def detect_isa() -> str:
    """The CPU's instruction set for int8 kernels: arm64, avx512_vnni, avx512 or avx2 (from /proc/cpuinfo)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if {"avx512_vnni", "avx512vnni"} & flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def file_of(fmt: str, isa: str) -> str:
    """The path in the model folder of one format, in Sentence Transformers' naming."""
    if fmt == "onnx":
        return f"{ONNX_DIR}/model.onnx"
    if fmt.startswith("onnx-o"):
        return f"{ONNX_DIR}/model_O{fmt[-1]}.onnx"
    if fmt == "onnx-int8":
        return f"{ONNX_DIR}/model_qint8_{isa}.onnx"
    if fmt == "openvino":
        return f"{OPENVINO_DIR}/openvino_model.xml"
    return f"{OPENVINO_DIR}/openvino_model_qint8_quantized.xml"


def kind_of(fmt: str, recipe: dict[str, Any]) -> str:
    """The bound set a format is checked against (`recipes/export.yaml` kinds: fp32, gelu-approximation, int8)."""
    kind = recipe.get("kinds", {}).get(fmt)
    if kind not in recipe.get("bounds", {}):
        raise EttinError(f"recipes/export.yaml: format {fmt} has kind {kind!r}, which has no bounds")
    return kind


# ------------------------------------------------------------------------------------------- the graphs
def load_reference(model_dir: Path) -> Any:
    """The PyTorch fp32 CrossEncoder on CPU, raw scores (identity activation): the reference of every check."""
    import torch
    from sentence_transformers import CrossEncoder

    try:
        model = CrossEncoder(str(model_dir), device="cpu", local_files_only=True, activation_fn=torch.nn.Identity())
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EttinError(f"{model_dir}: does not load as a sentence-transformers CrossEncoder ({first})") from None
    model.eval()
    return model.float()


def export_onnx(model: Any, path: Path, opset: int) -> list[str]:
    """Trace the whole CrossEncoder (every module, raw score out) into one ONNX graph; return its input names.

    Inputs are what the model's own tokenizer gives among input_ids / attention_mask / token_type_ids, with
    dynamic batch and sequence axes; the output `scores` has shape (batch, 1).
    """
    import torch

    sample = model.preprocess([("what is a wing", "a wing lifts an aircraft"), ("q", "a longer document here")])
    names = [n for n in GRAPH_INPUTS if n in sample]

    class WholeScorer(torch.nn.Module):
        def __init__(self, cross_encoder: Any) -> None:
            super().__init__()
            self.cross_encoder = cross_encoder

        def forward(self, *tensors: Any) -> Any:
            return self.cross_encoder(dict(zip(names, tensors, strict=True)))["scores"]

    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"scores": {0: "batch"}}
    # The tracer warns where Python branches on shapes (mask padding, pooling's mask check); those branches take
    # the same side for every padded batch, and the parity check on varied lengths proves the graph anyway.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(WholeScorer(model).eval(), tuple(sample[n] for n in names), str(path), input_names=names,
                          output_names=["scores"], dynamic_axes=axes, opset_version=opset, dynamo=False)
    return names


def optimize_onnx(src: Path, dst: Path, level: str, settings: dict[str, Any]) -> None:
    """onnxruntime's graph optimizations (and for O2/O3 its transformer fusions), saved as a portable graph."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if level not in settings:
        raise EttinError(f"recipes/export.yaml optimization: no level {level} (have {', '.join(settings)})")
    opts = settings[level]
    ort_level = {"basic": 1, "extended": 2}[opts.get("level", "basic")]
    options = FusionOptions("bert")
    options.enable_gelu_approximation = bool(opts.get("gelu_approximation", False))
    optimized = optimize_model(str(src), model_type="bert", optimization_options=options, opt_level=ort_level,
                               only_onnxruntime=not opts.get("transformer_fusions", False))
    optimized.save_model_to_file(str(dst))


def quantize_onnx(src: Path, dst: Path, isa: str, settings: dict[str, Any]) -> None:
    """Dynamic int8 quantization (weights int8 per the ISA's settings, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    per_isa = settings.get("isa", {}).get(isa)
    if per_isa is None:
        raise EttinError(f"--isa {isa}: no settings in recipes/export.yaml quantization.isa")
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=bool(per_isa["per_channel"]),
                     reduce_range=bool(per_isa["reduce_range"]), op_types_to_quantize=list(settings["op_types"]))


def openvino_from_onnx(src: Path, dst_xml: Path) -> None:
    """OpenVINO's converter reads the ONNX graph; the IR (.xml + .bin) keeps fp32 weights."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(src)), str(dst_xml), compress_to_fp16=False)


def openvino_int8(src_xml: Path, dst_xml: Path, model_dir: Path, pairs: Sequence[tuple[str, str]],
                  input_names: Sequence[str]) -> None:
    """Static int8 with NNCF's transformer preset, activations calibrated on (query, document) pairs."""
    import nncf
    import numpy as np
    import openvino as ov

    tokenizer = load_tokenizer(model_dir)

    def feeds(pair: tuple[str, str]) -> dict[str, Any]:
        enc = tokenizer.encode(pair[0], pair[1])
        cols = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
        return {n: np.asarray([cols[n]], dtype=np.int64) for n in input_names}

    model = ov.Core().read_model(str(src_xml))
    quantized = nncf.quantize(model, nncf.Dataset(list(pairs), feeds), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(pairs))
    ov.save_model(quantized, str(dst_xml), compress_to_fp16=False)


# ------------------------------------------------------------------------------------------- calibration
def calibration_pairs(model_dir: Path, spec: str | None, num_pairs: int, seed: int) -> tuple[list[tuple[str, str]],
                                                                                             str]:
    """(query, document) pairs for static quantization, and where they came from.

    `spec`: a BEIR folder, or a file/folder of pairs with query/document columns. Without it, the model's own
    training data as its `ettin_training.json` names it (local sources). Never single sentences.
    """
    record = None if spec else TrainingRecord.read(model_dir)
    sources = [spec] if spec else [str(d.get("source")) for d in (record.data if record else [])
                                   if isinstance(d, dict)]
    if spec and not Path(spec).exists():
        raise EttinError(f"--calibration {spec}: no such file or folder")
    sources = [s for s in sources if s and Path(s).exists()]
    if not sources:
        raise EttinError(f"{model_dir}: no calibration pairs for openvino-int8: ettin_training.json names no local "
                         "training data; pass --calibration (a BEIR folder or a query/document file)")
    pairs: list[tuple[str, str]] = []
    for source in sources:
        path = Path(source)
        if path.is_dir() and (path / "corpus.jsonl").is_file():

            pairs += bench_pairs(path, num_pairs, seed=seed)
            continue

        table = open_input(source, option="--calibration")
        table.require_columns("query", "document")
        for _, batch in table.iter_batches(columns=["query", "document"]):
            pairs += list(zip(batch.column("query").to_pylist(), batch.column("document").to_pylist(), strict=True))
    pairs = list(dict.fromkeys((str(q), str(d)) for q, d in pairs if q and d))
    random.Random(seed).shuffle(pairs)
    return pairs[:num_pairs], ", ".join(sources)


# ------------------------------------------------------------------------------------------- the run
def _timed(score: Callable[[], Any], pairs: int) -> tuple[Any, float]:
    start = time.perf_counter()
    scores = score()
    return scores, pairs / max(time.perf_counter() - start, 1e-9)


def run_export(config: ExportConfig) -> dict[str, Any]:
    """Export `config.formats`, check each against the PyTorch model, and write them only if all pass.

    Returns the parity record (also written as `onnx/parity.json` / `openvino/parity.json`). Raises
    `ParityError` (nothing written) when an export misses its bound.
    """
    formats = parse_formats(config.formats)
    require_export_libraries(formats)
    recipe = config.recipe or load_export_recipe()
    model_dir = Path(config.model)
    if not (model_dir / "modules.json").is_file() and not (model_dir / "config.json").is_file():
        raise EttinError(f"{model_dir}: not a model folder (no modules.json / config.json)")
    isa = config.isa or detect_isa()
    if isa not in ISAS:
        raise EttinError(f"--isa {isa}: choose from {', '.join(ISAS)}")
    out_dir = config.output_dir
    check_cfg = recipe["check"]
    check = load_check_set(config.check_data or DEMO_DATA, num_pairs=check_cfg["num_pairs"],
                           top_k=check_cfg["top_k"], max_queries=check_cfg["max_queries"],
                           split=check_cfg["split"], seed=check_cfg["seed"])
    calibration: list[tuple[str, str]] = []
    calibration_source = None
    if "openvino-int8" in formats:
        cal = recipe["calibration"]
        calibration, calibration_source = calibration_pairs(model_dir, config.calibration, cal["num_pairs"],
                                                            cal["seed"])
    batch = int(check_cfg["batch_size"])

    reference_model = load_reference(model_dir)
    ref_scores, ref_speed = _timed(lambda: reference_model.predict(check.pairs, batch_size=batch,
                                                                    show_progress_bar=False), len(check.pairs))
    ref_ndcg = ndcg_at_10(check, ref_scores)
    logger.info(f"PyTorch fp32 reference: {len(check.pairs)} pairs of {check.source}, {ref_speed:,.1f} pairs/s")

    out_dir.mkdir(parents=True, exist_ok=True)
    # absolute: ExportedCrossEncoder reads a relative file name as relative to the model folder (the Hub layout)
    tmp = Path(tempfile.mkdtemp(prefix=".ettin-export-", dir=out_dir)).resolve()
    try:
        (tmp / ONNX_DIR).mkdir()
        if any(f.startswith("openvino") for f in formats):
            (tmp / OPENVINO_DIR).mkdir()
        base = tmp / file_of("onnx", isa)
        input_names = export_onnx(reference_model, base, int(recipe["opset"]))
        rows: dict[str, dict[str, Any]] = {}
        for fmt in formats:
            rel = file_of(fmt, isa)
            path = tmp / rel
            if fmt.startswith("onnx-o"):
                optimize_onnx(base, path, f"O{fmt[-1]}", recipe["optimization"])
            elif fmt == "onnx-int8":
                quantize_onnx(base, path, isa, recipe["quantization"])
            elif fmt == "openvino":
                openvino_from_onnx(base, path)
            elif fmt == "openvino-int8":
                fp32_xml = tmp / file_of("openvino", isa)
                if not fp32_xml.is_file():
                    openvino_from_onnx(base, fp32_xml)
                openvino_int8(fp32_xml, path, model_dir, calibration, input_names)
            scorer = ExportedCrossEncoder(model_dir, path)
            scores, speed = _timed(lambda s=scorer: s.raw_scores(check.pairs, batch), len(check.pairs))
            figures = parity_figures(check, ref_scores, scores, reference_ndcg=ref_ndcg)
            kind = kind_of(fmt, recipe)
            bounds = recipe["bounds"][kind]
            violations = bound_violations(figures, bounds)
            rows[fmt] = {"file": rel, "kind": kind, "bounds": dict(bounds), "parity": figures,
                         "pairs_per_second": speed, "speedup": speed / ref_speed, "bytes": _size_of(path),
                         "passed": not violations, "violations": violations}
            drop = f", NDCG@10 drop {figures['ndcg_drop']:.4f}" if "ndcg_drop" in figures else ""
            logger.info(f"{fmt}: {rel} max|diff| {figures['max_abs_diff']:.2e}, Spearman {figures['spearman']:.5f}"
                        f"{drop}, "
                        f"{speed:,.1f} pairs/s ({'ok' if not violations else 'FAILS ' + '; '.join(violations)})")
        record = {"ettin_cli": __version__, "config": {**config.to_dict(), "formats": formats, "isa": isa},
                  "model": str(model_dir), "isa": isa, "opset": int(recipe["opset"]),
                  "inputs": input_names, "check_data": check.source, "check_pairs": len(check.pairs),
                  "calibration": calibration_source, "calibration_pairs": len(calibration) or None,
                  "reference": {"backend": "torch fp32", "pairs_per_second": ref_speed, "ndcg@10": ref_ndcg},
                  "exports": rows}
        failed = [(fmt, row) for fmt, row in rows.items() if not row["passed"]]
        if failed:
            fmt, row = failed[0]
            raise ParityError(f"{fmt} ({row['file']}) misses its parity bound: {row['violations'][0]} "
                              f"on {len(check.pairs)} pairs of {check.source}; nothing was written")
        _move_into_place(tmp, out_dir, formats, isa, record)
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _size_of(path: Path) -> int:
    """Bytes of an exported model: the graph and, for OpenVINO, its weights file."""
    size = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        size += path.with_suffix(".bin").stat().st_size
    return size


def _move_into_place(tmp: Path, out_dir: Path, formats: Sequence[str], isa: str, record: dict[str, Any]) -> None:
    """Rename each checked file (and an OpenVINO .bin) into the model folder; then each folder's parity.json."""
    for fmt in formats:
        rel = Path(file_of(fmt, isa))
        parts = [rel] + ([rel.with_suffix(".bin")] if rel.suffix == ".xml" else [])
        for part in sorted(parts, key=lambda p: p.suffix == ".xml"):  # the .xml last: it is what loaders look for
            (out_dir / part.parent).mkdir(parents=True, exist_ok=True)
            os.replace(tmp / part, out_dir / part)
    for folder in (ONNX_DIR, OPENVINO_DIR):
        rows = {f: row for f, row in record["exports"].items() if row["file"].startswith(folder + "/")}
        if rows:
            # Files exported by an earlier run and not redone now keep their rows.
            earlier = read_parity(out_dir / folder)
            rows = {**{f: r for f, r in earlier.get("exports", {}).items() if (out_dir / r["file"]).is_file()},
                    **rows}
            write_json_atomic(out_dir / folder / PARITY_FILE, {**record, "exports": rows})


def apply_bound_overrides(recipe: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`KIND.BOUND=VALUE` (e.g. `int8.min_spearman=0.995`) over the recipe's bounds; a copy is returned."""
    import copy

    out = copy.deepcopy(recipe)
    for text in overrides:
        key, sep, value = text.partition("=")
        kind, dot, bound = key.strip().partition(".")
        if not sep or not dot or kind not in out.get("bounds", {}):
            raise EttinError(f"--bound {text}: expected KIND.BOUND=VALUE with KIND one of "
                             f"{', '.join(out.get('bounds', {}))} (e.g. int8.min_spearman=0.995)")
        try:
            out["bounds"][kind][bound] = float(value)
        except ValueError:
            raise EttinError(f"--bound {text}: {value!r} is not a number") from None
    return out


def resolve_model(model: str, output: str | None) -> str:
    """A local model folder as is; a Hub id downloaded to the Hub cache (then --output is required)."""

    source = resolve_source(model, option="MODEL", offline_hint="MODEL as a local model folder")
    if source.is_local:
        return str(source.path)
    if output is None:
        raise EttinError(f"MODEL {model}: a Hub model needs --output DIR (the files are not written into the cache)")
    from huggingface_hub import snapshot_download

    return snapshot_download(model)
