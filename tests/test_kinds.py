"""The wrong kind of folder: every data option names what it was given and the command that makes what it reads
(`io.kinds`, one detector for train, score, select, mine, eval, check-teacher)."""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT, run_cli

from ettin_cli.io.kinds import BEIR, MINED, MODEL, SCORED, folder_kind

DEMO = REPO_ROOT / "src" / "ettin_cli" / "demo_data"


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_qwen2_teacher_path):
    """Real outputs of the chain on the demo's dev queries: `ettin mine`, then `ettin score` of 24 of its rows."""
    from ettin_cli.cli import main

    root = tmp_path_factory.mktemp("kinds")
    for args in (["mine", "--corpus", str(DEMO), "--split", "dev", "--top-k", "4", "--output", str(root / "mined")],
                 ["score", str(root / "mined"), "--teacher", str(tiny_qwen2_teacher_path), "--limit", "24",
                  "--output", str(root / "scored")]):
        try:
            main(args)
        except SystemExit as exc:
            if exc.code:
                pytest.fail(f"ettin {args[0]} exited {exc.code}")
    return root


def test_folder_kind_names_each_kind_of_the_chain(chain, minilm_path, tmp_path):
    assert folder_kind(DEMO) == BEIR
    assert folder_kind(chain / "mined") == MINED
    assert folder_kind(chain / "scored") == SCORED
    assert folder_kind(minilm_path) == MODEL
    assert folder_kind(tmp_path) is None and folder_kind(tmp_path / "missing") is None


@pytest.mark.parametrize("command, given, says", [
    (["train", "--recipe", "recipes/demo.yaml", "--print-config", "--data"], "beir",
     ["is a BEIR collection (corpus.jsonl, queries.jsonl, qrels/), not scored pairs", "`ettin mine --corpus",
      "then `ettin score` first"]),
    (["train", "--recipe", "recipes/demo.yaml", "--print-config", "--data"], "mined",
     ["is mined candidates without teacher scores", "run `ettin score"]),
    (["train", "--recipe", "recipes/demo.yaml", "--print-config", "--data"], "model",
     ["is a model folder", "--base-model"]),
    (["train", "--recipe", "recipes/demo.yaml", "--print-config", "--eval-data"], "scored",
     ["is scored pairs", "not a BEIR collection"]),
    (["score", "--teacher", "x", "--output", "OUT"], "beir", ["is a BEIR collection", "not (query, document) pairs",
                                                            "`ettin mine --corpus"]),
    (["select", "--output", "OUT"], "beir", ["is a BEIR collection", "not scored pairs"]),
    (["select", "--output", "OUT"], "mined", ["is mined candidates", "run `ettin score"]),
    (["eval", "MODEL", "--data"], "scored", ["is scored pairs", "not a BEIR collection"]),
    (["check-teacher", "MODEL", "--data"], "mined", ["is mined candidates", "not a BEIR collection"]),
    (["mine", "--output", "OUT", "--corpus"], "model", ["is a model folder", "not a BEIR collection"]),
])
def test_every_data_option_names_the_wrong_kind_and_the_command_that_makes_the_right_one(
        command, given, says, chain, minilm_path, tmp_path, capsys):
    folder = {"beir": DEMO, "mined": chain / "mined", "scored": chain / "scored", "model": minilm_path}[given]
    args = [str(tmp_path / "out") if a == "OUT" else str(minilm_path) if a == "MODEL" else a for a in command]
    if command[0] in ("score", "select"):
        args.insert(1, str(folder))
    else:
        args.append(str(folder))
    code, out, err = run_cli(args, capsys)
    assert code == 2, (out, err)
    line = err.strip()
    assert line.startswith("error: ") and len(line.splitlines()) == 1, line
    for text in says:
        assert text in line, line
    assert not (tmp_path / "out").exists()
