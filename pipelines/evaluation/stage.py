"""The evaluation stage's task logic on the Airflow side (no TensorFlow here).

``evaluate_and_push(line, run_dir)`` runs the gate in the ML environment as a subprocess
(``python -m pipelines.evaluation.gate``: checks, TFX pipeline with Evaluator and
Pusher, result JSON and HTML report), then records the candidate in the MLflow model
registry (:mod:`pipelines.evaluation.registry`) and returns a summary for XCom.

``rollback(line)`` moves serving and the ``champion`` alias back to the previous pushed
version (:mod:`pipelines.evaluation.rollback` in the ML environment, then the registry).

Bad input (a missing label column, a model without the serving signature, a force-bless
without a reason, a run folder that is not there) raises :class:`GateInputError` with the
gate's one-line message: nothing is evaluated, pushed or registered. A verdict of
NOT_BLESSED is a result, not an error: the task succeeds and says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.catalog import layout, records
from pipelines.config import REPO_ROOT, ml_python, ml_subprocess_environment
from pipelines.evaluation import registry
from pipelines.evaluation.gate import ForceBlessError, check_force_reason, previous_result
from pipelines.evaluation.inputs import GateInputError
from pipelines.evaluation.report import write_report
from pipelines.runtime import tether

GATE_MODULE = "pipelines.evaluation.gate"
ROLLBACK_MODULE = "pipelines.evaluation.rollback"
ERROR_PREFIX = "factory-eval: error: "
# How long a retry waits for the gate of an earlier try to be gone.
RUN_LOCK_WAIT_S = 60

__all__ = ["EvaluationFailed", "ForceBlessError", "GateInputError", "RollbackError", "evaluate_and_push",
           "plan_rollback", "rollback", "summary"]


class EvaluationFailed(RuntimeError):
    """The gate crashed or timed out (not a verdict); the message carries its error and log."""


class RollbackError(RuntimeError):
    """Nothing to roll back to, or the served version is not the one expected."""


def ml_environment(home: Path | None = None) -> dict[str, str]:
    env = ml_subprocess_environment()
    env.setdefault("PYTHONWARNINGS", "ignore")
    if home is not None:
        env["FACTORY_HOME"] = str(home)
    return env


def _run_ml(args: list[str], log_path: Path, timeout_s: int, home: Path | None,
            run_dir: Path | None = None) -> tuple[int, str, str]:
    """Run an ML-environment entry point under a tether (it dies with this task, see
    :mod:`pipelines.runtime.tether`); with ``run_dir``, holding the run folder's lock."""
    cmd = [str(ml_python()), "-m", *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    keep: tuple[int, ...] = ()
    if run_dir is not None:
        try:
            keep = (storage.hold_lock(layout.run_lock_path(run_dir), RUN_LOCK_WAIT_S),)
        except storage.Busy:
            raise EvaluationFailed(
                f"{run_dir} is still in use by the processes of another try after {RUN_LOCK_WAIT_S}s; "
                "nothing was evaluated"
            ) from None
    try:
        proc = tether.popen(cmd, keep_fds=keep, env=ml_environment(home), cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        for fd in keep:
            os.close(fd)  # the tether holds the lock from here on
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        _log(log_path, cmd, out, err)
        raise EvaluationFailed(f"{args[0]} did not finish within {timeout_s}s (log: {log_path})") from None
    except BaseException:  # the task is being stopped: stop the gate with it
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    finally:
        tether.release(proc)  # if it still runs, the tether now stops it
    _log(log_path, cmd, out, err)
    return proc.returncode, out, err


def _log(path: Path, cmd: list[str], out: str, err: str) -> None:
    with open(path, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{out}\n--- stderr ---\n{err}\n")


def _error_line(err: str) -> str | None:
    lines = [ln[len(ERROR_PREFIX):] for ln in err.splitlines() if ln.startswith(ERROR_PREFIX)]
    return lines[-1] if lines else None


def _tail(text: str, n: int = 25) -> str:
    return "\n".join("  " + ln for ln in text.strip().splitlines()[-n:])


def evaluate_and_push(
    line: str,
    run_dir: str | Path,
    force_bless_reason: str | None = None,
    *,
    force_bless: bool = False,
    tags: dict[str, str] | None = None,
    home: Path | None = None,
    timeout_s: int = 1800,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a training run's candidate, push it if blessed (or force-blessed), register it.

    ``force_bless=True`` (or a ``force_bless_reason``) pushes a candidate the gate rejects;
    it needs a non-empty reason, else :class:`ForceBlessError` before anything runs.
    Returns a summary: blessing, why, overall metrics (candidate and baseline), registry
    version, serving version and path, report paths.
    """
    if force_bless and force_bless_reason is None:
        force_bless_reason = ""
    reason = check_force_reason(force_bless_reason)
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise GateInputError(f"run dir {run_dir} does not exist")
    started = time.monotonic()
    prior = previous_result(run_dir, home)
    if prior is not None:  # already pushed (a retried task): record it, push nothing
        result = {**prior, "reused": True}
        if echo:
            echo(f"factory-eval: {result['blessing']} (already pushed as version {result['serving']['version']})")
    else:
        args = [GATE_MODULE, "--line", line, "--run-dir", str(run_dir)]
        if reason is not None:
            args += ["--force-bless-reason", reason]
        log_path = layout.gate_log_path(run_dir)
        rc, out, err = _run_ml(args, log_path, timeout_s, home, run_dir=run_dir)
        if rc == 2:
            raise GateInputError(_error_line(err) or _tail(err))
        if rc != 0:
            raise EvaluationFailed(
                f"the evaluation gate failed (exit code {rc}):\n{_tail(err)}\n(full log: {log_path})"
            )
        written = records.read_evaluation_result(run_dir)
        if written is None:
            raise EvaluationFailed(f"the evaluation gate exited 0 but wrote no result (full log: {log_path})")
        result = written.to_json()
        if echo:
            for ln in out.splitlines():
                if ln.startswith("factory-eval:"):
                    echo(ln)
    gate_s = time.monotonic() - started

    t = time.monotonic()
    result["registry"] = registry.record(result, tags=tags, home=home)
    timings = result.setdefault("timings", {})
    timings["gate_subprocess_s"] = round(gate_s, 3)
    timings["stage_s"] = round(time.monotonic() - started, 3)
    write_report(result, Path(result["report"]["html"]))
    records.write_evaluation_result(run_dir, result)
    registry.log_evaluation(result, home=home)
    timings["registry_s"] = round(time.monotonic() - t, 3)
    return summary(result)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """What the Airflow task returns (XCom): small and plain."""
    overall = (result.get("metrics") or {}).get("Overall") or {}
    return {
        "line": result["line"],
        "run_dir": result["run_dir"],
        "blessing": result["blessing"],
        "why": result.get("why"),
        "blessed_on": result.get("blessed_on"),
        "force_bless_reason": result.get("force_bless_reason"),
        "metrics": overall.get("candidate") or {},
        "baseline_metrics": overall.get("baseline"),
        "baseline_run": (result.get("baseline") or {}).get("training_run"),
        "failures": [f["slice"] + ": " + f["message"] for f in result.get("failures", [])],
        "pushed": bool(result.get("pushed")),
        "serving_version": (result.get("serving") or {}).get("version"),
        "serving_path": (result.get("serving") or {}).get("path"),
        "registered_model": (result.get("registry") or {}).get("name"),
        "model_version": (result.get("registry") or {}).get("version"),
        "champion": (result.get("registry") or {}).get("champion"),
        "report_html": (result.get("report") or {}).get("html"),
        "result_json": (result.get("report") or {}).get("json"),
        "mlflow_run_id": result.get("mlflow_run_id"),
        "reused": bool(result.get("reused")),
        "timings": result.get("timings"),
    }


def plan_rollback(line: str, home: Path | None = None) -> dict[str, Any]:
    """What a rollback would do now (reads the store only): the served version and the one
    that would be served after it; raises :class:`RollbackError` if there is none."""
    from pipelines.evaluation import serving

    base = layout.serving_base(line, home)
    live = serving.live_versions(base)
    if len(live) < 2:
        raise RollbackError(
            f"{line}: nothing to roll back to ({'no model is served' if not live else f'only version {live[0]}'})"
        )
    return {
        "line": line,
        "from_version": live[-1],
        "to_version": live[-2],
        "from": serving.push_info(base / str(live[-1])),
        "to": serving.push_info(base / str(live[-2])),
    }


def rollback(
    line: str,
    reason: str | None = None,
    *,
    expect_version: int | None = None,
    home: Path | None = None,
    timeout_s: int = 600,
) -> dict[str, Any]:
    """Serve the previous pushed version again and move ``champion`` to it.

    ``expect_version``: roll back only that version (from :func:`plan_rollback`); a retry
    after it was rolled back does nothing more than re-sync the registry."""
    from pipelines.config import factory_home

    args = [ROLLBACK_MODULE, "--line", line, "--reason", (reason or "").strip() or "rollback requested"]
    if expect_version is not None:
        args += ["--expect-version", str(expect_version)]
    log_path = layout.rollback_log_path(line, home or factory_home())
    rc, out, err = _run_ml(args, log_path, timeout_s, home)
    if rc == 2:
        raise RollbackError(_error_line(err) or _tail(err))
    if rc != 0:
        raise EvaluationFailed(f"rollback failed (exit code {rc}):\n{_tail(err)}\n(full log: {log_path})")
    done = json.loads(out.strip().splitlines()[-1])
    done["champion"] = registry.sync_serving_state(line, home)
    return done
