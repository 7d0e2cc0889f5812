"""The training stage's task logic; ``dags/train.py`` only wires it.

``prepare`` checks the parameters and the data window and writes the run's data
(nothing starts if they are wrong); ``train`` opens the MLflow run, launches the
Horovod workers, and logs what they made. Each Airflow run gets its own run folder
(``<home>/training/<line>/<run>``), so a retried task finds its checkpoints and
resumes, and its MLflow run continues.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines import tracking
from pipelines.catalog import layout, records
from pipelines.specs import load_spec
from pipelines.training import launch
from pipelines.training.prepare import TrainingInputError, prepare_run, read_manifest, resolve_params
from pipelines.tuning.params import with_params


def run_folder(line: str, run_id: str, home: Path | None = None) -> Path:
    """The run folder of an Airflow run id."""
    return layout.run_dir(line, run_id, home)


def check_params(line: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Validate DAG params before anything runs; returns the effective parameters."""
    return resolve_params(load_spec(line), overrides).to_dict()


def _check_same_run(line: str, run_dir: Path, run_id: str, manifest: dict, overrides: dict[str, Any] | None) -> None:
    """A run folder that already has a manifest is this run's only when the manifest names
    this exact run id and was prepared with the same parameters (a retry); anything else
    is refused before it can reuse another run's data, checkpoints and MLflow run."""
    recorded = manifest.get("run_id")
    if recorded != run_id:
        raise TrainingInputError(
            f"{line}: run folder {run_dir} belongs to run {recorded!r}, not {run_id!r}; nothing was written"
        )
    # the tuned settings the run was prepared with, not whatever is tuned now
    tuned = manifest.get("tuned") or {}
    spec = with_params(load_spec(line), tuned.get("params") if tuned.get("used") else None)
    wanted = resolve_params(spec, overrides).to_dict()
    before = manifest.get("params") or {}
    differ = {k: (before.get(k), wanted[k]) for k in wanted if before.get(k) != wanted[k]}
    if differ:
        listed = "; ".join(f"{k}: {old!r} then, {new!r} now" for k, (old, new) in sorted(differ.items()))
        raise TrainingInputError(
            f"{line}: run id {run_id!r} was already prepared with other parameters ({listed}); "
            "a retry must ask for the same ones, a new run needs a new run id"
        )


def prepare(line: str, run_id: str, overrides: dict[str, Any] | None = None, home: Path | None = None) -> dict:
    """Write the run's data and manifest (once per run: a retry, the same run id with the
    same parameters, keeps what the first try trained on, so its checkpoints stay valid).
    A folder prepared for another run id, or for this one with other parameters, is
    refused (:class:`TrainingInputError`)."""
    run_dir = run_folder(line, run_id, home)
    if layout.manifest_path(run_dir).exists():
        manifest = read_manifest(run_dir)
        _check_same_run(line, run_dir, run_id, manifest, overrides)
    else:
        manifest = prepare_run(line, run_dir, overrides, home, run_id=run_id)
    return {
        "line": line,
        "run_dir": str(run_dir),
        "batches": manifest["batches"],
        "rows": manifest["rows"],
        "params": manifest["params"],
    }


# the model settings a run's MLflow parameters record, by model kind
MODEL_PARAMS = {
    "tabular_dnn": ("hidden_units", "dropout", "class_weight"),
    "cnn": ("conv_filters", "dense_units", "dropout", "augmentation"),
}


def _tuned_tags(tuned: dict[str, Any] | None) -> dict[str, str]:
    """MLflow tags naming the study and trial whose settings a run trained with."""
    if not tuned or not tuned.get("used"):
        return {}
    return {"factory.tuned_study": str(tuned.get("study")), "factory.tuned_trial": str(tuned.get("trial")),
            "factory.tuned_value": str(tuned.get("value"))}


