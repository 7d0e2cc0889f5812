"""Gathering what the Model Factory view shows (:mod:`pipelines.ui.data`) from the factory's
records, each through its one reader in :mod:`pipelines.catalog`:

| what | reader |
|---|---|
| batches | :func:`pipelines.catalog.ledger.all_records` |
| Data Docs | the ledger's ``validation.data_docs`` page, under :func:`~pipelines.catalog.layout.data_docs_root` |
| training runs, evaluations | :func:`pipelines.catalog.records.training_runs`: manifest, training result, MLflow run, the gate's result and report |
| serving | :func:`pipelines.catalog.records.serving_versions`: push info, retirements; TF Serving serves the highest live version |
| drift | :func:`pipelines.catalog.records.read_drift_history` (``kind: "batch"`` records) and the reports they name (:func:`~pipelines.catalog.records.read_drift_report`, :func:`~pipelines.catalog.records.drift_report_html`) |
| live serving | :func:`pipelines.serving.predlog.read_predictions` (the last hour: requests, latency) and the ``source: "live"`` drift history records |
| quarantined images (``modality: image``) | :func:`pipelines.catalog.records.read_quarantine` of the latest batches |
| hyperparameter search | :func:`pipelines.catalog.records.read_study_records` (the studies) and :func:`~pipelines.catalog.records.read_tuned_params` (the tuned settings) |
| label errors | :func:`pipelines.catalog.records.read_latest_label_errors` (the latest prepared training's report) |
| automated labelling | :func:`pipelines.catalog.records.read_label_thresholds`, :func:`~pipelines.catalog.records.read_labelling_runs`, :func:`~pipelines.catalog.records.read_review_queues` (with the queue's files, :func:`~pipelines.catalog.layout.review_tasks_path`, :func:`~pipelines.catalog.layout.review_config_path`), :func:`~pipelines.catalog.records.read_label_imports` |

What differs by the spec's ``modality`` is in one table, :data:`MODALITY_PARTS`, looked up
by the spec's value; an evaluation's confusion matrix and example gallery come in through
:func:`evaluation_view`, which takes plain data.

Every part is optional: a stage that has not run yet leaves its part of the page empty,
and a record that cannot be read becomes a note on the page, never an error page.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

from pipelines.catalog import layout, ledger, records
from pipelines.catalog.records import (
    BatchRecord,
    DriftRecord,
    LabelErrorReport,
    RecordError,
    StudyRecord,
    TrainingRun,
    TunedParams,
    ValidationSummary,
)
from pipelines.config import factory_home
from pipelines.monitoring.live import is_live
from pipelines.ui import images
from pipelines.ui.data import (
    DRIFT_METRIC,
    MAX_BATCHES,
    MAX_DRIFT_POINTS,
    MAX_FEATURE,
    MAX_GALLERY,
    MAX_IMPORTANCES,
    MAX_LABEL_IMPORTS,
    MAX_LABELLING_RUNS,
    MAX_LIVE_WINDOWS,
    MAX_MODELS,
    MAX_QUARANTINE_IMAGES,
    MAX_REVIEW_QUEUES,
    MAX_STUDIES,
    MAX_SUSPECTED_LABELS,
    SCORE_FEATURE,
    AirflowRuns,
    Batch,
    ClassThreshold,
    ConfusionMatrix,
    DriftBatch,
    DriftPoint,
    DriftSeries,
    Evaluation,
    GalleryImage,
    LabelErrors,
    LabelImport,
    Labelling,
    LabellingRun,
    LabelThresholds,
    LineView,
    LiveServing,
    LiveWindow,
    MlflowInfo,
    Model,
    Overview,
    ReviewQueue,
    ServingVersion,
    Study,
    SuspectedLabel,
    Trial,
    TunedSettings,
    Tuning,
    Validation,
)

if TYPE_CHECKING:
    from pipelines.specs import LineSpec

T = TypeVar("T")


# -- helpers ------------------------------------------------------------------------------


def _float(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _count(value: object) -> int | None:
    """A count a record keeps beyond its typed fields, or None when it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _note(what: str, error: str, home: Path) -> str:
    """A reader's error as a note on the page, its paths relative to the factory home."""
    return f"{what}: {error.replace(str(home) + os.sep, '')}"


def _read(what: str, home: Path, notes: list[str], read: Callable[[list[str]], T], empty: T) -> T:
    """``read(errors)``, with each record it could not read and any failure as a note."""
    errors: list[str] = []
    try:
        out = read(errors)
    except (RecordError, OSError) as err:
        errors.append(str(err))
        out = empty
    notes.extend(_note(what, e, home) for e in errors)
    return out


