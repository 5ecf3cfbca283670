# returnrisk — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON_BASE ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0
UV_VERSION := 0.13.9
CHROMIUM := /usr/bin/chromium

.PHONY: help setup run test lint format bench browser-deps clean-data mlflow-ui

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON_BASE) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --quiet --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $@

setup: $(VENV)/.installed ## Create .venv and install the locked dependencies (idempotent)
	@test -d .dvc || $(BIN)/dvc init --quiet $$(test -d .git || echo --no-scm)

browser-deps: ## Install Debian's chromium for the browser tests when missing
	@test -x $(CHROMIUM) || { echo "installing Debian chromium (apt)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "WARNING: could not install chromium; browser tests will be skipped"; }

run: setup ## Set up, run `dvc repro` on the generated default data, print where the results are
	$(BIN)/dvc repro
	@$(BIN)/returnrisk summary

test: setup browser-deps ## Set up, then run lint and the whole test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --timeout 900

lint: setup ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## Apply ruff formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## Run the benchmarks (prints `name value unit` lines); see BENCHMARKS.md
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

mlflow-ui: setup ## Open the MLflow UI on the embedded store (http://127.0.0.1:5000)
	$(BIN)/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --host 127.0.0.1 --port 5000

clean-data: ## Remove generated data, metrics, plots and the local MLflow store
	rm -rf data metrics plots mlflow.db mlartifacts
