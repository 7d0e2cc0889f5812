"""The monitor stage's task logic; ``dags/monitor.py`` only wires it.

- After training, :func:`write_reference_profile` scores the training data with the new
  model and stores the reference profile (feature distributions and the model's score
  distribution) inside the SavedModel's ``assets.extra/``, so it travels with the model
  version into the serving store.
- The monitor waits (a deferrable sensor, see :mod:`pipelines.monitoring.sensor`) for
  validated batches that have not been scored, once a model is in serving;
  :func:`score_new_batches` scores each against the serving model's profile, with
  the serving model's predictions (prediction drift) and, where the batch has labels,
  its ROC AUC; every score is kept in the line's drift history.
- :func:`retrain_decision` links an open drift episode to its retrain: with the line's
  ``training.retrain_on: new_data`` it adopts the training the drifted batch already set
  off (no second training); with ``drift`` it claims at most one retrain per episode,
  after the spec's cooldown, for the drift Asset to start.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pipelines.catalog import layout, ledger, records
from pipelines.catalog.layout import line_paths
from pipelines.config import ml_python
from pipelines.specs import load_spec


class MonitorError(RuntimeError):
    """Scoring could not run; the message says why."""


def model_predictions(model_dir: Path, inputs: list[Path]):
    """What the model says about the rows of ``inputs``, in order, as a DataFrame (scored in
    the ML environment by :mod:`pipelines.training.batch_predict`): ``score`` for a tabular
    model; ``class_id``, ``confidence`` and ``embedding`` for an image model."""
    from pipelines.training.launch import worker_environment

    with tempfile.TemporaryDirectory(prefix="factory-scores-") as tmp:
        out = Path(tmp) / "scores.parquet"
        cmd = [str(ml_python()), "-m", "pipelines.training.batch_predict", "--model", str(model_dir), "--output", str(out)]
        done = subprocess.run(
            [*cmd, *map(str, inputs)], env=worker_environment(), capture_output=True, text=True, timeout=1800
        )
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
            reason = next((ln for ln in reversed(lines) if "factory-score: error" in ln), lines[-1] if lines else "")
            raise MonitorError(f"scoring with {model_dir} failed: {reason}")
        import pandas as pd

        return pd.read_parquet(out)


def model_scores(model_dir: Path, inputs: list[Path]) -> list[float]:
    """The model's positive-class probabilities for the rows of ``inputs``, in order."""
    return model_predictions(model_dir, inputs)["score"].tolist()


def write_reference_profile(run_dir: Path) -> Path:
    """Profile the run's training data and the new model's outputs on it, by the run's
    modality (:data:`REFERENCE_PROFILES`); stored in the SavedModel's ``assets.extra`` (and
    next to the run) and returned."""
    run_dir = Path(run_dir)
    manifest = records.read_manifest_data(run_dir)
    if manifest is None:
        raise MonitorError(f"{run_dir}: no training manifest")
    modality = manifest.get("modality", "tabular")
    if modality not in REFERENCE_PROFILES:
        raise MonitorError(f"{run_dir}: no reference profile for modality {modality!r}")
    profile = REFERENCE_PROFILES[modality](run_dir, manifest)
    model_dir = layout.exported_model(run_dir)
    from pipelines.monitoring.profile import save_profile

    save_profile(profile, layout.drift_profile_path(run_dir))
    return save_profile(profile, layout.model_profile_path(model_dir))


