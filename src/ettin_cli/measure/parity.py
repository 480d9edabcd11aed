"""Parity of an exported reranker with its PyTorch fp32 original: proven on held-out pairs before it is kept.

An export (ONNX, quantized ONNX, OpenVINO) is a different program computing the same function; int8 is a
different function on purpose. Neither is taken on trust: both score the same held-out pairs as the PyTorch
fp32 model and the figures are compared with bounds that are data (`recipes/export.yaml`):

- `max_abs_diff`: the largest |score - reference score| over the pairs (fp32 exports: rounding only);
- `spearman`: Spearman's rho over all pairs (scipy), the order a reranker exists to produce;
- `ndcg@10` of the export and of the reference and their difference, when the pairs are a BEIR folder's BM25
  top-k (ir-measures through `evaluation.compute_metrics`): what a user of the reranker would see change.

A figure past its bound raises `ParityError` (exit 1): the caller writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError
from ettin_cli.io.beir import BeirDataset, load_beir
from ettin_cli.measure.bench import bench_pairs
from ettin_cli.measure.evaluation import compute_metrics, evaluated_qrels
from ettin_cli.measure.retrieval import bm25_search

EXIT_PARITY = 1
# Bound keys of the recipe -> (figure, direction): a figure must stay <= a `max_` bound, >= a `min_` bound.
BOUND_FIGURES = {"max_abs_diff": ("max_abs_diff", "max"), "min_spearman": ("spearman", "min"),
                 "max_ndcg_drop": ("ndcg_drop", "max")}


class ParityError(EttinError):
    """An export missed its parity bound: one line naming the export and the figure; exit code 1."""

    exit_code = EXIT_PARITY


@dataclass
class CheckSet:
    """Held-out (query, document) pairs to score, with their BEIR context when they came from a BEIR folder."""

    source: str
    pairs: list[tuple[str, str]]
    keys: list[tuple[str, str]] = field(default_factory=list)
    dataset: BeirDataset | None = None

    @property
    def has_qrels(self) -> bool:
        return self.dataset is not None and bool(self.keys)


def load_check_set(spec: str | os.PathLike[str], *, num_pairs: int, top_k: int, max_queries: int,
                   split: str = "test", seed: int = 0) -> CheckSet:
    """Pairs to check an export on: a BEIR folder's first `max_queries` judged queries with their BM25 top
    `top_k` (the pairs a reranker sees behind a retriever), or `num_pairs` pairs of a parquet/jsonl file with
    query/document columns (a seeded sample)."""
    path = Path(spec)
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        dataset = load_beir(path, split=split)
        queries = {qid: dataset.queries[qid] for qid in dataset.judged_queries[:max_queries]}
        if not queries:
            raise EttinError(f"{path}: no judged queries in the {split} split to check the export on")
        hits = bm25_search(dataset.corpus, queries, top_k)
        keys = [(qid, did) for qid in queries for did, _ in hits.get(qid, [])]
        pairs = [(dataset.queries[q], dataset.corpus[d]) for q, d in keys]
        return CheckSet(str(path), pairs, keys, dataset)
    if path.is_file():

        pairs = bench_pairs(path, num_pairs, seed=seed)
        return CheckSet(str(path), list(dict.fromkeys(pairs)))
    raise EttinError(f"--check-data {spec}: no such BEIR folder or pairs file (parquet/jsonl with query and "
                     "document columns)")


def _run(check: CheckSet, scores: Sequence[float]) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for (qid, did), score in zip(check.keys, scores, strict=True):
        run.setdefault(qid, {})[did] = float(score)
    return run


def ndcg_at_10(check: CheckSet, scores: Sequence[float]) -> float | None:
    """NDCG@10 of the reranked BM25 candidates (ir-measures), or None when the pairs have no qrels."""
    if not check.has_qrels:
        return None
    assert check.dataset is not None
    qrels = {q: g for q, g in evaluated_qrels(check.dataset).items() if q in {k[0] for k in check.keys}}
    return compute_metrics(qrels, _run(check, scores), top_k=10)["ndcg@10"]


def parity_figures(check: CheckSet, reference: Sequence[float], scores: Sequence[float],
                   reference_ndcg: float | None = None) -> dict[str, Any]:
    """max |diff|, Spearman and (with qrels) NDCG@10 of `scores` against the `reference` scores of `check`."""
    import numpy as np
    from scipy.stats import spearmanr

    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    ours = np.asarray(scores, dtype=np.float64).reshape(-1)
    if ref.shape != ours.shape:
        raise EttinError(f"parity: {ours.size} scores for {ref.size} reference scores")
    if not np.all(np.isfinite(ours)):
        raise ParityError("parity: the export returned NaN or infinite scores")
    figures: dict[str, Any] = {"pairs": int(ref.size), "max_abs_diff": float(np.max(np.abs(ours - ref))),
                               "spearman": float(spearmanr(ours, ref).statistic) if np.ptp(ref) > 0 else 1.0}
    if check.has_qrels:
        ref_ndcg = reference_ndcg if reference_ndcg is not None else ndcg_at_10(check, ref)
        ndcg = ndcg_at_10(check, ours)
        assert ref_ndcg is not None and ndcg is not None
        figures.update({"ndcg@10": ndcg, "reference_ndcg@10": ref_ndcg, "ndcg_drop": ref_ndcg - ndcg})
    return figures


def bound_violations(figures: Mapping[str, Any], bounds: Mapping[str, float]) -> list[str]:
    """Each figure past its bound, as `figure value > bound` text (empty: the export is within its bounds).

    A bound on NDCG@10 is skipped when the pairs carry no qrels (scored pairs); an unknown bound key is refused.
    """
    out = []
    for key, limit in bounds.items():
        if key not in BOUND_FIGURES:
            raise EttinError(f"export bounds: unknown bound '{key}' (known: {', '.join(BOUND_FIGURES)})")
        figure, direction = BOUND_FIGURES[key]
        value = figures.get(figure)
        if value is None:
            continue
        if direction == "max" and not value <= limit:
            out.append(f"{figure} {value:.3g} > {limit:g}")
        elif direction == "min" and not value >= limit:
            out.append(f"{figure} {value:.6g} < {limit:g}")
    return out


def parity_table(rows: Mapping[str, Mapping[str, Any]]) -> Any:
    """The printed table: one row per export with its figures, speed and verdict (a rich Table)."""
    from rich.table import Table

    table = Table(title="Export parity with the PyTorch fp32 model")
    for name in ("export", "file", "max |diff|", "Spearman", "NDCG@10", "ref NDCG@10", "pairs/s", "verdict"):
        table.add_column(name, justify="left" if name in ("export", "file", "verdict") else "right")

    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for name, row in rows.items():
        figures = row.get("parity", {})
        table.add_row(name, row.get("file", "-"), fmt(figures.get("max_abs_diff"), ".2e"),
                      fmt(figures.get("spearman"), ".5f"), fmt(figures.get("ndcg@10"), ".4f"),
                      fmt(figures.get("reference_ndcg@10"), ".4f"), fmt(row.get("pairs_per_second"), ",.1f"),
                      "ok" if row.get("passed") else "; ".join(row.get("violations", [])) or "-")
    return table
