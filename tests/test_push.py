"""`ettin push` against a stand-in Hub on loopback (tests/hub_server.py).

The CLI runs as a subprocess with `HF_ENDPOINT` pointing at the stand-in server (huggingface_hub reads it at
import time) and Xet switched off, so uploads take the Git LFS path the server implements. The checks: the
files and the single commit, LFS for large files, the model loading back from what reached the "Hub" with the
same scores, the dataset layout loading back through `datasets` from its card's YAML, every validation failure
(exit 2, one line, zero requests), auth and permission errors, retries on transient errors, the dry-run
contacting nothing, and the token appearing in no output and no file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import StandInHub

from ettin_cli.core.errors import EttinError
from ettin_cli.publish import hub, score_folder
from ettin_cli.publish import model_push as models
from ettin_cli.publish import plan as plans

ORG = "ettin-org"
USER = "alice"
# Distinctive, so a leak anywhere is found by a plain substring search.
TOKEN = "hf_PushSecret" + secrets.token_hex(12)
OTHER_TOKEN = "hf_OtherUser" + secrets.token_hex(8)
READONLY_TOKEN = "hf_ReadOnly" + secrets.token_hex(8)
TEACHER = "mixedbread-ai/mxbai-rerank-large-v2"
TELEMETRY = "/api/agent-harnesses"  # huggingface_hub's user-agent registry fetch, unauthenticated


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def hub_server():
    # Small multipart threshold: the tiny model's safetensors (~4 MB) goes through multipart LFS, shards single.
    server = StandInHub(multipart_threshold=1 << 20, multipart_chunk=1 << 20)
    server.start()
    server.add_account(TOKEN, USER, (ORG,))
    server.add_account(OTHER_TOKEN, "mallory")
    server.add_account(READONLY_TOKEN, "reader", (ORG,), can_write=False)
    yield server
    server.stop()


@pytest.fixture
def stand_in(hub_server):
    hub_server.reset()
    return hub_server


def api_requests(server: StandInHub) -> list:
    return [r for r in server.requests if r.path != TELEMETRY]


def run_push(args: list[str], server: StandInHub, workdir: Path, *, token: str | None = TOKEN,
             env: dict[str, str] | None = None, verbose: bool = False) -> subprocess.CompletedProcess:
    """`python -m ettin_cli push ...` in a fresh process aimed at the stand-in Hub."""
    full = dict(os.environ)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        full.pop(key, None)
    full.update({"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(workdir / "hf-home"),
                 "NO_COLOR": "1", "COLUMNS": "200"})
    if token is not None:
        full["HF_TOKEN"] = token
    full.update(env or {})
    cmd = [sys.executable, "-m", "ettin_cli", *(["-v"] if verbose else []), "push", *args]
    return subprocess.run(cmd, cwd=workdir, env=full, capture_output=True, text=True, timeout=240)


def assert_refused(result: subprocess.CompletedProcess, server: StandInHub, *needles: str) -> str:
    """Exit 2, one `error:` line naming the problem, no traceback, and not one request to the Hub."""
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert api_requests(server) == [], [r.path for r in server.requests]
    return errors[0]


def training_record(base_model: str) -> dict:
    """What `ettin train` writes to final/ettin_training.json (inputs to the card, not measured here)."""
    return {
        "size": "17m", "base_model": base_model, "teacher": TEACHER, "parameters": 1_234_567, "max_length": 128,
        "data": [{"source": "cross-encoder/ettin-reranker-v1-data", "kind": "hub", "rows": 4096}],
        "train_rows": 4096,
        "hyperparameters": {"learning_rate": 2.4e-4, "global_batch_size": 1024, "num_train_epochs": 1,
                            "warmup_ratio": 0.03, "seed": 12},
        "evaluation": {"benchmark": "NanoBEIR", "retriever": "bm25", "top_k": 100, "metric": "NDCG@10"},
        "metrics": {"before": {"nfcorpus": 0.1, "mean": 0.1}, "after": {"nfcorpus": 0.3, "mean": 0.3},
                    "best_step": 40},
    }


@pytest.fixture(scope="module")
def trained_model(tiny_student_path, tiny_modernbert_path, tmp_path_factory) -> Path:
    """A student folder laid out like `ettin train`'s OUT/final: model files, ettin_training.json, README.md."""
    import shutil

    from ettin_cli.publish.training_record import TrainingRecord

    out = tmp_path_factory.mktemp("run") / "final"
    shutil.copytree(tiny_student_path, out)
    # As `ettin train` does: the card rendered from the record, the record stored with the card's hash.
    TrainingRecord.from_dict(training_record(str(tiny_modernbert_path))).write_with_card(out)
    # Things a push must leave out: hidden folders and a temp file left by a killed writer.
    (out / ".cache").mkdir()
    (out / ".cache" / "junk.lock").write_text("x")
    (out / ".config.json.abc123.tmp").write_text("{}")
    return out


