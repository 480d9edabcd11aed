"""Every sharded step survives SIGKILL: killed inside a shard, between shards and before its manifest, several
times in a row, then rerun, it writes what an uninterrupted run writes (issue #22: one fault test for all).

Each run is a forked copy of this process running `ettin <step> ...` (the CLI's `main`), so no run pays Python's
and torch's start-up again. A killed run arms one fault point and sends itself SIGKILL there (no cleanup, no
`finally`, no flush: what a kill -9 or a lost node leaves):

- `write N`: right after the N-th batch of rows went into a shard's temp file (inside a shard);
- `record N`: right after the N-th completion record was written (between shards);
- `manifest`: just before the manifest is written (every shard done, output not yet complete).

The output after the final rerun must equal an uninterrupted run's: the same rows as a multiset (nothing lost,
nothing twice), the same shard bytes (SHA-256) and records, the same manifest totals and counts, no temp files.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path

import pytest
from steps import OUTPUTS, STEPS, folder_digest, step_commands, step_digest, write_step_inputs

from ettin_cli.io import shards

# Kill points of the consecutive interrupted runs (each run counts from 1), then one run to the end.
KILLS = [("write", 2), ("record", 2), ("write", 1), ("manifest", 1)]


def _arm(point: str, nth: int, log: Path | None = None) -> None:
    """In the forked child: SIGKILL this process at the `nth` time it reaches `point`; with `log`, a line per
    window the teacher finished scoring."""
    seen = {"n": 0}

    def hit() -> None:
        seen["n"] += 1
        if seen["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    if point.startswith("score"):  # inside the teacher's pass over a window, or right after it
        from ettin_cli.label.encoders import BiEncoderTeacher

        original_score = BiEncoderTeacher.score

        def score(self, *args, **kwargs):
            if point == "score-during":
                hit()
            scores = original_score(self, *args, **kwargs)
            if log is not None:
                with open(log, "a", encoding="utf-8") as fh:
                    fh.write(f"{len(scores)}\n")
            if point == "score-after":
                hit()
            return scores

        BiEncoderTeacher.score = score
    elif point == "write":
        original_write = shards.ShardWriter.write

        def write(self, table):
            original_write(self, table)
            hit()

        shards.ShardWriter.write = write
    else:
        original_json = shards.write_json_atomic
        suffix = shards.DONE_SUFFIX if point == "record" else shards.MANIFEST_FILE

        def write_json(path, data, *args, **kwargs):
            if point == "manifest" and str(path).endswith(suffix):
                hit()
            original_json(path, data, *args, **kwargs)
            if point == "record" and str(path).endswith(suffix):
                hit()

        shards.write_json_atomic = write_json


def run_forked(args: list[str], kill: tuple[str, int] | None = None, log: Path | None = None) -> int:
    """`ettin -q ARGS` in a forked child (with a fault point armed); returns its exit status (-9: killed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            import torch

            from ettin_cli.cli import main

            torch.set_num_threads(1)  # the same in every run (reference included): the same float sums
            if kill is not None:
                _arm(*kill, log)
            main(["-q", *args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported, then the child exits
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


@pytest.fixture(scope="module")
def inputs(cranfield, cranfield_dir, tmp_path_factory) -> dict[str, Path]:
    # Imported once here (not used: no thread pool is started before a fork), so no forked run imports them again.
    import bm25s  # noqa: F401
    import datasets  # noqa: F401
    import sentence_transformers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import ettin_cli.cli  # noqa: F401
    from ettin_cli.label import encoders, teacher  # noqa: F401

    return write_step_inputs(cranfield, cranfield_dir, tmp_path_factory.mktemp("fault-inputs"))


@pytest.fixture(scope="module")
def reference(inputs, minilm_path, tmp_path_factory) -> Path:
    """Every step once, uninterrupted, with many small shards (select reads this score, mix this select)."""
    out = tmp_path_factory.mktemp("reference")
    for step, args in step_commands(inputs, minilm_path, out, small=True).items():
        assert run_forked(args) == 0, step
    return out


@pytest.mark.parametrize("step", STEPS)
def test_a_step_killed_again_and_again_then_rerun_equals_an_uninterrupted_run(step, inputs, reference, minilm_path,
                                                                             tmp_path):
    args = step_commands(inputs, minilm_path, tmp_path, small=True, scored=reference / "scored",
                         selected=reference / "selected")[step]
    target = tmp_path / OUTPUTS[step]
    for point, nth in KILLS:
        assert run_forked(args, (point, nth)) == -signal.SIGKILL, f"{step}: no {point} #{nth} to kill at"
        records = list(target.rglob(f"*{shards.DONE_SUFFIX}"))
        temps = list(target.rglob(".part-*.tmp"))
        if point == "write":
            assert temps, f"{step}: killed inside a shard, its temp file should be there"
        if point == "record":
            assert records and not temps, f"{step}: killed between shards"
        assert not list(target.rglob(shards.MANIFEST_FILE)) or step == "mix", f"{step}: complete too early"
    assert run_forked(args) == 0
    assert not list(target.rglob("*.tmp"))  # the killed writers' temp files are gone
    assert step_digest(step, tmp_path) == step_digest(step, reference)


def test_score_killed_at_random_points_resumes_inside_the_shard_losing_at_most_one_window(inputs, minilm_path,
                                                                                        tmp_path):
    """#23: rows are committed window by window (row groups) as they are scored, so kill -9 at any point of a
    long shard loses at most the window in flight; the shard still appears whole, equal to an uninterrupted run's."""
    import random

    def args(out: Path) -> list[str]:  # one shard of 40 rows, scored in 10 windows of 4
        return ["score", str(inputs["pairs"]), "--teacher", str(minilm_path), "--device", "cpu", "--limit", "40",
                "--rows-per-shard", "40", "--sort-window", "4", "--output", str(out)]

    assert run_forked(args(tmp_path / "reference")) == 0
    out, log = tmp_path / "scored", tmp_path / "windows.log"
    pieces = shards.ShardedFolder(out).pieces_dir(0)
    rng = random.Random(23)
    kills = 3
    total_scored = 0
    for _ in range(kills):
        before = len(list(pieces.glob("*.parquet")))
        log.write_text("")
        point = (rng.choice(["score-during", "score-after"]), rng.randint(1, 3))
        assert run_forked(args(out), point, log) == -signal.SIGKILL, point
        scored = len(log.read_text().split())  # windows the teacher finished in this run
        committed = len(list(pieces.glob("*.parquet"))) - before
        assert committed == scored - (point[0] == "score-after"), point  # lost: only the window in flight
        assert not (out / ".ettin" / "manifest.json").exists()
        total_scored += scored
    left = 10 - len(list(pieces.glob("*.parquet")))
    log.write_text("")
    assert run_forked(args(out), ("score-during", 99), log) == 0
    assert len(log.read_text().split()) == left  # the rerun scored only the windows not committed
    total_scored += left
    assert total_scored - 10 <= kills  # over all the kills, at most one window of work lost per kill
    assert not pieces.exists()  # removed once the shard is done
    assert folder_digest(out) == folder_digest(tmp_path / "reference")
