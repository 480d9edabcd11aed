"""Inference throughput, measured the way the published Ettin tables are (../shared/RECIPE.md).

Pairs/second on (query, document) pairs of real text cut at each model's own max length (as loaded; `max_length`
overrides it for every model, so a student trained at 128 is not timed at 512 tokens it never sees): the batch
size is found by
doubling from 8 until out of memory (GPU) or, on CPU, until throughput stops rising or a memory limit is hit;
then three timed passes over the same pairs at the best batch size, median kept; peak memory is
`torch.cuda.max_memory_allocated` on GPU and the process's peak RSS on CPU (reset before the passes).

A sweep over dtype, attention and padded vs unpadded inputs gives the ablation table (fp32+SDPA, bf16+SDPA,
bf16+FA2 padded, bf16+FA2 unpadded). A setting the hardware cannot run is not attempted: it is listed with
the reason `hardware.resolve_precision` gives (no GPU, no flash-attn, pre-Ampere GPU).

Models load through `teacher.load_teacher`, so students, cross-encoders, bi-encoders and the mxbai-v2 teacher
are timed through the same `.score()` the rest of the pipeline uses (length-sorted batches included).
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ettin_cli.core import console
from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import write_json_atomic
from ettin_cli.core.hardware import describe
from ettin_cli.core.memory import is_oom, release_device_memory
from ettin_cli.io.beir import load_beir
from ettin_cli.label.teacher import is_judge_format, load_teacher
from ettin_cli.measure.charts import bench_chart
from ettin_cli.measure.eval_data import load_nanobeir
from ettin_cli.measure.evaluation import expand_formats, model_labels, resolve_model
from ettin_cli.measure.settings import Setting, sync

DEFAULT_DATA = "nanobeir:nq"  # natural-questions pairs, as in the published throughput table


# ---------------------------------------------------------------------------------------------------- pairs


def bench_pairs(data: str | os.PathLike[str] = DEFAULT_DATA, num_pairs: int = 4096, *, seed: int = 0,
                docs_per_query: int = 4) -> list[tuple[str, str]]:
    """`num_pairs` (query, document) pairs of real text, the same for the same inputs and seed.

    `data`: a BEIR folder (each query with its judged documents, then random corpus documents, up to
    `docs_per_query`), `nanobeir:NAME` (each query with its published BM25 candidates: the pairs a reranker
    sees in production; `nanobeir:nq` is the default natural-questions set), or a `.parquet`/`.jsonl` file
    with `query` and `document` columns (a seeded sample of its rows). Pairs repeat only if the data has
    fewer than `num_pairs`.
    """
    if num_pairs < 1:
        raise EttinError(f"--num-pairs must be at least 1, got {num_pairs}")
    rng = random.Random(seed)
    text = str(data)
    if text.lower().startswith("nanobeir"):

        names = [n for n in text.split(":", 1)[1].split(",") if n] if ":" in text else ["nq"]
        datasets, candidates = load_nanobeir(names)
        base = []
        for ds in datasets:
            for qid, hits in candidates[ds.name].items():
                if qid in ds.queries:
                    base += [(ds.queries[qid], ds.corpus[did]) for did, _ in hits[:docs_per_query]
                             if did in ds.corpus]
        rng.shuffle(base)
    else:
        path = Path(text)
        if path.is_dir():
            base = _beir_pairs(path, rng, docs_per_query)
        elif path.is_file():
            base = _file_pairs(path)
            rng.shuffle(base)
        else:
            raise EttinError(f"--data {text}: no such file or folder (a BEIR folder, a parquet/jsonl file of "
                             "query/document pairs, or nanobeir:NAME)")
    if not base:
        raise EttinError(f"--data {text}: no (query, document) pairs in it")
    return [base[i % len(base)] for i in range(num_pairs)]


def _beir_pairs(path: Path, rng: random.Random, docs_per_query: int) -> list[tuple[str, str]]:
    ds = load_beir(path, require_qrels=False)
    doc_ids = list(ds.corpus)
    query_ids = list(ds.queries)
    rng.shuffle(query_ids)
    pairs = []
    for qid in query_ids:
        judged = [d for d, g in ds.qrels.get(qid, {}).items() if g > 0][:docs_per_query]
        picks = list(judged)
        while len(picks) < min(docs_per_query, len(doc_ids)):
            did = doc_ids[rng.randrange(len(doc_ids))]
            if did not in picks:
                picks.append(did)
        pairs += [(ds.queries[qid], ds.corpus[did]) for did in picks]
    return pairs


def _file_pairs(path: Path) -> list[tuple[str, str]]:
    import pyarrow as pa

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif suffix in (".jsonl", ".json"):
            import pyarrow.json as pj

            table = pj.read_json(path)
        else:
            raise EttinError(f"--data {path}: unsupported file type '{suffix}' (use .parquet or .jsonl)")
    except (pa.ArrowInvalid, OSError) as exc:
        raise EttinError(f"--data {path}: cannot read it ({str(exc).splitlines()[0]})") from None
    for column in ("query", "document"):
        if column not in table.column_names:
            raise EttinError(f"--data {path}: no '{column}' column (columns: {', '.join(table.column_names)})")
    queries = table.column("query").to_pylist()
    documents = table.column("document").to_pylist()
    for row, (q, d) in enumerate(zip(queries, documents, strict=True)):
        if not isinstance(q, str) or not q.strip():
            raise EttinError(f"--data {path} row {row}: column 'query' is empty or not text")
        if not isinstance(d, str):
            raise EttinError(f"--data {path} row {row}: column 'document' is not text")
    return list(zip(queries, documents, strict=True))


# ------------------------------------------------------------------------------------------- pair lengths


def pair_lengths(scorer: Any, pairs: Sequence[tuple[str, str]]) -> tuple[Any, Any]:
    """Uncut token count of each pair as `scorer` builds its inputs, and whether `scorer` cuts it.

    The count decides what a throughput number means (pairs of 60 tokens and of 500 are different workloads),
    so it is measured with the model's own tokenizer: a cross-encoder's pair encoding (specials included); for a
    bi-encoder, the longer of the two texts (each is its own sequence, cut at max length on its own); for a judge
    format, its template plus the query piece and the document piece (cut when the query passes its share of
    max length or the whole passes max length, as `encode_pairs` does).
    """
    import numpy as np

    queries = [q for q, _ in pairs]
    documents = [d for _, d in pairs]
    tokenizer, limit = scorer.tokenizer, int(scorer.max_length)
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    if getattr(scorer, "format", None) == "bi-encoder":
        q = np.array([len(x) for x in tokenizer(queries, verbose=False)["input_ids"]])
        d = np.array([len(x) for x in tokenizer(documents, verbose=False)["input_ids"]])
        return np.maximum(q, d), (q > limit) | (d > limit)
    judge = getattr(scorer, "judge", None)
    if judge is not None:
        q_texts = [judge.query_text(x, scorer.instruction) for x in queries]
        d_texts = [judge.document_text(x) for x in documents]
        q = np.array([len(x) for x in tokenizer(q_texts, add_special_tokens=False, verbose=False)["input_ids"]])
        d = np.array([len(x) for x in tokenizer(d_texts, add_special_tokens=False, verbose=False)["input_ids"]])
        total = scorer.fixed_length + q + d
        return total, (q > scorer.query_limit) | (total > limit)
    lengths = np.array([len(x) for x in tokenizer(queries, documents, verbose=False)["input_ids"]])
    return lengths, lengths > limit


def length_summary(lengths: Any, cut: Any, max_length: int) -> dict[str, Any]:
    """Median, p90, p99 and max of the uncut pair lengths, and how many pairs are cut at `max_length`."""
    import numpy as np

    lengths = np.asarray(lengths)
    if lengths.size == 0:
        return {"max_length": int(max_length), "pairs": 0, "cut": 0, "cut_share": 0.0}
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    return {"max_length": int(max_length), "pairs": int(lengths.size), "median": float(p50), "p90": float(p90),
            "p99": float(p99), "max": int(lengths.max()), "cut": int(np.sum(cut)),
            "cut_share": float(np.mean(cut))}


# --------------------------------------------------------------------------------------------------- memory


def reset_peak_memory(device: str) -> None:
    """Start a fresh peak: CUDA's allocator counter, or Linux's peak RSS (VmHWM, via /proc/self/clear_refs)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass  # not Linux: the peak stays the process-lifetime peak (documented in the JSON `memory_kind`)


