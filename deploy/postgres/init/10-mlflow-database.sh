#!/usr/bin/env bash
# Runs once, when the postgres service initialises an empty data volume (the official
# image runs /docker-entrypoint-initdb.d/*.sh): the MLflow tracking server's own role
# and database next to Airflow's metadata database (POSTGRES_DB).
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v mlflow_user="${MLFLOW_DB_USER:-mlflow}" \
  -v mlflow_password="${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD must be set}" \
  -v mlflow_db="${MLFLOW_DB_NAME:-mlflow}" <<'SQL'
CREATE ROLE :"mlflow_user" LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE :"mlflow_db" OWNER :"mlflow_user";
SQL
