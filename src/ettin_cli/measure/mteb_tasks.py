"""Which `mteb` retrieval tasks an MTEB evaluation runs: a benchmark, task names, NanoBEIR, or local BEIR folders.

`ettin eval --benchmark` accepts the release's benchmark name (`"MTEB(eng, v2)"`: its 10 retrieval tasks),
`NanoBEIR`, a comma-separated list of mteb task names, or a PATH to a BEIR-layout folder (or a folder of BEIR
folders). A local folder becomes an mteb retrieval task of its own (`local_task`): read by `io.beir`, the
reader `ettin eval --data` uses, then handed to mteb in its own split layout, so it runs the very same two-stage
path (`mteb.evaluate` with a prediction folder, `convert_to_reranking`, `mteb.evaluate` again) as the Hub tasks,
offline. That is also how the test suite exercises the path on Cranfield.

`mteb` is an optional extra: `require_mteb()` turns its absence into one line naming the pip install.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError
from ettin_cli.core.sources import looks_like_path, resolve_source
from ettin_cli.io.beir import BeirDataset, load_beir

INSTALL_HINT = "pip install 'ettin-cli[mteb]'  (or: pip install 'mteb>=2.26,<3')"
# The benchmark the release's headline table comes from; only its retrieval tasks are reranked.
RELEASE_BENCHMARK = "MTEB(eng, v2)"
NANOBEIR = "NanoBEIR"


def require_mteb() -> Any:
    """The `mteb` module, or a one-line error naming the extra to install."""
    try:
        import mteb
    except ImportError:
        raise EttinError(f"--benchmark needs the mteb library, which is not installed: {INSTALL_HINT}") from None
    return mteb


def local_task(path: str | os.PathLike[str], max_queries: int | None = None) -> Any:
    """A BEIR-layout folder as an mteb retrieval task named after the folder (no Hub access).

    The task's dataset revision is a fingerprint of the three files (sizes and modification times), so mteb's
    result cache treats an edited collection as a different dataset instead of reusing stale results.
    """
    require_mteb()
    from mteb.abstasks.task_metadata import TaskMetadata

    root = Path(path).expanduser().resolve()
    dataset = load_beir(root).first_queries(max_queries)
    metadata = TaskMetadata(
        name=dataset.name,
        description=f"Local BEIR-layout collection {root} (read by ettin-cli's io.beir).",
        dataset={"path": str(root), "revision": _folder_revision(root)},
        type="Retrieval",
        category="t2t",
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
    )
    task_class = type(f"LocalBeir_{_safe(dataset.name)}", (_local_task_base(),), {"metadata": metadata})
    task = task_class()
    task.beir = dataset
    return task


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def _folder_revision(root: Path) -> str:
    digest = hashlib.sha256()
    for rel in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        stat = (root / rel).stat()
        digest.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


@functools.cache
def _local_task_base() -> type:
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    class _LocalBeirTask(AbsTaskRetrieval):
        """A retrieval task whose data is an `io.beir.BeirDataset` already read from disk."""

        beir: BeirDataset

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:  # noqa: ARG002
            if self.data_loaded:
                return
            from datasets import Dataset

            ds = self.beir
            # Title and text are already joined by io.beir (title on its own line), exactly as `ettin eval --data`
            # hands documents to a reranker, so both evaluations score the very same text.
            corpus = Dataset.from_dict({"id": list(ds.corpus), "text": list(ds.corpus.values()),
                                        "title": [""] * len(ds.corpus)})
            judged = ds.judged_queries
            queries = Dataset.from_dict({"id": judged, "text": [ds.queries[q] for q in judged]})
            qrels = {q: dict(ds.qrels[q]) for q in judged}
            self.dataset = {"default": {"test": {"corpus": corpus, "queries": queries, "relevant_docs": qrels,
                                                 "top_ranked": None}}}
            self.data_loaded = True

    return _LocalBeirTask


def _local_folders(root: Path) -> list[Path]:
    if (root / "corpus.jsonl").is_file():
        return [root]
    subs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "corpus.jsonl").is_file())
    if not subs:
        raise EttinError(f"--benchmark {root}: neither a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) "
                         "nor a folder of BEIR folders")
    return subs


def is_local_benchmark(benchmark: str) -> bool:
    """Whether `--benchmark` names a local folder rather than an mteb benchmark or task names."""
    return Path(benchmark).expanduser().exists() or looks_like_path(benchmark)


def select_tasks(benchmark: str, tasks: Sequence[str] | None = None, max_queries: int | None = None) -> list[Any]:
    """The retrieval tasks of `--benchmark`, optionally narrowed to `--tasks` (names, case-insensitive).

    Every problem is one line: an unknown benchmark or task name (with the names that exist), a path that is not
    a BEIR folder. Nothing is downloaded here; Hub tasks load their data later, one at a time (`load_task`).
    """
    mteb = require_mteb()
    text = str(benchmark).strip()
    if not text:
        raise EttinError("--benchmark: empty value (a benchmark name, task names, NanoBEIR or a BEIR folder PATH)")
    if is_local_benchmark(text):
        root = Path(text).expanduser()
        if not root.is_dir():
            raise EttinError(f"--benchmark {text}: no such folder (expected a BEIR layout folder)")
        found = [local_task(p, max_queries) for p in _local_folders(root)]
    else:
        known = {b.name.lower(): b.name for b in mteb.get_benchmarks()}
        try:
            bench = mteb.get_benchmark(known.get(text.lower(), text))  # "nanobeir" works as well as "NanoBEIR"
            found = [t for t in bench.tasks if t.metadata.type == "Retrieval"]
        except KeyError:
            names = [n.strip() for n in text.split(",") if n.strip()]
            found = _tasks_by_name(mteb, names, option="--benchmark", what=text)
    if tasks:
        found = _narrow(found, tasks)
    names = [t.metadata.name for t in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EttinError(f"--benchmark: two tasks are both named '{dupes[0]}': give folders with distinct names")
    if not found:
        raise EttinError(f"--benchmark {text}: no retrieval task in it")
    return found


def _tasks_by_name(mteb: Any, names: Sequence[str], *, option: str, what: str) -> list[Any]:
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    out = []
    for name in names:
        try:
            task = mteb.get_task(name)
        except (KeyError, ValueError) as exc:
            hint = str(exc.args[0]) if exc.args else ""
            hint = f" ({hint.split('. ', 1)[1]})" if "Did you mean" in hint else ""
            raise EttinError(f"{option} {what}: '{name}' is neither an mteb benchmark nor an mteb task name{hint} "
                             f"(e.g. \"{RELEASE_BENCHMARK}\", {NANOBEIR}, ArguAna,SCIDOCS, or a BEIR folder PATH)"
                             ) from None
        if not isinstance(task, AbsTaskRetrieval):
            raise EttinError(f"{option}: {name} is a {task.metadata.type} task; only retrieval tasks can be reranked")
        out.append(task)
    return out


def _narrow(found: list[Any], wanted: Sequence[str]) -> list[Any]:
    by_name = {t.metadata.name.lower(): t for t in found}
    out = []
    for name in wanted:
        task = by_name.get(name.strip().lower())
        if task is None:
            raise EttinError(f"--tasks: '{name}' is not a task of this benchmark; choose from "
                             f"{', '.join(t.metadata.name for t in found)}")
        out.append(task)
    return out


def load_task(task: Any, max_queries: int | None = None) -> None:
    """Load a task's data (the Hub for mteb's tasks, the folder for a local one); keep its first N judged queries.

    A Hub task offline (HF_HUB_OFFLINE=1 or no route) and not in the local cache fails in one line naming the
    dataset and the offline alternative.
    """
    if not is_local_task(task):
        repo = task.metadata.dataset["path"]
        resolve_source(repo, option=f"task {task.metadata.name}: dataset", repo_type="dataset",
                       offline_hint="--benchmark PATH (a local BEIR folder)")
        try:
            task.load_data()
        except EttinError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, cache, missing revision: all one user-facing line
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise EttinError(f"task {task.metadata.name}: cannot load {repo} ({reason})") from None
        if max_queries:
            _first_queries(task, max_queries)
    else:
        task.load_data()


def is_local_task(task: Any) -> bool:
    """Whether a task is a local BEIR folder (`local_task`) rather than one of mteb's Hub tasks."""
    return getattr(task, "beir", None) is not None


