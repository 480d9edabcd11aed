"""Domain adaptation benchmark (issue #26): adapt the demo-trained student to Cranfield, three ways, equal steps.

One command (CPU minutes; run it under the shared lock on a shared machine):

    .venv/bin/python benchmarks/bench_adapt.py --student runs/demo/student/final [--steps 40] [--quick]

Set-up, all through the production CLI (`ettin mine/score/train/eval` as subprocesses), with the pieces of
benchmarks/bench_distill.py (the query split of Cranfield, the subprocess runner):

- Cranfield (../shared/data/cranfield, BEIR layout) is split by queries: the first `--heldout` judged queries are
  held out for evaluation only; the other queries are the domain's training queries, labelled by the teacher
  alone (all-MiniLM-L6-v2 as a bi-encoder, the demo's teacher; BM25 top-`--train-top-k`, no positives added).
- Three rows, each `ettin train --recipe recipes/adapt.yaml` for the same `--steps` (one change per row: where
  the model starts):
    own-head  --base-model STUDENT            (the student continues from its own trained head)
    new-head  --base-model STUDENT, model.head: new (its encoder, a new head as the demo builds it)
    bare      --base-model all-MiniLM-L6-v2   (the bare encoder the demo student started from, a new head)
  The new heads are the demo recipe's (mean pooling, output layer started at the targets' mean).
- One `ettin eval` (BM25 top-`--top-k` reranked) of every row's start (`initial/`) and end (`final/`) on the
  held-out Cranfield queries (the domain) and on the demo corpus's held-out test queries (what it forgot).

Printed: one table (row, steps, the trainer's train time, NDCG@10 before/after on each set) and the teacher's
line. A rerun into the same OUT reuses finished training runs and evaluations.
Everything is written to OUT/bench_adapt.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distill import ettin, prepare_run, split_cranfield  # noqa: E402 - the sibling benchmark's pieces

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "src" / "ettin_cli" / "demo_data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The demo recipe's new head (train/student.py): mean pooling for MiniLM, output layer at the targets' mean.
NEW_HEAD = {"pooling": "mean", "head_init": "target-mean"}
# (row, where it starts, base model ("student" or "minilm"), model: overrides of recipes/adapt.yaml)
ROWS = [
    ("own-head", "the demo student, its own trained head kept (adapt.yaml as shipped)", "student", {}),
    ("new-head", "the demo student's encoder, a new head (model.head: new)", "student", {"head": "new", **NEW_HEAD}),
    ("bare", "the bare all-MiniLM-L6-v2 encoder, a new head", "minilm", {"head": "auto", **NEW_HEAD}),
]


def write_recipe(path: Path, model: dict[str, Any]) -> None:
    """recipes/adapt.yaml with `model` keys replaced."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "adapt.yaml").read_text())
    recipe.setdefault("model", {}).update(model)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", type=Path, default=ROOT / "runs" / "demo" / "student" / "final",
                        help="the demo-trained student (scripts/demo.sh writes runs/demo/student/final)")
    parser.add_argument("--cranfield", type=Path, default=ROOT.parent / "shared" / "data" / "cranfield")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-adapt")
    parser.add_argument("--heldout", type=int, default=50, help="held-out Cranfield queries (evaluation only)")
    parser.add_argument("--demo-queries", type=int, default=40, help="demo test queries evaluated (what it forgot)")
    parser.add_argument("--train-top-k", type=int, default=16, help="BM25 candidates per training query")
    parser.add_argument("--top-k", type=int, default=20, help="BM25 candidates reranked per evaluated query")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of every row (60)")
    parser.add_argument("--batch", type=int, default=16, help="global batch of every row")
    parser.add_argument("--max-length", type=int, default=256, help="cap of adapt.yaml's max_length: auto")
    parser.add_argument("--no-teacher", action="store_true", help="leave the teacher's line out of the evaluation")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 steps, 10 + 10 evaluated queries")
    args = parser.parse_args()
    if args.quick:
        args.heldout, args.demo_queries = 10, 10
        args.out = args.out.with_name(args.out.name + "-quick")
    args.steps = args.steps or (10 if args.quick else 60)
    if not (args.student / "modules.json").is_file():
        sys.exit(f"no student at {args.student}: run `make demo` (scripts/demo.sh) first, or pass --student")
    out, log, teacher = prepare_run(args.cranfield, args.out)
    bases = {"student": str(args.student.resolve()), "minilm": teacher}
    t0 = time.perf_counter()

    train_dir, heldout_dir, n_train = split_cranfield(args.cranfield, out / "data", args.heldout)
    scored = out / "scored"
    if not (scored / ".ettin" / "manifest.json").is_file():
        ettin("mine", "--corpus", str(train_dir), "--split", "test", "--top-k", str(args.train_top_k),
              "--no-add-positives", "--output", str(out / "mined"), "--overwrite", log=log)
        ettin("score", str(out / "mined"), "--teacher", teacher, "--teacher-format", "bi-encoder",
              "--output", str(scored), "--overwrite", log=log)
    print(f"Cranfield training queries: {n_train} (teacher labels only, BM25 top-{args.train_top_k}), held-out "
          f"queries: {args.heldout}; demo test queries: {args.demo_queries}", flush=True)

    results: dict[str, dict[str, Any]] = {}
    for name, what, base, model in ROWS:
        run_dir = out / "runs" / f"{name}-{args.steps}steps"
        recipe = out / "recipes" / f"{name}.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        write_recipe(recipe, model)
        if not (run_dir / "final" / "ettin_training.json").is_file():
            ettin("train", "--recipe", str(recipe), "--base-model", bases[base], "--data", str(scored),
                         "--eval-data", str(train_dir), "--eval-max-queries", "5", "--eval-top-k", "10",
                         "--eval-steps", "0", "--save-steps", "0", "--max-steps", str(args.steps),
                         "--global-batch-size", str(args.batch), "--max-length", str(args.max_length),
                         "--dataloader-workers", "0",
                         "--output-dir", str(run_dir), "--save-initial", log=log)
        record = json.loads((run_dir / "final" / "ettin_training.json").read_text())
        cut = record.get("truncation") or {}
        wall = float((record.get("throughput") or {}).get("train_runtime_seconds") or 0.0)  # the trainer's own
        results[name] = {"start": what, "steps": args.steps, "train_wall_s": round(wall, 1),
                         "max_length": cut.get("max_length"), "cut_fraction": cut.get("cut_fraction")}
        print(f"  trained {name}: {args.steps} steps in {wall:.0f}s (max length {cut.get('max_length')})",
              flush=True)

    models = [] if args.no_teacher else [teacher]
    first_row = 1 if args.no_teacher else 2  # results[0] is BM25, [1] the teacher unless left out
    for name, *_ in ROWS:
        run_dir = out / "runs" / f"{name}-{args.steps}steps"
        models += [str(run_dir / "initial"), str(run_dir / "final")]
    report_dir = out / "eval"
    evals = {}
    for label, data, queries in (("cranfield", heldout_dir, args.heldout), ("demo", DEMO_DATA, args.demo_queries)):
        if (report_dir / label / "eval.json").is_file():  # a rerun reuses a finished evaluation
            evals[label] = 0.0
            continue
        formats = ["bi-encoder"] * (first_row - 1) + ["cross-encoder"] * (len(models) - first_row + 1)
        evals[label] = ettin("eval", *models, *[f for fmt in formats for f in ("--format", fmt)], "--data",
                             str(data), "--top-k", str(args.top_k), "--max-queries", str(queries),
                             "--output", str(report_dir / label), log=log)
    reports = {label: json.loads((report_dir / label / "eval.json").read_text()) for label in evals}

    def ndcg(label: str, index: int) -> float:
        return reports[label]["results"][index]["mean"]["ndcg@10"]

    header = ("| start | steps | train s | Cranfield NDCG@10 before | after | demo NDCG@10 before | after |")
    lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| BM25 top-{args.top_k} (retriever) | | | {ndcg('cranfield', 0):.3f} | | {ndcg('demo', 0):.3f} | |"]
    if not args.no_teacher:
        lines.append(f"| teacher all-MiniLM-L6-v2 | | | {ndcg('cranfield', 1):.3f} | | {ndcg('demo', 1):.3f} | |")
    for i, (name, what, _, _) in enumerate(ROWS):
        first = first_row + 2 * i
        row = results[name]
        row.update({f"{label}_{when}": ndcg(label, first + k) for label in reports
                    for k, when in enumerate(("before", "after"))})
        lines.append(f"| {name}: {what} | {row['steps']} | {row['train_wall_s']:.0f} | {row['cranfield_before']:.3f} "
                     f"| {row['cranfield_after']:.3f} | {row['demo_before']:.3f} | {row['demo_after']:.3f} |")
    table = "\n".join(lines)
    print(table)
    total = time.perf_counter() - t0
    print(f"eval {sum(evals.values()):.0f}s; total wall time {total / 60:.1f} min; log: {log}")
    (out / "bench_adapt.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "training_queries": n_train, "rows": results,
         "eval": reports, "table": table, "total_wall_s": total}, indent=2))


if __name__ == "__main__":
    main()
