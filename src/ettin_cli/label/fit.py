"""Does a model fit the format it is about to be used in? Refuse before it scores with a random head.

A model loaded in the wrong format does not fail by itself: a bi-encoder loaded as a cross-encoder gets a
freshly initialised classifier and scores near-constant noise, a cross-encoder loaded as a bi-encoder leaves
its head unused, a BERT loaded as a judge gets a random LM head. Both checks here turn that into a one-line
error naming the format that fits:

- `check_format_fits` (before any weights are read, so before any output is written): what the folder says it
  is, from its config files (a Sentence Transformers folder says CrossEncoder or SentenceTransformer in
  `config_sentence_transformers.json` / `modules.json`; a transformers folder names its architecture);
- `refuse_loading_problems` (after `from_pretrained(..., output_loading_info=True)`): weights transformers had
  to initialise because the checkpoint lacks them, or checkpoint weights the model did not use.

`check_base_model` is the same guard for `ettin train --base-model` (a student backbone must be an encoder).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError

ENCODER_FORMATS = ("cross-encoder", "bi-encoder")


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EttinError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else None


def architectures(path: str | os.PathLike[str]) -> list[str]:
    """The `architectures` of a model folder's config.json (empty when it names none)."""
    config = _read_json(Path(path) / "config.json") or {}
    return [str(a) for a in (config.get("architectures") or [])]


def folder_kind(path: str | os.PathLike[str]) -> tuple[str | None, str]:
    """What a model folder says it is, from config files alone: (kind, words for an error message).

    kind: `judge` (a causal LM), `cross-encoder`, `bi-encoder`, `encoder` (a bare transformers backbone, no
    head: a bi-encoder with mean pooling, or a student's base model), or None (nothing recognisable).
    """
    root = Path(path)
    st_config = _read_json(root / "config_sentence_transformers.json") or {}
    arch = architectures(root)
    named = f" ({', '.join(arch)})" if arch else ""
    st_type = st_config.get("model_type")
    if st_type == "CrossEncoder":
        return "cross-encoder", f"a Sentence Transformers cross-encoder{named}"
    if (root / "modules.json").is_file():
        if st_type not in (None, "SentenceTransformer"):
            return None, f"a Sentence Transformers {st_type}"
        return "bi-encoder", f"a Sentence Transformers bi-encoder (embedding model){named}"
    if any(a.endswith("ForCausalLM") for a in arch):
        return "judge", f"a causal LM{named}"
    if any(a.endswith("ForSequenceClassification") for a in arch):
        return "cross-encoder", f"a sequence classifier (cross-encoder){named}"
    if arch:
        return "encoder", f"a bare {', '.join(arch)} without a scoring head"
    return None, "a folder without a config.json architecture"


def fitting_format(kind: str | None) -> str:
    """The --format to suggest for a folder of this kind."""
    return {"judge": "mxbai-v2, qwen3-reranker or a judge .yaml file", "cross-encoder": "cross-encoder",
            "bi-encoder": "bi-encoder", "encoder": "bi-encoder"}.get(kind or "", "none of the score formats")


def check_format_fits(path: str | os.PathLike[str], fmt: str, *, is_judge: bool, name: str,
                      option: str = "--teacher-format") -> None:
    """Refuse a format the folder's config files say it does not fit (cheap: no weights are read).

    A judge format needs a causal LM; `cross-encoder` needs a cross-encoder (a CrossEncoder folder or a
    sequence classifier); `bi-encoder` needs a SentenceTransformer or a bare encoder (mean pooling adds no
    weights). Anything else would score with a newly initialised head or leave the model's own head unused.
    """
    kind, words = folder_kind(path)
    fits = {"judge": is_judge, "cross-encoder": fmt == "cross-encoder",
            "bi-encoder": fmt == "bi-encoder", "encoder": fmt == "bi-encoder"}.get(kind or "", False)
    if not fits:
        raise EttinError(f"{name}: is {words}; {option} {fmt} would score it with a newly initialised head or "
                         f"leave its own head unused; use {option} {fitting_format(kind)}")


def loading_problems(info: dict[str, Any]) -> str | None:
    """What `from_pretrained(..., output_loading_info=True)` reports as wrong, in a few words (None if fine)."""
    missing = sorted(set(info.get("missing_keys") or ()) | {k[0] if isinstance(k, tuple) else k
                                                           for k in info.get("mismatched_keys") or ()})
    unused = sorted(info.get("unexpected_keys") or ())
    parts = []
    for what, keys in (("newly initialised", missing), ("unused", unused)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            parts.append(f"weights {what}: {', '.join(keys[:3])}{more}")
    return "; ".join(parts) or None


def refuse_loading_problems(info: dict[str, Any], name: str, fmt: str) -> None:
    """Refuse a model whose loading left weights newly initialised or checkpoint weights unused."""
    problems = loading_problems(info)
    if problems:
        raise EttinError(f"{name}: not a {fmt} checkpoint ({problems}); it would score with a random head")


_REPORT_LOGGERS = ("transformers.modeling_utils", "transformers.utils.loading_report")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STATUS = {"MISSING": "missing_keys", "UNEXPECTED": "unexpected_keys", "MISMATCH": "mismatched_keys"}


@contextmanager
def loading_report() -> Iterator[dict[str, set[str]]]:
    """Collect transformers' load report (missing, unexpected, mismatched keys) of models loaded inside.

    For libraries that load through `from_pretrained` but do not pass `output_loading_info` through (Sentence
    Transformers). The report is the table transformers logs as a warning; it is caught here (and not printed,
    whatever the verbosity) and read back into the `output_loading_info` layout once the block ends.
    """
    info: dict[str, set[str]] = {key: set() for key in _STATUS.values()}
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    saved = []
    for name in _REPORT_LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, log.level, log.propagate))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
        log.propagate = False
    try:
        yield info
    finally:
        for log, level, propagate in saved:
            log.removeHandler(handler)
            log.setLevel(level)
            log.propagate = propagate
        for record in records:
            message = _ANSI.sub("", record.getMessage())
            if "LOAD REPORT" not in message:
                continue
            for line in message.splitlines():
                cells = [c.strip() for c in line.split("|")]
                if len(cells) >= 2 and cells[1] in _STATUS and cells[0]:
                    info[_STATUS[cells[1]]].add(cells[0])


def check_base_model(path: str | os.PathLike[str], name: str, option: str = "--base-model") -> None:
    """For `ettin train --base-model`: the backbone must be an encoder (not a causal LM, not unrecognisable).

    Call it on the resolved local folder before building the student; pass the backbone's own
    `output_loading_info` to `refuse_loading_problems` if it is loaded with `from_pretrained`.
    """
    kind, words = folder_kind(path)
    if kind in (None, "judge"):
        raise EttinError(f"{option} {name}: is {words}; a student backbone is an encoder "
                         "(e.g. jhu-clsp/ettin-encoder-150m)")
