"""Launching the Horovod workers from an Airflow task.

The task runs in the orchestration environment; the workers run in the ML
environment, started by ``horovodrun`` as a subprocess. On the embedded default
that is ``-np W -H localhost:W --gloo``; at scale the same entry point gets a host
list (``FACTORY_HOROVOD_HOSTS=gpu1:4,gpu2:4``, reached over SSH with the port, key and
network interface of ``FACTORY_HOROVOD_SSH_*`` / ``FACTORY_HOROVOD_NETWORK_INTERFACE``)
or the MPI controller, by configuration. A worker that fails or is killed fails the task with that worker's
error; a run that exceeds its time limit is stopped, workers and all.

The workers run under a tether (:mod:`pipelines.runtime.tether`): if the task process
dies at once (SIGKILL, the out-of-memory killer), the tether stops ``horovodrun`` and
every worker within seconds. The tether holds the run folder's lock for as long as any of
them lives, so a retried task waits for the survivors of the last try to be gone and never
trains beside them on the same checkpoints.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pipelines import storage
from pipelines.catalog import layout
from pipelines.config import (
    horovod_controller,
    horovod_hosts,
    horovod_ssh_options,
    ml_python,
    ml_subprocess_environment,
)
from pipelines.runtime import tether

WORKER_MODULE = "pipelines.training.worker"
# Seconds horovodrun waits for all workers to check in.
START_TIMEOUT_S = 120
# How long a retry waits for the process tree of an earlier try to be gone.
RUN_LOCK_WAIT_S = 60
_RANK_LINE = re.compile(r"^\[(\d+)\]<(stdout|stderr)>:(.*)$")


class TrainingFailed(RuntimeError):
    """The workers failed, were killed, or ran out of time; the message carries their error."""


def horovod_command(run_dir: Path, workers: int) -> list[str]:
    python = ml_python()
    horovodrun = python.parent / "horovodrun"
    if not horovodrun.exists():
        raise TrainingFailed(f"horovodrun not found next to {python}: run scripts/setup.sh ml")
    cmd = [
        str(horovodrun),
        "-np", str(workers),
        "-H", horovod_hosts(workers),
        f"--{horovod_controller()}",
        "--start-timeout", str(START_TIMEOUT_S),
        *horovod_ssh_options(),
    ]
    return [*cmd, str(python), "-m", WORKER_MODULE, "--run-dir", str(run_dir)]


def worker_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The workers' environment: the ML venv first on PATH, legacy Keras (Horovod's
    TensorFlow ops need tf_keras with TF 2.16), quiet TF logs."""
    env = ml_subprocess_environment()
    env["TF_USE_LEGACY_KERAS"] = "1"
    # A dead peer must surface as an error in the survivors, not a wait forever.
    env.setdefault("HOROVOD_GLOO_TIMEOUT_SECONDS", "60")
    env.update(extra or {})
    return env


def _worker_error(lines: list[str]) -> str:
    """The most telling lines of a failed run: each rank's last error, else the tail."""
    errors: dict[str, str] = {}
    for line in lines:
        m = _RANK_LINE.match(line)
        text = (m.group(3) if m else line).strip()
        rank = m.group(1) if m else "launcher"
        if re.search(r"(Error|Exception|error:|Killed|Traceback|exit code|exited with)", text) and not text.startswith(
            "Traceback"
        ):
            errors[rank] = text
    if errors:
        return "\n".join(f"  rank {r}: {t}" if r != "launcher" else f"  {t}" for r, t in sorted(errors.items()))
    return "\n".join("  " + line for line in lines[-15:])


def run_workers(
    run_dir: Path,
    workers: int,
    *,
    timeout_s: int,
    log_path: Path,
    env_extra: dict[str, str] | None = None,
    echo: Callable[[str], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> list[str]:
    """Run ``horovodrun`` for this run folder; return its output lines.

    Output goes to ``log_path`` (and ``echo``, e.g. the task log) as it comes. On a
    non-zero exit, a kill, or the time limit, the whole process group is stopped and
    :class:`TrainingFailed` raised with the workers' error. ``on_line`` sees every
    output line as it comes and may stop the run by raising (a pruned tuning trial):
    the workers are stopped, and the exception passes on once they are gone.
    """
    cmd = horovod_command(run_dir, workers)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    lock_fd = _lock_run_folder(run_dir)
    started = time.monotonic()
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        try:
            proc = tether.popen(
                cmd,
                keep_fds=(lock_fd,),
                env=worker_environment(env_extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
        finally:
            os.close(lock_fd)  # the tether holds the lock from here on
        # A reader thread drains the pipe (blocking reads); this loop owns the clock.
        pending: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_drain, args=(proc.stdout, pending), daemon=True)
        reader.start()
        try:
            deadline = started + timeout_s
            finished = False
            while not finished:
                try:
                    line = pending.get(timeout=0.5)
                except queue.Empty:
                    if time.monotonic() > deadline:
                        _stop(proc)
                        raise TrainingFailed(
                            f"training did not finish within {timeout_s}s; workers stopped (log: {log_path})"
                        ) from None
                    continue
                if line is None:  # end of output: horovodrun has exited or is exiting
                    finished = True
                    continue
                lines.append(line)
                log.write(line + "\n")
                log.flush()
                if echo and ("factory-train" in line or "Error" in line):
                    echo(line)
                if on_line:
                    on_line(line)
            remaining = max(1.0, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                _stop(proc)
                raise TrainingFailed(
                    f"training did not finish within {timeout_s}s; workers stopped (log: {log_path})"
                ) from None
        except BaseException:
            _stop(proc)
            raise
        finally:
            tether.release(proc)
    if proc.returncode != 0:
        how = (
            f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        )
        raise TrainingFailed(
            f"Horovod training failed ({how}) after {time.monotonic() - started:.0f}s:\n"
            f"{_worker_error(lines)}\n(full log: {log_path})"
        )
    return lines


def _lock_run_folder(run_dir: Path) -> int:
    """The run folder's lock, once no process tree of an earlier try holds it."""
    if not Path(run_dir).is_dir():
        raise TrainingFailed(f"run folder {run_dir} does not exist")
    try:
        return storage.hold_lock(layout.run_lock_path(run_dir), RUN_LOCK_WAIT_S)
    except storage.Busy:
        raise TrainingFailed(
            f"{run_dir} is still in use by the processes of another try after {RUN_LOCK_WAIT_S}s; "
            "nothing was started"
        ) from None


def _drain(stream, out: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        out.put(line.rstrip("\n"))
    out.put(None)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the tether (it stops the tree and waits for it), then SIGKILL the group."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
