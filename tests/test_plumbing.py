"""The shared plumbing: the sharded-folder API, local-or-Hub resolution, ids as text, file modes, progress,
Ctrl-C, the refused-rerun message, `--help` flags, and the publish fixes (issues #12 and #17)."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ettin_cli.core.errors import EttinError
from ettin_cli.io import shards
from ettin_cli.io.lifecycle import Counts, ShardedStep, run_step

SRC = Path(__file__).resolve().parents[1] / "src"


def _finished_folder(root: Path, parts: int = 2) -> Path:
    folder = shards.ShardedFolder(root)
    folder.prepare({"step": "test", "input": {"sha256": "a", "rows": 4}})
    for i in range(parts):
        folder.write(i, pa.table({"query_id": [f"00{i}"], "query": [f"q{i}"], "document": [f"d{i}"],
                                  "score": pa.array([float(i)], pa.float32())}))
    assert folder.finalize(parts) is not None
    return root


# ------------------------------------------------------------------------------------------ sharded folders
def test_a_finished_folder_opens_as_plain_parquet(tmp_path):
    """#17.13: sidecars live in DIR/.ettin, so pandas and datasets read the folder itself."""
    import datasets
    import pandas as pd

    root = _finished_folder(tmp_path / "scored")
    assert sorted(p.name for p in root.iterdir()) == [".ettin", "part-00000.parquet", "part-00001.parquet"]
    assert (root / ".ettin" / "manifest.json").is_file() and (root / ".ettin" / "run.json").is_file()
    frame = pd.read_parquet(root)
    assert sorted(frame["query"]) == ["q0", "q1"]
    loaded = datasets.load_dataset("parquet", data_dir=str(root), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded["document"]) == ["d0", "d1"]


def test_resume_checks_size_and_verify_checks_bytes(tmp_path, monkeypatch):
    """#12.3: a rerun trusts a record + size; `verify` hashes and catches altered bytes; ETTIN_VERIFY=1 is read
    once, as the default of the commands' --verify (#22: no environment side channel in the library)."""
    from ettin_cli.core.distributed import Rank

    root = _finished_folder(tmp_path / "out")
    folder = shards.ShardedFolder(root)
    shard = root / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-12] + b"XXXXXXXXPAR1"[-12:])  # same size, other bytes
    monkeypatch.delenv("ETTIN_VERIFY", raising=False)
    done, todo = folder.pending(2, Rank(0, 1, 0))
    assert sorted(done) == [0, 1] and todo == []
    assert len(folder.shards()) == 2  # readers: size only by default
    with pytest.raises(EttinError, match=r"part-00001\.parquet: sha256 .* does not match"):
        folder.shards(verify=True)
    done, todo = folder.pending(2, Rank(0, 1, 0), verify=True)
    assert sorted(done) == [0] and todo == [1]
    monkeypatch.setenv("ETTIN_VERIFY", "1")
    assert sorted(folder.pending(2, Rank(0, 1, 0))[0]) == [0, 1]  # the library reads no environment variable


class _Numbers(ShardedStep):
    """A step writing shard i as the row `x = i` (and counting it), recording which shards it worked."""

    name = "numbers"

    def __init__(self, n: int, calls: list[int]):
        self.n, self.calls = n, calls

    def shards(self) -> int:
        return self.n

    def schema(self, index: int) -> pa.Schema:
        return pa.schema([("x", pa.int64())])

    def work(self, index: int, writer) -> Counts:
        self.calls.append(index)
        writer.write(pa.table({"x": [index]}))
        return Counts()


def test_the_lifecycle_skips_finished_shards_of_this_rank_only(tmp_path):
    from ettin_cli.core.distributed import Rank

    folder = shards.ShardedFolder(tmp_path / "o")
    config = {"step": "numbers"}
    folder.prepare(config)
    folder.write(2, pa.table({"x": [2]}))
    calls: list[int] = []
    run = run_step(_Numbers(5, calls), folder, config, rank=Rank(0, 2, 0))
    assert run.owned == [0, 2, 4] and run.skipped == [2] and run.done == [0, 4] and calls == [0, 4]
    assert run.manifest is None and not run.complete  # rank 1's shards are missing
    run = run_step(_Numbers(5, calls), folder, config, rank=Rank(1, 2, 0))
    assert run.done == [1, 3] and run.complete and run.manifest["totals"]["rows"] == 5


def test_counts_add_up_field_by_field_and_tallies_key_by_key():
    from ettin_cli.data.selection import SelectionCounts

    a = SelectionCounts(queries=2, rows_out=10, by_role={"head": 4, "band": 6})
    b = SelectionCounts(queries=1, rows_out=3, by_role={"head": 2, "fill": 1})
    total = sum([a, b], SelectionCounts())
    assert total.queries == 3 and total.rows_out == 13 and total.by_role == {"head": 6, "band": 6, "fill": 1}
    assert SelectionCounts.from_record(dict(b.to_record(), rows=3)) == b  # stored under "counts" in the record
    assert (total - b) == SelectionCounts(queries=2, rows_out=10, by_role={"head": 4, "band": 6, "fill": 0})


