"""The tuning DAG's task logic; ``dags/tune.py`` only wires it.

One study per ``tune_<line>`` DAG run:

- :func:`start_study` checks the run's options and fixes the data window once (every
  trial trains and validates on the same rows), creates the Optuna study, its MLflow
  parent run and its record, and enqueues the trials tried first: the settings the line
  trains with today (the yardstick) and the previous study's best ones (warm start).
- :func:`run_trial` is one trial in one task: it takes one of the study's ``parallel``
  slots, asks Optuna for settings, prepares a training run with them in the study's
  folder and trains it with the Horovod workers, reporting each epoch's validation
  metric so the pruner can stop a trial that falls behind.
- :func:`finish_study` closes what died with its task, writes the study's record and,
  when a trial completed, the line's tuned settings (the next training uses them).

Only this module's own exceptions leave it; the DAG maps them to Airflow's.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipelines import storage, tracking
from pipelines.catalog import layout, records
from pipelines.specs import LineSpec, load_spec
from pipelines.specs.tuning import TuningSpec
from pipelines.training.prepare import TrainingInputError, resolve_params, window
from pipelines.tuning import study as studies
from pipelines.tuning.params import TuningError, current_params, tuned_spec, with_params

# Seconds a trial may run past the study's deadline (exporting its model, closing runs).
GRACE_S = 60
_EPOCH_LINE = re.compile(r"factory-train: epoch (\d+) .*?\bval_(auc|accuracy)=(\S+)")


class StudyInputError(ValueError):
    """The run's options or data cannot make a study; nothing was created."""


class NoFreeSlot(RuntimeError):  # noqa: N818 - a state to wait out, not a fault
    """All of the study's ``parallel`` slots are taken: try again shortly."""


class BudgetSpent(RuntimeError):  # noqa: N818 - a normal end of a study
    """The study's time budget is spent: no trial is asked."""


class TrialFailed(RuntimeError):
    """The trial was recorded as failed (its error is in the study and its MLflow run)."""


class NothingCompleted(RuntimeError):  # noqa: N818 - the study's outcome
    """No trial of the study completed: the line's tuned settings stay as they were."""


def metric_name(spec: LineSpec) -> str:
    """The validation metric a study maximises (the workers' early-stopping metric)."""
    from pipelines.training.worker import METRICS

    return f"val_{METRICS[spec.task]}"


def study_name(line: str, run_id: str) -> str:
    return f"{line}-{layout.run_folder_name(run_id)}"


def _tuning(spec: LineSpec) -> TuningSpec:
    if spec.tuning is None:
        raise StudyInputError(f"{spec.name}: the spec declares no tuning: section")
    return spec.tuning


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def check_options(spec: LineSpec, options: dict[str, Any] | None) -> dict[str, Any]:
    """The run's options with the spec's defaults; a bad one raises :class:`StudyInputError`."""
    tuning = _tuning(spec)
    o = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(o) - {"trials", "parallel", "timeout_minutes", "space", "epochs", "warm_start",
                               "window_batches"})
    if unknown:
        raise StudyInputError(f"{spec.name}: unknown tuning option(s) {unknown}")

    def integer(name: str, default: int, lo: int, hi: int) -> int:
        value = o.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise StudyInputError(f"{spec.name}: {name} must be an integer in [{lo}, {hi}], got {value!r}")
        return value

    spaces = list(tuning.spaces)
    space = o.get("space", "default" if "default" in tuning.spaces else spaces[0])
    if space not in tuning.spaces:
        raise StudyInputError(f"{spec.name}: space {space!r} is not one of the spec's spaces {spaces}")
    warm = o.get("warm_start", True)
    if not isinstance(warm, bool):
        raise StudyInputError(f"{spec.name}: warm_start must be true or false, got {warm!r}")
    return {
        "trials": integer("trials", tuning.trials, 1, 1000),
        "parallel": integer("parallel", tuning.parallel, 1, tuning.parallel),
        "timeout_minutes": integer("timeout_minutes", tuning.timeout_minutes, 1, 10080),
        "space": space,
        "epochs": integer("epochs", tuning.epochs, 1, 1000),
        "warm_start": warm,
        "window_batches": integer("window_batches", spec.training.window.batches, 0, 100000),
    }


def _base(line: str, home: Path | None) -> tuple[LineSpec, dict[str, Any] | None]:
    """The spec trials start from: the line's, with its tuned settings where they apply."""
    spec, provenance = tuned_spec(load_spec(line), home)
    used = provenance if provenance and provenance.get("used") else None
    return spec, (dict(used["params"]) if used else None)


