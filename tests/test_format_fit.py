"""A model in the wrong format is refused with one line naming the format that fits (exit 2, nothing written),
instead of scoring with a newly initialised head (issue #17, items 1-2)."""

from __future__ import annotations

import shutil

import pytest
from conftest import run_cli

from ettin_cli.core.errors import EttinError


@pytest.fixture(scope="module")
def minilm_cross_encoder(minilm_path, tmp_path_factory):
    """A Sentence Transformers CrossEncoder folder built from the real MiniLM (BERT + a one-logit classifier)."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertForSequenceClassification

    plain = tmp_path_factory.mktemp("minilm-seqcls")
    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(str(minilm_path), num_labels=1).save_pretrained(plain)
    AutoTokenizer.from_pretrained(str(minilm_path)).save_pretrained(plain)
    out = tmp_path_factory.mktemp("minilm-cross-encoder")
    CrossEncoder(str(plain), device="cpu").save(str(out))
    return out


@pytest.fixture(scope="module")
def bare_bert(minilm_path, tmp_path_factory):
    """MiniLM's transformers files alone (a BertModel, no Sentence Transformers config, no scoring head)."""
    out = tmp_path_factory.mktemp("bare-bert")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(minilm_path / name, out / name)
    return out


@pytest.fixture(scope="module")
def headless_qwen2(tiny_qwen2_teacher_path, tmp_path_factory):
    """The tiny mxbai-v2 teacher with its (untied) lm_head dropped from the checkpoint: still says ForCausalLM."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("headless-qwen2")
    for path in tiny_qwen2_teacher_path.iterdir():
        shutil.copy(path, out / path.name)
    weights = load_file(str(out / "model.safetensors"))
    assert "lm_head.weight" in weights
    del weights["lm_head.weight"]
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _one_line_refusal(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_score_refuses_a_bi_encoder_as_cross_encoder(cranfield_pairs_parquet, minilm_path, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["score", str(cranfield_pairs_parquet), "--teacher", str(minilm_path),
                            "--teacher-format", "cross-encoder", "--output", str(out), "--limit", "4"], capsys)
    _one_line_refusal(code, err, "bi-encoder", "newly initialised", "use --teacher-format bi-encoder")
    assert not out.exists()


def test_score_refuses_mxbai_v2_on_a_bert(cranfield_pairs_parquet, minilm_path, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["score", str(cranfield_pairs_parquet), "--teacher", str(minilm_path),
                            "--teacher-format", "mxbai-v2", "--output", str(out)], capsys)
    _one_line_refusal(code, err, "use --teacher-format bi-encoder")
    assert not out.exists()


def test_eval_and_bench_refuse_a_cross_encoder_as_bi_encoder(minilm_cross_encoder, cranfield_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = run_cli(["eval", str(minilm_cross_encoder), "--format", "bi-encoder", "--data",
                            str(cranfield_dir), "--output", str(out), "--max-queries", "2"], capsys)
    _one_line_refusal(code, err, "cross-encoder", "use --format cross-encoder")
    assert not out.exists()
    code, _, err = run_cli(["bench", str(minilm_cross_encoder), "--format", "bi-encoder", "--data",
                            str(cranfield_dir), "--output", str(tmp_path / "bench"), "--device", "cpu"], capsys)
    _one_line_refusal(code, err, "use --format cross-encoder")
    assert not (tmp_path / "bench").exists()


def test_formats_that_fit_still_load(minilm_cross_encoder, bare_bert, minilm_path):
    from ettin_cli.label.teacher import load_teacher

    assert load_teacher(minilm_cross_encoder, device="cpu").format == "cross-encoder"
    assert load_teacher(minilm_cross_encoder, "cross-encoder", device="cpu").score(["a"], ["b"]).shape == (1,)
    assert load_teacher(bare_bert, "bi-encoder", device="cpu").format == "bi-encoder"  # mean pooling: no new weights
    assert load_teacher(minilm_path, "bi-encoder", device="cpu").format == "bi-encoder"


def test_a_bare_encoder_or_a_causal_lm_is_not_a_cross_encoder(bare_bert, tiny_qwen2_teacher_path):
    from ettin_cli.label.teacher import load_teacher

    with pytest.raises(EttinError, match=r"BertModel without a scoring head.*use --teacher-format bi-encoder"):
        load_teacher(bare_bert, "cross-encoder", device="cpu")
    with pytest.raises(EttinError, match=r"causal LM \(Qwen2ForCausalLM\).*use --teacher-format mxbai-v2, qwen3"):
        load_teacher(tiny_qwen2_teacher_path, "bi-encoder", device="cpu")


def test_newly_initialised_weights_are_refused_at_load(headless_qwen2, cranfield_pairs_parquet, tmp_path, capsys):
    from ettin_cli.label.teacher import load_teacher

    with pytest.raises(EttinError, match=r"weights newly initialised: lm_head.weight"):
        load_teacher(headless_qwen2, "mxbai-v2", device="cpu", max_length=256)
    out = tmp_path / "out"  # the config check passes (it is a causal LM); loading refuses; no folder is left
    code, _, err = run_cli(["score", str(cranfield_pairs_parquet), "--teacher", str(headless_qwen2),
                            "--teacher-format", "mxbai-v2", "--output", str(out), "--max-length", "256",
                            "--device", "cpu", "--limit", "4"], capsys)
    _one_line_refusal(code, err, "lm_head.weight", "newly initialised")
    assert not out.exists()


def test_a_classifier_missing_from_the_checkpoint_is_refused(bare_bert, tmp_path):
    """config.json says sequence classifier, the weights are a bare BERT's: the head would be random."""
    import json

    from ettin_cli.label.teacher import load_teacher

    fake = tmp_path / "fake-cross-encoder"
    shutil.copytree(bare_bert, fake)
    config = json.loads((fake / "config.json").read_text())
    config.update(architectures=["BertForSequenceClassification"], id2label={"0": "LABEL_0"},
                  label2id={"LABEL_0": 0})
    (fake / "config.json").write_text(json.dumps(config))
    with pytest.raises(EttinError, match=r"weights newly initialised: classifier.bias, classifier.weight"):
        load_teacher(fake, device="cpu")


def test_unused_checkpoint_weights_are_reported():
    from ettin_cli.label.fit import loading_problems, refuse_loading_problems

    assert loading_problems({"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()}) is None
    info = {"missing_keys": set(), "unexpected_keys": {"classifier.weight", "classifier.bias"},
            "mismatched_keys": {("score.weight", (1, 8), (2, 8))}}
    problems = loading_problems(info)
    assert "weights unused: classifier.bias, classifier.weight" in problems
    assert "weights newly initialised: score.weight" in problems
    with pytest.raises(EttinError, match="not a mxbai-v2 checkpoint"):
        refuse_loading_problems(info, "m", "mxbai-v2")


def test_base_model_check_for_train(minilm_path, tiny_modernbert_path, tiny_qwen2_teacher_path, tmp_path):
    from ettin_cli.label.fit import check_base_model

    check_base_model(minilm_path, "minilm")
    check_base_model(tiny_modernbert_path, "modernbert")
    with pytest.raises(EttinError, match=r"--base-model q: is a causal LM"):
        check_base_model(tiny_qwen2_teacher_path, "q")
    with pytest.raises(EttinError, match="without a config.json"):
        check_base_model(tmp_path, "empty")
