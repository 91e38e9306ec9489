# The tagifai image and the Airflow DAG that runs it (included from the Makefile).
#
#   make image                     build tagifai:<version> and tagifai:latest
#   make airflow-install           create .venv-airflow (Airflow + Docker/Kubernetes/OpenLineage providers)
#   make dags-test RUNNER=local    one run of the DAG here with `airflow dags test`
#   make test-dags                 DAG structure tests, then the DAG end to end (local, docker)

IMAGE ?= tagifai
IMAGE_VERSION ?= $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' tagifai/__init__.py)
# Recorded on every MLflow run the image makes (TAGIFAI_CODE_VERSION); "-dirty" marks local edits.
CODE_VERSION ?= $(shell git describe --always --dirty --abbrev=40 2>/dev/null)
# A folder holding the CPU torch wheel, for machines that cannot reach PyTorch's CPU index.
WHEELHOUSE ?=
DOCKER_BUILD_FLAGS ?= --network host
# `make dags-test`: the runner (docker, local, kubernetes); CONF (Makefile) overrides the params.
RUNNER ?= docker

# What the Airflow image and .venv-airflow are made of; AIRFLOW_REQUIREMENTS pins these and everything
# they pull in (one list for both). celery stays below 5.7: 5.7 dropped celery.backends.database.retry,
# which the celery provider imports, and its executor and workers then fail to load.
AIRFLOW_PACKAGES := apache-airflow[celery,postgres]==3.3.2 celery==5.6.3 apache-airflow-providers-docker==4.6.1 \
	apache-airflow-providers-fab==3.10.2 apache-airflow-providers-celery==3.26.0 \
	apache-airflow-providers-cncf-kubernetes==10.25.0 apache-airflow-providers-openlineage==2.20.3 \
	psycopg2-binary==2.9.13 redis==6.4.0 asyncpg==0.32.0 pytest==9.2.0 pytest-xdist==3.8.0
AIRFLOW_REQUIREMENTS := images/airflow/requirements.txt
AIRFLOW := $(AIRFLOW_VENV)/bin/airflow
# Airflow's config, SQLite metadata DB and logs stay in the project (.airflow/), not ~/airflow.
AIRFLOW_ENV := AIRFLOW_HOME=$(CURDIR)/.airflow \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__LOAD_EXAMPLES=False

.PHONY: image images image-airflow image-mlflow image-smtp-sink airflow-install airflow-lock airflow-db dags-test dags-list test-dags

image: ## Build the image tagifai:<version> and tagifai:latest (PYTHON_IMAGE, WHEELHOUSE)
	rm -rf build/wheelhouse
	@if [ -n "$(WHEELHOUSE)" ]; then mkdir -p build/wheelhouse && cp $(WHEELHOUSE)/torch-*.whl build/wheelhouse/; fi
	docker build $(DOCKER_BUILD_FLAGS) -f images/tagifai/Dockerfile \
		--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) --build-arg VERSION=$(IMAGE_VERSION) \
		--build-arg CODE_VERSION=$(CODE_VERSION) \
		-t $(IMAGE):$(IMAGE_VERSION) -t $(IMAGE):latest .
	@docker image inspect $(IMAGE):latest --format '$(IMAGE):$(IMAGE_VERSION) {{.Size}} bytes'

# The stack's own images too, tagged as docker-compose.yml names them: its `build` then finds every
# layer cached (`make test` builds them all once, in the background, while the first tiers run).
# Three builds side by side: each spends most of its time downloading and unpacking packages.
images: ## Build every image side by side: tagifai, tagifai-airflow, tagifai-mlflow, the tests' tagifai-smtp-sink (PYTHON_IMAGE)
	$(MAKE) --no-print-directory -j3 image image-airflow image-mlflow image-smtp-sink

image-airflow image-mlflow image-smtp-sink: image-%:
	docker build $(DOCKER_BUILD_FLAGS) --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t tagifai-$*:latest images/$*

# The DAGs import tagifai.contract and tagifai.orchestration (standard library and Airflow only) from the
# checkout: a .pth puts it on the venv's path, as the stack's PYTHONPATH does (tagifai's dependencies stay out).
$(AIRFLOW_VENV)/.installed: $(AIRFLOW_REQUIREMENTS)
	test -x $(AIRFLOW_VENV)/bin/python || python3 -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet -r $(AIRFLOW_REQUIREMENTS)
	echo "$(CURDIR)" > "$$($(AIRFLOW_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/tagifai-checkout.pth"
	touch $@

