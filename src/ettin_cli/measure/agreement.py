"""How far a reranker's scores agree with a reference's, and the loud flags for one that did not earn its place.

Shared by `ettin eval` (`--reference`) and `ettin train`'s closing check: MSE and per-query Spearman against the
reference, beside the reference scores' variance (the MSE of predicting their mean), so an MSE is never read
without its baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ettin_cli.core import console
from ettin_cli.core.errors import EttinError

Run = dict[str, dict[str, float]]


def score_agreement(runs: Mapping[str, Run], reference: Mapping[str, Run]) -> dict[str, float]:
    """MSE of raw scores and mean per-query Spearman rho against `reference`, over the pairs both scored."""
    import numpy as np
    from scipy.stats import spearmanr

    ours, theirs, rhos = [], [], []
    for name, run in runs.items():
        ref_run = reference.get(name, {})
        for qid, docs in run.items():
            ref_docs = ref_run.get(qid, {})
            shared = [d for d in docs if d in ref_docs]
            a = [docs[d] for d in shared]
            b = [ref_docs[d] for d in shared]
            ours += a
            theirs += b
            if len(shared) > 2 and np.ptp(a) > 0 and np.ptp(b) > 0:
                rhos.append(float(spearmanr(a, b).statistic))
    if not ours:
        raise EttinError("no (query, document) pair was scored by both a model and the --reference model")
    ref_scores = np.asarray(theirs, dtype=np.float64)
    diff = np.asarray(ours, dtype=np.float64) - ref_scores
    mse = float(np.mean(diff**2))
    # The variance of the reference's scores is the MSE of always predicting their mean: a model at or above
    # it has learned nothing of the reference's order, whatever its MSE looks like on its own.
    variance = float(np.var(ref_scores))
    return {"mse": mse, "spearman": float(np.mean(rhos)) if rhos else float("nan"), "pairs": len(ours),
            "reference_variance": variance, "mse_over_variance": mse / variance if variance > 0 else float("inf")}


def quality_flags(entries: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Loud flags for rerankers that did not earn their place: a model label -> the problems found.

    `below_retriever`: its mean NDCG@10 is under the first-stage retriever's (reranking made things worse).
    `mse_above_variance`: its MSE to the reference is above the reference scores' variance, i.e. worse than
    predicting the reference's mean score for every pair. The retriever entry must come first.
    """
    flags: dict[str, list[str]] = {}
    base = entries[0]["mean"].get("ndcg@10") if entries and entries[0].get("role") == "retriever" else None
    for entry in entries:
        if entry.get("role") != "reranker":
            continue
        problems = []
        if base is not None and entry["mean"]["ndcg@10"] < base:
            problems.append("below_retriever")
        agree = entry.get("agreement")
        if agree and agree.get("mse", 0.0) > agree.get("reference_variance", float("inf")):
            problems.append("mse_above_variance")
        if problems:
            flags[entry["model"]] = problems
    return flags


def apart(a: float, b: float, decimals: int = 4) -> tuple[str, str]:
    """`a` and `b` printed with the fewest decimals (at least `decimals`) that show them different.

    A warning that one number is above another must not print "0.0200 is ABOVE 0.0200".
    """
    for d in range(decimals, 16):
        x, y = f"{a:.{d}f}", f"{b:.{d}f}"
        if x != y:
            return x, y
    return repr(float(a)), repr(float(b))


def warn_quality(entries: Sequence[Mapping[str, Any]], flags: Mapping[str, list[str]], *,
                 baseline: str = "the retriever's", why: str = "reranking with it makes the ranking worse") -> None:
    """One warning line per flagged model, with the numbers that flag it.

    `baseline` / `why` word the NDCG comparison (`ettin train` compares with the student before training).
    """
    base = entries[0]["mean"].get("ndcg@10") if entries else None
    by_model = {e["model"]: e for e in entries}
    for model, problems in flags.items():
        entry = by_model[model]
        if "below_retriever" in problems:
            ours, theirs = apart(entry["mean"]["ndcg@10"], base)
            console.logger.warning(f"{model}: NDCG@10 {ours} is BELOW {baseline} {theirs}: {why}")
        if "mse_above_variance" in problems:
            agree = entry["agreement"]
            mse, variance = apart(agree["mse"], agree["reference_variance"])
            console.logger.warning(
                f"{model}: MSE to {agree['reference']} {mse} is ABOVE the variance of its scores "
                f"{variance}: worse than predicting their mean for every pair")
