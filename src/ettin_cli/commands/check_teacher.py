"""`ettin check-teacher`: the teacher vs the retriever alone on dev queries, before a single pair is scored."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = (
    "Check that the teacher reranks better than the retriever alone, on dev queries, before scoring with it.\n\n"
    "Reranks the retriever's top-k of every dev query with the teacher and prints both mean NDCG@10 values "
    "and their margin. Below --min-margin (recipes/data.yaml, teacher_check: 0.01) it warns loudly and exits 2 "
    "unless --allow-weak-teacher: a student learns the teacher's order at best, so a teacher that does not beat "
    "the retriever cannot give a student that does. Reads the dev split (qrels/dev.tsv, from `ettin split`), "
    "never test. With --output, writes OUTPUT/teacher_check.json (when the check passes or is allowed) and "
    "`ettin eval`'s eval.json, eval.png and runs/.\n\n"
    "Examples:\n\n"
    "  ettin check-teacher mixedbread-ai/mxbai-rerank-large-v2 --data nanobeir --output work/teacher-check\n\n"
    "  ettin check-teacher ~/minilm --format bi-encoder --data runs/byo/cranfield --split dev --top-k 30\n\n"
    "  ettin check-teacher teacher/ --data my-split --min-margin 0.02 --allow-weak-teacher"
)


def register(app: typer.Typer) -> None:
    app.command(name="check-teacher", help=HELP)(check_teacher)


def check_teacher(
    teacher: str = typer.Argument(..., metavar="TEACHER", help="The teacher: a folder or Hub id (any score format)."),
    data: list[str] = typer.Option(..., "--data", "-d", help="BEIR folder(s) with the dev split, or 'nanobeir'. "
                                   "Repeatable."),
    split: str = typer.Option("dev", "--split", help="Qrels split of BEIR folders (qrels/SPLIT.tsv); not test."),
    teacher_format: str = typer.Option("auto", "--format", help="auto, mxbai-v2, qwen3-reranker, cross-encoder, "
                                       "bi-encoder or a judge format .yaml."),
    retriever: str = typer.Option("bm25", "--retriever", help="First stage: bm25 or a bi-encoder."),
    top_k: int | None = typer.Option(None, "--top-k", "-k", help="Candidates per query (default: recipe, 100)."),
    min_margin: float | None = typer.Option(None, "--min-margin", help="NDCG@10 the teacher must add over the "
                                            "retriever (default: recipe, 0.01)."),
    max_queries: int | None = typer.Option(None, "--max-queries", help="Only the first N judged queries per set."),
    allow_weak_teacher: bool = typer.Option(False, "--allow-weak-teacher", help="Warn but exit 0 below the margin."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Folder for teacher_check.json and the eval "
                                       "report."),
    recipe: str | None = typer.Option(None, "--recipe", help="Data recipe (default: recipes/data.yaml)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Pairs per forward pass."),
) -> None:
    from ettin_cli.core.errors import EttinError
    from ettin_cli.core.files import write_json_atomic
    from ettin_cli.core.recipes import read_yaml, recipes_dir
    from ettin_cli.measure.teacher_check import check_teacher as run_check
    from ettin_cli.measure.teacher_check import enforce

    where = recipe or str(recipes_dir() / "data.yaml")
    defaults = read_yaml(where).get("teacher_check") or {}
    margin = min_margin if min_margin is not None else defaults.get("min_margin")
    k = top_k if top_k is not None else defaults.get("top_k", 100)
    if margin is None or isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise EttinError(f"{where}: teacher_check.min_margin must be a number (or give --min-margin)")
    check = run_check(teacher, data, min_margin=float(margin), teacher_format=teacher_format, split=split,
                      top_k=int(k), retriever=retriever, max_queries=max_queries, output_dir=output,
                      device=device, dtype=dtype, batch_size=batch_size)
    typer.echo(check.summary())
    enforce(check, allow_weak=allow_weak_teacher)
    if output is not None:
        write_json_atomic(output / "teacher_check.json", check.to_dict())
