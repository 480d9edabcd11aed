"""`ettin bench`: pairs/second and peak memory per model and precision/attention setting."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = (
    'Measure inference throughput (pairs/s) the way the published tables do.\n\n'
    'Pairs of real text cut at each model\'s own max length (as loaded; --max-length overrides it), with their '
    'token-length distribution printed (median, p90, p99, max, how many are cut); batch size doubled from 8 '
    'until out of memory (GPU) or until throughput stops rising / the memory limit is hit (CPU); three timed '
    'passes, median kept; '
    'peak memory (GPU allocator peak, or peak RSS on CPU). --ablation times fp32+SDPA, bf16+SDPA, '
    'bf16+FA2 padded and bf16+FA2 unpadded; settings the hardware cannot run are listed with the reason. '
    'Prints a table and writes OUTPUT/bench.json and OUTPUT/bench.png.\n\n'
    'Examples:\n\n'
    '  ettin bench out/17m/final out/150m/final\n\n'
    '  ettin bench Qwen/Qwen3-Reranker-4B --num-pairs 512   # qwen3-reranker, detected\n\n'
    '  ettin bench out/17m/final --ablation --data nanobeir:nq\n\n'
    '  ettin bench mixedbread-ai/mxbai-rerank-large-v2 --format mxbai-v2 --num-pairs 1024\n\n'
    '  ettin bench out/17m/final --data ../shared/data/cranfield --device cpu --max-batch-size 64\n\n'
    '  ettin bench out/17m/final --dtype float32 --dtype bfloat16 --attn sdpa --padding both\n\n'
    '  ettin bench out/17m/final --backend torch,onnx,onnx-int8,openvino,openvino-int8   # after ettin export\n\n'
    'With --backend, each backend of an `ettin export`ed folder (PyTorch fp32, then its ONNX / OpenVINO files) is '
    'timed on the same pairs on CPU, with peak RSS, the speed-up over PyTorch and the parity of its scores to '
    'PyTorch on those pairs (max |diff|, Spearman; NDCG@10 change from the export\'s check).\n'
)


def register(app: typer.Typer) -> None:
    app.command(name="bench", help=HELP)(bench_command)


def bench_command(
    models: list[str] = typer.Argument(..., metavar="MODEL...", help="Models to time: folders or Hub ids."),
    data: str = typer.Option("nanobeir:nq", "--data", "-d", help="Pairs from: a BEIR folder, a .parquet/.jsonl "
                             "file with query/document columns, or nanobeir:NAME (Hub)."),
    num_pairs: int = typer.Option(4096, "--num-pairs", "-n", help="Pairs per timed pass (lower it for big "
                                  "models on CPU)."),
    max_length: int | None = typer.Option(None, "--max-length", help="Token cap per pair (default: each model's "
                                          "own max length, as loaded)."),
    formats: list[str] = typer.Option(["auto"], "--format", help="auto, mxbai-v2, qwen3-reranker, cross-encoder, "
                                      "bi-encoder or a judge format .yaml file; once for all models or once "
                                      "per model."),
    instruction: str | None = typer.Option(None, "--instruction", help="Judge formats only: replaces the "
                                           "format's default instruction (its tokens are part of the cost)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    dtypes: list[str] = typer.Option(["auto"], "--dtype", help="auto, float32, bfloat16, float16. Repeatable "
                                     "(a sweep)."),
    attns: list[str] = typer.Option(["auto"], "--attn", help="auto, sdpa, eager, flash_attention_2. Repeatable "
                                    "(a sweep)."),
    padding: str = typer.Option("auto", "--padding", help="auto (unpadded exactly under FA2), padded, unpadded "
                                "or both."),
    ablation: bool = typer.Option(False, "--ablation", help="The published sweep: fp32+SDPA, bf16+SDPA, "
                                  "bf16+FA2 padded, bf16+FA2 unpadded (overrides --dtype/--attn/--padding)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Fix the batch size (no search)."),
    start_batch: int = typer.Option(8, "--start-batch-size", help="First batch size of the doubling search."),
    max_batch: int | None = typer.Option(None, "--max-batch-size", help="Stop the doubling search here."),
    memory_limit_gb: float | None = typer.Option(None, "--memory-limit-gb", help="CPU: stop the search when "
                                                 "peak RSS passes this (default 80% of RAM)."),
    passes: int = typer.Option(3, "--passes", help="Timed passes; the median is kept."),
    seed: int = typer.Option(0, "--seed", help="Seed of the pair sample."),
    output: Path = typer.Option(Path("bench"), "--output", "-o", help="Output folder for bench.json and "
                                "bench.png."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the table."),
    backend: str | None = typer.Option(None, "--backend", help="Compare runtimes of exported models (CPU): "
                                       "comma-separated torch, onnx, onnx-o1..onnx-o3, onnx-int8, openvino, "
                                       "openvino-int8."),
) -> None:
    import json
    import sys

    from ettin_cli.core.console import logger
    from ettin_cli.core.errors import EttinError
    from ettin_cli.core.hardware import resolve_device
    from ettin_cli.measure.bench import (
        bench_pairs,
        bench_table,
        default_memory_limit,
        lengths_table,
        run_bench,
        write_bench,
    )
    from ettin_cli.measure.settings import plan_settings

    if batch_size is not None and batch_size < 1:
        raise EttinError(f"--batch-size must be at least 1, got {batch_size}")
    if max_batch is not None and max_batch < start_batch:
        raise EttinError(f"--max-batch-size ({max_batch}) is below --start-batch-size ({start_batch})")
    if memory_limit_gb is not None and memory_limit_gb <= 0:
        raise EttinError(f"--memory-limit-gb must be positive, got {memory_limit_gb}")
    if backend is not None:
        _bench_backends(models, backend, data, num_pairs, seed, passes, start_batch, max_batch, memory_limit_gb,
                        batch_size, max_length, output, as_json)
        return
    dev = resolve_device(device)
    settings = plan_settings(dev, dtypes, attns, padding, ablation)
    pairs = bench_pairs(data, num_pairs, seed=seed)
    limit = int(memory_limit_gb * 2**30) if memory_limit_gb is not None else default_memory_limit()
    report = run_bench(models, pairs, settings, formats=formats, device=dev, max_length=max_length, passes=passes,
                       start_batch=start_batch, max_batch=max_batch, memory_limit=limit, batch_size=batch_size,
                       instruction=instruction)
    report["data"] = data
    report["seed"] = seed
    json_path, png_path = write_bench(report, output)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        from rich.console import Console

        out = Console(width=None if sys.stdout.isatty() else 160)
        out.print(lengths_table(report))
        out.print(bench_table(report))
    logger.info("wrote %s%s", json_path, f" and {png_path}" if png_path else "")


def _bench_backends(models: list[str], backend: str, data: str, num_pairs: int, seed: int, passes: int,
                    start_batch: int, max_batch: int | None, memory_limit_gb: float | None, batch_size: int | None,
                    max_length: int | None, output: Path, as_json: bool) -> None:
    """`--backend`: PyTorch vs the exported files of each model, on the same pairs (measure/backends.py)."""
    import json
    import sys

    from ettin_cli.core.console import logger
    from ettin_cli.measure.backends import backend_table, parse_backends, run_backend_bench, write_backend_bench
    from ettin_cli.measure.bench import bench_pairs, default_memory_limit

    chosen = parse_backends(backend)
    pairs = bench_pairs(data, num_pairs, seed=seed)
    limit = int(memory_limit_gb * 2**30) if memory_limit_gb is not None else default_memory_limit()
    report = run_backend_bench(models, pairs, chosen, passes=passes, start_batch=start_batch, max_batch=max_batch,
                               memory_limit=limit, batch_size=batch_size, max_length=max_length)
    report.update({"data": data, "seed": seed})
    path = write_backend_bench(report, output)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        from rich.console import Console

        Console(width=None if sys.stdout.isatty() else 200).print(backend_table(report))
    logger.info("wrote %s", path)
