"""The factory's calls to Airflow's REST API v2, made with the official client.

It does what the README shows with curl and with ``apache-airflow-client``: get a JWT
from ``/auth/token``, unpause a DAG, trigger a run with a conf, read a run's state, its
task instances and XComs. Results are plain dicts, as the server's JSON has them (state
strings, ISO dates), not the client's models.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import airflow_client.client as ac
from airflow_client.client.api.dag_api import DAGApi
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.api.task_instance_api import TaskInstanceApi
from airflow_client.client.api.x_com_api import XComApi
from airflow_client.client.exceptions import ApiException
from airflow_client.client.models.dag_patch_body import DAGPatchBody
from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody
from pydantic import BaseModel
from urllib3.util.retry import Retry

TERMINAL = {"success", "failed"}
TIMEOUT_S = 30

# On the embedded default (SQLite) a write can meet "database is locked" (a 500 that
# changed nothing) while the scheduler and the DAG processor write too: retry with back-off.
RETRY = Retry(
    total=4,
    backoff_factor=1,
    status_forcelist=(500, 502, 503),
    allowed_methods=None,
    raise_on_status=False,
)

T = TypeVar("T")


class ApiError(RuntimeError):
    """An API call was refused or failed; carries the status and Airflow's reason."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


def _reason(body: str | bytes | None, fallback: str | None = None) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(body or "")
    except ValueError:
        return (body or fallback or "")[:500]
    detail = data.get("detail", data) if isinstance(data, dict) else data
    return str(detail)[:1000]


def _plain(model: BaseModel) -> dict:
    out = model.model_dump(mode="json", by_alias=True)
    out.update(out.pop("additional_properties", None) or {})
    return out


class Client:
    def __init__(self, base_url: str, username: str | None = None, password: str | None = None, token: str | None = None):
        self.base_url = base_url.rstrip("/")
        self._config = ac.Configuration(host=self.base_url, access_token=token, retries=RETRY)
        self._api = ac.ApiClient(self._config)
        self._dags = DAGApi(self._api)
        self._runs = DagRunApi(self._api)
        self._tis = TaskInstanceApi(self._api)
        self._xcoms = XComApi(self._api)
        if token is None and username is not None:
            self.token = self.login(username, password or "")

    @property
    def token(self) -> str | None:
        return self._config.access_token

    @token.setter
    def token(self, value: str | None) -> None:
        self._config.access_token = value

    def login(self, username: str, password: str) -> str:
        # /auth/token lies outside the /api/v2 spec the client is generated from: sent by hand.
        r = self._api.rest_client.request(
            "POST",
            f"{self.base_url}/auth/token",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            body={"username": username, "password": password},
            _request_timeout=TIMEOUT_S,
        )
        data = r.read()
        if r.status not in (200, 201):
            raise ApiError(r.status, f"login as {username!r} refused: {_reason(data, r.reason)}")
        return json.loads(data)["access_token"]

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One call of the generated client; a refusal becomes an ApiError with the server's reason."""
        try:
            return fn(*args, _request_timeout=TIMEOUT_S, **kwargs)
        except ApiException as err:
            raise ApiError(err.status or 0, f"{what}: {_reason(err.body, err.reason)}") from err

    def dag(self, dag_id: str) -> dict:
        return _plain(self._call(f"read DAG {dag_id}", self._dags.get_dag, dag_id))

    def _set_paused(self, dag_id: str, paused: bool) -> dict:
        what = f"{'pause' if paused else 'unpause'} {dag_id}"
        return _plain(self._call(what, self._dags.patch_dag, dag_id, DAGPatchBody(is_paused=paused)))

    def unpause(self, dag_id: str) -> dict:
        return self._set_paused(dag_id, False)

    def pause(self, dag_id: str) -> dict:
        return self._set_paused(dag_id, True)

    def trigger(self, dag_id: str, conf: dict | None = None, note: str | None = None) -> dict:
        body = TriggerDAGRunPostBody(logical_date=None, conf=conf or {}, **({"note": note} if note else {}))
        return _plain(self._call(f"trigger {dag_id}", self._runs.trigger_dag_run, dag_id, body))

    def run(self, dag_id: str, run_id: str) -> dict:
        return _plain(self._call(f"read {dag_id} run {run_id}", self._runs.get_dag_run, dag_id, run_id))

    def runs(self, dag_id: str, limit: int = 20) -> list[dict]:
        out = self._call(f"list {dag_id} runs", self._runs.get_dag_runs, dag_id, limit=limit, order_by=["-run_after"])
        return [_plain(r) for r in out.dag_runs]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        out = self._call(f"list {dag_id} run {run_id} tasks", self._tis.get_task_instances, dag_id, run_id)
        return [_plain(t) for t in out.task_instances]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        what = f"read XCom {key!r} of {dag_id} run {run_id} task {task_id}"
        entry = self._call(what, self._xcoms.get_xcom_entry, dag_id, task_id, run_id, key)
        return getattr(entry.actual_instance, "value", None)

    def wait(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout_s: float,
        poll_s: float = 3.0,
        on_change: Callable[[dict, list[dict]], None] | None = None,
    ) -> dict:
        """Poll a run until it ends; ``on_change`` sees each new set of task states."""
        deadline = time.monotonic() + timeout_s
        seen: tuple = ()
        while True:
            run = self.run(dag_id, run_id)
            if on_change is not None:
                tis = self.task_instances(dag_id, run_id)
                key = tuple(sorted((t["task_id"], t.get("map_index", -1), t.get("state")) for t in tis))
                if key != seen:
                    seen = key
                    on_change(run, tis)
            if run["state"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} run {run_id} still {run['state']} after {timeout_s:.0f}s")
            time.sleep(poll_s)
