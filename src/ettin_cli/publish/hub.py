"""Publishing to the Hugging Face Hub: a trained model folder, or `ettin score` outputs as a dataset.

Everything that can be checked locally is checked before the first network call, so a bad push fails in
seconds with one line and nothing uploaded: the repo id's shape, a token being available, the model loading
as a `CrossEncoder` and scoring a smoke pair, every data shard matching its manifest checksum and row count.
The result of that validation is an `UploadPlan` (paths in the repo, sizes, the card), which is what
`--dry-run` prints and what `push` sends.

A push is one commit (`HfApi.create_commit`): large files first go through huggingface_hub's normal
large-file path (Xet when `hf_xet` is installed, else Git LFS) in batches that drive the progress bar, and
only the final commit makes them visible, so a failure never leaves a half-updated repo. Each network step is
retried with exponential backoff on transient errors (5xx, 408, 429, dropped connections); a rerun after a
failure re-sends only what the Hub does not already hold. Auth and permission errors become one clear line.

The token is handed to `HfApi` and nothing else: it is never logged, printed or written, and every error
message is scrubbed of it before it reaches the user.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ettin_cli import __version__
from ettin_cli.core.console import logger, progress
from ettin_cli.core.errors import EttinError

REPO_TYPES = ("model", "dataset")
DEFAULT_LICENSE = "apache-2.0"
TRAINING_RECORD = "ettin_training.json"
TRAINING_ARGS = "training_args.bin"
CARD_NAME = "README.md"
SMOKE_PAIR = ("what does a reranker do?", "A reranker scores each query and document pair for relevance.")
# Statuses worth another try: the Hub or its storage was briefly unavailable or rate-limited us.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
UPLOAD_BATCH_FILES = 64
UPLOAD_BATCH_BYTES = 512 * 1024 * 1024

_CONFIG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")

T = TypeVar("T")


# ------------------------------------------------------------------------------------------- small checks
def validate_repo_id(repo_id: str) -> str:
    """`ORG/NAME` as the Hub accepts it (huggingface_hub's own validator); anything else is a one-line error
    before any network call. A bare NAME is refused too: a push must say which namespace it writes to."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate

    repo_id = (repo_id or "").strip()
    problem = None
    if repo_id.count("/") != 1:
        problem = "expected ORG/NAME (letters, digits, '-', '_', '.'; one '/')"
    else:
        try:
            hub_validate(repo_id)
        except HFValidationError as exc:
            problem = str(exc).splitlines()[0].rstrip(".")
    if problem:
        raise EttinError(f"--repo-id '{repo_id}': not a valid Hub repo id ({problem})")
    return repo_id


def validate_revision(revision: str | None) -> str:
    """A branch name the Hub accepts (the branch is created from main when it does not exist)."""
    if revision is None or revision == "":
        return "main"
    if (not _BRANCH.match(revision) or ".." in revision or revision.endswith(("/", ".lock"))
            or "//" in revision or revision.startswith("refs/")):
        raise EttinError(f"--revision '{revision}': not a valid branch name")
    return revision


def resolve_token(explicit: str | None = None) -> str:
    """The token to push with: `--token`, else `HF_TOKEN`, else huggingface_hub's stored login.

    Only its presence is checked here (locally); whether the Hub accepts it is known at the first call.
    """
    if explicit is not None and explicit.strip():
        return explicit.strip()
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception as exc:  # e.g. a failed OIDC exchange: say so without echoing anything secret
        raise EttinError(f"could not read the Hugging Face token ({type(exc).__name__})") from None
    if not token:
        raise EttinError("no Hugging Face token: set HF_TOKEN, pass --token, or run `hf auth login` "
                         "(the token needs write access to the repo's namespace)")
    return token


def check_online() -> None:
    """Refuse early when huggingface_hub is in offline mode (it would fail at the first request)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise EttinError("HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: unset it to push to the Hub")


def human_size(n: int) -> str:
    """`35212345` -> `33.6 MiB`."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _kib(n: int) -> int:
    """Progress counts whole kB; every file counts at least 1 so small files still move the bar."""
    return max(1, math.ceil(n / 1024))


def _card_metadata(card: str, what: str) -> dict[str, Any]:
    """The YAML front matter of a card, which the Hub validates: a bad one is refused before uploading."""
    from ettin_cli.core.recipes import parse_yaml_mapping

    match = re.match(r"^---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", card, flags=re.S)
    if match is None:
        return {}
    return parse_yaml_mapping(match.group(1), what, first_line=2, what="YAML front matter")


# ------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class PlannedFile:
    """One file of the commit: a local file (`source`) or generated bytes (`content`, the cards)."""

    path_in_repo: str
    size: int
    source: Path | None = None
    content: bytes | None = None
    note: str = ""


@dataclass
class UploadPlan:
    """What one push sends: every file with its size, and the card; printed by `--dry-run`."""

    repo_id: str
    repo_type: str
    files: list[PlannedFile]
    card: str
    card_note: str
    commit_message: str
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def describe(self, revision: str = "main", private: bool = False) -> str:
        """The dry-run report: target, each path with its exact size, the total, then the card."""
        width = max(len(f.path_in_repo) for f in self.files)
        lines = [f"dry run: nothing is contacted or uploaded. A push would make one commit to the "
                 f"{self.repo_type} repo {self.repo_id} (branch {revision}"
                 f"{', created private if new' if private else ''}): \"{self.commit_message}\"", ""]
        lines.append(f"{'path in repo':<{width}}  {'bytes':>15}  {'size':>10}")
        for f in self.files:
            note = f"  ({f.note})" if f.note else ""
            lines.append(f"{f.path_in_repo:<{width}}  {f.size:>15,d}  {human_size(f.size):>10}{note}")
        lines.append("")
        lines.append(f"total: {len(self.files)} files, {self.total_bytes:,d} bytes ({human_size(self.total_bytes)})")
        lines.append("")
        lines.append(f"----- {CARD_NAME} ({self.card_note}) -----")
        lines.append(self.card.rstrip("\n"))
        lines.append(f"----- end of {CARD_NAME} -----")
        return "\n".join(lines) + "\n"


def _local_files(folder: Path) -> list[Path]:
    """Every regular file under `folder`, sorted, without hidden files/folders (.git, .cache, temp files)."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_file():
            out.append(path)
    return out


# ------------------------------------------------------------------------------------------- models
def check_model(model_dir: Path) -> int:
    """Load `model_dir` as a CrossEncoder (local files only) and score a smoke pair; return its parameter count.

    The published models are single-score rerankers, so the smoke pair must give exactly one finite score.
    """
    import numpy as np

    try:
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(model_dir), device="cpu", local_files_only=True)
        scores = np.asarray(model.predict([SMOKE_PAIR], show_progress_bar=False, convert_to_numpy=True))
    except EttinError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise EttinError(f"{model_dir}: does not load as a sentence-transformers CrossEncoder ({reason[:300]})") \
            from None
    if scores.size != 1:
        raise EttinError(f"{model_dir}: a reranker must give one score per pair, the smoke pair gave shape "
                         f"{tuple(scores.shape)}")
    if not np.isfinite(scores).all():
        raise EttinError(f"{model_dir}: the smoke pair scored {float(scores.reshape(-1)[0])} (not finite)")
    return int(sum(p.numel() for p in model.parameters()))


def read_training_record(model_dir: Path) -> dict[str, Any] | None:
    """`MODEL_DIR/ettin_training.json` (written by `ettin train`), or None when the folder has none."""
    path = model_dir / TRAINING_RECORD
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EttinError(f"{path}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(info, dict):
        raise EttinError(f"{path}: expected a JSON object")
    return info


def _same_lines(a: bytes, b: bytes | None) -> bool:
    return b is not None and sorted(a.decode("utf-8", "replace").splitlines()) == sorted(
        b.decode("utf-8", "replace").splitlines())


def _render_card(info: dict[str, Any], repo_id: str | None, folder: Path) -> bytes:
    from ettin_cli.publish.model_card import render_model_card

    record = dict(info)
    if repo_id is not None:
        record["model_id"] = repo_id
    try:
        return render_model_card(record).encode("utf-8")
    except EttinError as exc:
        raise EttinError(f"{folder / TRAINING_RECORD}: {exc}") from None


def plan_model_push(model_dir: str | Path, repo_id: str, *, replace_card: bool = False,
                    commit_message: str | None = None, check: bool = True,
                    include_training_args: bool = False) -> UploadPlan:
    """Validate a trained model folder and list what its push uploads.

    The folder's own README.md is the card unless `replace_card`; without one (or with `replace_card`) the card
    is rendered from `ettin_training.json` by `model_card.render_model_card`, with `model_id` set to the repo id
    so the usage snippet names the published model.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise EttinError(f"{folder}: not a directory (expected a trained model folder, e.g. OUT/final)")
    repo_id = validate_repo_id(repo_id)
    files = _local_files(folder)
    if not files:
        raise EttinError(f"{folder}: the folder is empty")
    info = read_training_record(folder)

    existing = folder / CARD_NAME
    own_card = existing.read_bytes() if existing.is_file() else None
    generated_here = None
    if own_card is not None and info is not None and not replace_card:
        # `ettin train` writes the card before the repo id is known (its usage snippet names a local path);
        # an untouched copy of it is refreshed with the repo id, an edited one is the user's and is kept.
        # Lines are compared as a multiset: the record is stored key-sorted, so tables may come out reordered.
        with contextlib.suppress(EttinError):  # a record the renderer refuses cannot have made this card
            generated_here = _render_card(info, None, folder)
    if own_card is not None and not replace_card and not _same_lines(own_card, generated_here):
        try:
            card = own_card.decode("utf-8")
        except UnicodeDecodeError:
            raise EttinError(f"{existing}: not valid UTF-8 text") from None
        note = "the folder's own card, kept (use --replace-card to regenerate it)"
    else:
        if info is None:
            raise EttinError(f"{folder / TRAINING_RECORD}: not found; it is needed to write the model card "
                             "(push the output of `ettin train`, or put a README.md in the folder)")
        card = _render_card(info, repo_id, folder).decode("utf-8")
        if own_card is None:
            note = "generated from ettin_training.json"
        elif replace_card:
            note = "regenerated from ettin_training.json, replacing the folder's README.md"
        else:
            note = "the card `ettin train` wrote, with the repo id filled in"
    card_bytes = card.encode("utf-8")
    _card_metadata(card, str(existing))
    # The model check comes last: it is the slow one (imports torch, loads the weights).
    parameters = None
    if check:
        parameters = check_model(folder)
        logger.info(f"{folder}: loads as a CrossEncoder ({parameters:,} parameters) and scores a smoke pair")

    # training_args.bin is a pickle of the trainer's arguments (local paths, the run's settings): useless to
    # users of the model and unsafe to unpickle, so it stays home unless asked for.
    skipped = [p for p in files if p.name == TRAINING_ARGS and not include_training_args]
    if skipped:
        logger.info(f"{folder}: not uploading {TRAINING_ARGS} (pass --include-training-args to upload it)")
    planned = [PlannedFile(p.relative_to(folder).as_posix(), p.stat().st_size, source=p)
               for p in files if p != existing and p not in skipped]
    planned.append(PlannedFile(CARD_NAME, len(card_bytes), content=card_bytes, note=note))
    planned.sort(key=lambda f: f.path_in_repo)
    size = (info or {}).get("size")
    message = commit_message or (f"Upload Ettin reranker {size} with ettin-cli {__version__}" if size
                                 else f"Upload reranker with ettin-cli {__version__}")
    facts = {"model_dir": str(folder), "parameters": parameters, "size": size}
    return UploadPlan(repo_id, "model", planned, card, note, message, facts)


# ------------------------------------------------------------------------------------------- datasets
@dataclass
class ScoreDir:
    """One verified `ettin score` output directory: its shards (in order), manifest and facts."""

    config: str
    path: Path
    shards: list[Path]
    manifest: dict[str, Any]
    rows: int
    columns: list[str]
    teacher: str | None
    sizes: list[int] = field(default_factory=list)


def _split_config(spec: str | Path) -> tuple[str, Path]:
    """`DIR` -> (DIR's name, DIR); `NAME=DIR` names the config explicitly."""
    text = str(spec)
    if "=" in text and not Path(text).exists():
        name, _, path = text.partition("=")
        return name.strip(), Path(path)
    path = Path(text)
    return path.resolve().name, path


def _teacher_of(*records: Any, depth: int = 0) -> str | None:
    """The teacher a manifest (or run config) names: the first `teacher` key holding a string, or a mapping
    with `teacher`/`model`/`name` inside, searched breadth-first a few levels deep."""
    nested: list[Any] = []
    for record in records:
        if not isinstance(record, dict):
            continue
        value = record.get("teacher")
        if isinstance(value, dict):
            value = value.get("teacher") or value.get("model") or value.get("name")
        if isinstance(value, str) and value:
            return value
        nested.extend(v for v in record.values() if isinstance(v, dict))
    return _teacher_of(*nested, depth=depth + 1) if nested and depth < 3 else None


def verify_score_dir(spec: str | Path) -> ScoreDir:
    """Check an `ettin score` output against its manifest: every shard present, size, sha256 and rows equal.

    The one sharded-folder reader (`shards.ShardedFolder.shards`) does the checks, here with the full SHA-256
    pass (a push is where the bytes must be exactly those scored), shard by shard under a progress bar since a
    full dataset is many GB; each shard's row count comes from its parquet footer. All shards must share one
    schema with a `score` column, or the subset would not load as one config.
    """
    import pyarrow.parquet as pq

    from ettin_cli.io import shards as sharding

    config, folder = _split_config(spec)
    if not _CONFIG.match(config):
        raise EttinError(f"{spec}: '{config}' is not a usable config name (letters, digits, '-', '_', '.'); "
                         "name it explicitly with NAME=DIR")
    if not folder.is_dir():
        raise EttinError(f"{folder}: not a directory (expected an `ettin score` output directory)")
    output = sharding.ShardedFolder(folder)
    manifest_path = sharding.manifest_path(folder)
    if not manifest_path.is_file():
        raise EttinError(f"{manifest_path}: not found (is the `ettin score` run finished? its manifest is "
                         "written once every shard is done)")
    manifest = output.manifest()
    entries = manifest.get("shards") or []
    total_kb = sum(_kib(int(e.get("bytes") or 0)) for e in entries if isinstance(e, dict))
    with progress(total_kb, f"verify {config}", unit="kB") as bar:
        paths = output.shards(verify=True, progress=lambda n: bar.advance(_kib(n)))
    sizes = [p.stat().st_size for p in paths]
    rows = 0
    schema = None
    for entry, path in zip(entries, paths, strict=True):
        try:
            meta = pq.read_metadata(path)
        except Exception as exc:
            raise EttinError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
        if isinstance(entry.get("rows"), int) and meta.num_rows != entry["rows"]:
            raise EttinError(f"{path}: {meta.num_rows} rows, {manifest_path.name} says {entry['rows']}")
        this = meta.schema.to_arrow_schema().remove_metadata()
        if schema is None:
            schema = this
            if "score" not in schema.names:
                raise EttinError(f"{path}: no 'score' column (columns: {', '.join(schema.names)})")
        elif not this.equals(schema):
            raise EttinError(f"{path}: its columns differ from {paths[0].name} "
                             f"({', '.join(this.names)} vs {', '.join(schema.names)})")
        rows += meta.num_rows
    totals = manifest.get("totals") if isinstance(manifest.get("totals"), dict) else {}
    total = totals.get("rows")
    if isinstance(total, int) and total != rows:
        raise EttinError(f"{manifest_path}: says {total} rows in all, the shards hold {rows}")
    return ScoreDir(config, folder, paths, manifest, rows, list(schema.names) if schema else [],
                    _teacher_of(manifest), sizes)


def plan_dataset_push(data_dirs: list[str | Path], repo_id: str, *, license: str = DEFAULT_LICENSE,
                      commit_message: str | None = None) -> UploadPlan:
    """Verify every source directory and lay it out like the published data set (`dataset_layout.py`)."""
    from ettin_cli.publish import dataset_layout

    return dataset_layout.plan_dataset_push(data_dirs, repo_id, license=license, commit_message=commit_message)


# ------------------------------------------------------------------------------------------- the push
@dataclass(frozen=True)
class PushResult:
    """Where the push landed."""

    repo_url: str
    commit_url: str
    commit_oid: str
    files: int
    bytes: int
    changed: bool = True


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status behind an exception, following `raise ... from` chains (LFS errors are wrapped)."""
    seen = 0
    while exc is not None and seen < 8:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _is_network_error(exc: BaseException) -> bool:
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - older huggingface_hub ships plain httpx
        import httpx
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class _Pusher:
    """Runs the network steps of one push with retries and turns failures into one-line errors."""

    def __init__(self, plan: UploadPlan, token: str, endpoint: str, retries: int, backoff: float):
        self.plan, self.token, self.endpoint = plan, token, endpoint
        self.retries, self.backoff = retries, backoff

    def scrub(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    def call(self, what: str, fn: Callable[[], T]) -> T:
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except EttinError:
                raise
            except Exception as exc:
                status = _status_of(exc)
                transient = status in TRANSIENT_STATUS or (status is None and _is_network_error(exc))
                if transient and attempt < attempts:
                    delay = min(self.backoff * 2 ** (attempt - 1), 60.0)
                    reason = f"HTTP {status}" if status else type(exc).__name__
                    logger.warning(f"{what}: {reason}, retrying in {delay:g}s (attempt {attempt + 1}/{attempts})")
                    time.sleep(delay)
                    continue
                raise EttinError(self.scrub(self.explain(what, exc, status, attempt))) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def explain(self, what: str, exc: BaseException, status: int | None, attempts: int) -> str:
        repo = f"{self.plan.repo_type} repo {self.plan.repo_id}"
        namespace = self.plan.repo_id.split("/")[0]
        tail = "no partial commit was made"
        if status == 401:
            return (f"the Hub rejected the token (HTTP 401) while {what}: set a valid HF_TOKEN, pass --token, "
                    f"or run `hf auth login`; {tail}")
        if status == 403:
            return (f"permission denied (HTTP 403) while {what} on {repo}: the token needs write access to "
                    f"the namespace '{namespace}'; {tail}")
        if status == 404:
            return f"{repo} or its branch was not found (HTTP 404) while {what}; {tail}"
        if status in TRANSIENT_STATUS:
            return (f"the Hub kept failing (HTTP {status}, {attempts} attempts) while {what}; {tail}; rerun the "
                    "same command to finish (files already uploaded are not sent again)")
        if status is None and _is_network_error(exc):
            return (f"could not reach the Hub at {self.endpoint} ({type(exc).__name__}) while {what}, "
                    f"{attempts} attempts; {tail}")
        server = str(getattr(exc, "server_message", "") or "").strip() or str(exc).strip()
        first = server.splitlines()[0] if server else type(exc).__name__
        code = f"HTTP {status}" if status else type(exc).__name__
        return f"the Hub refused the push ({code}) while {what}: {first[:300]}; {tail}"


def push(plan: UploadPlan, *, token: str, private: bool = False, revision: str | None = None,
         retries: int = 5, backoff: float = 1.0, endpoint: str | None = None) -> PushResult:
    """Send `plan` as a single commit: create the repo (and branch) if needed, upload, commit.

    `private` makes a new repo private; pushing with `private` to an existing public repo is refused (the
    files would become public). Large files are uploaded in batches before the commit (huggingface_hub's
    `preupload_lfs_files`: Xet or Git LFS), then one `create_commit` makes them all visible at once.
    """
    check_online()
    from huggingface_hub import CommitOperationAdd, HfApi

    revision = validate_revision(revision)
    api = HfApi(endpoint=endpoint, token=token, library_name="ettin-cli", library_version=__version__)
    runner = _Pusher(plan, token, api.endpoint, retries, backoff)
    repo_id, repo_type = plan.repo_id, plan.repo_type

    repo_url = runner.call("creating the repo", lambda: api.create_repo(
        repo_id, repo_type=repo_type, private=True if private else None, exist_ok=True))
    if private:
        info = runner.call("reading the repo's visibility", lambda: api.repo_info(repo_id, repo_type=repo_type))
        if not getattr(info, "private", False):
            raise EttinError(f"--private: {repo_type} repo {repo_id} already exists and is public; nothing was "
                             "uploaded (make it private on the Hub first, or push without --private)")
    if revision != "main":
        runner.call(f"creating branch {revision}", lambda: api.create_branch(
            repo_id, branch=revision, repo_type=repo_type, exist_ok=True))

    operations = [CommitOperationAdd(f.path_in_repo, f.source if f.source is not None else f.content)
                  for f in plan.files]
    batches: list[list[Any]] = [[]]
    batch_bytes = 0
    for op, f in zip(operations, plan.files, strict=True):
        if batches[-1] and (len(batches[-1]) >= UPLOAD_BATCH_FILES or batch_bytes + f.size > UPLOAD_BATCH_BYTES):
            batches.append([])
            batch_bytes = 0
        batches[-1].append((op, f.size))
        batch_bytes += f.size
    logger.info(f"uploading {len(plan.files)} files ({human_size(plan.total_bytes)}) to {repo_url}")
    total_kb = sum(_kib(f.size) for f in plan.files)
    with progress(total_kb, "upload", unit="kB") as bar:
        for i, batch in enumerate(batches, start=1):
            ops = [op for op, _ in batch]
            runner.call(f"uploading files (batch {i}/{len(batches)})", lambda ops=ops: api.preupload_lfs_files(
                repo_id, additions=ops, repo_type=repo_type, revision=revision, free_memory=False))
            bar.advance(sum(_kib(size) for _, size in batch))
    head = runner.call("reading the branch head", lambda: api.repo_info(
        repo_id, repo_type=repo_type, revision=revision)).sha
    commit = runner.call("committing", lambda: api.create_commit(
        repo_id, operations, commit_message=plan.commit_message, repo_type=repo_type, revision=revision))
    # huggingface_hub drops files whose content the Hub already holds; when nothing is left it makes no commit.
    changed = commit.oid != head
    if not changed:
        logger.info(f"{repo_id} (branch {revision}) already holds exactly these files: no new commit was made")
    return PushResult(str(repo_url), commit.commit_url, commit.oid, len(plan.files), plan.total_bytes, changed)