def peak_memory_bytes(device: str) -> tuple[int, str]:
    """Peak memory since `reset_peak_memory` and what it measures."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "peak_rss"
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "peak_rss_lifetime"


def default_memory_limit() -> int | None:
    """80% of physical memory: the CPU batch search stops before the machine starts swapping."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.8)
    except (ValueError, OSError, AttributeError):
        return None


def _release(device: str) -> None:
    release_device_memory()


# ---------------------------------------------------------------------------------------------- measuring


def set_unpadded(scorer: Any, unpadded: bool) -> bool:
    """Switch a loaded scorer between padded and unpadded (packed) batches; return what is now in effect.

    Judge teachers (mxbai-v2, qwen3-reranker, ...) pack pairs into one row themselves (`packed`); Sentence
    Transformers models (students, cross-encoders, bi-encoders) pack through their Transformer module's
    `unpad_inputs`, which only takes effect under Flash Attention 2.
    """
    if hasattr(scorer, "packed"):
        scorer.packed = bool(unpadded)
        return scorer.packed
    model = getattr(scorer, "model", None)
    module = model[0] if model is not None and len(model) else None
    if module is None or not hasattr(module, "unpad_inputs"):
        return False
    module.unpad_inputs = bool(unpadded)
    return bool(getattr(module, "can_flatten_inputs", False))


