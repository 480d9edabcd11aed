"""The 5-module student: structure, raw-logit output, seeded head, save/load symmetry, precision and FA2 checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ettin_cli.core.errors import EttinError
from ettin_cli.core.hardware import Precision
from ettin_cli.train.student import (
    build_student,
    check_base_model,
    check_student,
    check_unpadding,
    count_parameters,
    init_head,
    load_student,
    model_kwargs_for,
    unpadding_active,
)

FP32 = Precision("float32", "sdpa")
PAIRS = [
    ("what is the lift of a thin wing", "the lift of thin wings at supersonic speeds is derived from linear theory"),
    ("boundary layer transition", "transition in the boundary layer of a flat plate was measured in a wind tunnel"),
    ("heat transfer", "a short text"),
    ("x", "an unrelated document about the weather in a northern town during a long and cold winter " * 10),
]


@pytest.fixture(scope="module")
def student(tiny_modernbert_path):
    return build_student(str(tiny_modernbert_path), max_length=64, precision=FP32, seed=12)


def test_five_modules_in_recipe_order(student):
    from transformers import ModernBertModel

    assert [type(m).__name__ for m in student] == ["Transformer", "Pooling", "Dense", "LayerNorm", "Dense"]
    transformer, pooling, dense, norm, out = student
    hidden = transformer.get_embedding_dimension()
    assert hidden == 32
    # plain AutoModel backbone, not AutoModelForSequenceClassification
    assert type(transformer.auto_model) is ModernBertModel
    assert transformer.transformer_task == "feature-extraction"
    assert pooling.pooling_mode == "cls"
    assert (dense.in_features, dense.out_features, dense.bias) == (hidden, hidden, False)
    assert dense.linear.bias is None
    assert isinstance(dense.activation_function, torch.nn.GELU)
    assert norm.dimension == hidden
    assert (out.in_features, out.out_features, out.bias) == (hidden, 1, True)
    assert isinstance(out.activation_function, torch.nn.Identity)
    assert out.module_output_name == "scores"
    assert isinstance(student.activation_fn, torch.nn.Identity)
    assert student.num_labels == 1
    assert student.max_seq_length == 64
    assert student.config._attn_implementation == "sdpa"


def test_predict_is_the_raw_head_output_on_cls(student, tiny_modernbert_path):
    """An independent forward (transformers AutoModel + the head's own layers) gives predict's numbers."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_modernbert_path))
    backbone = AutoModel.from_pretrained(str(tiny_modernbert_path), attn_implementation="sdpa").eval()
    enc = tok([q for q, _ in PAIRS], [d for _, d in PAIRS], padding=True, truncation="longest_first",
              max_length=64, return_tensors="pt")
    with torch.inference_mode():
        cls = backbone(**enc).last_hidden_state[:, 0]
        h = torch.nn.functional.gelu(student[2].linear(cls))
        h = student[3].norm(h)
        expected = student[4].linear(h).squeeze(-1).numpy()
    got = student.predict(PAIRS)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert got.dtype == np.float32
    # identity activation: logits are not squashed into (0, 1) by a sigmoid
    assert np.all(got == student.predict(PAIRS, activation_fn=torch.nn.Identity()))


def test_save_and_reload_give_identical_scores(student, tmp_path):
    from sentence_transformers import CrossEncoder

    student.save_pretrained(str(tmp_path / "m"))
    reloaded = CrossEncoder(str(tmp_path / "m"), device="cpu")
    assert np.array_equal(reloaded.predict(PAIRS), student.predict(PAIRS))
    assert isinstance(reloaded.activation_fn, torch.nn.Identity)
    assert reloaded.max_seq_length == 64
    check_student(reloaded)
    via_helper = load_student(tmp_path / "m", device="cpu")
    assert np.array_equal(via_helper.predict(PAIRS), student.predict(PAIRS))


def test_head_initialisation_is_seeded(tiny_modernbert_path, student):
    again = build_student(str(tiny_modernbert_path), max_length=64, precision=FP32, seed=12)
    other = build_student(str(tiny_modernbert_path), max_length=64, precision=FP32, seed=13)
    a, b, c = student.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    head_keys = [k for k in a if not k.startswith("0.")]
    assert head_keys and any(not torch.equal(a[k], c[k]) for k in head_keys)
    assert all(torch.equal(a[k], c[k]) for k in a if k.startswith("0."))  # same pretrained backbone


def test_parameter_count_is_backbone_plus_head(student, tiny_modernbert_path):
    from transformers import AutoModel

    backbone = sum(p.numel() for p in AutoModel.from_pretrained(str(tiny_modernbert_path)).parameters())
    h = 32
    assert count_parameters(student) == backbone + h * h + 2 * h + h + 1


def test_bf16_inference_load_matches_fp32(student, tmp_path):
    student.save_pretrained(str(tmp_path / "m"))
    bf16 = load_student(tmp_path / "m", precision=Precision("bfloat16", "sdpa"), device="cpu")
    assert bf16[0].auto_model.dtype == torch.bfloat16 and bf16[4].linear.weight.dtype == torch.bfloat16
    got, ref = bf16.predict(PAIRS), student.predict(PAIRS)
    assert got.dtype == np.float32  # predict upcasts
    np.testing.assert_allclose(got, ref, atol=0.1 * max(1.0, float(np.abs(ref).max())))


def test_training_loads_fp32_master_weights_with_the_requested_attention():
    fa2 = Precision("bfloat16", "flash_attention_2")
    assert model_kwargs_for(fa2, for_training=True) == {"dtype": torch.float32, "attn_implementation":
                                                        "flash_attention_2"}
    assert model_kwargs_for(fa2, for_training=False)["dtype"] == torch.bfloat16


def test_packed_inputs_follow_once_flash_attention_is_present(student, monkeypatch):
    """GPU-only logic on CPU: with FA2 requested and a varlen kernel found, the backbone takes the unpadded path."""
    import transformers.modeling_flash_attention_utils as fa_utils

    transformer = student[0]
    assert not unpadding_active(student)
    monkeypatch.setattr(type(transformer), "_is_flash_attention_requested", lambda self: True)
    monkeypatch.setattr(fa_utils, "lazy_import_flash_attention",
                        lambda impl, *a, **k: ((None, object(), None, None, None), (None, None)))
    monkeypatch.setattr(transformer.config, "_attn_implementation", "flash_attention_2", raising=False)
    try:
        assert transformer._can_flatten_inputs()
        transformer.can_flatten_inputs = True
        assert unpadding_active(student)
        features = transformer.preprocess([("a query", "a document"), ("q2", "a longer second document here")])
        # packed: one row, no padding, sequence boundaries for the varlen kernel
        assert features["input_ids"].shape[0] == 1 and "attention_mask" not in features
        assert features["cu_seq_lens_q"].tolist()[0] == 0 and len(features["cu_seq_lens_q"]) == 3
        # The prebuilt `kernels` backend reports its Hub kernel name instead: still FA2, still unpadded.
        monkeypatch.setattr(transformer.config, "_attn_implementation", "kernels-community/flash-attn2",
                            raising=False)
        assert unpadding_active(student)
        monkeypatch.setattr(transformer.config, "_attn_implementation", "sdpa", raising=False)
        assert not unpadding_active(student)
    finally:
        transformer.can_flatten_inputs = False


def test_loud_warning_when_fa2_requested_but_not_active(student, monkeypatch):
    from ettin_cli.train import student as student_module

    warnings: list[str] = []
    monkeypatch.setattr(student_module.logger, "warning", lambda msg, *a, **k: warnings.append(msg))
    assert check_unpadding(student, Precision("bfloat16", "flash_attention_2")) is False
    assert len(warnings) == 1 and "NOT active" in warnings[0] and "sdpa" in warnings[0]
    warnings.clear()
    assert check_unpadding(student, FP32) is False
    assert warnings == []


def test_base_model_checks(tmp_path):
    with pytest.raises(EttinError, match="does not exist"):
        check_base_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EttinError, match="no config.json"):
        check_base_model(str(tmp_path / "empty"))
    assert check_base_model("jhu-clsp/ettin-encoder-17m") == "jhu-clsp/ettin-encoder-17m"
    with pytest.raises(EttinError, match="does not exist"):
        build_student(str(tmp_path / "missing"), max_length=64, precision=FP32)


