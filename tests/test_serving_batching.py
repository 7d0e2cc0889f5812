"""The model server's micro-batching, with a real prediction log (files, fsync) and a
plain function in place of the model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pipelines.serving import predlog
from pipelines.serving.batching import Batcher, Pending
from pipelines.serving.predlog import PredictionLog, PredictionLogError


def _double(columns):
    """The stand-in model: one output, twice the input; a negative value is refused."""
    if any(v < 0 for v in columns["x"]):
        raise ValueError("negative input")
    return [{"y": 2 * v} for v in columns["x"]]


def _pending(values, rid):
    return Pending({"x": list(values)}, len(values),
                   lambda outs: [{"request_id": rid, "instance": i, "outputs": o} for i, o in enumerate(outs)])


def _logged(log: PredictionLog) -> list[dict]:
    return [r for seg in sorted(log.dir.glob("*.jsonl")) for r in predlog.read_segment(seg)[0]]


def test_one_batch_one_append_and_answers_only_after_it(tmp_path):
    log = PredictionLog("line", tmp_path)
    batches = []
    seen_at_answer = []

    async def main():
        batcher = Batcher(window_s=0.05, on_batch=lambda key, rows: batches.append(rows))

        async def one(i):
            out = await batcher.submit("k", _double, log, _pending([i, i + 1], f"r{i}"))
            seen_at_answer.append({r["request_id"] for r in _logged(log)})
            return out

        return await asyncio.gather(*(one(i) for i in range(10)))

    answers = asyncio.run(main())
    assert answers == [[{"y": 2 * i}, {"y": 2 * i + 2}] for i in range(10)]
    assert batches == [20]  # one call of the model for the ten requests
    assert len(_logged(log)) == 20
    assert all(s == {f"r{i}" for i in range(10)} for s in seen_at_answer)  # logged before any answer


def test_a_request_the_model_refuses_fails_alone(tmp_path):
    log = PredictionLog("line", tmp_path)

    async def main():
        batcher = Batcher(window_s=0.05)
        return await asyncio.gather(*(batcher.submit("k", _double, log, _pending([v], f"r{v}"))
                                      for v in (1, -1, 2, 3)), return_exceptions=True)

    answers = asyncio.run(main())
    assert answers[0] == [{"y": 2}] and answers[2] == [{"y": 4}] and answers[3] == [{"y": 6}]
    assert isinstance(answers[1], ValueError)
    assert sorted(r["request_id"] for r in _logged(log)) == ["r1", "r2", "r3"]


def test_an_unwritable_log_answers_nothing(tmp_path):
    (tmp_path / "predictions").write_text("a file where the log's folder should be")
    log = PredictionLog("line", tmp_path)

    async def main():
        batcher = Batcher(window_s=0.01)
        return await asyncio.gather(*(batcher.submit("k", _double, log, _pending([v], f"r{v}")) for v in (1, 2)),
                                    return_exceptions=True)

    assert all(isinstance(a, PredictionLogError) for a in asyncio.run(main()))


def test_a_client_that_goes_away_does_not_stop_its_batch_queue(tmp_path):
    """A request cancelled while its batch runs (the client went away, a shutdown), whose
    answer is an error: the next requests of the same (line, version, signature) are
    still answered."""
    log = PredictionLog("line", tmp_path)
    in_call = threading.Event()

    def slow(columns):
        in_call.set()
        time.sleep(0.3)
        return _double(columns)

    async def main():
        batcher = Batcher(window_s=0.001)
        first = asyncio.create_task(batcher.submit("k", slow, log, _pending([-1], "gone")))
        while not in_call.is_set():
            await asyncio.sleep(0.01)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await asyncio.wait_for(batcher.submit("k", slow, log, _pending([5], "next")), 5)

    assert asyncio.run(main()) == [{"y": 10}]