def test_a_refused_rerun_names_only_the_keys_that_differ(tmp_path):
    """#17.15: nested configs are compared leaf by leaf; unchanged settings are not printed."""
    root = _finished_folder(tmp_path / "out")
    other = {"step": "test", "input": {"sha256": "b", "rows": 4}}
    with pytest.raises(EttinError) as info:
        shards.ShardedFolder(root).check(other)
    message = str(info.value)
    assert "input.sha256: 'a' -> 'b'" in message
    assert "rows" not in message and "step" not in message


# ------------------------------------------------------------------------------------------ local identity
def test_local_model_identity_reads_no_weight_bytes(tmp_path, monkeypatch):
    """#12.3: config + weight sizes and mtimes, not a hash of every weight on every run."""
    from ettin_cli.core import files

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 8}')
    weights = model / "model.safetensors"
    weights.write_bytes(b"\0" * 4096)
    hashed: list[str] = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p, *a, **k: (hashed.append(Path(p).name), real(p))[1])
    first = files.local_model_identity(model)
    assert hashed == ["config.json"]
    assert files.local_model_identity(model) == first
    os.utime(weights, ns=(1, 1))  # rewritten weights: a new mtime
    assert files.local_model_identity(model) != first
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns))
    second = files.local_model_identity(model)
    (model / "config.json").write_text('{"hidden_size": 16}')
    assert files.local_model_identity(model) != second


# ------------------------------------------------------------------------------------------ local or Hub
@pytest.mark.parametrize("value", ["./data/pairs", "/no/such/folder", "~/nope-ettin", "runs/17m/",
                                   "pairs.parquet", "org/name/extra", "mixx.jsonl"])
def test_a_mistyped_path_is_no_such_file_at_once(value, monkeypatch):
    """#17.8: a value that looks like a path and does not exist never reaches the Hub."""
    from ettin_cli.core import sources

    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=1.0: pytest.fail("the Hub was consulted"))
    with pytest.raises(EttinError, match="no such file or folder"):
        sources.resolve_source(value, option="--data", offline_hint="--data DIR")


def test_a_path_whose_first_part_exists_is_a_path(tmp_path, monkeypatch):
    from ettin_cli.core import sources

    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    assert sources.looks_like_path("work/mixx")
    assert not sources.looks_like_path("cross-encoder/ettin-reranker-v1-data")
    with pytest.raises(EttinError, match="--data work/mixx: no such file or folder"):
        sources.resolve_source("work/mixx", option="--data", offline_hint="--data DIR")
    found = sources.resolve_source("work", option="--data", offline_hint="--data DIR")
    assert found.is_local and found.path == Path("work")


def test_an_offline_hub_id_fails_within_a_second_naming_the_alternative(monkeypatch, tmp_path):
    from ettin_cli.core import sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    began = time.perf_counter()
    with pytest.raises(EttinError, match=r"HF_HUB_OFFLINE is set.*--base-model DIR"):
        sources.resolve_source("some-org/never-cached", option="--base-model", offline_hint="--base-model DIR")
    assert time.perf_counter() - began < 1.0


def test_an_unreachable_hub_fails_within_a_second(monkeypatch, tmp_path):
    from ettin_cli.core import sources

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                 "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(sources, "_cached", lambda repo_id, repo_type: False)
    began = time.perf_counter()
    with pytest.raises(EttinError, match=r"cannot be reached.*--data DIR"):
        sources.resolve_source("some-org/data", option="--data", offline_hint="--data DIR", repo_type="dataset")
    assert time.perf_counter() - began < 1.5


# ------------------------------------------------------------------------------------------ ids as text
def test_id_columns_stay_text_in_every_format(tmp_path):
    """#17.12: `010` stays `010` in CSV, TSV and JSONL (JSON numbers become their text)."""
    from ettin_cli.io.tables import open_input

    (tmp_path / "p.csv").write_text("query_id,doc_id,corpus-id,query,document,label\n010,0020,7,q,d,1\n")
    (tmp_path / "p.tsv").write_text("query_id\tdoc_id\tcorpus-id\tquery\tdocument\tlabel\n010\t0020\t7\tq\td\t1\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"query_id": "010", "doc_id": "0020", "corpus-id": 7,
                                                  "query": "q", "document": "d", "label": 1}) + "\n")
    for name in ("p.csv", "p.tsv", "p.jsonl"):
        source = open_input(tmp_path / name)
        rows = [row for _, table in source.iter_batches() for row in table.to_pylist()]
        assert rows[0]["query_id"] == "010" and rows[0]["doc_id"] == "0020", name
        assert rows[0]["corpus-id"] == "7" and rows[0]["label"] == 1, name
        assert pa.types.is_string(source.schema.field("query_id").type), name


