"""`ettin mix`: the whole training mix from recipes/data.yaml, one folder per subset, plus the held-out split."""

from __future__ import annotations

import typer

from ettin_cli.commands import options

HELP = (
    "Build the training mix described in recipes/data.yaml: the 32 pre-training and 7 retrieval subsets, each "
    "capped to its `cap` rows (a seeded random sample), written to OUT/<subset>/ so provenance stays visible, "
    "plus OUT/validation/ (the last 5,000 rows of quora, never in training: also any training row equal to a "
    "validation pair is dropped) and OUT/summary.json with rows per subset.\n\n"
    "A source is a Hub dataset (hub id + config + split from the recipe, streamed) or a local parquet/jsonl/"
    "csv file or folder given with --source NAME=PATH or found as --sources-dir/NAME. The retrieval subsets "
    "need the output of `ettin select` (--source rerank_nq=selected/rerank_nq); leave any subset out with --skip "
    "or build a few with --only. Reruns skip finished subsets and shards. --list shows the sources and exits.\n\n"
    "Examples:\n\n"
    "  ettin mix --list\n\n"
    "  ettin mix --output mix --sources-dir local_sources --only quora,agnews,msmarco\n\n"
    "  ettin mix --output mix --source rerank_nq=selected/rerank_nq --cap agnews=1000000 --skip rerank_trivia\n\n"
    "  ettin mix --recipe my_data.yaml --output mix"
)


def register(app: typer.Typer) -> None:
    app.command(name="mix", help=HELP)(mix)


def _split(values: list[str]) -> list[str]:
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def mix(
    output: str | None = typer.Option(None, "--output", "-o", help="Output folder: one sub-folder per subset."),
    source: list[str] = typer.Option([], "--source", help="NAME=PATH: read subset NAME from a local file/folder."),
    sources_dir: str | None = typer.Option(None, "--sources-dir", help="Folder holding NAME, NAME.parquet or "
                                           "NAME.jsonl or NAME.csv for any subset."),
    cap: list[str] = typer.Option([], "--cap", help="NAME=N: cap subset NAME at N rows (NAME=none: no cap)."),
    only: list[str] = typer.Option([], "--only", help="Build only these subsets (comma-separated or repeated)."),
    skip: list[str] = typer.Option([], "--skip", help="Leave these subsets out (comma-separated or repeated)."),
    validation_rows: int | None = typer.Option(None, "--validation-rows", help="Held-out rows from the tail of "
                                               "the validation source (default: recipe, 5000; 0: none)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the capped samples (default: recipe, 12)."),
    recipe: str | None = typer.Option(None, "--recipe", help="Data recipe (default: recipes/data.yaml)."),
    list_only: bool = typer.Option(False, "--list", help="Print the sources, their origin and cap; build nothing."),
    overwrite: options.Overwrite = False,
    verify: options.Verify = False,
) -> None:
    from ettin_cli.core.errors import EttinError
    from ettin_cli.core.recipes import load_data_recipe
    from ettin_cli.data import mixing

    data, where = load_data_recipe(recipe)
    plan = mixing.load_plan(data, where)
    plan = mixing.apply_options(plan, overrides=mixing.parse_assignments(source, "--source"),
                                caps=mixing.parse_assignments(cap, "--cap"), sources_dir=sources_dir,
                                only=_split(only), skip=_split(skip))
    if validation_rows is not None:
        if validation_rows < 0:
            raise EttinError(f"--validation-rows must be zero or a positive integer, got {validation_rows}")
        plan.validation_rows = validation_rows
    if seed is not None:
        plan.seed = seed
    if list_only:
        mixing.print_sources(plan)
        return
    if output is None:
        raise EttinError("--output is required (or --list to only show the sources)")
    reports = mixing.build_mix(plan, output, overwrite=overwrite, verify=verify)
    mixing.print_summary(reports)
