"""The shared fixtures themselves: each one loads and has the layout the pipeline relies on."""

from __future__ import annotations


def test_tiny_modernbert_loads_as_automodel(tiny_modernbert_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(tiny_modernbert_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_modernbert_path)
    assert model.config.model_type == "modernbert"
    batch = tokenizer(["what is lift"], ["the wing produces lift"], return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == tokenizer.cls_token_id
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    assert out.shape == (1, batch["input_ids"].shape[1], model.config.hidden_size)


def test_tiny_qwen2_teacher_has_chat_tokens_and_digits(tiny_qwen2_teacher_path):
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_teacher_path)
    config = AutoConfig.from_pretrained(tiny_qwen2_teacher_path)
    assert config.architectures == ["Qwen2ForCausalLM"]
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token
    for digit in ("0", "1"):
        assert len(tokenizer(digit, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.padding_side == "left"


def test_minilm_is_the_pretrained_model(minilm_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path), device="cpu")
    emb = model.encode(["an airfoil in a wind tunnel", "a wing in a wind tunnel", "the stock market fell"],
                       normalize_embeddings=True)
    related, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert related > unrelated + 0.2  # a random model would not separate these


def test_cranfield_pairs_are_real_text(cranfield, cranfield_pairs):
    assert len(cranfield.corpus) == 1400
    assert len(cranfield_pairs) >= 100
    assert any(row["label"] > 0 for row in cranfield_pairs)
    assert all(row["query"] and row["document"] for row in cranfield_pairs)
