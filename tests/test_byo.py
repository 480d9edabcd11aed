"""docs/data.md "Bring your own corpus": the documented block is what scripts/byo_cranfield.sh runs, and its qrels split
keeps the train, dev and test queries apart (run on the real Cranfield qrels)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "byo_cranfield.sh"
DOC = ROOT / "docs" / "data.md"  # where the README's bring-your-own section moved (issue #22)


def script_block() -> str:
    text = SCRIPT.read_text()
    match = re.search(r"# BEGIN README BLOCK\n(.*)# END README BLOCK\n", text, re.S)
    assert match, "scripts/byo_cranfield.sh lost its BEGIN/END README BLOCK markers"
    return match.group(1)


def test_readme_block_is_the_script():
    block = script_block()
    doc = DOC.read_text()
    assert f"```bash\n{block}```" in doc, "docs/data.md's bring-your-own block differs from scripts/byo_cranfield.sh"
    for command in ("ettin mine", "ettin score", "ettin select", "ettin train", "ettin eval"):
        assert command in block


def _qids(path: Path) -> tuple[str, list[str]]:
    lines = path.read_text().splitlines()
    return lines[0], [line.split("\t")[0] for line in lines[1:]]


def test_qrels_split_keeps_train_dev_and_test_apart(cranfield_dir, tmp_path):
    """Step 0 of the block, run as written (bash + awk) on the real qrels: disjoint query sets, nothing lost."""
    step0 = re.search(r"\n(# 0\. .*?)\n\n# 1\.", script_block(), re.S).group(1)
    out = tmp_path / "byo"
    subprocess.run(["bash", "-euo", "pipefail", "-c", step0], check=True, cwd=tmp_path,
                   env={"PATH": "/usr/bin:/bin", "CRANFIELD": str(cranfield_dir), "OUT": str(out)})
    header, source = _qids(cranfield_dir / "qrels" / "test.tsv")
    order = list(dict.fromkeys(source))
    splits = {name: _qids(out / name) for name in ("cranfield/qrels/train.tsv", "cranfield/qrels/test.tsv",
                                                    "cranfield-dev/qrels/test.tsv")}
    assert all(h == header for h, _ in splits.values())  # every file keeps the header line
    train, test, dev = (set(ids) for _, ids in splits.values())
    assert not train & test and not train & dev and not test & dev
    assert test == set(order[:50]) and dev == set(order[50:75]) and train == set(order[75:])
    assert sum(len(ids) for _, ids in splits.values()) == len(source)  # every judgement lands in one split
    for name in ("cranfield", "cranfield-dev"):
        for file in ("corpus.jsonl", "queries.jsonl"):
            assert (out / name / file).read_bytes() == (cranfield_dir / file).read_bytes()