def copy_model(src: Path, dest: Path, readme: str | None) -> Path:
    import shutil

    shutil.copytree(src, dest)
    if readme is None:
        (dest / "README.md").unlink()
    else:
        (dest / "README.md").write_text(readme)
    return dest


@pytest.fixture(scope="module")
def score_dirs(cranfield_pairs, tiny_qwen2_teacher_path, tmp_path_factory) -> list[Path]:
    """Two real `ettin score` outputs (3 shards and 1 shard) of Cranfield pairs, scored by the tiny teacher."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ettin_cli.label.scoring import ScoreJob, run_score

    root = tmp_path_factory.mktemp("scored")
    half = len(cranfield_pairs) // 2
    dirs = []
    for name, rows, per_shard in (("cranfield-judged", cranfield_pairs[:half], -(-half // 3)),
                                  ("cranfield-random", cranfield_pairs[half:], len(cranfield_pairs))):
        source = root / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), source)
        result = run_score(ScoreJob(input=str(source), output=root / name, teacher=str(tiny_qwen2_teacher_path),
                                    max_length=256, rows_per_shard=per_shard, device="cpu"))
        assert result.manifest is not None
        dirs.append(root / name)
    assert [len(list(d.glob("part-*.parquet"))) for d in dirs] == [3, 1]
    return dirs


def parse_dry_run(stdout: str) -> tuple[dict[str, int], int, int, str]:
    """(path -> bytes, total files, total bytes, card) from the dry-run report."""
    sizes = {}
    for line in stdout.splitlines():
        m = re.match(r"^(\S+)\s+([\d,]+)\s+[\d.]+ (?:B|KiB|MiB|GiB)\b", line)
        if m:
            sizes[m.group(1)] = int(m.group(2).replace(",", ""))
    total = re.search(r"^total: (\d+) files, ([\d,]+) bytes", stdout, flags=re.M)
    card = stdout.split("-----\n", 1)[1].rsplit("\n----- end of README.md -----", 1)[0] + "\n"
    return sizes, int(total.group(1)), int(total.group(2).replace(",", "")), card


def visible_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def assert_no_token_anywhere(token: str, texts: list[str], roots: list[Path], server: StandInHub) -> None:
    for text in texts:
        assert token not in text
    needle = token.encode()
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), path
    for blob in server.stored_bytes():
        assert needle not in blob


# ------------------------------------------------------------------------------------------- model pushes
def test_model_dry_run_lists_exactly_what_the_push_then_commits(trained_model, stand_in, tmp_path,
                                                                cranfield_pairs):
    """Dry run, then the same push for real: one commit on a new branch of a new private repo, holding exactly
    the files the dry run listed, the card regenerated (--replace-card), a model that scores like the local one,
    and the token nowhere."""
    from sentence_transformers import CrossEncoder

    from ettin_cli.publish.model_card import render_model_card

    folder = copy_model(trained_model, tmp_path / "final", "# My own card\n\nHand-written.\n")
    repo = f"{ORG}/ettin-reranker-17m-v1"
    args = [str(folder), "--repo-id", repo, "--replace-card", "--revision", "v1.1", "--private",
            "-m", "Release candidate"]

    dry = run_push([*args, "--dry-run"], stand_in, tmp_path, token=None)
    assert dry.returncode == 0, dry.stderr
    assert "no Hugging Face token" in dry.stderr  # said, but a dry run goes on
    assert stand_in.requests == []  # contacted nothing
    sizes, n_files, total, card = parse_dry_run(dry.stdout)
    local = visible_files(folder)
    assert set(sizes) == set(local)
    assert all(sizes[p] == len(content) for p, content in local.items() if p != "README.md")
    assert n_files == len(local) and total == sum(sizes.values())
    info = json.loads((folder / models.TRAINING_RECORD).read_text())
    assert card == render_model_card({**info, "model_id": repo})

    refused = run_push(args, stand_in, tmp_path, token=None)  # no HF_TOKEN, no stored login, no --token
    assert_refused(refused, stand_in, "no Hugging Face token")

    result = run_push([*args, "--token", TOKEN], stand_in, tmp_path, token=None, verbose=True)
    assert result.returncode == 0, result.stderr
    assert "in one commit" in result.stdout
    assert stand_in.repo(repo).private
    assert [c.summary for c in stand_in.commits_to(repo, branch="main")] == ["initial commit"]
    (commit,) = [c for c in stand_in.commits_to(repo) if c.branch == "v1.1"]
    assert commit.summary == "Release candidate"
    pushed = stand_in.files(repo, branch="v1.1")
    assert set(commit.files) == set(sizes)  # the commit holds exactly the listed files...
    assert {p: len(c) for p, c in pushed.items() if p != ".gitattributes"} == sizes  # ...at the listed sizes
    for path, content in local.items():
        if path != "README.md":
            assert pushed[path] == content, path
    assert pushed["README.md"].decode() == card
    assert ".cache/junk.lock" not in pushed and not any(p.endswith(".tmp") for p in pushed)

    records = stand_in.file_records(repo, branch="v1.1")
    assert records["model.safetensors"].lfs and not records["config.json"].lfs
    assert any("/part/" in r.path for r in stand_in.requests), "the 4 MB weights should go multipart"
    # The Hub API saw the token (as alice's); the presigned storage URLs did not get it.
    assert {r.user for r in api_requests(stand_in) if not r.path.startswith("/lfs-upload/")} == {USER}
    assert {r.user for r in api_requests(stand_in) if r.path.startswith("/lfs-upload/")} == {None}

    # What reached the Hub is a working model: same scores as the local folder on real pairs.
    clone = stand_in.materialize(repo, tmp_path / "clone", branch="v1.1")
    pairs = [(r["query"], r["document"]) for r in cranfield_pairs[:16]]
    local_scores = CrossEncoder(str(folder), device="cpu").predict(pairs)
    remote_scores = CrossEncoder(str(clone), device="cpu").predict(pairs)
    assert local_scores == pytest.approx(remote_scores, abs=1e-6)

    outputs = [dry.stdout, dry.stderr, refused.stdout, refused.stderr, result.stdout, result.stderr]
    assert_no_token_anywhere(TOKEN, outputs, [tmp_path, folder], stand_in)


def test_which_card_a_model_push_sends(trained_model, tmp_path):
    from ettin_cli.publish.model_card import render_model_card

    repo = f"{ORG}/m"
    info = json.loads((trained_model / models.TRAINING_RECORD).read_text())
    generated = render_model_card({**info, "model_id": repo})
    # The untouched card `ettin train` wrote (it names a local path) is refreshed with the repo id.
    plan = models.plan_model_push(trained_model, repo, check=False)
    assert plan.card == generated and "repo id filled in" in plan.card_note
    # An edited card is the user's: kept byte for byte, unless --replace-card.
    edited = copy_model(trained_model, tmp_path / "edited", "# Mine\n")
    assert models.plan_model_push(edited, repo, check=False).card == "# Mine\n"
    assert models.plan_model_push(edited, repo, replace_card=True, check=False).card == generated
    # A record the renderer refuses (no base_model) does not block pushing a folder's own card...
    (edited / models.TRAINING_RECORD).write_text(json.dumps({"size": "17m"}))
    assert models.plan_model_push(edited, repo, check=False).card == "# Mine\n"
    # ...but cannot make a new one.
    with pytest.raises(EttinError, match="ettin_training.json: model card: the training record has no"):
        models.plan_model_push(edited, repo, replace_card=True, check=False)
    # No card at all: generated.
    bare = copy_model(trained_model, tmp_path / "bare", None)
    plan = models.plan_model_push(bare, repo, check=False)
    assert plan.card == generated and plan.card_note == "generated from ettin_training.json"
    readme = [f for f in plan.files if f.path_in_repo == "README.md"]
    assert len(readme) == 1 and readme[0].content == generated.encode()


def test_a_model_that_does_not_load_is_refused(trained_model, tmp_path, monkeypatch, capsys):
    from ettin_cli.cli import main

    folder = copy_model(trained_model, tmp_path / "final", "# card\n")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a truncated copy
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as in a real session: online

    def no_network(*args, **kwargs):
        raise AssertionError("validation must refuse the model before any network step")

    monkeypatch.setattr(hub, "push", no_network)
    for key in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(key, os.environ.get(key, "1"))  # console.setup sets them; restore after the test
    with pytest.raises(SystemExit) as exit_info:
        main(["push", str(folder), "--repo-id", f"{ORG}/broken"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert str(folder) in errors[0] and "does not load as a sentence-transformers CrossEncoder" in errors[0]
    assert TOKEN not in err


def test_model_plan_needs_a_training_record_for_its_card(trained_model, tmp_path):
    folder = copy_model(trained_model, tmp_path / "final", None)
    (folder / models.TRAINING_RECORD).unlink()
    with pytest.raises(EttinError, match="ettin_training.json: not found"):
        models.plan_model_push(folder, f"{ORG}/x", check=False)
    (folder / models.TRAINING_RECORD).write_text("{not json")
    with pytest.raises(EttinError, match="not valid JSON"):
        models.plan_model_push(folder, f"{ORG}/x", check=False)
    (folder / models.TRAINING_RECORD).unlink()
    (folder / "README.md").write_text("---\nlicense: [unclosed\n---\n# card\n")
    with pytest.raises(EttinError, match="invalid YAML front matter"):
        models.plan_model_push(folder, f"{ORG}/x", check=False)


def test_check_model_scores_one_finite_value(trained_model, tmp_path):
    assert models.check_model(trained_model) > 0
    with pytest.raises(EttinError, match="does not load"):
        models.check_model(tmp_path)  # an empty folder


# ------------------------------------------------------------------------------------------- dataset pushes
def release_files(name: str, folder: Path, split: str = "train") -> list[str]:
    """The paths in the repo that a push of one `ettin score` folder makes (the released data's layout)."""
    n = len(json.loads((folder / ".ettin" / "manifest.json").read_text())["shards"])
    return [f"{name}/{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)] + [
        f"provenance/{name}/{split}.manifest.json"]


def test_dataset_push_layout_card_and_load_back(score_dirs, stand_in, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    repo = f"{ORG}/ettin-reranker-v1-data"
    result = run_push([*map(str, score_dirs), "--repo-id", repo, "--repo-type", "dataset"], stand_in, tmp_path)
    assert result.returncode == 0, result.stderr
    commits = stand_in.commits_to(repo, "dataset")
    assert len(commits) == 2 and commits[0].summary == "initial commit"
    files = stand_in.file_records(repo, "dataset")
    expected = {".gitattributes", "README.md"}
    for folder in score_dirs:
        expected |= set(release_files(folder.name, folder))
        assert files[f"provenance/{folder.name}/train.manifest.json"].content == (
            folder / ".ettin" / "manifest.json").read_bytes()
    assert set(files) == expected
    assert all(r.lfs for p, r in files.items() if p.endswith(".parquet"))

    card = files["README.md"].content.decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "apache-2.0"
    assert meta["configs"] == [{"config_name": d.name, "data_files": [{"split": "train",
                                                                        "path": f"{d.name}/train-*.parquet"}]}
                               for d in score_dirs]
    teachers = {json.loads((d / ".ettin" / "manifest.json").read_text())["teacher"] for d in score_dirs}
    assert len(teachers) == 1 and f"`{teachers.pop()}`" in card
    for folder in score_dirs:
        rows = sum(pq.read_metadata(p).num_rows for p in folder.glob("part-*.parquet"))
        assert f"| `{folder.name}` | train | {rows:,} |" in card

    # The card's YAML is what `datasets` reads: each config loads its own rows, in order, as released:
    # query, document and label (float32) = the teacher's score.
    clone = stand_in.materialize(repo, tmp_path / "clone", "dataset")
    for folder in score_dirs:
        loaded = datasets.load_dataset(str(clone), folder.name, split="train", cache_dir=str(tmp_path / "cache"))
        local = pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))])
        assert loaded.column_names == ["query", "document", "label"]
        assert loaded.features["label"].dtype == "float32"
        assert loaded["query"] == local.column("query").to_pylist()
        assert loaded["document"] == local.column("document").to_pylist()
        assert loaded["label"] == local.column("score").cast(pa.float32()).to_pylist()
    assert_no_token_anywhere(TOKEN, [result.stdout, result.stderr], [tmp_path], stand_in)


