"""`ettin push`: publish a trained model, or `ettin score` outputs as a dataset, to the Hub in one commit."""

from __future__ import annotations

import typer

from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.publish import hub
from ettin_cli.publish.dataset_layout import plan_dataset_push
from ettin_cli.publish.model_push import plan_model_push
from ettin_cli.publish.plan import REPO_TYPES, human_size, validate_repo_id, validate_revision

HELP = (
    "Publish a trained model folder, or `ettin score` outputs as a dataset, to the Hugging Face Hub.\n\n"
    "Everything local is checked before the first network call (repo id, token, the model loading as a "
    "CrossEncoder and scoring a smoke pair, every data shard against its manifest checksum); any failure is one "
    "line, exit code 2, nothing uploaded. A push is one commit, so a failure never leaves a half-updated repo; "
    "transient Hub errors are retried with backoff.\n\n"
    "A model's card is its folder's README.md, or, when there is none or with --replace-card, one rendered from "
    "ettin_training.json. A dataset is laid out as the released cross-encoder/ettin-reranker-v1-data: one "
    "config per source directory (its name, or NAME=DIR) with columns query, document and label (float32, the "
    "`score` of `ettin score`) in CONFIG/SPLIT-*.parquet; `validation=DIR` becomes the validation split of quora "
    "(the recipe's held-out source), CONFIG:SPLIT=DIR names a split; manifests go to provenance/.\n\n"
    "The token comes from --token, else HF_TOKEN, else `hf auth login`; it is never printed, logged or written. "
    "Prefer HF_TOKEN: a --token value is visible to other users of the machine in the process list.\n\n"
    "Examples:\n\n"
    "  ettin push runs/17m/final --repo-id my-org/ettin-reranker-17m-v1 --dry-run\n\n"
    "  ettin push runs/17m/final --repo-id my-org/ettin-reranker-17m-v1 --private\n\n"
    "  ettin push runs/17m/final --repo-id my-org/ettin-reranker-17m-v1 --revision v1.1 --replace-card\n\n"
    "  ettin push scored/msmarco scored/hotpotqa --repo-id my-org/ettin-reranker-v1-data --repo-type dataset\n\n"
    "  ettin push quora=scored/run3 --repo-id my-org/ettin-reranker-v1-data --repo-type dataset --dry-run\n\n"
    "  ettin push scored/quora scored/agnews scored/validation --repo-id my-org/d --repo-type dataset"
)


def register(app: typer.Typer) -> None:
    app.command(name="push", help=HELP)(push)


def push(
    paths: list[str] = typer.Argument(..., metavar="PATH...",
                                      help="MODEL_DIR (one trained model folder), or with --repo-type dataset one "
                                      "or more `ettin score` output directories (DIR or NAME=DIR)."),
    repo_id: str = typer.Option(..., "--repo-id", help="Target repo, ORG/NAME."),
    repo_type: str = typer.Option("model", "--repo-type", help="model or dataset."),
    private: bool = typer.Option(False, "--private",
                                 help="Create the repo private; refused if it already exists and is public."),
    revision: str = typer.Option("main", "--revision", help="Branch to commit to (created from main if new)."),
    commit_message: str | None = typer.Option(None, "--commit-message", "-m",
                                              help="Commit summary (default names what is uploaded)."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Validate, print every path, size and the card; contact nothing."),
    replace_card: bool = typer.Option(False, "--replace-card",
                                      help="Model: replace the folder's README.md with a card rendered from "
                                      "ettin_training.json."),
    include_training_args: bool = typer.Option(False, "--include-training-args",
                                               help="Model: also upload training_args.bin (a pickle of the "
                                               "trainer's settings; left out by default)."),
    token: str | None = typer.Option(None, "--token", show_default=False,
                                     help="Hub token with write access (default: HF_TOKEN, then the stored login)."),
    license: str = typer.Option("apache-2.0", "--license", help="Dataset card license."),
    retries: int = typer.Option(5, "--retries", min=0, max=20,
                                help="Retries per network step on transient Hub errors (exponential backoff)."),
) -> None:
    repo_id = validate_repo_id(repo_id)
    if repo_type not in REPO_TYPES:
        raise EttinError(f"--repo-type must be one of {', '.join(REPO_TYPES)}, got '{repo_type}'")
    revision = validate_revision(revision)
    if commit_message is not None and not commit_message.strip():
        raise EttinError("--commit-message is empty")
    if repo_type == "model":
        if len(paths) != 1:
            raise EttinError(f"a model push takes one MODEL_DIR, got {len(paths)} paths "
                             "(for scored data add --repo-type dataset)")
        if license != "apache-2.0":
            raise EttinError("--license applies to datasets; a model card's license comes from the recipe")
    elif replace_card:
        raise EttinError("--replace-card applies to model pushes; a dataset card is always generated")
    elif include_training_args:
        raise EttinError("--include-training-args applies to model pushes")

    resolved_token = None
    if dry_run:
        try:
            hub.resolve_token(token)
        except EttinError as exc:
            logger.warning(f"{exc} (a real push would stop here)")
    else:
        resolved_token = hub.resolve_token(token)
        hub.check_online()

    if repo_type == "model":
        plan = plan_model_push(paths[0], repo_id, replace_card=replace_card, commit_message=commit_message,
                               include_training_args=include_training_args)
    else:
        plan = plan_dataset_push(paths, repo_id, license=license, commit_message=commit_message)

    if dry_run:
        typer.echo(plan.describe(revision=revision, private=private), nl=False)
        return
    result = hub.push(plan, token=resolved_token, private=private, revision=revision, retries=retries)
    if result.changed:
        typer.echo(f"pushed {result.files} files ({human_size(result.bytes)}) to {result.repo_url} "
                   f"(branch {revision}) in one commit")
    else:
        typer.echo(f"{result.repo_url} (branch {revision}) already holds these {result.files} files: "
                   "nothing to commit")
    typer.echo(f"commit: {result.commit_url}")