def docs_link(path: str | None, home: Path | None = None) -> str | None:
    """A Data Docs file recorded in the ledger as a URL path relative to the Data Docs root
    (:func:`~pipelines.catalog.layout.data_docs_root`), or None when it is not under it (or gone)."""
    if not path:
        return None
    root = layout.data_docs_root(home).resolve()
    try:
        rel = Path(path).resolve().relative_to(root)
    except (ValueError, OSError):
        return None
    if not (root / rel).is_file():
        return None
    return "/".join(quote(part) for part in rel.parts)


# -- batches ------------------------------------------------------------------------------


def _validation(v: ValidationSummary | None, home: Path) -> Validation | None:
    """The verdict :mod:`pipelines.ingest.validation` recorded (``failed``: its
    ``FailedExpectation`` objects)."""
    if v is None:
        return None
    return Validation(
        success=v.success,
        evaluated=v.evaluated,
        successful=v.successful,
        failed=[f"{f['expectation']}" + (f" on {f['column']}" if f.get("column") else "") for f in v.failed],
        docs=docs_link(v.data_docs, home),
        docs_file=v.data_docs or None,
    )


def batch_from_record(record: BatchRecord, home: Path) -> Batch:
    c = record.cleaning
    return Batch(
        batch_id=record.batch_id,
        status=record.status,
        landed_at=record.landed_at,
        updated_at=record.updated_at,
        rows_in=c.rows_in if c else None,
        rows_clean=c.rows_clean if c else None,
        rows_quarantined=c.rows_quarantined if c else None,
        duplicates_removed=c.duplicates_removed if c else None,
        rows_unlabelled=_count(c.get("rows_unlabelled")) if c else None,
        quarantine_reasons=dict(c.quarantine_reasons) if c else {},
        validation=_validation(record.validation, home),
        error=record.error or None,
        failed_stage=record.failed_stage or None,
    )


def read_batches(line: str, home: Path, notes: list[str]) -> list[BatchRecord]:
    """Every ledger record of a line, newest landing first."""
    paths = layout.line_paths(line, home)
    found = _read("batch ledger", home, notes, lambda errors: ledger.all_records(paths, errors=errors), [])
    return list(reversed(found))


# -- models -------------------------------------------------------------------------------


def _blessing(verdict: str | None) -> str | None:
    """The gate's verdict (``BLESSED``, ``NOT_BLESSED``, ``FORCED``) as the page shows it."""
    return verdict.replace("_", " ") if verdict else None


def model_from_run(run: TrainingRun, line: str) -> Model:
    """A training run (:mod:`pipelines.training.prepare`'s manifest, the worker's result)
    and the gate's verdict on it (:mod:`pipelines.evaluation.gate`)."""
    manifest = run.manifest if isinstance(run.manifest, dict) else {}
    m = Model(
        run=run.run,
        batches=[str(b) for b in manifest.get("batches") or []],
        rows_train=(manifest.get("rows") or {}).get("train"),
        mlflow_run_id=run.mlflow_run_id,
        has_result=run.result is not None,
    )
    if run.result is not None:
        m.trained_at = run.result.finished_at or _iso(run.result_mtime)
        m.val_auc = _float(run.result.val_auc)
        m.epochs_run = run.result.epochs_run
        m.samples_per_s = _float(run.result.samples_per_s)
    evaluation = run.evaluation
    if evaluation is not None:
        m.evaluated = True
        m.blessing = _blessing(evaluation.blessing)
        m.blessing_why = evaluation.why
        m.eval_metrics = {k: x for k, v in evaluation.overall.items() if (x := _float(v)) is not None}
        m.serving_version = evaluation.serving_version
    if run.has_report:
        m.eval_report = f"reports/{quote(line)}/evaluation/{quote(run.run)}"
    return m


def read_training_runs(line: str, home: Path, notes: list[str]) -> list[TrainingRun]:
    """Every training run of a line, newest first (unreadable records become notes)."""
    return _read("training runs", home, notes, lambda errors: records.training_runs(line, home, errors), [])


# -- serving ------------------------------------------------------------------------------


def read_serving(line: str, home: Path, notes: list[str]) -> list[ServingVersion]:
    """Versions in the serving store (:mod:`pipelines.evaluation.serving`), newest first."""
    versions = _read("serving store", home, notes, lambda errors: records.serving_versions(line, home, errors), [])
    return [
        ServingVersion(
            version=s.version,
            pushed_at=s.push.pushed_at if s.push else None,
            blessing=_blessing(s.push.blessing) if s.push else None,
            run=s.training_run,
            retired=s.retired,
            retired_reason=s.retirement.reason if s.retirement else None,
            in_serving=s.in_serving,
        )
        for s in versions
    ]


