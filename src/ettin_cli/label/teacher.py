"""Teachers: find one (local folder or Hub id), decide its format, check that it fits, load it.

Formats share one interface (`.name`, `.format`, `.score(queries, documents, batch_size=None,
max_tokens_per_batch=None) -> np.ndarray[float32]`):

- judge formats, causal-LM rerankers described by a YAML file (`judges.py`) and run by one engine
  (`judge_teacher.JudgeTeacher`): `mxbai-v2` (`mixedbread-ai/mxbai-rerank-large-v2`, `logit("1") - logit("0")`),
  `qwen3-reranker` (`Qwen/Qwen3-Reranker-*`, `logit("yes") - logit("no")`), or a user's own
  `--teacher-format path/to/format.yaml`;
- `cross-encoder` and `bi-encoder`: Sentence Transformers models (`encoders.py`).

`load_teacher(..., format="auto")` picks the format from the model folder and logs what it picked; a format
the folder does not fit is refused with one line naming the one that fits (`fit.py`), before any output is
written and before the model could score with a newly initialised head.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.core.hardware import resolve_device, resolve_precision
from ettin_cli.core.sources import resolve_source
from ettin_cli.label.base import (  # noqa: F401  (re-exported: the teacher API in one place)
    DEFAULT_ENCODER_BATCH,
    DEFAULT_MAX_TOKENS_CPU,
    DEFAULT_MAX_TOKENS_GPU,
)
from ettin_cli.label.batching import ScoreStats, plan_batches  # noqa: F401  (re-exported)
from ettin_cli.label.encoders import BiEncoderTeacher, CrossEncoderTeacher
from ettin_cli.label.fit import ENCODER_FORMATS, architectures, check_format_fits, folder_kind
from ettin_cli.label.judge_teacher import JudgeTeacher
from ettin_cli.label.judges import JudgeFormat, builtin_names, is_format_file, load_judge_format, matches

# Files downloaded for a Hub teacher: weights in safetensors, configs and tokenizer files.
_HUB_IGNORE = ["*.onnx", "onnx/*", "openvino/*", "*.msgpack", "*.h5", "*.ot", "*.gguf", "*.pt", "*.pth"]

Teacher = JudgeTeacher | CrossEncoderTeacher | BiEncoderTeacher


def known_formats() -> tuple[str, ...]:
    """Every format name `--teacher-format` / `--format` accepts besides `auto` and a .yaml file."""
    return (*builtin_names(), *ENCODER_FORMATS)


FORMATS = known_formats()


def check_format_name(fmt: str, option: str = "--teacher-format") -> JudgeFormat | None:
    """Validate a format value; the judge format it names (read and checked), or None for an encoder format."""
    if fmt == "auto" or fmt in ENCODER_FORMATS:
        return None
    if is_format_file(fmt) or fmt in builtin_names():
        return load_judge_format(fmt, option)
    raise EttinError(f"{option} must be auto, one of {', '.join(known_formats())}, or a judge format .yaml file, "
                     f"got '{fmt}'")


def is_judge_format(fmt: str) -> bool:
    """Whether a resolved format (not `auto`) is a judge format, the kind `--instruction` applies to."""
    return fmt not in ("auto", *ENCODER_FORMATS)


# ---------------------------------------------------------------------------------------------------------
# Locating a model and deciding its format
# ---------------------------------------------------------------------------------------------------------


def resolve_model_path(model: str, revision: str | None = None) -> tuple[Path, str | None]:
    """A local folder for `model` and the Hub commit it came from (None for a local folder).

    A Hub id is fetched with `huggingface_hub.snapshot_download` (cached; weights in safetensors only), so the
    manifest can record the exact revision that produced the labels.
    """

    source = resolve_source(model, option="--teacher", offline_hint="--teacher DIR (a local model folder)")
    if source.path is not None:
        if not source.path.is_dir():
            raise EttinError(f"--teacher {model}: is a file; expected a model folder or a Hub id")
        return source.path, None
    from huggingface_hub import HfApi, snapshot_download

    ignore = list(_HUB_IGNORE)
    try:  # safetensors weights present: skip the duplicate PyTorch pickles (gigabytes for a 1.5B teacher)
        if any(f.endswith(".safetensors") for f in HfApi().list_repo_files(model, revision=revision)):
            ignore.append("*.bin")
    except Exception:  # offline with a cached snapshot, or the repo is unknown (reported just below)
        pass
    try:
        local = snapshot_download(model, revision=revision, ignore_patterns=ignore)
    except Exception as exc:  # offline, unknown repo, gated, network error: all user-facing here
        reason = type(exc).__name__
        raise EttinError(f"--teacher {model}: not a local folder and could not be fetched from the Hugging Face "
                         f"Hub ({reason})") from None
    local_path = Path(local)
    return local_path, local_path.name  # snapshot folders are named by their commit hash


def detect_format(path: str | os.PathLike[str]) -> str:
    """Which format a model folder holds, from its config files (and, for a causal LM, its tokenizer).

    A causal LM -> the built-in judge format it matches (`detect` in `recipes/teachers/*.yaml`: architecture,
    chat tokens and the two answers as single tokens: a Qwen2 with "0"/"1" is mxbai-v2, a Qwen3 with "yes"/"no"
    and `<think>` is qwen3-reranker); a Sentence Transformers CrossEncoder folder or a
    `*ForSequenceClassification` config -> `cross-encoder`; a SentenceTransformer folder -> `bi-encoder`.
    """
    root = Path(path)
    kind, words = folder_kind(root)
    if kind == "judge":
        return detect_judge(root)
    if kind in ENCODER_FORMATS:
        return kind
    raise EttinError(f"--teacher {root}: cannot tell the teacher format from its config ({words}); pass "
                     f"--teacher-format {'|'.join(known_formats())}")


def detect_judge(path: Path) -> str:
    """The built-in judge format a causal LM folder matches, or a one-line error asking for a format file."""
    from transformers import AutoTokenizer

    arch = architectures(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise EttinError(f"--teacher {path}: a causal LM whose tokenizer cannot be loaded ({exc})") from None
    for name in builtin_names():
        if matches(load_judge_format(name), arch, tokenizer):
            return name
    raise EttinError(f"--teacher {path}: a causal LM ({', '.join(arch)}) that matches no built-in judge format "
                     f"({', '.join(builtin_names())}); pass --teacher-format NAME or path/to/format.yaml")


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher located and typed but not loaded: enough to fingerprint a run before paying for the weights."""

    name: str
    path: Path
    revision: str | None
    format: str
    device: str
    dtype: str
    attn: str
    attn_chosen_automatically: bool = False
    judge: JudgeFormat | None = None

    def load(self, max_length: int | None = None, instruction: str | None = None) -> Teacher:
        """Load the weights on the resolved device, dtype and attention implementation.

        When `auto` picked Flash Attention 2 and the architecture has no FA2 implementation (a BERT
        cross-encoder, say), the model is loaded with SDPA instead, and the log says so.
        """
        kwargs: dict[str, Any] = {"name": self.name, "revision": self.revision, "device": self.device,
                                  "dtype": self.dtype, "attn": self.attn, "max_length": max_length}
        if self.judge is not None:
            kwargs.update(judge=self.judge, instruction=instruction)
            cls: Any = JudgeTeacher
        elif instruction:
            raise EttinError(f"--instruction applies to judge formats only ({', '.join(builtin_names())} or a "
                             f".yaml file), not {self.format}")
        else:
            cls = CrossEncoderTeacher if self.format == "cross-encoder" else BiEncoderTeacher
        try:
            teacher = cls(self.path, **kwargs)
        except EttinError as exc:
            if not (self.attn_chosen_automatically and self.attn == "flash_attention_2"):
                raise
            logger.warning("%s: Flash Attention 2 unavailable for this model (%s); using SDPA", self.name, exc)
            teacher = cls(self.path, **{**kwargs, "attn": "sdpa"})
        logger.debug("teacher %s: %s on %s, %s + %s, max length %d", self.name, self.format, self.device,
                     self.dtype, self.attn, teacher.max_length)
        return teacher


