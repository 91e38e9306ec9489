# tagifai — `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
AIRFLOW_VENV := .venv-airflow
BIN := $(VENV)/bin

-include mk/*.mk

.PHONY: help
help: ## List targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(BIN)/tagifai: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: install
install: $(BIN)/tagifai ## Create .venv with tagifai and the dev tools

.PHONY: lint
lint: install ## Lint and check formatting (ruff)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.PHONY: test-core
test-core: install ## Unit, data, model and CLI tests, and the MLflow-server-on-PostgreSQL e2e test
	$(BIN)/pytest tests/code tests/data tests/model tests/cli tests/e2e -m "not airflow"

.PHONY: test
test: lint test-core test-dags ## Everything CI runs: lint, package + e2e tests, DAG tests

.PHONY: pipeline
pipeline: install ## Run the six steps in-process (embedded MLflow store in ./stores)
	$(BIN)/tagifai pipeline

# e.g. BENCHMARK_ARGS='--trials 10 --only quality,images'
BENCHMARK_ARGS ?=

.PHONY: benchmark
benchmark: install airflow-install ## Measure quality, pipeline wall time, tuning throughput, images (real data); write benchmarks/results.json
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory image; fi
	PYTHON_IMAGE=$(PYTHON_IMAGE) $(BIN)/python benchmarks/run.py $(BENCHMARK_ARGS)

.PHONY: mlflow-ui
mlflow-ui: install ## Browse the embedded store at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///stores/mlflow.db --host 127.0.0.1 --port 5000
