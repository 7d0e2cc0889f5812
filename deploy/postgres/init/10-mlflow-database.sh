#!/usr/bin/env bash
# Runs once, when the postgres service initialises an empty data volume (the official
# image runs /docker-entrypoint-initdb.d/*.sh): the MLflow tracking server's own role
# and database next to Airflow's metadata database (POSTGRES_DB), and the tuning
# studies' (Optuna's RDB storage, FACTORY_OPTUNA_STORAGE: the trials on every worker
# share them).
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v mlflow_user="${MLFLOW_DB_USER:-mlflow}" \
  -v mlflow_password="${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD must be set}" \
  -v mlflow_db="${MLFLOW_DB_NAME:-mlflow}" <<'SQL'
CREATE ROLE :"mlflow_user" LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE :"mlflow_db" OWNER :"mlflow_user";
SQL

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v optuna_user="${OPTUNA_DB_USER:-optuna}" \
  -v optuna_password="${OPTUNA_DB_PASSWORD:?OPTUNA_DB_PASSWORD must be set}" \
  -v optuna_db="${OPTUNA_DB_NAME:-optuna}" <<'SQL'
CREATE ROLE :"optuna_user" LOGIN PASSWORD :'optuna_password';
CREATE DATABASE :"optuna_db" OWNER :"optuna_user";
SQL
