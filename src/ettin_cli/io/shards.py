"""Sharded, resumable, rank-safe parquet output: `DIR/part-00000.parquet`, ... plus `DIR/manifest.json`.

Used by every sharded step (score, mine, select, mix). The design needs no coordination between ranks:

- Each shard is written to a temporary name and renamed into place, then a completion record
  `part-00000.parquet.done.json` (rows, bytes, sha256, the step's config hash, anything the step adds) is
  written, also atomically. A shard without a valid record is unfinished and gets redone; a kill -9 at any
  moment leaves either no final file, or a final file without a record, or both: never a half-written shard
  that looks finished.
- `DIR/run.json` holds the step's config; a rerun with a different config is refused (or, with overwrite,
  records of the old config are ignored and their shards redone).
- `DIR/manifest.json` is assembled from the completion records once every expected shard has one. Whichever
  rank finishes last (or any rerun) writes it; writers produce the same content and the write is an atomic
  rename, so two ranks finalising at once cannot corrupt it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ettin_cli import __version__
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import atomic_path, sha256_file, write_json_atomic

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"
DONE_SUFFIX = ".done.json"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of a JSON-able config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = []
    for key in keys[:3]:
        shown.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return "; ".join(shown) + ("; ..." if len(keys) > 3 else "")


def check_output(directory: str | os.PathLike[str], config: dict[str, Any], overwrite: bool = False) -> str:
    """Refuse an output DIR that is a file or holds a different run (unless `overwrite`); writes nothing.

    Returns the config hash. Split from `prepare_output` so a step can validate its input before it creates
    anything: a refused or failed run leaves no trace.
    """
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise EttinError(f"--output {root}: is a file, not a directory")
    digest = config_hash(config)
    if not root.is_dir() or overwrite:
        return digest
    run_path = root / RUN_FILE
    existing = _read_json(run_path) if run_path.exists() else None
    if existing is not None and existing.get("config_sha256") != digest:
        what = _describe_difference(existing.get("config", {}), config)
        raise EttinError(f"--output {root}: holds a different run ({what}); use another directory or --overwrite")
    if existing is None and run_path.exists():
        raise EttinError(f"{run_path}: unreadable run record; use --overwrite to start afresh")
    if existing is None and any(root.glob("part-*.parquet")):
        raise EttinError(f"--output {root}: holds parquet shards from an unknown run; use another directory "
                         "or --overwrite")
    return digest


def prepare_output(directory: str | os.PathLike[str], config: dict[str, Any], overwrite: bool = False) -> str:
    """Create DIR (or resume it) for a run with `config`; return the config hash that tags its records.

    A directory holding a different run's output is refused with what differs, unless `overwrite`: then the
    old run's records no longer count (their shards are redone) and its manifest is removed.
    """
    root = Path(directory)
    digest = check_output(root, config, overwrite)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EttinError(f"--output {root}: cannot create the directory ({exc.strerror})") from None
    run_path = root / RUN_FILE
    existing = _read_json(run_path) if run_path.exists() else None
    if existing is None or existing.get("config_sha256") != digest:
        manifest = _read_json(root / MANIFEST_FILE)
        if manifest is not None and manifest.get("config_sha256") != digest:
            (root / MANIFEST_FILE).unlink(missing_ok=True)
        write_json_atomic(run_path, {"config": config, "config_sha256": digest, "version": __version__})
    return digest


def _record_path(root: Path, index: int) -> Path:
    return root / (shard_name(index) + DONE_SUFFIX)


def remove_shard(directory: str | os.PathLike[str], index: int) -> None:
    """Forget shard `index`: its record, its file and any temp file a killed writer left behind."""
    root = Path(directory)
    _record_path(root, index).unlink(missing_ok=True)
    (root / shard_name(index)).unlink(missing_ok=True)
    remove_shard_temps(root, index)


def remove_shard_temps(directory: str | os.PathLike[str], index: int) -> int:
    """Delete temp files of shard `index` only (other ranks may be writing theirs right now)."""
    removed = 0
    for tmp in Path(directory).glob(f".{shard_name(index)}.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


class ShardWriter:
    """Streams record batches into one shard's temp file; `extra` is merged into the completion record."""

    def __init__(self, path: Path, schema: Any) -> None:
        import pyarrow.parquet as pq

        self.rows = 0
        self.extra: dict[str, Any] = {}
        self._writer = pq.ParquetWriter(path, schema)

    def write(self, table: Any) -> None:
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()