# -- drift --------------------------------------------------------------------------------


def _feature_values(record: DriftRecord, line: str, home: Path, notes: list[str]) -> dict[str, float]:
    """Per-feature PSI of one scored batch from its JSON report (:mod:`pipelines.monitoring.detection`:
    ``features`` -> ``metrics`` -> ``psi`` -> ``value``), else the history's largest PSI."""
    try:
        report = records.read_drift_report(record, line, home)
    except RecordError as err:
        notes.append(_note("drift report", str(err), home))
        report = None
    if isinstance(report, dict):
        values = {
            name: x
            for name, finding in (report.get("features") or {}).items()
            if finding.get("status") == "ok" and (x := _float(finding["metrics"][DRIFT_METRIC]["value"])) is not None
        }
        if values:
            return values
    top = _float((record.max_psi or {}).get("value"))
    return {MAX_FEATURE: top} if top is not None else {}


def _drift_report_link(record: DriftRecord, line: str, home: Path) -> str | None:
    html = records.drift_report_html(record, line, home)
    return f"reports/{quote(line)}/drift/{quote(html.name)}" if html is not None else None


def _thresholds(line: str) -> Callable[[str], float | None]:
    """A feature's PSI threshold from the line's ``drift:`` section (defaults without a spec)."""
    from pipelines.specs import SpecError, load_spec
    from pipelines.specs.drift import drift_spec

    try:
        config = load_spec(line).drift
    except SpecError:
        config = drift_spec(None)
    return lambda feature: config.thresholds_for(feature).get(DRIFT_METRIC)


def read_drift_records(line: str, home: Path, notes: list[str]) -> list[DriftRecord]:
    """The line's scored batches and live windows (``kind: "batch"`` history records), read
    once for the drift chart and the live serving section; unreadable lines are noted."""
    return _read("drift history", home, notes,
                 lambda skipped: records.read_drift_history(line, home, kind="batch", skipped=skipped), [])


def read_drift(line: str, home: Path, notes: list[str],
               history: list[DriftRecord]) -> tuple[list[DriftSeries], list[DriftBatch]]:
    """The PSI of each feature over the last scored batches of ``history``
    (:func:`read_drift_records`), and those batches, newest first."""
    history = sorted(history, key=lambda r: r.scored_at or r.recorded_at or "")[-MAX_DRIFT_POINTS:]

    series: dict[str, list[DriftPoint]] = {}
    batches = []
    for r in history:
        for name, value in _feature_values(r, line, home, notes).items():
            series.setdefault(name, []).append(DriftPoint(r.batch_id, r.scored_at, value))
        top = r.max_psi or {}
        batches.append(
            DriftBatch(
                batch_id=r.batch_id,
                scored_at=r.scored_at,
                model_version=None if r.model_version is None else str(r.model_version),
                drifted=bool(r.drifted),
                drifted_features=[str(d["feature"]) for d in r.drifted_features],
                max_psi=_float(top.get("value")),
                max_psi_feature=top.get("feature"),
                episode_status=r.episode_status,
                report=_drift_report_link(r, line, home),
            )
        )
    threshold = _thresholds(line) if series else None
    out = [DriftSeries(name, points, threshold(name)) for name, points in series.items()]
    # the score first, then the features that moved most
    out.sort(key=lambda s: (s.feature != SCORE_FEATURE, -s.peak, s.feature))
    return out, list(reversed(batches))


# -- live serving -------------------------------------------------------------------------


def read_live(line: str, home: Path, notes: list[str], version: int | None, history: list[DriftRecord],
              now: datetime | None = None) -> LiveServing | None:
    """The last hour of the line's prediction log (requests, instances, the requests'
    latency p50 and p99) and its latest scored live windows (from ``history``,
    :func:`read_drift_records`); None when nothing was logged in that hour and no window
    was scored."""
    import numpy as np

    from pipelines.serving.predlog import read_predictions

    now = now or datetime.now(UTC)
    live = LiveServing(version=version)
    try:
        frame = read_predictions(line, home, since=now - timedelta(hours=1), until=now,
                                 columns=["request_id", "instance", "time", "latency_ms"])
    except Exception as err:  # noqa: BLE001 - a damaged log is a note, not an error page
        notes.append(_note("prediction log", f"{type(err).__name__}: {err}", home))
        frame = None
    if frame is not None and len(frame):
        requests = frame.drop_duplicates("request_id")
        latency = requests["latency_ms"].dropna().to_numpy(dtype=float)
        live.requests, live.instances = int(len(requests)), int(len(frame))
        live.per_minute = round(live.requests / 60.0, 2)
        if len(latency):
            live.latency_p50_ms = _float(float(np.percentile(latency, 50)))
            live.latency_p99_ms = _float(float(np.percentile(latency, 99)))
    scored = [r for r in history if is_live(r)]
    scored.sort(key=lambda r: (r.get("window_start") or "", r.batch_id or ""))
    live.windows = [
        LiveWindow(batch_id=r.batch_id, window_start=r.get("window_start"),
                   model_version=None if r.model_version is None else str(r.model_version),
                   drifted=bool(r.drifted), drifted_features=[str(d["feature"]) for d in r.drifted_features],
                   labelled=bool(r.get("labelled")), auc=_float(r.auc), report=_drift_report_link(r, line, home))
        for r in reversed(scored[-MAX_LIVE_WINDOWS:])
    ]
    if not live.requests and not live.windows:
        return None
    return live


