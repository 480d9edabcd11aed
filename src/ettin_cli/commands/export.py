"""`ettin export`: ONNX / OpenVINO files of a reranker, quantized, proven equal, in Sentence Transformers' layout."""

from __future__ import annotations

import typer

HELP = (
    "Export a reranker to ONNX and OpenVINO files, quantized and proven equal to the PyTorch model.\n\n"
    "The whole scorer (encoder, pooling and head, raw score out) is one graph, in the files Sentence "
    "Transformers loads from a model repo: onnx/model.onnx, onnx/model_O3.onnx, "
    "onnx/model_qint8_<isa>.onnx, openvino/openvino_model.xml, openvino/openvino_model_qint8_quantized.xml.\n\n"
    "Each file is scored on held-out pairs beside the PyTorch fp32 model (--check-data: a BEIR folder's BM25 "
    "top-k, or a query/document file; default: the bundled demo collection's test queries): max |score diff|, "
    "Spearman and, on a BEIR folder, NDCG@10 of both. Bounds are in recipes/export.yaml (fp32: max |diff| <= "
    "1e-4; int8: Spearman >= 0.99 and NDCG@10 within 0.005). Files are written only when every export is within "
    "its bounds; otherwise nothing is written and the command exits 1 naming the figure. The parity table is "
    "printed and saved as onnx/parity.json and openvino/parity.json; `ettin push` uploads and cards them.\n\n"
    "int8 ONNX is onnxruntime's dynamic quantization for the CPU's instruction set (--isa, read from the CPU "
    "by default); int8 OpenVINO is NNCF static quantization calibrated on (query, document) pairs: --calibration, "
    "else the model's own training data named in ettin_training.json. Load the files without torch with "
    "`ettin_cli.label.exported.ExportedCrossEncoder(MODEL_DIR, 'onnx/model.onnx').rank(query, documents)`.\n\n"
    "Examples:\n\n"
    "  ettin export runs/17m/final\n\n"
    "  ettin export runs/17m/final --formats onnx,onnx-int8 --check-data ../shared/data/cranfield\n\n"
    "  ettin export runs/demo/student/final --calibration runs/demo/scored --output exported/demo\n\n"
    "  ettin export runs/17m/final --formats onnx-int8 --isa avx512_vnni --bound int8.min_spearman=0.995\n\n"
    "  ettin export my-org/ettin-reranker-17m-v1 --output exported/17m --check-data pairs.parquet"
)


def register(app: typer.Typer) -> None:
    app.command(name="export", help=HELP)(export_command)


def export_command(
    model: str = typer.Argument(..., metavar="MODEL", help="A CrossEncoder folder (e.g. ettin train's OUT/final) "
                                "or a Hub id."),
    output: str | None = typer.Option(None, "--output", "-o", help="Folder to write onnx/ and openvino/ into "
                                      "(default: the model folder itself)."),
    formats: str = typer.Option("onnx,onnx-o3,onnx-int8,openvino,openvino-int8", "--formats",
                                help="Comma-separated: onnx, onnx-o1, onnx-o2, onnx-o3, onnx-int8, openvino, "
                                "openvino-int8."),
    calibration: str | None = typer.Option(None, "--calibration", help="Pairs to calibrate openvino-int8 on: a "
                                           "BEIR folder or a file/folder with query and document columns "
                                           "(default: the model's training data)."),
    check_data: str | None = typer.Option(None, "--check-data", help="Held-out pairs for the parity check: a "
                                          "BEIR folder or a query/document file (default: the demo collection)."),
    isa: str | None = typer.Option(None, "--isa", help="int8 ONNX target: avx512_vnni, avx512, avx2, arm64 "
                                   "(default: this CPU's)."),
    bounds: list[str] = typer.Option([], "--bound", help="Override a recipe bound, KIND.BOUND=VALUE "
                                     "(e.g. fp32.max_abs_diff=1e-5). Repeatable."),
    recipe: str | None = typer.Option(None, "--recipe", help="An export recipe YAML instead of "
                                      "recipes/export.yaml."),
) -> None:
    import sys

    from ettin_cli.core.console import logger
    from ettin_cli.measure.parity import parity_table
    from ettin_cli.publish.export import (
        ExportConfig,
        apply_bound_overrides,
        load_export_recipe,
        parse_formats,
        require_export_libraries,
        resolve_model,
        run_export,
    )

    chosen = parse_formats(formats)
    require_export_libraries(chosen)
    settings = apply_bound_overrides(load_export_recipe(recipe), bounds)
    config = ExportConfig(model=resolve_model(model, output), output=output, formats=chosen, isa=isa,
                          calibration=calibration, check_data=check_data, recipe=settings)
    record = run_export(config)
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 160).print(parity_table(record["exports"]))
    logger.info(f"wrote {', '.join(row['file'] for row in record['exports'].values())} into {config.output_dir} "
                f"(PyTorch fp32: {record['reference']['pairs_per_second']:,.1f} pairs/s on the check pairs)")
