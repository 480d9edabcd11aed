"""Teachers: models that turn (query, document) pairs into raw relevance scores, as fast as the hardware allows.

Three formats share one interface (`.name`, `.format`, `.score(queries, documents, batch_size=None,
max_tokens_per_batch=None) -> np.ndarray[float32]`):

- `mxbai-v2`: the mxbai-rerank v2 causal LM (`mixedbread-ai/mxbai-rerank-large-v2`, Qwen2). The score is
  `logit("1") - logit("0")` at the last token of the fixed chat template in `../shared/RECIPE.md`. This is the
  expensive step of the whole recipe (~143M pairs through a 1.5B model), so the engine only computes what the
  score needs: the base model's last hidden state at the last real token of each pair, dotted with the
  *difference* of the two lm_head rows (never the 151k-wide vocabulary at every position). Pairs are sorted by
  token length and packed into batches by a token budget, so padding is a few percent; on a GPU with Flash
  Attention 2 the batch is one packed row (position_ids restart per pair, no padding at all); on CPU/SDPA the
  batch is right-padded *without* an attention mask: in a causal model a real token never sees the padding
  after it, so the last real token's state is exactly the unpadded one and SDPA keeps its fast causal kernel.
- `cross-encoder`: a Sentence Transformers CrossEncoder (including a student saved by `ettin train`) or any
  `*ForSequenceClassification` model; raw logits (identity activation, never a sigmoid).
- `bi-encoder`: a SentenceTransformer; the score is the cosine similarity of the two embeddings.

CUDA out-of-memory on a batch never kills a run: the batch is split in halves and retried, and the number of
splits is counted in `stats` (and the `ettin score` manifest). `load_teacher(..., format="auto")` picks the
format from the model folder and logs what it picked.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.core.memory import is_oom, release_device_memory

FORMATS = ("mxbai-v2", "cross-encoder", "bi-encoder")

# The mxbai-rerank v2 template (../shared/RECIPE.md). Each piece is tokenized on its own without special tokens
# and the ids are concatenated: prefix, query piece, sep, document piece, sep, task prompt, suffix.
MXBAI_CHAT_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
MXBAI_CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_SEP = "\n"
MXBAI_QUERY = "query: {query}"
MXBAI_INSTRUCTION = "instruction: {instruction}"
MXBAI_DOCUMENT = "document: {document}"
MXBAI_TASK_PROMPT = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
MXBAI_DEFAULT_MAX_LENGTH = 8192

# Token budgets per forward pass when neither --max-tokens-per-batch nor --batch-size is given. A GPU batch
# that still does not fit is split on out-of-memory, so the GPU default can be generous.
DEFAULT_MAX_TOKENS_GPU = 65536
DEFAULT_MAX_TOKENS_CPU = 16384
DEFAULT_ENCODER_BATCH = 64

# Files downloaded for a Hub teacher: weights in safetensors, configs and tokenizer files.
_HUB_IGNORE = ["*.onnx", "onnx/*", "openvino/*", "*.msgpack", "*.h5", "*.ot", "*.gguf", "*.pt", "*.pth"]


@dataclass
class ScoreStats:
    """Counters a teacher accumulates over its lifetime; the scoring loop takes differences per shard."""

    pairs: int = 0
    truncated_pairs: int = 0
    truncated_queries: int = 0
    truncated_documents: int = 0
    tokens: int = 0  # real tokens processed
    padding_tokens: int = 0  # padding positions processed (0 for packed batches)
    batches: int = 0
    oom_splits: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def copy(self) -> ScoreStats:
        return ScoreStats(**asdict(self))

    def minus(self, other: ScoreStats) -> ScoreStats:
        """Counts accumulated since the snapshot `other`."""
        return ScoreStats(**{k: v - getattr(other, k) for k, v in asdict(self).items()})

    @property
    def padding_share(self) -> float:
        total = self.tokens + self.padding_tokens
        return self.padding_tokens / total if total else 0.0


# ---------------------------------------------------------------------------------------------------------
# Locating a model and deciding its format
# ---------------------------------------------------------------------------------------------------------


def resolve_model_path(model: str, revision: str | None = None) -> tuple[Path, str | None]:
    """A local folder for `model` and the Hub commit it came from (None for a local folder).

    A Hub id is fetched with `huggingface_hub.snapshot_download` (cached; weights in safetensors only), so the
    manifest can record the exact revision that produced the labels.
    """
    from ettin_cli.core.sources import resolve_source

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


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EttinError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else None


def detect_format(path: str | os.PathLike[str]) -> str:
    """Which teacher format a model folder holds, from its config files alone (no weights are read).

    A causal LM (`*ForCausalLM`, the Qwen2 of mxbai-rerank v2) -> `mxbai-v2`; a Sentence Transformers
    CrossEncoder folder or a `*ForSequenceClassification` config -> `cross-encoder`; a SentenceTransformer
    folder (modules.json, no CrossEncoder config) -> `bi-encoder`.
    """
    root = Path(path)
    config = _read_json(root / "config.json") or {}
    st_config = _read_json(root / "config_sentence_transformers.json") or {}
    has_modules = (root / "modules.json").is_file()
    architectures = [str(a) for a in (config.get("architectures") or [])]
    if any(a.endswith("ForCausalLM") for a in architectures):
        return "mxbai-v2"
    if st_config.get("model_type") == "CrossEncoder":
        return "cross-encoder"
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "cross-encoder"
    if has_modules:
        return "bi-encoder"
    raise EttinError(f"--teacher {root}: cannot tell the teacher format from its config (architectures: "
                     f"{', '.join(architectures) or 'none'}); pass --teacher-format mxbai-v2|cross-encoder|bi-encoder")


def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 over every file of a model folder (relative names and contents), for the manifest.

    Two folders with the same fingerprint hold byte-identical models, so labels are traceable to the exact
    teacher even when it is a local folder without a Hub revision.
    """
    from ettin_cli.core.files import sha256_file

    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in
                                                                               p.relative_to(root).parts)):
        digest.update(str(file.relative_to(root)).encode("utf-8") + b"\0")
        digest.update(sha256_file(file).encode("ascii") + b"\n")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Batching: sort by length, fill a token budget
