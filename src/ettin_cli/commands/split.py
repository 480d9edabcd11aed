"""`ettin split`: train/dev/test qrels by query for a BEIR folder, sized to the collection."""

from __future__ import annotations

import typer

HELP = (
    "Split a BEIR folder's judged queries into train, dev and test (by query: no query is in two splits), "
    "writing a working copy: OUTPUT/corpus.jsonl and queries.jsonl (hard links or copies), "
    "OUTPUT/qrels/{train,dev,test}.tsv and OUTPUT/split.json.\n\n"
    "Sizes adapt to the collection: --dev and --test are fractions of the judged queries, raised to "
    "--min-dev / --min-test; train is the rest and must hold --min-train, or the command refuses in one line "
    "and writes nothing. The draw is seeded (same input + options = same output). Defaults come from "
    "recipes/data.yaml (split). Then: `ettin mine --split train`, training's checkpoint on "
    "`--eval-split dev`, the report with `ettin eval --split test`.\n\n"
    "Examples:\n\n"
    "  ettin split ../shared/data/cranfield --output runs/byo/cranfield\n\n"
    "  ettin split my-collection --output work/my-split --dev 0.15 --test 0.25 --min-test 20 --seed 7\n\n"
    "  ettin split beir/scifact --from test --output work/scifact-split"
)


def register(app: typer.Typer) -> None:
    app.command(name="split", help=HELP)(split)


def split(
    collection: str = typer.Argument(..., metavar="COLLECTION", help="A BEIR folder (corpus.jsonl, "
                                     "queries.jsonl, qrels/SOURCE.tsv)."),
    output: str = typer.Option(..., "--output", "-o", help="The working copy to write (a new folder)."),
    source: str | None = typer.Option(None, "--from", help="The qrels file to split: qrels/SOURCE.tsv "
                                      "(default: recipe, test)."),
    dev: float | None = typer.Option(None, "--dev", help="Fraction of judged queries for dev (default 0.1)."),
    test: float | None = typer.Option(None, "--test", help="Fraction of judged queries for test (default 0.2)."),
    min_train: int | None = typer.Option(None, "--min-train", help="Fewest train queries (default 20)."),
    min_dev: int | None = typer.Option(None, "--min-dev", help="Fewest dev queries (default 10)."),
    min_test: int | None = typer.Option(None, "--min-test", help="Fewest test queries (default 10)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the draw (default: recipe, 12)."),
    recipe: str | None = typer.Option(None, "--recipe", help="Data recipe (default: recipes/data.yaml)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an OUTPUT split with other options."),
) -> None:
    from ettin_cli.core.console import logger
    from ettin_cli.core.recipes import read_yaml, recipes_dir
    from ettin_cli.data.splitting import SplitConfig, split_collection

    where = recipe or str(recipes_dir() / "data.yaml")
    defaults = read_yaml(where).get("split") or {}
    given = {"source": source, "dev": dev, "test": test, "min_train": min_train, "min_dev": min_dev,
             "min_test": min_test, "seed": seed}
    config = SplitConfig.from_dict({**defaults, **{k: v for k, v in given.items() if v is not None}},
                                   f"{where}: split")
    record = split_collection(collection, output, config, overwrite=overwrite)
    counts = record["queries"]
    state = "already split; nothing to do" if record["reused"] else "written"
    logger.info(f"{output}: train {counts['train']}, dev {counts['dev']}, test {counts['test']} of "
                f"{record['judged_queries']} judged queries ({state})")
