"""`ettin score` end to end: shards and manifest, pass-through columns, two-process torchrun equality, job arrays,
OOM splits in the manifest, refusals, and every bad input as a one-line error (kill -9: test_step_faults.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from ettin_cli.core.errors import EttinError

MAX_LENGTH = "256"




def error_line(err: str) -> str:
    """The single `error: ...` line the CLI prints for a user error (log lines may precede it)."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def read_output(directory: Path) -> pa.Table:
    from ettin_cli.io.shards import ShardedFolder

    return pa.concat_tables([pq.read_table(p) for p in ShardedFolder(directory).shards()])


def score_args(input_path, teacher, output, *extra) -> list[str]:
    return ["score", str(input_path), "--teacher", str(teacher), "--output", str(output), "--max-length",
            MAX_LENGTH, *extra]


@pytest.fixture(scope="module")
def teacher(tiny_qwen2_teacher_path):
    from ettin_cli.label.teacher import load_teacher

    return load_teacher(tiny_qwen2_teacher_path, device="cpu", max_length=int(MAX_LENGTH))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cranfield_pairs_parquet, tiny_qwen2_teacher_path):
    """One uninterrupted single-process run (rows_per_shard 20) that the other runs must reproduce exactly."""
    from ettin_cli.label.scoring import ScoreJob, run_score

    out = tmp_path_factory.mktemp("reference")
    result = run_score(ScoreJob(input=str(cranfield_pairs_parquet), output=out, teacher=str(tiny_qwen2_teacher_path),
                                max_length=int(MAX_LENGTH), rows_per_shard=20, device="cpu"))
    assert result.manifest is not None
    return out


def test_score_writes_shards_with_all_columns_and_a_manifest(cranfield_pairs, cranfield_pairs_parquet,
                                                             tiny_qwen2_teacher_path, teacher, tmp_path, capsys):
    out = tmp_path / "scored"
    code, stdout, stderr = run_cli(score_args(cranfield_pairs_parquet, tiny_qwen2_teacher_path, out,
                                              "--rows-per-shard", "50"), capsys)
    assert code == 0, stderr
    n = len(cranfield_pairs)
    starts = list(range(0, n, 50))
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-{i:05d}.parquet" for i in range(len(starts))]
    table = read_output(out)
    assert table.schema.field("score").type == pa.float32()
    assert table.column_names == ["query_id", "query", "doc_id", "document", "label", "score"]
    assert table.drop_columns(["score"]).to_pylist() == cranfield_pairs  # every row once, in input order
    # Scores equal the teacher's on the same pairs, scored independently in one go.
    expected = teacher.score([r["query"] for r in cranfield_pairs], [r["document"] for r in cranfield_pairs])
    np.testing.assert_allclose(table.column("score").to_numpy(), expected, atol=2e-5, rtol=1e-4)

    manifest = json.loads((out / ".ettin" / "manifest.json").read_text())
    from ettin_cli import __version__
    from ettin_cli.core.files import local_model_identity, sha256_file

    assert manifest["tool_version"] == __version__
    assert manifest["format"] == "mxbai-v2" and manifest["dtype"] == "float32" and manifest["max_length"] == 256
    assert manifest["teacher_sha256"] == local_model_identity(tiny_qwen2_teacher_path)
    assert manifest["input"]["files"][0]["name"] == cranfield_pairs_parquet.name
    assert [s["input_rows"] for s in manifest["shards"]] == [[a, min(a + 50, n)] for a in starts]
    assert [s["rows"] for s in manifest["shards"]] == [min(a + 50, n) - a for a in starts]
    for shard in manifest["shards"]:
        assert shard["sha256"] == sha256_file(out / shard["file"])
    totals = manifest["totals"]
    assert totals["rows"] == totals["rows_scored"] == n and totals["skipped_invalid"] == 0
    # Truncation counts match an independent count of pairs that do not fit in 256 tokens.
    _, tq, td = teacher.encode_pairs([r["query"] for r in cranfield_pairs], [r["document"] for r in cranfield_pairs])
    assert totals["truncated_documents"] == int(td.sum()) > 0
    assert totals["truncated_pairs"] == int((tq | td).sum())
    assert 0 <= totals["padding_share"] < 0.1
    assert manifest["throughput"]["pairs_per_second_per_worker"] > 0
    # Progress: rows/s and ETA on stderr; a one-line summary on stdout.
    assert re.search(r"scoring: [\d,]+/[\d,]+, [\d.,]+ pairs/s, ETA", stderr), stderr
    assert f"{n} rows in {len(starts)} shards" in stdout


