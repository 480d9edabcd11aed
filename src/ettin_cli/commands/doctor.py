"""`ettin doctor`: a one-minute, offline proof that this machine's fast paths give the right numbers."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = (
    "Check, offline on tiny random models, that the fast paths a long run relies on are right on this machine.\n\n"
    "For fp32+SDPA, bf16+SDPA and bf16+FA2 (those the machine supports; the rest are skipped with the reason): "
    "the teacher's fast path vs the naive full forward, the student's padded/unpadded batch vs each pair "
    "alone (with proof that the unpadded path processed no padding), one training step lowering the MSE, "
    "pairs/s of each path, and under torchrun an all_reduce across ranks. Under a minute on CPU, about two "
    "on a GPU; nothing is downloaded. Exits 1 with one line per failed check.\n\n"
    "Examples:\n\n"
    "  ettin doctor\n\n"
    "  ettin doctor --json doctor.json\n\n"
    "  ettin doctor --only bf16+fa2 --pairs 64\n\n"
    "  torchrun --nproc-per-node 8 -m ettin_cli doctor   # adds the NCCL all_reduce check\n"
)


def register(app: typer.Typer) -> None:
    app.command(name="doctor", help=HELP)(doctor_command)


def doctor_command(
    device: str = typer.Option("auto", "--device", help="auto (the GPU when visible), cpu, cuda, cuda:1, ..."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the checks as JSON to this file."),
    pairs: int = typer.Option(16, "--pairs", help="(query, document) pairs per check (at least 8)."),
    only: list[str] = typer.Option([], "--only", help="Only this setting: fp32+sdpa, bf16+sdpa or bf16+fa2. "
                                   "Repeatable (default: all three)."),
) -> None:
    import sys

    from ettin_cli.core.distributed import current_rank
    from ettin_cli.core.errors import EttinError
    from ettin_cli.core.files import write_json_atomic
    from ettin_cli.measure.doctor import failures, print_table, report, run_doctor
    from ettin_cli.train.student import build_student

    if json_path is not None and json_path.is_dir():
        raise EttinError(f"--json {json_path}: is a folder; give a file path")
    checks = run_doctor(build_student, device, num_pairs=pairs, only=only)
    # Under torchrun every rank runs the checks (each on its own GPU); rank 0 prints and writes the report.
    if current_rank().is_main:
        print_table(checks)
        if json_path is not None:
            write_json_atomic(json_path, report(checks))
    failed = failures(checks)
    for line in failed:
        typer.echo(f"FAILED {line}", err=True)
    if failed:
        sys.exit(1)
