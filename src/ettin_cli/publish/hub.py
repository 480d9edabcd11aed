"""The network side of a push: the token, and one `UploadPlan` (`publish.plan`) sent to the Hub as one commit.

Everything that can be checked locally is checked before the first network call (`publish.model_push`,
`publish.dataset_layout`), so a bad push fails in seconds with one line and nothing uploaded; this module only
sends what a plan lists.

A push is one commit (`HfApi.create_commit`): large files first go through huggingface_hub's normal
large-file path (Xet when `hf_xet` is installed, else Git LFS) in batches that drive the progress bar, and
only the final commit makes them visible, so a failure never leaves a half-updated repo. Each network step is
retried with exponential backoff on transient errors (5xx, 408, 429, dropped connections); a rerun after a
failure re-sends only what the Hub does not already hold. Auth and permission errors become one clear line.

The token is handed to `HfApi` and nothing else: it is never logged, printed or written, and every error
message is scrubbed of it before it reaches the user.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ettin_cli import __version__
from ettin_cli.core.console import logger, progress
from ettin_cli.core.errors import EttinError
from ettin_cli.publish.plan import UploadPlan, human_size, kib, validate_revision

# Statuses worth another try: the Hub or its storage was briefly unavailable or rate-limited us.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
UPLOAD_BATCH_FILES = 64
UPLOAD_BATCH_BYTES = 512 * 1024 * 1024

T = TypeVar("T")


# ------------------------------------------------------------------------------------------- the token
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
    batches: list[list[tuple[CommitOperationAdd, int]]] = [[]]
    batch_bytes = 0
    for op, f in zip(operations, plan.files, strict=True):
        if batches[-1] and (len(batches[-1]) >= UPLOAD_BATCH_FILES or batch_bytes + f.size > UPLOAD_BATCH_BYTES):
            batches.append([])
            batch_bytes = 0
        batches[-1].append((op, f.size))
        batch_bytes += f.size
    logger.info(f"uploading {len(plan.files)} files ({human_size(plan.total_bytes)}) to {repo_url}")
    total_kb = sum(kib(f.size) for f in plan.files)
    with progress(total_kb, "upload", unit="kB") as bar:
        for i, batch in enumerate(batches, start=1):
            ops = [op for op, _ in batch]
            runner.call(f"uploading files (batch {i}/{len(batches)})", lambda ops=ops: api.preupload_lfs_files(
                repo_id, additions=ops, repo_type=repo_type, revision=revision, free_memory=False))
            bar.advance(sum(kib(size) for _, size in batch))
    head = runner.call("reading the branch head", lambda: api.repo_info(
        repo_id, repo_type=repo_type, revision=revision)).sha
    commit = runner.call("committing", lambda: api.create_commit(
        repo_id, operations, commit_message=plan.commit_message, repo_type=repo_type, revision=revision))
    # huggingface_hub drops files whose content the Hub already holds; when nothing is left it makes no commit.
    changed = commit.oid != head
    if not changed:
        logger.info(f"{repo_id} (branch {revision}) already holds exactly these files: no new commit was made")
    return PushResult(str(repo_url), commit.commit_url, commit.oid, len(plan.files), plan.total_bytes, changed)