def test_rerun_skips_finished_shards_and_verify_redoes_a_damaged_one(reference, cranfield_pairs_parquet,
                                                             tiny_qwen2_teacher_path, tmp_path):
    import shutil

    from ettin_cli.label.scoring import ScoreJob, run_score

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    job = ScoreJob(input=str(cranfield_pairs_parquet), output=out, teacher=str(tiny_qwen2_teacher_path),
                   max_length=int(MAX_LENGTH), rows_per_shard=20, device="cpu")
    again = run_score(job)
    assert again.shards_scored == [] and again.rows_scored == 0  # all verified and skipped
    damaged = out / "part-00003.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")  # same size, different bytes
    # A resume checks records and sizes only (no hashing of every finished shard on every rerun) ...
    assert run_score(job).shards_scored == []
    # ... the full SHA-256 pass is asked for with --verify (or ETTIN_VERIFY=1), and finds the damage.
    job.verify = True
    redo = run_score(job)
    assert redo.shards_scored == [3]

    def shards_of(directory):
        manifest = json.loads((directory / ".ettin" / "manifest.json").read_text())
        return [(s["file"], s["rows"], s["sha256"]) for s in manifest["shards"]]

    assert shards_of(out) == shards_of(reference)  # redone shard 3 is byte-identical to the original


def test_two_torchrun_processes_equal_one_process(reference, cranfield_pairs_parquet, tiny_qwen2_teacher_path,
                                                  tmp_path):
    out = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ettin_cli", "-q", *score_args(cranfield_pairs_parquet, tiny_qwen2_teacher_path, out,
                                                "--rows-per-shard", "20", "--device", "cpu")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ours = json.loads((out / ".ettin" / "manifest.json").read_text())
    ref = json.loads((reference / ".ettin" / "manifest.json").read_text())
    assert [(s["file"], s["rows"], s["sha256"]) for s in ours["shards"]] == \
        [(s["file"], s["rows"], s["sha256"]) for s in ref["shards"]]  # byte-identical shards
    assert ours["totals"] == ref["totals"]
    # Both ranks worked, each on its own shards: shard i by rank i % 2.
    assert [(s["rank"], s["world_size"]) for s in ours["shards"]] == [(i % 2, 2) for i in range(len(ours["shards"]))]


def test_job_array_shards_split_the_work(reference, cranfield_pairs_parquet, tiny_qwen2_teacher_path, tmp_path):
    from ettin_cli.label.scoring import ScoreJob, run_score

    out = tmp_path / "array"
    results = []
    for index in (1, 0):
        job = ScoreJob(input=str(cranfield_pairs_parquet), output=out, teacher=str(tiny_qwen2_teacher_path),
                       max_length=int(MAX_LENGTH), rows_per_shard=20, device="cpu", num_shards=2, shard_index=index)
        results.append(run_score(job))
    assert results[0].manifest is None  # worker 1 alone: the manifest waits for worker 0's shards
    assert results[0].shards_scored == [1, 3, 5, 7] and results[1].shards_scored == [0, 2, 4, 6]
    assert results[1].manifest is not None
    ref = json.loads((reference / ".ettin" / "manifest.json").read_text())
    assert [s["sha256"] for s in results[1].manifest["shards"]] == [s["sha256"] for s in ref["shards"]]
    with pytest.raises(EttinError, match="--shard-index must be in"):
        run_score(ScoreJob(input=str(cranfield_pairs_parquet), output=out, teacher=str(tiny_qwen2_teacher_path),
                           num_shards=2, shard_index=2))