def test_pushing_the_same_data_twice_makes_no_second_commit(score_dirs, stand_in, tmp_path):
    args = [str(score_dirs[1]), "--repo-id", f"{ORG}/same", "--repo-type", "dataset"]
    assert run_push(args, stand_in, tmp_path).returncode == 0
    before = len(stand_in.commits)
    uploads = sum(r.method == "PUT" for r in stand_in.requests)
    again = run_push(args, stand_in, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing to commit" in again.stdout
    assert len(stand_in.commits) == before
    assert sum(r.method == "PUT" for r in stand_in.requests) == uploads  # no byte sent twice


def test_dataset_dry_run_lists_every_file_and_contacts_nothing(score_dirs, stand_in, tmp_path):
    result = run_push([f"judged={score_dirs[0]}", str(score_dirs[1]), "--repo-id", f"{ORG}/d", "--repo-type",
                       "dataset", "--dry-run"], stand_in, tmp_path)
    assert result.returncode == 0, result.stderr
    sizes, n_files, total, card = parse_dry_run(result.stdout)
    expected = {}
    for name, folder in (("judged", score_dirs[0]), (score_dirs[1].name, score_dirs[1])):
        for path in release_files(name, folder):
            local = (folder / ".ettin" / "manifest.json" if path.startswith("provenance/")
                     else folder / ".ettin" / "release" / name / path.split("/", 1)[1])
            expected[path] = local.stat().st_size
    expected["README.md"] = len(card.encode())
    assert sizes == expected
    assert n_files == len(expected) and total == sum(expected.values())
    assert "config_name: judged" in card
    assert stand_in.requests == []


# ------------------------------------------------------------------------------------------- refusals
@pytest.fixture
def tampered(score_dirs, tmp_path) -> Path:
    import shutil

    folder = tmp_path / "tampered"
    shutil.copytree(score_dirs[0], folder)
    shard = folder / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))
    return folder


