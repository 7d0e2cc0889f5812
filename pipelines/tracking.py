"""MLflow tracking for the factory: one experiment per line, one run per training run.

The tracking URI comes from configuration (:func:`pipelines.config.mlflow_tracking_uri`):
a local SQLite store and artifact folder on the embedded default, a tracking server
at scale. The launcher creates the run and tags it with the Airflow DAG, run and line;
rank 0 of the workers logs per-epoch metrics into it; the launcher logs the
artifacts and closes it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import factory_home, mlflow_artifact_root, mlflow_tracking_uri

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def experiment_name(line: str) -> str:
    return f"factory/{line}"


def client(home: Path | None = None) -> MlflowClient:
    # MLflow's SQLite store logs each alembic step at INFO on first use.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    uri = mlflow_tracking_uri(home)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def experiment_id(line: str, home: Path | None = None) -> str:
    c = client(home)
    name = experiment_name(line)
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = f"{mlflow_artifact_root(home).rstrip('/')}/{line}"
    try:
        return c.create_experiment(name, artifact_location=location, tags={"factory.line": line})
    except Exception:  # noqa: BLE001 - another task created it first
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start_run(line: str, run_name: str, tags: dict[str, str], params: dict[str, Any], home: Path | None = None) -> str:
    """A new MLflow run for a training run; returns its id."""
    c = client(home)
    run = c.create_run(
        experiment_id(line, home), run_name=run_name, tags={"factory.line": line, **tags}
    )
    for key, value in params.items():
        c.log_param(run.info.run_id, key, value if value is not None else "")
    return run.info.run_id


def finish_run(
    run_id: str,
    *,
    status: str,
    metrics: dict[str, float] | None = None,
    artifacts: list[tuple[str, Path]] | None = None,
    tags: dict[str, str] | None = None,
    home: Path | None = None,
) -> None:
    """Log final metrics, artifacts (``(artifact_path, local dir or file)`` pairs) and tags, and
    end the run with ``status`` (FINISHED or FAILED)."""
    c = client(home)
    for key, value in (metrics or {}).items():
        if value is not None:
            c.log_metric(run_id, key, float(value))
    for key, value in (tags or {}).items():
        c.set_tag(run_id, key, value)
    for artifact_path, local in artifacts or []:
        local = Path(local)
        if local.is_dir():
            c.log_artifacts(run_id, str(local), artifact_path=artifact_path)
        elif local.exists():
            c.log_artifact(run_id, str(local), artifact_path=artifact_path)
    c.set_terminated(run_id, status=status)


def worker_env(run_id: str, home: Path | None = None) -> dict[str, str]:
    """What rank 0 needs to log into the run."""
    return {"MLFLOW_TRACKING_URI": mlflow_tracking_uri(home or factory_home()), "MLFLOW_RUN_ID": run_id}


def run_url(run_id: str, experiment: str) -> str | None:
    """A link to the run in the MLflow UI when a server is configured."""
    base = os.environ.get("FACTORY_MLFLOW_UI")
    return f"{base.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}" if base else None
