# lorasweep: `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Nothing in the demo or the tests may reach a model hub.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: help setup lock demo ui test test-fast lint format clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv and install exactly the lock file's versions (torch: CPU 2.13.0)

# Every package comes from requirements.lock at its exact version and sha256 (make lock writes
# it; nothing else moves a version), installed with --no-deps so that pip resolves nothing.
# torch is the exception: it is pinned here and left out of the lock, because its build differs
# by machine (the local CPU wheel here, a CUDA build of the same version on a GPU machine) and so
# would its hash; an unpinned torch (or a range admitting newer releases) would pull a CUDA build
# with gigabytes of packages. open_clip_torch is locked without its dependencies
# (requirements/nodeps.in): it only provides the CLIP BPE vocabulary file.
LOCK  := requirements.lock
TORCH := torch==2.13.0
LOCK_PYTHON := 3.11

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; v == "$(LOCK_PYTHON)" or \
		print("warning: $(LOCK) was compiled for Python $(LOCK_PYTHON); this is Python " + v)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps $(TORCH)
	$(BIN)/pip install --quiet --no-deps --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolves every version from pyproject.toml (+ requirements/*.in) against the package index
# of today, for CPython $(LOCK_PYTHON) on Linux x86_64, with sha256 hashes of every file of each
# version. The only way a version moves: run it on purpose, then `make test`, then commit the
# lock. torch is resolved from the local CPU wheel (/opt/wheels) so its own dependencies are
# the CPU build's, and left out of the file.
UV ?= $(BIN)/uv
UV_COMPILE := $(UV) pip compile --quiet --python-version $(LOCK_PYTHON) \
	--python-platform x86_64-manylinux_2_28 --generate-hashes --no-header
lock: setup ## Re-resolve every version into requirements.lock (the only way versions move)
	@{ echo "# The lock file of lorasweep: every package at its exact version and sha256."; \
	   echo "# Written by 'make lock' (uv pip compile, CPython $(LOCK_PYTHON), Linux x86_64) from"; \
	   echo "# pyproject.toml (all extras) + requirements/build.in, then requirements/nodeps.in"; \
	   echo "# (installed without dependencies). torch is pinned in the Makefile ($(TORCH)). Do not edit."; \
	   $(UV_COMPILE) pyproject.toml requirements/build.in --all-extras \
		--find-links /opt/wheels --no-emit-package torch; \
	   $(UV_COMPILE) requirements/nodeps.in --no-deps; } > $(LOCK).new
	@if cmp -s $(LOCK).new $(LOCK); then rm $(LOCK).new; echo "$(LOCK) is up to date."; \
	else mv $(LOCK).new $(LOCK); \
		echo "$(LOCK) rewritten: review 'git diff $(LOCK)', run 'make test', commit it."; fi

# The real main job, small: an Optuna sweep of 4 trials with pruning on, in the small offline
# world (+experiment=world: a base model, scorers and an oracle trained there, world/README.md),
# over its search space (conf/search/world.yaml), tracked in MLflow, then its research report,
# where the subject appears epoch by epoch and the strength grid reads each trial. Two trials run
# at once (joblib, one thread each: the world's small runs use a core better than two threads
# do); each `make demo` starts a fresh study. The random-weight `tiny` model stays for tests.
DEMO_STUDY := demo-$(shell date +%Y%m%d-%H%M%S)
DEMO_SWEEP := +experiment=world search.n_trials=4 \
	search.pruner.median.n_startup_trials=2 \
	hydra/launcher=joblib hydra.launcher.n_jobs=2 train.progress_bar=false \
	search.study_name=$(DEMO_STUDY)

demo: setup ## A small tracked Optuna sweep in the offline world (4 trials, pruning) and its report
	$(OFFLINE) OMP_NUM_THREADS=1 $(BIN)/python -m sweeper -m $(DEMO_SWEEP)
	$(OFFLINE) $(BIN)/python -m sweeper.report --study $(DEMO_STUDY)
	@echo "Dashboard: make ui  (MLflow UI on http://127.0.0.1:$(UI_PORT))"

# The embedded MLflow store of conf/tracking (LORASWEEP_MLRUNS_DIR moves it), bound to this
# machine only. One worker: the UI is for one person, and each worker takes seconds to start.
MLRUNS  ?= $(or $(LORASWEEP_MLRUNS_DIR),$(CURDIR)/mlruns)
UI_PORT ?= 5000

ui: setup ## The MLflow dashboard of every tracked run, on http://127.0.0.1:5000 (UI_PORT=...)
	@mkdir -p $(MLRUNS)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MLRUNS)/mlflow.db \
		--default-artifact-root $(MLRUNS)/artifacts --host 127.0.0.1 --port $(UI_PORT) --workers 1

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
