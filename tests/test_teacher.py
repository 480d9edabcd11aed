"""Teachers: the mxbai-v2 template token by token, the fast path against a naive full-vocabulary forward,
length-sorted token-budget batching, OOM splitting, and the cross-encoder / bi-encoder formats."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from ettin_cli.core.errors import EttinError

# The template of ../shared/RECIPE.md, written out here independently of ettin_cli.label.teacher.
PREFIX = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
          "<|im_start|>user\n")
TASK = ("You are a search relevance expert who evaluates how well documents match search queries. For each "
        "query-document pair, carefully analyze the semantic relationship between them, then provide your "
        "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def mxbai(tiny_qwen2_teacher_path):
    from ettin_cli.label.teacher import load_teacher

    return load_teacher(tiny_qwen2_teacher_path, max_length=320, device="cpu")


@pytest.fixture(scope="module")
def long_mxbai(tiny_qwen2_teacher_path):
    """max_length large enough that the query's 3/4 cap binds before the template's fixed tokens do."""
    from ettin_cli.label.teacher import load_teacher

    return load_teacher(tiny_qwen2_teacher_path, max_length=1024, device="cpu")


@pytest.fixture(scope="module")
def pairs(cranfield_pairs):
    return [r["query"] for r in cranfield_pairs], [r["document"] for r in cranfield_pairs]


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_auto_detects_mxbai_and_logs_it(tiny_qwen2_teacher_path):
    from ettin_cli.core.console import logger
    from ettin_cli.label.teacher import load_teacher

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        teacher = load_teacher(tiny_qwen2_teacher_path, device="cpu", max_length=256)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert teacher.format == "mxbai-v2"
    assert any("mxbai-v2" in r.getMessage() for r in records)


def test_mxbai_token_layout_matches_the_recipe_template(mxbai):
    tok = mxbai.tokenizer
    query, document = "what is the lift of a wing at mach 2", "the lift of a thin wing\nat supersonic speed"
    (seq,), trunc_q, trunc_d = mxbai.encode_pairs([query], [document])
    assert not trunc_q[0] and not trunc_d[0]
    pieces = [PREFIX, f"query: {query}", "\n", f"document: {document}", "\n", TASK, SUFFIX]
    expected = []
    for piece in pieces:
        expected += _ids(tok, piece)
    assert seq == expected  # token by token
    # Each piece sits where the template says, and the chat markers are single special tokens.
    at = 0
    for piece in pieces:
        n = len(_ids(tok, piece))
        assert tok.decode(seq[at: at + n]) == piece
        at += n
    assert at == len(seq)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert seq[0] == im_start
    assert seq.count(im_start) == 3 and seq.count(im_end) == 2
    assert tok.decode(seq[-len(_ids(tok, SUFFIX)):]) == SUFFIX
    assert tok.decode(seq) == "".join(pieces)


def test_mxbai_instruction_precedes_the_query(tiny_qwen2_teacher_path):
    from ettin_cli.label.teacher import load_teacher

    teacher = load_teacher(tiny_qwen2_teacher_path, device="cpu", max_length=512, instruction="find aero papers")
    (seq,), _, _ = teacher.encode_pairs(["wing lift"], ["a wing"])
    tok = teacher.tokenizer
    expected = (_ids(tok, PREFIX) + _ids(tok, "instruction: find aero papers\nquery: wing lift") + _ids(tok, "\n")
                + _ids(tok, "document: a wing") + _ids(tok, "\n") + _ids(tok, TASK) + _ids(tok, SUFFIX))
    assert seq == expected


def test_mxbai_truncation_query_three_quarters_document_the_rest(long_mxbai):
    mxbai = long_mxbai
    tok = mxbai.tokenizer
    fixed = sum(len(_ids(tok, p)) for p in (PREFIX, "\n", "\n", TASK, SUFFIX))
    max_length = mxbai.max_length
    long_query = " ".join(["supersonic boundary layer transition"] * 300)
    long_doc = " ".join(["the flow separates behind the shock"] * 400)
    seqs, trunc_q, trunc_d = mxbai.encode_pairs([long_query, "short query"], [long_doc, long_doc])
    q_full = _ids(tok, f"query: {long_query}")
    d_full = _ids(tok, f"document: {long_doc}")
    # Pair 0: the query is cut to 3/4 of max_length (or what the template leaves), the document gets the rest.
    q_cap = max_length * 3 // 4
    assert q_cap < max_length - fixed
    assert trunc_q[0] and trunc_d[0]
    assert len(seqs[0]) == max_length
    start = len(_ids(tok, PREFIX))
    assert seqs[0][start: start + q_cap] == q_full[:q_cap]
    doc_start = start + q_cap + len(_ids(tok, "\n"))
    doc_len = max_length - fixed - q_cap
    assert seqs[0][doc_start: doc_start + doc_len] == d_full[:doc_len]
    # Pair 1: a short query leaves the document more room; still exactly max_length.
    assert not trunc_q[1] and trunc_d[1]
    assert len(seqs[1]) == max_length
    # Short pairs are untouched; empty strings are valid input.
    seqs, trunc_q, trunc_d = mxbai.encode_pairs(["", "q"], ["", "d"])
    assert not trunc_q.any() and not trunc_d.any()
    assert len(seqs[0]) == fixed + len(_ids(tok, "query: ")) + len(_ids(tok, "document: "))


def test_max_length_shorter_than_the_template_is_refused(tiny_qwen2_teacher_path):
    from ettin_cli.label.teacher import load_teacher

    with pytest.raises(EttinError, match="too short"):
        load_teacher(tiny_qwen2_teacher_path, device="cpu", max_length=32)


def _naive_scores(teacher, queries, documents):
    """The reference way: every pair alone, full-vocabulary logits at every position, logit('1') - logit('0')."""
    import torch

    tok = teacher.tokenizer
    yes, no = _ids(tok, "1")[0], _ids(tok, "0")[0]
    seqs, _, _ = teacher.encode_pairs(queries, documents)
    out = []
    with torch.inference_mode():
        for seq in seqs:
            logits = teacher.model(input_ids=torch.tensor([seq])).logits[0, -1]
            assert logits.shape[-1] == teacher.model.config.vocab_size
            out.append(float(logits[yes] - logits[no]))
    return np.array(out)


def _left_padded_scores(teacher, queries, documents, batch_size=16):
    """Like MxbaiRerankV2.predict: batches in input order, left padding + attention mask, full logits."""
    import torch

    tok = teacher.tokenizer
    yes, no = _ids(tok, "1")[0], _ids(tok, "0")[0]
    seqs, _, _ = teacher.encode_pairs(queries, documents)
    out = []
    with torch.inference_mode():
        for i in range(0, len(seqs), batch_size):
            batch = tok.pad({"input_ids": seqs[i: i + batch_size]}, padding="longest", return_tensors="pt")
            logits = teacher.model(**batch).logits[:, -1]
            out.extend((logits[:, yes] - logits[:, no]).tolist())
    return np.array(out)


def test_fast_path_equals_naive_full_vocabulary_forward(mxbai, pairs):
    queries, documents = pairs[0][:16] + ["", "lift"], pairs[1][:16] + ["", ""]
    fast = mxbai.score(queries, documents, max_tokens_per_batch=4096)
    naive = _naive_scores(mxbai, queries, documents)
    assert fast.dtype == np.float32 and fast.shape == (len(queries),)
    np.testing.assert_allclose(fast, naive, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(fast, _left_padded_scores(mxbai, queries, documents), atol=2e-4, rtol=1e-3)
    assert np.std(fast) > 0  # the pairs are told apart


def test_packed_batches_equal_padded_batches(mxbai, pairs):
    """The FA2 layout (one packed row, position_ids restarting per pair), run on CPU via SDPA's packed mask."""
    queries, documents = pairs[0][:16], pairs[1][:16]
    padded = mxbai.score(queries, documents, max_tokens_per_batch=4096)
    mxbai.packed = True
    try:
        before = mxbai.stats.padding_tokens
        packed = mxbai.score(queries, documents, max_tokens_per_batch=3000)
        assert mxbai.stats.padding_tokens == before  # packed batches carry no padding at all
        # With the FA2 varlen kwargs (cu_seq_lens_*, max_length_*) as a GPU run passes them; SDPA ignores them
        # and still builds its mask from the position_ids, so this checks they are accepted and consistent.
        mxbai.attn = "flash_attention_2"
        with_kwargs = mxbai.score(queries, documents, max_tokens_per_batch=3000)
    finally:
        mxbai.packed = False
        mxbai.attn = "sdpa"
    np.testing.assert_allclose(packed, padded, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(with_kwargs, padded, atol=2e-5, rtol=1e-4)


def test_input_order_is_restored_and_batching_does_not_change_scores(mxbai, pairs):
    queries, documents = pairs[0][:20], pairs[1][:20]
    base = mxbai.score(queries, documents, max_tokens_per_batch=100_000)
    perm = np.random.default_rng(0).permutation(len(queries))
    permuted = mxbai.score([queries[i] for i in perm], [documents[i] for i in perm], batch_size=3)
    np.testing.assert_allclose(permuted, base[perm], atol=2e-5, rtol=1e-4)
    again = mxbai.score(queries, documents, max_tokens_per_batch=100_000)
    assert np.array_equal(again, base)  # deterministic


def test_plan_batches_invariants():
    from ettin_cli.label.teacher import plan_batches

    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 400, size=500)
    for packed in (False, True):
        batches = plan_batches(lengths, max_tokens=2000, batch_size=50, packed=packed)
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(500))  # every item exactly once
        assert np.all(np.diff(lengths[flat]) <= 0)  # longest first
        for b in batches:
            assert len(b) <= 50
            cost = lengths[b].sum() if packed else len(b) * lengths[b].max()
            assert cost <= 2000 or len(b) == 1
    lone = plan_batches([5000, 10, 10], max_tokens=100)
    assert [b.tolist() for b in lone] == [[0], [1, 2]]  # an over-budget item gets a batch of its own
    with pytest.raises(EttinError):
        plan_batches([1, 2], max_tokens=0)