def test_a_model_with_another_head_is_not_a_student(tiny_modernbert_path):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Pooling

    t = Transformer(str(tiny_modernbert_path))
    model = CrossEncoder(modules=[t, Pooling(32, pooling_mode="max"), Dense(32, 32, bias=False), LayerNorm(32),
                                  Dense(32, 1, module_output_name="scores")], activation_fn=torch.nn.Identity())
    with pytest.raises(EttinError, match="pooling is 'max'"):
        check_student(model)
    # CLS pooling but the first Dense has a bias and a tanh: still not the recipe's head.
    model = CrossEncoder(modules=[t, Pooling(32, pooling_mode="cls"), Dense(32, 32, bias=True), LayerNorm(32),
                                  Dense(32, 1, module_output_name="scores")], activation_fn=torch.nn.Identity())
    with pytest.raises(EttinError, match=r"Dense\(H, H, no bias, GELU\)"):
        check_student(model)


def test_mean_pooling_and_a_target_mean_head_start_at_the_targets_mean(tiny_modernbert_path):
    """`model.pooling: mean` builds a mean-pooling student; `head_init: target-mean` makes it predict the
    targets' mean with a spread far below theirs, where the default head starts at a random offset."""
    targets = torch.tensor([3.0, 5.0, 7.0, 9.0, 11.0])
    pairs = [("what is a cat", "a cat is a small animal"), ("rain", "water falls from clouds"),
             ("bread", "flour, water and yeast"), ("cars", "vehicles with four wheels")] * 2
    default = build_student(str(tiny_modernbert_path), max_length=32, precision=FP32, seed=3, pooling="mean")
    assert default[1].pooling_mode == "mean"
    assert init_head(default, "default", targets) is None
    start = default.predict(pairs)
    assert abs(start.mean() - 7.0) > 3.0  # the default head knows nothing of the targets' scale

    model = build_student(str(tiny_modernbert_path), max_length=32, precision=FP32, seed=3, pooling="mean")
    info = init_head(model, "target-mean", targets, seed=3)
    assert info["bias"] == pytest.approx(7.0)
    scores = model.predict(pairs)
    assert abs(scores.mean() - 7.0) < 0.2 * float(targets.std())
    assert 0 < scores.std() < 0.5 * float(targets.std())
    with pytest.raises(EttinError, match="pooling must be one of"):
        build_student(str(tiny_modernbert_path), max_length=32, precision=FP32, pooling="max")
    with pytest.raises(EttinError, match="head_init must be one of"):
        init_head(model, "zeros", targets)
