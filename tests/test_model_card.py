"""The model card: YAML front matter the Hub accepts, and every fact of the training record in the body."""

from __future__ import annotations

import pytest
import yaml

from ettin_cli.core.errors import EttinError
from ettin_cli.publish.model_card import is_hub_id, render_model_card


def record(**overrides) -> dict:
    info = {
        "model_id": "someone/ettin-reranker-17m-test",
        "size": "17m",
        "base_model": "jhu-clsp/ettin-encoder-17m",
        "teacher": "mixedbread-ai/mxbai-rerank-large-v2",
        "parameters": 17_600_000,
        "max_length": 512,
        "data": [{"source": "cross-encoder/ettin-reranker-v1-data", "kind": "hub", "rows": 143_000_000},
                 {"source": "/data/scored/part|x", "kind": "score-dir", "rows": 1200}],
        "train_rows": 143_001_200,
        "hyperparameters": {"learning_rate": 2.4e-4, "global_batch_size": 1024, "warmup_ratio": 0.03, "seed": 12},
        "evaluation": {"benchmark": "NanoBEIR", "retriever": "BM25", "top_k": 100, "metric": "NDCG@10",
                       "datasets": ["NanoMSMARCO", "NanoNQ"]},
        "metrics": {"before": {"NanoMSMARCO": 0.25, "NanoNQ": 0.5, "mean": 0.375},
                    "after": {"mean": 0.6875, "NanoMSMARCO": 0.625, "NanoNQ": 0.75}, "best_step": 950},
        "throughput": {"train_samples_per_second": 1234.5, "train_tokens_per_second": 456789.0,
                       "train_runtime_seconds": 3600.0},
    }
    info.update(overrides)
    return info


def split_card(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    _, front, body = card.split("---\n", 2)
    return yaml.safe_load(front), body


def test_front_matter_is_valid_yaml_with_license_tags_and_hub_ids():
    meta, _ = split_card(render_model_card(record()))
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "text-ranking"
    assert {"sentence-transformers", "cross-encoder", "reranker", "ettin-17m"} <= set(meta["tags"])
    assert meta["base_model"] == "jhu-clsp/ettin-encoder-17m"
    # Only the Hub data set is listed; a local folder would make the Hub reject the metadata.
    assert meta["datasets"] == ["cross-encoder/ettin-reranker-v1-data"]


def test_local_paths_stay_out_of_front_matter(tmp_path):
    local = tmp_path / "backbone"
    local.mkdir()
    meta, body = split_card(render_model_card(record(base_model=str(local), data=[{"source": str(tmp_path)}])))
    assert "base_model" not in meta and "datasets" not in meta
    assert str(local) in body  # still stated in the text


def test_body_states_teacher_data_size_hyperparameters_and_metrics():
    _, body = split_card(render_model_card(record()))
    assert "mixedbread-ai/mxbai-rerank-large-v2" in body
    assert "jhu-clsp/ettin-encoder-17m" in body
    assert "17.6M parameters" in body
    assert "512 tokens" in body
    assert "cross-encoder/ettin-reranker-v1-data" in body and "143,000,000 rows" in body
    assert "part\\|x" in body  # a pipe in a value cannot break the table
    assert "| learning_rate | 0.00024 |" in body
    assert "| global_batch_size | 1024 |" in body
    # before/after table: one row per dataset, mean last, with the change computed from the two numbers
    rows = [line for line in body.splitlines() if line.startswith("| Nano") or line.startswith("| **mean**")]
    assert [r.split("|")[1].strip() for r in rows] == ["NanoMSMARCO", "NanoNQ", "**mean**"]
    assert rows[0].split("|")[2:5] == [" 0.25 ", " 0.625 ", " +0.3750 "]
    assert rows[2].split("|")[2:5] == [" 0.375 ", " 0.6875 ", " +0.3125 "]
    assert "step 950" in body
    assert "1,234.5 pairs/s" in body and "456,789 tokens/s" in body


def test_usage_snippet_uses_the_repo_id_predict_rank_and_bf16_fa2_tip():
    _, body = split_card(render_model_card(record()))
    assert 'CrossEncoder("someone/ettin-reranker-17m-test")' in body
    assert "model.predict(" in body and "model.rank(" in body
    assert '"attn_implementation": "flash_attention_2"' in body and "torch.bfloat16" in body
    # the snippets are valid Python
    blocks = body.split("```python\n")[1:]
    assert len(blocks) == 2
    for block in blocks:
        compile(block.split("```")[0], "<card>", "exec")


def test_minimal_record_renders_and_missing_base_model_is_refused():
    card = render_model_card({"base_model": "jhu-clsp/ettin-encoder-32m"})
    meta, body = split_card(card)
    assert meta["license"] == "apache-2.0"
    assert "No evaluation was recorded" in body
    with pytest.raises(EttinError, match="base_model"):
        render_model_card({"size": "17m"})


def test_is_hub_id(tmp_path):
    assert is_hub_id("cross-encoder/ettin-reranker-17m-v1")
    assert not is_hub_id("no-owner")
    assert not is_hub_id("/abs/path")
    (tmp_path / "a").mkdir()
    assert not is_hub_id(str(tmp_path / "a"))


def test_teacher_scale_is_only_claimed_for_the_mxbai_teacher():
    _, mxbai = split_card(render_model_card(record()))
    assert 'logit("1") - logit("0")' in mxbai and "-12 to 22" in mxbai
    _, other = split_card(render_model_card(record(teacher="local model sha256:abc", teacher_format="bi-encoder")))
    assert 'logit("1")' not in other and "-12 to 22" not in other
    assert "the raw score" in other and "the its" not in other and "local model sha256:abc" in other


def test_the_encoder_named_is_the_backbone_actually_trained():
    front, body = split_card(render_model_card(record(backbone_type="modernbert")))
    assert "ModernBERT (Ettin) encoder" in body and "modernbert" in front["tags"]
    front, body = split_card(render_model_card(record(backbone_type="bert", base_model="/models/minilm")))
    assert "ModernBERT" not in body and "bert encoder" in body
    assert "bert" in front["tags"] and "modernbert" not in front["tags"]


def test_card_names_the_loss_the_run_used():
    from ettin_cli.publish.model_card import render_model_card

    for name, words in (("mse", "Loss: MSE between"), ("listnet", "Loss: ListNet"), ("mse+listnet", "Loss: MSE plus")):
        info = {"size": "17m", "base_model": "jhu-clsp/ettin-encoder-17m", "teacher": "t/t",
                "hyperparameters": {"loss": {"name": name, "list_size": 16}, "learning_rate": 1e-4}}
        card = render_model_card(info)
        assert words in card, name
        assert f"| loss | {name} (list_size 16) |" in card