def test_length_sorted_batches_have_little_padding(mxbai, pairs):
    before = mxbai.stats.copy()
    mxbai.score(*pairs, max_tokens_per_batch=8192)
    delta = mxbai.stats - before
    assert delta.pairs == len(pairs[0])
    assert delta.padding_share < 0.05, delta


def test_oom_batches_are_split_and_retried(mxbai, pairs):
    import torch

    queries, documents = pairs[0][:12], pairs[1][:12]
    reference = mxbai.score(queries, documents, max_tokens_per_batch=100_000)
    real_forward = mxbai._forward
    sizes = []

    def flaky(seqs):
        sizes.append(len(seqs))
        if len(seqs) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(seqs)

    mxbai._forward = flaky
    try:
        before = mxbai.stats.oom_splits
        scores = mxbai.score(queries, documents, max_tokens_per_batch=100_000)
        splits = mxbai.stats.oom_splits - before
    finally:
        del mxbai._forward
    np.testing.assert_allclose(scores, reference, atol=2e-5, rtol=1e-4)
    # 12 pairs in one batch, halved until <= 3: 12 -> 6,6 -> 3,3,3,3: 1 + 2 splits, 4 successful calls.
    assert splits == 3
    assert sizes[0] == 12 and sorted(s for s in sizes if s <= 3) == [3, 3, 3, 3]

    def always(seqs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    mxbai._forward = always
    try:
        with pytest.raises(EttinError, match="out of memory on a single pair"):
            mxbai.score(queries[:2], documents[:2])
    finally:
        del mxbai._forward


def test_non_text_input_is_refused(mxbai):
    with pytest.raises(EttinError, match="pair 1: the document is int"):
        mxbai.score(["a", "b"], ["x", 3])


# ---- cross-encoder and bi-encoder --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def student_path(tiny_modernbert_path, tmp_path_factory):
    """A student as `ettin train` saves it: CrossEncoder(Transformer, Pooling CLS, Dense, LayerNorm, Dense)."""
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Pooling

    torch.manual_seed(0)
    backbone = Transformer(str(tiny_modernbert_path), transformer_task="feature-extraction", max_seq_length=128)
    h = backbone.get_embedding_dimension()
    modules = [backbone, Pooling(h, pooling_mode="cls"),
               Dense(h, h, bias=False, activation_function=torch.nn.GELU()), LayerNorm(h),
               Dense(h, 1, activation_function=torch.nn.Identity(), module_output_name="scores")]
    with torch.no_grad():
        modules[-1].linear.bias.fill_(3.0)  # raw outputs well outside (0, 1): a sigmoid would show
    model = CrossEncoder(modules=modules, activation_fn=torch.nn.Identity())
    out = tmp_path_factory.mktemp("student")
    model.save(str(out))
    return out


def test_detect_format(tiny_qwen2_teacher_path, student_path, minilm_path, tmp_path):
    from ettin_cli.label.teacher import detect_format

    assert detect_format(tiny_qwen2_teacher_path) == "mxbai-v2"
    assert detect_format(student_path) == "cross-encoder"
    assert detect_format(minilm_path) == "bi-encoder"
    plain = tmp_path / "seqcls"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    assert detect_format(plain) == "cross-encoder"
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(EttinError, match="--teacher-format"):
        detect_format(unknown)


def test_cross_encoder_student_gives_raw_logits(student_path, pairs):
    import torch
    from sentence_transformers import CrossEncoder

    from ettin_cli.label.teacher import load_teacher

    teacher = load_teacher(student_path, device="cpu")
    assert teacher.format == "cross-encoder"
    queries, documents = pairs[0][:30] + [""], pairs[1][:30] + [""]
    ours = teacher.score(queries, documents, max_tokens_per_batch=2048)
    reference = CrossEncoder(str(student_path), device="cpu").predict(
        list(zip(queries, documents, strict=True)), activation_fn=torch.nn.Identity(), batch_size=7)
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=1e-4)
    assert ours.max() > 1.0  # raw logits, not probabilities
    # Truncation is counted: pairs longer than max_length (128), by an independent token count.
    lengths = [len(x) for x in teacher.tokenizer(queries, documents)["input_ids"]]
    assert teacher.stats.truncated_pairs == sum(n > 128 for n in lengths) > 0