# -- hyperparameter search ----------------------------------------------------------------

# Optuna's trial states as the page counts them
TRIAL_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
                "WAITING": "waiting"}


def _last_intermediate(intermediate: dict[str, float]) -> tuple[int | None, float | None]:
    """The last epoch a trial reported (``intermediate``: epoch as text -> value) and its value."""
    epochs = []
    for key, value in intermediate.items():
        try:
            epochs.append((int(key), value))
        except (TypeError, ValueError):
            continue
    if not epochs:
        return None, None
    epoch, value = max(epochs)
    return epoch, _float(value)


def study_from_record(record: StudyRecord) -> Study:
    """A study's record (:mod:`pipelines.tuning.study`'s summary) as the page shows it: its
    trials counted by state, the best trial, the settings' importances largest first."""
    counts = dict.fromkeys(("complete", "pruned", "failed", "running"), 0)
    trials = []
    for t in sorted(record.trials, key=lambda t: t.number):
        state = TRIAL_STATES.get(t.state.upper(), t.state.lower())
        counts[state] = counts.get(state, 0) + 1
        epoch, last = _last_intermediate(t.intermediate)
        trials.append(Trial(number=t.number, state=t.state.upper(), value=_float(t.value), last_intermediate=last,
                            last_epoch=epoch))
    study = Study(
        study=record.study, state=record.state, metric=record.metric, direction=record.direction,
        space=record.space, sampler=record.sampler, pruner=record.pruner, trials_requested=record.trials_requested,
        parallel=record.parallel, batches=[str(b) for b in record.batches], started=record.started,
        finished=record.finished, warm_start_from=record.warm_start_from, mlflow_run_id=record.mlflow_run_id,
        counts=counts, trials=trials,
        importances=sorted(((str(k), v) for k, x in record.importances.items() if (v := _float(x)) is not None),
                           key=lambda kv: (-kv[1], kv[0]))[:MAX_IMPORTANCES],
    )
    best = record.best or {}
    if best.get("trial") is not None:
        study.best_trial = int(best["trial"])
        study.best_value = _float(best.get("value"))
        study.best_params = dict(best.get("params") or {})
    else:  # a study still running: its best complete trial so far
        done = [t for t in record.trials if t.state.upper() == "COMPLETE" and _float(t.value) is not None]
        if done:
            pick = (min if record.direction == "minimize" else max)(done, key=lambda t: t.value)
            study.best_trial, study.best_value, study.best_params = pick.number, pick.value, dict(pick.params)
    return study


def tuned_from_record(record: TunedParams, spec: LineSpec | None) -> TunedSettings:
    """The line's tuned settings with whether its next training uses them, decided as the
    training stage decides (:func:`pipelines.tuning.params.apply_tuned`)."""
    tuned = TunedSettings(params=dict(record.params), study=record.study, trial=record.trial, metric=record.metric,
                          value=_float(record.value), batches=[str(b) for b in record.batches], space=record.space,
                          at=record.at, mlflow_run_id=record.mlflow_run_id)
    if spec is None:
        tuned.why_not = "the line's spec has no tuning section"
    else:
        from pipelines.tuning.params import apply_tuned

        provenance = apply_tuned(spec, record)[1]
        tuned.used, tuned.why_not = provenance["used"], provenance.get("why")
    return tuned


def read_tuning(line: str, spec: LineSpec | None, home: Path, notes: list[str],
                max_studies: int = MAX_STUDIES) -> Tuning | None:
    """The line's latest studies, newest first, and its tuned settings; None when it has
    neither (unreadable study records and a malformed tuned-settings record become notes)."""
    found = _read("tuning studies", home, notes, lambda errors: records.read_study_records(line, home, errors), [])
    tuned = _read("tuned settings", home, notes, lambda _: records.read_tuned_params(line, home), None)
    if not found and tuned is None:
        return None
    studies = []
    for record in list(reversed(found))[:max_studies]:
        try:
            studies.append(study_from_record(record))
        except (TypeError, ValueError) as err:  # e.g. a best trial that is not a number
            notes.append(f"tuning study {record.study}: {err}")
    return Tuning(studies=studies, study_total=len(found),
                  tuned=None if tuned is None else tuned_from_record(tuned, spec), tune_dag=f"tune_{line}")


