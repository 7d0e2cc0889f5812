"""A line's Optuna study: the storage every trial task shares, the sampler and pruner the
spec names, the search space as Optuna suggestions, and the study's record.

Optuna keeps a study's trials in its storage (:func:`pipelines.config.optuna_storage`), but
its sampler and pruner only in memory: each trial task rebuilds them from the spec
(:func:`sampler`, :func:`pruner`) and loads the study. Choices Optuna cannot store (a
list such as ``hidden_units``) are stored as their JSON text (:func:`encode`) and read
back as the list (:func:`decode`); a trial's settings are always given decoded.

:func:`summarize` is the study as its record (:class:`pipelines.catalog.records.StudyRecord`)
keeps it, built from the storage alone, so any task can write it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import optuna_storage
from pipelines.specs.tuning import TUNABLE, Dimension, TuningSpec

if TYPE_CHECKING:
    import optuna

# Seconds a trial task waits for SQLite's write lock when another trial holds it.
SQLITE_WAIT_S = 60
DIRECTION = "maximize"


def storage(home: Path | None = None) -> optuna.storages.RDBStorage:
    """The studies' storage: SQLite under the factory home (waiting for its lock, so
    parallel trial tasks take turns), or the deployment's database."""
    import optuna

    logging.getLogger("optuna").setLevel(logging.WARNING)
    url = optuna_storage(home)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_WAIT_S}}
    return optuna.storages.RDBStorage(url, **kwargs)


def sampler(tuning: TuningSpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """TPE (Bayesian optimisation; ``constant_liar`` so trials running at once do not all
    try the same point) after ``startup_trials`` random ones, or random search."""
    import warnings

    import optuna

    # Optuna marks constant_liar and multivariate experimental: not a warning in every trial's log
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if tuning.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=tuning.startup_trials, seed=seed, constant_liar=True,
                                      multivariate=True)


def pruner(tuning: TuningSpec) -> optuna.pruners.BasePruner:
    """Stops a trial whose epochs fall behind: the median of the trials before it at the
    same epoch, or Hyperband over the epoch budget; ``none`` lets every trial finish. No
    trial is stopped before ``prune_warmup_epochs`` epochs."""
    import optuna

    if tuning.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tuning.startup_trials,
                                           n_warmup_steps=tuning.prune_warmup_epochs)
    if tuning.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, tuning.prune_warmup_epochs),
                                              max_resource=tuning.epochs)
    return optuna.pruners.NopPruner()


def encode(value: Any) -> Any:
    """A setting's value as Optuna stores it: lists and mappings as JSON text."""
    if isinstance(value, list | tuple | dict):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return value


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def fits(dim: Dimension, name: str, value: Any) -> bool:
    """Whether ``value`` is a point of the dimension (a choice, or inside the range)."""
    if not dim.is_range:
        return encode(value) in [encode(c) for c in dim.choices or []]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if TUNABLE[name][2] == "int" and value != int(value):
        return False
    return dim.low <= value <= dim.high


def suggest(trial: optuna.Trial, dims: dict[str, Dimension]) -> dict[str, Any]:
    """The trial's settings for the space's dimensions (an enqueued trial's fixed values
    first, else the sampler's), decoded."""
    params: dict[str, Any] = {}
    for name, dim in dims.items():
        kind = TUNABLE[name][2]
        if not dim.is_range:
            params[name] = decode(trial.suggest_categorical(name, [encode(c) for c in dim.choices or []]))
        elif kind == "int":
            step = int(dim.step) if dim.step is not None else 1
            params[name] = trial.suggest_int(name, int(dim.low), int(dim.high), step=step, log=dim.log)
        else:
            params[name] = trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)
    return params


def load(study_name: str, home: Path | None = None, *, tuning: TuningSpec | None = None,
         seed: int | None = None) -> optuna.Study:
    """The stored study, with the spec's sampler and pruner when ``tuning`` is given."""
    import optuna

    if tuning is None:
        return optuna.load_study(study_name=study_name, storage=storage(home))
    return optuna.load_study(study_name=study_name, storage=storage(home), sampler=sampler(tuning, seed),
                             pruner=pruner(tuning))


def _iso(moment) -> str | None:
    return moment.astimezone().isoformat(timespec="seconds") if moment is not None else None


def trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as the study's record keeps it."""
    seconds = None
    if t.datetime_start is not None and t.datetime_complete is not None:
        seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
    attrs = dict(t.user_attrs)
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "params": {k: decode(v) for k, v in t.params.items()},
        "intermediate": {str(step): v for step, v in sorted(t.intermediate_values.items())},
        "started": _iso(t.datetime_start),
        "completed": _iso(t.datetime_complete),
        "seconds": seconds,
        "enqueued": attrs.get("enqueued") is not None,
        "origin": attrs.get("enqueued") or "sampled",
        "mlflow_run_id": attrs.get("mlflow_run_id"),
        "error": attrs.get("error"),
        "user_attrs": attrs,
    }


def importances(study: optuna.Study) -> dict[str, float]:
    """How much each setting mattered to the metric (fANOVA), once two trials completed."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError):  # e.g. no setting varied between the completed trials
        return {}
    return {name: float(v) for name, v in found.items()}


def best(study: optuna.Study) -> dict[str, Any] | None:
    """The completed trial with the highest value: ``{trial, value, params, mlflow_run_id}``."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    top = max(complete, key=lambda t: (t.value, -t.number))
    return {"trial": top.number, "value": top.value, "params": {k: decode(v) for k, v in top.params.items()},
            "mlflow_run_id": top.user_attrs.get("mlflow_run_id")}


# the study's own settings, kept as its user attributes at start
STUDY_ATTRS = ("metric", "space", "sampler", "pruner", "trials_requested", "parallel", "batches", "started",
               "warm_start_from", "mlflow_run_id", "epochs", "deadline", "spec_version")


def summarize(line: str, study_name: str, home: Path | None = None) -> dict[str, Any]:
    """The study's record (a :class:`~pipelines.catalog.records.StudyRecord` dict), from the storage."""
    study = load(study_name, home)
    attrs = study.user_attrs
    record: dict[str, Any] = {"study": study_name, "line": line, "direction": DIRECTION, "state": "running"}
    record.update({k: attrs.get(k) for k in STUDY_ATTRS})
    record["batches"] = list(attrs.get("batches") or [])
    record["trials"] = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    record["best"] = best(study)
    record["importances"] = importances(study)
    return record
