"""What kind of folder a data option was given, and which command makes the kind it wanted.

The chain's folders look alike from the outside (a folder of files), so a folder of the wrong kind used to fail
deep inside a step with an error about a symptom: `ettin train --data <a BEIR collection>` asked for a
`--score-column`, `ettin score <a BEIR collection>` compared queries.jsonl's columns with corpus.jsonl's. Every
command that takes data asks `require_kind` first, which names what the folder is and the command that turns
it into what the option reads. Detection looks only at file names and, for a sharded output, its parquet schema
(a footer read); a folder of no known kind passes through to the command's own checks.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from ettin_cli.core.errors import EttinError
from ettin_cli.io import shards

BEIR, SCORED, MINED, MODEL = "beir", "scored", "mined", "model"

DESCRIPTION = {
    BEIR: "a BEIR collection (corpus.jsonl, queries.jsonl, qrels/)",
    SCORED: "scored pairs (query, document and a teacher score: an `ettin score` or `ettin select` output)",
    MINED: "mined candidates without teacher scores (an `ettin mine` output)",
    MODEL: "a model folder (config.json and weights)",
}
# What each option wants, in words, for the error line.
WANTED = {
    BEIR: "a BEIR collection",
    SCORED: "scored pairs",
    MINED: "(query, document) pairs to score",
}
# (found, wanted) -> the command that makes what was wanted from what was given.
HINTS = {
    (BEIR, SCORED): "run `ettin mine --corpus {path}` then `ettin score` first",
    (BEIR, MINED): "run `ettin mine --corpus {path}` first, then score its output",
    (MINED, SCORED): "run `ettin score {path} --teacher TEACHER` first",
    (SCORED, BEIR): "give the BEIR collection the pairs were mined from (`ettin split` makes dev/test splits)",
    (MINED, BEIR): "give the BEIR collection the pairs were mined from (`ettin split` makes dev/test splits)",
    (MODEL, BEIR): "a model is a MODEL (eval) or --teacher (score, check-teacher), the collection the folder "
                   "with corpus.jsonl",
    (MODEL, SCORED): "a model is --base-model (train) or --teacher (score); make scored pairs with `ettin mine` "
                     "then `ettin score`",
    (MODEL, MINED): "a model is --teacher here; pairs come from `ettin mine`",
}
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json",
            "modules.json")
_SCORE_COLUMNS = ("score", "label")


def folder_kind(path: str | os.PathLike[str]) -> str | None:
    """`beir`, `scored`, `mined`, `model`, or None for a folder of no known kind (or not a folder)."""
    root = Path(path)
    if not root.is_dir():
        return None
    if (root / "corpus.jsonl").is_file() and ((root / "queries.jsonl").is_file() or (root / "qrels").is_dir()):
        return BEIR
    if (root / "config.json").is_file() and any((root / name).is_file() for name in _WEIGHTS):
        return MODEL
    if shards.is_sharded_output(root):
        columns = _shard_columns(root)
        if columns is None:
            return None
        if any(c in columns for c in _SCORE_COLUMNS):
            return SCORED
        if "query" in columns and "document" in columns:
            return MINED
    return None


def _shard_columns(root: Path) -> set[str] | None:
    parts = sorted(root.glob("part-*.parquet"))
    if not parts:
        return None
    import pyarrow.parquet as pq

    try:
        return set(pq.read_schema(parts[0]).names)
    except Exception:  # noqa: BLE001 - an unreadable shard is the command's own error to report
        return None


def require_kind(path: str | os.PathLike[str], wanted: str, option: str,
                 accepted: Collection[str] | None = None) -> None:
    """Refuse a folder of a known kind that `option` does not read, naming both kinds and the way from one to the
    other. `accepted` (default: `wanted` only) lists the kinds the option reads; unknown kinds pass."""
    found = folder_kind(path)
    if found is None or found in (accepted if accepted is not None else {wanted}):
        return
    hint = HINTS.get((found, wanted))
    raise EttinError(f"{option} {path}: is {DESCRIPTION[found]}, not {WANTED[wanted]}"
                     + (f": {hint.format(path=path)}" if hint else ""))
