"""`ettin env`: what this machine offers the pipeline (torch build, GPUs, bf16, Flash Attention 2)."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    app.command(
        name="env",
        help="Show the torch build, GPUs, bf16 and Flash Attention 2 support that score/train/bench will use.\n\n"
        "Examples:\n\n  ettin env\n\n  ettin env --json",
    )(env)


def env(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    from ettin_cli.core.hardware import describe

    info = describe()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        typer.echo(f"{key:<22} {value}")
