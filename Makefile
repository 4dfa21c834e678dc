# Two commands do everything on a fresh machine with Python 3.11 and git:
#   make repro   # set up .venv, run the pipeline
#   make test    # set up .venv, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: on a CPU-only machine this resolves to the local CPU build, and
# the later `pip install -e .` then finds torch satisfied instead of pulling CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test lint clean dag release

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

repro: setup
	dvc repro

test: setup
	python -m pytest -q

lint: setup
	ruff check src stages tests benchmarks scripts
	ruff format --check src stages tests benchmarks scripts

dag: setup
	dvc dag

# Model versions are GTO tags: `make release VERSION=v3.0` tags bioreasoner@v3.0.0 (see scripts/release.py).
ifneq ($(filter release,$(MAKECMDGOALS)),)
ifndef VERSION
$(error usage: make release VERSION=v3.0)
endif
endif
release: setup
	python scripts/release.py "$(VERSION)"

# Removes pipeline outputs and caches, keeps .venv and git-tracked sources.
clean:
	rm -rf data/corpus.jsonl data/tasks models metrics .cache .pytest_cache .ruff_cache
	rm -rf .dvc/cache .dvc/tmp
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
