"""Tiny random models with real tokenizers, built offline in seconds: stand-ins for the teacher and the student.

`ettin doctor` checks the fast paths on them, and the test suite builds its fixtures with them, so both exercise
the real loading code (`label.teacher.load_teacher`, `train.student.build_student`) on the real layouts:

- `build_tiny_teacher`: a Qwen2 causal LM with a byte-level BPE tokenizer holding the chat tokens, in the
  mxbai-rerank-v2 layout (untied lm_head);
- `build_tiny_backbone`: a ModernBERT backbone (AutoModel layout) with a WordPiece tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_teacher(out: Path, texts: Sequence[str], *, vocab_size: int = 1000, seed: int = 0,
                       hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                       num_kv_heads: int = 2, max_position_embeddings: int = 4096) -> Path:
    """A random Qwen2ForCausalLM + byte-level BPE tokenizer in the mxbai-rerank-v2 layout, saved to `out`.

    The tokenizer holds `<|im_start|>`, `<|im_end|>`, `<|endoftext|>` as special tokens and the digits `0` and `1`
    as single tokens (byte-level alphabet), as in the real Qwen2 vocabulary; the lm_head is untied, as in
    mxbai-rerank-large-v2, so the teacher's folded head vector is really two rows of it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHAT_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        padding_side="left", model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                         max_position_embeddings=max_position_embeddings,
                         tie_word_embeddings=False, bos_token_id=None,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    config.architectures = ["Qwen2ForCausalLM"]
    return _save_random(Qwen2ForCausalLM, config, tokenizer, out, seed)


def build_tiny_backbone(out: Path, texts: Sequence[str], *, vocab_size: int = 1000, seed: int = 0) -> Path:
    """A random ModernBERT backbone (AutoModel layout) with a WordPiece tokenizer ([CLS] a [SEP] b [SEP])."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(texts, trainer=trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                                                    special_tokens=WORDPIECE_SPECIALS))
    cls_id, sep_id = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    wp.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                      special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                        model_max_length=512)
    config = ModernBertConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                              num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=512,
                              global_attn_every_n_layers=3, local_attention=64, pad_token_id=tokenizer.pad_token_id,
                              cls_token_id=cls_id, sep_token_id=sep_id, bos_token_id=cls_id, eos_token_id=sep_id)
    return _save_random(ModernBertModel, config, tokenizer, out, seed)


def _save_random(model_class: Any, config: Any, tokenizer: Any, out: Path, seed: int) -> Path:
    """A model of `model_class` initialised from `seed` (without moving the global RNG), saved with its tokenizer."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
