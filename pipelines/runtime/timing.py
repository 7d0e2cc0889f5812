"""Where a line's wall time goes: the stages' own work, or Airflow around it.

An Airflow listener (registered by ``plugins/factory_timing.py``) runs inside every task
process: ``on_task_instance_running`` fires once the task runner has started, parsed
the DAG file and loaded the task, right before the operator executes; the
success/failed/skipped hooks fire once it has returned. Each task try appends one JSON
line (its DAG, run, task, map index, try, and the epoch seconds its work started and
ended) to :func:`pipelines.catalog.layout.task_work_log`. Nothing else writes that file.

:func:`line_overhead` lays the line's task instances (from the REST API: queued, start
and end of each try) and those work spans on one timeline, from when the line's work
was asked for to the end of its last task, and splits every second of it into exactly
one of:

- **work**: some task of the line is inside its operator's ``execute`` (a Spark job,
  a validation, a Horovod training, the gate, a drift check);
- **task start-up and teardown**: a task process is running, none is working (the
  task runner's start, DAG parsing, imports, reporting the state back);
- **queued**: a task waits in the executor's queue (a task process being spawned, or
  no free slot);
- **scheduling**: nothing of the line runs or waits in a queue (the scheduler's loop,
  asset events turning into runs, the triggerer polling a deferred sensor).

The four add up to the wall time. Orchestration overhead is everything but work.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.catalog import layout

# Work spans started in this task process, by task instance id.
_started: dict[str, float] = {}


def _key(ti: Any) -> str:
    return str(getattr(ti, "id", "") or f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{getattr(ti, 'map_index', -1)}")


def work_started(ti: Any) -> None:
    _started[_key(ti)] = time.time()


def work_ended(ti: Any, state: str) -> None:
    started = _started.pop(_key(ti), None)
    if started is None:  # not started in this process (a scheduler-side state change)
        return
    record = {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": getattr(ti, "map_index", -1),
        "try_number": getattr(ti, "try_number", None),
        "state": state,
        "start": round(started, 3),
        "end": round(time.time(), 3),
        "pid": os.getpid(),
    }
    storage.append_line(layout.task_work_log(), json.dumps(record))


def read_work(home: Path | None = None) -> list[dict[str, Any]]:
    """Every work span recorded under ``home``; a line that does not parse is left out."""
    path = layout.task_work_log(home)
    if not path.exists():
        return []
    spans = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            float(rec["start"]), float(rec["end"])
        except (ValueError, KeyError, TypeError):
            continue
        spans.append(rec)
    return spans


# ---------------------------------------------------------------- the timeline


def epoch(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


Interval = tuple[float, float]


def union(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[list[float]] = []
    for a, b in sorted((a, b) for a, b in intervals if b > a):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def length(intervals: Iterable[Interval]) -> float:
    return sum(b - a for a, b in intervals)


def clip(intervals: Iterable[Interval], lo: float, hi: float) -> list[Interval]:
    return [(max(a, lo), min(b, hi)) for a, b in intervals if min(b, hi) > max(a, lo)]


def minus(base: list[Interval], cut: list[Interval]) -> list[Interval]:
    """``base`` without ``cut`` (both unions)."""
    out: list[Interval] = []
    for a, b in base:
        pieces = [(a, b)]
        for c, d in cut:
            nxt = []
            for x, y in pieces:
                if d <= x or c >= y:
                    nxt.append((x, y))
                    continue
                if c > x:
                    nxt.append((x, c))
                if d < y:
                    nxt.append((d, y))
            pieces = nxt
        out.extend(pieces)
    return out


def breakdown(
    task_instances: list[dict[str, Any]], work: list[dict[str, Any]], since: float, until: float | None = None
) -> dict[str, Any]:
    """Split ``since``..``until`` (default: the last task's end) into work, task start-up
    and teardown, queued and scheduling seconds (see the module's doc). ``task_instances``
    are the REST API's task instances (``queued_when``, ``start_date``, ``end_date``);
    ``work`` the spans of :func:`read_work` of the same runs. A sensor's own span is left
    out (it covers its deferrals, when it holds no slot): its checks count as work spans."""
    running, queued = [], []
    for ti in task_instances:
        if str(ti.get("operator") or "").endswith("Sensor"):
            continue  # a deferrable sensor's span includes its waits: only its work spans count
        start, end = epoch(ti.get("start_date")), epoch(ti.get("end_date"))
        qd = epoch(ti.get("queued_when") or ti.get("queued_dttm"))
        if start is not None and end is not None:
            running.append((start, end))
        if qd is not None and (start or end) is not None:
            queued.append((qd, start if start is not None else end))
    ends = [b for _, b in running] + [float(w["end"]) for w in work]
    if until is None:
        until = max(ends) if ends else since
    spans = [(float(w["start"]), float(w["end"])) for w in work]
    work_u = union(clip(spans, since, until))
    tasks_u = union(clip(running + spans, since, until))
    queued_u = minus(union(clip(queued, since, until)), tasks_u)
    wall = max(until - since, 0.0)
    w, t, q = length(work_u), length(minus(tasks_u, work_u)), length(queued_u)
    s = max(wall - w - t - q, 0.0)
    return {
        "wall_s": round(wall, 1),
        "work_s": round(w, 1),
        "task_startup_s": round(t, 1),
        "queued_s": round(q, 1),
        "scheduling_s": round(s, 1),
        "overhead_s": round(wall - w, 1),
        "overhead_share": round((wall - w) / wall, 3) if wall else 0.0,
        "tasks": len(task_instances),
    }


def line_dag_ids(line: str) -> list[str]:
    return [f"ingest_{line}", f"train_{line}", f"monitor_{line}"]


def line_overhead(client: Any, line: str, since: float, home: Path | None = None, until: float | None = None) -> dict[str, Any]:
    """The breakdown of ``line``'s runs that started at or after ``since`` (epoch seconds),
    read from the REST API (``client``: :class:`pipelines.runtime.api.Client`) and the work log.
    Deferred sensors waiting for something to do (the monitor's ``wait``) are not work."""
    tis, keys = [], set()
    for dag_id in line_dag_ids(line):
        for run in client.runs(dag_id, limit=50):
            started = epoch(run.get("start_date")) or epoch(run.get("queued_at"))
            if started is None or started < since - 1:
                continue
            for ti in client.task_instances(dag_id, run["dag_run_id"]):
                tis.append(ti)
            keys.add((dag_id, run["dag_run_id"]))
    work = [w for w in read_work(home) if (w["dag_id"], w["run_id"]) in keys]
    result = breakdown(tis, work, since, until)
    result["runs"] = sorted(f"{d}/{r}" for d, r in keys)
    return result
