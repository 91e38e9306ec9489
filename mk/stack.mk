# The compose stack: PostgreSQL + MLflow server + Airflow 3. Included from the Makefile.
#
#   make up       build images, start, wait until healthy, unpause the DAGs, print URLs and logins
#   make train    trigger tagifai_training through the Airflow REST API and wait for it
#   make down     stop (volumes kept)         make clean    stop and delete the volumes

# The settings file; a second stack (e.g. the e2e test's) uses its own, with its own project name,
# ports and network.
STACK_ENV ?= .env
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose) \
	--env-file $(STACK_ENV)
# Start services and wait until healthy (one-shot airflow-init: exited 0): `docker compose` (v2) waits
# itself (`up --wait`); docker-compose 1.29 has no --wait, so scripts/stack.py watches their health.
# $(call UP,<compose command>,<timeout s>,<up options>)
UP = $(if $(filter docker,$(firstword $(1))),$(1) up -d --wait --wait-timeout $(2) $(3),\
	$(1) up -d $(3) && python3 scripts/stack.py wait --timeout $(2) --compose "$(1)")
# The DAGs `make up` unpauses (new DAGs start paused): training, the watcher that starts it on new
# data, the daily batch scoring with the champion, the champion's messages to people, the drift monitor
# (daily, and when the champion moves) and the weekly retention clean-up.
STACK_DAGS ?= tagifai_training tagifai_watch tagifai_batch_predictions tagifai_champion tagifai_monitor \
	tagifai_maintenance

.PHONY: up down clean logs train monitor maintain dags-test-stack mlflow-user rollback champion-history card reproduce worker \
	worker-down

$(STACK_ENV):
	python3 scripts/stack.py env --to $@ --set PYTHON_IMAGE=$(PYTHON_IMAGE) --set POSTGRES_IMAGE=$(POSTGRES_IMAGE) \
		--set REDIS_IMAGE=$(REDIS_IMAGE)

up: $(STACK_ENV) ## Start the stack (Airflow UI :8080, MLflow UI :5000); writes .env when missing
	@# Before anything starts: no placeholder secrets, and volumes made with this .env's secrets.
	@python3 scripts/stack.py preflight --env-file $(STACK_ENV)
	$(MAKE) --no-print-directory image
	@# The settings (config/, TAGIFAI_CONFIG) as the steps will read them: a typo stops here, in one line.
	@python3 scripts/stack.py settings --env-file $(STACK_ENV)
	$(COMPOSE) build
	@# serve's and batch scoring's own MLflow logins, where an older .env has none (MLflow's start sets them).
	@python3 scripts/stack.py logins --env-file $(STACK_ENV)
	@# CELERY_WORKERS Celery workers when COMPOSE_PROFILES=celery (the profile that starts them). Every
	@# setting is read as compose reads it: a variable exported in the shell wins over .env.
	$(call UP,$(COMPOSE),900,$$(python3 scripts/stack.py scale --env-file $(STACK_ENV)))
	python3 scripts/stack.py unpause $(STACK_DAGS) --env-file $(STACK_ENV)
	@echo; python3 scripts/stack.py summary --env-file $(STACK_ENV)
	@echo "  DAGs unpaused: $(STACK_DAGS). tagifai_training runs daily and when tagifai_watch sees the data"; \
	echo "  change; 'make train' runs it now."

train: $(STACK_ENV) ## Run tagifai_training in the stack now (REST API), wait, fail if it fails (CONF='{...}')
	python3 scripts/stack.py trigger --conf '$(CONF)' --env-file $(STACK_ENV)

monitor: $(STACK_ENV) ## Run the drift monitor now: the served and batch-scored inputs against the champion's training data
	python3 scripts/stack.py trigger --dag tagifai_monitor --env-file $(STACK_ENV)

maintain: $(STACK_ENV) ## Run the retention clean-up now (DRY_RUN=1: only list what it would delete)
	python3 scripts/stack.py trigger --dag tagifai_maintenance --conf '{"dry_run": $(if $(DRY_RUN),true,false)}' \
		--env-file $(STACK_ENV)

rollback: $(STACK_ENV) ## Move champion back to the version before (TO=3: to version 3; REASON='...'), recorded and announced
	$(COMPOSE) --profile tools run --rm --no-deps tagifai rollback $(if $(TO),--to '$(TO)') $(if $(REASON),--reason '$(REASON)')

