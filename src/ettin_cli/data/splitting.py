"""Train/dev/test qrels by query for a BEIR folder (`ettin split`), sized to the collection.

Why: a collection brought by a user often ships one qrels file (Cranfield: `qrels/test.tsv`), while the route
needs three query sets that never meet: `train` (mined and scored), `dev` (picks the checkpoint, gives the eval
loss, checks the teacher) and `test` (the report). Fixed counts written for one collection leave another with an
empty split (52 queries cut with Cranfield's 50/25 left train with a header only), so the sizes here are
fractions of the judged queries with a floor per split, and a collection too small for the floors is refused in
one line before anything is written.

The output is a working copy: `OUT/corpus.jsonl` and `OUT/queries.jsonl` (hard links to the source files where
the file system allows, copies otherwise), `OUT/qrels/{train,dev,test}.tsv` (the source rows, in source order,
with the header) and `OUT/split.json` (the config, counts and query ids of each split). It is built in a
temporary folder beside OUT and renamed into place, so OUT is either complete or absent. Same input + config =
same output; the query order is shuffled with `seed` only to draw the splits.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import current_umask, write_json_atomic, write_text_atomic
from ettin_cli.io.beir import iter_jsonl_rows

SPLITS = ("train", "dev", "test")
RECORD = "split.json"


@dataclass(frozen=True)
class SplitConfig:
    """How many judged queries go to dev and test; defaults live in `recipes/data.yaml` (`split:`)."""

    source: str = "test"  # the qrels file split: qrels/<source>.tsv
    dev: float = 0.1  # fraction of the judged queries
    test: float = 0.2
    min_train: int = 20
    min_dev: int = 10
    min_test: int = 10
    seed: int = 12

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "split") -> SplitConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise EttinError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
        return cls(**dict(values)).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> SplitConfig:
        """One-line errors for sizes that mean nothing; returns self so calls chain."""
        for name in ("dev", "test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise EttinError(f"--{name} must be a fraction in [0, 1), got {value!r}")
        if self.dev + self.test >= 1:
            raise EttinError(f"--dev {self.dev} + --test {self.test} leaves no queries to train on")
        for name in ("min_train", "min_dev", "min_test", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise EttinError(f"--{name.replace('_', '-')} must be a non-negative integer, got {value!r}")
        if self.min_train < 1:
            raise EttinError("--min-train must be at least 1: a split with no training query trains nothing")
        if not self.source or "/" in self.source or self.source in ("train", "dev"):
            raise EttinError(f"--from must name the source qrels file other than train/dev (qrels/SOURCE.tsv), "
                             f"got {self.source!r}")
        return self


def split_sizes(judged: int, config: SplitConfig) -> dict[str, int]:
    """Queries per split for `judged` judged queries: each fraction rounded, raised to its floor; train the rest."""
    dev = max(config.min_dev, round(judged * config.dev))
    test = max(config.min_test, round(judged * config.test))
    return {"train": judged - dev - test, "dev": dev, "test": test}


def read_qrels_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a qrels TSV as text, in file order; the header is the BEIR one when the file has none."""
    header = ["query-id", "corpus-id", "score"]
    rows: list[list[str]] = []
    with open(path, encoding="utf-8", newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not row:
                continue
            if line_no == 1 and row[0].strip() in ("query-id", "query_id", "qid"):
                header = row
                continue
            if len(row) < 3:
                raise EttinError(f"{path} line {line_no}: expected 3 tab-separated columns "
                                 f"(query-id, corpus-id, score), got {len(row)}")
            try:
                float(row[2])
            except ValueError:
                raise EttinError(f"{path} line {line_no}: relevance '{row[2]}' is not a number") from None
            rows.append(row)
    return header, rows


def judged_query_ids(rows: list[list[str]], query_ids: set[str]) -> list[str]:
    """Query ids with a positive judgement, in file order, that queries.jsonl holds (others cannot be mined)."""
    return [q for q in dict.fromkeys(r[0].strip() for r in rows if float(r[2]) > 0) if q in query_ids]


def plan_split(judged: list[str], config: SplitConfig, where: str) -> dict[str, list[str]]:
    """Query ids of each split (each in source order); refuses when the collection is too small for the floors."""
    sizes = split_sizes(len(judged), config)
    need = config.min_train + sizes["dev"] + sizes["test"]
    if sizes["train"] < config.min_train:
        raise EttinError(
            f"{where}: {len(judged)} judged queries, too few for train >= {config.min_train}, dev "
            f"{sizes['dev']}, test {sizes['test']} (needs {need}): lower --min-train/--min-dev/--min-test "
            "or bring more judged queries")
    order = list(judged)
    random.Random(config.seed).shuffle(order)
    test = set(order[: sizes["test"]])
    dev = set(order[sizes["test"]: sizes["test"] + sizes["dev"]])
    return {"train": [q for q in judged if q not in test and q not in dev],
            "dev": [q for q in judged if q in dev], "test": [q for q in judged if q in test]}


def _link_or_copy(src: Path, dest: Path) -> str:
    try:
        os.link(src, dest)
        return "hard link"
    except OSError:
        shutil.copyfile(src, dest)
        return "copy"


def split_collection(source: str | os.PathLike[str], output: str | os.PathLike[str], config: SplitConfig,
                     *, overwrite: bool = False) -> dict[str, Any]:
    """Write the working copy OUT (see the module docstring) and return its record (also OUT/split.json).

    A finished OUT with the same source and config is left as it is (the record says `reused`); another config
    is refused unless `overwrite`.
    """
    src, out = Path(source), Path(output)
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (src / name).is_file():
            raise EttinError(f"{src}: no {name} (BEIR layout: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)")
    qrels_path = src / "qrels" / f"{config.source}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (src / "qrels").glob("*.tsv")) if (src / "qrels").is_dir() else []
        raise EttinError(f"{qrels_path}: qrels file not found" + (
            f" (found: {', '.join(found)}; choose one with --from)" if found else ""))
    if out.resolve() == src.resolve():
        raise EttinError(f"--output {out}: is the source folder; give a new folder for the working copy")
    wanted = {"source": str(src.resolve()), "config": config.to_dict()}
    record_path = out / RECORD
    if out.exists():
        previous = _read_record(record_path)
        if previous is not None and {k: previous.get(k) for k in wanted} == wanted:
            return {**previous, "reused": True}
        if not overwrite:
            if previous is None:
                raise EttinError(f"--output {out}: exists and is not an `ettin split` output; choose a new folder "
                                 "or pass --overwrite")
            differ = sorted(k for k in config.to_dict() if previous["config"].get(k) != config.to_dict()[k])
            what = ", ".join(differ) if differ else "the source folder"
            raise EttinError(f"--output {out}: split with another {what}; pass --overwrite to replace it")

    query_ids = {str(row["_id"]) for _, row in iter_jsonl_rows(src / "queries.jsonl")}
    header, rows = read_qrels_rows(qrels_path)
    judged = judged_query_ids(rows, query_ids)
    plan = plan_split(judged, config, str(qrels_path))
    split_of = {q: name for name, ids in plan.items() for q in ids}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "qrels").mkdir()
        how = {name: _link_or_copy(src / name, tmp / name) for name in ("corpus.jsonl", "queries.jsonl")}
        for name in SPLITS:
            # Rows of queries without a positive judgement (all zero grades) stay with train: they judge nothing.
            kept = [r for r in rows if split_of.get(r[0].strip(), "train") == name]
            write_text_atomic(tmp / "qrels" / f"{name}.tsv",
                              "".join("\t".join(r) + "\n" for r in [header, *kept]))
        record = {**wanted, "qrels": str(qrels_path), "judged_queries": len(judged),
                  "queries": {name: len(ids) for name, ids in plan.items()},
                  "files": how, "query_ids": plan}
        write_json_atomic(tmp / RECORD, record)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700: the working copy is as readable as any output
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**record, "reused": False}


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and "config" in value else None


def sizes_note(judged: int, config: SplitConfig) -> str:
    """'train N, dev N, test N of J judged queries': the line a user reads before (or instead of) a refusal."""
    s = split_sizes(judged, config)
    return f"train {s['train']}, dev {s['dev']}, test {s['test']} of {judged} judged queries"

