"""The model card's "Exported models" section: each ONNX / OpenVINO file with its measured parity and speed.

`ettin export` leaves `onnx/parity.json` and `openvino/parity.json` beside the files; `ettin push` uploads the
folders with the model (they are plain files of the model folder) and adds this section to the card, so a user
sees what each file costs in agreement with the PyTorch model before choosing one, and how to load it without
torch. The section sits between markers, so a card pushed again gets it replaced, never duplicated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import read_json_object

PARITY_FILE = "parity.json"
EXPORT_DIRS = ("onnx", "openvino")
START = "<!-- ettin-export:start -->"
END = "<!-- ettin-export:end -->"


def read_parity(folder: Path) -> dict[str, Any]:
    """`FOLDER/parity.json` written by `ettin export` ({} when absent)."""
    path = folder / PARITY_FILE
    data = read_json_object(path)
    if not isinstance(data.get("exports", {}), dict):
        raise EttinError(f"{path}: not a parity record of `ettin export`")
    return data


def exported_files(model_dir: Path) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(format, row, record) for every export listed in the folder's parity.json files whose file exists."""
    out = []
    for folder in EXPORT_DIRS:
        record = read_parity(model_dir / folder)
        for fmt, row in record.get("exports", {}).items():
            if (model_dir / row["file"]).is_file():
                out.append((fmt, row, record))
    return out


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def export_section(model_dir: Path, model_id: str) -> str | None:
    """The card section for the folder's exports, or None when it has none."""
    files = exported_files(model_dir)
    if not files:
        return None
    _, first_row, first = files[0]
    check = f"{first['check_pairs']} held-out pairs of `{Path(first['check_data']).name}`"
    lines = [START, "## Exported models (ONNX / OpenVINO)", "",
             "Each file is the whole scorer (encoder, pooling and head; raw score out), checked by `ettin export` "
             f"against this model in PyTorch fp32 on {check} before it was kept. Speed: pairs/s on those pairs on "
             f"the exporting machine's CPU ({first['isa']}), PyTorch fp32 "
             f"{_num(first['reference']['pairs_per_second'], ',.1f')} pairs/s there.", "",
             "| file | precision | max abs diff | Spearman | NDCG@10 change | pairs/s | vs PyTorch |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for _, row, _ in files:
        figures = row["parity"]
        drop = figures.get("ndcg_drop")
        lines.append(f"| `{row['file']}` | {row['kind']} | {_num(figures['max_abs_diff'], '.2e')} | "
                     f"{_num(figures['spearman'], '.5f')} | {'-' if drop is None else format(-drop, '+.4f')} | "
                     f"{_num(row['pairs_per_second'], ',.1f')} | {_num(row.get('speedup'), '.2f')}x |")
    lines += ["", "Load one without torch (tokenizers + onnxruntime or openvino + numpy):", "", "```python",
              'from ettin_cli.label.exported import ExportedCrossEncoder  # pip install "ettin-cli[export]"',
              f'model = ExportedCrossEncoder("{model_id}", "{first_row["file"]}")',
              'ranked = model.rank("how do wings lift?", ["A wing deflects air downwards.", "Paris is in France."])',
              "```", END]
    return "\n".join(lines) + "\n"


def with_export_section(card: str, model_dir: Path, model_id: str) -> str:
    """`card` with the exports section added (or replaced, between its markers); unchanged without exports."""
    section = export_section(model_dir, model_id)
    stripped = re.sub(rf"\n*{re.escape(START)}.*?{re.escape(END)}\n?", "\n", card, flags=re.S)
    if section is None:
        return card if stripped == card else stripped.rstrip("\n") + "\n"
    return stripped.rstrip("\n") + "\n\n" + section
