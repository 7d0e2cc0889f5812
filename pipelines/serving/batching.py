"""Server-side micro-batching, as TF Serving's batching does: the requests for one
(line, version, signature) waiting when the key's worker is free (up to ``max_rows``
rows; ``window_s`` > 0 also waits that long for more) are one call of the signature,
made in a worker thread so the event loop keeps accepting requests; the outputs are
split back per request. With no window (the default) a lone request is not held back,
and under load the batches grow by themselves: the requests that arrive while one batch
runs are the next batch.

Each batch's records go to the prediction log with one :meth:`PredictionLog.append`
(one ``fsync``) *before* any of its requests is answered: a request whose records could
not be made durable gets :class:`PredictionLogError` instead of its outputs. The log
write of one batch overlaps the model call of the next (both leave the interpreter
free: TensorFlow's kernels and ``fsync`` release the GIL).

No TensorFlow here: the batch calls what it is given.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.serving.predlog import PredictionLogError

WINDOW_S = 0.0
MAX_ROWS = 512
IDLE_EXIT_S = 30.0
# log writes of one key in flight at once; the key's worker waits beyond (backpressure)
LOGS_IN_FLIGHT = 2


@dataclass
class Pending:
    """One request waiting in a batch."""

    columns: dict[str, list[Any]]
    rows: int
    records: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]  # per-row outputs -> log records
    future: asyncio.Future = field(default=None)  # type: ignore[assignment]


class Batcher:
    """Batches requests per key; each key has one worker task, made on demand and gone
    when idle."""

    def __init__(self, *, window_s: float = WINDOW_S, max_rows: int = MAX_ROWS,
                 on_batch: Callable[[Any, int], None] = lambda key, rows: None,
                 on_log: Callable[[Any, float], None] = lambda key, seconds: None) -> None:
        self.window_s = window_s
        self.max_rows = max_rows
        self.on_batch = on_batch
        self.on_log = on_log
        self._queues: dict[Any, asyncio.Queue] = {}
        self._tasks: set[asyncio.Task] = set()
        self._log_slots: dict[Any, asyncio.Semaphore] = {}

    async def submit(self, key: Any, call: Callable[[dict[str, list[Any]]], list[dict[str, Any]]],
                     log: Any, pending: Pending) -> list[dict[str, Any]]:
        """The request's per-row outputs once its batch ran and was logged.

        ``call(columns) -> per-row outputs`` runs the signature; ``log`` has ``append``."""
        pending.future = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            task = asyncio.create_task(self._work(key, queue, call, log))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.put_nowait(pending)
        return await pending.future

    async def _work(self, key: Any, queue: asyncio.Queue, call: Callable, log: Any) -> None:
        try:
            await self._batches(key, queue, call, log)
        finally:  # ended (idle, or cancelled): a later request makes a new worker
            if self._queues.get(key) is queue:
                del self._queues[key]
            while not queue.empty():
                _fail(queue.get_nowait().future, RuntimeError("the batch queue was stopped"))

    async def _batches(self, key: Any, queue: asyncio.Queue, call: Callable, log: Any) -> None:
        loop = asyncio.get_running_loop()
        carry: Pending | None = None
        while True:
            if carry is not None:
                first, carry = carry, None
            else:
                try:
                    first = await asyncio.wait_for(queue.get(), IDLE_EXIT_S)
                except TimeoutError:
                    if queue.empty():  # no await between this check and the removal (in _work)
                        return
                    continue
            batch, rows = [first], first.rows
            deadline = loop.time() + self.window_s
            while rows < self.max_rows:
                try:
                    nxt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(queue.get(), left)
                    except TimeoutError:
                        break
                if rows + nxt.rows > self.max_rows:
                    carry = nxt  # starts the next batch
                    break
                batch.append(nxt)
                rows += nxt.rows
            try:
                await self._run(key, batch, rows, call, log)
            except Exception as err:  # noqa: BLE001 - the queue must go on serving its key
                for p in batch:
                    _fail(p.future, err)

    async def _run(self, key: Any, batch: list[Pending], rows: int, call: Callable, log: Any) -> None:
        self.on_batch(key, rows)
        try:
            outputs = await asyncio.to_thread(_call_batch, call, batch)
        except BaseException as err:  # noqa: BLE001 - every request of the batch gets it
            for p in batch:
                _fail(p.future, err)
            if isinstance(err, asyncio.CancelledError):
                raise
            return
        records, answered = [], []
        for p, out in zip(batch, outputs, strict=True):
            if isinstance(out, BaseException):
                _fail(p.future, out)
            else:
                records.extend(p.records(out))
                answered.append((p, out))
        # logged and answered while the worker takes the next batch
        slots = self._log_slots.setdefault(key, asyncio.Semaphore(LOGS_IN_FLIGHT))
        await slots.acquire()
        task = asyncio.create_task(self._log_and_answer(key, records, answered, log, slots))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _log_and_answer(self, key: Any, records: list[dict[str, Any]], answered: list, log: Any,
                              slots: asyncio.Semaphore) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(log.append, records)
        except Exception as err:  # noqa: BLE001 - nothing unlogged is acknowledged
            if not isinstance(err, PredictionLogError):
                err = PredictionLogError(f"the prediction log failed: {err!r}")
            for p, _ in answered:
                _fail(p.future, err)
            return
        finally:
            slots.release()
            self.on_log(key, time.perf_counter() - started)
        for p, out in answered:
            if not p.future.done():
                p.future.set_result(out)


def _fail(future: asyncio.Future, err: BaseException) -> None:
    """Fail a request's future unless it is settled already (its client went away)."""
    if not future.done():
        future.set_exception(err)


def _call_batch(call: Callable, batch: list[Pending]) -> list[Any]:
    """Per request of the batch: its outputs, or the error of calling it alone (when the
    batch as a whole failed, each request is called alone so one cannot fail the others)."""
    if len(batch) == 1:
        try:
            return [call(batch[0].columns)]
        except Exception as err:  # noqa: BLE001
            return [err]
    columns = {name: [v for p in batch for v in p.columns[name]] for name in batch[0].columns}
    try:
        outputs = call(columns)
    except Exception:  # noqa: BLE001
        return _call_batch_alone(call, batch)
    out, start = [], 0
    for p in batch:
        out.append(outputs[start:start + p.rows])
        start += p.rows
    return out


def _call_batch_alone(call: Callable, batch: list[Pending]) -> list[Any]:
    return [_call_batch(call, [p])[0] for p in batch]