def test_bi_encoder_scores_cosine_similarity(minilm_path):
    from sentence_transformers import SentenceTransformer

    from ettin_cli.label.teacher import load_teacher

    teacher = load_teacher(minilm_path, device="cpu")
    assert teacher.format == "bi-encoder"
    queries = ["how does a wing produce lift", "how does a wing produce lift", "stock market crash"]
    documents = ["airfoils generate lift by deflecting air", "the stock market fell sharply", "airfoils lift"]
    scores = teacher.score(queries, documents)
    model = SentenceTransformer(str(minilm_path), device="cpu")
    q = model.encode(queries)
    d = model.encode(documents)
    cosine = (q * d).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(d, axis=1)
    np.testing.assert_allclose(scores, cosine, atol=1e-5)
    assert scores[0] > scores[1] + 0.2


def test_bi_encoder_embeds_each_distinct_text_once(minilm_path, cranfield_pairs, monkeypatch):
    """Queries repeat across a query's candidates (and documents across queries): each distinct text is embedded
    once per call, and the scores are those of embedding every pair's two texts (the per-pair path)."""
    from sentence_transformers import SentenceTransformer

    from ettin_cli.label.teacher import load_teacher

    rows = cranfield_pairs[:60]
    queries = [r["query"] for r in rows] * 2
    documents = [r["document"] for r in rows] + [r["document"] for r in reversed(rows)]
    assert len(set(queries)) < len(queries) / 4 and len(set(documents)) < len(documents)
    teacher = load_teacher(minilm_path, device="cpu")
    encoded: list[str] = []
    real_encode = teacher.model.encode

    def spy(texts, **kwargs):
        encoded.extend(texts)
        return real_encode(texts, **kwargs)

    monkeypatch.setattr(teacher.model, "encode", spy)
    scores = teacher.score(queries, documents, batch_size=16)
    assert len(encoded) == len(set(queries)) + len(set(documents))
    assert set(encoded) == set(queries) | set(documents)
    # The per-pair path: both texts of every pair embedded, duplicates included.
    model = SentenceTransformer(str(minilm_path), device="cpu")
    q = model.encode(queries, batch_size=16, normalize_embeddings=True)
    d = model.encode(documents, batch_size=16, normalize_embeddings=True)
    np.testing.assert_allclose(scores, (q * d).sum(1), atol=1e-5)
    assert teacher.stats.pairs == len(queries)