# -- label errors -----------------------------------------------------------------------


def label_errors_from_report(report: LabelErrorReport, max_rows: int = MAX_SUSPECTED_LABELS) -> LabelErrors:
    """A label-error report as the page shows it: counts, suspects per batch (most first),
    the worst suspected rows."""
    by_batch = sorted(((str(b), int(n)) for b, n in report.by_batch.items()), key=lambda bn: (-bn[1], bn[0]))
    rows = [SuspectedLabel(batch_id=r.batch_id, key=dict(r.key), given=r.given, suggested=r.suggested,
                           score=_float(r.score)) for r in report.rows[:max_rows]]
    return LabelErrors(mode=report.mode, run_id=report.run_id, at=report.at, model=report.model, folds=report.folds,
                       rows_checked=report.rows_checked, found=report.found, excluded=report.excluded,
                       by_batch=by_batch, rows=rows, rows_listed=len(report.rows))


def read_label_errors(line: str, home: Path, notes: list[str]) -> LabelErrors | None:
    """The line's latest label-error report; None when there is none (a malformed one is a note)."""
    report = _read("label errors", home, notes, lambda _: records.read_latest_label_errors(line, home), None)
    return None if report is None else label_errors_from_report(report)


# -- automated labelling -----------------------------------------------------------------


def thresholds_from_record(record: records.LabelThresholds, names: dict[str, str],
                           serving_version: int | None = None) -> LabelThresholds:
    """The thresholds in use, per class in the label's order (display names from ``names``,
    :func:`class_names`), stale when another version than theirs is in serving."""
    order = {value: i for i, value in enumerate(names)}
    classes = [
        ClassThreshold(value=str(value), name=names.get(str(value), str(value)), threshold=_float(c.threshold),
                       support=c.support, precision=_float(c.precision), precision_lower=_float(c.precision_lower),
                       accepted_share=_float(c.accepted_share) or 0.0, reason=c.reason)
        for value, c in sorted(record.classes.items(), key=lambda vc: (order.get(str(vc[0]), len(order)), str(vc[0])))
    ]
    stale = (serving_version is not None and record.model_version is not None
             and str(record.model_version) != str(serving_version))
    return LabelThresholds(model_version=record.model_version, target_precision=record.target_precision,
                           confidence_level=record.confidence_level, classes=classes, eval_rows=record.eval_rows,
                           run_id=record.run_id, at=record.at, stale=stale)


def _batch_ids(record: records.Record, many: str, one: str) -> list[str]:
    """The label batches a run or an import landed: its ``label_batches`` (source -> batch),
    else its one ``label_batch``."""
    by_source = record.get(many)
    if isinstance(by_source, dict) and by_source:
        return sorted({str(b) for b in by_source.values()})
    single = record.get(one)
    return [str(single)] if single else []


def labelling_run_from_record(record: records.LabellingRun) -> LabellingRun:
    return LabellingRun(run_id=record.run_id, at=record.at, state=record.get("state"),
                        model_version=record.model_version, source_batches=[str(b) for b in record.source_batches],
                        rows_unlabelled=record.rows_unlabelled, auto_labelled=record.auto_labelled,
                        queued=record.queued, label_batches=_batch_ids(record, "label_batches", "label_batch"),
                        queue=record.queue)


def review_queue_from_record(record: records.ReviewQueue, line: str, home: Path, notes: list[str]) -> ReviewQueue:
    """A review queue with the paths of the files to import into Label Studio (a file that
    is gone is a note)."""
    folder = layout.review_queue_dir(line, record.queue_id, home)
    files = {}
    for what, path in (("tasks", layout.review_tasks_path(folder)), ("config", layout.review_config_path(folder))):
        files[what] = str(path) if path.is_file() else None
        if files[what] is None:
            notes.append(_note(f"review queue {record.queue_id}", f"{path} is missing", home))
    return ReviewQueue(queue_id=record.queue_id, rows=record.rows, drifted_rows=_count(record.get("drifted_rows")),
                       created_at=record.created_at, model_version=record.model_version,
                       source_batches=[str(b) for b in record.source_batches], tasks_file=files["tasks"],
                       config_file=files["config"], imports=[dict(i) for i in record.imported])