@pytest.mark.parametrize("case", ["bad-repo-id", "no-token", "checksum", "no-manifest", "duplicate-config",
                                  "offline", "two-model-dirs", "bad-revision"])
def test_validation_failures_upload_nothing(case, score_dirs, tampered, stand_in, tmp_path):
    data = [str(score_dirs[0]), "--repo-type", "dataset"]
    token, env, needles = TOKEN, None, []
    if case == "bad-repo-id":
        args, needles = [*data, "--repo-id", "no-namespace"], ["--repo-id 'no-namespace'", "ORG/NAME"]
    elif case == "no-token":
        args, token, needles = [*data, "--repo-id", f"{ORG}/d"], None, ["no Hugging Face token", "HF_TOKEN"]
    elif case == "checksum":
        args = [str(tampered), "--repo-type", "dataset", "--repo-id", f"{ORG}/d"]
        needles = [str(tampered / "part-00001.parquet"), "does not match"]
    elif case == "no-manifest":
        (tampered / ".ettin" / "manifest.json").unlink()
        args = [str(tampered), "--repo-type", "dataset", "--repo-id", f"{ORG}/d"]
        needles = [str(tampered / ".ettin" / "manifest.json"), "not found"]
    elif case == "duplicate-config":
        args = [*data, f"{score_dirs[0].name}={score_dirs[1]}", "--repo-id", f"{ORG}/d"]
        needles = [f"config name '{score_dirs[0].name}' is already used"]
    elif case == "offline":
        args, env, needles = [*data, "--repo-id", f"{ORG}/d"], {"HF_HUB_OFFLINE": "1"}, ["HF_HUB_OFFLINE"]
    elif case == "two-model-dirs":
        args = [str(score_dirs[0]), str(score_dirs[1]), "--repo-id", f"{ORG}/m"]
        needles = ["one MODEL_DIR, got 2 paths"]
    else:
        args, needles = [*data, "--repo-id", f"{ORG}/d", "--revision", "a..b"], ["--revision 'a..b'"]
    result = run_push(args, stand_in, tmp_path, token=token, env=env)
    assert_refused(result, stand_in, *needles)
    assert TOKEN not in result.stderr + result.stdout


