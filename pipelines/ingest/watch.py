"""The landing zone's watcher: a batch landed sets off its line's ingest within seconds.

:class:`LandedBatchesTrigger` is an event trigger (``BaseEventTrigger``): the triggerer
runs it for as long as the ingest DAG is scheduled on the line's ``landed`` Asset
(:func:`pipelines.runtime.assets.landed_data`, which carries it as its ``AssetWatcher``).
It polls the batch ledger (a few small files, read off the event loop) and fires an
event on the Asset whenever batches it has not announced yet are waiting to be cleaned;
the scheduler turns the event into an ingest run, which plans every waiting batch. When
the triggerer starts (or restarts) it announces whatever is waiting, so a batch landed
while it was down is not left behind; a batch it announced once is not announced again
(an ingest run that failed is retried by Airflow, or by the DAG's schedule).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

DEFAULT_POLL_SECONDS = 2.0


def waiting_batches(line: str, home: str | None = None) -> list[str]:
    """Batches of ``line`` landed and not yet cleaned, oldest first."""
    from pathlib import Path

    from pipelines.ingest import landing
    from pipelines.specs import load_spec

    return landing.pending(load_spec(line), Path(home) if home else None)


class LandedBatchesTrigger(BaseEventTrigger):
    """Fires each time batches of ``line`` it has not announced are waiting to be cleaned."""

    def __init__(self, line: str, poll_seconds: float = DEFAULT_POLL_SECONDS, home: str | None = None):
        super().__init__()
        self.line, self.poll_seconds, self.home = line, poll_seconds, home

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "pipelines.ingest.watch.LandedBatchesTrigger",
            {"line": self.line, "poll_seconds": self.poll_seconds, "home": self.home},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        announced: set[str] = set()
        while True:
            try:
                waiting = await asyncio.to_thread(waiting_batches, self.line, self.home)
            except Exception as err:  # noqa: BLE001 - a damaged record must not stop the watch
                self.log.warning("cannot read the %s ledger: %s", self.line, err)
                waiting = []
            new = [b for b in waiting if b not in announced]
            if new:
                announced.update(new)
                yield TriggerEvent({"line": self.line, "batches": new})
            announced &= set(waiting)  # cleaned batches need no memory
            await asyncio.sleep(self.poll_seconds)
