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
import threading
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


_active: list[_Bar] = []


@contextmanager
def progress(total: int | None, description: str, unit: str = "rows", every: float = 10.0) -> Iterator[_Bar]:
    """A progress bar on stderr showing count, rate (`unit`/s) and ETA; yields an object with `.advance(n)`.

    Hidden with `-q`. Off a terminal (CI, log files) the bar is replaced by a log line every `every` seconds,
    written by a timer even while no `advance` comes (a long batch, a slow shard), so a log never goes quiet
    for longer than that while work runs. The innermost open bar also takes `advance_active(n)` calls from code
    that does not hold it (a teacher reporting each batch inside one evaluation chunk).
    """
    bar: _Bar
    if _level <= QUIET:
        bar = _Bar(total, description, unit, enabled=False)
    elif sys.stderr.isatty():
        bar = _RichBar(total, description, unit)
    else:
        bar = _Bar(total, description, unit, enabled=True, every=every)
    _active.append(bar)
    try:
        yield bar
    finally:
        _active.remove(bar)
        bar.close()


def advance_active(n: int = 1) -> None:
    """Advance the innermost open progress bar by `n` (no-op when none is open)."""
    if _active:
        _active[-1].advance(n)


class _Bar:
    """Plain-text progress: a log line every `every` seconds from a timer thread, plus a final summary."""

    def __init__(self, total: int | None, description: str, unit: str, enabled: bool, every: float = 10.0):
        self.total, self.description, self.unit, self.enabled, self.every = total, description, unit, enabled, every
        self.done = 0
        self.start = time.perf_counter()
        self.paused = 0.0                     # seconds spent paused (not counted in the rate and ETA)
        self._paused_at: float | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if enabled:
            self._ticker = threading.Thread(target=self._tick, name="ettin-progress", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            # Only a running, innermost bar speaks: a paused training bar under an evaluation's bar would log
            # "training: 0/1,024, 0.0 pairs/s" lines about work that is not happening.
            if self._paused_at is None and (not _active or _active[-1] is self):
                logger.info(self.status())

    def pause(self) -> None:
        """Stop the clock: time until `resume` is not work (e.g. evaluation between training steps)."""
        if self._paused_at is None:
            self._paused_at = time.perf_counter()

    def resume(self) -> None:
        if self._paused_at is not None:
            self.paused += time.perf_counter() - self._paused_at
            self._paused_at = None

    def rate(self) -> float:
        now = time.perf_counter()
        elapsed = now - self.start - self.paused - (now - self._paused_at if self._paused_at is not None else 0.0)
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

    def advance_to(self, done: int) -> None:
        """Move to `done` when finer-grained `advance` calls (per batch) have not already got there."""
        if done > self.done:
            self.advance(done - self.done)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1.0)
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
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
            console=_stderr_console(), transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, rate="", eta="-")

    def advance(self, n: int = 1) -> None:
        # Rate and ETA are this bar's own (they leave out paused time), not rich's wall-clock estimate.
        self.done += n
        eta = self.eta_seconds()
        self._progress.update(self._task, advance=n, rate=f"{self.rate():,.1f} {self.unit}/s",
                              eta=format_seconds(eta) if eta is not None else "-")

    def close(self) -> None:
        self._progress.stop()


def format_seconds(seconds: float) -> str:
    """`3725` -> `1:02:05`."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
