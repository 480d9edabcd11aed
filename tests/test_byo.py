"""Bring your own corpus (docs/byo.md): the docs block is what scripts/byo_cranfield.sh runs; `ettin split` keeps
train, dev and test apart with sizes that adapt to the collection; the route runs unchanged on ~50 judged queries."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from ettin_cli.core.errors import EttinError
from ettin_cli.data.splitting import SplitConfig, split_collection

SCRIPT = REPO_ROOT / "scripts" / "byo_cranfield.sh"
DEMO = REPO_ROOT / "src" / "ettin_cli" / "demo_data"


def script_block() -> str:
    text = SCRIPT.read_text()
    match = re.search(r"# BEGIN README BLOCK\n(.*)# END README BLOCK\n", text, re.S)
    assert match, "scripts/byo_cranfield.sh lost its BEGIN/END README BLOCK markers"
    return match.group(1)


def test_docs_block_is_the_script():
    block = script_block()
    docs = (REPO_ROOT / "docs" / "byo.md").read_text()
    assert f"```bash\n{block}```" in docs, "docs/byo.md's bring-your-own block differs from scripts/byo_cranfield.sh"
    for command in ("ettin split", "ettin mine", "ettin score", "ettin train", "ettin eval"):
        assert command in block
    assert "awk" not in block and "--eval-split dev" in block and "--split test" in block


def _qids(path: Path) -> tuple[str, list[str]]:
    lines = path.read_text().splitlines()
    return lines[0], [line.split("\t")[0] for line in lines[1:]]


def test_split_keeps_train_dev_and_test_apart_and_is_deterministic(cranfield_dir, tmp_path):
    """The real Cranfield qrels: disjoint query sets of the configured sizes, every row in one split, the same
    draw for the same seed, another for another seed; the corpus and queries are the source's bytes."""
    config = SplitConfig()
    record = split_collection(cranfield_dir, tmp_path / "a", config)
    header, source = _qids(cranfield_dir / "qrels" / "test.tsv")
    splits = {name: _qids(tmp_path / "a" / "qrels" / f"{name}.tsv") for name in ("train", "dev", "test")}
    assert all(h == header for h, _ in splits.values())
    train, dev, test = (set(ids) for _, ids in splits.values())
    assert not train & test and not train & dev and not test & dev
    judged = record["judged_queries"]
    assert judged == 225 and len(test) == round(0.2 * judged) and len(dev) == round(0.1 * judged)
    assert sum(len(ids) for _, ids in splits.values()) == len(source)
    for file in ("corpus.jsonl", "queries.jsonl"):
        assert (tmp_path / "a" / file).read_bytes() == (cranfield_dir / file).read_bytes()
    again = split_collection(cranfield_dir, tmp_path / "b", config)
    assert again["query_ids"] == record["query_ids"]
    other = split_collection(cranfield_dir, tmp_path / "c", SplitConfig(seed=13))
    assert other["query_ids"]["test"] != record["query_ids"]["test"]
    # The rerun of the same split is a no-op; another config into the same folder is refused, naming it.
    assert split_collection(cranfield_dir, tmp_path / "a", config)["reused"]
    with pytest.raises(EttinError, match="another seed"):
        split_collection(cranfield_dir, tmp_path / "a", SplitConfig(seed=13))


def _small_collection(root: Path, judged: int) -> Path:
    """The demo corpus shipped as Cranfield ships: one qrels/test.tsv, here holding the first `judged` queries."""
    root.mkdir(parents=True)
    shutil.copy(DEMO / "corpus.jsonl", root / "corpus.jsonl")
    shutil.copy(DEMO / "queries.jsonl", root / "queries.jsonl")
    rows = [line for name in ("train", "dev", "test")
            for line in (DEMO / "qrels" / f"{name}.tsv").read_text().splitlines()[1:]]
    keep = sorted({r.split("\t")[0] for r in rows})[:judged]
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(r + "\n" for r in sorted(rows) if r.split("\t")[0] in keep))
    return root


def test_split_refuses_too_few_judged_queries_in_one_line_writing_nothing(tmp_path, capsys):
    from ettin_cli.cli import main

    small = _small_collection(tmp_path / "tiny", 30)
    out = tmp_path / "split"
    with pytest.raises(SystemExit) as exit_:
        main(["split", str(small), "--output", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "30 judged queries" in err and "needs 40" in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".split.*"))


def test_byo_route_split_and_mine_run_unchanged_on_50_judged_queries(tmp_path):
    """The route's block, as written, up to its scoring step, on a collection of 52 judged queries (the size that
    left Cranfield's fixed 50/25 split with an empty train file): every split holds queries, mining finds them."""
    collection = _small_collection(tmp_path / "collection", 52)
    steps = re.search(r"^(.*?)\n# 2\. ", script_block(), re.S).group(1)
    prelude = (f'python() {{ "{sys.executable}" "$@"; }}\n'
               f'ettin() {{ "{sys.executable}" -m ettin_cli "$@"; }}\n')
    env = {**os.environ, "CRANFIELD": str(collection), "OUT": str(tmp_path / "byo"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", prelude + steps], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "byo" / "cranfield" / "split.json").read_text())
    assert record["judged_queries"] == 52 and all(n >= 10 for n in record["queries"].values()), record
    import pyarrow.parquet as pq

    for folder, split in (("mined", "train"), ("dev-mined", "dev")):
        assert (tmp_path / "byo" / folder / ".ettin" / "manifest.json").is_file()
        mined = set(pq.read_table(tmp_path / "byo" / folder).column("query_id").to_pylist())
        assert mined == set(record["query_ids"][split])
