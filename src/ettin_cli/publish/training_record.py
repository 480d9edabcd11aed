"""The training record (`OUT/final/ettin_training.json`): what a trained model is, how it was made, what it scored.

`ettin train` builds it (`train.outputs.build_record`) and writes it beside the model with the README.md card
rendered from it (`write_with_card`); the model card and `ettin push` read it back through `TrainingRecord.read`.
The record keeps the SHA-256 of the card it was written with (`card_sha256`), so a push knows whether the
folder's README.md is still that card (refreshed with the repo id) or was edited by the user (kept) by comparing
hashes, not by rendering the card again.

Every field but the format stamp is optional, so a partial or older record still loads; keys this version does
not know are kept in `extra` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import write_json_atomic, write_text_atomic
from ettin_cli.publish.model_card import render_model_card
from ettin_cli.publish.plan import CARD_NAME

TRAINING_RECORD = "ettin_training.json"
FORMAT = "ettin-training/1"


@dataclass
class TrainingRecord:
    """The fields of `ettin_training.json`; `model_card` documents how each one is shown."""

    format: str = FORMAT
    ettin_cli: str | None = None  # the version that wrote it
    size: str | None = None
    base_model: str | None = None
    backbone_type: str | None = None
    teacher: str | None = None
    teacher_format: str | None = None
    data: list[dict[str, Any]] = field(default_factory=list)
    validation_data: list[dict[str, Any]] = field(default_factory=list)
    train_rows: int | None = None
    truncation: dict[str, Any] | None = None
    parameters: int | None = None
    max_length: int | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)
    observed_per_device_batch: int | None = None
    resumed_from: str | None = None
    final_model: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    quality_flags: list[str] = field(default_factory=list)
    card_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a newer (or hand-made) record, kept as they are

    def to_dict(self) -> dict[str, Any]:
        """The JSON object as written: every field (None included, as `ettin train` always wrote them), plus
        `extra`; `card_sha256` only once a card was written with the record."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if out["card_sha256"] is None:
            del out["card_sha256"]
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingRecord:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def read(cls, folder: str | Path) -> TrainingRecord | None:
        """`FOLDER/ettin_training.json`, or None when the folder has none; a broken one is a one-line error."""
        path = Path(folder) / TRAINING_RECORD
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EttinError(f"{path}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(data, dict):
            raise EttinError(f"{path}: expected a JSON object")
        return cls.from_dict(data)

    def render_card(self, model_id: str | None = None) -> str:
        """The model card of this record; `model_id` (the Hub repo id) names the model in the usage snippet."""
        info = self.to_dict()
        info.pop("card_sha256", None)
        if model_id is not None:
            info["model_id"] = model_id
        return render_model_card(info)

    def write_with_card(self, folder: str | Path) -> None:
        """Write the card (README.md) and then the record holding the card's hash, both atomically."""
        folder = Path(folder)
        card = self.render_card().encode("utf-8")
        self.card_sha256 = hashlib.sha256(card).hexdigest()
        write_text_atomic(folder / CARD_NAME, card.decode("utf-8"))
        write_json_atomic(folder / TRAINING_RECORD, self.to_dict())

    def wrote_card(self, card: bytes) -> bool:
        """True when `card` is, byte for byte, the card this record was written with (not edited since)."""
        return self.card_sha256 is not None and hashlib.sha256(card).hexdigest() == self.card_sha256
