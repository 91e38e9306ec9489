#!/bin/bash
# First start of the postgres volume: one database and owner each for Airflow, MLflow and Optuna.
# Passwords come from the environment (.env), never from this file.
set -euo pipefail
for var in AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD OPTUNA_DB_PASSWORD; do
  [[ -n ${!var:-} ]] || { echo "10-tagifai.sh: $var is not set" >&2; exit 1; }
done
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v airflow_pw="$AIRFLOW_DB_PASSWORD" -v mlflow_pw="$MLFLOW_DB_PASSWORD" -v optuna_pw="$OPTUNA_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE mlflow OWNER mlflow;
CREATE ROLE optuna LOGIN PASSWORD :'optuna_pw';
CREATE DATABASE optuna OWNER optuna;
SQL
