#!/bin/bash
# First start of the postgres volume: one database and owner each for Airflow, MLflow, Optuna and
# tagifai's own tables (`predictions`), each role allowed to connect to its own only.
# Passwords come from the environment (.env): psql reads them with \getenv, so none is ever on a
# command line. A fingerprint of the secrets this volume was made with (a sha256 per secret, never
# the secret) lets `make up` tell a .env that does not belong to it (scripts/stack.py preflight).
set -euo pipefail
for var in AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD OPTUNA_DB_PASSWORD TAGIFAI_DB_PASSWORD; do
  [[ -n ${!var:-} ]] || { echo "10-tagifai.sh: $var is not set" >&2; exit 1; }
done
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" <<'SQL'
\getenv airflow_pw AIRFLOW_DB_PASSWORD
\getenv mlflow_pw MLFLOW_DB_PASSWORD
\getenv optuna_pw OPTUNA_DB_PASSWORD
\getenv tagifai_pw TAGIFAI_DB_PASSWORD
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE mlflow OWNER mlflow;
CREATE ROLE optuna LOGIN PASSWORD :'optuna_pw';
CREATE DATABASE optuna OWNER optuna;
CREATE ROLE tagifai LOGIN PASSWORD :'tagifai_pw';
CREATE DATABASE tagifai OWNER tagifai;
-- Each role connects to its own database only (pg_hba.conf says so too, for volumes made before this).
REVOKE CONNECT ON DATABASE postgres, airflow, mlflow, optuna, tagifai FROM PUBLIC;
GRANT CONNECT ON DATABASE airflow TO airflow;
GRANT CONNECT ON DATABASE mlflow TO mlflow;
GRANT CONNECT ON DATABASE optuna TO optuna;
GRANT CONNECT ON DATABASE tagifai TO tagifai;
SQL
fingerprint="${PGDATA:-/var/lib/postgresql/data}/tagifai-secrets.sha256"
for var in POSTGRES_PASSWORD AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD OPTUNA_DB_PASSWORD TAGIFAI_DB_PASSWORD; do
  printf '%s %s\n' "$var" "$(printf '%s' "${!var}" | sha256sum | cut -d' ' -f1)"
done > "$fingerprint"
