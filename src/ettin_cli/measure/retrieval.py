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

from collections.abc import Mapping
from typing import Any

from ettin_cli.core import console
from ettin_cli.core.errors import EttinError
from ettin_cli.core.sources import resolve_source

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


class RunningTopK:
    """Per query, the best `k` (score, corpus position) seen so far, merged chunk by chunk; ties go to the earlier
    document. The one running top-k of the project: dense search merges each corpus chunk into it, mining merges
    each chunk's search results.

    Held as a (queries x k) matrix, so a merge is two stable sorts over all queries at once; position -1 marks an
    empty slot (fewer than k documents seen so far).
    """

    def __init__(self, query_ids: list[str], k: int) -> None:
        import numpy as np

        self.query_ids = list(query_ids)
        self.k = k
        self._row = {q: i for i, q in enumerate(self.query_ids)}
        self._scores = np.full((len(self.query_ids), 0), -np.inf)
        self._positions = np.full((len(self.query_ids), 0), -1, dtype=np.int64)
        self._views: tuple[dict[str, Any], dict[str, Any]] | None = None

    def merge_rows(self, scores: Any, positions: Any) -> None:
        """Merge a (queries x m) block of scores and their corpus positions (-1: no document) into the top-k."""
        import numpy as np

        s = np.concatenate([self._scores, np.asarray(scores, dtype=np.float64)], axis=1)
        p = np.concatenate([self._positions, np.asarray(positions, dtype=np.int64)], axis=1)
        s = np.where(p < 0, -np.inf, s)
        by_position = np.argsort(np.where(p < 0, np.iinfo(np.int64).max, p), axis=1, kind="stable")
        s, p = np.take_along_axis(s, by_position, 1), np.take_along_axis(p, by_position, 1)
        by_score = np.argsort(-s, axis=1, kind="stable")[:, : self.k]
        self._scores, self._positions = np.take_along_axis(s, by_score, 1), np.take_along_axis(p, by_score, 1)
        self._views = None

    def merge(self, qid: str, scores: Any, positions: Any) -> None:
        """Merge one query's hits (scores and corpus positions)."""
        self.merge_hits({qid: (scores, positions)})

    def merge_hits(self, hits: Mapping[str, tuple[Any, Any]]) -> None:
        """Merge per-query hits of varying length: `{qid: (scores, positions)}`; other queries are untouched."""
        import numpy as np

        width = max((len(s) for s, _ in hits.values()), default=0)
        if width == 0:
            return
        scores = np.full((len(self.query_ids), width), -np.inf)
        positions = np.full((len(self.query_ids), width), -1, dtype=np.int64)
        for qid, (s, p) in hits.items():
            row = self._row[qid]
            scores[row, : len(s)] = s
            positions[row, : len(p)] = p
        self.merge_rows(scores, positions)

    def _build_views(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if self._views is None:
            keep = self._positions >= 0
            self._views = ({q: self._scores[i][keep[i]] for i, q in enumerate(self.query_ids)},
                           {q: self._positions[i][keep[i]] for i, q in enumerate(self.query_ids)})
        return self._views

    @property
    def scores(self) -> dict[str, Any]:
        """qid -> the kept scores, best first."""
        return self._build_views()[0]

    @property
    def positions(self) -> dict[str, Any]:
        """qid -> the kept corpus positions, in the order of `scores`."""
        return self._build_views()[1]

    def referenced(self) -> set[int]:
        """Every corpus position still in some query's top-k (the documents whose text must be kept)."""
        return {int(p) for p in self._positions[self._positions >= 0].ravel()}


def load_bi_encoder(model: Any, device: str | None = None) -> Any:
    """A SentenceTransformer from an instance, a local folder or a Hub id (one-line error when it cannot load)."""
    from sentence_transformers import SentenceTransformer

    if isinstance(model, SentenceTransformer):
        return model

    name = str(model)
    source = resolve_source(name, option="--retriever", offline_hint="--retriever DIR (a local model folder)")
    if source.path is not None and not source.path.is_dir():
        raise EttinError(f"retriever '{name}': a file, not a model folder")
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
    running = RunningTopK(query_ids, k)
    with console.progress(len(doc_ids), "Dense search: encoding corpus", unit="docs") as bar:
        for start in range(0, len(doc_ids), chunk_size):
            chunk = doc_ids[start:start + chunk_size]
            d_emb = st.encode_document([corpus[d] for d in chunk], batch_size=batch_size, convert_to_tensor=True,
                                       show_progress_bar=False).float().to(q_emb.device)
            scores = st.similarity(q_emb, d_emb).float()
            top = torch.topk(scores, k=min(k, len(chunk)), dim=1)  # on the device: only k per query leave it
            running.merge_rows(top.values.cpu().numpy(), (top.indices + start).cpu().numpy())
            bar.advance(len(chunk))
    return {qid: [(doc_ids[int(i)], float(s)) for s, i in zip(running.scores[qid], running.positions[qid],
                                                              strict=True)]
            for qid in query_ids}


# Kept for callers written against the first draft (mining.py).
_load_bi_encoder = load_bi_encoder