airflow-install: $(AIRFLOW_VENV)/.installed ## Create .venv-airflow: the Airflow image's pinned packages, apart from .venv

airflow-lock: ## Re-resolve AIRFLOW_PACKAGES in a scratch venv and rewrite images/airflow/requirements.txt
	rm -rf build/airflow-lock && python3 -m venv build/airflow-lock
	build/airflow-lock/bin/pip install --quiet $(AIRFLOW_PACKAGES)
	{ echo "# Airflow, fully pinned: the stack's Airflow image and .venv-airflow (\`make airflow-install\`) both install"; \
	  echo "# exactly this list. Never tagifai, pandas or mlflow: the steps run in the tagifai image. pytest is here"; \
	  echo "# for .venv-airflow's DAG tests (a few MB in the image). Regenerate with \`make airflow-lock\` from"; \
	  echo "# AIRFLOW_PACKAGES in mk/airflow.mk: $(AIRFLOW_PACKAGES)"; \
	  build/airflow-lock/bin/pip freeze --exclude-editable 2>/dev/null; } > $(AIRFLOW_REQUIREMENTS)
	rm -rf build/airflow-lock

airflow-db: airflow-install ## Create or upgrade the project-local Airflow metadata DB (.airflow/, SQLite)
	@$(AIRFLOW_ENV) $(AIRFLOW) db migrate >/dev/null

dags-list: airflow-db ## List the DAG's tasks as Airflow parses them (RUNNER=...)
	$(AIRFLOW_ENV) TAGIFAI_RUNNER=$(RUNNER) $(AIRFLOW) tasks list tagifai_training

# Where `make dags-test`'s optimize workers share their study: SQLite beside the embedded store
# (local runner), or the stack's PostgreSQL, whose network the docker runner's containers join (the
# password is read from .env when the recipe runs, so make never prints it).
DAGS_TEST_OPTUNA_STORAGE = $(if $(filter local,$(RUNNER)),sqlite:///$(CURDIR)/stores/optuna.db,$\
	postgresql+psycopg2://optuna:$$(python3 scripts/stack.py get OPTUNA_DB_PASSWORD --env-file $(STACK_ENV))@postgres:5432/optuna)
# The docker runner's steps log to the stack's MLflow, which needs a login: the admin's, from .env.
DAGS_TEST_MLFLOW_LOGIN = $(if $(filter local,$(RUNNER)),MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/stores/mlflow.db},$\
	MLFLOW_TRACKING_USERNAME=$${MLFLOW_TRACKING_USERNAME:-$$(python3 scripts/stack.py get MLFLOW_ADMIN_USERNAME --env-file $(STACK_ENV))} $\
	MLFLOW_TRACKING_PASSWORD=$${MLFLOW_TRACKING_PASSWORD:-$$(python3 scripts/stack.py get MLFLOW_ADMIN_PASSWORD --env-file $(STACK_ENV))})

# local: steps run in a temporary folder, so the embedded store is named by its absolute path.
dags-test: airflow-db $(if $(filter local,$(RUNNER)),install) ## Run the DAG once: airflow dags test (RUNNER=docker|local, CONF='{"num_trials": 2}')
	@mkdir -p stores
	$(AIRFLOW_ENV) TAGIFAI_RUNNER=$(RUNNER) TAGIFAI_BIN=$(CURDIR)/$(VENV)/bin/tagifai \
		TAGIFAI_OPTUNA_STORAGE=$${TAGIFAI_OPTUNA_STORAGE:-$(DAGS_TEST_OPTUNA_STORAGE)} \
		$(DAGS_TEST_MLFLOW_LOGIN) \
		$(AIRFLOW) dags test tagifai_training -c '$(CONF)'

test-dags: airflow-install install ## The DAG's structure, then airflow dags test with the local and docker runners (.venv-airflow)
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory image; \
	else echo "no Docker engine: the docker-runner test will skip (or fail with TAGIFAI_REQUIRE_SERVICES=1)"; fi
	$(AIRFLOW_VENV)/bin/pytest -p no:cacheprovider --durations=10 -m airflow -n $(TEST_WORKERS) --dist load
