"""Training data: (query, document, label) pairs from `ettin score` folders, files, dataset folders or Hub ids.

Everything is loaded with `datasets` into memory-mapped Arrow (the 143M-row set is never held in RAM; the cache
on disk needs about the uncompressed size of the text). The score column is checked with pyarrow compute,
chunk by chunk, before anything is written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.core.sources import looks_like_path, resolve_source
from ettin_cli.io import shards
from ettin_cli.io.shards import ShardedFolder, is_finished

if TYPE_CHECKING:
    from datasets import Dataset


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def source_kind(source: str) -> str:
    path = Path(source)
    if path.is_dir():

        if shards.is_sharded_output(path):
            shards.ShardedFolder(path).manifest()  # one line when the step that writes this folder has not finished
            return "score-dir"
        if (path / "README.md").is_file() or (path / "dataset_infos.json").is_file():
            return "dataset-dir"
        if any(path.rglob("*.parquet")) or any(path.rglob("*.jsonl")):
            return "files-dir"
        raise EttinError(f"{source}: no parquet or jsonl files, no manifest.json and no dataset card in this folder")
    if path.is_file():
        if path.suffix in (".parquet", ".jsonl", ".json"):
            return "file"
        raise EttinError(f"{source}: unsupported file type '{path.suffix}' (use .parquet, .jsonl or .json)")

    if looks_like_path(source):
        raise EttinError(f"{source}: no such file or directory")
    return "hub"


def _load_files(files: list[Path], cache_dir: str | None, source: str) -> Dataset:
    from datasets import load_dataset

    kinds = {"parquet" if f.suffix == ".parquet" else "json" for f in files}
    if len(kinds) > 1:
        raise EttinError(f"{source}: mixes parquet and json files; give them as separate --data sources")
    builder = kinds.pop()
    if _all_empty(files, builder):
        raise EttinError(f"{source}: the data is empty (0 rows)")
    try:
        return load_dataset(builder, data_files=[str(f) for f in files], split="train", cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for unreadable input
        raise EttinError(f"{source}: could not read it as {builder} ({_first_line(exc)})") from None


def _all_empty(files: list[Path], builder: str) -> bool:
    """True when no file holds a row (datasets cannot build a data set from empty files, and says so obscurely)."""
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            return all(pq.ParquetFile(f).metadata.num_rows == 0 for f in files)
        except Exception:  # noqa: BLE001 - unreadable files are reported by the loader with their reason
            return False
    return all(not f.read_bytes().strip() for f in files if f.stat().st_size < 1 << 20) and all(
        f.stat().st_size < 1 << 20 for f in files)


def _load_configs(source: str, split: str, cache_dir: str | None, *, required: bool,
                  holdout: str = "validation") -> list[tuple[str, Dataset]]:
    """Every config of a Hub data set, or of a local folder in the Hub's layout, that has `split`: (label, data).

    One code path for both: configs from `get_dataset_config_names`, each split from `load_dataset(source,
    config, split=...)`. The held-out set may be a split of some configs (`validation` of `quora`, the release)
    or a config of its own named like the eval split (what `ettin mix` writes): such a config is never trained
    on, and is the eval set.
    """
    from datasets import get_dataset_config_names, get_dataset_split_names, load_dataset

    if source_kind(source) == "hub":

        resolve_source(source, option="--data", offline_hint="--data DIR (a local copy)", repo_type="dataset")
    try:
        configs = get_dataset_config_names(source)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo
        raise EttinError(f"{source}: cannot read the data set's configs ({_first_line(exc)})") from None
    parts = []
    for name in configs:
        try:
            splits = get_dataset_split_names(source, name)
            own_holdout = name == holdout  # a held-out config: all of it for the eval set, none for training
            wanted = (splits if split == holdout else []) if own_holdout else [s for s in splits if s == split]
            parts += [(f"{source} config '{name}'", load_dataset(source, name, split=s, cache_dir=cache_dir))
                      for s in wanted]
        except Exception as exc:  # noqa: BLE001
            raise EttinError(f"{source} config '{name}': cannot load its '{split}' split "
                             f"({_first_line(exc)})") from None
    if not parts:
        if required:
            raise EttinError(f"{source}: no config has a '{split}' split")
        return []
    logger.info(f"{source}: {len(parts)} configs with a '{split}' split")
    return parts


def manifest_target(source: str, depth: int = 0) -> str | None:
    """The column an `ettin score` folder wrote its scores to, from its manifest (followed back through `ettin
    select` / `mix` folders). Such a folder also carries its input's columns, often a qrels `label`, so its
    manifest, not a guess between `label` and `score`, names the target."""

    config = ShardedFolder(source).manifest().get("config") or {}
    if config.get("score_column"):
        return str(config["score_column"])
    upstream = config.get("input")
    if depth < 4 and isinstance(upstream, str) and is_finished(upstream):
        return manifest_target(upstream, depth + 1)
    return None


def _load_source(source: str, split: str, cache_dir: str | None, *, required: bool = True,
                 holdout: str = "validation") -> list[tuple[str, Dataset]]:
    """The parts of one source, each with the label its errors name it by (the source, or source + config)."""
    kind = source_kind(source)
    if kind == "score-dir":

        files = ShardedFolder(source).shards()  # in order, each checked against the manifest's size and SHA-256
        if not files:
            raise EttinError(f"{source}: manifest.json lists no shards")
        return [(source, _load_files(files, cache_dir, source))]
    if kind == "file":
        return [(source, _load_files([Path(source)], cache_dir, source))]
    if kind == "files-dir":
        files = sorted([*Path(source).rglob("*.parquet"), *Path(source).rglob("*.jsonl")])
        return [(source, _load_files(files, cache_dir, source))]
    return _load_configs(source, split, cache_dir, required=required, holdout=holdout)


TARGETS = ("label", "score")
_FRACTION = re.compile(r"^(?P<source>.+):(?P<fraction>[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|inf)$")


def parse_data_sources(values: list[str]) -> tuple[list[str], list[float | None]]:
    """`--data` values -> (sources, fractions): `SOURCE:0.2` asks for 20 % of the training rows drawn from SOURCE
    (seeded, without replacement), so a domain run keeps some general pairs; a source without a fraction gives all
    of its rows, and those rows are the rest of the mix. Bad fractions are refused in one line."""
    sources: list[str] = []
    fractions: list[float | None] = []
    for value in values:
        m = _FRACTION.match(str(value).strip())
        if m is None or Path(str(value)).exists():
            sources.append(str(value))
            fractions.append(None)
            continue
        fraction = float(m.group("fraction"))
        if not 0 < fraction < 1:
            raise EttinError(f"--data {value}: the fraction must be between 0 and 1 (the share of the training "
                             f"rows drawn from {m.group('source')}), got {m.group('fraction')}")
        sources.append(m.group("source"))
        fractions.append(fraction)
    if len(set(sources)) < len(sources):
        twice = sorted({s for s in sources if sources.count(s) > 1})
        raise EttinError(f"--data: a source is given twice ({', '.join(twice)})")
    given = [f for f in fractions if f is not None]
    if given and len(given) == len(fractions):
        raise EttinError("--data: every source has a fraction; give your own data without one (all of its rows "
                         "are the rest of the mix), e.g. --data mine/ --data general/:0.2")
    if sum(given) >= 1:
        raise EttinError(f"--data: the fractions add up to {sum(given):g}; they must leave a share for the sources "
                         "without one (sum below 1)")
    return sources, fractions


def target_column(names: list[str], where: str, given: str | None) -> str:
    """The column holding the teacher's score: `given` (`--score-column`, or an `ettin score` manifest's), else
    whichever one of `label` (the release) and `score` exists; both or neither is refused, naming the columns."""
    if given:
        return given
    found = [c for c in TARGETS if c in names]
    if len(found) == 1:
        return found[0]
    what = "both 'label' and 'score' columns" if found else "neither a 'label' nor a 'score' column"
    raise EttinError(f"{where}: {what} (columns: {', '.join(names)}); name the target with --score-column")


def check_scores(ds: Dataset, source: str, columns: dict[str, str | None]) -> str:
    """Refuse missing columns, empty data, null texts and non-finite scores (count and first rows); return the
    target column (found as `target_column` says when `columns["score"]` is None).

    Reads the Arrow columns chunk by chunk with pyarrow compute, so the check costs one pass over the score
    column and no copy of the data.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    names = list(ds.column_names)
    columns = {**columns, "score": target_column(names, source, columns.get("score"))}
    for role in ("query", "document", "score"):
        col = columns[role]
        if col not in names:
            option = f"--{role}-column"
            raise EttinError(f"{source}: no '{col}' column (columns: {', '.join(names)}); map it with {option}")
    if len(ds) == 0:
        raise EttinError(f"{source}: the data is empty (0 rows)")
    table = ds.data
    for role in ("query", "document"):
        chunked = table.column(columns[role])
        if chunked.null_count:
            first = _first_indices(chunked, lambda c: c.is_null())
            raise EttinError(f"{source}: column '{columns[role]}' has {chunked.null_count} missing values "
                             f"(first rows: {', '.join(map(str, first))})")
    score = table.column(columns["score"])
    if not (pa.types.is_floating(score.type) or pa.types.is_integer(score.type)):
        raise EttinError(f"{source}: column '{columns['score']}' holds {score.type}, not numbers")
    bad = 0
    if pa.types.is_floating(score.type):
        def is_bad(chunk: pa.Array) -> pa.Array:
            return pc.fill_null(pc.invert(pc.is_finite(chunk)), True)
    else:
        def is_bad(chunk: pa.Array) -> pa.Array:
            return chunk.is_null()
    for chunk in score.chunks:
        bad += pc.sum(is_bad(chunk)).as_py() or 0
    if bad:
        first = _first_indices(score, is_bad)
        raise EttinError(f"{source}: column '{columns['score']}' has {bad} NaN, infinite or missing scores "
                         f"(first rows: {', '.join(map(str, first))})")
    return columns["score"]


