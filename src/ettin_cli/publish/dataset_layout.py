"""The layout of a pushed dataset, made to load like the published `cross-encoder/ettin-reranker-v1-data`.

The release (RECIPE.md, "Facts of the published release") has one config per subset under its published name,
each with a `train` split of exactly three columns: `query` (string), `document` (string) and `label`
(float32, the raw teacher logit); the 5,000 held-out rows are the `validation` split *of the `quora` config*,
not a config of their own. `ettin score` writes every input column plus `score`, and `ettin mix` keeps the
held-out rows in a `validation/` folder, so a push rewrites both:

- each shard becomes `CONFIG/SPLIT-0000i-of-0000n.parquet` holding `query`, `document` and `label` =
  `score` cast to float32 (the layout `datasets.push_to_hub` writes), staged beside its source in
  `DIR/.ettin/release/` (reused by a rerun when the source shard is unchanged, so identical bytes are not sent twice);
- `validation=DIR` (the mix's reserved name) becomes the `validation` split of the recipe's validation source
  (`mix.validation.source` in recipes/data.yaml: quora); `CONFIG:SPLIT=DIR` names any split explicitly;
- the card's YAML lists each config's splits, so `load_dataset(repo, "quora", split="validation")` and
  `load_dataset(repo, "agnews")` work; each source's `ettin score` manifest goes to `provenance/`.

Checked before anything is staged: every shard against its manifest (`score_folder.verify_score_dir`), a numeric
`score` with no null/NaN/inf (one line naming the config and its first bad rows), and that a validation split's
config is pushed too (a config holding only a validation split would not load like the release).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ettin_cli import __version__
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import atomic_path, write_json_atomic
from ettin_cli.core.recipes import read_yaml, recipes_dir
from ettin_cli.io import shards
from ettin_cli.publish.plan import PlannedFile, UploadPlan, card_metadata, validate_repo_id
from ettin_cli.publish.score_folder import SPLITS, ScoreDir, ScoreSpec, parse_spec, verify_score_dir

COLUMNS = ("query", "document", "label")
STAGING = ".ettin/release"  # beside the other sidecars, out of the way of parquet readers
VALIDATION = "validation"
MAX_SHOWN = 5


@dataclass
class SplitData:
    """One (config, split) of the push and the verified `ettin score` folder it comes from."""

    config: str
    split: str
    checked: ScoreDir
    staged: list[Path] | None = None

    @property
    def rows(self) -> int:
        return int(self.checked.rows)

    @property
    def folder(self) -> Path:
        return Path(self.checked.path)


def validation_config(recipe_file: str | Path | None = None) -> str:
    """The config the held-out rows belong to: `mix.validation.source` of the data recipe (quora)."""
    path = Path(recipe_file) if recipe_file is not None else recipes_dir() / "data.yaml"
    source = ((read_yaml(path).get("mix") or {}).get("validation") or {}).get("source")
    if not source:
        raise EttinError(f"{path}: mix.validation.source is not set, so 'validation=DIR' has no config to join")
    return str(source)


def is_held_out(spec: ScoreSpec) -> bool:
    """A bare `validation=DIR` (the mix's reserved folder name): the held-out rows, whose config the recipe names."""
    return spec.config == VALIDATION and spec.split == "train"


def join_held_out(spec: ScoreSpec, held_out_config: str) -> ScoreSpec:
    """`validation=DIR` becomes the `validation` split of the recipe's validation source (quora); others stay."""
    if not is_held_out(spec):
        return spec
    return ScoreSpec(held_out_config, VALIDATION, spec.folder, spec.text)


def check_labels(data: SplitData) -> None:
    """A numeric `score` in every shard, with no null, NaN or inf: one line naming the config and first rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = f"config '{data.config}' ({data.split}, {data.folder})"
    offset = 0
    bad: list[int] = []
    count = 0
    for path in data.checked.shards:
        column = pq.read_table(path, columns=["score"]).column("score")
        if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            raise EttinError(f"{where}: column 'score' is {column.type}, not numeric (expected the teacher logit)")
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        invalid = np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64)))
        count += len(invalid)
        bad.extend(int(offset + i) for i in invalid[: MAX_SHOWN - len(bad)])
        offset += len(column)
    if count:
        raise EttinError(f"{where}: {count:,} row(s) with a missing, NaN or infinite score (first rows: "
                         f"{', '.join(map(str, bad))}); rescore them or drop them before pushing")


def stage(data: SplitData) -> list[Path]:
    """The release-layout files of one split, written (atomically) to `DIR/.ettin/release/` unless already there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = data.folder / STAGING
    n = len(data.checked.shards)
    entries = {e["file"]: e for e in data.checked.manifest.get("shards", [])}
    schema = pa.schema([("query", pa.string()), ("document", pa.string()), ("label", pa.float32())])
    staged = []
    for i, shard in enumerate(data.checked.shards):
        target = out / data.config / f"{data.split}-{i:05d}-of-{n:05d}.parquet"
        record_path = target.with_suffix(".json")
        source_sha = entries.get(shard.name, {}).get("sha256")
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if (record and record.get("source_sha256") == source_sha and record.get("version") == __version__
                and target.is_file() and target.stat().st_size == record.get("bytes")):
            staged.append(target)
            continue
        names = pq.read_schema(shard).names
        for column in ("query", "document"):
            if column not in names:
                raise EttinError(f"{shard}: no '{column}' column for the release layout (columns: {', '.join(names)})")
        with atomic_path(target) as tmp:
            reader = pq.ParquetFile(shard)
            with pq.ParquetWriter(tmp, schema) as writer:
                for batch in reader.iter_batches(batch_size=65_536, columns=["query", "document", "score"]):
                    writer.write_table(pa.Table.from_arrays(
                        [batch.column(0).cast(pa.string()), batch.column(1).cast(pa.string()),
                         batch.column(2).cast(pa.float32())], schema=schema))
        write_json_atomic(record_path, {"source": str(shard), "source_sha256": source_sha, "version": __version__,
                                        "bytes": target.stat().st_size})
        staged.append(target)
    return staged


def _size_category(rows: int) -> str:
    for bound, label in [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]:
        if rows < bound:
            return label
    return "1B<n<10B"


def render_card(repo_id: str, splits: list[SplitData], license: str) -> str:
    """The dataset README: one YAML config per subset with its splits, then the facts of every split."""
    from huggingface_hub import DatasetCardData

    configs: dict[str, list[SplitData]] = {}
    for s in splits:
        configs.setdefault(s.config, []).append(s)
    total = sum(s.rows for s in splits)
    meta = DatasetCardData(
        license=license, language=["en"], task_categories=["text-ranking"],
        tags=["ettin", "reranking", "knowledge-distillation", "cross-encoder", "teacher-scores"],
        size_categories=[_size_category(total)],
        configs=[{"config_name": name, "data_files": [{"split": s.split, "path": f"{name}/{s.split}-*.parquet"}
                                                      for s in sorted(parts, key=lambda p: SPLITS.index(p.split))]}
                 for name, parts in configs.items()],
    )
    teachers = sorted({s.checked.teacher for s in splits if s.checked.teacher})
    teacher_text = ", ".join(f"`{t}`" for t in teachers) if teachers else "the teacher named in each manifest"
    lines = ["---", meta.to_yaml().rstrip("\n"), "---", "", f"# {repo_id.split('/', 1)[1]}", "",
             f"(query, document, label) pairs labelled by the teacher reranker {teacher_text}, published with "
             "ettin-cli for distilling Ettin rerankers by pointwise MSE on `label`, the teacher's raw logit (for "
             "mxbai-rerank-v2 `logit(\"1\") - logit(\"0\")`), with no rescaling.", "",
             f"{len(configs)} subset{'s' if len(configs) != 1 else ''} (one per source), {total:,} rows in all. "
             "Columns: `query` (string), `document` (string), `label` (float32: the `score` column of "
             "`ettin score`).", "", "## Subsets", "", "| subset | split | rows | teacher |",
             "| --- | --- | ---: | --- |"]
    for s in splits:
        lines.append(f"| `{s.config}` | {s.split} | {s.rows:,} | "
                     f"{f'`{s.checked.teacher}`' if s.checked.teacher else '-'} |")
    first = splits[0].config
    held = next((s.config for s in splits if s.split == VALIDATION), None)
    lines += ["", "## Usage", "", "```python", "from datasets import load_dataset", "",
              f'train = load_dataset("{repo_id}", "{first}", split="train")']
    if held:
        lines.append(f'validation = load_dataset("{repo_id}", "{held}", split="validation")')
    lines += ["```", "", "## Provenance", "", "`provenance/<subset>/<split>.manifest.json` is the manifest `ettin "
              "score` wrote for each split: its shards with row counts and SHA-256 checksums, checked before this "
              "upload.", "", "## License", "", license, ""]
    return "\n".join(lines)


def plan_dataset_push(data_dirs: list[str | Path], repo_id: str, *, license: str, commit_message: str | None,
                      recipe_file: str | Path | None = None) -> UploadPlan:
    """Verify every folder and its labels, stage the release layout, and list the upload."""
    repo_id = validate_repo_id(repo_id)
    if not data_dirs:
        raise EttinError("give at least one `ettin score` output directory")
    specs = [parse_spec(d) for d in data_dirs]
    if any(is_held_out(s) for s in specs):  # only a bare `validation=DIR` needs the recipe, to know its config
        held_out = validation_config(recipe_file)
        specs = [join_held_out(s, held_out) for s in specs]
    seen: dict[tuple[str, str], Path] = {}
    for s in specs:
        if (s.config, s.split) in seen:
            what = f"config name '{s.config}'" + (f" (split {s.split})" if s.split != "train" else "")
            raise EttinError(f"{s.folder}: {what} is already used by {seen[(s.config, s.split)]} "
                             "(name one explicitly with NAME=DIR)")
        seen[(s.config, s.split)] = s.folder
    for s in specs:
        if s.split != "train" and (s.config, "train") not in seen:
            raise EttinError(f"{s.folder}: the {s.split} split belongs to config '{s.config}', which is missing "
                             f"from this push (add {s.config}=DIR with its scored train rows)")
    splits = [SplitData(s.config, s.split, verify_score_dir(s)) for s in specs]
    for data in splits:
        check_labels(data)
    files: list[PlannedFile] = []
    for data in splits:
        data.staged = stage(data)
        files.extend(PlannedFile.local(f"{data.config}/{path.name}", path) for path in data.staged)
        files.append(PlannedFile.local(f"provenance/{data.config}/{data.split}.manifest.json",
                                       shards.manifest_path(data.folder)))
    card = render_card(repo_id, splits, license)
    card_metadata(card, "dataset card")
    files.append(PlannedFile.card(card, note="dataset card, generated"))
    total = sum(s.rows for s in splits)
    n_configs = len({s.config for s in splits})
    message = commit_message or (f"Upload {n_configs} scored subset{'s' if n_configs != 1 else ''} "
                                 f"({total:,} rows) with ettin-cli {__version__}")
    facts = {"configs": {f"{s.config}/{s.split}": {"rows": s.rows, "shards": len(s.checked.shards),
                                                  "teacher": s.checked.teacher} for s in splits}, "rows": total}
    return UploadPlan(repo_id, "dataset", files, card, "generated", message, facts)
