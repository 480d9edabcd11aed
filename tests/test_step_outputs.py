"""The five sharded steps write what they wrote before the lifecycle refactor (issue #22: nothing a user sees changes).

`tests/golden/step_outputs.json` was produced by the pre-refactor code at commit f918f0a (`git worktree add
/tmp/base f918f0a`, these test files copied in, `ETTIN_WRITE_GOLDEN=1 PYTHONPATH=/tmp/base/src pytest
tests/test_step_outputs.py`). This test reruns the same commands (`ettin mine`, `mine --lists`, `score`,
`select`, `mix`) with the current code on the same small real inputs and compares content digests: each
output's schema, its rows as a sorted multiset, the shard records and manifest totals and counts, the
command's printed summary. Timestamps, hosts, durations, speeds and temporary paths are left out; shard sizes
and SHA-256 are kept, so the parquet bytes must match too.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from steps import MIX_SUBSETS, folder_digest, step_commands, step_digest, write_step_inputs

GOLDEN = Path(__file__).parent / "golden" / "step_outputs.json"


def _ok(args: list[str], capsys) -> str:
    code, out, err = run_cli(["-q", *args], capsys)
    assert code == 0, err
    return out


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return re.sub(r"[0-9.,]+ pairs/s", "(speed) pairs/s", text.strip())


@pytest.fixture(scope="module")
def step_inputs(cranfield, cranfield_dir, tmp_path_factory) -> dict[str, Path]:
    return write_step_inputs(cranfield, cranfield_dir, tmp_path_factory.mktemp("step-inputs"))


def run_steps(inputs: dict[str, Path], teacher: Path, out: Path, capsys) -> dict[str, Any]:
    """Every sharded step once, through the CLI, on `inputs`; returns each output's digest and printed summary."""
    digests: dict[str, Any] = {}
    for step, args in step_commands(inputs, teacher, out).items():
        printed = _ok(args, capsys)
        digests[step] = ({"output": step_digest(step, out), "printed": _json_or_text(printed)} if step != "mix"
                         else {"output": {sub: folder_digest(out / "mix" / sub) for sub in MIX_SUBSETS},
                               "summary": step_digest(step, out)["summary.json"]})
    text = json.dumps(digests, sort_keys=True)
    for path, tag in ((inputs["root"], "<inputs>"), (out, "<out>"), (teacher, "<teacher>"),
                      (inputs["cranfield"], "<cranfield>")):
        text = text.replace(str(path), tag)
    return json.loads(text)


def test_each_step_writes_what_the_pre_refactor_code_wrote(step_inputs, minilm_path, tmp_path, capsys):
    digests = run_steps(step_inputs, minilm_path, tmp_path / "out", capsys)
    if os.environ.get("ETTIN_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert set(digests) == {"mine", "lists", "score", "select", "mix"}
    for step in golden:
        assert digests[step] == golden[step], step