def _first_indices(chunked, predicate, limit: int = 5) -> list[int]:
    import pyarrow.compute as pc

    found: list[int] = []
    offset = 0
    for chunk in chunked.chunks:
        if len(found) >= limit:
            break
        hits = pc.indices_nonzero(predicate(chunk)).to_pylist()
        found += [offset + i for i in hits[: limit - len(found)]]
        offset += len(chunk)
    return found


def load_pairs(sources: list[str], columns: dict[str, str | None], *, split: str = "train",
               cache_dir: str | None = None, required: bool = True,
               holdout: str = "validation") -> tuple[Dataset | None, list[dict[str, Any]]]:
    """(query, document, label) pairs from every source, concatenated, memory-mapped; plus a per-source summary.

    Each part (a file, a folder, one config of a data set) is checked on its own, so an error names the config.
    """
    from datasets import concatenate_datasets

    parts = []
    summary = []
    for source in sources:
        # The first load of a large source builds its Arrow cache (one pass; `-v` shows datasets' own bars).
        logger.info(f"loading {source} ({split} split; memory-mapped Arrow, cached for reruns)")
        rows = 0
        targets = set()
        given = columns
        if not columns.get("score") and source_kind(source) == "score-dir":
            given = {**columns, "score": manifest_target(source)}
        for label, ds in _load_source(source, split, cache_dir, required=required, holdout=holdout):
            target = check_scores(ds, label, given)
            targets.add(target)
            ds = ds.select_columns([columns["query"], columns["document"], target])
            rename = {columns["query"]: "query", columns["document"]: "document", target: "label"}
            parts.append(ds.rename_columns({k: v for k, v in rename.items() if k != v}))
            rows += len(parts[-1])
        if not targets:
            continue
        kind = source_kind(source)
        entry = {"source": source, "kind": kind.replace("files-dir", "files"), "rows": rows,
                 "target_column": ", ".join(sorted(targets))}
        if kind == "score-dir":
            entry.update(score_dir_teacher(source))
        summary.append(entry)
    if not parts:
        return None, summary
    if len(parts) > 1:
        first = parts[0].features
        parts = [p if p.features == first else p.cast(first) for p in parts]
        return concatenate_datasets(parts), summary
    return parts[0], summary


