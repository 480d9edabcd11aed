"""Evaluation data: BEIR folders (offline) and NanoBEIR from the Hub with its precomputed BM25 candidates.

`load_eval_data` resolves every `--data` value of `ettin eval`, `ettin bench` and training's in-loop evaluator,
so the three read the same datasets the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError
from ettin_cli.io import kinds
from ettin_cli.io.beir import BeirDataset, load_beir
from ettin_cli.measure.retrieval import SearchResults

# dataset name -> query id -> first-stage hits, best first
Candidates = dict[str, SearchResults]

NANOBEIR_ID = "sentence-transformers/NanoBEIR-en"
# The 13 NanoBEIR sets (recipes/shared.yaml: `benchmark: nanobeir  # 13 sets`), short name -> split name.
NANOBEIR_SETS = {
    "climatefever": "NanoClimateFEVER",
    "dbpedia": "NanoDBPedia",
    "fever": "NanoFEVER",
    "fiqa2018": "NanoFiQA2018",
    "hotpotqa": "NanoHotpotQA",
    "msmarco": "NanoMSMARCO",
    "nfcorpus": "NanoNFCorpus",
    "nq": "NanoNQ",
    "quoraretrieval": "NanoQuoraRetrieval",
    "scidocs": "NanoSCIDOCS",
    "arguana": "NanoArguAna",
    "scifact": "NanoSciFact",
    "touche2020": "NanoTouche2020",
}

def _unique_names(datasets: Sequence[BeirDataset]) -> None:
    names = [d.name for d in datasets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EttinError(f"two evaluation datasets are both named '{dupes[0]}': give folders with distinct names")


def load_nanobeir(names: Sequence[str] | None = None, dataset_id: str = NANOBEIR_ID,
                  top_k: int = 100) -> tuple[list[BeirDataset], Candidates]:
    """NanoBEIR sets from the Hub with their precomputed BM25 candidates (the published evaluation's first stage).

    Offline (no network, or HF_HUB_OFFLINE=1 without a cached copy) this fails with a one-line error that says
    to use a BEIR directory instead.
    """
    wanted = [n.lower() for n in names] if names else list(NANOBEIR_SETS)
    unknown = [n for n in wanted if n not in NANOBEIR_SETS]
    if unknown:
        raise EttinError(f"unknown NanoBEIR set '{unknown[0]}': choose from {', '.join(NANOBEIR_SETS)}")
    datasets: list[BeirDataset] = []
    candidates: Candidates = {}
    for short in wanted:
        split = NANOBEIR_SETS[short]
        corpus_rows = _hub_subset(dataset_id, "corpus", split)
        query_rows = _hub_subset(dataset_id, "queries", split)
        qrel_rows = _hub_subset(dataset_id, "qrels", split)
        bm25_rows = _hub_subset(dataset_id, "bm25", split)
        corpus = {str(r["_id"]): _nano_text(r) for r in corpus_rows}
        queries = {str(r["_id"]): str(r["text"]) for r in query_rows}
        qrels: dict[str, dict[str, int]] = {}
        for r in qrel_rows:
            dids = r["corpus-id"] if isinstance(r["corpus-id"], list) else [r["corpus-id"]]
            grade = int(r["score"]) if r.get("score") is not None else 1  # NanoBEIR qrels are binary
            for did in dids:
                qrels.setdefault(str(r["query-id"]), {})[str(did)] = grade
        queries = {q: t for q, t in queries.items() if q in qrels}
        hits: SearchResults = {}
        for r in bm25_rows:
            ids = [str(d) for d in r["corpus-ids"]][:top_k]
            # Only the BM25 order is published; a descending pseudo-score keeps that order in the run.
            hits[str(r["query-id"])] = [(did, float(len(ids) - rank)) for rank, did in enumerate(ids)]
        datasets.append(BeirDataset(name=split, corpus=corpus, queries=queries, qrels=qrels))
        candidates[split] = hits
    return datasets, candidates


def _nano_text(row: Mapping[str, Any]) -> str:
    title = str(row.get("title") or "").strip()
    text = str(row.get("text") or "")
    return f"{title}\n{text}" if title else text


def _hub_subset(dataset_id: str, subset: str, split: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    try:
        return list(load_dataset(dataset_id, subset, split=split))
    except Exception as exc:  # noqa: BLE001 - network/offline/cache failures all mean "cannot reach NanoBEIR"
        offline = " (the Hub is offline here: use --data DIR with a BEIR-layout folder)"
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise EttinError(f"NanoBEIR: cannot load {dataset_id} subset '{subset}' split '{split}' from the Hub: "
                         f"{reason}{offline}") from None


def load_eval_data(spec: str | os.PathLike[str] | BeirDataset | Sequence[Any],
                   top_k: int = 100, split: str = "test") -> tuple[list[BeirDataset], Candidates]:
    """Resolve `--data` values into datasets (and the candidates that come with them, for NanoBEIR).

    Accepted: a `BeirDataset`; a BEIR folder (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`); a folder
    whose sub-folders are BEIR folders (one dataset each); `nanobeir` or `nanobeir:msmarco,nq`; or a list of these.
    `split` names the qrels file of BEIR folders: `dev` picks checkpoints, `test` reports, so the two never share
    queries.
    """
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    datasets: list[BeirDataset] = []
    candidates: Candidates = {}
    for item in items:
        if isinstance(item, BeirDataset):
            datasets.append(item)
            continue
        text = str(item)
        if text.lower() == "nanobeir" or text.lower().startswith("nanobeir:"):
            names = [n for n in text.split(":", 1)[1].split(",") if n] if ":" in text else None
            found, cands = load_nanobeir(names, top_k=top_k)
            datasets += found
            candidates.update(cands)
            continue
        root = Path(text)
        kinds.require_kind(root, kinds.BEIR, "--data")
        if not root.is_dir():
            raise EttinError(f"--data {text}: not a directory (expected a BEIR layout folder, or 'nanobeir')")
        if (root / "corpus.jsonl").is_file():
            datasets.append(load_beir(root, split))
            continue
        subs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "corpus.jsonl").is_file())
        if not subs:
            raise EttinError(f"{root}: neither a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) "
                             "nor a folder of BEIR folders")
        datasets += [load_beir(p, split) for p in subs]
    if not datasets:
        raise EttinError("no evaluation data given")
    _unique_names(datasets)
    return datasets, candidates


