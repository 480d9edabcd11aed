"""A finished `ettin score` folder as a dataset push takes it: named by one spec, verified byte for byte.

A push names each folder as `DIR` (the config is the folder's name), `NAME=DIR` or `NAME:SPLIT=DIR`; `parse_spec`
is the one parser of that grammar. `verify_score_dir` is the push's check of the folder against its manifest,
with the full SHA-256 pass (a push is where the bytes must be exactly those scored).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ettin_cli.core.console import progress
from ettin_cli.core.errors import EttinError
from ettin_cli.io import shards
from ettin_cli.publish.plan import kib

SPLITS = ("train", "validation")
_CONFIG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ScoreSpec:
    """One folder of a dataset push: the config (subset) and split it becomes, and `text`, as the user wrote it."""

    config: str
    split: str
    folder: Path
    text: str


def parse_spec(spec: str | Path) -> ScoreSpec:
    """`DIR`, `NAME=DIR` or `NAME:SPLIT=DIR` -> `ScoreSpec`; a path that exists is a `DIR` even with a '='."""
    text = str(spec)
    split = "train"
    if "=" in text and not Path(text).exists():
        name, _, path = text.partition("=")
        name, folder = name.strip(), Path(path)
        if ":" in name:
            name, _, split = name.partition(":")
    else:
        folder = Path(text)
        name = folder.resolve().name
    if split not in SPLITS:
        raise EttinError(f"{text}: split '{split}' is not one of {', '.join(SPLITS)}")
    if not _CONFIG.match(name):
        raise EttinError(f"{text}: '{name}' is not a usable config name (letters, digits, '-', '_', '.'); "
                         "name it explicitly with NAME=DIR")
    return ScoreSpec(name, split, folder, text)


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


def teacher_of(*records: object, depth: int = 0) -> str | None:
    """The teacher a manifest (or run config) names: the first `teacher` key holding a string, or a mapping
    with `teacher`/`model`/`name` inside, searched breadth-first a few levels deep."""
    nested: list[dict[str, Any]] = []
    for record in records:
        if not isinstance(record, dict):
            continue
        value = record.get("teacher")
        if isinstance(value, dict):
            value = value.get("teacher") or value.get("model") or value.get("name")
        if isinstance(value, str) and value:
            return value
        nested.extend(v for v in record.values() if isinstance(v, dict))
    return teacher_of(*nested, depth=depth + 1) if nested and depth < 3 else None


def verify_score_dir(spec: ScoreSpec | str | Path) -> ScoreDir:
    """Check an `ettin score` output against its manifest: every shard present, size, sha256 and rows equal.

    The one sharded-folder reader (`shards.ShardedFolder.shards`) does the checks, here with the full SHA-256
    pass, shard by shard under a progress bar since a full dataset is many GB; each shard's row count comes from
    its parquet footer. All shards must share one schema with a `score` column, or the subset would not load as
    one config.
    """
    import pyarrow.parquet as pq

    if not isinstance(spec, ScoreSpec):
        spec = parse_spec(spec)
    config, folder = spec.config, spec.folder
    if not folder.is_dir():
        raise EttinError(f"{folder}: not a directory (expected an `ettin score` output directory)")
    output = shards.ShardedFolder(folder)
    manifest_path = shards.manifest_path(folder)
    if not manifest_path.is_file():
        raise EttinError(f"{manifest_path}: not found (is the `ettin score` run finished? its manifest is "
                         "written once every shard is done)")
    manifest = output.manifest()
    entries = manifest.get("shards") or []
    total_kb = sum(kib(int(e.get("bytes") or 0)) for e in entries if isinstance(e, dict))
    with progress(total_kb, f"verify {config}", unit="kB") as bar:
        paths = output.shards(verify=True, progress=lambda n: bar.advance(kib(n)))
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
                    teacher_of(manifest), sizes)