@pytest.mark.parametrize("repo_id", ["org/name", "Org-1/ettin.reranker_17m-v1"])
def test_valid_repo_ids(repo_id):
    assert plans.validate_repo_id(repo_id) == repo_id


@pytest.mark.parametrize("repo_id", ["name", "a/b/c", "org/na me", "org/--x", "org/a..b", "org/x.git", "/x", "org/",
                                     "org/" + "n" * 97, ""])
def test_invalid_repo_ids(repo_id):
    with pytest.raises(EttinError, match="not a valid Hub repo id"):
        plans.validate_repo_id(repo_id)


def test_score_dir_checks(score_dirs, tmp_path):
    import shutil

    import pyarrow as pa

    from ettin_cli.io import shards

    manifest = json.loads((score_dirs[0] / ".ettin" / "manifest.json").read_text())
    checked = score_folder.verify_score_dir(score_dirs[0])
    assert checked.config == score_dirs[0].name and len(checked.shards) == 3
    assert checked.teacher == manifest["teacher"] and checked.rows == manifest["totals"]["rows"]

    missing = tmp_path / "missing"
    shutil.copytree(score_dirs[0], missing)
    (missing / "part-00002.parquet").unlink()
    with pytest.raises(EttinError, match="part-00002.parquet: listed in .* but missing"):
        score_folder.verify_score_dir(missing)
    with pytest.raises(EttinError, match="not a usable config name"):
        score_folder.verify_score_dir(f"bad name={score_dirs[0]}")

    unscored = tmp_path / "unscored"
    shards.ShardedFolder(unscored).prepare({"teacher": TEACHER})
    shards.ShardedFolder(unscored).write(0, pa.table({"query": ["q"], "document": ["d"]}))
    shards.ShardedFolder(unscored).finalize(1)
    with pytest.raises(EttinError, match="no 'score' column"):
        score_folder.verify_score_dir(unscored)