def score_dir_teacher(source: str, depth: int = 0) -> dict[str, Any]:
    """The teacher a sharded folder's scores come from, from its manifest (Hub id, or the local model given).

    An `ettin select` (or mix) folder carries the scores of the `ettin score` folder it read: its manifest names
    that folder as `input`, which is followed back (a few steps at most).
    """

    manifest = ShardedFolder(source).manifest()
    config = manifest.get("config") or {}
    teacher = manifest.get("teacher") or config.get("teacher") or (
        f"local model sha256:{config['teacher_sha256'][:12]}" if config.get("teacher_sha256") else None)
    upstream = config.get("input")
    if not teacher and depth < 4 and isinstance(upstream, str) and is_finished(upstream):
        return score_dir_teacher(upstream, depth + 1)
    fmt = manifest.get("format") or config.get("format")
    # The teacher's own input limit (the manifest's `max_length`: what `ettin score` let the teacher read).
    limit = manifest.get("max_length")
    found = {"teacher": teacher, "teacher_format": fmt,
             "teacher_max_length": limit if isinstance(limit, int) and not isinstance(limit, bool) else None}
    return {k: v for k, v in found.items() if v}


def data_teacher(summary: list[dict[str, Any]], recipe_teacher: str | None) -> tuple[str | None, str | None]:
    """The teacher behind the training scores: the score folders' own when they all agree, else the recipe's."""
    teachers = {(d.get("teacher"), d.get("teacher_format")) for d in summary if d.get("teacher")}
    if len(teachers) == 1:
        return teachers.pop()
    return recipe_teacher, "mxbai-v2" if recipe_teacher and "mxbai-rerank" in recipe_teacher else None