def _timed_score(scorer: Any, pairs: Sequence[tuple[str, str]], batch_size: int, device: str) -> float:
    queries = [q for q, _ in pairs]
    documents = [d for _, d in pairs]
    sync(device)
    start = time.perf_counter()
    scorer.score(queries, documents, batch_size=batch_size)
    sync(device)
    return time.perf_counter() - start


def find_batch_size(scorer: Any, pairs: Sequence[tuple[str, str]], device: str, *, start: int = 8,
                    max_batch: int | None = None, memory_limit: int | None = None,
                    min_probe_pairs: int = 256) -> tuple[int, list[dict[str, Any]]]:
    """Double the batch size from `start`; return the fastest one and every probe.

    Each probe warms up on one batch, then times `max(2 * batch, min_probe_pairs)` pairs (at most all of
    them). It stops on out-of-memory (any device), at `max_batch`, once a batch would exceed the pairs, and,
    on CPU only, when throughput stops rising or the peak RSS passes `memory_limit`. A GPU keeps doubling
    until out of memory, as in the published method.
    """
    if start < 1:
        raise EttinError(f"--start-batch-size must be at least 1, got {start}")
    on_gpu = device.startswith("cuda")
    probes: list[dict[str, Any]] = []
    best_rate, best_bs = 0.0, None
    bs = start
    while max_batch is None or bs <= max_batch:
        n = min(len(pairs), max(2 * bs, min_probe_pairs))
        splits_before = getattr(getattr(scorer, "stats", None), "oom_splits", 0)
        reset_peak_memory(device)
        try:
            _timed_score(scorer, pairs[:bs], bs, device)  # warm-up at this shape
            seconds = _timed_score(scorer, pairs[:n], bs, device)
        except (RuntimeError, MemoryError, EttinError) as exc:
            if not is_oom(exc):
                raise
            _release(device)
            probes.append({"batch_size": bs, "status": "out of memory"})
            break
        if getattr(getattr(scorer, "stats", None), "oom_splits", 0) > splits_before:
            # The scorer survived by splitting the batch: this batch size does not fit.
            probes.append({"batch_size": bs, "status": "out of memory"})
            _release(device)
            break
        rate = n / seconds
        peak, _ = peak_memory_bytes(device)
        probe = {"batch_size": bs, "pairs": n, "pairs_per_second": rate, "peak_memory_mb": peak / 2**20,
                 "status": "ok"}
        if not on_gpu and memory_limit is not None and peak > memory_limit:
            probe["status"] = "memory limit"
            probes.append(probe)
            break
        probes.append(probe)
        improved = rate > best_rate
        if improved:
            best_rate, best_bs = rate, bs
        if not on_gpu and not improved:
            break  # CPU: throughput stopped rising
        if bs >= len(pairs):
            break  # a bigger batch would not be filled
        bs *= 2
    if best_bs is None:
        raise EttinError(f"no batch size from {start} fits ({probes[-1]['status'] if probes else 'none tried'}); "
                         "lower --start-batch-size or --max-length")
    return best_bs, probes