def resolve_teacher(model: str | os.PathLike[str], format: str = "auto", *, device: str = "auto",
                    dtype: str = "auto", attn: str = "auto", revision: str | None = None,
                    option: str = "--teacher-format") -> TeacherSpec:
    """Find the teacher (local folder or Hub snapshot), decide its format and the precision it will run in.

    The format is checked against what the folder says it is (`fit.check_format_fits`) here, before any
    weights are read or any output is written.
    """

    judge = check_format_name(format, option)
    name = str(model)
    path, resolved_revision = resolve_model_path(name, revision)
    if format == "auto":
        format = detect_format(path)
        judge = check_format_name(format, option)
        picked = f" ({', '.join(architectures(path))}, answers {judge.positive!r}/{judge.negative!r})" if judge else ""
        logger.info("teacher format: %s%s (detected from %s)", format, picked, name)
    else:
        check_format_fits(path, format, is_judge=judge is not None, name=name, option=option)
    dev = resolve_device(device)
    precision = resolve_precision(dev, dtype, attn)
    return TeacherSpec(name=name, path=path, revision=resolved_revision, format=judge.name if judge else format,
                       device=dev, dtype=precision.dtype, attn=precision.attn,
                       attn_chosen_automatically=attn == "auto", judge=judge)


def load_teacher(model: str | os.PathLike[str], format: str = "auto", *, device: str = "auto", dtype: str = "auto",
                 attn: str = "auto", max_length: int | None = None, revision: str | None = None,
                 instruction: str | None = None, option: str = "--teacher-format") -> Teacher:
    """Load a teacher (Hub id or local folder) ready to `.score(queries, documents)`.

    `format="auto"` decides from the model's config files and logs the choice; `device`, `dtype` and `attn`
    default to the best the hardware supports (bf16 + Flash Attention 2 on a capable GPU, fp32 + SDPA on CPU).
    `instruction` (judge formats) replaces the format's default instruction. `ettin score`, `ettin eval` and
    `ettin bench` all load their models here.
    """
    if max_length is not None and max_length < 1:
        raise EttinError(f"--max-length must be >= 1, got {max_length}")
    spec = resolve_teacher(model, format, device=device, dtype=dtype, attn=attn, revision=revision, option=option)
    return spec.load(max_length=max_length, instruction=instruction)