def _warm_start(line: str, dims: dict, count: int, home: Path | None,
                errors: list[str]) -> tuple[str | None, list[dict[str, Any]]]:
    """The best ``count`` completed trials of the line's latest finished study, as
    settings of this space."""
    finished = [r for r in records.read_study_records(line, home, errors) if r.state == "finished"]
    if not finished or count <= 0:
        return None, []
    last = finished[-1]
    complete = sorted((t for t in last.trials if t.state == "COMPLETE" and t.value is not None),
                      key=lambda t: -t.value)
    found: list[dict[str, Any]] = []
    for t in complete[:count]:
        params = {k: v for k, v in t.params.items() if k in dims and studies.fits(dims[k], k, v)}
        if params:
            found.append({"params": params, "origin": f"warm start: {last.study} trial {t.number}"})
    return last.study, found


def start_study(line: str, run_id: str, options: dict[str, Any] | None = None, home: Path | None = None,
                *, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Check the options, fix the data window, create the study, its MLflow parent run
    and its record, and enqueue the trials tried first. Returns what each trial task needs."""
    import optuna

    spec, base_params = _base(line, home)
    tuning = _tuning(spec)
    o = check_options(spec, options)
    try:
        params = resolve_params(spec, {"window_batches": o["window_batches"], "workers": tuning.workers,
                                       "epochs": o["epochs"]})
        batches = [r["batch_id"] for r in window(spec, params, home)]
    except TrainingInputError as err:
        raise StudyInputError(str(err)) from None
    name = study_name(line, run_id)
    dims = tuning.spaces[o["space"]]
    metric = metric_name(spec)

    # the yardstick: what the line trains with today, where the space holds it
    current = {k: v for k, v in current_params(spec, list(dims)).items() if studies.fits(dims[k], k, v)}
    candidates = [{"params": current, "origin": "current settings"}] if current else []
    warm_from, warm_errors = None, []
    if o["warm_start"]:
        warm_from, warm = _warm_start(line, dims, tuning.warm_start, home, warm_errors)
        candidates += warm
    queued: list[dict[str, Any]] = []
    for c in candidates:
        try:
            with_params(spec, c["params"])
        except TuningError:
            continue  # settings the line no longer takes
        if any(q["params"] == c["params"] for q in queued):
            continue
        queued.append(c)

    started = _now()
    deadline = started + timedelta(minutes=o["timeout_minutes"])
    sdir = layout.study_dir(line, name, home)
    sdir.mkdir(parents=True, exist_ok=True)
    parent = tracking.start_run(
        line, run_name=name,
        tags={**(tags or {}), "factory.study": name, "factory.kind": "study"},
        params={"space": o["space"], "trials": o["trials"], "parallel": o["parallel"], "epochs": o["epochs"],
                "sampler": tuning.sampler, "pruner": tuning.pruner, "metric": metric,
                "batches": ",".join(batches), "timeout_minutes": o["timeout_minutes"]},
        home=home,
    )
    study = optuna.create_study(study_name=name, storage=studies.storage(home), direction=studies.DIRECTION,
                                load_if_exists=True)
    attrs = {"metric": metric, "space": o["space"], "sampler": tuning.sampler, "pruner": tuning.pruner,
             "trials_requested": o["trials"], "parallel": o["parallel"], "batches": batches, "started": _iso(started),
             "warm_start_from": warm_from, "mlflow_run_id": parent, "epochs": o["epochs"],
             "deadline": _iso(deadline), "spec_version": spec.version, "base_params": base_params,
             "enqueued": [c["origin"] for c in queued]}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    if not study.get_trials(deepcopy=False):  # a retried start enqueues nothing twice
        for c in queued:
            study.enqueue_trial({k: studies.encode(v) for k, v in c["params"].items()},
                                user_attrs={"enqueued": c["origin"]})
    write_record(line, name, home)
    return {
        "line": line,
        "study": name,
        "batches": batches,
        "deadline": _iso(deadline),
        "parallel": o["parallel"],
        "epochs": o["epochs"],
        "space": o["space"],
        "metric": metric,
        "mlflow_run_id": parent,
        "enqueued": [c["origin"] for c in queued],
        "indices": list(range(o["trials"])),
    }


def write_record(line: str, name: str, home: Path | None = None, *, state: str = "running") -> dict[str, Any]:
    """The study's record as the storage has it now (one writer at a time)."""
    sdir = layout.study_dir(line, name, home)
    with storage.exclusive_lock(sdir):
        record = studies.summarize(line, name, home)
        record["state"] = state
        if state == "finished":
            record["finished"] = _iso(_now())
        records.write_study_record(line, name, record, home)
    return record


def _take_slot(sdir: Path, parallel: int) -> int:
    for k in range(parallel):
        try:
            return storage.hold_lock(layout.study_slot_lock(sdir, k), 0)
        except storage.Busy:
            continue
    raise NoFreeSlot(f"all {parallel} trial slot(s) of {sdir.name} are taken")


# How long a trial task waits for another one's ask to end.
ASK_WAIT_S = 120


def ask(study, sdir: Path):
    """The study's next trial for this task: an enqueued one first, else a sampled one.

    One ask at a time per study: Optuna takes an enqueued trial off the queue with
    ``SELECT ... FOR UPDATE``, which SQLite does not honour, so two trial tasks asking at
    once could both get the same enqueued trial and train it twice, the second failing to
    tell its result (optuna/optuna#4621). The study's ask lock serialises the asks; it is
    held for milliseconds, not for the training."""
    lock = storage.hold_lock(layout.study_ask_lock(sdir), ASK_WAIT_S)
    try:
        return study.ask()
    finally:
        os.close(lock)


def _seed(name: str, index: int) -> int:
    """A seed per trial task: reproducible, and different for trials asked at once."""
    return int(hashlib.sha256(f"{name}/{index}".encode()).hexdigest()[:8], 16)


def _remove_bulk(run: Path) -> None:
    """A finished trial keeps its manifest, result and log; its data and checkpoints go."""
    for folder in (layout.run_data_dir(run), layout.checkpoints_dir(run)):
        shutil.rmtree(folder, ignore_errors=True)


def run_trial(line: str, info: dict[str, Any], index: int, home: Path | None = None,
              echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One trial: ``{number, state, value, params}``. Raises :class:`NoFreeSlot` (wait and
    try again), :class:`BudgetSpent` (skip: no trial asked) or :class:`TrialFailed` (the
    trial is recorded as failed; the study goes on)."""
    import optuna

    from pipelines.training import launch
    from pipelines.training.prepare import prepare_run

    name = info["study"]
    sdir = layout.study_dir(line, name, home)
    deadline = datetime.fromisoformat(info["deadline"])
    if _now() >= deadline:
        raise BudgetSpent(f"{name}: the time budget ended at {info['deadline']}; trial {index} not run")
    slot = _take_slot(sdir, int(info["parallel"]))
    try:
        spec = load_spec(line)
        tuning = _tuning(spec)
        study = studies.load(name, home, tuning=tuning, seed=_seed(name, index))
        if _now() >= deadline:
            raise BudgetSpent(f"{name}: the time budget ended at {info['deadline']}; trial {index} not run")
        trial = ask(study, sdir)
        number = trial.number
        trial.set_user_attr("task_index", index)
        metric = info["metric"]
        nested: str | None = None
        state, value, error = "FAIL", None, None
        params: dict[str, Any] = {}
        try:
            params = studies.suggest(trial, tuning.spaces[info["space"]])
            run = layout.trial_dir(sdir, number)
            nested = tracking.start_run(
                line, run_name=f"{name}/trial-{number}",
                tags={"mlflow.parentRunId": info["mlflow_run_id"], "factory.study": name,
                      "factory.trial": str(number), "factory.kind": "trial", "factory.run_dir": str(run)},
                params={k: studies.encode(v) for k, v in params.items()},
                home=home,
            )
            trial.set_user_attr("mlflow_run_id", nested)
            # settings the line does not take (a TuningError) fail the trial like any other error
            trial_spec = with_params(with_params(spec, study.user_attrs.get("base_params")), params)
            run.mkdir(parents=True, exist_ok=True)
            records.write_mlflow_run_id(run, nested)
            prepare_run(line, run, {"batches": info["batches"], "workers": tuning.workers, "epochs": info["epochs"]},
                        home, run_id=f"{name}/trial-{number}", spec=trial_spec)
            left = (deadline - _now()).total_seconds()
            timeout = int(max(1, min(spec.training.timeout_s, left + GRACE_S)))

            def on_line(text: str) -> None:
                m = _EPOCH_LINE.search(text)
                if not m:
                    return
                trial.report(float(m.group(3)), int(m.group(1)))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {m.group(1)}: {metric}={m.group(3)} fell behind")

            launch.run_workers(run, tuning.workers, timeout_s=timeout, log_path=layout.training_log_path(run),
                               env_extra=tracking.worker_env(nested, home), echo=echo, on_line=on_line)
            result = records.read_training_result(run)
            value = None if result is None else result.get(metric)
            if value is None:
                raise RuntimeError(f"the workers finished but wrote no {metric} in {run}")
            state = "COMPLETE"
        except optuna.TrialPruned as err:
            state, error = "PRUNED", str(err)
        except Exception as err:  # noqa: BLE001 - any error fails this trial, not the study
            state, error = "FAIL", f"{type(err).__name__}: {err}"
        if error is not None and state == "FAIL":
            trial.set_user_attr("error", error[:4000])
        study.tell(number, value if state == "COMPLETE" else None, state=optuna.trial.TrialState[state])
        if nested is not None:
            last = value if state == "COMPLETE" else _last_intermediate(study, number)
            tracking.finish_run(
                nested, status={"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"),
                metrics={f"final_{metric}": last},
                tags={"factory.trial_state": state, **({"factory.error": error[:4000]} if error else {})},
                home=home,
            )
        _remove_bulk(layout.trial_dir(sdir, number))
        write_record(line, name, home)
    finally:
        os.close(slot)
    if echo:
        echo(f"{name}: trial {number} {state}" + (f" {metric}={value:.4f}" if value is not None else "")
             + (f" ({error})" if error else ""))
    if state == "FAIL":
        raise TrialFailed(f"{name}: trial {number} failed: {error}")
    return {"number": number, "state": state, "value": value, "params": params}


def _last_intermediate(study, number: int) -> float | None:
    """A stopped trial's last reported value (its MLflow run's final metric)."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or not trial.intermediate_values:
        return None
    return trial.intermediate_values[max(trial.intermediate_values)]


def finish_study(line: str, info: dict[str, Any], home: Path | None = None,
                 echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """End the study whatever its trials did: trials still running belong to a task that
    died and are failed; the record is written; the best completed trial's settings become
    the line's tuned settings. Raises :class:`NothingCompleted` when no trial completed."""
    import optuna

    name = info["study"]
    store = studies.storage(home)
    study = studies.load(name, home)
    study_id = store.get_study_id_from_name(name)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        reason = "its task ended before the trial did (killed, out of memory or lost)"
        store.set_trial_user_attr(store.get_trial_id_from_study_id_trial_number(study_id, t.number), "error", reason)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        nested = t.user_attrs.get("mlflow_run_id")
        if nested:
            tracking.finish_run(nested, status="FAILED", tags={"factory.trial_state": "FAIL", "factory.error": reason},
                                home=home)
        if echo:
            echo(f"{name}: trial {t.number} was left running: {reason}")
    record = write_record(line, name, home, state="finished")
    parent = info.get("mlflow_run_id") or record.get("mlflow_run_id")
    top = record.get("best")
    if top is None:
        if parent:
            tracking.finish_run(parent, status="FAILED", tags={"factory.error": "no trial completed"}, home=home)
        raise NothingCompleted(f"{name}: no trial completed ({len(record['trials'])} asked); "
                               "the line's tuned settings are unchanged")
    spec = load_spec(line)
    tuned = {"line": line, "params": top["params"], "study": name, "trial": top["trial"],
             "metric": record["metric"], "value": top["value"], "batches": record["batches"],
             "space": record.get("space"), "spec_version": spec.version, "mlflow_run_id": top.get("mlflow_run_id"),
             "at": _iso(_now())}
    records.write_tuned_params(line, tuned, home)
    if parent:
        c = tracking.client(home)
        for key, value in top["params"].items():
            c.log_param(parent, f"best.{key}", studies.encode(value))
        tracking.finish_run(parent, status="FINISHED",
                            metrics={f"best_{record['metric']}": top["value"], "best_trial": top["trial"]},
                            tags={"factory.best_trial": str(top["trial"])}, home=home)
    if echo:
        echo(f"{name}: best trial {top['trial']} {record['metric']}={top['value']:.4f} {top['params']}")
    return {"study": name, "best": top, "tuned_params": str(layout.tuned_params_path(line, home)),
            "trials": {s: sum(1 for t in record["trials"] if t["state"] == s)
                       for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}}