# ------------------------------------------------------------------------------------------- Hub errors
@pytest.mark.parametrize(("token", "needle"), [
    ("hf_NotAKnownToken" + secrets.token_hex(6), "rejected the token (HTTP 401)"),
    (OTHER_TOKEN, "permission denied (HTTP 403)"),
    (READONLY_TOKEN, "permission denied (HTTP 403)"),
])
def test_auth_and_permission_errors_are_one_clear_line(token, needle, score_dirs, stand_in, tmp_path):
    result = run_push([str(score_dirs[1]), "--repo-id", f"{ORG}/d", "--repo-type", "dataset"], stand_in,
                      tmp_path, token=token)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in result.stderr
    assert stand_in.commits == []
    assert token not in result.stdout + result.stderr


def test_transient_errors_are_retried_and_still_give_one_commit(score_dirs, stand_in, tmp_path):
    repo = f"{ORG}/flaky"
    stand_in.fail("POST", r"^/api/repos/create$", status=500)
    stand_in.fail("POST", r"/commit/main$", status=503)
    result = run_push([str(score_dirs[1]), "--repo-id", repo, "--repo-type", "dataset"], stand_in, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "creating the repo: HTTP 500, retrying" in result.stderr
    assert "committing: HTTP 503, retrying" in result.stderr
    assert len(stand_in.commits_to(repo, "dataset")) == 2  # the repo's initial commit + ours, once


def test_a_hub_that_keeps_failing_leaves_no_commit(score_dirs, stand_in, tmp_path):
    repo = f"{ORG}/down"
    stand_in.fail("POST", r"/commit/main$", status=503, times=10)
    result = run_push([str(score_dirs[1]), "--repo-id", repo, "--repo-type", "dataset", "--retries", "1"],
                      stand_in, tmp_path)
    assert result.returncode == 2
    assert "kept failing (HTTP 503, 2 attempts) while committing; no partial commit" in result.stderr
    assert [c.summary for c in stand_in.commits_to(repo, "dataset")] == ["initial commit"]


def test_private_push_to_an_existing_public_repo_is_refused(score_dirs, stand_in, tmp_path):
    repo = f"{ORG}/public"
    assert run_push([str(score_dirs[1]), "--repo-id", repo, "--repo-type", "dataset"], stand_in,
                    tmp_path).returncode == 0
    before = len(stand_in.commits)
    result = run_push([str(score_dirs[0]), "--repo-id", repo, "--repo-type", "dataset", "--private"], stand_in,
                      tmp_path)
    assert result.returncode == 2 and "already exists and is public" in result.stderr
    assert len(stand_in.commits) == before


def test_stored_login_is_used_when_no_token_is_given(score_dirs, stand_in, tmp_path):
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text(TOKEN)  # what `hf auth login` stores
    result = run_push([str(score_dirs[1]), "--repo-id", f"{USER}/mine", "--repo-type", "dataset"], stand_in,
                      tmp_path, token=None)
    assert result.returncode == 0, result.stderr
    assert stand_in.repo(f"{USER}/mine", "dataset").owner == USER
    assert TOKEN not in result.stdout + result.stderr


class _HTTPFailure(Exception):
    def __init__(self, status: int, text: str = ""):
        super().__init__(text or f"HTTP {status}")
        self.response = type("Response", (), {"status_code": status})()


def test_retry_policy_and_token_scrubbing():
    plan = plans.UploadPlan(f"{ORG}/x", "model", [], "", "", "m")
    pusher = hub._Pusher(plan, TOKEN, "http://hub", retries=3, backoff=0.0)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _HTTPFailure(502)
        return "ok"

    assert pusher.call("uploading", flaky) == "ok" and len(calls) == 3

    def forbidden():
        calls.append(1)
        raise _HTTPFailure(403, f"bad token {TOKEN}")

    calls.clear()
    with pytest.raises(EttinError, match="permission denied") as err:
        pusher.call("committing", forbidden)
    assert len(calls) == 1  # a permission error is not retried

    def odd():
        raise _HTTPFailure(422, f"server echoed {TOKEN}")

    with pytest.raises(EttinError) as err:
        pusher.call("committing", odd)
    assert TOKEN not in str(err.value) and "***" in str(err.value)
