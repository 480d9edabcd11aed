"""`ettin eval`: rerank a first stage's top-k with one or more models; NDCG@10, MRR@10, Recall@k side by side."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = (
    "Rerank the retriever's top-k for every query and compare models in one table.\n\n"
    'Reports NDCG@10, MRR@10 and Recall@k (ir-measures) per dataset and the mean, for every MODEL and for'
    ' the retriever alone (the line a reranker must beat). MODEL is a student folder, a Hub id, or a '
    'teacher in any score format (mxbai-v2, qwen3-reranker, a judge .yaml, cross-encoder, bi-encoder), so '
    'a teacher and its students '
    'compare in one table. Writes OUTPUT/eval.json (every number), OUTPUT/eval.png and TREC run files '
    'under OUTPUT/runs/.\n\n'
    'Examples:\n\n'
    '  ettin eval out/17m/final --data ../shared/data/cranfield\n\n'
    '  ettin eval mixedbread-ai/mxbai-rerank-large-v2 out/17m/final out/150m/final --data nanobeir\n\n'
    '  ettin eval teacher/ student/ --format mxbai-v2 --format cross-encoder --data beir/ --top-k 100\n\n'
    '  ettin eval out/17m/final --data beir/scifact --retriever sentence-transformers/all-MiniLM-L6-v2\n\n'
    '  ettin eval Qwen/Qwen3-Reranker-4B out/17m/final --data nanobeir --instruction "Given a question, '
    'retrieve passages that answer it"\n\n'
    '  ettin eval teacher/ runs/17m/final --data beir/scifact --reference 1   # MSE/Spearman to the teacher\n\n'
    'With --benchmark instead of --data, the `mteb` library runs the two-stage evaluation of the release '
    '(the mteb extra: pip install mteb): each --retriever (an embedder, or a folder of mteb predictions) '
    'retrieves once, every MODEL reranks its top-k, and mteb computes NDCG@10. Results go to OUTPUT in mteb\'s '
    'own layout (one result cache per retriever), with OUTPUT/mteb_eval.json, OUTPUT/mteb_eval.png and a table '
    'per retriever whose last columns are the release\'s published number and the difference. A rerun skips '
    'what is done. See docs/mteb.md.\n\n'
    '  ettin eval runs/17m/final --benchmark "MTEB(eng, v2)" --retriever google/embeddinggemma-300m\n\n'
    '  ettin eval runs/17m/final --benchmark ArguAna,SCIDOCS --retriever BAAI/bge-small-en-v1.5 --max-queries 50\n\n'
    '  ettin eval runs/17m/final --benchmark ../shared/data/cranfield --retriever minilm/ --top-k 20\n'
)


def register(app: typer.Typer) -> None:
    app.command(name="eval", help=HELP)(eval_command)


def eval_command(
    models: list[str] = typer.Argument(..., metavar="MODEL...", help="Models to compare: folders or Hub ids."),
    data: list[str] = typer.Option(None, "--data", "-d", help="A BEIR folder, a folder of BEIR folders, or "
                                   "'nanobeir' / 'nanobeir:msmarco,nq' (Hub). Repeatable."),
    benchmark: str | None = typer.Option(None, "--benchmark", help="Evaluate through mteb instead of --data: a "
                                         "benchmark name (\"MTEB(eng, v2)\": its 10 retrieval tasks), NanoBEIR, "
                                         "mteb task names (ArguAna,SCIDOCS), or a PATH to a BEIR folder."),
    retrievers: list[str] = typer.Option(None, "--retriever", help="First stage: 'bm25' or a bi-encoder "
                                         "(Sentence Transformers folder or Hub id). With --benchmark: an embedder "
                                         "or a folder of mteb predictions, repeatable; none on \"MTEB(eng, v2)\": the "
                                         "release's six."),
    tasks: str | None = typer.Option(None, "--tasks", help="With --benchmark: only these of its tasks "
                                     "(comma-separated mteb names)."),
    top_k: int = typer.Option(100, "--top-k", "-k", help="Candidates per query to rerank (100 in every "
                              "published figure)."),
    formats: list[str] = typer.Option(["auto"], "--format", help="Score format: auto, mxbai-v2, qwen3-reranker, "
                                      "cross-encoder, bi-encoder or a judge format .yaml file. Once for all "
                                      "models, or once per model in order."),
    instruction: str | None = typer.Option(None, "--instruction", help="Judge formats only (mxbai-v2, "
                                           "qwen3-reranker, .yaml): replaces the format's default instruction."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output folder for eval.json, eval.png "
                                       "and runs/ (default eval/); with --benchmark for mteb's results "
                                       "(default eval-mteb/)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Pairs per forward pass (default: a "
                                          "token budget per batch)."),
    max_length: int | None = typer.Option(None, "--max-length", help="Token cap per pair (default: the "
                                          "model's own)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    attn: str = typer.Option("auto", "--attn", help="auto, sdpa, eager or flash_attention_2."),
    reference: int | None = typer.Option(None, "--reference", help="Position (1-based) of the model the "
                                         "others are compared to, usually the teacher: adds MSE and Spearman "
                                         "of their scores against it on the same candidates."),
    max_queries: int | None = typer.Option(None, "--max-queries", help="Only the first N judged queries of "
                                           "each dataset (a quicker, rougher look)."),
    split: str = typer.Option("test", "--split", help="Qrels split of BEIR folders (qrels/SPLIT.tsv): test "
                              "reports; dev is what training's --eval-split picks checkpoints on."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of tables."),
) -> None:
    import json

    from ettin_cli.core.console import logger
    from ettin_cli.core.errors import EttinError
    from ettin_cli.measure.evaluation import compare_models, report_tables

    if batch_size is not None and batch_size < 1:
        raise EttinError(f"--batch-size must be at least 1, got {batch_size}")
    if max_length is not None and max_length < 8:
        raise EttinError(f"--max-length must be at least 8, got {max_length}")
    if benchmark is not None:
        if data:
            raise EttinError("give either --data (ettin's own evaluation) or --benchmark (mteb's), not both")
        if reference is not None:
            raise EttinError("--reference applies to --data evaluations, not --benchmark")
        _benchmark(models, benchmark, retrievers or [], tasks, top_k, max_queries, formats, output or Path("eval-mteb"),
                   device, dtype, attn, max_length, batch_size, instruction, as_json)
        return
    if not data:
        raise EttinError("give --data (a BEIR folder or nanobeir) or --benchmark (an mteb benchmark or a BEIR folder)")
    if tasks is not None:
        raise EttinError("--tasks applies to --benchmark evaluations; with --data name the folders instead")
    if retrievers and len(retrievers) > 1:
        raise EttinError("--data evaluations take one --retriever; several are for --benchmark")
    retriever = retrievers[0] if retrievers else "bm25"
    output = output or Path("eval")
    report = compare_models(models, data, formats=formats, retriever=retriever, top_k=top_k, output_dir=output,
                            device=device, dtype=dtype, attn=attn, max_length=max_length, batch_size=batch_size,
                            reference=reference, max_queries=max_queries,
                            instruction=instruction, split=split)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print(report_tables(report))
    logger.info("wrote %s and %s", output / "eval.json", output / "eval.png")


def _print(tables: list) -> None:
    import sys

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    for table in tables:
        console.print(table)


def _benchmark(models: list[str], benchmark: str, retrievers: list[str], tasks: str | None, top_k: int,
               max_queries: int | None, formats: list[str], output: Path, device: str, dtype: str, attn: str,
               max_length: int | None, batch_size: int | None, instruction: str | None, as_json: bool) -> None:
    import json

    from ettin_cli.core.console import logger
    from ettin_cli.measure.mteb_eval import MtebEvalConfig, evaluate_mteb
    from ettin_cli.measure.mteb_report import report_tables

    config = MtebEvalConfig(models=list(models), benchmark=benchmark, retrievers=list(retrievers),
                            tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
                            top_k=top_k, max_queries=max_queries, formats=list(formats), output=str(output),
                            device=device, dtype=dtype, attn=attn, max_length=max_length, batch_size=batch_size,
                            instruction=instruction)
    report = evaluate_mteb(config)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        _print(report_tables(report))
    logger.info("wrote %s and %s", output / "mteb_eval.json", output / "mteb_eval.png")