def _first_queries(task: Any, n: int) -> None:
    """Keep each split's first `n` queries that have a positive judgement (the `--max-queries` quick look)."""
    for subset in task.dataset.values():
        for split in subset.values():
            qrels = split["relevant_docs"]
            ids = [q for q in split["queries"]["id"] if any(g > 0 for g in qrels.get(q, {}).values())][:n]
            keep = set(ids)
            split["queries"] = split["queries"].filter(lambda row, keep=keep: row["id"] in keep)
            split["relevant_docs"] = {q: qrels[q] for q in ids}


def expected_queries(task: Any) -> int | None:
    """Queries of a task from mteb's own metadata (its descriptive statistics), without loading any data.

    Some tasks (the `*HardNegatives` ones) publish no `num_queries`; their count is the number of judgements
    divided by the mean judgements per query, both in the same statistics. None when neither is there.
    """
    stats = getattr(task.metadata, "descriptive_stats", None) or {}
    total = 0
    for split in task.eval_splits:
        entry = stats.get(split) or {}
        if entry.get("num_queries") is not None:
            total += int(entry["num_queries"])
            continue
        rel = entry.get("relevant_docs_statistics") or {}
        if rel.get("num_relevant_docs") and rel.get("average_relevant_docs_per_query"):
            total += round(rel["num_relevant_docs"] / rel["average_relevant_docs_per_query"])
        else:
            return None
    return total