@contextmanager
def shard_writer(directory: str | os.PathLike[str], index: int, schema: Any,
                 config_sha256: str) -> Iterator[ShardWriter]:
    """Write shard `index` incrementally; on success rename it into place, then write its completion record."""
    root = Path(directory)
    final = root / shard_name(index)
    remove_shard_temps(root, index)
    _record_path(root, index).unlink(missing_ok=True)
    started = time.time()
    with atomic_path(final) as tmp:
        writer = ShardWriter(tmp, schema)
        try:
            yield writer
        finally:
            writer.close()
    record = {
        "index": index,
        "file": final.name,
        "rows": writer.rows,
        "bytes": final.stat().st_size,
        "sha256": sha256_file(final),
        "config_sha256": config_sha256,
        "started_at": started,
        "finished_at": time.time(),
        "host": socket.gethostname(),
        **writer.extra,
    }
    write_json_atomic(_record_path(root, index), record)


def write_shard(directory: str | os.PathLike[str], index: int, table: Any, record_extra: dict[str, Any] | None = None,
                config_sha256: str | None = None) -> dict[str, Any]:
    """Write a whole in-memory table as shard `index` (atomically, with its completion record)."""
    root = Path(directory)
    if config_sha256 is None:
        run = _read_json(root / RUN_FILE) or {}
        config_sha256 = run.get("config_sha256", "")
    with shard_writer(root, index, table.schema, config_sha256) as writer:
        writer.write(table)
        writer.extra.update(record_extra or {})
    return _read_json(_record_path(root, index)) or {}


def _current_hash(root: Path) -> str | None:
    run = _read_json(root / RUN_FILE)
    return run.get("config_sha256") if run else None


def completed_shards(directory: str | os.PathLike[str], verify: bool = True,
                     indices: list[int] | None = None) -> dict[int, dict[str, Any]]:
    """Completion records of finished shards of the current run (`run.json`), by index.

    A record counts when it belongs to the current config and its shard file exists with the recorded size;
    with `verify`, its SHA-256 must match too (a truncated or altered shard is redone).
    """
    root = Path(directory)
    current = _current_hash(root)
    found: dict[int, dict[str, Any]] = {}
    if indices is None:
        paths = sorted(root.glob(f"part-*.parquet{DONE_SUFFIX}"))
    else:
        paths = [_record_path(root, i) for i in indices]
    for path in paths:
        record = _read_json(path) if path.exists() else None
        if not record or record.get("config_sha256") != current:
            continue
        shard = root / str(record.get("file", ""))
        if not shard.is_file() or shard.stat().st_size != record.get("bytes"):
            continue
        if verify and sha256_file(shard) != record.get("sha256"):
            continue
        found[int(record["index"])] = record
    return found


def finalize_manifest(directory: str | os.PathLike[str], expected_shards: int,
                      extra: dict[str, Any] | Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
                      ) -> dict[str, Any] | None:
    """Write `DIR/manifest.json` if all `expected_shards` have records; return it, or None if some are missing.

    Shards are checked by size here (each was hashed when written, and again before a rerun skips it).
    `extra` (a dict, or a function of the ordered records) adds step-specific totals. Shard files beyond
    `expected_shards` (left by an older run) are removed.
    """
    root = Path(directory)
    records = completed_shards(root, verify=False, indices=list(range(expected_shards)))
    if len(records) < expected_shards:
        return None
    ordered = [records[i] for i in range(expected_shards)]
    for stale in root.glob("part-*.parquet"):
        try:
            index = int(stale.name[len("part-"):-len(".parquet")])
        except ValueError:
            continue
        if index >= expected_shards:
            stale.unlink(missing_ok=True)
            _record_path(root, index).unlink(missing_ok=True)
    run = _read_json(root / RUN_FILE) or {}
    manifest: dict[str, Any] = {
        "tool": "ettin-cli",
        "version": __version__,
        "config": run.get("config", {}),
        "config_sha256": run.get("config_sha256"),
        "shards": [{k: v for k, v in r.items() if k not in ("config_sha256", "index")} for r in ordered],
        "totals": {"shards": expected_shards, "rows": sum(int(r["rows"]) for r in ordered)},
    }
    more = extra(ordered) if callable(extra) else (extra or {})
    for key, value in more.items():
        if key == "totals" and isinstance(value, dict):
            manifest["totals"].update(value)
        else:
            manifest[key] = value
    write_json_atomic(root / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a finished sharded output; a one-line error when the output is incomplete."""
    root = Path(directory)
    manifest = _read_json(root / MANIFEST_FILE)
    if manifest is None:
        raise EttinError(f"{root}: no {MANIFEST_FILE}: the output is incomplete (rerun the step to finish it)")
    return manifest


def shard_paths(directory: str | os.PathLike[str]) -> list[Path]:
    """The shard files of a finished output, in order, each checked against the manifest's size and SHA-256."""
    root = Path(directory)
    manifest = read_manifest(root)
    paths = []
    for entry in manifest.get("shards", []):
        path = root / entry["file"]
        if not path.is_file():
            raise EttinError(f"{path}: listed in {MANIFEST_FILE} but missing")
        if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            raise EttinError(f"{path}: does not match the checksum in {MANIFEST_FILE} (file changed or corrupt)")
        paths.append(path)
    return paths