# ---------------------------------------------------------------------------------------------------------


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


def _check_texts(queries: Sequence[Any], documents: Sequence[Any]) -> None:
    if len(queries) != len(documents):
        raise EttinError(f"{len(queries)} queries but {len(documents)} documents: they must pair up")
    for what, texts in (("query", queries), ("document", documents)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise EttinError(f"pair {i}: the {what} is {type(text).__name__}, not text")


class _BaseTeacher:
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
        self.on_batch: Any = None  # progress hook: called with the pairs of each finished batch (ettin score's bar)

    def describe(self) -> dict[str, Any]:
        """Identity of this teacher for manifests (what produced the labels)."""
        return {"teacher": self.name, "teacher_revision": self.revision, "format": self.format,
                "dtype": self.dtype, "attn": self.attn, "device": self.device, "max_length": self.max_length}

    def _default_budget(self, batch_size: int | None, max_tokens: int | None) -> int | None:
        if max_tokens is None and batch_size is None:
            return DEFAULT_MAX_TOKENS_GPU if self.device.startswith("cuda") else DEFAULT_MAX_TOKENS_CPU
        return max_tokens

    def _run_split(self, items: list[Any], forward) -> np.ndarray:
        """`forward(items)` -> scores; on out-of-memory split the batch in halves and retry, counting splits."""
        try:
            return forward(items)
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(exc):
                raise
        # Out of memory. Splitting happens here, outside the `except` block, so the failed batch's tensors
        # (held by the traceback's frames) are already released before the halves run.
        release_device_memory()
        if len(items) == 1:
            raise EttinError(f"out of memory on a single pair even after splitting its batch; lower "
                             f"--max-length (now {self.max_length}) or use a device with more memory")
        self.stats.oom_splits += 1
        logger.warning("out of memory on a batch of %d pairs: splitting it in two and retrying", len(items))
        mid = len(items) // 2
        return np.concatenate([self._run_split(items[:mid], forward), self._run_split(items[mid:], forward)])


# ---------------------------------------------------------------------------------------------------------
# mxbai-rerank v2
# ---------------------------------------------------------------------------------------------------------


class MxbaiV2Teacher(_BaseTeacher):
    """The mxbai-rerank v2 causal-LM teacher: template tokens in, `logit("1") - logit("0")` out."""

    format = "mxbai-v2"

    def __init__(self, path: Path, *, name: str, revision: str | None = None, device: str = "cpu",
                 dtype: str = "float32", attn: str = "sdpa", max_length: int | None = None,
                 instruction: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ettin_cli.core.hardware import torch_dtype

        super().__init__(name, path, device, dtype, attn, max_length or MXBAI_DEFAULT_MAX_LENGTH, revision)
        self.instruction = instruction
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            # Straight onto the GPU (Flash Attention 2 wants to be initialised there), else on CPU.
            self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype),
                                                              attn_implementation=attn,
                                                              device_map=device if device.startswith("cuda") else None)
        except (OSError, ValueError) as exc:
            raise EttinError(f"--teacher {name}: cannot load as an mxbai-v2 causal LM ({exc})") from None
        if not device.startswith("cuda"):
            self.model.to(device)
        self.model.eval()
        self.base = getattr(self.model, self.model.base_model_prefix)
        self.packed = attn == "flash_attention_2"
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        def ids(text: str) -> list[int]:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

        yes, no = ids("1"), ids("0")
        if len(yes) != 1 or len(no) != 1:
            raise EttinError(f"--teacher {name}: '1' and '0' must each be one token for the mxbai-v2 format")
        self.yes_id, self.no_id = yes[0], no[0]
        self.prefix_ids = ids(MXBAI_CHAT_PREFIX)
        self.suffix_ids = ids(MXBAI_CHAT_SUFFIX)
        self.sep_ids = ids(MXBAI_SEP)
        self.task_ids = ids(MXBAI_TASK_PROMPT)
        self.fixed_length = (len(self.prefix_ids) + 2 * len(self.sep_ids) + len(self.task_ids)
                             + len(self.suffix_ids))
        if self.fixed_length >= self.max_length:
            raise EttinError(f"--max-length {self.max_length} is too short: the mxbai-v2 template alone takes "
                             f"{self.fixed_length} tokens")
        self.query_limit = min(self.max_length * 3 // 4, self.max_length - self.fixed_length)
        # Only the two lm_head rows the score needs, folded into one vector: s = h . (w1 - w0) (+ b1 - b0).
        head = self.model.get_output_embeddings()
        with torch.no_grad():
            weight = head.weight.detach()
            self.head_vector = (weight[self.yes_id].float() - weight[self.no_id].float()).to(device)
            bias = getattr(head, "bias", None)
            self.head_bias = float(bias[self.yes_id] - bias[self.no_id]) if bias is not None else 0.0

    # -- tokens --------------------------------------------------------------------------------------------

    def encode_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> tuple[list[list[int]], np.ndarray,
                                                                                        np.ndarray]:
        """Template token ids for each pair, plus which queries and documents were truncated.

        The query piece is cut to 3/4 of max_length; the document piece gets what is left of max_length after
        the query and the fixed template tokens (so every sequence fits in max_length).
        """
        _check_texts(queries, documents)
        query_texts = [MXBAI_QUERY.format(query=q) for q in queries]
        if self.instruction:
            prefix = MXBAI_INSTRUCTION.format(instruction=self.instruction) + MXBAI_SEP
            query_texts = [prefix + q for q in query_texts]
        doc_texts = [MXBAI_DOCUMENT.format(document=d) for d in documents]
        doc_cap = self.max_length - self.fixed_length
        # Tokenize one token past each cap: a longer result means the text was cut.
        q_ids = self.tokenizer(query_texts, add_special_tokens=False, truncation=True,
                               max_length=self.query_limit + 1)["input_ids"] if query_texts else []
        d_ids = self.tokenizer(doc_texts, add_special_tokens=False, truncation=True,
                               max_length=doc_cap + 1)["input_ids"] if doc_texts else []
        sequences: list[list[int]] = []
        trunc_q = np.zeros(len(query_texts), dtype=bool)
        trunc_d = np.zeros(len(query_texts), dtype=bool)
        for i, (q, d) in enumerate(zip(q_ids, d_ids, strict=True)):
            if len(q) > self.query_limit:
                q, trunc_q[i] = q[: self.query_limit], True
            budget = doc_cap - len(q)
            if len(d) > budget:
                d, trunc_d[i] = d[:budget], True
            sequences.append(self.prefix_ids + q + self.sep_ids + d + self.sep_ids + self.task_ids
                             + self.suffix_ids)
        return sequences, trunc_q, trunc_d

    # -- forward -------------------------------------------------------------------------------------------

    def _forward_padded(self, seqs: list[list[int]]) -> np.ndarray:
        """Right-padded batch, no attention mask (causal: real tokens never see the padding after them)."""
        import torch

        lens = torch.tensor([len(s) for s in seqs])
        width = int(lens.max())
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        with torch.inference_mode():
            hidden = self.base(input_ids=ids.to(self.device), use_cache=False).last_hidden_state
            last = hidden[torch.arange(len(seqs), device=hidden.device), (lens - 1).to(hidden.device)]
            scores = last.float() @ self.head_vector + self.head_bias
        self.stats.tokens += int(lens.sum())
        self.stats.padding_tokens += len(seqs) * width - int(lens.sum())
        return scores.cpu().numpy().astype(np.float32)

    def _forward_packed(self, seqs: list[list[int]]) -> np.ndarray:
        """All pairs in one row, position_ids restarting per pair: Flash Attention 2's padding-free path.

        `cu_seq_lens_*`/`max_length_*` are passed so FA2's varlen kernel runs without re-deriving them; under
        SDPA/eager (CPU tests) transformers builds the block-diagonal mask from the position_ids instead.
        """
        import torch

        lens = torch.tensor([len(s) for s in seqs], dtype=torch.int32)
        flat = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
        positions = torch.cat([torch.arange(n, dtype=torch.long) for n in lens.tolist()])
        cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lens, 0)
        longest = int(lens.max())
        dev = self.device
        with torch.inference_mode():
            kwargs: dict[str, Any] = {}
            if self.attn == "flash_attention_2":
                kwargs = {"cu_seq_lens_q": cu.to(dev), "cu_seq_lens_k": cu.to(dev),
                          "max_length_q": longest, "max_length_k": longest}
            hidden = self.base(input_ids=flat[None].to(dev), position_ids=positions[None].to(dev),
                               use_cache=False, **kwargs).last_hidden_state[0]
            last = hidden[(cu[1:] - 1).long().to(hidden.device)]
            scores = last.float() @ self.head_vector + self.head_bias
        self.stats.tokens += int(lens.sum())
        return scores.cpu().numpy().astype(np.float32)

    def _forward(self, seqs: list[list[int]]) -> np.ndarray:
        return self._forward_packed(seqs) if self.packed else self._forward_padded(seqs)

    def score(self, queries: Sequence[str], documents: Sequence[str], batch_size: int | None = None,
              max_tokens_per_batch: int | None = None) -> np.ndarray:
        """Raw teacher logits for the pairs, in input order (batches are built length-sorted internally)."""
        seqs, trunc_q, trunc_d = self.encode_pairs(queries, documents)
        out = np.empty(len(seqs), dtype=np.float32)
        budget = self._default_budget(batch_size, max_tokens_per_batch)
        for idx in plan_batches([len(s) for s in seqs], max_tokens=budget, batch_size=batch_size,
                                packed=self.packed):
            out[idx] = self._run_split([seqs[i] for i in idx], self._forward)
            self.stats.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(idx))
        self.stats.pairs += len(seqs)
        self.stats.truncated_queries += int(trunc_q.sum())
        self.stats.truncated_documents += int(trunc_d.sum())
        self.stats.truncated_pairs += int((trunc_q | trunc_d).sum())
        return out