def test_bi_encoder_reports_progress_during_a_window(minilm_path, cranfield_pairs):
    """Issue #17.5: `ettin score`'s bar moves inside a window with a bi-encoder teacher too: the pairs are reported
    in several steps as chunks of texts are embedded, adding up to the window's pairs."""
    from ettin_cli.label.teacher import load_teacher

    rows = cranfield_pairs[:120]
    teacher = load_teacher(minilm_path, device="cpu")
    reported: list[int] = []
    teacher.on_batch = reported.append
    teacher.score([r["query"] for r in rows], [r["document"] for r in rows], batch_size=4)
    assert len(reported) > 4 and sum(reported) == len(rows) and all(n >= 0 for n in reported)


def test_unknown_teacher_is_a_one_line_error(tmp_path):
    from ettin_cli.label.teacher import load_teacher

    with pytest.raises(EttinError, match="no such file or folder"):
        load_teacher(str(tmp_path / "nope" / "teacher"))
    # The tests run with HF_HUB_OFFLINE=1: a Hub id fails at once, naming the offline alternative.
    with pytest.raises(EttinError, match=r"HF_HUB_OFFLINE is set.*--teacher DIR"):
        load_teacher("no-such-org/no-such-teacher")
    with pytest.raises(EttinError, match="teacher-format"):
        load_teacher(str(tmp_path), format="colbert")