champion-history: $(STACK_ENV) ## Print every move of champion: from, to, when, by what, why
	@$(COMPOSE) --profile tools run --rm --no-deps tagifai champion-history

card: $(STACK_ENV) ## Print a version's model card (VERSION=3; default: the champion)
	@$(COMPOSE) --profile tools run --rm --no-deps tagifai card --model-uri 'models:/tagifai$(if $(VERSION),/$(VERSION),@champion)'

reproduce: $(STACK_ENV) ## Rebuild a version from its record in the image it was trained in, and compare (VERSION=3; CURRENT_DATA=1: its recipe on the current data)
	@test -n "$(VERSION)" || { echo "usage: make reproduce VERSION=3 [CURRENT_DATA=1]" >&2; exit 2; }
	@python3 scripts/stack.py reproduce '$(VERSION)' $(if $(CURRENT_DATA),--on-current-data) --compose "$(COMPOSE)" \
		--env-file $(STACK_ENV)

# A Celery worker on another machine (docker-compose.worker.yml): its settings file, see that file.
WORKER_ENV ?= worker.env
WORKER_COMPOSE = $(firstword $(COMPOSE)) $(filter-out --env-file $(STACK_ENV),$(wordlist 2,9,$(COMPOSE))) \
	-f docker-compose.worker.yml --env-file $(WORKER_ENV)

worker: ## Start a Celery worker on this machine for a stack on another (WORKER_ENV=worker.env: see docker-compose.worker.yml)
	$(MAKE) --no-print-directory image
	$(call UP,$(WORKER_COMPOSE),600,--build)

worker-down: ## Stop the Celery worker docker-compose.worker.yml started, and the step containers it started
	$(WORKER_COMPOSE) stop
	@$(call STOP_STEPS,WORKER_DOCKER_NETWORK,bridge,$(WORKER_ENV))
	$(WORKER_COMPOSE) down --remove-orphans

mlflow-user: $(STACK_ENV) ## Add an MLflow login for a person (reads everything, changes what it creates): make mlflow-user NAME=alice (prints its password)
	@test -n "$(NAME)" || { echo "usage: make mlflow-user NAME=alice" >&2; exit 2; }
	@python3 scripts/stack.py mlflow-user '$(NAME)' --env-file $(STACK_ENV)

dags-test-stack: $(STACK_ENV) ## airflow dags test tagifai_training in the stack (the scheduler, or a Celery worker) (CONF='{...}')
	case ",$$(python3 scripts/stack.py get COMPOSE_PROFILES --env-file $(STACK_ENV))," in \
		*,celery,*) runs=airflow-worker;; *) runs=airflow-scheduler;; esac; \
		$(COMPOSE) exec -T $$runs airflow dags test tagifai_training -c '$(CONF)'

# Step containers still running on a network (a run in progress): compose does not know them (the
# tasks start them), and the network cannot be removed while they are attached. Arguments: the setting
# naming the network, its default, the env file holding it (the stack's, or a remote worker's).
STOP_STEPS = net=$$(python3 scripts/stack.py get $(1) --default $(2) --env-file $(3)); \
	steps=$$(docker ps -q --filter label=org.tagifai.step --filter network=$${net:-$(2)}); \
	if [ -n "$$steps" ]; then echo "stopping the step containers of runs in progress"; docker stop -t 10 $$steps >/dev/null; fi

down: ## Stop the stack; runs, models and Airflow history stay in the volumes
	$(COMPOSE) --profile local --profile celery --profile tools --profile test stop
	@$(call STOP_STEPS,TAGIFAI_DOCKER_NETWORK,tagifai,$(STACK_ENV))
	$(COMPOSE) --profile local --profile celery --profile tools --profile test down --remove-orphans

clean: ## Stop the stack and delete its volumes (all runs, models, Airflow history)
	$(COMPOSE) --profile local --profile celery --profile tools --profile test stop
	@$(call STOP_STEPS,TAGIFAI_DOCKER_NETWORK,tagifai,$(STACK_ENV))
	$(COMPOSE) --profile local --profile celery --profile tools --profile test down --volumes --remove-orphans

logs: ## Follow the stack's logs
	$(COMPOSE) logs --follow --tail=100
