"""What only Airflow and MLflow know, for the view: the DAG runs behind batches and training
runs (Airflow's metadata database; the view runs inside the API server, which has it), and
MLflow's experiment ids, registry versions and aliases.

Both are best effort: a failure becomes a note on the page, and MLflow gets a time limit so
a tracking server that does not answer cannot hold the page.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

from pipelines.catalog.layout import legacy_run_folder_name, registered_model_name, run_folder_name
from pipelines.ui.data import MlflowLine, RunRef

RECENT_RUNS = 500
MLFLOW_TIMEOUT_S = 5.0
CHAMPION = "champion"


class AirflowDbRuns:
    """DAG runs from Airflow's metadata database (only inside an Airflow component)."""

    def __init__(self, limit: int = RECENT_RUNS):
        self.limit = limit

    def _runs(self, session: Any, dag_id: str) -> list[Any]:
        from airflow.models.dagrun import DagRun
        from sqlalchemy import select

        stmt = (
            select(DagRun.run_id, DagRun._state, DagRun.conf)
            .where(DagRun.dag_id == dag_id)
            .order_by(DagRun.run_after.desc(), DagRun.id.desc())
            .limit(self.limit)
        )
        return list(session.execute(stmt).all())

    def batch_runs(self, line: str) -> dict[str, RunRef]:
        """The latest ingest run that planned each batch (its ``plan`` task's XCom), else
        the latest one whose conf named it."""
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        dag_id = f"ingest_{line}"
        out: dict[str, RunRef] = {}
        with create_session() as session:
            runs = self._runs(session, dag_id)
            states = {r.run_id: r._state for r in runs}
            for r in reversed(runs):  # oldest first: later runs win
                conf = r.conf if isinstance(r.conf, dict) else {}
                if isinstance(conf.get("batch_id"), str):
                    out[conf["batch_id"]] = RunRef(dag_id, r.run_id, r._state)
            stmt = (
                select(XComModel.run_id, XComModel.value)
                .where(
                    XComModel.dag_id == dag_id,
                    XComModel.task_id == "plan",
                    XComModel.key == "return_value",
                    XComModel.map_index == -1,
                    XComModel.run_id.in_(list(states)),
                )
                .order_by(XComModel.timestamp)
            )
            for row in session.execute(stmt).all():
                value = XComModel.deserialize_value(row)
                if isinstance(value, list):
                    for batch_id in value:
                        out[str(batch_id)] = RunRef(dag_id, row.run_id, states.get(row.run_id))
        return out

    def training_runs(self, line: str) -> dict[str, RunRef]:
        from airflow.utils.session import create_session

        dag_id = f"train_{line}"
        with create_session() as session:
            runs = self._runs(session, dag_id)
        out: dict[str, RunRef] = {}
        for r in reversed(runs):  # folders named before run ids were hashed; a run's own folder wins
            out[legacy_run_folder_name(r.run_id)] = RunRef(dag_id, r.run_id, r._state)
        for r in reversed(runs):
            out[run_folder_name(r.run_id)] = RunRef(dag_id, r.run_id, r._state)
        return out


_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="factory-ui-mlflow")


class MlflowRegistry:
    """Experiment id and registered model versions of a line (``factory.<line>``)."""

    def __init__(self, home: Path | None = None, timeout_s: float = MLFLOW_TIMEOUT_S):
        self.home = home
        self.timeout_s = timeout_s

    def line(self, line: str) -> MlflowLine:
        from pipelines.config import mlflow_tracking_uri

        uri = mlflow_tracking_uri(self.home)
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
            return MlflowLine()  # nothing tracked yet (and no store is created by looking)
        future = _POOL.submit(self._line, line)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            return MlflowLine(error=f"no answer from the tracking store within {self.timeout_s:g}s")
        except Exception as err:  # noqa: BLE001 - shown as a note
            return MlflowLine(error=f"{type(err).__name__}: {err}"[:300])

    def _line(self, line: str) -> MlflowLine:
        from mlflow.exceptions import MlflowException

        from pipelines import tracking

        c = tracking.client(self.home)
        exp = c.get_experiment_by_name(tracking.experiment_name(line))
        out = MlflowLine(experiment_id=exp.experiment_id if exp is not None else None)
        name = registered_model_name(line)
        try:
            model = c.get_registered_model(name)
        except MlflowException:
            return out  # no registered model yet
        out.aliases = {str(k): str(v) for k, v in (model.aliases or {}).items()}
        for v in c.search_model_versions(f"name='{name}'", max_results=200):
            out.versions.append(
                {
                    "version": str(v.version),
                    "run_id": v.run_id,
                    "aliases": list(getattr(v, "aliases", None) or []),
                    "status": v.status,
                }
            )
        return out