def measure(scorer: Any, pairs: Sequence[tuple[str, str]], device: str, *, passes: int = 3, start_batch: int = 8,
            max_batch: int | None = None, memory_limit: int | None = None,
            batch_size: int | None = None) -> dict[str, Any]:
    """Batch-size search (unless `batch_size` is fixed), then `passes` timed passes; the median is kept."""
    if passes < 1:
        raise EttinError(f"--passes must be at least 1, got {passes}")
    if batch_size is None:
        batch_size, probes = find_batch_size(scorer, pairs, device, start=start_batch, max_batch=max_batch,
                                             memory_limit=memory_limit)
    else:
        probes = []
        _timed_score(scorer, pairs[:batch_size], batch_size, device)  # warm-up
    splits_before = getattr(getattr(scorer, "stats", None), "oom_splits", 0)
    reset_peak_memory(device)
    rates = []
    with console.progress(passes * len(pairs), "Timed passes", unit="pairs") as bar:
        for _ in range(passes):
            rates.append(len(pairs) / _timed_score(scorer, pairs, batch_size, device))
            bar.advance(len(pairs))
    peak, kind = peak_memory_bytes(device)
    return {
        "batch_size": batch_size,
        "pairs": len(pairs),
        "passes": rates,
        "pairs_per_second": statistics.median(rates),
        "peak_memory_mb": peak / 2**20,
        "memory_kind": kind,
        "oom_splits": getattr(getattr(scorer, "stats", None), "oom_splits", 0) - splits_before,
        "batch_search": probes,
    }


def run_bench(
    models: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    settings: Sequence[tuple[Setting, str | None]],
    *,
    formats: Sequence[str] = ("auto",),
    device: str = "cpu",
    max_length: int | None = None,
    passes: int = 3,
    start_batch: int = 8,
    max_batch: int | None = None,
    memory_limit: int | None = None,
    batch_size: int | None = None,
    instruction: str | None = None,
) -> dict[str, Any]:
    """Time every model under every setting (skipped settings are recorded with their reason, not run).

    `max_length` None keeps each model's own max length (as loaded); `report["pair_lengths"]` has, per model,
    the token-length distribution of the pairs and how many its max length cuts. `instruction` replaces the
    default instruction of judge-format models (its length is part of their cost).
    """

    models = [str(m) for m in models]
    if not models:
        raise EttinError("give at least one MODEL to benchmark")
    if max_length is not None and max_length < 8:
        raise EttinError(f"--max-length must be at least 8, got {max_length}")

    formats = expand_formats(models, formats)

    # Pre-flight: every model resolves (and has a known format) before any timing starts.
    resolved = [resolve_model(model, fmt) for model, fmt in zip(models, formats, strict=True)]
    if instruction is not None and not any(is_judge_format(f) for _, f in resolved):
        raise EttinError("--instruction applies to judge formats (mxbai-v2, qwen3-reranker, a .yaml format) and "
                         "no MODEL is one")

    rows: list[dict[str, Any]] = []
    lengths: dict[str, dict[str, Any]] = {}
    for model, label, (path, fmt) in zip(models, model_labels(models), resolved, strict=True):
        for setting, reason in settings:
            row: dict[str, Any] = {"model": label, "source": model, "format": fmt, "setting": setting.label,
                                   **asdict(setting)}
            if reason is not None:
                rows.append({**row, "status": "skipped", "reason": reason})
                console.logger.info("%s [%s]: skipped (%s)", label, setting.label, reason)
                continue
            scorer = load_teacher(path, fmt, device=device, dtype=setting.dtype, attn=setting.attn,
                                  max_length=max_length, option="--format",
                                  instruction=instruction if is_judge_format(fmt) else None)
            if label not in lengths:
                lengths[label] = length_summary(*pair_lengths(scorer, pairs), scorer.max_length)
                _log_lengths(label, lengths[label])
            row["max_length"] = int(scorer.max_length)
            active = set_unpadded(scorer, setting.unpadded)
            if active != setting.unpadded:
                rows.append({**row, "status": "skipped",
                             "reason": "unpadded inputs are not available for this model/attention" if
                             setting.unpadded else "this model cannot run padded batches here"})
                del scorer
                _release(device)
                continue
            console.logger.info("%s [%s]: searching the batch size, then %d timed passes", label, setting.label,
                                passes)
            result = measure(scorer, pairs, device, passes=passes, start_batch=start_batch, max_batch=max_batch,
                             memory_limit=memory_limit, batch_size=batch_size)
            rows.append({**row, "status": "ok", **result})
            del scorer
            _release(device)
    return {
        "device": device,
        "max_length": max_length,
        "pairs": len(pairs),
        "passes": passes,
        "hardware": describe(),
        "pair_lengths": lengths,
        "results": rows,
    }


