"""First-stage retrieval: BM25 (bm25s) and dense (Sentence Transformers) top-k, checked against direct computations."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ettin_cli.core.errors import EttinError
from ettin_cli.measure.retrieval import bm25_search, dense_search


@pytest.fixture(scope="module")
def cran_queries(cranfield) -> dict[str, str]:
    return {qid: cranfield.queries[qid] for qid in cranfield.judged_queries[:40]}


@pytest.fixture(scope="module")
def cran_bm25(cranfield, cran_queries):
    return bm25_search(cranfield.corpus, cran_queries, 50)


def test_bm25_results_are_ranked_corpus_documents(cranfield, cran_queries, cran_bm25):
    assert list(cran_bm25) == list(cran_queries)
    for hits in cran_bm25.values():
        assert 0 < len(hits) <= 50
        assert all(did in cranfield.corpus for did, _ in hits)
        assert len({did for did, _ in hits}) == len(hits)
        scores = [s for _, s in hits]
        assert scores == sorted(scores, reverse=True)
        assert all(s > 0 for s in scores)


def test_bm25_matches_a_direct_bm25s_scoring(cranfield, cran_queries, cran_bm25):
    """Our top-k equals the best k of bm25s's full score vector (same tokenizer), per query."""
    import bm25s
    from bm25s.tokenization import Tokenizer

    doc_ids = list(cranfield.corpus)
    tok = Tokenizer(stopwords="en")
    ids = tok.tokenize(list(cranfield.corpus.values()), update_vocab=True, return_as="ids", show_progress=False)
    model = bm25s.BM25(method="lucene")
    model.index(bm25s.tokenization.Tokenized(ids=ids, vocab=tok.get_vocab_dict()), show_progress=False)
    inverse = {v: k for k, v in tok.get_vocab_dict().items()}
    for qid in list(cran_queries)[:10]:
        q_ids = tok.tokenize([cran_queries[qid]], update_vocab="never", return_as="ids", show_progress=False)[0]
        full = model.get_scores([inverse[i] for i in q_ids if inverse[i]])
        expected = np.sort(full[full > 0])[::-1][:50]
        got = np.array([s for _, s in cran_bm25[qid]])
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        for did, score in cran_bm25[qid]:
            assert full[doc_ids.index(did)] == pytest.approx(score, rel=1e-5)


def test_bm25_beats_a_random_ranking(cranfield, cran_queries, cran_bm25):
    import ir_measures
    from ir_measures import nDCG

    qrels = {q: cranfield.qrels[q] for q in cran_queries}
    rng = random.Random(0)
    doc_ids = list(cranfield.corpus)
    random_run = {q: {d: float(50 - i) for i, d in enumerate(rng.sample(doc_ids, 50))} for q in cran_queries}
    bm25_run = {q: dict(hits) for q, hits in cran_bm25.items()}
    bm25 = ir_measures.calc_aggregate([nDCG @ 10], qrels, bm25_run)[nDCG @ 10]
    rand = ir_measures.calc_aggregate([nDCG @ 10], qrels, random_run)[nDCG @ 10]
    assert bm25 > 3 * rand + 0.05


def test_bm25_chunking_and_reruns_do_not_change_results(cranfield, cran_queries, cran_bm25):
    chunked = bm25_search(cranfield.corpus, cran_queries, 50, chunk_size=97)
    assert chunked == cran_bm25
    assert bm25_search(cranfield.corpus, cran_queries, 50) == cran_bm25


def test_bm25_queries_without_matching_terms_get_no_candidates():
    corpus = {"a": "wing lift at high speed", "b": "heat transfer in slabs", "c": "wing flutter"}
    out = bm25_search(corpus, {"q1": "wing", "q2": "zebra giraffe", "q3": "the and of"}, top_k=10)
    assert [d for d, _ in out["q1"]] == ["a", "c"] or [d for d, _ in out["q1"]] == ["c", "a"]
    assert out["q2"] == [] and out["q3"] == []
    kept = bm25_search(corpus, {"q2": "zebra"}, top_k=10, keep_zero_scores=True)
    assert len(kept["q2"]) == 3


@pytest.mark.parametrize(
    ("corpus", "queries", "top_k", "message"),
    [
        ({"a": "x y"}, {"q": "  "}, 5, "empty queries"),
        ({"a": "x y"}, {"q": "x"}, 0, "--top-k"),
        ({}, {"q": "x"}, 5, "corpus is empty"),
        ({"a": "x y"}, {}, 5, "no queries"),
    ],
)
def test_bad_retrieval_input_is_a_one_line_error(corpus, queries, top_k, message):
    with pytest.raises(EttinError, match=message) as info:
        bm25_search(corpus, queries, top_k)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def minilm(minilm_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path), device="cpu")
    model.max_seq_length = 48  # the test checks ranking/merging logic, not quality: keep encoding cheap
    return model


def test_dense_search_streams_the_corpus_and_matches_semantic_search(cranfield, minilm):
    """Chunked top-k equals one-shot top-k and Sentence Transformers' own semantic_search on the same model."""
    from sentence_transformers.util import semantic_search

    doc_ids = list(cranfield.corpus)[:40]
    corpus = {d: cranfield.corpus[d] for d in doc_ids}
    queries = {q: cranfield.queries[q] for q in cranfield.judged_queries[:5]}
    chunked = dense_search(minilm, corpus, queries, 10, chunk_size=7, batch_size=16)
    whole = dense_search(minilm, corpus, queries, 10, chunk_size=10_000, batch_size=16)
    q_emb = minilm.encode_query(list(queries.values()), convert_to_tensor=True)
    d_emb = minilm.encode_document(list(corpus.values()), convert_to_tensor=True)
    reference = semantic_search(q_emb, d_emb, top_k=10)
    for (qid, hits), ref in zip(chunked.items(), reference, strict=True):
        assert [d for d, _ in hits] == [d for d, _ in whole[qid]]
        assert [d for d, _ in hits] == [doc_ids[r["corpus_id"]] for r in ref]
        np.testing.assert_allclose([s for _, s in hits], [r["score"] for r in ref], atol=1e-5)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_dense_search_refuses_a_missing_model_folder(tmp_path):
    with pytest.raises(EttinError, match="no such file or folder") as info:
        dense_search(str(tmp_path / "nope"), {"a": "x"}, {"q": "x"}, 5)
    assert "\n" not in str(info.value)
