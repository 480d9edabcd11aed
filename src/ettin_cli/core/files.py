"""Atomic file output and checksums.

Every output of the pipeline is written to a temporary name beside its destination and renamed into place, so
a crash, a kill -9 or a full disk never leaves a half-written file under the final name. Rename is atomic on
POSIX file systems within one directory. The temp file gets the permissions a plain `open()` would give (the
user's umask), not `mkstemp`'s private 0600, so shared data folders stay readable by the group.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError


def _umask() -> int:
    """The process umask (read by setting and restoring it: POSIX has no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on failure remove it."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # make the bytes durable before they get the final name
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask: what new files and folders are masked with."""
    return _umask()


def apply_umask(path: str | os.PathLike[str]) -> None:
    """Give a written folder (and everything in it) or file the permissions a plain `open()`/`mkdir` would.

    Libraries that save through private temp files (safetensors via transformers, `tempfile.mkdtemp`) leave 0600
    files and 0700 folders, so a model in a shared folder would be the one output others cannot read.
    """
    mask = _umask()
    root = Path(path)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented, key-sorted JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (shards can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temps(directory: str | os.PathLike[str]) -> int:
    """Delete temp files left by a killed writer in `directory`; return how many were removed."""
    removed = 0
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


# Files that make up a model's weights; their sizes and mtimes stand in for their bytes in `local_model_identity`.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx")


def local_model_identity(path: str | os.PathLike[str]) -> str:
    """A SHA-256 naming a local model folder: its small files' contents, plus each weight file's size and mtime.

    Hashing every weight byte of a 1.5B teacher costs minutes on each run (and on every rank); a changed
    config/tokenizer or a rewritten weight file still changes this identity, which is what a resumed run must
    notice. Hidden files (.cache, .git) are ignored, so a Hub snapshot copy and its source agree on contents.
    """
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()
                       and not any(s.startswith(".") for s in p.relative_to(root).parts)):
        rel = file.relative_to(root).as_posix()
        stat = file.stat()
        if file.suffix.lower() in _WEIGHT_SUFFIXES:
            digest.update(f"{rel}\0weights\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        else:
            digest.update(f"{rel}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file holding an object: {} when the file is absent, a one-line error when it is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EttinError(f"{path}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    return data if isinstance(data, dict) else {}
