#!/bin/sh
# Upgrade the schema (a no-op when current, so restarts are safe), then serve.
#   MLFLOW_BACKEND_STORE_URI   postgresql+psycopg2://user:password@host:5432/db
#   MLFLOW_ALLOWED_HOSTS       Host headers to accept (MLflow >= 3.5 rejects unknown ones)
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI}"
mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"
exec mlflow server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}" \
    --serve-artifacts \
    --host 0.0.0.0 --port 5000 \
    --workers "${MLFLOW_WORKERS:-2}" \
    --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000}" \
    "$@"
