"""What every teacher shares: its identity for manifests, its stats, the default token budget, OOM splitting.

Teachers share one interface (`.name`, `.format`, `.stats`, `.max_length`, `.describe()`,
`.score(queries, documents, batch_size=None, max_tokens_per_batch=None) -> np.ndarray[float32]`), so the
scoring loop, `ettin eval` and `ettin bench` never ask which kind of model they hold.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ettin_cli.label.batching import ScoreStats, run_split

# Token budgets per forward pass when neither --max-tokens-per-batch nor --batch-size is given. A GPU batch
# that still does not fit is split on out-of-memory, so the GPU default can be generous.
DEFAULT_MAX_TOKENS_GPU = 65536
DEFAULT_MAX_TOKENS_CPU = 16384
DEFAULT_ENCODER_BATCH = 64


class BaseTeacher:
    """Shared bookkeeping: identity, stats, and the OOM-splitting batch runner."""

    format: str = ""

    def __init__(self, name: str, path: Path, device: str, dtype: str, attn: str, max_length: int,
                 revision: str | None) -> None:
        self.name = name
        self.path = path
        self.device = device
        self.dtype = dtype
        self.attn = attn
        self.max_length = max_length
        self.revision = revision
        self.stats = ScoreStats()
        self.on_batch: Any = None  # progress hook: called with the pair count of each finished batch (score's bar)

    def describe(self) -> dict[str, Any]:
        """Identity of this teacher for manifests (what produced the labels)."""
        return {"teacher": self.name, "teacher_revision": self.revision, "format": self.format,
                "dtype": self.dtype, "attn": self.attn, "device": self.device, "max_length": self.max_length}

    def _default_budget(self, batch_size: int | None, max_tokens: int | None) -> int | None:
        if max_tokens is None and batch_size is None:
            return DEFAULT_MAX_TOKENS_GPU if self.device.startswith("cuda") else DEFAULT_MAX_TOKENS_CPU
        return max_tokens

    def _run_split(self, items: list[Any], forward: Callable[[list[Any]], np.ndarray]) -> np.ndarray:
        """`forward(items)` -> scores; on out-of-memory split the batch in halves and retry, counting splits."""
        return run_split(items, forward, self.stats, self.max_length)
