"""A DAG run's conf checked against the DAG's declared params (Airflow side only).

Airflow validates the conf keys a DAG declares as ``params`` (types, ranges, patterns)
but accepts any other key: a run triggered with ``{"wrokers": 3}`` (UI, REST API,
``factory trigger``) would go on with the defaults. Every DAG's first task calls
:func:`check_conf`, so such a run fails before any work starts, naming the unknown
keys and the ones the DAG takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class UnknownConfKeys(ValueError):
    """A run's conf has keys its DAG does not declare; the message names them."""


def unknown_conf_keys(conf: Mapping[str, Any] | None, declared: Iterable[str]) -> list[str]:
    """The conf's keys that are not among ``declared``, sorted."""
    return sorted(set(conf or {}) - set(declared))


def refuse_unknown_conf(dag_id: str, conf: Mapping[str, Any] | None, declared: Iterable[str]) -> None:
    """Raise :class:`UnknownConfKeys` when ``conf`` has a key ``declared`` lacks."""
    declared = sorted(declared)
    if not isinstance(conf, Mapping | None):
        raise UnknownConfKeys(f"{dag_id}: the run's conf must be a JSON object, got {type(conf).__name__}")
    unknown = unknown_conf_keys(conf, declared)
    if unknown:
        takes = f"the keys it takes: {declared}" if declared else "it takes none"
        raise UnknownConfKeys(f"{dag_id}: unknown conf key(s) {unknown} in the run's conf; {takes}")


def check_conf(dag_run: Any, dag: Any) -> None:
    """Fail the task, without retries, when the run's conf has a key its DAG's params do
    not declare (``dag_run`` and ``dag``: the task's context entries)."""
    from airflow.sdk.exceptions import AirflowFailException

    if dag_run is None:  # not in a DAG run: no conf
        return
    if dag is None:
        raise ValueError("no DAG to check the run's conf against")
    try:
        refuse_unknown_conf(dag.dag_id, getattr(dag_run, "conf", None), dag.params.keys())
    except UnknownConfKeys as err:
        raise AirflowFailException(str(err)) from None