# ------------------------------------------------------------------------------------------ file modes
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, mask, mode):
    """#17.13: not mkstemp's private 0600."""
    from ettin_cli.core.files import write_json_atomic

    old = os.umask(mask)
    try:
        write_json_atomic(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == mode


# ------------------------------------------------------------------------------------------ progress
def test_a_log_line_every_interval_even_without_advances(caplog):
    """#17.5: off a terminal, a slow step still logs its status on time."""
    from ettin_cli.core import console

    console.logger.propagate = True
    caplog.set_level(logging.INFO, logger="ettin")
    with console.progress(100, "slow step", "pairs", every=0.05) as bar:
        bar.advance(3)
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("slow step: 3/100")]
    assert len(lines) >= 3  # at least two timer lines plus the summary


def test_a_paused_or_outer_bar_logs_nothing_while_an_inner_step_runs(caplog):
    """Training's bar is paused while it evaluates and the evaluation has its own bar: no
    `training: 0/1,024, 0.0 pairs/s` lines in between, the evaluation's lines only; the training bar speaks again
    once it runs."""
    from ettin_cli.core import console

    console.logger.propagate = True
    caplog.set_level(logging.INFO, logger="ettin")
    with console.progress(1024, "training", "pairs", every=0.05) as outer:
        outer.pause()
        with console.progress(50, "evaluating", "pairs", every=0.05) as inner:
            inner.advance(5)
            time.sleep(0.3)
        time.sleep(0.2)  # paused, nothing inside: still quiet
        during = [r.getMessage() for r in caplog.records]
        outer.resume()
        outer.advance(16)
        time.sleep(0.3)
    assert not [m for m in during if m.startswith("training:")], during
    assert any(m.startswith("evaluating: 5/50") for m in during)
    assert any(m.startswith("training: 16/1,024") for m in (r.getMessage() for r in caplog.records))


class _StubTeacher:
    """A teacher that reports each batch of 4 pairs through `on_batch`, as the real ones do."""

    format, dtype, device, attn, max_length, revision = "cross-encoder", "float32", "cpu", "sdpa", 32, None

    def __init__(self, path: Path) -> None:
        from ettin_cli.label.teacher import ScoreStats

        self.name, self.path, self.stats, self.on_batch = "stub", path, ScoreStats(), None

    def score(self, queries, documents, batch_size=None, max_tokens_per_batch=None):
        for start in range(0, len(queries), 4):
            if self.on_batch is not None:
                self.on_batch(min(4, len(queries) - start))
        return np.arange(len(queries), dtype=np.float32)


def test_the_score_bar_moves_per_batch(tmp_path, monkeypatch):
    """#17.5: inside a shard (and a sort window) the bar advances batch by batch."""
    import contextlib

    from ettin_cli.core import console
    from ettin_cli.label.scoring import ScoreJob, run_score

    steps: list[int] = []

    class Recorder:
        done = 0

        def __init__(self, description):
            self.description = description

        def advance(self, n=1):
            self.done += n
            if self.description == "scoring":
                steps.append(n)

        def advance_to(self, done):
            if done > self.done:
                self.advance(done - self.done)

    @contextlib.contextmanager
    def progress(total, description, unit="rows", every=10.0):
        yield Recorder(description)

    monkeypatch.setattr(console, "progress", progress)
    pq.write_table(pa.table({"query": [f"q{i}" for i in range(20)], "document": [f"d{i}" for i in range(20)]}),
                   tmp_path / "pairs.parquet")
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "config.json").write_text("{}")
    job = ScoreJob(input=str(tmp_path / "pairs.parquet"), output=tmp_path / "out",
                   teacher=_StubTeacher(tmp_path / "stub"), rows_per_shard=20, window_rows=20)
    run_score(job)
    assert steps == [4, 4, 4, 4, 4]  # five batches in one 20-pair window, not one step of 20


def test_the_evaluation_bar_moves_per_batch(monkeypatch):
    """#17.5: a scorer's per-batch hook (`console.advance_active`) moves the bar inside one scoring chunk."""
    from ettin_cli.core import console
    from ettin_cli.io.beir import BeirDataset
    from ettin_cli.measure import evaluation

    steps: list[int] = []
    real = console._Bar.advance

    def record(self, n=1):
        steps.append(n)
        real(self, n)

    monkeypatch.setattr(console._Bar, "advance", record)
    dataset = BeirDataset("t", corpus={f"d{i}": "x" for i in range(10)}, queries={"q": "y"}, qrels={"q": {"d0": 1}})

    def score_fn(queries, documents):
        for _ in range(0, len(queries), 2):
            console.advance_active(2)
        return np.zeros(len(queries))

    evaluation.rerank(score_fn, dataset, {"q": [(f"d{i}", 0.0) for i in range(10)]}, top_k=10)
    assert steps == [2, 2, 2, 2, 2]


