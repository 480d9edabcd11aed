"""Sentence Transformers teachers: cross-encoders (raw logits) and bi-encoders (cosine similarity).

- `cross-encoder`: a Sentence Transformers CrossEncoder (including a student saved by `ettin train`) or any
  `*ForSequenceClassification` model; raw logits (identity activation, never a sigmoid), token-budget batches.
- `bi-encoder`: a SentenceTransformer; the score is the cosine similarity of the two embeddings (the demo's
  offline teacher, all-MiniLM-L6-v2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ettin_cli.core.errors import EttinError
from ettin_cli.core.hardware import torch_dtype
from ettin_cli.label.base import DEFAULT_ENCODER_BATCH, BaseTeacher
from ettin_cli.label.batching import check_texts, plan_batches
from ettin_cli.label.fit import loading_report, refuse_loading_problems


def _st_model_kwargs(dtype: str, attn: str) -> dict[str, Any]:
    return {"dtype": torch_dtype(dtype), "attn_implementation": attn}


class CrossEncoderTeacher(BaseTeacher):
    """A Sentence Transformers CrossEncoder scoring raw logits (identity activation)."""

    format = "cross-encoder"

    def __init__(self, path: Path, *, name: str, revision: str | None = None, device: str = "cpu",
                 dtype: str = "float32", attn: str = "sdpa", max_length: int | None = None) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        try:
            with loading_report() as info:
                model = CrossEncoder(str(path), device=device, activation_fn=torch.nn.Identity(),
                                     model_kwargs=_st_model_kwargs(dtype, attn), max_length=max_length,
                                     local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EttinError(f"--teacher {name}: cannot load as a cross-encoder ({exc})") from None
        refuse_loading_problems(info, name, "cross-encoder")
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

        check_texts(queries, documents)
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


# Batches of texts per `encode` call of the bi-encoder: the unit its progress is reported in.
ENCODE_CHUNK_BATCHES = 4


class BiEncoderTeacher(BaseTeacher):
    """A SentenceTransformer scoring the cosine similarity of query and document embeddings."""

    format = "bi-encoder"

    def __init__(self, path: Path, *, name: str, revision: str | None = None, device: str = "cpu",
                 dtype: str = "float32", attn: str = "sdpa", max_length: int | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        try:
            with loading_report() as info:
                model = SentenceTransformer(str(path), device=device, model_kwargs=_st_model_kwargs(dtype, attn),
                                            local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EttinError(f"--teacher {name}: cannot load as a bi-encoder ({exc})") from None
        # A pretrained LM's own heads (an MLM head, a pooler) are dropped by design: only new weights are wrong.
        refuse_loading_problems({"missing_keys": info["missing_keys"], "mismatched_keys": info["mismatched_keys"]},
                                name, "bi-encoder")
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
        check_texts(queries, documents)
        n = len(queries)
        if n == 0:
            return np.empty(0, dtype=np.float32)
        if batch_size is None:
            # SentenceTransformer.encode sorts by length itself; a token budget becomes a worst-case batch size.
            batch_size = max(1, max_tokens_per_batch // self.max_length) if max_tokens_per_batch \
                else DEFAULT_ENCODER_BATCH
        uq = list(dict.fromkeys(queries))
        ud = list(dict.fromkeys(documents))
        # Texts go to `encode` a few batches at a time so the caller's bar (`on_batch`, in pairs) moves during a
        # window instead of jumping at its end: each chunk reports its share of the window's pairs.
        chunk = batch_size * ENCODE_CHUNK_BATCHES
        progress = {"texts": 0, "reported": 0, "total": len(uq) + len(ud)}

        def encode(texts: list[str]) -> np.ndarray:
            parts = []
            for start in range(0, len(texts), chunk):
                part = texts[start:start + chunk]
                parts.append(self._run_split(part, lambda items: self.model.encode(
                    items, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                    show_progress_bar=False).astype(np.float32)))
                progress["texts"] += len(part)
                if self.on_batch is not None:
                    target = n * progress["texts"] // progress["total"]
                    self.on_batch(target - progress["reported"])
                    progress["reported"] = target
            return np.concatenate(parts)

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
