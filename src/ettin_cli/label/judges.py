"""Judge formats: how a causal-LM reranker (mxbai-rerank v2, Qwen3-Reranker, a user's own) reads a pair.

A judge format is data, a YAML file (`recipes/teachers/<name>.yaml`, or any file given to
`--teacher-format path/to/format.yaml`): the template pieces in order (prefix, query piece, document piece,
task prompt, suffix, with literal `text` pieces between them), how an instruction is written before the query,
the default instruction, the positive and negative answer tokens, and the truncation rule (the query's share of
max_length; the document gets the rest). One engine (`judge_teacher.JudgeTeacher`) runs any of them, so a new
judge needs no code. A format is checked when read (every piece present, placeholders where they belong) and
again against the tokenizer when loaded (each answer one token), with one-line errors naming the file and key.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError
from ettin_cli.core.recipes import parse_yaml_mapping, recipes_dir

PIECES = ("prefix", "query", "document", "task", "suffix")  # each exactly once, in this order
_KINDS = (*PIECES, "text")  # `text`: a literal piece anywhere between prefix and suffix (a separator)
_KEYS = {"name", "model", "description", "template", "instruction", "default_instruction", "answers",
         "truncation", "detect"}


@dataclass(frozen=True)
class JudgeFormat:
    """A judge format read and checked: the template and everything the engine needs to score with it."""

    name: str
    template: tuple[tuple[str, str], ...]  # (kind, text) in order
    positive: str
    negative: str
    instruction: str | None = None  # the instruction piece, with `{instruction}`; placed before the query
    default_instruction: str | None = None
    query_share: float = 0.75
    max_length: int = 8192
    model: str | None = None  # the checkpoint this format was written for (documentation)
    architectures: tuple[str, ...] = ()
    tokens: tuple[str, ...] = ()
    source: str | None = None  # the YAML file
    sha256: str = field(default="", compare=False)

    def piece(self, kind: str) -> str:
        return next(text for k, text in self.template if k == kind)

    def query_text(self, query: str, instruction: str | None) -> str:
        """The query piece: the instruction piece (when an instruction is set) and the query, as one text."""
        text = self.piece("query").format(query=query)
        if instruction and self.instruction:
            text = self.instruction.format(instruction=instruction) + text
        return text

    def document_text(self, document: str) -> str:
        return self.piece("document").format(document=document)

    def segments(self) -> tuple[list[str], list[str], list[str]]:
        """The literal pieces (before the query, between query and document, after the document), in order.

        Their tokens are the template's fixed cost per pair; each piece is tokenized on its own.
        """
        kinds = [k for k, _ in self.template]
        qi, di = kinds.index("query"), kinds.index("document")
        texts = [t for _, t in self.template]
        return texts[:qi], texts[qi + 1: di], texts[di + 1:]


def builtin_dir() -> Path:
    """`$ETTIN_RECIPES/teachers` when that folder exists, else `recipes/teachers/` of this checkout.

    A custom recipes folder without a `teachers/` of its own still gets the built-in judge formats.
    """

    custom = recipes_dir() / "teachers"
    return custom if custom.is_dir() else Path(__file__).resolve().parents[3] / "recipes" / "teachers"


def builtin_names() -> list[str]:
    """The judge formats that ship with the project (`mxbai-v2`, `qwen3-reranker`), by file name."""
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def is_format_file(value: str) -> bool:
    """Whether a --teacher-format value names a YAML file rather than a built-in format."""
    return str(value).endswith((".yaml", ".yml"))


def load_judge_format(name_or_path: str | os.PathLike[str], option: str = "--teacher-format") -> JudgeFormat:
    """A built-in judge format by name, or a user's YAML file by path, read and checked."""
    value = str(name_or_path)
    if is_format_file(value):
        path = Path(value).expanduser()
        if not path.is_file():
            raise EttinError(f"{option} {value}: no such judge format file")
    else:
        path = builtin_dir() / f"{value}.yaml"
        if not path.is_file():
            raise EttinError(f"{option} {value}: no built-in judge format of that name "
                             f"(built-in: {', '.join(builtin_names())}; or give a .yaml file)")
    return parse_judge_format(path)


