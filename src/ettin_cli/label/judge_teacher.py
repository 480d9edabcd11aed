"""The judge engine: any causal-LM reranker described by a judge format, scored as fast as the hardware allows.

The score is `logit(positive) - logit(negative)` at the last token of the format's template (`judges.py`):
`logit("1") - logit("0")` for mxbai-rerank v2, `logit("yes") - logit("no")` for Qwen3-Reranker. Labelling is the
expensive step of the whole recipe (~143M pairs through a 1.5B-8B model), so the engine only computes what the
score needs: the base model's last hidden state at the last real token of each pair, dotted with the
*difference* of the two lm_head rows (never the 151k-wide vocabulary at every position). Pairs are sorted by
token length and packed into batches by a token budget, so padding is a few percent; on a GPU with Flash
Attention 2 the batch is one packed row (position_ids restart per pair, no padding at all); on CPU/SDPA the
batch is right-padded *without* an attention mask: in a causal model a real token never sees the padding
after it, so the last real token's state is exactly the unpadded one and SDPA keeps its fast causal kernel.
Out-of-memory batches are split and retried (`batching.run_split`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ettin_cli.core.errors import EttinError
from ettin_cli.core.hardware import torch_dtype
from ettin_cli.label.base import BaseTeacher
from ettin_cli.label.batching import check_texts, plan_batches
from ettin_cli.label.fit import refuse_loading_problems
from ettin_cli.label.judges import JudgeFormat, answer_ids, token_ids


class JudgeTeacher(BaseTeacher):
    """A causal-LM judge: template tokens in, `logit(positive) - logit(negative)` at the last token out."""

    def __init__(self, path: Path, *, judge: JudgeFormat, name: str, revision: str | None = None,
                 device: str = "cpu", dtype: str = "float32", attn: str = "sdpa", max_length: int | None = None,
                 instruction: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(name, path, device, dtype, attn, max_length or judge.max_length, revision)
        self.judge = judge
        self.format = judge.name
        if instruction and not judge.instruction:
            raise EttinError(f"--instruction: judge format {judge.name} has no instruction piece")
        self.instruction = judge.default_instruction if instruction is None else instruction
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            # Straight onto the GPU (Flash Attention 2 wants to be initialised there), else on CPU.
            self.model, info = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=torch_dtype(dtype), attn_implementation=attn, output_loading_info=True,
                device_map=device if device.startswith("cuda") else None)
        except (OSError, ValueError) as exc:
            raise EttinError(f"--teacher {name}: cannot load as a {judge.name} causal LM ({exc})") from None
        refuse_loading_problems(info, name, judge.name)
        if not device.startswith("cuda"):
            self.model.to(device)
        self.model.eval()
        self.base = getattr(self.model, self.model.base_model_prefix)
        self.packed = attn == "flash_attention_2"
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.yes_id, self.no_id = answer_ids(judge, self.tokenizer, f"--teacher {name}")
        before, between, after = judge.segments()
        self.before_ids = [i for text in before for i in token_ids(self.tokenizer, text)]
        self.between_ids = [i for text in between for i in token_ids(self.tokenizer, text)]
        self.after_ids = [i for text in after for i in token_ids(self.tokenizer, text)]
        self.fixed_length = len(self.before_ids) + len(self.between_ids) + len(self.after_ids)
        if self.fixed_length >= self.max_length:
            raise EttinError(f"--max-length {self.max_length} is too short: the {judge.name} template alone takes "
                             f"{self.fixed_length} tokens")
        self.query_limit = min(int(self.max_length * judge.query_share), self.max_length - self.fixed_length)
        # Only the two lm_head rows the score needs, folded into one vector: s = h . (w+ - w-) (+ b+ - b-).
        head = self.model.get_output_embeddings()
        with torch.no_grad():
            weight = head.weight.detach()
            self.head_vector = (weight[self.yes_id].float() - weight[self.no_id].float()).to(device)
            bias = getattr(head, "bias", None)
            self.head_bias = float(bias[self.yes_id] - bias[self.no_id]) if bias is not None else 0.0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "instruction": self.instruction, "judge_format_sha256": self.judge.sha256}

    # -- tokens --------------------------------------------------------------------------------------------

    def encode_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> tuple[list[list[int]], np.ndarray,
                                                                                        np.ndarray]:
        """Template token ids for each pair, plus which queries and documents were truncated.

        The query piece (with its instruction) is cut to the format's share of max_length; the document piece
        gets what is left of max_length after the query and the fixed template tokens (every sequence fits).
        """
        check_texts(queries, documents)
        query_texts = [self.judge.query_text(q, self.instruction) for q in queries]
        doc_texts = [self.judge.document_text(d) for d in documents]
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
            sequences.append(self.before_ids + q + self.between_ids + d + self.after_ids)
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
        """Raw judge logits for the pairs, in input order (batches are built length-sorted internally)."""
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
