"""Logging, quiet/verbose levels and progress bars, shared by every command.

One convention for all subcommands: `ettin -v CMD` shows debug detail, `ettin -q CMD` only warnings and
errors; the default shows what each step does and where its output went. Library chatter that means nothing to
the user (unused-weight notices from a fresh head, tokenizer fork warnings, datasets' progress bars) is muted
unless `-v` is given. Progress goes to stderr, so stdout stays clean for tables and JSON.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("ettin")

QUIET, NORMAL, VERBOSE = -1, 0, 1
_level = NORMAL

_NOISY_LOGGERS = (
    "transformers",
    "sentence_transformers",
    "datasets",
    "huggingface_hub",
    "accelerate",
    "torch",
    "bm25s",
    "urllib3",
    "filelock",
    "matplotlib",
    "fsspec",
)


def setup(level: int = NORMAL) -> None:
    """Configure the `ettin` logger and quieten third-party libraries for the given verbosity."""
    global _level
    _level = level
    from rich.logging import RichHandler

    handler = RichHandler(show_time=False, show_path=False, markup=False, rich_tracebacks=False,
                          console=_stderr_console())
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel({QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}[level])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if level < VERBOSE:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        # The environment variables above only reach libraries imported after this point.
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()
        if "huggingface_hub" in sys.modules:
            sys.modules["huggingface_hub"].utils.disable_progress_bars()
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|torch|datasets)\..*")


def level() -> int:
    """The verbosity chosen on the command line."""
    return _level


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


@contextmanager
def progress(total: int | None, description: str, unit: str = "rows") -> Iterator[object]:
    """A progress bar on stderr showing count, rate (`unit`/s) and ETA; yields an object with `.advance(n)`.

    Hidden with `-q`. Off a terminal (CI, log files) the bar is replaced by a log line every ~10 s, so long
    jobs still report their rate and ETA in their logs.
    """
    bar: _Bar
    if _level <= QUIET:
        bar = _Bar(total, description, unit, enabled=False)
    elif sys.stderr.isatty():
        bar = _RichBar(total, description, unit)
    else:
        bar = _Bar(total, description, unit, enabled=True)
    try:
        yield bar
    finally:
        bar.close()


class _Bar:
    """Plain-text progress: a log line at most every `every` seconds, plus a final summary."""

    def __init__(self, total: int | None, description: str, unit: str, enabled: bool, every: float = 10.0):
        self.total, self.description, self.unit, self.enabled, self.every = total, description, unit, enabled, every
        self.done = 0
        self.start = self._last = time.perf_counter()

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate

    def status(self) -> str:
        parts = [f"{self.description}: {self.done:,}" + (f"/{self.total:,}" if self.total is not None else "")]
        parts.append(f"{self.rate():,.1f} {self.unit}/s")
        eta = self.eta_seconds()
        if eta is not None:
            parts.append(f"ETA {format_seconds(eta)}")
        return ", ".join(parts)

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.every:
            self._last = now
            logger.info(self.status())

    def close(self) -> None:
        if self.enabled and self.done:
            logger.info(self.status())


class _RichBar(_Bar):
    def __init__(self, total: int | None, description: str, unit: str):
        super().__init__(total, description, unit, enabled=False)
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=_stderr_console(), transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, rate="")

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._progress.update(self._task, advance=n, rate=f"{self.rate():,.1f} {self.unit}/s")

    def close(self) -> None:
        self._progress.stop()


def format_seconds(seconds: float) -> str:
    """`3725` -> `1:02:05`."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
