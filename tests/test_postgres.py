"""PostgreSQL as Airflow's metadata database: Debian's PostgreSQL on loopback, a
throw-away cluster, ``airflow db migrate`` and a DAG run against it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pgserver import postgres_server

from pipelines.config import airflow_environment

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as port:
        psql = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
        subprocess.run([*psql, "CREATE USER airflow PASSWORD 'airflow'"], check=True, capture_output=True)
        subprocess.run([*psql, "CREATE DATABASE airflow OWNER airflow"], check=True, capture_output=True)
        yield f"postgresql+psycopg2://airflow:airflow@127.0.0.1:{port}/airflow"


def test_airflow_runs_on_postgres(postgres, tmp_path, monkeypatch):
    # a home of its own: the session's factory home may hold landed batches and
    # an Airflow home from other tests, and the process environment wins in
    # airflow_environment()
    for name in ("FACTORY_HOME", "AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        monkeypatch.delenv(name, raising=False)
    env = {**os.environ, **airflow_environment(tmp_path / "home")}
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = postgres
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True)
    airflow = str(Path(sys.executable).parent / "airflow")
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    check = subprocess.run([airflow, "db", "check"], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-2000:]
    # a real DAG run recorded in PostgreSQL (nothing landed: it plans no batch and skips)
    run = subprocess.run(
        [airflow, "dags", "test", "ingest_credit_risk"], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = subprocess.run(
        ["psql", postgres.replace("+psycopg2", ""), "-tAc",
         "SELECT state FROM dag_run WHERE dag_id = 'ingest_credit_risk'"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert rows == ["success"]
