"""The drift monitor's sensor: waits, deferred, for validated batches to score.

:class:`NewBatchesSensor` checks once on a worker; if there is nothing to do it defers
to :class:`NewBatchesTrigger`, which the triggerer runs: an asyncio loop that holds no
worker slot while it waits. It fires when the line has validated batches that are not
in its drift history yet AND a model is in serving to compare them with (until then
there is nothing to score against, and waiting is the right answer, not a failure), or
when a closed window of live traffic, or a window with enough new labels, waits to be
scored (:func:`pipelines.monitoring.live.waiting_windows`: scored against the version
that answered it, which need not be in serving any more).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent


def pending_work(line: str, home: str | None = None) -> dict[str, Any]:
    """What the monitor could do now: new batches, and whether a model is in serving."""
    from pathlib import Path

    from pipelines.monitoring.stage import serving_model, unscored_batches

    h = Path(home) if home else None
    served = serving_model(line, h)
    work: dict[str, Any] = {
        "batches": unscored_batches(line, h),
        "model_version": None if served is None else served[0],
        "live": [],
    }
    try:
        from pipelines.monitoring.live import waiting_windows

        work["live"] = waiting_windows(line, h)
    except Exception as err:  # noqa: BLE001 - a damaged prediction log must not stop batch monitoring
        work["live_error"] = f"{type(err).__name__}: {err}"
    return work


def _ready(work: dict[str, Any]) -> bool:
    return (bool(work["batches"]) and work["model_version"] is not None) or bool(work.get("live"))


class NewBatchesTrigger(BaseTrigger):
    """Fires once the line has unscored validated batches and a serving model, or live
    windows to score."""

    def __init__(self, line: str, poll_seconds: float = 30.0, home: str | None = None):
        super().__init__()
        self.line, self.poll_seconds, self.home = line, poll_seconds, home

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "pipelines.monitoring.sensor.NewBatchesTrigger",
            {"line": self.line, "poll_seconds": self.poll_seconds, "home": self.home},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            # file reads off the event loop: the triggerer runs many triggers at once
            work = await asyncio.to_thread(pending_work, self.line, self.home)
            if _ready(work):
                yield TriggerEvent(work)
                return
            await asyncio.sleep(self.poll_seconds)


class NewBatchesSensor(BaseSensorOperator):
    """Waits for new validated batches of ``line`` with a model in serving, or live windows
    to score; returns them."""

    template_fields = ("line",)

    def __init__(self, *, line: str, poll_seconds: float = 30.0, **kwargs: Any):
        kwargs.setdefault("timeout", timedelta(hours=6).total_seconds())
        super().__init__(**kwargs)
        self.line, self.poll_seconds = line, poll_seconds

    def poke(self, context: Any) -> bool:  # the non-deferred path (e.g. deferrable off)
        return _ready(pending_work(self.line))

    def execute(self, context: Any) -> dict[str, Any]:
        from pipelines.runtime.params import check_conf

        check_conf(context.get("dag_run"), context.get("dag"))  # the monitor DAG takes no conf keys
        work = pending_work(self.line)
        if _ready(work):
            return work
        self.defer(
            trigger=NewBatchesTrigger(self.line, self.poll_seconds),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        return event or pending_work(self.line)
