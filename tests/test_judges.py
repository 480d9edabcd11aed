"""Judge formats: the Qwen3-Reranker template token by token, its fast path against a naive full-vocabulary
forward, `auto` recognising it, `--instruction`, and a user's own format file (valid and refused)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from ettin_cli.core.errors import EttinError

# The Qwen3-Reranker template of ../shared/RECIPE.md, written out here independently of the YAML formats.
Q3_PREFIX = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
             'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
Q3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
Q3_DEFAULT = "Given a web search query, retrieve relevant passages that answer the query"
REPO = Path(__file__).resolve().parents[1]


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def qwen3(tiny_qwen3_reranker_path):
    from ettin_cli.label.teacher import load_teacher

    return load_teacher(tiny_qwen3_reranker_path, device="cpu", max_length=512)


@pytest.fixture(scope="module")
def pairs(cranfield_pairs):
    return [r["query"] for r in cranfield_pairs][:16], [r["document"] for r in cranfield_pairs][:16]


def test_auto_recognises_qwen3_reranker_and_says_so(tiny_qwen3_reranker_path, tiny_qwen2_teacher_path):
    from ettin_cli.core.console import logger
    from ettin_cli.label.teacher import detect_format, resolve_teacher

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        spec = resolve_teacher(tiny_qwen3_reranker_path, device="cpu")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert spec.format == "qwen3-reranker" and spec.judge.positive == "yes"
    message = " ".join(r.getMessage() for r in records)
    assert "qwen3-reranker" in message and "Qwen3ForCausalLM" in message
    assert detect_format(tiny_qwen2_teacher_path) == "mxbai-v2"  # the Qwen2 judge is not mistaken for it


def test_qwen3_token_layout_matches_the_recipe_template(qwen3):
    tok = qwen3.tokenizer
    query, document = "what is the lift of a wing at mach 2?", "the lift of a thin wing\nat supersonic speed"
    (seq,), trunc_q, trunc_d = qwen3.encode_pairs([query], [document])
    assert not trunc_q[0] and not trunc_d[0]
    pieces = [Q3_PREFIX, f"<Instruct>: {Q3_DEFAULT}\n<Query>: {query}", "\n", f"<Document>: {document}", Q3_SUFFIX]
    expected = [i for piece in pieces for i in _ids(tok, piece)]
    assert seq == expected  # token by token
    at = 0
    for piece in pieces:
        n = len(_ids(tok, piece))
        assert tok.decode(seq[at: at + n]) == piece
        at += n
    assert at == len(seq)
    for special in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert tok.convert_tokens_to_ids(special) in seq
    assert seq.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert tok.decode(seq) == "".join(pieces)
    assert qwen3.format == "qwen3-reranker"
    assert (qwen3.yes_id, qwen3.no_id) == (_ids(tok, "yes")[0], _ids(tok, "no")[0])


def test_instruction_overrides_the_default(tiny_qwen3_reranker_path):
    from ettin_cli.label.teacher import load_teacher

    teacher = load_teacher(tiny_qwen3_reranker_path, device="cpu", max_length=512,
                           instruction="Find aeronautics papers")
    (seq,), _, _ = teacher.encode_pairs(["wing lift"], ["a wing"])
    tok = teacher.tokenizer
    expected = (_ids(tok, Q3_PREFIX) + _ids(tok, "<Instruct>: Find aeronautics papers\n<Query>: wing lift")
                + _ids(tok, "\n") + _ids(tok, "<Document>: a wing") + _ids(tok, Q3_SUFFIX))
    assert seq == expected
    assert Q3_DEFAULT not in tok.decode(seq)


def test_qwen3_fast_path_equals_naive_full_vocabulary_forward(qwen3, pairs):
    import torch

    queries, documents = pairs[0] + ["", "lift"], pairs[1] + ["", ""]
    fast = qwen3.score(queries, documents, max_tokens_per_batch=4096)
    tok = qwen3.tokenizer
    yes, no = _ids(tok, "yes")[0], _ids(tok, "no")[0]
    seqs, _, _ = qwen3.encode_pairs(queries, documents)
    naive = []
    with torch.inference_mode():
        for seq in seqs:  # every pair alone, all 5 special + BPE vocabulary logits at every position
            logits = qwen3.model(input_ids=torch.tensor([seq])).logits[0, -1]
            assert logits.shape[-1] == qwen3.model.config.vocab_size
            naive.append(float(logits[yes] - logits[no]))
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, np.array(naive), atol=1e-4, rtol=1e-4)
    assert np.std(fast) > 0
    qwen3.packed = True  # the Flash Attention 2 layout, run on CPU via SDPA's packed mask
    try:
        packed = qwen3.score(queries, documents, max_tokens_per_batch=3000)
    finally:
        qwen3.packed = False
    np.testing.assert_allclose(packed, np.array(naive), atol=1e-4, rtol=1e-4)


def test_qwen3_truncation_query_share_and_document_rest(tiny_qwen3_reranker_path):
    from ettin_cli.label.teacher import load_teacher

    teacher = load_teacher(tiny_qwen3_reranker_path, device="cpu", max_length=600)
    tok = teacher.tokenizer
    fixed = sum(len(_ids(tok, p)) for p in (Q3_PREFIX, "\n", Q3_SUFFIX))
    long_query = " ".join(["supersonic boundary layer transition"] * 200)
    long_doc = " ".join(["the flow separates behind the shock"] * 300)
    seqs, trunc_q, trunc_d = teacher.encode_pairs([long_query], [long_doc])
    assert trunc_q[0] and trunc_d[0] and len(seqs[0]) == 600
    q_full = _ids(tok, f"<Instruct>: {Q3_DEFAULT}\n<Query>: {long_query}")
    start = len(_ids(tok, Q3_PREFIX))
    assert seqs[0][start: start + 450] == q_full[:450]  # 3/4 of 600
    doc = _ids(tok, f"<Document>: {long_doc}")[: 600 - fixed - 450]
    assert seqs[0][start + 450 + 1: start + 450 + 1 + len(doc)] == doc


# ---- a user's own judge format -------------------------------------------------------------------------------


def _qwen3_yaml() -> dict:
    return yaml.safe_load((REPO / "recipes" / "teachers" / "qwen3-reranker.yaml").read_text())


def test_a_users_format_file_scores_like_the_built_in(tiny_qwen3_reranker_path, qwen3, pairs, tmp_path):
    from ettin_cli.label.teacher import load_teacher

    data = _qwen3_yaml()
    data["name"] = "my-judge"
    path = tmp_path / "my-judge.yaml"
    path.write_text(yaml.safe_dump(data))
    mine = load_teacher(tiny_qwen3_reranker_path, format=str(path), device="cpu", max_length=512)
    assert mine.format == "my-judge"
    np.testing.assert_array_equal(mine.score(*pairs), qwen3.score(*pairs))
    # A different task prompt is a different template: the sequences change.
    data["template"][4] = {"task": "\nRelevant?"}
    path.write_text(yaml.safe_dump(data))
    other = load_teacher(tiny_qwen3_reranker_path, format=str(path), device="cpu", max_length=512)
    (a,), _, _ = other.encode_pairs(["q"], ["d"])
    (b,), _, _ = qwen3.encode_pairs(["q"], ["d"])
    assert a[: len(b) - len(_ids(qwen3.tokenizer, Q3_SUFFIX))] == b[: len(b) - len(_ids(qwen3.tokenizer, Q3_SUFFIX))]
    assert len(a) == len(b) + len(_ids(other.tokenizer, "\nRelevant?"))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["template"].pop(4), "piece 'task' missing"),
    (lambda d: d["template"].pop(0), "piece 'prefix' missing"),
    (lambda d: d["template"].insert(1, {"document": "{document}"}), "piece 'document' given 2 times"),
    (lambda d: d["template"].reverse(), "out of order"),
    (lambda d: d["template"].__setitem__(1, {"query": "no placeholder"}), "must hold {query} exactly once"),
    (lambda d: d["template"].__setitem__(1, {"query": "{query} {oops}"}), "bad placeholder"),
    (lambda d: d.pop("answers"), "answers: missing"),
    (lambda d: d["answers"].__setitem__("negative", "yes"), "the same text"),
    (lambda d: d.__setitem__("colour", "red"), "colour: unknown key"),
    (lambda d: d["truncation"].__setitem__("query_share", 1.5), "query_share: must be a number in (0, 1]"),
    (lambda d: d.__setitem__("instruction", "no placeholder"), "instruction: must be text holding"),
])
def test_bad_format_files_are_one_line_errors(tmp_path, change, message):
    from ettin_cli.label.judges import load_judge_format

    data = _qwen3_yaml()
    change(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(EttinError) as info:
        load_judge_format(str(path))
    assert message in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_multi_token_answer_is_refused_at_load(tiny_qwen3_reranker_path, tmp_path):
    from ettin_cli.label.teacher import load_teacher

    data = _qwen3_yaml()
    data["answers"] = {"positive": "relevant", "negative": "irrelevant"}
    path = tmp_path / "words.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(EttinError, match=r"the positive answer 'relevant' is \d+ tokens"):
        load_teacher(tiny_qwen3_reranker_path, format=str(path), device="cpu", max_length=512)


def test_cli_bad_format_file_exits_2_and_writes_nothing(cranfield_pairs_parquet, tiny_qwen3_reranker_path,
                                                         tmp_path, capsys):
    from conftest import run_cli

    data = _qwen3_yaml()
    data["template"].pop(4)
    fmt = tmp_path / "bad.yaml"
    fmt.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    code, _, err = run_cli(["score", str(cranfield_pairs_parquet), "--teacher", str(tiny_qwen3_reranker_path),
                            "--teacher-format", str(fmt), "--output", str(out)], capsys)
    assert code == 2 and "piece 'task' missing" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = run_cli(["score", str(cranfield_pairs_parquet), "--teacher", str(tiny_qwen3_reranker_path),
                            "--teacher-format", str(tmp_path / "none.yaml"), "--output", str(out)], capsys)
    assert code == 2 and "no such judge format file" in err and not out.exists()


def test_template_tokens_count_every_fixed_piece(qwen3, tiny_qwen2_teacher_path):
    from ettin_cli.label.judges import load_judge_format, template_tokens

    tok = qwen3.tokenizer
    judge = load_judge_format("qwen3-reranker")
    expected = sum(len(_ids(tok, p)) for p in (Q3_PREFIX, f"<Instruct>: {Q3_DEFAULT}\n<Query>: ", "\n",
                                                "<Document>: ", Q3_SUFFIX))
    assert template_tokens(judge, tok) == expected
    (seq,), _, _ = qwen3.encode_pairs([""], [""])
    assert template_tokens(judge, tok) == len(seq)


def test_eval_and_bench_take_a_judge_and_its_instruction(tiny_qwen3_reranker_path, tiny_student_path,
                                                         cranfield_dir, tmp_path, capsys):
    import json

    from conftest import run_cli

    out = tmp_path / "eval"
    code, _, err = run_cli(["-q", "eval", str(tiny_qwen3_reranker_path), str(tiny_student_path), "--data",
                            str(cranfield_dir), "--max-queries", "2", "--top-k", "4", "--max-length", "256",
                            "--device", "cpu", "--instruction", "Find aeronautics papers", "--output", str(out)],
                           capsys)
    assert code == 0, err
    entries = {e["model"]: e for e in json.loads((out / "eval.json").read_text())["results"]}
    judge = next(e for e in entries.values() if e.get("format") == "qwen3-reranker")
    assert judge["instruction"] == "Find aeronautics papers"
    student = next(e for e in entries.values() if e.get("format") == "cross-encoder")
    assert "instruction" not in student  # the instruction is the judge's alone
    code, _, err = run_cli(["eval", str(tiny_student_path), "--data", str(cranfield_dir), "--instruction", "x",
                            "--output", str(tmp_path / "e2")], capsys)
    assert code == 2 and "--instruction applies to judge formats" in err and not (tmp_path / "e2").exists()
    code, _, err = run_cli(["-q", "bench", str(tiny_qwen3_reranker_path), "--data", str(cranfield_dir),
                            "--num-pairs", "8", "--batch-size", "4", "--passes", "1", "--max-length", "128",
                            "--device", "cpu", "--instruction", "Find aeronautics papers", "--output",
                            str(tmp_path / "bench"), "--json"], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["results"]
    assert rows[0]["format"] == "qwen3-reranker" and rows[0]["status"] == "ok"


def test_a_judge_format_that_is_not_yaml_or_not_utf8_is_one_line(tmp_path):
    from ettin_cli.label.judges import load_judge_format

    bad = tmp_path / "broken.yaml"
    bad.write_text("template: [unclosed\nanswers: {positive: yes}\n")
    with pytest.raises(EttinError, match=r"broken\.yaml line \d+: invalid YAML"):
        load_judge_format(str(bad))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00template")
    with pytest.raises(EttinError, match=r"binary\.yaml: not UTF-8 text"):
        load_judge_format(str(binary))
