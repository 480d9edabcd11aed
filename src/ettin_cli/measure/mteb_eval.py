"""`ettin eval --benchmark`: the release's two-stage MTEB evaluation, run by the `mteb` library itself.

Stage 1, once per retriever: `mteb.evaluate(embedder, task, prediction_folder=...)` writes each task's ranking
(`<task>_predictions.json`, mteb's own format) and the retriever-only scores. Stage 2, for every MODEL:
`task.convert_to_reranking(predictions, top_k)` turns the task into reranking the retriever's top-k, and
`mteb.evaluate(reranker, task)` scores it. NDCG@10 is therefore mteb's, not ours, and the results land in mteb's
own layout (`OUTPUT/<retriever>/results/<model>/<revision>/<task>.json`, one `ResultCache` per retriever and
top-k) where mteb's tools load them.

A reranker is any MODEL `ettin eval` takes (a student, or a teacher in any judge format) wrapped as an mteb
cross-encoder (`EttinReranker`): mteb hands it the (query, document) pairs and our own `teacher.score` scores
them, with its token-budget batching and a progress bar. Resume: stage-1 predictions are kept per retriever and
reused by every model and every rerun; a (model, retriever, task) result already in the cache is not redone,
and the model is loaded only when a task actually needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ettin_cli.core import console
from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import local_model_identity, write_json_atomic
from ettin_cli.core.hardware import resolve_device
from ettin_cli.core.memory import release_device_memory
from ettin_cli.core.sources import resolve_source
from ettin_cli.label.teacher import is_judge_format, load_teacher
from ettin_cli.measure.evaluation import SCORE_CHUNK, expand_formats, model_labels, resolve_model
from ettin_cli.measure.mteb_report import build_report, load_protocol, write_outputs
from ettin_cli.measure.mteb_tasks import expected_queries, is_local_task, load_task, require_mteb, select_tasks

PREDICTIONS_SUFFIX = "_predictions.json"
MAIN_SCORE = "ndcg_at_10"


@dataclass
class MtebEvalConfig:
    """Every setting of one `ettin eval --benchmark` run (saved in `mteb_eval.json` beside the results)."""

    models: list[str]
    benchmark: str
    retrievers: list[str]
    tasks: list[str] | None = None
    top_k: int = 100
    max_queries: int | None = None
    formats: list[str] = field(default_factory=lambda: ["auto"])
    output: str = "eval-mteb"
    device: str = "auto"
    dtype: str = "auto"
    attn: str = "auto"
    max_length: int | None = None
    batch_size: int | None = None
    embed_batch_size: int = 32
    instruction: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MtebEvalConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def validate(self) -> None:
        if not self.models:
            raise EttinError("give at least one MODEL to evaluate")
        if not self.retrievers:
            raise EttinError("--benchmark needs at least one --retriever (an embedder or a folder of mteb predictions)")
        if self.top_k < 1:
            raise EttinError(f"--top-k must be at least 1, got {self.top_k}")
        if self.max_queries is not None and self.max_queries < 1:
            raise EttinError(f"--max-queries must be at least 1, got {self.max_queries}")


# ------------------------------------------------------------------------------------------------ retrievers


@dataclass(frozen=True)
class Retriever:
    """A first stage: an embedder (`kind="embedder"`, a Sentence Transformers folder or Hub id) or a folder of
    mteb predictions already made (`kind="predictions"`)."""

    value: str
    label: str
    kind: str
    path: Path | None = None


def resolve_retriever(value: str, label: str) -> Retriever:
    """Check a `--retriever` value at once: a missing folder, an offline Hub id, a folder that is neither an
    embedder nor predictions, each one line."""
    if value.strip().lower() == "bm25":
        raise EttinError("--retriever bm25 is `ettin eval --data`'s own first stage; with --benchmark give an embedder "
                         "(a Sentence Transformers folder or Hub id) or a folder of mteb predictions")
    source = resolve_source(value, option="--retriever", offline_hint="--retriever DIR (a local Sentence "
                            "Transformers folder, or a folder of mteb *_predictions.json files)")
    if source.path is None:
        return Retriever(value, label, "embedder")
    path = source.path
    if path.is_dir() and any(path.glob(f"*{PREDICTIONS_SUFFIX}")):
        return Retriever(value, label, "predictions", path)
    if path.is_dir() and ((path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file()):
        return Retriever(value, label, "embedder", path)
    raise EttinError(f"--retriever {value}: neither a Sentence Transformers model folder (modules.json) nor a folder "
                     f"of mteb predictions (*{PREDICTIONS_SUFFIX})")


def retriever_folder(output: Path, retriever: Retriever, top_k: int, max_queries: int | None) -> Path:
    """`OUTPUT/<retriever>-top<k>[-q<n>]`: one mteb result cache per first stage and cut, so results never mix."""
    slug = retriever.label.replace("/", "__").replace(" ", "_")
    return output / f"{slug}-top{top_k}{f'-q{max_queries}' if max_queries else ''}"


def _load_embedder(retriever: Retriever, device: str) -> Any:
    """mteb's own implementation for a Hub embedder it knows (prompts as on the leaderboard), else the model as a
    Sentence Transformers model in mteb's wrapper. A local folder is named in mteb's cache by its label and a
    fingerprint of its files (mteb would call it `no_model_name/available`)."""
    mteb = require_mteb()
    if retriever.path is None:
        try:
            mteb.get_model_meta(retriever.value)
        except KeyError:
            pass
        else:
            return mteb.get_model(retriever.value, device=device)
    from mteb.models import SentenceTransformerEncoderWrapper
    from sentence_transformers import SentenceTransformer

    wrapper = SentenceTransformerEncoderWrapper(SentenceTransformer(str(retriever.path or retriever.value),
                                                                    device=device))
    if retriever.path is not None:
        revision = local_model_identity(retriever.path)[:16]
        wrapper.mteb_model_meta = wrapper.mteb_model_meta.model_copy(update={"name": retriever.label,
                                                                             "revision": revision})
    return wrapper


# ------------------------------------------------------------------------------------------------ rerankers


class EttinReranker:
    """Any `ettin eval` MODEL as an mteb cross-encoder (mteb's `CrossEncoderProtocol`).

    mteb calls `predict` with two dataloaders of the pairs' queries and documents; the pairs are scored by
    `teacher.load_teacher(...).score`, in chunks of `SCORE_CHUNK` under one progress bar, with the scorer's own
    length-sorted token-budget batches. The weights load on the first `predict`, so a run whose results are
    all cached never loads the model. `calls` counts `predict` calls (how a resumed run shows it did no work).
    """

    def __init__(self, model: str, path: str, fmt: str, label: str, revision: str, *, device: str = "auto",
                 dtype: str = "auto", attn: str = "auto", max_length: int | None = None,
                 batch_size: int | None = None, instruction: str | None = None) -> None:
        from mteb.models.model_meta import ModelMeta

        self.model, self.path, self.format, self.label = model, path, fmt, label
        self.load_kwargs = {"device": device, "dtype": dtype, "attn": attn, "max_length": max_length,
                            "instruction": instruction}
        self.batch_size = batch_size
        self.scorer: Any = None
        self.calls = 0
        self.mteb_model_meta = ModelMeta.create_empty(overwrites={
            "name": label, "revision": revision, "model_type": ["cross-encoder"],
            "framework": ["Sentence Transformers", "PyTorch"], "modalities": ["text"]})

    def _scorer(self) -> Any:
        if self.scorer is None:

            kwargs = dict(self.load_kwargs)
            if not is_judge_format(self.format):
                kwargs["instruction"] = None
            self.scorer = load_teacher(self.path, self.format, option="--format", **kwargs)
            self.scorer.on_batch = console.advance_active
        return self.scorer

    def predict(self, inputs1: Any, inputs2: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
                prompt_type: Any = None, **kwargs: Any) -> Any:
        import numpy as np

        self.calls += 1
        queries = [text for batch in inputs1 for text in batch["text"]]
        documents = [text for batch in inputs2 for text in batch["text"]]
        if len(queries) != len(documents):
            raise EttinError(f"{task_metadata.name}: mteb gave {len(queries)} queries for {len(documents)} documents")
        scorer = self._scorer()
        out = np.empty(len(queries), dtype=np.float32)
        with console.progress(len(queries), f"{self.label} on {task_metadata.name}", unit="pairs") as bar:
            for start in range(0, len(queries), SCORE_CHUNK):
                stop = min(start + SCORE_CHUNK, len(queries))
                scores = np.asarray(scorer.score(queries[start:stop], documents[start:stop],
                                                 batch_size=self.batch_size), dtype=np.float32).reshape(-1)
                if scores.shape[0] != stop - start or not np.all(np.isfinite(scores)):
                    raise EttinError(f"{self.label}: bad scores (count or NaN) on {task_metadata.name}")
                out[start:stop] = scores
                bar.advance_to(stop)
        return out

    def release(self) -> None:
        self.scorer = None
        release_device_memory()


def model_revision(path: str, fmt: str, max_length: int | None, instruction: str | None) -> str:
    """What identifies a reranker's scores in mteb's cache: its weights and files, format, length cap and
    instruction. A retrained folder gets a new revision folder, so its stale results are never reused."""
    identity = local_model_identity(path)
    return hashlib.sha256(json.dumps([identity, fmt, max_length, instruction]).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- running


def _cache(folder: Path) -> Any:
    from mteb.cache import ResultCache

    return ResultCache(cache_path=folder)


def _main_score(result: Any) -> float:
    return float(result.get_score(getter=lambda s: s[MAIN_SCORE]))


def _retriever_meta_path(folder: Path) -> Path:
    return folder / "retriever.json"


def run_stage1(retriever: Retriever, task: Any, folder: Path, *, device: str, batch_size: int,
               embedders: dict[str, Any], ensure_loaded: Any) -> Path:
    """The retriever's predictions for `task` (computed once: reused by every model and every rerun)."""
    if retriever.kind == "predictions":
        path = retriever.path / f"{task.metadata.name}{PREDICTIONS_SUFFIX}"
        if not path.is_file():
            raise EttinError(f"--retriever {retriever.value}: no predictions for task {task.metadata.name} "
                             f"({path.name})")
        return path
    pred_dir = folder / "predictions"
    final = pred_dir / f"{task.metadata.name}{PREDICTIONS_SUFFIX}"
    if final.is_file():
        return final
    mteb = require_mteb()
    ensure_loaded()
    if retriever.value not in embedders:
        try:
            embedders[retriever.value] = _load_embedder(retriever, device)
        except EttinError:
            raise
        except Exception as exc:  # noqa: BLE001 - a missing package, bad weights, a network error: one line
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise EttinError(f"--retriever {retriever.value}: cannot load the embedder ({reason})") from None
    # mteb writes the predictions file in place; write it in a scratch folder and rename, so an interrupted
    # run never leaves half a file that a rerun would take as done.
    scratch = pred_dir / f".tmp-{task.metadata.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    logger.info("stage 1: %s retrieving for %s", retriever.label, task.metadata.name)
    result = mteb.evaluate(embedders[retriever.value], task, prediction_folder=scratch, cache=_cache(folder),
                           overwrite_strategy="always", encode_kwargs={"batch_size": batch_size},
                           co2_tracker=False, show_progress_bar=False)
    write_json_atomic(_retriever_meta_path(folder), {"name": result.model_name, "revision": result.model_revision,
                                                     "retriever": retriever.value})
    os.replace(scratch / f"{task.metadata.name}{PREDICTIONS_SUFFIX}", final)
    shutil.rmtree(scratch, ignore_errors=True)
    return final


def retriever_scores(folder: Path, task_names: Sequence[str]) -> dict[str, float]:
    """The retriever-only NDCG@10 per task, read back from the retriever folder's mteb cache."""
    meta_path = _retriever_meta_path(folder)
    if not meta_path.is_file():
        return {}
    names = json.loads(meta_path.read_text(encoding="utf-8"))
    cache = _cache(folder)
    out = {}
    for name in task_names:
        result = _cached_result(cache, name, names["name"], names["revision"])
        if result is not None:
            out[name] = _main_score(result)
    return out


def pairs_in(task: Any) -> int:
    """(query, candidate) pairs a converted task hands a reranker: its queries' top-ranked lists."""
    total = 0
    for subset in task.dataset.values():
        for split_name in task.eval_splits:
            split = subset[split_name]
            ranked = split["top_ranked"] or {}
            qrels = split["relevant_docs"]
            total += sum(len(ranked.get(q, [])) for q in split["queries"]["id"] if qrels.get(q))
    return total


def evaluate_mteb(config: MtebEvalConfig) -> dict[str, Any]:
    """Run the two stages for every (retriever, task, model) not already in the results; return the report.

    Work is task by task (a task's data is loaded once, only when something is missing): stage 1 for each
    retriever without predictions, then every model on each retriever's top-k. Before stage 2 the expected
    number of pairs is logged (from mteb's task metadata, before anything loads; exact per task once converted).
    """
    mteb = require_mteb()
    protocol = load_protocol()
    if not config.retrievers and config.benchmark == protocol["benchmark"]:
        config.retrievers = list(protocol["retrievers"])  # the release's six first stages
        logger.info("--retriever not given: the release's %d retrievers (%s)", len(config.retrievers),
                    ", ".join(config.retrievers))
    config.validate()
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise EttinError(f"--output {output}: exists and is not a directory")
    formats = expand_formats(config.models, config.formats)
    resolved = [resolve_model(m, f) for m, f in zip(config.models, formats, strict=True)]
    if config.instruction is not None and not any(is_judge_format(f) for _, f in resolved):
        raise EttinError("--instruction applies to judge formats (mxbai-v2, qwen3-reranker, a .yaml format) and "
                         "no MODEL is one")
    labels = model_labels(config.models)
    retrievers = [resolve_retriever(v, lab) for v, lab in zip(config.retrievers, model_labels(config.retrievers),
                                                             strict=True)]
    tasks = select_tasks(config.benchmark, config.tasks, config.max_queries)
    rerankers = [EttinReranker(m, path, fmt, label, model_revision(path, fmt, config.max_length, config.instruction),
                               device=config.device, dtype=config.dtype, attn=config.attn,
                               max_length=config.max_length, batch_size=config.batch_size,
                               instruction=config.instruction)
                 for m, (path, fmt), label in zip(config.models, resolved, labels, strict=True)]
    folders = {r.value: retriever_folder(output, r, config.top_k, config.max_queries) for r in retrievers}
    _log_plan(tasks, retrievers, rerankers, folders, config)

    device = resolve_device(config.device)
    embedders: dict[str, Any] = {}
    scores: dict[str, dict[str, dict[str, float]]] = {r.value: {rr.label: {} for rr in rerankers} for r in retrievers}
    for task in tasks:
        name = task.metadata.name
        loaded = [is_local_task(task) and task.data_loaded]

        def ensure_loaded(task: Any = task, loaded: list[bool] = loaded) -> None:
            if not loaded[0]:
                load_task(task, config.max_queries)
                loaded[0] = True

        predictions = {r.value: run_stage1(r, task, folders[r.value], device=device, batch_size=config.embed_batch_size,
                                           embedders=embedders, ensure_loaded=ensure_loaded) for r in retrievers}
        original_top_ranked = None
        for r in retrievers:
            cache = _cache(folders[r.value])
            todo = []
            for rr in rerankers:
                cached = _cached_result(cache, name, rr.mteb_model_meta)
                if cached is not None and not cached.get_missing_evaluations(task):
                    scores[r.value][rr.label][name] = _main_score(cached)
                else:
                    todo.append(rr)
            if not todo:
                continue
            ensure_loaded()
            if original_top_ranked is None:
                original_top_ranked = _top_ranked(task)
            task.convert_to_reranking(predictions[r.value], top_k=config.top_k)
            n_pairs = pairs_in(task)
            logger.info("stage 2: %s, top-%d of %s: %s pairs x %d model(s) = %s pairs", name, config.top_k, r.label,
                        f"{n_pairs:,}", len(todo), f"{n_pairs * len(todo):,}")
            for rr in todo:
                result = mteb.evaluate(rr, task, cache=cache, overwrite_strategy="only-missing",
                                       encode_kwargs={"batch_size": 32, "show_progress_bar": False},
                                       co2_tracker=False, show_progress_bar=False)
                if result.exceptions:
                    raise EttinError(f"{rr.label} on {name}: {result.exceptions[0].exception}")
                scores[r.value][rr.label][name] = _main_score(result.task_results[0])
        if original_top_ranked is not None:
            _restore_top_ranked(task, original_top_ranked)
        if loaded[0] and not is_local_task(task):
            task.unload_data()
    for rr in rerankers:
        rr.release()
    embedders.clear()
    release_device_memory()
    task_names = [t.metadata.name for t in tasks]
    report = build_report(config, task_names, retrievers, folders, rerankers, scores,
                          {r.value: retriever_scores(folders[r.value], task_names) for r in retrievers}, protocol)
    write_outputs(report, output)
    return report


def _cached_result(cache: Any, task_name: str, meta: Any, revision: str | None = None) -> Any:
    """A finished result from mteb's cache, or None. mteb writes result files in place, so a run killed while
    writing can leave a broken one: it is removed (and redone) rather than stopping every rerun."""
    try:
        return cache.load_task_result(task_name, meta, revision)
    except Exception as exc:  # noqa: BLE001 - broken JSON or a schema error: the result is not there
        path = cache.get_task_result_path(task_name, meta, revision)
        logger.warning("%s: unreadable mteb result (%s); computing it again", path, type(exc).__name__)
        path.unlink(missing_ok=True)
        return None


def _top_ranked(task: Any) -> dict[tuple[str, str], Any]:
    return {(s, sp): task.dataset[s][sp]["top_ranked"] for s in task.dataset for sp in task.dataset[s]}


def _restore_top_ranked(task: Any, saved: dict[tuple[str, str], Any]) -> None:
    """Undo `convert_to_reranking`, so a task object used again starts from full retrieval."""
    for (subset, split), value in saved.items():
        task.dataset[subset][split]["top_ranked"] = value
    task._top_k = max(task.k_values)


def _log_plan(tasks: Sequence[Any], retrievers: Sequence[Retriever], rerankers: Sequence[EttinReranker],
              folders: dict[str, Path], config: MtebEvalConfig) -> None:
    """Say, before any heavy work, how many pairs stage 2 will score at most (mteb's metadata query counts)."""
    counts = {}
    for task in tasks:
        n = len(task.beir.judged_queries) if is_local_task(task) else expected_queries(task)
        if n is not None and config.max_queries:
            n = min(n, config.max_queries)
        counts[task.metadata.name] = n
    known = [n for n in counts.values() if n is not None]
    per_pass = sum(known) * config.top_k
    total = per_pass * len(retrievers) * len(rerankers)
    unknown = [t for t, n in counts.items() if n is None]
    logger.info("MTEB %s: %d task(s), %s queries x top-%d x %d retriever(s) x %d model(s) = %s pairs at most%s",
                config.benchmark, len(tasks), f"{sum(known):,}", config.top_k, len(retrievers), len(rerankers),
                f"{total:,}", f" (query count unknown for {', '.join(unknown)})" if unknown else "")
    for r in retrievers:
        logger.info("  %s -> %s", r.label, folders[r.value])