def test_oom_splits_are_counted_in_the_manifest(cranfield_pairs_parquet, teacher, tmp_path):
    import torch

    from ettin_cli.label.scoring import ScoreJob, run_score

    real = teacher._forward

    def small_memory(seqs):
        if len(seqs) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(seqs)

    teacher._forward = small_memory
    try:
        result = run_score(ScoreJob(input=str(cranfield_pairs_parquet), output=tmp_path / "oom", teacher=teacher,
                                    rows_per_shard=80, limit=40, batch_size=16))
    finally:
        del teacher._forward
    totals = result.manifest["totals"]
    assert totals["oom_splits"] > 0 and totals["rows"] == 40
    scores = read_output(tmp_path / "oom").column("score").to_numpy()
    table = pq.read_table(cranfield_pairs_parquet).slice(0, 40)
    expected = teacher.score(table.column("query").to_pylist(), table.column("document").to_pylist())
    np.testing.assert_allclose(scores, expected, atol=2e-5, rtol=1e-4)  # nothing dropped, same scores


def test_rerun_with_a_different_teacher_setting_is_refused(cranfield_pairs_parquet, tiny_qwen2_teacher_path,
                                                          minilm_path, tmp_path, capsys):
    out = tmp_path / "scored"
    base = score_args(cranfield_pairs_parquet, tiny_qwen2_teacher_path, out, "--limit", "10")
    assert run_cli(base, capsys)[0] == 0
    manifest = (out / ".ettin" / "manifest.json").read_text()
    args = base.copy()
    args[args.index("--max-length") + 1] = "300"
    code, _, err = run_cli(args, capsys)
    assert code == 2
    line = error_line(err)
    assert "holds a different run (max_length: 256 -> 300)" in line and "--overwrite" in line
    assert (out / ".ettin" / "manifest.json").read_text() == manifest  # untouched
    other = ["score", str(cranfield_pairs_parquet), "--teacher", str(minilm_path), "--output", str(out), "--limit",
             "10"]
    code, _, err = run_cli(other, capsys)
    assert code == 2 and "holds a different run" in error_line(err)
    code, _, err = run_cli([*other, "--overwrite"], capsys)
    assert code == 0, err
    new = json.loads((out / ".ettin" / "manifest.json").read_text())
    assert new["format"] == "bi-encoder" and new["totals"]["rows"] == 10
    scores = read_output(out).column("score").to_numpy()
    assert np.all(np.abs(scores) <= 1.0 + 1e-5)  # cosine similarities now


def test_skip_invalid_and_empty_strings(tmp_path, tiny_qwen2_teacher_path, capsys):
    rows = [{"query": f"wing {i}", "document": f"lift of a wing {i}", "n": i} for i in range(12)]
    rows[2]["query"] = None
    rows[7]["document"] = None
    rows[9] = {"query": "", "document": "", "n": 9}  # empty strings are valid input
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    code, _, err = run_cli(score_args(path, tiny_qwen2_teacher_path, out), capsys)
    assert code == 2
    assert error_line(err) == (f"error: {path}: 2 rows with a null 'query' or 'document' (first input rows, 0-based: "
                           "2, 7); fix them or pass --skip-invalid")
    assert not out.exists()  # nothing written
    code, _, err = run_cli(score_args(path, tiny_qwen2_teacher_path, out, "--skip-invalid", "--rows-per-shard", "5"),
                           capsys)
    assert code == 0, err
    table = read_output(out)
    assert table.column("n").to_pylist() == [0, 1, 3, 4, 5, 6, 8, 9, 10, 11]
    assert np.isfinite(table.column("score").to_numpy()).all()
    totals = json.loads((out / ".ettin" / "manifest.json").read_text())["totals"]
    assert totals["skipped_invalid"] == 2 and totals["first_skipped_rows"] == [2, 7]
    assert totals["input_rows"] == 12 and totals["rows"] == 10


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    ok = tmp_path / "ok.parquet"
    pq.write_table(pa.table({"query": ["a", "b"], "document": ["x", "y"]}), ok)
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"query": [1, 2], "document": ["x", "y"]}), numbers)
    undecodable = tmp_path / "undecodable.jsonl"
    undecodable.write_bytes(b'{"query": "a", "document": "b"}\n{"query": "\xff\xfe", "document": "c"}\n')
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really parquet")
    a_file = tmp_path / "a_file"
    a_file.write_text("I am a file")
    return {
        "missing column": ([str(ok), "--document-column", "passage"],
                           r"ok\.parquet: no column 'passage' \(columns: query, document\)"),
        "non-string values": ([str(numbers)], r"numbers\.parquet: column 'query' holds int64 values, not text"),
        "undecodable text": ([str(undecodable)], r"undecodable\.jsonl: row 1, column 'query': undecodable text"),
        "corrupt file": ([str(corrupt)], r"corrupt\.parquet: not a readable parquet file"),
        "missing input": ([str(tmp_path / "nope.parquet")], r"nope\.parquet: no such file or folder"),
        "unknown teacher": ([str(ok), "--teacher", str(tmp_path / "no-teacher")], r"no-teacher: no such file"),
        "output is a file": ([str(ok), "--output", str(a_file)], r"--output .*a_file: is a file, not a directory"),
        "bad format": ([str(ok), "--teacher-format", "colbert"], r"--teacher-format must be"),
        "bad shard size": ([str(ok), "--rows-per-shard", "0"], r"--rows-per-shard must be >= 1"),
        "score column exists": ([str(ok), "--score-column", "query"], r"already has a column 'query'"),
    }