def label_import_from_record(record: records.LabelImport) -> LabelImport:
    return LabelImport(
        import_id=record.import_id, file=record.file, at=record.at, state=record.get("state"), tasks=record.tasks,
        labels=record.labels, skipped=sum(record.skipped_by_reason.values()) or len(record.skipped),
        skipped_by_reason=sorted(((str(r), int(n)) for r, n in record.skipped_by_reason.items()),
                                 key=lambda rn: (-rn[1], rn[0])),
        label_batches=_batch_ids(record, "label_batches", "label_batch"), queues=[str(q) for q in record.queues])


def read_labelling(line: str, spec: LineSpec | None, home: Path, notes: list[str],
                   serving_version: int | None = None) -> Labelling | None:
    """The line's thresholds in use, its latest labelling runs, review queues and imports
    (newest first); None when its spec has no labelling section and it has no labelling
    record (unreadable records become notes)."""
    thresholds = _read("label thresholds", home, notes, lambda _: records.read_label_thresholds(line, home), None)
    runs = _read("labelling runs", home, notes, lambda errors: records.read_labelling_runs(line, home, errors), [])
    queues = _read("review queues", home, notes, lambda errors: records.read_review_queues(line, home, errors), [])
    imports = _read("label imports", home, notes, lambda errors: records.read_label_imports(line, home, errors), [])
    declared = spec is not None and spec.labelling is not None
    if not declared and thresholds is None and not runs and not queues and not imports:
        return None
    return Labelling(
        label_dag=f"label_{line}",
        thresholds=None if thresholds is None else thresholds_from_record(thresholds, class_names(spec),
                                                                          serving_version),
        runs=[labelling_run_from_record(r) for r in reversed(runs[-MAX_LABELLING_RUNS:])], run_total=len(runs),
        queues=[review_queue_from_record(q, line, home, notes) for q in reversed(queues[-MAX_REVIEW_QUEUES:])],
        queue_total=len(queues),
        imports=[label_import_from_record(i) for i in reversed(imports[-MAX_LABEL_IMPORTS:])],
        import_total=len(imports),
    )


# -- images -------------------------------------------------------------------------------

QUARANTINE_COLUMNS = ["image_id", "file", "image", "label", "_reasons"]  # an image line's quarantine


def gallery_image(image_id: object, data: bytes | None, caption: str, details: list[str] | None = None,
                  batch_id: str | None = None) -> GalleryImage:
    """An image of a gallery, its bytes decoded and re-encoded for display
    (:func:`pipelines.ui.images.display_src`), or a placeholder with the reason."""
    src, problem = images.display_src(data)
    return GalleryImage(image_id=None if image_id is None else str(image_id), caption=caption, src=src,
                        problem=problem, details=list(details or []), batch_id=batch_id)


def read_quarantine_images(line: str, batches: list[BatchRecord], home: Path, notes: list[str],
                           limit: int = MAX_QUARANTINE_IMAGES) -> list[GalleryImage]:
    """Up to ``limit`` quarantined images of an image line, from its batches newest first
    (those whose cleaning set rows aside), each with its reasons (the cleaning job's
    quarantine columns: ``image_id``, ``file``, ``image``, ``label``, ``_reasons``)."""
    out: list[GalleryImage] = []
    for record in batches:
        if len(out) >= limit:
            break
        if not (record.cleaning and record.cleaning.rows_quarantined):
            continue
        rows = _read(f"quarantine of {record.batch_id}", home, notes,
                     lambda _, b=record.batch_id: records.read_quarantine(
                         line, b, home, columns=QUARANTINE_COLUMNS, limit=limit - len(out)), [])
        for row in rows:
            label = row.get("label")
            caption = str(row.get("image_id") or row.get("file") or "?")
            if label is not None and str(label) != "":
                caption += f" \u00b7 label {label}"
            out.append(gallery_image(row.get("image_id"), row.get("image"), caption,
                                     [str(r) for r in row.get("_reasons") or []], batch_id=record.batch_id))
    return out


def _tabular_parts(view: LineView, spec: LineSpec | None, batches: list[BatchRecord], runs: list[TrainingRun],
                   home: Path) -> None:
    """A tabular line shows nothing beyond the common parts."""


