"""Running the factory: the embedded Airflow runtime, the REST API client, the Assets.

- :mod:`~pipelines.runtime.supervisor`: ``factory start`` / ``stop`` / ``status`` (the
  Airflow components and the model server as local processes, their credentials and
  environment);
- :mod:`~pipelines.runtime.api`: the factory's calls to Airflow's REST API;
- :mod:`~pipelines.runtime.assets`: the Assets that link the DAGs of a line;
- :mod:`~pipelines.runtime.params`: a run's conf against its DAG's params (every DAG's
  first task refuses keys the DAG does not declare).

``from pipelines import runtime`` gives the supervisor's functions directly
(``runtime.start()``, ``runtime.admin()``), the way the CLI and tests use them.
"""

from __future__ import annotations

from pipelines.runtime.supervisor import (
    COMPONENTS,
    Credentials,
    RuntimeFailure,
    admin,
    api_host,
    api_port,
    base_url,
    check_exposure,
    group_processes,
    runtime_environment,
    runtime_processes,
    serving_url,
    start,
    status,
    stop,
    viewer,
)

__all__ = [
    "COMPONENTS",
    "Credentials",
    "RuntimeFailure",
    "admin",
    "api_host",
    "api_port",
    "base_url",
    "check_exposure",
    "group_processes",
    "runtime_environment",
    "runtime_processes",
    "serving_url",
    "start",
    "status",
    "stop",
    "viewer",
]