def cache_bytes(ds: Dataset) -> int:
    """Bytes of the Arrow cache files behind a memory-mapped data set (what the cache disk must hold)."""
    return sum(os.path.getsize(f["filename"]) for f in ds.cache_files if os.path.exists(f["filename"]))



def load_mix(sources: list[str], fractions: list[float | None], columns: dict[str, str | None], *,
             split: str = "train", cache_dir: str | None = None, holdout: str = "validation",
             seed: int = 12) -> tuple[Dataset, list[dict[str, Any]]]:
    """The training pairs of a mix: every row of the sources without a fraction (N rows), plus from each source
    with fraction f a seeded sample of round(f * N / (1 - sum f)) rows, so that it is f of the whole.

    A source with fewer rows than its share needs is refused (drawing rows twice would overweight them).
    """
    import numpy as np
    from datasets import concatenate_datasets

    rest = [s for s, f in zip(sources, fractions, strict=True) if f is None]
    base, summary = load_pairs(rest, columns, split=split, cache_dir=cache_dir, holdout=holdout)
    assert base is not None
    share = sum(f for f in fractions if f is not None)
    total = len(base) / (1 - share)
    parts = [base]
    rng = np.random.default_rng(seed)
    for source, fraction in zip(sources, fractions, strict=True):
        if fraction is None:
            continue
        ds, entries = load_pairs([source], columns, split=split, cache_dir=cache_dir, holdout=holdout)
        assert ds is not None
        want = max(1, round(total * fraction))
        if want > len(ds):
            raise EttinError(f"--data {source}:{fraction:g}: {want:,} rows are needed for that share of "
                             f"{round(total):,} training rows, but it has {len(ds):,}; lower the fraction")
        rows = np.sort(rng.choice(len(ds), size=want, replace=False))
        parts.append(ds.select(rows.tolist()))
        summary += [{**e, "fraction": fraction, "rows_drawn": want} for e in entries]
        logger.info(f"mix: {want:,} of the {len(ds):,} rows of {source} drawn (seed {seed}): "
                    f"{100 * fraction:.1f}% of the training pairs")
    first = parts[0].features
    parts = [p if p.features == first else p.cast(first) for p in parts]
    return concatenate_datasets(parts), summary


def load_train_and_eval(config: Any) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    """The run's training pairs, its eval-loss pairs (or None) and a summary of what was read (for the record).

    The eval pairs are `--validation-data`, else the validation split of the Hub / dataset-folder sources.
    """
    import numpy as np

    data_cfg = config.data
    fractions = data_cfg.get("fractions") or [None] * len(data_cfg["train"])
    if any(f is not None for f in fractions):
        train_ds, train_summary = load_mix(data_cfg["train"], fractions, data_cfg["columns"],
                                           split=data_cfg["train_split"], cache_dir=config.cache_dir,
                                           holdout=data_cfg["eval_split"], seed=config.training["seed"])
    else:
        train_ds, train_summary = load_pairs(data_cfg["train"], data_cfg["columns"], split=data_cfg["train_split"],
                                             cache_dir=config.cache_dir, holdout=data_cfg["eval_split"])
    eval_sources = data_cfg["validation"] or [s for s in data_cfg["train"]
                                              if source_kind(s) in ("hub", "dataset-dir")]
    eval_ds, eval_summary = (None, [])
    if eval_sources:
        eval_ds, eval_summary = load_pairs(eval_sources, data_cfg["columns"], split=data_cfg["eval_split"],
                                           cache_dir=config.cache_dir, holdout=data_cfg["eval_split"],
                                           required=bool(data_cfg["validation"]))
    assert train_ds is not None
    logger.info(f"training pairs: {len(train_ds):,} (Arrow cache on disk: {cache_bytes(train_ds) / 1e9:.2f} GB)"
                + (f"; eval-loss pairs: {len(eval_ds):,}" if eval_ds is not None else ""))
    teacher, teacher_format = data_teacher(train_summary, config.teacher)
    # The teacher's held-out scores' variance: an eval MSE above it is worse than predicting their mean.
    variance = float(np.var(eval_ds.with_format("numpy")["label"][:])) if eval_ds is not None else None
    limits = [d["teacher_max_length"] for d in train_summary if d.get("teacher_max_length")]
    return train_ds, eval_ds, {"train": train_summary, "validation": eval_summary, "teacher": teacher,
                               "teacher_format": teacher_format, "validation_variance": variance,
                               "teacher_max_length": min(limits) if limits else None}


