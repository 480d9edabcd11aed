"""Batching for teachers: length-sorted token-budget batches, the stats they accumulate, and out-of-memory
split-and-retry.

A teacher pass over ~143M pairs is dominated by how many token positions go through the model, so pairs are
sorted by length and cut into batches that fill a token budget (padding stays a few percent). A batch that
still does not fit in memory is split in halves and retried instead of killing a run at hour 60.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.core.memory import is_oom, release_device_memory
from ettin_cli.io.lifecycle import Counts


@dataclass
class ScoreStats(Counts):
    """Counters a teacher accumulates over its lifetime; the scoring loop takes differences per shard
    (`stats - before`), which go into the shard's record under `stats` and add up into the manifest."""

    record_key: ClassVar[str] = "stats"

    pairs: int = 0
    truncated_pairs: int = 0
    truncated_queries: int = 0
    truncated_documents: int = 0
    tokens: int = 0  # real tokens processed
    padding_tokens: int = 0  # padding positions processed (0 for packed batches)
    batches: int = 0
    oom_splits: int = 0

    @property
    def padding_share(self) -> float:
        total = self.tokens + self.padding_tokens
        return self.padding_tokens / total if total else 0.0


def plan_batches(lengths: Sequence[int], *, max_tokens: int | None = None, batch_size: int | None = None,
                 packed: bool = False) -> list[np.ndarray]:
    """Group item indices into batches of similar length, longest first (an out-of-memory batch shows early).

    Packed batches (Flash Attention 2) cost the sum of their lengths and are filled greedily up to
    `max_tokens`. Padded batches cost `n * longest` positions; with a token budget they are cut by dynamic
    programming over the length-sorted items so that processed positions (real + padding) plus a fixed
    per-batch overhead are minimal: the long tail of a length distribution gets small batches instead of
    dragging short items up to its width. Either way a batch holds at most `batch_size` items and at most
    `max_tokens` positions; an item longer than the budget gets a batch of its own.
    """
    if max_tokens is not None and max_tokens < 1:
        raise EttinError(f"--max-tokens-per-batch must be >= 1, got {max_tokens}")
    if batch_size is not None and batch_size < 1:
        raise EttinError(f"--batch-size must be >= 1, got {batch_size}")
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lens, kind="stable")
    if len(order) == 0:
        return []
    if not packed and max_tokens is not None:
        return [order[a:b] for a, b in _padded_cuts(lens[order], max_tokens, batch_size)]
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        longest = int(lens[order[start]])
        total = longest
        while end < n:
            if batch_size is not None and end - start >= batch_size:
                break
            length = int(lens[order[end]])
            cost = total + length if packed else (end - start + 1) * longest
            if max_tokens is not None and cost > max_tokens:
                break
            total += length
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def _padded_cuts(sorted_lens: np.ndarray, max_tokens: int, batch_size: int | None) -> list[tuple[int, int]]:
    """Optimal contiguous cuts of descending lengths: min sum(n_b * width_b) + overhead * batches.

    The overhead (a fixed cost per forward pass, in token positions) is 1/64 of the budget, so batches are
    not split into tiny ones to save a handful of padding positions.
    """
    n = len(sorted_lens)
    overhead = max_tokens / 64
    largest = batch_size or n
    cost = np.full(n + 1, np.inf)
    cost[0] = 0.0
    prev = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        lo = max(0, j - largest)
        starts = np.arange(lo, j)
        sizes = j - starts
        widths = sorted_lens[starts]
        total = sizes * widths
        candidate = cost[starts] + total + overhead
        candidate[total > max_tokens] = np.inf
        candidate[-1] = cost[j - 1] + widths[-1] + overhead  # a single item is always allowed
        best = int(np.argmin(candidate))
        cost[j] = candidate[best]
        prev[j] = starts[best]
    cuts = []
    j = n
    while j > 0:
        cuts.append((int(prev[j]), j))
        j = int(prev[j])
    return cuts[::-1]


def run_split(items: list[Any], forward: Callable[[list[Any]], np.ndarray], stats: ScoreStats,
              max_length: int) -> np.ndarray:
    """`forward(items)` -> scores; on out-of-memory split the batch in halves and retry, counting splits."""
    try:
        return forward(items)
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not is_oom(exc):
            raise
    # Out of memory. Splitting happens here, outside the `except` block, so the failed batch's tensors (held by
    # the traceback's frames) are already released before the halves run.
    release_device_memory()
    if len(items) == 1:
        raise EttinError(f"out of memory on a single pair even after splitting its batch; lower --max-length "
                         f"(now {max_length}) or use a device with more memory")
    stats.oom_splits += 1
    logger.warning("out of memory on a batch of %d pairs: splitting it in two and retrying", len(items))
    mid = len(items) // 2
    return np.concatenate([run_split(items[:mid], forward, stats, max_length),
                           run_split(items[mid:], forward, stats, max_length)])


def check_texts(queries: Sequence[Any], documents: Sequence[Any]) -> None:
    """Queries and documents pair up and are all text (a null or a number is named by its pair index)."""
    if len(queries) != len(documents):
        raise EttinError(f"{len(queries)} queries but {len(documents)} documents: they must pair up")
    for what, texts in (("query", queries), ("document", documents)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise EttinError(f"pair {i}: the {what} is {type(text).__name__}, not text")
