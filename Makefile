# tagifai — `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Shared by every make file: the two venvs (tagifai's; Airflow's, which never imports tagifai),
# the base images, and CONF, the DAG params as JSON for `make dags-test` / `make train`.
PYTHON ?= python3
VENV := .venv
AIRFLOW_VENV := .venv-airflow
BIN := $(VENV)/bin
PYTHON_IMAGE ?= python:3.11-slim-bookworm
POSTGRES_IMAGE ?= postgres:16
REDIS_IMAGE ?= redis:7
CONF ?= {}
# Evidently (the drift monitor, in .venv too) and its telemetry library send nothing home.
export DO_NOT_TRACK := 1
export ITERATIVE_DO_NOT_TRACK := 1

-include mk/*.mk

.PHONY: help
help: ## List targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

# Installed as the image is (mk/airflow.mk): CPU torch on its own (PyTorch's CPU index, or WHEELHOUSE), the
# image's lock with its hashes, tagifai itself (`pip check`: the lock covers its dependencies), then the dev
# tools, which cannot move a locked package (the lock, hashes stripped, constrains them). The lock's copy in
# the venv is what a run records.
$(BIN)/tagifai: pyproject.toml $(IMAGE_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-deps $(TORCH_SOURCE) '$(TORCH_REQUIREMENT)'
	$(BIN)/pip install --quiet --no-deps --require-hashes -r $(IMAGE_LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	$(BIN)/pip install --quiet --constraint <(sed -e '/--hash=/d' -e 's/ \\$$//' $(IMAGE_LOCK)) -e '.[dev]'
	$(BIN)/pip check
	cp $(IMAGE_LOCK) $(VENV)/requirements.lock
	@touch $@

.PHONY: install
install: $(BIN)/tagifai ## Create .venv with tagifai and the dev tools

.PHONY: lint
lint: install ## Lint and check formatting (ruff)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.PHONY: test-unit test-e2e test-stack test
# Unit tests on every core (pytest-xdist, a module per worker: modules share fixtures), the DAG tests
# (test by test, mk/airflow.mk) and the e2e tests (a file per worker, each worker starting its own PostgreSQL
# and mlflow server); the stack tests share one stack, one process.
TEST_WORKERS ?= auto
test-unit: install ## Unit, data-contract, behavioral and CLI tests: no services (.venv)
	$(BIN)/pytest -m "not e2e" -n $(TEST_WORKERS) --dist loadscope --durations=10

test-e2e: install ## The steps against a real mlflow server on PostgreSQL, and mlflow models serve (.venv)
	$(BIN)/pytest -m "e2e and not airflow and not stack" -n $(TEST_WORKERS) --dist loadfile --durations=10

test-stack: install ## The compose stack: make up, DAG runs via the REST API, both UIs in Chromium, Celery, make clean
	$(BIN)/pytest -m stack --durations=15

# Each tier's wall time goes to TIERS_LOG, printed at the end (also when a tier fails); TIERS_KEEP=1 adds
# to a log that .ci/run began. The images are built first, on their own (log in build/images.log): on two
# cores a build beside the unit tests made both slower than one after the other; with their layers cached
# it takes seconds. Then lint and the unit tests, alone, and then the stack tests beside the e2e and DAG
# tests, which run at a low CPU weight (mk/yield-cpu.sh): the stack tests leave half the CPU idle, waiting on
# the stack (its scheduler, its watch interval, retries, `make up`), and e2e and DAG take that half. In make's
# session they took half of the stack's CPU instead (2026-12-02: stack 52 min beside e2e 9.2 and DAG 12.5;
# 62 min in all). Yielding, on two cores (2026-12-02): images 3.7 min, unit 3.8, e2e 8.3 and DAG 6.2 beside
# stack 24.1; CI on a new machine then took 35 min in all (45 min on 2026-12-03's, stop 35). With the unit
# tests beside them too, every tier took two to three times as long (stack 65.6 min, 2026-12-01). The stack
# tests' output goes to build/test-stack.log, shown from its start once the other two end, then live; each
# of the three runs to its end before `test` fails.
TIERS_LOG ?= build/tiers.tsv
TIERS_KEEP ?=
TIER = mk/tiers.sh $(TIERS_LOG)
test: ## Everything CI runs: the images, lint, unit, then the stack tests beside e2e and DAG tests; each tier's time
	@$(if $(TIERS_KEEP),,rm -f $(TIERS_LOG);) mkdir -p build; \
	images() { \
		if ! docker info >/dev/null 2>&1; then echo "no Docker engine: no images built"; return 0; fi; \
		echo "building the images (build/images.log)"; \
		$(TIER) images $(MAKE) --no-print-directory images >build/images.log 2>&1 || { tail -40 build/images.log; false; }; }; \
	beside_stack() { \
		echo "the stack tests run beside the e2e and DAG tests (their output: build/test-stack.log, shown once those end)"; \
		$(TIER) test-stack $(MAKE) --no-print-directory test-stack >build/test-stack.log 2>&1 & stack=$$!; \
		$(TIER) test-e2e mk/yield-cpu.sh $(MAKE) --no-print-directory test-e2e; e2e=$$?; \
		$(TIER) test-dags mk/yield-cpu.sh $(MAKE) --no-print-directory test-dags; dags=$$?; \
		echo; echo "==== the stack tests (build/test-stack.log), from their start, live until they end ===="; \
		tail -n +1 -f build/test-stack.log & follow=$$!; wait $$stack; stack=$$?; sleep 1; kill $$follow; \
		[ $$e2e -eq 0 ] && [ $$dags -eq 0 ] && [ $$stack -eq 0 ]; }; \
	tiers() { \
		$(TIER) install $(MAKE) --no-print-directory install airflow-install && \
		images && \
		$(TIER) lint $(MAKE) --no-print-directory lint && \
		$(TIER) test-unit $(MAKE) --no-print-directory test-unit && \
		beside_stack; }; \
	tiers; status=$$?; $(TIER) --print; exit $$status

.PHONY: pipeline
pipeline: install ## Run the six steps in-process (embedded MLflow store in ./stores)
	$(BIN)/tagifai pipeline

# e.g. BENCHMARK_ARGS='--trials 10 --only quality,images'
BENCHMARK_ARGS ?=

.PHONY: benchmark
benchmark: install airflow-install ## Measure quality, pipeline wall time, tuning throughput, images (real data); write benchmarks/results.json
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory image; fi
	PYTHON_IMAGE=$(PYTHON_IMAGE) $(BIN)/python -m benchmarks.run $(BENCHMARK_ARGS)

.PHONY: mlflow-ui
mlflow-ui: install ## Browse the embedded store at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///stores/mlflow.db --host 127.0.0.1 --port 5000