def read_latest_evaluation(runs: list[TrainingRun], spec: LineSpec | None, home: Path,
                           notes: list[str]) -> Evaluation | None:
    """The newest multi-class evaluation the gate recorded among ``runs`` (newest first: its
    confusion matrix and the misclassified evaluation images,
    :func:`pipelines.catalog.records.read_confusion_matrix` and
    :func:`~pipelines.catalog.records.read_misclassified`), through :func:`evaluation_view`."""
    names = class_names(spec)
    for run in runs:
        folder = Path(run.path)
        confusion = _read(f"confusion matrix of {run.run}", home, notes,
                          lambda _, f=folder: records.read_confusion_matrix(f), None)
        if confusion is None:
            continue
        index = _read(f"misclassified images of {run.run}", home, notes,
                      lambda _, f=folder: records.read_misclassified(f), None)
        examples = []
        for entry in (index.entries if index is not None else [])[:MAX_GALLERY]:
            png = _read(f"misclassified image {entry.get('file')}", home, notes,
                        lambda _, e=entry, f=folder: (layout.misclassified_dir(f) / str(e.get("file"))).read_bytes(), None)
            true = names.get(str(entry.get("label")), str(entry.get("label")))
            predicted = names.get(str(entry.get("predicted")), str(entry.get("predicted")))
            confidence = entry.get("confidence")
            caption = f"{true} \u2192 {predicted}" + (f" ({confidence:.0%})" if isinstance(confidence, float) else "")
            examples.append({"image_id": entry.get("image_id"), "png": png, "caption": caption})
        try:
            return evaluation_view({"classes": confusion.classes, "matrix": confusion.matrix}, examples,
                                   names=names, run=run.run)
        except ValueError as err:
            notes.append(f"evaluation of {run.run}: {err}")
            return None
    return None


def _image_parts(view: LineView, spec: LineSpec | None, batches: list[BatchRecord], runs: list[TrainingRun],
                 home: Path) -> None:
    view.quarantine_images = read_quarantine_images(view.name, batches, home, view.notes)
    view.evaluation = read_latest_evaluation(runs, spec, home, view.notes)


# what a line shows beyond the common parts, by its spec's modality
MODALITY_PARTS: dict[str, Callable[[LineView, LineSpec | None, list[BatchRecord], list[TrainingRun], Path], None]] = {
    "tabular": _tabular_parts,
    "image": _image_parts,
}


def class_names(spec: LineSpec | None) -> dict[str, str]:
    """The display name of each class of a line's label (``schema.label.names``, in the
    order of the label field's categories), by the class value as text."""
    if spec is None or not spec.schema_.label.names:
        return {}
    categories = spec.schema_.field(spec.schema_.label.name).categories or []
    return {str(c): name for c, name in zip(categories, spec.schema_.label.names, strict=False)}


def evaluation_view(confusion: dict | None, examples: list[dict] | None = None, *,
                    names: dict[str, str] | None = None, run: str | None = None,
                    max_images: int = MAX_GALLERY) -> Evaluation:
    """What the page shows of a multi-class evaluation, from plain data:

    - ``confusion``: ``{"classes": [c0, c1, ...], "matrix": [[int, ...], ...]}``, the count of
      examples of true class ``classes[i]`` (row ``i``) predicted as ``classes[j]`` (column
      ``j``); the classes are the label's values (or already display names);
    - ``examples``: ``[{"image_id": str, "png": bytes, "caption": str}, ...]``, images to show
      with their caption (e.g. true class, predicted class, confidence); the first
      ``max_images`` are shown, each decoded and re-encoded for display;
    - ``names``: display names by class value as text (:func:`class_names` of the spec).

    Raises ``ValueError`` naming what is wrong when the matrix is not a square of
    non-negative integers, one row and column per class."""
    names = names or {}
    matrix = None
    if confusion is not None:
        classes = list(confusion.get("classes") or [])
        rows = confusion.get("matrix")
        if not classes:
            raise ValueError("confusion matrix: no classes")
        if not isinstance(rows, list) or len(rows) != len(classes) or any(
                not isinstance(r, list) or len(r) != len(classes) for r in rows):
            raise ValueError(f"confusion matrix: expected {len(classes)}x{len(classes)} counts, one row and column per class")
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for r in rows for x in r):
            raise ValueError("confusion matrix: counts must be non-negative integers")
        matrix = ConfusionMatrix(classes=[names.get(str(c), str(c)) for c in classes], matrix=[list(r) for r in rows])
    gallery = [gallery_image(e.get("image_id"), e.get("png"), str(e.get("caption") or e.get("image_id") or ""))
               for e in (examples or [])[:max_images]]
    return Evaluation(run=run, confusion=matrix, gallery=gallery)


def _line_spec(line: str, notes: list[str]) -> LineSpec | None:
    """The line's spec, or None (a line with records only, or a spec that does not load)."""
    from pipelines.specs import SpecError, load_spec

    try:
        return load_spec(line)
    except SpecError as err:
        if "unknown product line" not in str(err):
            notes.append(f"spec: {err}")
        return None


# -- all together -------------------------------------------------------------------------


