# ettin-cli: one-command environment and the pipeline's targets.
#   make test              create .venv (CPU torch) if missing, then run ruff and the test suite
#   make demo              create .venv if missing, then run the offline end-to-end demo
#   make install TORCH=cuda   the CUDA build of torch plus prebuilt Flash Attention 2 (`kernels`), for a GPU box
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
# cpu unless this .venv was built for CUDA (so `make test` after `make install TORCH=cuda` keeps the CUDA torch)
TORCH ?= $(if $(wildcard $(VENV)/.installed-cuda),cuda,cpu)
TORCH_VERSION ?= 2.13.0
# The CPU wheel index is named explicitly so that a plain `pip install torch` never pulls a multi-GB CUDA build.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# Flash Attention 2 backend for TORCH=cuda: `kernels` (prebuilt, compiles nothing) or `compile` (flash-attn).
FA2 ?= kernels
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ETTIN := $(VENV)/bin/ettin
STAMP := $(VENV)/.installed-$(TORCH)
PYTEST_ARGS ?=

.PHONY: help install test lint demo clean mix mine lists lists-all check-teacher score score-all select select-all \
	train train-all push push-all push-data eval eval-mteb bench

# ---------------------------------------------------------------------------------------------------------
# The production chain (GPU box or cluster). Every step writes DIR/.ettin/manifest.json when complete; make targets are
# those manifests, so a rerun redoes only what is missing, and `ettin` itself skips finished shards of an
# interrupted step. `make -n train SIZE=1b` shows the exact commands.
#   NPROC=8            processes per node (torchrun); NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT for several nodes
#   WORK=work          data folder; RUNS=runs model folder; SUBSET=msmarco one subset; SIZE=150m one student size
# ---------------------------------------------------------------------------------------------------------
WORK ?= work
RUNS ?= runs
SIZE ?= 150m
SIZES ?= 17m 32m 68m 150m 400m 1b
SUBSET ?=
ORG ?=
TEACHER ?= mixedbread-ai/mxbai-rerank-large-v2
EVAL_DATA ?= nanobeir
NPROC ?= 1
NNODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
# The 7 retrieval configs of the release: candidate lists of LISTS_DATASET (source = the name after rerank_),
# turned into pairs by `ettin mine --lists`, then scored and selected.
RETRIEVAL_SUBSETS ?= rerank_fever rerank_fiqa rerank_hotpotqa rerank_msmarco rerank_nq rerank_squadv2 rerank_trivia
LISTS_DATASET ?= lightonai/embeddings-fine-tuning
LISTS_ARGS ?=
SCORE_ARGS ?=
TRAIN_ARGS ?=
ifeq ($(NPROC)$(NNODES),11)
RUN := $(ETTIN)
else
RUN := $(VENV)/bin/torchrun --nproc_per_node $(NPROC) --nnodes $(NNODES) --node_rank $(NODE_RANK) \
	--master_addr $(MASTER_ADDR) --master_port $(MASTER_PORT) -m ettin_cli
endif
# Subsets present after `make mix` / `make mine`, and what training reads: the scored pre-training subsets and
# the selected retrieval subsets (the 7 rerank_* ones always, plus any corpus mined with `make mine`).
MIXED = $(filter-out validation,$(notdir $(patsubst %/.ettin/manifest.json,%,$(wildcard $(WORK)/mix/*/.ettin/manifest.json))))
MINED = $(notdir $(patsubst %/.ettin/manifest.json,%,$(wildcard $(WORK)/mined/*/.ettin/manifest.json)))
SELECTED = $(sort $(RETRIEVAL_SUBSETS) $(MINED))
PRETRAINING = $(filter-out $(SELECTED),$(MIXED))
TRAIN_DATA = $(foreach s,$(PRETRAINING),--data $(WORK)/scored/$(s)) $(foreach s,$(SELECTED),--data $(WORK)/selected/$(s))
TRAIN_DEPS = $(foreach s,$(PRETRAINING),$(WORK)/scored/$(s)/.ettin/manifest.json) \
	$(foreach s,$(SELECTED),$(WORK)/selected/$(s)/.ettin/manifest.json)

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
ifeq ($(TORCH),cpu)
	$(PIP) install --quiet --no-deps "torch==$(TORCH_VERSION)+cpu" --extra-index-url $(TORCH_CPU_INDEX)
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) check
else ifeq ($(TORCH),cuda)
	@! $(PY) -c "import torch; assert '+cpu' in torch.__version__" 2>/dev/null || { echo "error: $(VENV) holds \
	the CPU build of torch: run 'make clean' first, then 'make install TORCH=cuda'" >&2; exit 2; }
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
ifeq ($(FA2),compile)
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-build-isolation -e ".[gpu-compile]"
else
	$(PIP) install --quiet -e ".[dev,gpu]"
	@# Fetch the prebuilt FA2 kernel into the Hub cache now, so `ettin doctor` and offline runs find it.
	$(PY) -c "from transformers.utils.import_utils import is_flash_attn_kernel_fallback_available as ok; \
	print('prebuilt FA2 kernel (kernels-community/flash-attn2) cached:', ok(2))"
