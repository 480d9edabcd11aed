"""The `ettin` command line: a thin typer app.

Each subcommand lives in `ettin_cli/commands/<name>.py` and exposes `register(app)`. Commands only parse and
validate, then call a library function that does the work (and is tested directly). Heavy imports (torch,
transformers, datasets) happen inside those functions, so `ettin --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from ettin_cli import __version__
from ettin_cli.core import console
from ettin_cli.core.errors import EttinError

# Order = order in `ettin --help`; the pipeline reads top to bottom.
COMMAND_MODULES = ["env", "doctor", "split", "mine", "check_teacher", "score", "select", "mix", "train", "eval",
                   "bench", "export", "push"]

app = typer.Typer(
    name="ettin",
    help="Distil Ettin rerankers: mine and score pairs with a teacher, train six student sizes, evaluate, "
    "benchmark and publish them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ettin-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug detail and library messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors; no progress bars."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Options given before the subcommand apply to every subcommand: `ettin -q score ...`."""
    if verbose and quiet:
        raise EttinError("--verbose and --quiet exclude each other")
    console.setup(console.VERBOSE if verbose else console.QUIET if quiet else console.NORMAL)


def _hide_flag_types() -> None:
    """Plain on/off flags show no `<bool>` type in `--help` (typer labels every option with its type).

    A flag takes no value, so a type column there reads as if `--overwrite true` were expected.
    """
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_ettin_flags_hidden", False):
        return

    def display_type_rich(self, ctx):  # noqa: ANN001, ANN202 - typer's own signature
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return shown(self, ctx)

    display_type_rich._ettin_flags_hidden = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich


_hide_flag_types()

for _name in COMMAND_MODULES:
    importlib.import_module(f"ettin_cli.commands.{_name}").register(app)


def _one_line(text: str) -> str:
    """The first sentence of a command's help: what `ettin --help` lists beside the command."""
    first = " ".join(text.strip().split("\n\n")[0].split())
    for end in (". ", ": ", "; "):
        if end in first:
            first = first.split(end)[0]
    return first.rstrip(".:")


for _command in app.registered_commands:
    if not _command.short_help and _command.help:
        _command.short_help = _one_line(_command.help)

# Each command's page of the documentation, named on the last line of its `--help` (paths from the repository root).
DOC_PAGES = {"env": "README.md#set-up-two-commands-on-a-fresh-machine", "doctor": "docs/doctor.md",
             "mine": "docs/data.md", "score": "docs/score.md", "select": "docs/data.md", "mix": "docs/data.md",
             "train": "docs/train.md", "eval": "docs/eval.md", "bench": "docs/bench.md", "push": "docs/push.md",
             "export": "docs/export.md", "split": "docs/byo.md", "check_teacher": "docs/byo.md"}
for _command in app.registered_commands:
    _page = DOC_PAGES.get((_command.name or "").replace("-", "_"))
    if _page and not _command.epilog:
        _command.epilog = f"Docs: {_page}"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, prog_name="ettin")
    except EttinError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo(interrupted_message(argv if argv is not None else sys.argv[1:]), err=True)
        sys.exit(130)
    except SystemExit as exc:
        # typer turns Ctrl-C inside a command into a silent exit 130; say what is kept and how to resume.
        if exc.code == 130 and _from_interrupt(exc):
            typer.echo(interrupted_message(argv if argv is not None else sys.argv[1:]), err=True)
        raise


def _from_interrupt(exc: BaseException) -> bool:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, KeyboardInterrupt):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def interrupted_message(argv: list[str]) -> str:
    """What Ctrl-C leaves behind, and how to go on: every step writes atomically and skips finished work."""
    command = next((a for a in argv if not a.startswith("-")), "")
    kept = {
        "score": "finished shards (with their completion records) are kept; the shard in progress is discarded",
        "mine": "finished shards are kept; the shard in progress is discarded",
        "select": "finished shards are kept; the shard in progress is discarded",
        "mix": "finished subsets and shards are kept; the shard in progress is discarded",
        "train": "checkpoints already saved are kept; the steps since the last one are lost",
        "push": "nothing was committed to the Hub (a push is one commit); uploaded files are not sent again",
        "eval": "nothing half-written was left; results are written only at the end",
        "bench": "nothing half-written was left; results are written only at the end",
    }.get(command, "nothing half-written was left (every file is written to a temporary name first)")
    again = " ".join(["ettin", *argv]) if argv else "the same command"
    return f"interrupted: {kept}. Rerun the same command to resume: {again}"
