"""`ettin select`: cut teacher-scored candidates to the training rows of each query (256 kept, 64 trained on)."""

from __future__ import annotations

import json

import typer

from ettin_cli.commands import options

HELP = (
    "Select training pairs per query from teacher-scored candidates (the output of `ettin score` on "
    "`ettin mine` rows), in two cuts:\n\n"
    "1. keep --keep (256): every positive, the --hard (16) highest-scored others, and the rest stratified "
    "across teacher-score quantiles;\n\n"
    "2. of those, train on --head (32) from the top of the teacher's ranking (positives first) plus "
    "--band-count (32) sampled from the rank band --band START:END (0-based ranks among the kept candidates, "
    "END excluded).\n\n"
    "Rows of a query must be contiguous (as mine writes them). Output rows keep every input column and add "
    "teacher_rank (1 = best of the query's candidates) and selected_by (positive, head, band, fill). A query "
    "with fewer candidates keeps what it has; such queries are counted in the manifest. Deterministic for a "
    "--seed whatever the sharding; reruns skip finished shards. Defaults come from recipes/data.yaml "
    "(selection).\n\n"
    "Examples:\n\n"
    "  ettin select scored/cranfield --output selected/cranfield\n\n"
    "  ettin select scored/msmarco --output selected/msmarco --keep 256 --hard 16 --head 32 --band-count 32 "
    "--band 64:192 --seed 12\n\n"
    "  ettin select scored.parquet --output sel --positive-column label --score-column teacher_score"
)


def register(app: typer.Typer) -> None:
    app.command(name="select", help=HELP)(select)


def select(
    scored: str = typer.Argument(..., metavar="SCORED", help="`ettin score` output folder, or parquet file(s)."),
    output: str = typer.Option(..., "--output", "-o", help="Output folder (sharded parquet + manifest.json)."),
    keep: int | None = typer.Option(None, "--keep", help="Candidates kept per query by cut 1 (default 256)."),
    hard: int | None = typer.Option(None, "--hard", help="Highest-scored non-positives always kept (default 16)."),
    per_query: int | None = typer.Option(None, "--per-query", help="Training rows per query; must equal "
                                         "--head + --band-count (default 64)."),
    head: int | None = typer.Option(None, "--head", help="Rows from the top of the teacher ranking (default 32)."),
    band_count: int | None = typer.Option(None, "--band-count", help="Rows sampled from the band (default 32)."),
    band: str | None = typer.Option(None, "--band", help="START:END teacher ranks among the kept candidates."),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed (default: recipe, 12)."),
    query_id_column: str = typer.Option("query_id", "--query-id-column", help="Query id column."),
    score_column: str = typer.Option("score", "--score-column", help="Teacher score column."),
    positive_column: str | None = typer.Option(None, "--positive-column",
                                               help="Boolean/grade column marking positives (default: "
                                               "is_positive when present)."),
    recipe: str | None = typer.Option(None, "--recipe", help="Data recipe (default: recipes/data.yaml)."),
    overwrite: options.Overwrite = False,
    verify: options.Verify = False,
    num_shards: options.NumShards = None,
    shard_index: options.ShardIndex = None,
) -> None:
    from ettin_cli.core.console import logger
    from ettin_cli.core.errors import EttinError
    from ettin_cli.core.recipes import load_data_recipe, recipe_section
    from ettin_cli.data import selection
    from ettin_cli.io.kinds import MINED, SCORED, require_kind

    # A score column of another name (--score-column) is not recognised as scored: then any pairs folder goes.
    require_kind(scored, SCORED, "SCORED", accepted={SCORED} if score_column == "score" else {SCORED, MINED})

    data, where = load_data_recipe(recipe)
    config = selection.SelectionConfig.from_recipe(recipe_section(data, "selection", where), where, keep=keep,
                                                   hard=hard, head=head, band_count=band_count, band=band, seed=seed)
    if per_query is not None and per_query != config.per_query:
        raise EttinError(f"--per-query {per_query} must equal --head {config.head} + --band-count "
                         f"{config.band_count} = {config.per_query}")
    config.validate()
    columns = selection.Columns(query_id=query_id_column, score=score_column,
                                positive=positive_column or "is_positive",
                                positive_required=positive_column is not None)
    summary = selection.select(scored, output, config, columns, overwrite=overwrite, verify=verify,
                               num_shards=num_shards, shard_index=shard_index)
    if summary.get("queries"):
        logger.info("select: " + selection.short_summary(summary))
    typer.echo(json.dumps(summary, indent=2, sort_keys=True))
