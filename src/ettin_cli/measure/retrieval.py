"""First-stage retrieval: the cheap step whose top-k a reranker re-orders.

Every published Ettin figure reranks a first stage's top-100 (BM25 for NanoBEIR, six embedders for MTEB), so
evaluation and hard-negative mining both need the same two retrievers:

- `bm25_search`: lexical BM25 through `bm25s` (sparse index, numpy backend, deterministic).
- `dense_search`: a Sentence Transformers bi-encoder. The corpus is encoded chunk by chunk and each chunk's
  scores are merged into a running top-k per query, so memory holds the query embeddings, one chunk of
  document embeddings and a (queries x top_k) buffer, never the whole corpus matrix: a large corpus streams.

Both return `dict[query_id, list[(doc_id, score)]]`, best first, ties broken by corpus order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ettin_cli.core import console
from ettin_cli.core.errors import EttinError

SearchResults = dict[str, list[tuple[str, float]]]

# Documents tokenized / queries searched per step: bounds memory per step and paces the progress bar.
BM25_CHUNK = 10_000


def _check_inputs(corpus: Mapping[str, str], queries: Mapping[str, str], top_k: int) -> None:
    if top_k < 1:
        raise EttinError(f"--top-k must be at least 1, got {top_k}")
    if not corpus:
        raise EttinError("retrieval: the corpus is empty")
    if not queries:
        raise EttinError("retrieval: no queries to search for")
    empty = [qid for qid, text in queries.items() if not str(text).strip()]
    if empty:
        raise EttinError(f"retrieval: {len(empty)} empty queries (first ids: {', '.join(map(str, empty[:5]))})")


def bm25_search(
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    top_k: int,
    *,
    k1: float = 1.5,
    b: float = 0.75,
    stopwords: str | None = "en",
    keep_zero_scores: bool = False,
    chunk_size: int = BM25_CHUNK,
) -> SearchResults:
    """BM25 top-`top_k` documents for every query, best first (bm25s, Lucene scoring).

    The corpus is tokenized `chunk_size` documents at a time into one growing vocabulary (bm25s `Tokenizer`),
    so progress is visible and no second copy of the texts is built. Documents that share no term with the
    query score 0 and are dropped unless `keep_zero_scores`: they carry no lexical evidence, and reranking an
    arbitrary zero-score tail would only measure luck.
    """
    import bm25s
    from bm25s.tokenization import Tokenized, Tokenizer

    _check_inputs(corpus, queries, top_k)
    doc_ids = list(corpus)
    query_ids = list(queries)
    k = min(top_k, len(doc_ids))
    tokenizer = Tokenizer(stopwords=stopwords)
    token_ids: list[list[int]] = []
    with console.progress(len(doc_ids), "BM25 index", unit="docs") as bar:
        for start in range(0, len(doc_ids), chunk_size):
            chunk = doc_ids[start:start + chunk_size]
            token_ids.extend(tokenizer.tokenize([corpus[d] for d in chunk], update_vocab=True, return_as="ids",
                                                show_progress=False))
            bar.advance(len(chunk))
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(Tokenized(ids=token_ids, vocab=tokenizer.get_vocab_dict()), show_progress=False)
    del token_ids
    results: SearchResults = {}
    with console.progress(len(query_ids), "BM25 search", unit="queries") as bar:
        for start in range(0, len(query_ids), chunk_size):
            chunk = query_ids[start:start + chunk_size]
            # Terms the corpus never uses are not added to the vocabulary: they cannot match anything.
            q_tokens = tokenizer.tokenize([queries[q] for q in chunk], update_vocab="never", return_as="ids",
                                          show_progress=False)
            found = retriever.retrieve(q_tokens, k=k, show_progress=False, n_threads=0)
            for row, qid in enumerate(chunk):
                hits = [(int(i), float(s)) for i, s in zip(found.documents[row], found.scores[row], strict=True)
                        if keep_zero_scores or s > 0]
                hits.sort(key=lambda h: (-h[1], h[0]))  # ties in corpus order, whatever the top-k selection did
                results[qid] = [(doc_ids[i], s) for i, s in hits]
            bar.advance(len(chunk))
    return results


def load_bi_encoder(model: Any, device: str | None = None) -> Any:
    """A SentenceTransformer from an instance, a local folder or a Hub id (one-line error when it cannot load)."""
    from sentence_transformers import SentenceTransformer

    if isinstance(model, SentenceTransformer):
        return model
    name = str(model)
    if os.path.isfile(name):
        raise EttinError(f"retriever '{name}': a file, not a model folder")
    if not os.path.isdir(name) and name.startswith((".", "/", "~")):
        raise EttinError(f"retriever '{name}': model folder not found")
    if not os.path.isdir(name) and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise EttinError(f"retriever '{name}': not a local folder, and the Hub is offline (HF_HUB_OFFLINE=1)")
    try:
        return SentenceTransformer(name, device=device)
    except Exception as exc:  # noqa: BLE001 - any load failure is a user-fixable bad model name/path
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EttinError(f"retriever '{name}': cannot load it as a Sentence Transformers model ({reason})") from None


def dense_search(
    model: Any,
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    top_k: int,
    *,
    batch_size: int = 64,
    chunk_size: int = 50_000,
    device: str | None = None,
) -> SearchResults:
    """Bi-encoder top-`top_k` documents for every query, best first, with a streaming corpus.

    `model` is a `SentenceTransformer`, a local folder or a Hub id. Queries go through `encode_query` and
    documents through `encode_document` (so models with query/document prompts get them), and scores use the
    model's own similarity function (cosine for all-MiniLM-L6-v2). The corpus is encoded `chunk_size`
    documents at a time; each chunk's top-k is merged into the running top-k.
    """
    import torch

    _check_inputs(corpus, queries, top_k)
    if chunk_size < 1 or batch_size < 1:
        raise EttinError("dense_search: chunk_size and batch_size must be at least 1")
    st = load_bi_encoder(model, device)
    doc_ids = list(corpus)
    query_ids = list(queries)
    k = min(top_k, len(doc_ids))
    q_emb = st.encode_query([queries[q] for q in query_ids], batch_size=batch_size, convert_to_tensor=True,
                            show_progress_bar=False).float()
    best_scores = torch.full((len(query_ids), 0), float("-inf"), device=q_emb.device)
    best_index = torch.zeros((len(query_ids), 0), dtype=torch.long, device=q_emb.device)
    with console.progress(len(doc_ids), "Dense search: encoding corpus", unit="docs") as bar:
        for start in range(0, len(doc_ids), chunk_size):
            chunk = doc_ids[start:start + chunk_size]
            d_emb = st.encode_document([corpus[d] for d in chunk], batch_size=batch_size, convert_to_tensor=True,
                                       show_progress_bar=False).float().to(q_emb.device)
            scores = st.similarity(q_emb, d_emb).float()
            top = torch.topk(scores, k=min(k, len(chunk)), dim=1)
            merged_scores = torch.cat([best_scores, top.values], dim=1)
            merged_index = torch.cat([best_index, top.indices + start], dim=1)
            keep = torch.topk(merged_scores, k=min(k, merged_scores.shape[1]), dim=1)
            best_scores = keep.values
            best_index = torch.gather(merged_index, 1, keep.indices)
            bar.advance(len(chunk))
    results: SearchResults = {}
    scores_np = best_scores.cpu().numpy()
    index_np = best_index.cpu().numpy()
    for row, qid in enumerate(query_ids):
        # Re-sort on (-score, corpus position) so ties come out in corpus order whatever topk returned.
        pairs = sorted(zip(scores_np[row].tolist(), index_np[row].tolist(), strict=True), key=lambda p: (-p[0], p[1]))
        results[qid] = [(doc_ids[i], float(s)) for s, i in pairs]
    return results


# Kept for callers written against the first draft (mining.py).
_load_bi_encoder = load_bi_encoder
