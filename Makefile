# lorasweep: `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Nothing in the demo or the tests may reach a model hub.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: help setup demo test test-fast lint format clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv and install everything (torch pinned to the CPU build 2.13.0)

# torch first, pinned: an unpinned torch (or a range admitting newer releases) would pull a
# CUDA build with gigabytes of packages. open_clip_torch only provides the CLIP BPE vocabulary
# file; its torchvision dependency has no CPU build here, so it goes in without dependencies.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,sweep]'
	$(BIN)/pip install --quiet --no-deps open_clip_torch==3.3.0
	touch $(STAMP)

demo: setup ## Train a LoRA on the tiny built-in model and the sample data (CPU, a few minutes)
	$(OFFLINE) $(BIN)/python -m sweeper

test: setup ## Run the whole test suite (GPU tests skip without CUDA)
	$(OFFLINE) $(BIN)/pytest -q

test-fast: setup ## Run the tests not marked slow
	$(OFFLINE) $(BIN)/pytest -q -m "not slow"

lint: setup ## Ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## Remove runs, caches and build leftovers (keeps .venv)
	rm -rf runs outputs .cache .pytest_cache .ruff_cache *.egg-info