# ---------------------------------------------------------------------------------------------------------
# Sentence Transformers cross-encoders and bi-encoders
# ---------------------------------------------------------------------------------------------------------


def _st_model_kwargs(dtype: str, attn: str) -> dict[str, Any]:
    from ettin_cli.core.hardware import torch_dtype

    return {"dtype": torch_dtype(dtype), "attn_implementation": attn}


class CrossEncoderTeacher(_BaseTeacher):
    """A Sentence Transformers CrossEncoder scoring raw logits (identity activation)."""

    format = "cross-encoder"

    def __init__(self, path: Path, *, name: str, revision: str | None = None, device: str = "cpu",
                 dtype: str = "float32", attn: str = "sdpa", max_length: int | None = None) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        try:
            model = CrossEncoder(str(path), device=device, activation_fn=torch.nn.Identity(),
                                 model_kwargs=_st_model_kwargs(dtype, attn), max_length=max_length,
                                 local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EttinError(f"--teacher {name}: cannot load as a cross-encoder ({exc})") from None
        model.eval()
        self.model = model
        self.tokenizer = model.tokenizer
        length = max_length or model.max_seq_length or self.tokenizer.model_max_length
        super().__init__(name, path, device, dtype, attn, int(length), revision)
        model.max_seq_length = self.max_length

    def score(self, queries: Sequence[str], documents: Sequence[str], batch_size: int | None = None,
              max_tokens_per_batch: int | None = None) -> np.ndarray:
        """Raw CrossEncoder logits in input order; batches are token-length sorted and filled to a budget.

        Pairs are tokenized once (as `CrossEncoder.predict` would: pair encoding, longest_first truncation at
        max_length); those ids give the batch plan, the truncation count and the model inputs.
        """
        import torch

        _check_texts(queries, documents)
        n = len(queries)
        out = np.empty(n, dtype=np.float32)
        if n == 0:
            return out
        enc = self.tokenizer(list(queries), list(documents), truncation="longest_first", max_length=self.max_length)
        lengths = np.array([len(ids) for ids in enc["input_ids"]])
        budget = self._default_budget(batch_size, max_tokens_per_batch)
        identity = torch.nn.Identity()
        keys = [k for k in enc if k in ("input_ids", "attention_mask", "token_type_ids")]

        def forward(idx: list[int]) -> np.ndarray:
            if enc.encodings is None:  # a slow tokenizer: let Sentence Transformers prepare the inputs
                scores = self.model.predict([(queries[i], documents[i]) for i in idx], batch_size=len(idx),
                                            activation_fn=identity, show_progress_bar=False, convert_to_tensor=True)
            else:
                features = self.tokenizer.pad({k: [enc[k][i] for i in idx] for k in keys}, return_tensors="pt")
                features = {k: v.to(self.model.device) for k, v in features.items()}
                with torch.inference_mode():
                    scores = self.model(features)["scores"]
            return scores.float().reshape(len(idx), -1)[:, 0].cpu().numpy().astype(np.float32)

        for idx in plan_batches(lengths, max_tokens=budget, batch_size=batch_size):
            out[idx] = self._run_split(idx.tolist(), forward)
            width = int(lengths[idx].max())
            self.stats.tokens += int(lengths[idx].sum())
            self.stats.padding_tokens += len(idx) * width - int(lengths[idx].sum())
            self.stats.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(idx))
        if enc.encodings is not None:
            # longest_first cuts the longer side first: when the kept query is at least as long as the kept
            # document, the query was cut (too); otherwise only the document was.
            for e in enc.encodings:
                if e.overflowing:
                    ids = e.sequence_ids
                    kept_q, kept_d = ids.count(0), ids.count(1)
                    self.stats.truncated_pairs += 1
                    self.stats.truncated_queries += int(kept_q >= kept_d)
                    self.stats.truncated_documents += int(kept_q < kept_d)
        self.stats.pairs += n
        return out