def parse_judge_format(path: Path) -> JudgeFormat:
    """Read and check one judge format file; every error is one line naming the file and the key."""

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EttinError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    data = parse_yaml_mapping(text, str(path))

    def fail(key: str, message: str) -> EttinError:
        return EttinError(f"{path}: {key}: {message}")

    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (known: {', '.join(sorted(_KEYS))})")
    template = _parse_template(data.get("template"), fail)
    instruction = data.get("instruction")
    default_instruction = data.get("default_instruction")
    if instruction is not None:
        if not isinstance(instruction, str) or "{instruction}" not in instruction:
            raise fail("instruction", "must be text holding {instruction} (or null: no instruction)")
        _check_placeholders(instruction, "instruction", fail)
    if default_instruction is not None:
        if not isinstance(default_instruction, str) or not default_instruction:
            raise fail("default_instruction", "must be non-empty text or null")
        if instruction is None:
            raise fail("default_instruction", "is set but there is no instruction piece to place it in")
    answers = data.get("answers")
    if not isinstance(answers, dict):
        raise fail("answers", "missing: give answers.positive and answers.negative (the two answer tokens)")
    for key in ("positive", "negative"):
        if not isinstance(answers.get(key), str) or not answers.get(key):
            raise fail(f"answers.{key}", "missing or empty: the answer token text")
    if answers["positive"] == answers["negative"]:
        raise fail("answers", "positive and negative are the same text")
    trunc = data.get("truncation") or {}
    if not isinstance(trunc, dict):
        raise fail("truncation", "must be a mapping with query_share and max_length")
    share = trunc.get("query_share", 0.75)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise fail("truncation.query_share", f"must be a number in (0, 1], got {share!r}")
    max_length = trunc.get("max_length", 8192)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise fail("truncation.max_length", f"must be a positive integer, got {max_length!r}")
    detect = data.get("detect") or {}
    if not isinstance(detect, dict):
        raise fail("detect", "must be a mapping with architectures and tokens")
    architectures = detect.get("architectures") or []
    tokens = detect.get("tokens") or []
    for key, value in (("detect.architectures", architectures), ("detect.tokens", tokens)):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise fail(key, "must be a list of names")
    name = data.get("name") or path.stem
    if not isinstance(name, str):
        raise fail("name", "must be text")
    return JudgeFormat(name=name, template=template, positive=answers["positive"], negative=answers["negative"],
                       instruction=instruction, default_instruction=default_instruction, query_share=float(share),
                       max_length=max_length, model=data.get("model"), architectures=tuple(architectures),
                       tokens=tuple(tokens), source=str(path), sha256=hashlib.sha256(raw).hexdigest())


def _parse_template(template: Any, fail) -> tuple[tuple[str, str], ...]:
    if not isinstance(template, list) or not template:
        raise fail("template", f"missing: a list of pieces, in order ({', '.join(PIECES)}, and `text` between)")
    pieces: list[tuple[str, str]] = []
    for i, item in enumerate(template):
        if not isinstance(item, dict) or len(item) != 1:
            raise fail(f"template[{i}]", "each piece is a one-key mapping like `- query: \"query: {query}\"`")
        ((kind, text),) = item.items()
        if kind not in _KINDS:
            raise fail(f"template[{i}]", f"unknown piece '{kind}' (pieces: {', '.join(_KINDS)})")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise fail(f"template[{i}].{kind}", f"must be text, got {type(text).__name__}")
        pieces.append((kind, text))
    kinds = [k for k, _ in pieces]
    for kind in PIECES:
        if kinds.count(kind) != 1:
            what = "missing" if kind not in kinds else f"given {kinds.count(kind)} times"
            raise fail("template", f"piece '{kind}' {what}: every piece ({', '.join(PIECES)}) appears exactly "
                       "once (an empty task is written `- task: \"\"`)")
    order = [kinds.index(k) for k in PIECES]
    if order != sorted(order) or kinds[0] != "prefix" or kinds[-1] != "suffix":
        raise fail("template", f"pieces out of order: prefix first, suffix last, and {' < '.join(PIECES)}")
    for kind, placeholder in (("query", "{query}"), ("document", "{document}")):
        text = dict(pieces)[kind]
        if text.count(placeholder) != 1:
            raise fail(f"template.{kind}", f"must hold {placeholder} exactly once")
        _check_placeholders(text, f"template.{kind}", fail)
    return tuple(pieces)


def _check_placeholders(text: str, key: str, fail) -> None:
    """Only the piece's own placeholder may appear in braces (literal braces are written {{ }})."""
    try:
        text.format(query="", document="", instruction="")
    except (KeyError, ValueError, IndexError) as exc:
        raise fail(key, f"bad placeholder ({exc}); write literal braces as {{{{ }}}}") from None


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """A piece's ids: tokenized on its own, without special tokens (as the reference implementations do)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def answer_ids(judge: JudgeFormat, tokenizer: Any, where: str) -> tuple[int, int]:
    """The positive and negative answers' token ids; each answer must be exactly one token."""
    out = []
    for what, text in (("positive", judge.positive), ("negative", judge.negative)):
        ids = token_ids(tokenizer, text)
        if len(ids) != 1:
            raise EttinError(f"{where}: judge format {judge.name}: the {what} answer {text!r} is {len(ids)} tokens "
                             "for this tokenizer; each answer must be one token")
        out.append(ids[0])
    return out[0], out[1]


def matches(judge: JudgeFormat, architectures: list[str], tokenizer: Any) -> bool:
    """Whether `auto` should pick this format: a listed architecture, its tokens and answers single tokens."""
    if not judge.architectures or not set(judge.architectures) & set(architectures):
        return False
    vocab = tokenizer.get_vocab()
    if any(t not in vocab for t in judge.tokens):
        return False
    return all(len(token_ids(tokenizer, a)) == 1 for a in (judge.positive, judge.negative))


def template_tokens(judge: JudgeFormat, tokenizer: Any, instruction: str | None = None) -> int:
    """Tokens a pair pays for the template alone (every fixed piece, the instruction, the piece labels).

    The cost of a teacher per pair is parameters x (pair tokens + this), so it is how two judges compare.
    """
    before, between, after = judge.segments()
    inst = judge.default_instruction if instruction is None else instruction
    return (sum(len(token_ids(tokenizer, t)) for t in before + between + after)
            + len(token_ids(tokenizer, judge.query_text("", inst)))
            + len(token_ids(tokenizer, judge.document_text(""))))