def train(
    line: str,
    run_dir: str | Path,
    *,
    tags: dict[str, str] | None = None,
    home: Path | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the Horovod workers on a prepared run folder and track it in MLflow."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    params = manifest["params"]
    spec = load_spec(line)
    c = tracking.client(home)
    mlflow_run = records.read_mlflow_run_id(run_dir)
    if mlflow_run:
        c.update_run(mlflow_run, status="RUNNING")
    else:
        mlflow_run = tracking.start_run(
            line,
            run_name=run_dir.name,
            tags={**(tags or {}), "factory.run_dir": str(run_dir), "factory.spec_version": str(spec.version),
                  **_tuned_tags(manifest.get("tuned"))},
            params={
                **{k: v for k, v in params.items() if k != "batches"},
                "batches": ",".join(manifest["batches"]),
                "rows_train": manifest["rows"]["train"],
                "rows_validation": manifest["rows"]["validation"],
                "rows_eval": manifest["rows"]["eval"],
                **{k: manifest["model"].get(k) for k in MODEL_PARAMS[manifest["model"].get("kind", "tabular_dnn")]},
            },
            home=home,
        )
        records.write_mlflow_run_id(run_dir, mlflow_run)
    try:
        launch.run_workers(
            run_dir,
            params["workers"],
            timeout_s=spec.training.timeout_s,
            log_path=layout.training_log_path(run_dir),
            env_extra=tracking.worker_env(mlflow_run, home),
            echo=echo,
        )
        written = records.read_training_result(run_dir)
        if written is None:
            raise RuntimeError(f"the workers finished but wrote no result in {run_dir}")
        result = written.to_json()
        # the reference the drift monitor compares new data with, inside the SavedModel
        from pipelines.monitoring.stage import write_reference_profile

        profile = write_reference_profile(run_dir)
        if echo:
            echo(f"reference profile for drift monitoring: {profile}")
    except Exception as err:
        tracking.finish_run(mlflow_run, status="FAILED", tags={"factory.error": str(err)[:4000]}, home=home)
        raise
    model_dir = layout.exported_model(run_dir)
    tracking.finish_run(
        mlflow_run,
        status="FINISHED",
        metrics={
            "final_val_auc": result.get("val_auc"),  # binary runs
            "final_val_accuracy": result.get("val_accuracy"),  # multiclass runs
            "samples_per_s": result.get("samples_per_s"),
            "epochs_run": result.get("epochs_run"),
            "best_epoch": result.get("best_epoch"),
        },
        artifacts=[
            ("model", model_dir),
            ("tensorboard", layout.tensorboard_dir(run_dir)),
            ("training", layout.manifest_path(run_dir)),
            ("training", layout.training_result_path(run_dir)),
        ],
        tags={"factory.resumed_from_epoch": str(result.get("resumed_from_epoch", 0)),
              # a tag, not a param: a retry may run its ranks elsewhere
              "horovod_hosts": _hosts_tag(result.get("hosts"))},
        home=home,
    )
    return {
        "line": line,
        "run_dir": str(run_dir),
        "model_dir": str(model_dir),
        "eval_data": str(layout.eval_data_path(run_dir)),
        "mlflow_run_id": mlflow_run,
        "val_auc": result.get("val_auc"),  # binary runs
        "val_accuracy": result.get("val_accuracy"),  # multiclass runs
        "epochs_run": result.get("epochs_run"),
        "resumed_from_epoch": result.get("resumed_from_epoch", 0),
        "samples_per_s": result.get("samples_per_s"),
        "hosts": result.get("hosts") or [],
        "batches": manifest["batches"],
    }


def _hosts_tag(hosts: list[dict[str, Any]] | None) -> str:
    """``0=gpu1,1=gpu1,2=gpu2``: where each Horovod rank ran."""
    return ",".join(f"{h.get('rank')}={h.get('host')}" for h in hosts or [])


def drift_context(line: str, run_id: str, triggering_asset_events: Any,
                  batches: list[str] | None = None, home: Path | None = None) -> dict[str, Any] | None:
    """The drift episode this training is the retrain of, if any.

    A run set off by a drift event (``retrain_on: drift``) marks that episode's claimed
    retrain running; a run on ``batches`` that include an open episode's drifted batch
    (``retrain_on: new_data``) becomes its retrain (see :mod:`pipelines.monitoring.episodes`).
    A drift record that no longer fits (the claim was given up as stale meanwhile) is
    noted in the context and does not stop the training."""
    from pipelines.monitoring.episodes import EpisodeError, adopt_at_prepare, mark_retrain_running
    from pipelines.runtime.assets import drift_asset

    try:
        events = list((triggering_asset_events or {})[drift_asset(line)] or [])
    except (KeyError, TypeError):
        events = []
    for event in reversed(events):
        extra = dict(getattr(event, "extra", None) or {})
        if extra.get("episode_id"):
            context = {k: extra.get(k) for k in ("episode_id", "claimed_by", "drifted", "batches", "reason")}
            try:
                mark_retrain_running(line, extra["episode_id"], extra.get("claimed_by") or "unknown",
                                     train_run_id=run_id, home=home)
            except EpisodeError as err:
                context["note"] = f"not recorded as the episode's retrain: {err}"
            return context
    if batches is None or load_spec(line).training.retrain_on != "new_data":
        return None
    from pipelines.monitoring.batch import line_drift_spec

    return adopt_at_prepare(line, run_id, batches, policy=line_drift_spec(line).retrain, home=home)


def record_outcome(line: str, run_id: str, run_dir: str | Path | None, evaluation: dict[str, Any] | None,
                   home: Path | None = None) -> dict[str, Any]:
    """The training DAG run's end, whatever it was: ``blessed`` (or force-blessed),
    ``not_blessed``, or ``failed`` (no verdict: prepare, train or the gate failed). Kept
    in the run folder and recorded against the drift retrain that names this run."""
    from datetime import UTC, datetime

    from pipelines.monitoring.episodes import record_training_outcome

    blessing = (evaluation or {}).get("blessing")
    outcome = {"BLESSED": "blessed", "FORCED": "blessed", "NOT_BLESSED": "not_blessed"}.get(blessing, "failed")
    version = (evaluation or {}).get("serving_version")
    version = None if version is None else str(version)
    record = {"run_id": run_id, "outcome": outcome, "model_version": version,
              "at": datetime.now(UTC).isoformat(timespec="seconds")}
    if run_dir is not None and Path(run_dir).is_dir():
        records.write_training_outcome(Path(run_dir), record)
    record["episodes"] = record_training_outcome(line, run_id, outcome, model_version=version, home=home)
    return record
