"""`ettin mine --lists` at 1x and 10x the rows of a synthetic source: peak memory and pairs/s.

    .venv/bin/python benchmarks/bench_lists.py [--base-lists 400] [--list-length 128] [--base-documents 10000]

A synthetic source in the `lightonai/embeddings-fine-tuning` layout (configs `queries`, `documents`, `scores`,
split `synthetic`; ~200-byte documents, lists of `--list-length` ids drawn at random from the whole documents
table, two positives each) is built at 1x and at 10x (ten times the documents *and* the lists). Each size runs
`ettin mine --lists` twice in a fresh process: once cold (the `datasets` Arrow cache is built from the parquet
files), once warm (the cache exists: the steady state of a long or resumed run). For each run: peak RSS
(`ru_maxrss`, which also counts the memory-mapped Arrow pages the process touched), peak anonymous memory
(`RssAnon` sampled every 20 ms: what the process itself allocates), wall time and pairs/s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
anon = 0
while proc.poll() is None:
    try:
        for line in open(f"/proc/{proc.pid}/status"):
            if line.startswith("RssAnon:"):
                anon = max(anon, int(line.split()[1]))
    except OSError:
        pass
    time.sleep(0.02)
proc.wait()
usage = __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN)
print(json.dumps({"code": proc.returncode, "rss_kb": usage.ru_maxrss, "anon_kb": anon,
                  "seconds": time.perf_counter() - start, "stderr": proc.stderr.read().decode()[-2000:]}))
"""


def build_source(root: Path, n_docs: int, n_lists: int, length: int, seed: int = 0) -> Path:
    """The three configs of one synthetic source, parquet files in row groups, and the README configs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i:04d}" for i in range(5000)])
    words = vocab[rng.integers(0, len(vocab), size=(n_docs, 36))]
    docs = [" ".join(row) for row in words]
    queries = [" ".join(row) for row in vocab[rng.integers(0, len(vocab), size=(n_lists, 8))]]
    ids = rng.integers(0, n_docs, size=(n_lists, length))
    for part in ("queries", "documents", "scores"):
        (root / part).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"query_id": np.arange(n_lists), "query": queries}),
                   root / "queries" / "synthetic-00000.parquet", row_group_size=10_000)
    pq.write_table(pa.table({"document_id": np.arange(n_docs), "document": docs}),
                   root / "documents" / "synthetic-00000.parquet", row_group_size=10_000)
    offsets = np.arange(0, n_lists * length + 1, length, dtype=np.int32)
    scores = np.sort(rng.random((n_lists, length)).astype(np.float32), axis=1)[:, ::-1].ravel()
    pos_offsets = np.arange(0, n_lists * 2 + 1, 2, dtype=np.int32)
    table = pa.table({
        "query_id": np.arange(n_lists),
        "document_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids.ravel())),
        "scores": pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores)),
        "positive_ids": pa.ListArray.from_arrays(pa.array(pos_offsets), pa.array(ids[:, :2].ravel())),
    })
    pq.write_table(table, root / "scores" / "synthetic-00000.parquet", row_group_size=1_000)
    lines = ["---", "configs:"]
    for part in ("queries", "documents", "scores"):
        lines += [f"- config_name: {part}", "  data_files:", "  - split: synthetic",
                  f"    path: {part}/synthetic-*.parquet"]
    (root / "README.md").write_text("\n".join(lines + ["---", ""]), encoding="utf-8")
    return root


def run(source: Path, out: Path, cache: Path) -> dict:
    cmd = [sys.executable, "-m", "ettin_cli", "-q", "mine", "--lists", str(source), "--source", "synthetic",
           "--output", str(out), "--cache-dir", str(cache)]
    probe = subprocess.run([sys.executable, "-c", _PROBE, *cmd], capture_output=True, text=True, check=True)
    result = json.loads(probe.stdout)
    if result["code"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result['stderr']}")
    manifest = json.loads((out / ".ettin" / "manifest.json").read_text())  # the sharded-step layout (docs)
    result["pairs"] = manifest["totals"]["rows"]
    # the pairs phase alone (shards written), without start-up, loading and the check pass
    result["write_seconds"] = (max(s["finished_at"] for s in manifest["shards"])
                               - min(s["started_at"] for s in manifest["shards"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-lists", type=int, default=400)
    parser.add_argument("--list-length", type=int, default=128)
    parser.add_argument("--base-documents", type=int, default=10_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-lists-") as tmp:
        work = Path(tmp)
        for factor in (1, 10):
            source = build_source(work / f"src{factor}", args.base_documents * factor, args.base_lists * factor,
                                  args.list_length)
            cache = work / f"cache{factor}"
            for phase in ("cold", "warm"):
                out = work / f"out{factor}-{phase}"
                result = run(source, out, cache)
                rows.append((factor, phase, result))
                shutil.rmtree(out)
    base = {phase: r for f, phase, r in rows if f == 1}
    print(f"synthetic source: {args.base_documents:,} documents and {args.base_lists:,} lists of "
          f"{args.list_length} ids at 1x\n")
    print("| run | pairs | peak RSS | peak anonymous | wall | pairs/s (end to end) | pairs/s (writing) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for factor, phase, r in rows:
        growth = ""
        if factor == 10:
            b = base[phase]
            growth = (f" ({(r['rss_kb'] / b['rss_kb'] - 1) * 100:+.1f}%)",
                      f" ({(r['anon_kb'] / b['anon_kb'] - 1) * 100:+.1f}%)")
        g_rss, g_anon = growth or ("", "")
        print(f"| {factor}x, {phase} | {r['pairs']:,} | {r['rss_kb'] / 1024:,.0f} MB{g_rss} | "
              f"{r['anon_kb'] / 1024:,.0f} MB{g_anon} | {r['seconds']:.1f} s | {r['pairs'] / r['seconds']:,.0f} | "
              f"{r['pairs'] / r['write_seconds']:,.0f} |")


if __name__ == "__main__":
    main()
