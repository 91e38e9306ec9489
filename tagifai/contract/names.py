"""The names the `tagifai` commands and the DAGs agree on, spelled once.

Environment variables a step reads or a runner hands over, the champion's alias and Asset, and where
a step container writes its JSON line. The exit codes are `tagifai.contract.errors`'s. Standard
library only: Airflow imports this without tagifai's dependencies.
"""

from __future__ import annotations

# --- What a step reads from its environment (every runner hands these over) ---
PIPELINE_RUN_ID_ENV = "TAGIFAI_PIPELINE_RUN_ID"
# The image a step runs in, recorded on its runs; the docker runner adds its id (and registry digest, if any),
# which `tagifai reproduce` runs again (`make reproduce`).
IMAGE_ENV = "TAGIFAI_IMAGE"
IMAGE_ID_ENV = "TAGIFAI_IMAGE_ID"
IMAGE_DIGEST_ENV = "TAGIFAI_IMAGE_DIGEST"
# The Optuna RDB URL that the workers of one study share (it holds the database password).
OPTUNA_STORAGE_ENV = "TAGIFAI_OPTUNA_STORAGE"
# The tagifai PostgreSQL database: the `predictions` table (`tagifai predict-batch`) and the inference log
# (`tagifai serve` writes it, `tagifai monitor` reads it, `tagifai maintain` prunes it).
PREDICTIONS_DB_ENV = "TAGIFAI_PREDICTIONS_DB"
PREDICTIONS_TABLE = "predictions"
INFERENCE_LOG_TABLE = "inference_log"
# MLflow's own database (`mlflow gc` in `tagifai maintain`: runs deleted for good).
MLFLOW_BACKEND_STORE_ENV = "TAGIFAI_MLFLOW_BACKEND_STORE_URI"
# Airflow's own database, for `airflow db clean` in tagifai_maintenance (a task process cannot use Airflow's).
AIRFLOW_DB_ENV = "TAGIFAI_AIRFLOW_DB"
# Batch scoring's own MLflow login on an Airflow worker: its step gets it as MLFLOW_TRACKING_USERNAME/PASSWORD.
BATCH_USERNAME_ENV = "MLFLOW_BATCH_USERNAME"
BATCH_PASSWORD_ENV = "MLFLOW_BATCH_PASSWORD"
# A file the step writes its last JSON line to as well (the docker runner reads it for XCom).
OUTPUT_ENV = "TAGIFAI_OUTPUT"
# Rerun a step even when a finished run has its key.
FORCE_ENV = "TAGIFAI_FORCE"
MODEL_NAME_ENV = "TAGIFAI_MODEL_NAME"
# The MLflow login batch scoring writes its runs with, if not the admin: `tagifai claim` lets it write
# `[predict] experiment_name` (and no other login but the admin).
PREDICTIONS_WRITER_ENV = "TAGIFAI_PREDICTIONS_WRITER"
PREDICT_SOURCE_ENV = "TAGIFAI_PREDICT_SOURCE"

# --- The training data and where it may come from ---
PROJECTS_URL_ENV = "TAGIFAI_PROJECTS_URL"
TAGS_URL_ENV = "TAGIFAI_TAGS_URL"
SOURCE_URL_ENVS = (PROJECTS_URL_ENV, TAGS_URL_ENV)
# Folders a local source may be in (os.pathsep-separated), the URL hosts (or URL prefixes) a source
# may be on, and the hosts that may resolve to private addresses.
DATA_DIRS_ENV = "TAGIFAI_DATA_DIRS"
ALLOWED_HOSTS_ENV = "TAGIFAI_ALLOWED_URL_HOSTS"
PRIVATE_HOSTS_ENV = "TAGIFAI_PRIVATE_URL_HOSTS"
POLICY_ENVS = (DATA_DIRS_ENV, ALLOWED_HOSTS_ENV, PRIVATE_HOSTS_ENV)

# --- Settings ---
CONFIG_ENV = "TAGIFAI_CONFIG"
# The override file's content itself: how a step container on any Docker host gets it.
CONFIG_TOML_ENV = "TAGIFAI_CONFIG_TOML"
CONFIG_DIR_ENV = "TAGIFAI_CONFIG_DIR"

# --- The champion ---
CHAMPION_ALIAS = "champion"
# The Airflow Asset whose events say that `champion` moved (training, rollback).
CHAMPION_ASSET = "tagifai_champion"
CHAMPION_ASSET_URI = "x-tagifai://champion"
# The header of every `tagifai serve` /invocations answer that names the version which scored it.
VERSION_HEADER = "Tagifai-Model-Version"

# The Airflow Asset whose events say the drift monitor found the served inputs or predictions drifted.
DRIFT_ASSET = "tagifai_drift"
DRIFT_ASSET_URI = "x-tagifai://drift"

# --- OpenLineage: the run of the task that started a step, recorded on the step's MLflow runs ---
OPENLINEAGE_RUN_ID_ENV = "TAGIFAI_OPENLINEAGE_RUN_ID"
# `namespace/job/run id` of that task's OpenLineage run (its parent is the DAG run).
OPENLINEAGE_JOB_ENV = "TAGIFAI_OPENLINEAGE_JOB"
# An HTTP collector for the events (.env) instead of the file of `[lineage] file_path`, and its API key.
LINEAGE_URL_ENV = "TAGIFAI_LINEAGE_URL"
LINEAGE_API_KEY_ENV = "TAGIFAI_LINEAGE_API_KEY"

# Where `tagifai rollback` tells Airflow that the champion moved, and its login.
AIRFLOW_URL_ENV = "TAGIFAI_AIRFLOW_URL"
AIRFLOW_USERNAME_ENV = "TAGIFAI_AIRFLOW_USERNAME"
AIRFLOW_PASSWORD_ENV = "TAGIFAI_AIRFLOW_PASSWORD"

# --- Notifications (tagifai.orchestration.notify): unset = notifications off ---
# An SMTP server (PASSWORD is a secret; SSL "true": implicit TLS) and who gets the mail (TO comma-separated).
NOTIFY_SMTP_HOST_ENV = "TAGIFAI_NOTIFY_SMTP_HOST"
NOTIFY_SMTP_PORT_ENV = "TAGIFAI_NOTIFY_SMTP_PORT"
NOTIFY_SMTP_USER_ENV = "TAGIFAI_NOTIFY_SMTP_USER"
NOTIFY_SMTP_PASSWORD_ENV = "TAGIFAI_NOTIFY_SMTP_PASSWORD"
NOTIFY_SMTP_SSL_ENV = "TAGIFAI_NOTIFY_SMTP_SSL"
NOTIFY_FROM_ENV = "TAGIFAI_NOTIFY_FROM"
NOTIFY_TO_ENV = "TAGIFAI_NOTIFY_TO"
# A chat tool's incoming webhook (a secret: such URLs embed tokens); gets one JSON object per event.
NOTIFY_WEBHOOK_URL_ENV = "TAGIFAI_NOTIFY_WEBHOOK_URL"
# The MLflow UI and the Airflow UI as people reach them: the links in messages.
MLFLOW_PUBLIC_URL_ENV = "TAGIFAI_MLFLOW_PUBLIC_URL"
AIRFLOW_BASE_URL_ENV = "AIRFLOW__API__BASE_URL"

# Where a step container's `tagifai` writes its JSON line (OUTPUT_ENV) for the docker runner.
CONTAINER_OUTPUT_PATH = "/tmp/tagifai-output.json"
