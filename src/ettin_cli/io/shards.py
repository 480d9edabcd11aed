"""The one sharded-folder API: `DIR/part-00000.parquet`, ... plus bookkeeping in `DIR/.ettin/`.

Used by every sharded step (score, mine, select, mix) and by every reader of their outputs (tables, select, mix,
train, push). The design needs no coordination between ranks (the datatrove way):

- Each shard is written to a temporary name and renamed into place, then a completion record
  `.ettin/part-00000.parquet.done.json` (rows, bytes, sha256, the step's config hash, anything the step adds)
  is written, also atomically. A shard without a valid record is unfinished and gets redone; a kill -9 at any
  moment leaves either no final file, or a final file without a record, or both: never a half-written shard
  that looks finished. A rank skips every shard it owns whose record exists.
- `.ettin/run.json` holds the step's config; a rerun with a different config is refused with the keys that
  differ (or, with overwrite, records of the old config are ignored and their shards redone).
- `.ettin/manifest.json` is assembled from the completion records once every expected shard has one.
  Whichever rank finishes last (or any rerun) writes it; writers produce the same content and the write is an
  atomic rename, so two ranks finalising at once cannot corrupt it.

The JSON sidecars live in the hidden `.ettin/` because every parquet reader skips hidden names (Arrow's dataset
discovery skips `.` and `_` prefixes, `datasets` skips hidden files and folders): a finished folder opens as
plain parquet with `pd.read_parquet(DIR)` or `datasets.load_dataset("parquet", data_dir=DIR)`.

Checking a finished shard costs a `stat`: its record and its size. A full SHA-256 pass over the bytes runs only
where it is worth its cost (`ettin push`, or `--verify` / `ETTIN_VERIFY=1`), since hashing 100 GB of shards on
every resume or read would take longer than most steps.
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
from ettin_cli.core.distributed import owned
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import atomic_path, sha256_file, write_json_atomic

META_DIR = ".ettin"
RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"
DONE_SUFFIX = ".done.json"
VERIFY_ENV = "ETTIN_VERIFY"

PathLike = str | os.PathLike[str]


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of a JSON-able config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def verify_requested(verify: bool | None = None) -> bool:
    """Whether a reader hashes shard bytes: an explicit `verify` wins, else `ETTIN_VERIFY=1`, else no (size only).

    For readers without a `--verify` option (train's data loading); the sharded steps take `verify` as an
    argument, which their `--verify` option fills (with ETTIN_VERIFY as its default, read once by the CLI).
    """
    if verify is not None:
        return bool(verify)
    return os.environ.get(VERIFY_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def meta_dir(directory: PathLike) -> Path:
    """`DIR/.ettin`: where a sharded folder keeps its run record, completion records and manifest."""
    return Path(directory) / META_DIR


def sidecar_path(directory: PathLike, name: str) -> Path:
    """Where a step keeps its own JSON next to the shards (e.g. score's input check): `DIR/.ettin/NAME`."""
    return meta_dir(directory) / name


def manifest_path(directory: PathLike) -> Path:
    return sidecar_path(directory, MANIFEST_FILE)


def run_path(directory: PathLike) -> Path:
    return sidecar_path(directory, RUN_FILE)


def is_finished(directory: PathLike) -> bool:
    """True when DIR is a finished sharded output (its manifest exists)."""
    return manifest_path(directory).is_file()


def is_sharded_output(directory: PathLike) -> bool:
    """True when DIR was written by a sharded step, finished or not (a manifest or a run record exists)."""
    return is_finished(directory) or run_path(directory).is_file()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def describe_difference(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """Only the settings that differ, as dotted keys (`input.sha256: 'ab..' -> 'cd..'`), at most `limit`.

    Nested configs (the input's fingerprint, the teacher's identity) are compared leaf by leaf, so a refused
    rerun names the one value that changed instead of printing both configs whole.
    """
    flat_old, flat_new = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
    missing = object()

    def show(v: Any) -> str:
        if v is missing:
            return "(not set)"
        text = repr(v)
        return text if len(text) <= 60 else text[:57] + "..."

    shown = [f"{k}: {show(flat_old.get(k, missing))} -> {show(flat_new.get(k, missing))}" for k in keys[:limit]]
    more = len(keys) - limit
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


class ShardWriter:
    """Streams record batches into one shard's temp file; `extra` is merged into the completion record."""

    def __init__(self, path: Path, schema: Any) -> None:
        import pyarrow.parquet as pq

        self.rows = 0
        self.extra: dict[str, Any] = {}
        self.progress: Any = None  # the step's progress bar while the lifecycle runs it (`core.console`)
        self._writer = pq.ParquetWriter(path, schema)

    def write(self, table: Any) -> None:
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()


class ShardedFolder:
    """One sharded output folder: open it, check or bind its config, run a rank's shards, finalize, read."""

    def __init__(self, directory: PathLike) -> None:
        self.root = Path(directory)
        self.meta = meta_dir(self.root)

    # ---------------------------------------------------------------------------------------- paths
    def record_path(self, index: int) -> Path:
        return self.meta / (shard_name(index) + DONE_SUFFIX)

    def pieces_dir(self, index: int) -> Path:
        """`.ettin/pieces/part-0000i.parquet/`: row groups of shard `index` committed as they are made, so a step
        killed inside a long shard resumes from its last committed piece (score); removed once the shard is done."""
        return self.meta / "pieces" / shard_name(index)

    def config_sha256(self) -> str | None:
        run = _read_json(self.meta / RUN_FILE)
        return run.get("config_sha256") if run else None

    # ---------------------------------------------------------------------------------------- writing
    def check(self, config: dict[str, Any], overwrite: bool = False) -> str:
        """Refuse a DIR that is a file or holds a different run (unless `overwrite`); writes nothing.

        Returns the config hash. Split from `prepare` so a step can validate its input before it creates
        anything: a refused or failed run leaves no trace.
        """
        root = self.root
        if root.exists() and not root.is_dir():
            raise EttinError(f"--output {root}: is a file, not a directory")
        digest = config_hash(config)
        if not root.is_dir() or overwrite:
            return digest
        run_file = self.meta / RUN_FILE
        existing = _read_json(run_file) if run_file.exists() else None
        if existing is not None and existing.get("config_sha256") != digest:
            what = describe_difference(existing.get("config", {}), config)
            raise EttinError(f"--output {root}: holds a different run ({what}); use another directory "
                             "or --overwrite")
        if existing is None and run_file.exists():
            raise EttinError(f"{run_file}: unreadable run record; use --overwrite to start afresh")
        if existing is None and any(root.glob("part-*.parquet")):
            raise EttinError(f"--output {root}: holds parquet shards from an unknown run; use another directory "
                             "or --overwrite")
        return digest

    def prepare(self, config: dict[str, Any], overwrite: bool = False) -> str:
        """Create DIR (or resume it) for a run with `config`; return the config hash that tags its records.

        A directory holding a different run's output is refused with what differs, unless `overwrite`: then the
        old run's records no longer count (their shards are redone) and its manifest is removed.
        """
        digest = self.check(config, overwrite)
        try:
            self.meta.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EttinError(f"--output {self.root}: cannot create the directory ({exc.strerror})") from None
        run_file = self.meta / RUN_FILE
        existing = _read_json(run_file) if run_file.exists() else None
        if existing is None or existing.get("config_sha256") != digest:
            manifest = _read_json(self.meta / MANIFEST_FILE)
            if manifest is not None and manifest.get("config_sha256") != digest:
                (self.meta / MANIFEST_FILE).unlink(missing_ok=True)
            write_json_atomic(run_file, {"config": config, "config_sha256": digest, "version": __version__})
        return digest

    def remove_temps(self, index: int) -> int:
        """Delete temp files of shard `index` only (other ranks may be writing theirs right now)."""
        removed = 0
        for tmp in self.root.glob(f".{shard_name(index)}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
        return removed

    def remove(self, index: int) -> None:
        """Forget shard `index`: its record, its file and any temp file a killed writer left behind."""
        self.record_path(index).unlink(missing_ok=True)
        (self.root / shard_name(index)).unlink(missing_ok=True)
        self.remove_temps(index)

    @contextmanager
    def writer(self, index: int, schema: Any, config_sha256: str | None = None) -> Iterator[ShardWriter]:
        """Write shard `index` incrementally; on success rename it into place, then write its completion record."""
        digest = config_sha256 if config_sha256 is not None else (self.config_sha256() or "")
        final = self.root / shard_name(index)
        self.remove_temps(index)
        self.record_path(index).unlink(missing_ok=True)
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
            "sha256": sha256_file(final),  # the bytes are hot in the page cache now: the cheapest moment
            "config_sha256": digest,
            "started_at": started,
            "finished_at": time.time(),
            "host": socket.gethostname(),
            **writer.extra,
        }
        write_json_atomic(self.record_path(index), record)

    def write(self, index: int, table: Any, record_extra: dict[str, Any] | None = None,
              config_sha256: str | None = None) -> dict[str, Any]:
        """Write a whole in-memory table as shard `index` (atomically, with its completion record)."""
        with self.writer(index, table.schema, config_sha256) as writer:
            writer.write(table)
            writer.extra.update(record_extra or {})
        return _read_json(self.record_path(index)) or {}

    # ---------------------------------------------------------------------------------------- resuming
    def completed(self, verify: bool = False, indices: list[int] | None = None) -> dict[int, dict[str, Any]]:
        """Completion records of finished shards of the current run (`.ettin/run.json`), by index.

        A record counts when it belongs to the current config and its shard file exists with the recorded size;
        with `verify` its SHA-256 must match too (an altered shard is then redone).
        """
        check_bytes = verify
        current = self.config_sha256()
        found: dict[int, dict[str, Any]] = {}
        if indices is None:
            paths = sorted(self.meta.glob(f"part-*.parquet{DONE_SUFFIX}"))
        else:
            paths = [self.record_path(i) for i in indices]
        for path in paths:
            record = _read_json(path) if path.exists() else None
            if not record or record.get("config_sha256") != current:
                continue
            shard = self.root / str(record.get("file", ""))
            if not shard.is_file() or shard.stat().st_size != record.get("bytes"):
                continue
            if check_bytes and sha256_file(shard) != record.get("sha256"):
                continue
            found[int(record["index"])] = record
        return found

    def pending(self, expected: int, rank: Any, verify: bool = False) -> tuple[dict[int, dict[str, Any]],
                                                                                      list[int]]:
        """(finished records, shards to do) among the `expected` shards this rank owns (`i % world == rank`)."""

        mine = [i for i in range(expected) if owned(i, rank)]
        done = self.completed(verify=verify, indices=mine)
        return done, [i for i in mine if i not in done]

    def finalize(self, expected: int,
                 extra: dict[str, Any] | Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
                 ) -> dict[str, Any] | None:
        """Write `.ettin/manifest.json` if all `expected` shards have records; return it, or None if some are
        missing.

        Shards are checked by size here (each was hashed when written). `extra` (a dict, or a function of the
        ordered records) adds step-specific totals. Shard files beyond `expected` (left by an older run) are
        removed.
        """
        records = self.completed(verify=False, indices=list(range(expected)))
        if len(records) < expected:
            return None
        ordered = [records[i] for i in range(expected)]
        for stale in self.root.glob("part-*.parquet"):
            try:
                index = int(stale.name[len("part-"):-len(".parquet")])
            except ValueError:
                continue
            if index >= expected:
                stale.unlink(missing_ok=True)
                self.record_path(index).unlink(missing_ok=True)
        run = _read_json(self.meta / RUN_FILE) or {}
        manifest: dict[str, Any] = {
            "tool": "ettin-cli",
            "version": __version__,
            "config": run.get("config", {}),
            "config_sha256": run.get("config_sha256"),
            "shards": [{k: v for k, v in r.items() if k not in ("config_sha256", "index")} for r in ordered],
            "totals": {"shards": expected, "rows": sum(int(r["rows"]) for r in ordered)},
        }
        more = extra(ordered) if callable(extra) else (extra or {})
        for key, value in more.items():
            if key == "totals" and isinstance(value, dict):
                manifest["totals"].update(value)
            else:
                manifest[key] = value
        write_json_atomic(self.meta / MANIFEST_FILE, manifest)
        return manifest

    # ---------------------------------------------------------------------------------------- reading
    def manifest(self) -> dict[str, Any]:
        """The manifest of a finished output; a one-line error when the output is incomplete."""
        manifest = _read_json(self.meta / MANIFEST_FILE)
        if manifest is None:
            if (self.meta / RUN_FILE).is_file():
                raise EttinError(f"{self.root}: an unfinished sharded output (no {META_DIR}/{MANIFEST_FILE} yet): "
                                 "the step that writes it has not finished; rerun it to complete the output")
            raise EttinError(f"{self.root}: no {META_DIR}/{MANIFEST_FILE}: not the finished output of an ettin "
                             "step (rerun the step to finish it)")
        return manifest

    def shards(self, verify: bool | None = None,
               progress: Callable[[int], None] | None = None) -> list[Path]:
        """The shard files of the finished output, in order, each checked against the manifest: the size always,
        the SHA-256 with `verify` (or ETTIN_VERIFY=1). `progress(bytes)` is called per shard hashed."""
        manifest = self.manifest()
        check_bytes = verify_requested(verify)
        entries = manifest.get("shards")
        if not isinstance(entries, list) or not entries:
            raise EttinError(f"{self.meta / MANIFEST_FILE}: lists no shards")
        paths = []
        for i, entry in enumerate(entries):
            name = entry.get("file") if isinstance(entry, dict) else None
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".parquet"):
                raise EttinError(f"{self.meta / MANIFEST_FILE}: shard entry {i} does not name a parquet file in "
                                 "the folder")
            path = self.root / name
            if not path.is_file():
                raise EttinError(f"{path}: listed in {META_DIR}/{MANIFEST_FILE} but missing")
            size = path.stat().st_size
            if size != entry.get("bytes"):
                raise EttinError(f"{path}: {size} bytes, {META_DIR}/{MANIFEST_FILE} says {entry.get('bytes')} "
                                 "(the shard changed after it was written)")
            if check_bytes:
                digest = sha256_file(path)
                if digest != entry.get("sha256"):
                    raise EttinError(f"{path}: sha256 {digest[:12]}... does not match {META_DIR}/{MANIFEST_FILE} "
                                     f"({str(entry.get('sha256'))[:12]}...): the shard changed after it was written")
                if progress is not None:
                    progress(size)
            paths.append(path)
        return paths
