"""A small client of Airflow's REST API v2, as the factory's own commands use it.

It does what the README shows with curl and with the official client
(``apache-airflow-client``): get a JWT from ``/auth/token``, unpause a DAG, trigger a
run with a conf, read a run's state and its task instances.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

TERMINAL = {"success", "failed"}


class ApiError(RuntimeError):
    """An API call was refused or failed; carries the status and Airflow's reason."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


def _reason(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return str(detail)[:1000]


class Client:
    def __init__(self, base_url: str, username: str | None = None, password: str | None = None, token: str | None = None):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=30)
        self.token = token
        if token is None and username is not None:
            self.token = self.login(username, password or "")

    def login(self, username: str, password: str) -> str:
        r = self._http.post("/auth/token", json={"username": username, "password": password})
        if r.status_code not in (200, 201):
            raise ApiError(r.status_code, f"login as {username!r} refused: {_reason(r)}")
        return r.json()["access_token"]

    def _call(self, method: str, path: str, *, attempts: int = 5, **kwargs: Any) -> Any:
        """One API call. A 500 from the server is retried with back-off: on the embedded
        default (SQLite) a write can meet "database is locked" while the scheduler and
        the DAG processor write too, and the failed request changed nothing."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        for attempt in range(attempts):
            try:
                r = self._http.request(method, f"/api/v2{path}", headers=headers, **kwargs)
            except httpx.TransportError:
                if attempt == attempts - 1:
                    raise
                time.sleep(2**attempt)
                continue
            if r.status_code in (500, 502, 503) and attempt < attempts - 1:
                time.sleep(2**attempt)
                continue
            if r.status_code >= 400:
                raise ApiError(r.status_code, f"{method} {path}: {_reason(r)}")
            return r.json() if r.content else None
        raise AssertionError("unreachable")

    def dag(self, dag_id: str) -> dict:
        return self._call("GET", f"/dags/{dag_id}")

    def unpause(self, dag_id: str) -> dict:
        return self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None, note: str | None = None) -> dict:
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if note:
            body["note"] = note
        return self._call("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def runs(self, dag_id: str, limit: int = 20) -> list[dict]:
        out = self._call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": limit, "order_by": "-run_after"})
        return out["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        out = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")
        return out.get("value")

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
