# ettin-cli: one-command environment and the pipeline's targets.
#   make test              create .venv (CPU torch) if missing, then run ruff and the test suite
#   make demo              create .venv if missing, then run the offline end-to-end demo
#   make install TORCH=cuda   the CUDA build of torch plus flash-attn, for a GPU box
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
TORCH ?= cpu
TORCH_VERSION ?= 2.13.0
# The CPU wheel index is named explicitly so that a plain `pip install torch` never pulls a multi-GB CUDA build.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ETTIN := $(VENV)/bin/ettin
STAMP := $(VENV)/.installed-$(TORCH)
PYTEST_ARGS ?=

.PHONY: help install test lint demo clean

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
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-build-isolation -e ".[gpu]"
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

clean: ## remove the environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