# `model.max_length: auto`: the 95th percentile of the pairs' token lengths, rounded up to a multiple of 32.
AUTO_PERCENTILE = 95
AUTO_MULTIPLE = 32
# A run that cuts more than this share of its training pairs warns (WARNING), naming the length that would not.
CUT_WARNING_SHARE = 0.25


def pair_lengths(tokenizer: Any, ds: Dataset, *, sample: int = 2000, seed: int = 12) -> tuple[list[int], bool]:
    """Token lengths of (query, document) pairs, special tokens included, uncut: every row when there are at most
    `sample`, else a seeded random sample of `sample` rows; plus whether it was a sample."""
    import numpy as np

    total = len(ds)
    sampled = total > sample
    rows = np.sort(np.random.default_rng(seed).choice(total, size=sample, replace=False)) if sampled \
        else np.arange(total)
    picked = ds.select(rows.tolist()) if sampled else ds
    lengths = [len(ids) for ids in tokenizer(list(picked["query"]), list(picked["document"]), truncation=False,
                                             verbose=False)["input_ids"]]
    return lengths, sampled


def fitted_length(lengths: list[int], cap: int | None = None) -> int:
    """The length `model.max_length: auto` picks: the `AUTO_PERCENTILE`th percentile of `lengths` rounded up to a
    multiple of `AUTO_MULTIPLE`, at most `cap`."""
    import numpy as np

    wanted = int(np.ceil(np.percentile(lengths, AUTO_PERCENTILE) / AUTO_MULTIPLE) * AUTO_MULTIPLE) if lengths \
        else AUTO_MULTIPLE
    wanted = max(wanted, AUTO_MULTIPLE)
    return min(wanted, cap) if cap else wanted


def token_cost(lengths: list[int], longer: int, shorter: int) -> float:
    """How many times the tokens per pair a student reads at `longer` costs compared with `shorter`."""
    read = sum(min(n, shorter) for n in lengths)
    return sum(min(n, longer) for n in lengths) / read if read else 1.0


def count_cut_pairs(tokenizer: Any, ds: Dataset, max_length: int, *, sample: int = 2000,
                    seed: int = 12, lengths: list[int] | None = None, sampled: bool | None = None,
                    teacher_max_length: int | None = None) -> dict[str, Any]:
    """How many training pairs are longer than `max_length` tokens (query + document, special tokens included)
    and so are cut: counted on every row when there are at most `sample`, else on a seeded random sample of
    `sample` rows (`sampled` says which). `lengths` (from `pair_lengths`) skips the tokenisation.

    More than `CUT_WARNING_SHARE` cut is a WARNING naming the fitted length (which cuts about 5 %) and its cost in
    tokens per pair; `teacher_max_length` (what the teacher read, from the score folder's manifest) is named too.
    """
    import numpy as np

    total = len(ds)
    if lengths is None:
        lengths, sampled = pair_lengths(tokenizer, ds, sample=sample, seed=seed)
    cut = sum(n > max_length for n in lengths)
    share = cut / len(lengths) if lengths else 0.0
    logger.info(f"max length {max_length:,} tokens: {cut:,} of {len(lengths):,} "
                + (f"sampled training pairs (a seeded sample of {total:,})" if sampled
                   else "training pairs (all counted)")
                + f" are longer and are cut ({100 * share:.1f}%)")
    out = {"max_length": int(max_length), "counted": len(lengths), "of": total, "sampled": bool(sampled),
           "cut": int(cut), "cut_fraction": round(share, 4),
           "median_tokens": int(np.median(lengths)) if lengths else 0}
    if teacher_max_length:
        out["teacher_max_length"] = int(teacher_max_length)
    if share > CUT_WARNING_SHARE:
        fits = fitted_length(lengths)
        cost = token_cost(lengths, fits, max_length)
        out.update(fitted_length=fits, fitted_cost=round(cost, 2))
        teacher = (f"; the teacher read up to {teacher_max_length:,} tokens" if teacher_max_length else "")
        logger.warning(f"!!! {100 * share:.0f}% of the training pairs are longer than the student's {max_length:,} "
                       f"tokens and are cut{teacher}: the student learns scores of text it does not see. "
                       f"--max-length {fits:,} would cut {100 * np.mean(np.array(lengths) > fits):.0f}% at about "
                       f"{cost:.1f}x the tokens per pair (model.max_length: auto picks it) !!!")
    return out