def _tabular_profile(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    from pipelines.monitoring.batch import line_drift_spec
    from pipelines.monitoring.profile import build_profile_from_run

    model_dir = layout.exported_model(run_dir)
    shards = layout.train_shards(run_dir)
    scores = model_scores(model_dir, shards)
    import pandas as pd

    labels = pd.concat([pd.read_parquet(p, columns=[manifest["label"]["name"]]) for p in shards])
    profile = build_profile_from_run(
        run_dir,
        scores=scores,
        labels=labels[manifest["label"]["name"]].to_numpy(),
        config=line_drift_spec(manifest["line"]),
        meta={"line": manifest["line"], "run_id": manifest["run_id"], "batches": manifest["batches"]},
    )
    # The performance reference is the model's AUC on its held-out split: on its own
    # training rows it reads optimistic, and every honest batch would look like a drop.
    from pipelines.monitoring.statistics import roc_auc

    eval_path = layout.eval_data_path(run_dir)
    eval_labels = pd.read_parquet(eval_path, columns=[manifest["label"]["name"]])[manifest["label"]["name"]]
    eval_scores = model_scores(model_dir, [eval_path])
    import numpy as np

    # (the label's rate stays the training rows': a property of the data, not the model)
    eval_y = eval_labels.to_numpy().astype(bool)
    profile["performance"] = {
        **profile["performance"],
        "auc": roc_auc(eval_y, np.asarray(eval_scores, dtype=float)),
        "n": int(len(eval_y)),
        "positives": int(eval_y.sum()),
        "source": "held-out evaluation split",
    }
    return profile


def _class_values(classes: list[Any], class_ids) -> list[Any]:
    return [classes[int(i)] for i in class_ids]


def _image_profile(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Pixel statistics of the training images (as the cleaner measures them), the model's
    embedding and predicted classes on them, their class mix, and the model's accuracy on
    the held-out evaluation images (the reference the accuracy rule compares with)."""
    import numpy as np
    import pandas as pd

    from pipelines.monitoring.batch import line_drift_spec
    from pipelines.monitoring.images import build_image_profile, pixel_statistics

    model_dir = layout.exported_model(run_dir)
    shards = layout.train_shards(run_dir)
    label = manifest["label"]["name"]
    image = next(f["name"] for f in manifest["features"] if f.get("type") == "image")
    classes = list(manifest["label"]["classes"])
    train = pd.concat([pd.read_parquet(p, columns=[image, label]) for p in shards], ignore_index=True)
    predicted = model_predictions(model_dir, shards)
    eval_path = layout.eval_data_path(run_dir)
    held_out = pd.read_parquet(eval_path, columns=[label])[label]
    eval_predicted = model_predictions(model_dir, [eval_path])
    profile = build_image_profile(
        pixel_statistics(train[image]),
        np.stack(predicted["embedding"].to_numpy()),
        _class_values(classes, predicted["class_id"]),
        classes=classes,
        labels=train[label].tolist(),
        accuracy_on=(_class_values(classes, eval_predicted["class_id"]), held_out.tolist()),
        config=line_drift_spec(manifest["line"]),
        meta={"line": manifest["line"], "run_id": manifest["run_id"], "batches": manifest["batches"]},
    )
    profile["performance"]["source"] = "held-out evaluation split"
    return profile


# the reference profile of a training run, by the run's modality
REFERENCE_PROFILES = {"tabular": _tabular_profile, "image": _image_profile}


def serving_model(line: str, home: Path | None = None) -> tuple[int, Path] | None:
    """The version TF Serving serves for ``line`` and its directory, or None."""
    from pipelines.catalog.layout import serving_base
    from pipelines.evaluation.serving import serving_version

    base = serving_base(line, home)
    version = serving_version(base)
    return None if version is None else (version, base / str(version))


def unscored_batches(line: str, home: Path | None = None) -> list[str]:
    """Validated batches not yet in the line's drift history, oldest first (live windows'
    records, ``source: "live"``, are not landed batches, whatever their ids look like)."""
    scored = {r.get("batch_id") for r in records.read_drift_history(line, home, kind="batch")
              if r.get("source") != "live"}
    batches = ledger.all_records(line_paths(line, home))
    return [r["batch_id"] for r in batches if r.get("status") == ledger.VALIDATED and r["batch_id"] not in scored]


def score_new_batches(line: str, batch_ids: list[str] | None = None, home: Path | None = None) -> dict[str, Any]:
    """Score each new validated batch against the serving model's reference profile."""


    served = serving_model(line, home)
    if served is None:
        return {"line": line, "status": "no_serving_model", "batches": []}
    version, model_dir = served
    profile = layout.model_profile_path(model_dir)
    if not profile.exists():
        raise MonitorError(f"the serving model {line} v{version} has no reference profile ({profile})")
    spec = load_spec(line)
    score = BATCH_SCORERS[spec.modality]
    summaries = []
    for batch_id in batch_ids if batch_ids is not None else unscored_batches(line, home):
        record = ledger.read(line_paths(line, home), batch_id)
        path = Path(record["cleaning"]["clean_path"])
        summaries.append(score(spec, batch_id, path, model_dir, profile, str(version), home))
    return {"line": line, "status": "scored", "model_version": version, "batches": summaries}


def label_text(values, field_type: str):
    """A batch's labels as text, None where a row has no label yet. An integer label
    column with missing values reads as floats: 1.0 is the label "1", not "1.0"."""
    import numpy as np
    import pandas as pd

    def text(v):
        if pd.isna(v):
            return None
        return str(int(v)) if field_type == "integer" else str(v)

    return np.array([text(v) for v in values.tolist()], dtype=object)


def _score_tabular_batch(spec, batch_id: str, path: Path, model_dir: Path, profile: Path, version: str,
                         home: Path | None) -> dict[str, Any]:
    import pandas as pd

    from pipelines.monitoring.batch import monitor_batch

    label = spec.schema.label.name
    frame = pd.read_parquet(path)
    notes = []
    try:
        scores = model_scores(model_dir, sorted(path.glob("*.parquet")) or [path])
    except MonitorError as err:  # e.g. a feature column is missing: still scored on the rest
        scores, notes = None, [str(err)]
    labels = label_text(frame[label], spec.schema.field(label).type) if label in frame.columns else None
    summary = monitor_batch(
        spec.name, frame, profile, batch_id=batch_id, model_version=version, scores=scores, labels=labels,
        positive=str(spec.schema.label.positive), home=home,
    )
    summary["notes"] = [*summary.get("notes", []), *notes]
    return summary


def _score_image_batch(spec, batch_id: str, path: Path, model_dir: Path, profile: Path, version: str,
                       home: Path | None) -> dict[str, Any]:
    """The cleaned batch's statistics columns, the serving model's embedding and predicted
    class on its images, and its labels where it has them."""
    import numpy as np
    import pandas as pd

    from pipelines.monitoring.batch import monitor_batch
    from pipelines.monitoring.images import IMAGE_STATISTICS

    label = spec.schema.label.name
    frame = pd.read_parquet(path, columns=[*IMAGE_STATISTICS, label])
    classes = list(spec.schema.field(label).categories or [])
    notes = []
    try:
        predicted = model_predictions(model_dir, sorted(path.glob("*.parquet")) or [path])
        embeddings = np.stack(predicted["embedding"].to_numpy()) if len(predicted) else None
        predicted_classes = _class_values(classes, predicted["class_id"])
    except MonitorError as err:  # still scored on the pixel statistics
        embeddings, predicted_classes, notes = None, None, [str(err)]
    summary = monitor_batch(
        spec.name, frame, profile, batch_id=batch_id, model_version=version, labels=frame[label].tolist(),
        embeddings=embeddings, predicted=predicted_classes, home=home,
    )
    summary["notes"] = [*summary.get("notes", []), *notes]
    return summary


# how a new batch is scored, by the line's modality
BATCH_SCORERS = {"tabular": _score_tabular_batch, "image": _score_image_batch}


def _trainings(line: str, home: Path | None) -> list[dict[str, Any]]:
    """The line's training runs, newest first, as episode adoption reads them."""
    out = []
    for run in records.training_runs(line, home, errors=[]):
        manifest = run.manifest or {}
        if not manifest.get("run_id"):
            continue
        try:
            ended = records.read_training_outcome(Path(run.path))
        except records.RecordError:
            ended = None
        out.append({"run_id": manifest["run_id"], "batches": list(manifest.get("batches") or []),
                    "outcome": ended.outcome if ended else None, "model_version": ended.model_version if ended else None})
    return out


def _live_only_episode(line: str, home: Path | None) -> bool:
    """Whether the line's open episode was opened by live traffic alone (windows of the
    prediction log, no landed batch): no training will include those windows, so with
    ``retrain_on: new_data`` there is nothing to adopt and the monitor claims the retrain,
    as with ``retrain_on: drift``."""
    from pipelines.monitoring.episodes import load_state, open_episode

    episode = open_episode(load_state(line, home))
    if episode is None or not episode.get("drifted_batches"):
        return False
    from pipelines.monitoring.live import is_live

    live = {r.get("batch_id") for r in records.read_drift_history(line, home, kind="batch") if is_live(r)}
    return set(episode["drifted_batches"]) <= live


def retrain_decision(line: str, run_id: str, home: Path | None = None) -> dict[str, Any]:
    """Link the line's open drift episode to its retrain; returns ``{"retrain": bool,
    "reason": ...}``. With ``retrain: True`` (``retrain_on: drift``, a retrain claimed:
    at most one per episode, after the cooldown) it is what the drift event carries: the
    episode, its batches and what drifted by how much."""
    from pipelines.catalog.records import read_drift_history
    from pipelines.monitoring.batch import line_drift_spec
    from pipelines.monitoring.episodes import adopt_existing_training, claim_retrain

    policy = line_drift_spec(line).retrain
    if load_spec(line).training.retrain_on == "new_data" and not _live_only_episode(line, home):
        adopted = adopt_existing_training(line, _trainings(line, home), policy=policy, home=home)
        if adopted is None:
            why = ("no open drift episode without a retrain, or the training the drifted batch set off has not "
                   "started yet (it becomes the retrain when it does)")
        else:
            why = (f"episode {adopted['episode_id']} adopted training {adopted['run_id']!r}, which includes its "
                   f"drifted batch" + (f" and ended {adopted['outcome']}" if adopted["outcome"] else ""))
        return {"retrain": False, "reason": f"retrain_on: new_data: {why}", "adopted": adopted}
    decision = claim_retrain(line, run_id, policy=policy, home=home)
    if not decision.retrain:
        return decision.to_dict()
    event = decision.to_dict()
    drifted: dict[str, str] = {}
    for record in read_drift_history(line, home, kind="batch"):
        if record.get("episode_id") == decision.episode_id:
            for item in record.get("drifted_features") or []:
                if isinstance(item, dict) and "feature" in item:
                    drifted[item["feature"]] = str(item.get("by", ""))
    event.update(line=line, claimed_by=run_id, drifted=drifted)
    return event