def _log_lengths(label: str, summary: dict[str, Any]) -> None:
    console.logger.info("%s: pair lengths (tokens) median %.0f, p90 %.0f, p99 %.0f, max %d; %d of %d pairs cut at "
                        "max length %d", label, summary["median"], summary["p90"], summary["p99"], summary["max"],
                        summary["cut"], summary["pairs"], summary["max_length"])


def _cap_text(report: dict[str, Any]) -> str:
    if report.get("max_length") is not None:
        return f"cut at {report['max_length']} tokens"
    caps = sorted({s["max_length"] for s in report.get("pair_lengths", {}).values()})
    return f"cut at each model's max length ({', '.join(map(str, caps))})" if caps else "cut at each model's max length"


def lengths_table(report: dict[str, Any]) -> Any:
    """A rich table of the benchmarked pairs' token lengths per model: what the throughput numbers are made of."""
    from rich.table import Table

    table = Table(title=f"Pair lengths in tokens ({report['pairs']} pairs, uncut; each model's tokenizer)")
    for name in ("model", "max length", "median", "p90", "p99", "max", "cut at max length"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for label, s in report.get("pair_lengths", {}).items():
        table.add_row(label, str(s["max_length"]), f"{s['median']:.0f}", f"{s['p90']:.0f}", f"{s['p99']:.0f}",
                      str(s["max"]), f"{s['cut']} ({100 * s['cut_share']:.1f}%)")
    return table


def bench_table(report: dict[str, Any]) -> Any:
    """A rich table: one row per model and setting; skipped settings show their reason."""
    from rich.table import Table

    table = Table(title=f"Throughput on {report['device']}: {report['pairs']} pairs {_cap_text(report)}, median of "
                        f"{report['passes']} passes")
    for name, justify in (("model", "left"), ("setting", "left"), ("batch", "right"), ("pairs/s", "right"),
                          ("passes (pairs/s)", "right"), ("peak memory", "right"), ("note", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in report["results"]:
        if row["status"] != "ok":
            table.add_row(row["model"], row["setting"], "-", "-", "-", "-", f"skipped: {row['reason']}")
            continue
        kind = "GPU" if row["memory_kind"].startswith("cuda") else "RSS"
        note = f"{row['oom_splits']} OOM splits" if row.get("oom_splits") else ""
        table.add_row(row["model"], row["setting"], str(row["batch_size"]), f"{row['pairs_per_second']:,.1f}",
                      " / ".join(f"{r:,.1f}" for r in row["passes"]), f"{row['peak_memory_mb']:,.0f} MB {kind}",
                      note)
    return table


def write_bench(report: dict[str, Any], output_dir: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """`bench.json` and, when at least one setting ran, `bench.png` under `output_dir` (atomic writes)."""

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise EttinError(f"--output {out}: exists and is not a directory")
    png = None
    if any(r["status"] == "ok" for r in report["results"]):
        png = out / "bench.png"
        bench_chart(report["results"], png, title=f"Throughput on {report['device']} ({_cap_text(report)})")
    write_json_atomic(out / "bench.json", report)
    return out / "bench.json", png