def test_bad_inputs_are_one_line_errors_with_nothing_written(tmp_path, tiny_qwen2_teacher_path, capsys):
    for name, (args, pattern) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        argv = ["score", *args[:1], "--teacher", str(tiny_qwen2_teacher_path), "--output", str(out), *args[1:]]
        code, stdout, err = run_cli(argv, capsys)
        assert code == 2, (name, err)
        assert re.search(pattern, error_line(err)), (name, err)
        assert not out.exists(), name  # nothing half-written


def test_help_has_examples(capsys):
    code, out, _ = run_cli(["score", "--help"], capsys)
    assert code == 0 and "Examples:" in out and "torchrun" in out


def test_shards_contract(tmp_path):
    from ettin_cli.io import shards

    out = tmp_path / "sharded"
    digest = shards.ShardedFolder(out).prepare({"step": "demo", "k": 1})
    table = pa.table({"x": [1, 2, 3]})
    record = shards.ShardedFolder(out).write(0, table, {"input_rows": [0, 3]})
    assert record["rows"] == 3 and record["config_sha256"] == digest and record["input_rows"] == [0, 3]
    assert shards.ShardedFolder(out).finalize(2) is None  # shard 1 missing: no manifest yet
    with pytest.raises(EttinError, match="unfinished"):
        shards.ShardedFolder(out).shards()
    shards.ShardedFolder(out).write(1, pa.table({"x": [4]}))
    shards.ShardedFolder(out).write(2, pa.table({"x": [5]}))  # left over from a larger earlier run
    manifest = shards.ShardedFolder(out).finalize(2, extra=lambda recs: {"totals": {"sum": len(recs)}})
    assert manifest["totals"] == {"shards": 2, "rows": 4, "sum": 2}
    assert not (out / "part-00002.parquet").exists()
    assert [p.name for p in shards.ShardedFolder(out).shards()] == ["part-00000.parquet", "part-00001.parquet"]
    (out / "part-00001.parquet").write_bytes(b"x" * (out / "part-00001.parquet").stat().st_size)
    assert set(shards.ShardedFolder(out).completed()) == {0, 1}  # same size: a resume trusts record + size ...
    assert set(shards.ShardedFolder(out).completed(verify=True)) == {0}  # ... --verify hashes and redoes it
    assert len(shards.ShardedFolder(out).shards()) == 2
    with pytest.raises(EttinError, match="does not match"):
        shards.ShardedFolder(out).shards(verify=True)
    (out / "part-00001.parquet").write_bytes(b"x")  # another size: caught without hashing
    assert set(shards.ShardedFolder(out).completed()) == {0}
    with pytest.raises(EttinError, match="bytes"):
        shards.ShardedFolder(out).shards()
    with pytest.raises(EttinError, match=r"holds a different run \(k: 1 -> 2\)"):
        shards.ShardedFolder(out).prepare({"step": "demo", "k": 2})
    shards.ShardedFolder(out).prepare({"step": "demo", "k": 2}, overwrite=True)
    assert shards.ShardedFolder(out).completed() == {}  # the old run's records no longer count
    assert not (out / ".ettin" / "manifest.json").exists()