endif
else
	$(error TORCH must be cpu or cuda, not '$(TORCH)')
endif
	@touch $@

install: $(STAMP) ## create .venv (TORCH=cpu by default, TORCH=cuda for a GPU box)

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check .

test: $(STAMP) ## ruff check, then the full test suite
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP) ## the whole pipeline offline on the embedded demo data (scripts/demo.sh), < 10 min on 2 cores
	VENV=$(VENV) bash scripts/demo.sh

clean: ## remove the environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache

need-%:
	@test -n "$($*)" || { echo "error: set $*=... (see make help)" >&2; exit 2; }

$(WORK)/mix/summary.json: | $(STAMP)
	$(ETTIN) mix --output $(WORK)/mix --skip $(subst $(eval) ,$(comma),$(RETRIEVAL_SUBSETS))
comma := ,

mix: $(WORK)/mix/summary.json ## 1. the pre-training subsets and the validation rows (recipes/data.yaml)

$(WORK)/mined/%/.ettin/manifest.json: | $(STAMP)
	@test -n "$(CORPUS)" || { echo "error: set CORPUS=<BEIR folder or table> for subset $*" >&2; exit 2; }
	$(RUN) mine --corpus $(CORPUS) --output $(WORK)/mined/$* $(MINE_ARGS)

mine: need-SUBSET $(WORK)/mined/$(SUBSET)/.ettin/manifest.json ## 1b. candidates for a retrieval subset: SUBSET=nq CORPUS=dir

# The release's retrieval subsets: already-mined lists, no retriever (the shorter stem wins over mined/%).
$(WORK)/mined/rerank_%/.ettin/manifest.json: | $(STAMP)
	$(RUN) mine --lists $(LISTS_DATASET) --source $* --output $(WORK)/mined/rerank_$* $(LISTS_ARGS)

lists: need-SUBSET $(WORK)/mined/$(SUBSET)/.ettin/manifest.json ## 1b. pairs of one release list: SUBSET=rerank_nq [NPROC=8]

lists-all: $(foreach s,$(RETRIEVAL_SUBSETS),$(WORK)/mined/$(s)/.ettin/manifest.json) ## 1b. pairs of the 7 rerank_* lists

# The teacher check: the teacher must rerank CHECK_DATA (dev queries: a BEIR folder's qrels/dev.tsv, or NanoBEIR)
# better than BM25 alone by recipes/data.yaml teacher_check.min_margin, before a day of scoring with it.
# CHECK_ARGS=--allow-weak-teacher goes on regardless. teacher_check.json is written only when the check passes.
CHECK_DATA ?= $(EVAL_DATA)
CHECK_ARGS ?=
$(WORK)/teacher-check/teacher_check.json: | $(STAMP)
	$(ETTIN) check-teacher $(TEACHER) --data $(CHECK_DATA) --output $(WORK)/teacher-check $(CHECK_ARGS)

check-teacher: $(WORK)/teacher-check/teacher_check.json ## 2a. teacher vs BM25 on dev queries (runs before score-all)

.SECONDEXPANSION:
SCORE_INPUT = $(if $(or $(filter $*,$(RETRIEVAL_SUBSETS)),$(wildcard $(WORK)/mined/$*/.ettin/manifest.json)),$(WORK)/mined/$*,$(WORK)/mix/$*)
$(WORK)/scored/%/.ettin/manifest.json: $$(SCORE_INPUT)/.ettin/manifest.json | $(STAMP)
	$(RUN) score $(SCORE_INPUT) --teacher $(TEACHER) --output $(WORK)/scored/$* $(SCORE_ARGS)

