"""The launcher against real ``horovodrun`` workers: a killed worker fails the run
with that worker's error, a run over its time limit is stopped, a task process killed
outright takes its workers with it (and its retry never trains beside them), and nothing
is left running any way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from processes import processes

from bench.realdata import lending_club_frame, make_validated_batch
from pipelines.config import REPO_ROOT, ml_python
from pipelines.training import launch
from pipelines.training.prepare import prepare_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (ml_python().parent / "horovodrun").exists(), reason="ML environment not set up"),
]


def _workers(run_dir: Path) -> dict[int, int]:
    """pid -> Horovod rank of the worker processes of this run folder."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"pipelines.training.worker" not in cmdline or str(run_dir).encode() not in cmdline:
                continue
            env = dict(
                item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item
            )
        except OSError:
            continue
        if b"HOROVOD_RANK" in env:
            found[int(proc.name)] = int(env[b"HOROVOD_RANK"])
    return found


@pytest.fixture
def run_dir(home, tmp_path) -> Path:
    for n in (1, 2):
        make_validated_batch(home, "credit_risk", f"s{n}", lending_club_frame(n))
    run = tmp_path / "run"
    manifest = prepare_run("credit_risk", run, {"workers": 2, "epochs": 200, "batch_size": 32}, home=home)
    # a run that keeps going until stopped: no early stopping
    manifest["params"]["early_stopping_patience"] = 1000
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def _run_in_thread(run_dir: Path, timeout_s: int) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target() -> None:
        started = time.monotonic()
        try:
            launch.run_workers(run_dir, 2, timeout_s=timeout_s, log_path=run_dir / "logs" / "h.log")
        except Exception as err:  # noqa: BLE001 - the test inspects it
            outcome["error"] = err
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def _wait_for_training(run_dir: Path, limit: float = 180) -> dict[int, int]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        log = run_dir / "logs" / "h.log"
        if log.exists() and "factory-train: epoch 1 " in log.read_text(errors="replace"):
            workers = _workers(run_dir)
            if len(workers) == 2:
                return workers
        time.sleep(0.5)
    raise AssertionError("the workers did not start training")


def test_killed_worker_fails_the_run_with_its_error(run_dir):
    thread, outcome = _run_in_thread(run_dir, timeout_s=600)
    workers = _wait_for_training(run_dir)
    victim = next(pid for pid, rank in workers.items() if rank == 1)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=180)
    assert not thread.is_alive(), "the launcher hung after a worker was killed"
    assert time.monotonic() - killed_at < 120
    err = outcome["error"]
    assert isinstance(err, launch.TrainingFailed)
    assert "Horovod training failed" in str(err) and "full log" in str(err)
    assert _workers(run_dir) == {}  # no worker left behind


def test_time_limit_stops_every_worker(run_dir):
    thread, outcome = _run_in_thread(run_dir, timeout_s=45)
    thread.join(timeout=240)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], launch.TrainingFailed)
    assert "did not finish within 45s" in str(outcome["error"])
    time.sleep(1)
    assert _workers(run_dir) == {}


def test_missing_run_folder_is_a_clear_worker_error(tmp_path):
    with pytest.raises(launch.TrainingFailed) as info:
        launch.run_workers(tmp_path / "nope", 1, timeout_s=300, log_path=tmp_path / "h.log")
    assert "nope" in str(info.value)


# The task process: what the train task does, in a process of its own that the test kills.
TASK = """
import sys
from pathlib import Path
from pipelines.training import launch
run = Path(sys.argv[1])
launch.run_workers(run, 2, timeout_s=900, log_path=run / "logs" / "h.log")
"""


def _horovodrun(run_dir: Path) -> set[int]:
    return processes(lambda argv: any(part.endswith(b"horovodrun") for part in argv[:2])
                     and str(run_dir).encode() in argv)


def _task(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TASK, str(run_dir)], cwd=REPO_ROOT, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_task_killed_outright_takes_its_workers_with_it_and_its_retry_waits(run_dir):
    task = _task(run_dir)
    first_workers = set(_wait_for_training(run_dir))
    first_launcher = _horovodrun(run_dir)
    assert len(first_launcher) == 1
    task.send_signal(signal.SIGKILL)  # an OOM kill, Airflow's escalation after SIGTERM
    task.wait()
    retry = _task(run_dir)  # Airflow's retry, at once
    try:
        gone_at = second_started_at = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and second_started_at is None:
            alive = (set(_workers(run_dir)) & first_workers) | (_horovodrun(run_dir) & first_launcher)
            if not alive and gone_at is None:
                gone_at = time.monotonic()
            if _horovodrun(run_dir) - first_launcher:
                second_started_at = time.monotonic()
                assert not alive, f"the retry started while {sorted(alive)} of the killed try still ran"
            time.sleep(0.05)
        assert gone_at is not None, "the killed task's horovodrun and workers lived on"
        assert second_started_at is not None, "the retry never started"
        assert gone_at - (deadline - 120) < 15, "the survivors were not stopped within seconds"
        # a polite stop (Airflow's SIGTERM) of the retry stops its tree too
        _wait_for_training(run_dir)
        retry.send_signal(signal.SIGTERM)
        retry.wait(timeout=60)
        time.sleep(1)
        assert _workers(run_dir) == {} and _horovodrun(run_dir) == set()
    finally:
        retry.kill()
