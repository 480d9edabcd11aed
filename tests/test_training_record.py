"""The typed training record (`ettin_training.json`): a lossless round trip, and the card hash that tells
`ettin push` whether a folder's README.md is still the card `ettin train` wrote."""

from __future__ import annotations

import json

import pytest

from ettin_cli.publish import model_push
from ettin_cli.publish.model_card import render_model_card
from ettin_cli.publish.training_record import TRAINING_RECORD, TrainingRecord

REPO = "org/ettin-reranker-17m-v1"


def record_dict() -> dict:
    """A record shaped like the one `ettin train` writes (train/outputs.build_record), plus a key from a newer
    version that this one must keep."""
    return {
        "format": "ettin-training/1", "ettin_cli": "0.1.0", "size": "17m", "base_model": "jhu-clsp/ettin-encoder-17m",
        "backbone_type": "modernbert", "teacher": "mixedbread-ai/mxbai-rerank-large-v2", "teacher_format": "mxbai-v2",
        "data": [{"source": "cross-encoder/ettin-reranker-v1-data", "kind": "hub", "rows": 4096}],
        "validation_data": [], "train_rows": 4096, "truncation": None, "parameters": 1_234_567, "max_length": 128,
        "hyperparameters": {"learning_rate": 2.4e-4, "global_batch_size": 1024, "seed": 12},
        "evaluation": {"benchmark": "NanoBEIR", "retriever": "BM25", "top_k": 100, "metric": "NDCG@10"},
        "metrics": {"before": {"nfcorpus": 0.1, "mean": 0.1}, "after": {"nfcorpus": 0.3, "mean": 0.3},
                    "best_step": 40},
        "throughput": {"train_pairs_per_second": 812.5}, "observed_per_device_batch": 64, "resumed_from": None,
        "final_model": {"step": 40, "why": "the best checkpoint"}, "config": {"loss": {"name": "mse"}},
        "quality_flags": [], "from_a_newer_version": {"kept": True},
    }


@pytest.fixture
def trained_folder(tmp_path):
    """A model folder as `ettin train` leaves it: weights, the card, and the record holding the card's hash."""
    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    TrainingRecord.from_dict(record_dict()).write_with_card(folder)
    return folder


def test_the_record_round_trips_through_its_file(trained_folder):
    data = record_dict()
    assert TrainingRecord.from_dict(data).to_dict() == data
    record = TrainingRecord.read(trained_folder)
    assert record.size == "17m" and record.metrics["after"]["mean"] == 0.3
    assert record.extra == {"from_a_newer_version": {"kept": True}}
    saved = json.loads((trained_folder / TRAINING_RECORD).read_text(encoding="utf-8"))
    assert saved == {**data, "card_sha256": record.card_sha256}
    assert TrainingRecord.from_dict(saved).to_dict() == saved
    card = (trained_folder / "README.md").read_bytes()
    assert card.decode() == render_model_card(data)  # the card is the record's, rendered once
    assert record.wrote_card(card) and not record.wrote_card(card + b"\n")
    assert TrainingRecord.read(trained_folder.parent) is None  # no record there


def test_push_tells_an_edited_card_by_its_hash(trained_folder, tmp_path, monkeypatch):
    # Untouched: the card `ettin train` wrote is refreshed with the repo id.
    plan = model_push.plan_model_push(trained_folder, REPO, check=False)
    assert "repo id filled in" in plan.card_note
    saved = json.loads((trained_folder / TRAINING_RECORD).read_text(encoding="utf-8"))  # stored key-sorted
    assert plan.card == render_model_card({**saved, "model_id": REPO})

    # Edited, even only by reordering its lines (which a re-rendering compared line by line would miss): the
    # user's card, kept byte for byte, decided without rendering anything.
    card = (trained_folder / "README.md").read_text(encoding="utf-8")
    lines = card.splitlines(keepends=True)
    edited = "".join([lines[1], lines[0], *lines[2:]])
    (trained_folder / "README.md").write_text(edited, encoding="utf-8")
    def no_rendering(*args, **kwargs):
        raise RuntimeError("the card was rendered")

    with monkeypatch.context() as patch:
        patch.setattr(TrainingRecord, "render_card", no_rendering)
        with pytest.raises(RuntimeError, match="the card was rendered"):  # --replace-card does render
            model_push.plan_model_push(trained_folder, REPO, check=False, replace_card=True)
        plan = model_push.plan_model_push(trained_folder, REPO, check=False)
    assert plan.card == edited and "own card, kept" in plan.card_note

    # A record without a card hash (written before the hash existed, or by hand): the card cannot be proven
    # ours, so it is the user's.
    (trained_folder / "README.md").write_text(card, encoding="utf-8")
    unhashed = {k: v for k, v in json.loads((trained_folder / TRAINING_RECORD).read_text()).items()
                if k != "card_sha256"}
    (trained_folder / TRAINING_RECORD).write_text(json.dumps(unhashed))
    assert model_push.plan_model_push(trained_folder, REPO, check=False).card == card