def known_lines(home: Path) -> list[tuple[str, str, str]]:
    """(name, description, owner) of every declared line, plus lines that only have records."""
    out: dict[str, tuple[str, str, str]] = {}
    try:
        from pipelines.specs import load_specs

        for spec in load_specs():
            out[spec.name] = (spec.name, spec.description, spec.owner)
    except Exception:  # noqa: BLE001 - a broken spec must not take the view down
        pass
    for name in layout.lines_with_records(home):
        out.setdefault(name, (name, "", ""))
    return [out[k] for k in sorted(out)]


def gather_line(
    line: str,
    home: Path,
    *,
    description: str = "",
    owner: str = "",
    airflow: AirflowRuns | None = None,
    mlflow: MlflowInfo | None = None,
    max_batches: int = MAX_BATCHES,
    max_models: int = MAX_MODELS,
) -> LineView:
    view = LineView(name=line, description=description, owner=owner, ingest_dag=f"ingest_{line}",
                    train_dag=f"train_{line}")
    notes = view.notes

    batch_records = read_batches(line, home, notes)
    view.batch_total = len(batch_records)
    for r in batch_records:
        key = r.status or "unknown"
        view.status_counts[key] = view.status_counts.get(key, 0) + 1
    view.batches = [batch_from_record(r, home) for r in batch_records[:max_batches]]
    spec = _line_spec(line, notes)
    view.modality = spec.modality if spec is not None else "tabular"
    runs = read_training_runs(line, home, notes)
    parts = MODALITY_PARTS.get(view.modality)
    if parts is None:
        notes.append(f"modality {view.modality!r}: nothing to show beyond the common parts")
    else:
        parts(view, spec, batch_records[:max_batches], runs, home)

    models = [model_from_run(run, line) for run in runs]
    view.model_total = len(models)
    view.models = models[:max_models]
    view.serving = read_serving(line, home, notes)
    by_run = {m.run: m for m in models}
    for s in view.serving:
        if s.in_serving:
            view.serving_version = s.version
        m = by_run.get(s.run) if s.run else None
        if m is None:
            m = next((x for x in models if x.serving_version == s.version), None)
        if m is not None and (m.serving_version is None or m.serving_version == s.version):
            m.serving_version = s.version
            m.in_serving = s.in_serving
            m.retired = s.retired
            if m.blessing is None:
                m.blessing = s.blessing

    if airflow is not None:
        try:
            runs = airflow.batch_runs(line)
            for b in view.batches:
                b.airflow = runs.get(b.batch_id)
            train_runs = airflow.training_runs(line)
            for m in view.models:
                m.airflow = train_runs.get(m.run)
        except Exception as err:  # noqa: BLE001 - links are a convenience
            notes.append(f"Airflow runs could not be looked up: {err}")

    if mlflow is not None:
        info = mlflow.line(line)
        if info.error:
            notes.append(f"MLflow: {info.error}")
        view.mlflow_experiment_id = info.experiment_id
        view.champion = info.aliases.get("champion")
        by_run_id = {m.mlflow_run_id: m for m in models if m.mlflow_run_id}
        for v in info.versions:
            m = by_run_id.get(v.get("run_id"))
            if m is not None:
                m.registry_version = str(v.get("version"))
                m.aliases = sorted(v.get("aliases") or [])

    history = read_drift_records(line, home, notes)
    view.drift_series, view.drift_batches = read_drift(line, home, notes, history)
    view.live = read_live(line, home, notes, view.serving_version, history)
    view.tuning = read_tuning(line, spec, home, notes)
    view.label_errors = read_label_errors(line, home, notes)
    view.labelling = read_labelling(line, spec, home, notes, view.serving_version)
    return view


def gather(
    home: Path | None = None,
    lines: list[str] | None = None,
    *,
    airflow: AirflowRuns | None = None,
    mlflow: MlflowInfo | None = None,
    allowed: set[str] | None = None,
    max_batches: int = MAX_BATCHES,
    max_models: int = MAX_MODELS,
) -> Overview:
    """Everything the page shows. ``lines``: only these (default: every known line);
    ``allowed``: the lines the viewer may see (None: all)."""
    home = Path(home) if home is not None else factory_home()
    known = {name: (d, o) for name, d, o in known_lines(home)}
    names = lines if lines is not None else sorted(known)
    if allowed is not None:
        names = [n for n in names if n in allowed]
    views = [
        gather_line(
            name,
            home,
            description=known.get(name, ("", ""))[0],
            owner=known.get(name, ("", ""))[1],
            airflow=airflow,
            mlflow=mlflow,
            max_batches=max_batches,
            max_models=max_models,
        )
        for name in names
    ]
    return Overview(
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        home=str(home),
        lines=views,
        mlflow_ui=(os.environ.get("FACTORY_MLFLOW_UI") or "").rstrip("/") or None,
        docs_index=docs_link(str(layout.data_docs_index(home)), home) if views else None,
    )
