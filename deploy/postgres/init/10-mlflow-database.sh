#!/usr/bin/env bash
# Runs once, when the postgres service initialises an empty data volume (the official
# image runs /docker-entrypoint-initdb.d/*.sh): the MLflow tracking server's own role
# and database next to Airflow's metadata database (POSTGRES_DB), and the tuning
# studies' (Optuna's RDB storage, FACTORY_OPTUNA_STORAGE: the trials on every worker
# share them).
set -euo pipefail

# create_database ROLE PASSWORD DATABASE: a login role and a database it owns
create_database() {
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v role="$1" -v password="$2" -v db="$3" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"role";
SQL
}

create_database "${MLFLOW_DB_USER:-mlflow}" "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD must be set}" \
  "${MLFLOW_DB_NAME:-mlflow}"
create_database "${OPTUNA_DB_USER:-optuna}" "${OPTUNA_DB_PASSWORD:?OPTUNA_DB_PASSWORD must be set}" \
  "${OPTUNA_DB_NAME:-optuna}"