score: need-SUBSET $(WORK)/scored/$(SUBSET)/.ettin/manifest.json ## 2. teacher logits for one subset: SUBSET=msmarco [NPROC=8]

# The check first: a serial make runs prerequisites in order (with -j, run `make check-teacher` before).
SCORED_ALL = $(foreach s,$(PRETRAINING) validation $(SELECTED),$(WORK)/scored/$(s)/.ettin/manifest.json)
score-all: $(WORK)/teacher-check/teacher_check.json $(SCORED_ALL) ## 2. every subset, after check-teacher

$(WORK)/selected/%/.ettin/manifest.json: $(WORK)/scored/%/.ettin/manifest.json | $(STAMP)
	$(RUN) select $(WORK)/scored/$* --output $(WORK)/selected/$*

select: need-SUBSET $(WORK)/selected/$(SUBSET)/.ettin/manifest.json ## 3. 256 then 64 per query: SUBSET=rerank_nq

select-all: $(foreach s,$(SELECTED),$(WORK)/selected/$(s)/.ettin/manifest.json) ## 3. the 7 rerank_* and every mined subset

$(RUNS)/%/final/ettin_training.json: $(TRAIN_DEPS) | $(STAMP)
	$(RUN) train --size $* $(TRAIN_DATA) --validation-data $(WORK)/scored/validation \
		--output-dir $(RUNS)/$* $(TRAIN_ARGS)

train: $(RUNS)/$(SIZE)/final/ettin_training.json ## 4. train one student: SIZE=150m [NPROC=8]

train-all: $(foreach s,$(SIZES),$(RUNS)/$(s)/final/ettin_training.json) ## 4. all six sizes, smallest first

push: need-ORG $(RUNS)/$(SIZE)/final/ettin_training.json ## 5. publish one student: SIZE=150m ORG=my-org
	$(ETTIN) push $(RUNS)/$(SIZE)/final --repo-id $(ORG)/ettin-reranker-$(SIZE)-v1 $(PUSH_ARGS)

push-all: need-ORG ## 5. publish every trained size
	$(foreach s,$(SIZES),$(MAKE) push SIZE=$(s) ORG=$(ORG) &&) true

push-data: need-ORG ## 5. publish the scored data as one dataset: ORG=my-org
	$(ETTIN) push $(foreach s,$(PRETRAINING),$(s)=$(WORK)/scored/$(s)) \
		$(foreach s,$(SELECTED),$(s)=$(WORK)/selected/$(s)) validation=$(WORK)/scored/validation \
		--repo-id $(ORG)/ettin-reranker-v1-data --repo-type dataset $(PUSH_ARGS)

eval: | $(STAMP) ## 6. teacher and every trained size on EVAL_DATA (default nanobeir)
	$(ETTIN) eval $(TEACHER) $(wildcard $(foreach s,$(SIZES),$(RUNS)/$(s)/final)) --data $(EVAL_DATA) \
		--output $(RUNS)/eval $(EVAL_ARGS)

# The release's headline table (recipes/eval/mteb.yaml): MTEB(eng, v2) Retrieval, its six retrievers' top-100
# reranked by the teacher and every trained size, scored by mteb; resumable (rerun to continue). docs/mteb.md.
eval-mteb: | $(STAMP) ## 6. the release's MTEB(eng, v2) protocol: six retrievers x top-100, teacher + every trained size
	$(ETTIN) eval $(TEACHER) $(wildcard $(foreach s,$(SIZES),$(RUNS)/$(s)/final)) --benchmark "MTEB(eng, v2)" \
		--output $(RUNS)/eval-mteb $(EVAL_MTEB_ARGS)

bench: | $(STAMP) ## 6. throughput of the teacher and every trained size (pairs/s, bf16+FA2 on a GPU)
	$(ETTIN) bench $(wildcard $(foreach s,$(SIZES),$(RUNS)/$(s)/final)) $(TEACHER) --output $(RUNS)/bench $(BENCH_ARGS)