class BiEncoderTeacher(_BaseTeacher):
    """A SentenceTransformer scoring the cosine similarity of query and document embeddings."""

    format = "bi-encoder"

    def __init__(self, path: Path, *, name: str, revision: str | None = None, device: str = "cpu",
                 dtype: str = "float32", attn: str = "sdpa", max_length: int | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(str(path), device=device, model_kwargs=_st_model_kwargs(dtype, attn),
                                        local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EttinError(f"--teacher {name}: cannot load as a bi-encoder ({exc})") from None
        if max_length:
            model.max_seq_length = max_length
        model.eval()
        self.model = model
        self.tokenizer = model.tokenizer
        super().__init__(name, path, device, dtype, attn, int(model.max_seq_length), revision)

    def _count_truncated(self, texts: list[str]) -> int:
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length + 1)["input_ids"]
        return sum(len(x) > self.max_length for x in ids)

    def score(self, queries: Sequence[str], documents: Sequence[str], batch_size: int | None = None,
              max_tokens_per_batch: int | None = None) -> np.ndarray:
        """Cosine similarity per pair; each distinct text is embedded once (queries repeat across pairs)."""
        _check_texts(queries, documents)
        n = len(queries)
        if n == 0:
            return np.empty(0, dtype=np.float32)
        if batch_size is None:
            # SentenceTransformer.encode sorts by length itself; a token budget becomes a worst-case batch size.
            batch_size = max(1, max_tokens_per_batch // self.max_length) if max_tokens_per_batch \
                else DEFAULT_ENCODER_BATCH
        uq = list(dict.fromkeys(queries))
        ud = list(dict.fromkeys(documents))

        def encode(texts: list[str]) -> np.ndarray:
            return self._run_split(texts, lambda items: self.model.encode(
                items, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False).astype(np.float32))

        q_emb = encode(uq)
        d_emb = encode(ud)
        q_index = {t: i for i, t in enumerate(uq)}
        d_index = {t: i for i, t in enumerate(ud)}
        qi = np.fromiter((q_index[q] for q in queries), dtype=np.int64, count=n)
        di = np.fromiter((d_index[d] for d in documents), dtype=np.int64, count=n)
        out = np.einsum("ij,ij->i", q_emb[qi], d_emb[di]).astype(np.float32)
        tq, td = self._count_truncated(uq), self._count_truncated(ud)
        self.stats.truncated_queries += tq
        self.stats.truncated_documents += td
        self.stats.truncated_pairs += td + tq  # an upper bound: a pair may have both sides cut
        self.stats.pairs += n
        self.stats.batches += math.ceil(len(uq) / batch_size) + math.ceil(len(ud) / batch_size)
        return out


Teacher = MxbaiV2Teacher | CrossEncoderTeacher | BiEncoderTeacher

_CLASSES = {"mxbai-v2": MxbaiV2Teacher, "cross-encoder": CrossEncoderTeacher, "bi-encoder": BiEncoderTeacher}


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

    def load(self, max_length: int | None = None, instruction: str | None = None) -> Teacher:
        """Load the weights on the resolved device, dtype and attention implementation.

        When `auto` picked Flash Attention 2 and the architecture has no FA2 implementation (a BERT
        cross-encoder, say), the model is loaded with SDPA instead, and the log says so.
        """
        kwargs: dict[str, Any] = {"name": self.name, "revision": self.revision, "device": self.device,
                                  "dtype": self.dtype, "attn": self.attn, "max_length": max_length}
        if self.format == "mxbai-v2":
            kwargs["instruction"] = instruction
        elif instruction:
            raise EttinError("--instruction applies to the mxbai-v2 format only")
        try:
            teacher = _CLASSES[self.format](self.path, **kwargs)
        except EttinError as exc:
            if not (self.attn_chosen_automatically and self.attn == "flash_attention_2"):
                raise
            logger.warning("%s: Flash Attention 2 unavailable for this model (%s); using SDPA", self.name, exc)
            teacher = _CLASSES[self.format](self.path, **{**kwargs, "attn": "sdpa"})
        logger.debug("teacher %s: %s on %s, %s + %s, max length %d", self.name, self.format, self.device,
                     self.dtype, self.attn, teacher.max_length)
        return teacher


def resolve_teacher(model: str | os.PathLike[str], format: str = "auto", *, device: str = "auto",
                    dtype: str = "auto", attn: str = "auto", revision: str | None = None) -> TeacherSpec:
    """Find the teacher (local folder or Hub snapshot), decide its format and the precision it will run in."""
    from ettin_cli.core.hardware import resolve_device, resolve_precision

    if format not in ("auto", *FORMATS):
        raise EttinError(f"--teacher-format must be auto or one of {', '.join(FORMATS)}, got '{format}'")
    name = str(model)
    path, resolved_revision = resolve_model_path(name, revision)
    if format == "auto":
        format = detect_format(path)
        logger.info("teacher format: %s (detected from %s)", format, name)
    dev = resolve_device(device)
    precision = resolve_precision(dev, dtype, attn)
    return TeacherSpec(name=name, path=path, revision=resolved_revision, format=format, device=dev,
                       dtype=precision.dtype, attn=precision.attn, attn_chosen_automatically=attn == "auto")


def load_teacher(model: str | os.PathLike[str], format: str = "auto", *, device: str = "auto", dtype: str = "auto",
                 attn: str = "auto", max_length: int | None = None, revision: str | None = None,
                 instruction: str | None = None) -> Teacher:
    """Load a teacher (Hub id or local folder) ready to `.score(queries, documents)`.

    `format="auto"` decides from the model's config files and logs the choice; `device`, `dtype` and `attn`
    default to the best the hardware supports (bf16 + Flash Attention 2 on a capable GPU, fp32 + SDPA on CPU).
    """
    if max_length is not None and max_length < 1:
        raise EttinError(f"--max-length must be >= 1, got {max_length}")
    spec = resolve_teacher(model, format, device=device, dtype=dtype, attn=attn, revision=revision)
    return spec.load(max_length=max_length, instruction=instruction)