# ------------------------------------------------------------------------------------------ the CLI
def _run_cli(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


def test_ctrl_c_says_what_is_kept_and_how_to_resume():
    """#17.6: exit 130, one message, no traceback."""
    code = ("import sys\nimport ettin_cli.core.hardware as h\n"
            "def boom(): raise KeyboardInterrupt\n"
            "h.describe = boom\nfrom ettin_cli.cli import main\nmain(sys.argv[1:])\n")
    proc = _run_cli(code, "env")
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "interrupted" in proc.stderr and "Rerun the same command to resume: ettin env" in proc.stderr


def test_help_shows_no_bool_type_on_flags():
    """#17.15: a flag takes no value, so no `<bool>` beside it, in any command's help (and the top-level one)."""
    code = "import sys\nfrom ettin_cli.cli import main\nmain(sys.argv[1:])\n"
    flags = {"push": "--dry-run", "score": "--overwrite", "bench": "--ablation", "eval": "--json", "train": "--resume",
             "mine": None, "select": None, "mix": None, "doctor": None, "env": None, "": None}
    for command, flag in flags.items():
        proc = _run_cli(code, *([command] if command else []), "--help")
        assert proc.returncode == 0, proc.stderr
        assert "<bool>" not in proc.stdout, command or "ettin"
        if flag:
            assert flag in proc.stdout, command
            assert "<str>" in proc.stdout or "<int>" in proc.stdout  # options that take a value keep their type


# ------------------------------------------------------------------------------------------ publish
def _record(**extra):
    return {"base_model": "jhu-clsp/ettin-encoder-17m", "teacher": "mixedbread-ai/mxbai-rerank-large-v2",
            "teacher_format": "mxbai-v2", **extra}


def test_card_shows_local_paths_as_text_and_the_hub_id_when_known(tmp_path):
    """#17.14: a local path is plain text (never a dead link); a Hub cache snapshot names its Hub id."""
    from ettin_cli.publish.model_card import render_model_card

    local = tmp_path / "venv" / "lib" / "site-packages" / "minilm"
    local.mkdir(parents=True)
    snapshot = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    card = render_model_card(_record(teacher=str(local), teacher_format="bi-encoder", base_model=str(snapshot)))
    assert f"]({local})" not in card and f"({snapshot})" not in card
    assert f"`{local}` (a local folder)" in card
    assert "[`sentence-transformers/all-MiniLM-L6-v2`]" not in card  # known, but a local copy: text, not link
    assert "`sentence-transformers/all-MiniLM-L6-v2` (local copy at" in card
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert "the its" not in card and "the raw score" in card


def test_card_title_comes_from_the_recipe_size():
    from ettin_cli.publish.model_card import render_model_card

    assert "\n# Ettin reranker demo\n" in render_model_card(_record(size="demo"))
    custom = render_model_card(_record(recipe={"size": "68m"}))
    assert "\n# Ettin reranker 68m\n" in custom and "custom" not in custom


def test_push_leaves_training_args_home_unless_asked(tmp_path):
    from ettin_cli.publish import model_push

    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"w")
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "ettin_training.json").write_text(json.dumps(_record(size="17m")))
    plan = model_push.plan_model_push(folder, "org/ettin-17m", check=False)
    assert "training_args.bin" not in {f.path_in_repo for f in plan.files}
    plan = model_push.plan_model_push(folder, "org/ettin-17m", check=False, include_training_args=True)
    assert "training_args.bin" in {f.path_in_repo for f in plan.files}


@pytest.mark.parametrize("env, flag, expected", [(None, [], False), ("1", [], True), (None, ["--verify"], True),
                                                 ("0", [], False)])
def test_verify_reaches_the_step_as_an_argument_with_ettin_verify_as_its_default(env, flag, expected, monkeypatch,
                                                                                 tmp_path, capsys):
    """#22: `--verify` is declared once (`commands.options.Verify`); ETTIN_VERIFY is read at the CLI edge only."""
    from conftest import run_cli

    from ettin_cli.data import selection

    seen = {}
    monkeypatch.setattr(selection, "select", lambda *a, **kw: seen.update(kw) or {})
    if env is None:
        monkeypatch.delenv("ETTIN_VERIFY", raising=False)
    else:
        monkeypatch.setenv("ETTIN_VERIFY", env)
    code, _, err = run_cli(["select", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *flag], capsys)
    assert code == 0, err
    assert seen["verify"] is expected
    assert os.environ.get("ETTIN_VERIFY") == env  # nothing writes the environment
