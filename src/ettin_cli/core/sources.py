"""One answer to "is this argument a local path or a Hugging Face Hub id?", for every model and data option.

`--teacher`, `--data`, `--base-model`, `--retriever`, score's INPUT and eval's MODEL all accept either. Guessing
wrong is expensive both ways: a mistyped local path sent to the Hub comes back, after a network round trip, as a
confusing "repository not found"; and a Hub id on an offline machine hangs on retries before failing. So:

- a value that exists on disk is local;
- a value that *looks like* a path (`looks_like_path`) and does not exist is "no such file or folder", at once;
- anything else must be shaped like a Hub id (`ORG/NAME` or `NAME`), and with `HF_HUB_OFFLINE=1` or no route to
  the Hub it fails within a second with the offline alternative (`--data DIR`), unless the Hub cache already
  holds it.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ettin_cli.core.errors import EttinError

# Extensions of the files the pipeline reads: a value ending in one of them is a file name, never a repo id.
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zst",
                 ".safetensors", ".bin", ".yaml", ".yml")
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
PROBE_SECONDS = 1.0


def looks_like_path(value: str) -> bool:
    """True when `value` can only mean a local path: it starts with `.`, `/` or `~`, ends in `/`, ends in a data
    file extension, has more than one `/`, or its first part exists on disk (`work/mixx` when `work/` exists).

    Hub ids are `NAME` or `ORG/NAME`, so none of these can be one.
    """
    text = str(value).strip()
    if not text:
        return False
    if text.startswith((".", "/", "~")) or text.endswith(("/", os.sep)) or "\\" in text:
        return True
    if text.lower().endswith(DATA_SUFFIXES):
        return True
    if text.count("/") > 1:
        return True
    if "/" in text:
        return Path(text.split("/", 1)[0]).expanduser().exists()
    return False


def is_offline() -> bool:
    """The user said the Hub is off limits (`HF_HUB_OFFLINE=1`, or the transformers / datasets spelling)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARIABLES)


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within `timeout` seconds.

    Behind an HTTP(S) proxy a direct connection says nothing, so the answer is then yes and the library's own
    request decides.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached(repo_id: str, repo_type: str) -> bool:
    """True when the local Hub cache holds a snapshot of `repo_id` (usable offline)."""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not usable from the cache"
        return False
    return True


@dataclass(frozen=True)
class Source:
    """A resolved argument: `kind` is `local` (with `path`) or `hub` (with `repo_id`)."""

    value: str
    kind: str
    path: Path | None = None
    repo_id: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind == "local"


def resolve_source(value: str | os.PathLike[str], *, option: str, offline_hint: str, repo_type: str = "model",
                   check_hub: bool = True) -> Source:
    """Local path or Hub id, decided once and the same way for every option.

    `option` names the argument in errors (`--data`); `offline_hint` is what to pass instead when the Hub cannot
    be used (`--data DIR`). `check_hub=False` skips the offline/reachability check (for callers that only
    record the id).
    """
    text = str(value).strip()
    if not text:
        raise EttinError(f"{option}: empty value (a local path or a Hub id ORG/NAME)")
    path = Path(text).expanduser()
    if path.exists():
        return Source(text, "local", path=path)
    if looks_like_path(text):
        raise EttinError(f"{option} {text}: no such file or folder")
    if not _HUB_ID.match(text):
        raise EttinError(f"{option} {text}: no such file or folder (and not a Hub id like ORG/NAME)")
    if check_hub:
        offline = is_offline()
        if (offline or not hub_reachable()) and not _cached(text, repo_type):
            why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
            raise EttinError(f"{option} {text}: not a local path, and {why} (nor is it in the local Hub cache); "
                             f"offline, pass a local copy instead: {offline_hint}")
    return Source(text, "hub", repo_id=text)
