"""The factory's records as typed models, with the one reader (and writer) of each.

Each model names the fields that readers rely on and keeps every other field its writer
wrote (``extra="allow"``), so a record read and written back loses nothing. Fields are
optional where a stage that has not run yet, or an older record, may lack them: a
reader gets ``None`` rather than an exception. Records also answer ``record["field"]``
and ``record.get("field")`` like the JSON objects they are stored as.

| record | model | writer | reader |
|---|---|---|---|
| batch ledger | :class:`BatchRecord` | :func:`pipelines.catalog.ledger.update` | :func:`pipelines.catalog.ledger.read`, ``all_records`` |
| quarantine of a cleaned batch | rows as dicts (Parquet) | the Spark cleaning job (:mod:`pipelines.ingest.cleaning.job`) | :func:`read_quarantine` |
| training result | :class:`TrainingResult` | :func:`write_training_result` (rank 0 of the workers) | :func:`read_training_result` |
| model info (``assets.extra/factory_model.json``) | a dict (:func:`pipelines.training.manifest.model_info`) | :func:`write_model_info` (the export) | :func:`read_model_info` |
| training manifest | (:class:`pipelines.training.manifest.Manifest`) | :func:`write_manifest` | :func:`read_manifest_data` |
| MLflow run of a training run | ``mlflow_run_id`` text | :func:`write_mlflow_run_id` | :func:`read_mlflow_run_id` |
| evaluation result | :class:`EvaluationResult` | :func:`write_evaluation_result` (the gate) | :func:`read_evaluation_result` |
| confusion matrix (multi-class) | :class:`ConfusionMatrix` | :func:`write_confusion_matrix` (the gate) | :func:`read_confusion_matrix` |
| misclassified images (multi-class) | :class:`Misclassified` | :func:`write_misclassified` (the gate) | :func:`read_misclassified` |
| push | :class:`PushInfo` | :func:`pipelines.evaluation.serving.publish` | :func:`read_push_info` |
| retirement (rollback) | :class:`RetiredInfo` | :func:`pipelines.evaluation.serving.retire_latest` | :func:`read_retired_info` |
| drift history | :class:`DriftRecord` | :func:`append_drift_record` | :func:`read_drift_history` |
| drift episodes | a dict (:mod:`pipelines.monitoring.episodes` owns its shape) | :func:`write_episodes` | :func:`read_episodes` |
| drift report | a dict (:mod:`pipelines.monitoring.detection`) | :func:`write_drift_report` | :func:`read_drift_report` |
| reference profile (``drift_profile.json``) | a dict (:mod:`pipelines.monitoring.profile` owns and checks its format) | ``profile.save_profile`` at :func:`~pipelines.catalog.layout.drift_profile_path` | ``profile.load_profile`` |
| tuned settings of a line | :class:`TunedParams` | :func:`write_tuned_params` (the tuning DAG) | :func:`read_tuned_params` |
| tuning study | :class:`StudyRecord` | :func:`write_study_record` (the tuning DAG) | :func:`read_study_record`, :func:`read_study_records` |
| label-error report of a training run | :class:`LabelErrorReport` | :func:`write_label_errors` (training's preparation) | :func:`read_label_errors`, :func:`read_latest_label_errors` |
| label thresholds of a line | :class:`LabelThresholds` | :func:`write_label_thresholds` (the label DAG) | :func:`read_label_thresholds` |
| labelling run | :class:`LabellingRun` | :func:`write_labelling_run` (the label DAG) | :func:`read_labelling_run`, :func:`read_labelling_runs` |
| review queue | :class:`ReviewQueue` | :func:`write_review_queue` (the label DAG) | :func:`read_review_queue`, :func:`read_review_queues` |
| import of reviewed labels | :class:`LabelImport` | :func:`write_label_import` (the label DAG) | :func:`read_label_import`, :func:`read_label_imports` |
| the whole of a line | :class:`TrainingRun`, :class:`ServingVersion` | | :func:`training_runs`, :func:`serving_versions` |

One module for all record types, one section each: the table above is the whole
catalog, and a reader finds every format in one file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from pipelines import storage
from pipelines.catalog import layout


class RecordError(ValueError):
    """A record's file exists but cannot be read (malformed JSON or a wrong shape)."""


class Record(BaseModel):
    """A stored JSON object: typed where readers depend on it, everything else kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def __getitem__(self, key: str) -> Any:
        # fields and kept keys only: never one of BaseModel's own attributes (``copy``, ``json``)
        if key in type(self).model_fields or key in (self.model_extra or {}):
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            value = self[key]
        except KeyError:
            return default
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def to_json(self) -> dict[str, Any]:
        """The record as its JSON object (fields that were never set are left out)."""
        return self.model_dump(mode="json", exclude_unset=True)


def _pass_over(err: RecordError, errors: list[str] | None) -> None:
    """The readers' rule for a record they cannot read: raise it, or, given a list to
    collect into (a view or an exporter that shows the rest), name it there."""
    if errors is None:
        raise err from None
    errors.append(str(err))


def _load_each(paths: list[Path], model: type[Record], errors: list[str] | None,
               order: str | Callable[[Any], Any]) -> list[Any]:
    """Every readable record among ``paths`` (absent ones skipped, malformed ones passed
    over into ``errors``), sorted by the time field ``order`` (or by ``order(record)``)."""
    found = []
    for path in paths:
        try:
            record = _load(path, model)
        except RecordError as err:
            _pass_over(err, errors)
            continue
        if record is not None:
            found.append(record)
    if callable(order):
        return sorted(found, key=order)
    return sorted(found, key=lambda r: getattr(r, order) or "")


def _load(path: Path, model: type[Record] | None = None) -> Any:
    """A record file as ``model`` (or plain JSON), None when the file is absent."""
    try:
        data = storage.read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RecordError(f"{path}: not valid JSON: {err}") from None
    if data is None or model is None:
        return data
    if not isinstance(data, dict):
        raise RecordError(f"{path}: expected a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RecordError(f"{path}: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}") from None


# ---------------------------------------------------------------- batch ledger


class CleaningSummary(Record):
    rows_in: int | None = None
    rows_clean: int | None = None
    rows_quarantined: int | None = None
    duplicates_removed: int | None = None
    quarantine_reasons: dict[str, int] = {}
    seconds: float | None = None


class ValidationSummary(Record):
    success: bool | None = None
    evaluated: int | None = None
    successful: int | None = None
    failed: list[Any] = []
    data_docs: str | None = None


class BatchRecord(Record):
    line: str | None = None
    batch_id: str
    status: str | None = None
    landed_at: str | None = None
    updated_at: str | None = None
    events: list[dict[str, Any]] = []
    cleaning: CleaningSummary | None = None
    validation: ValidationSummary | None = None
    error: str | None = None
    failed_stage: str | None = None


# ---------------------------------------------------------------- cleaned batch: quarantine


def read_quarantine(line: str, batch_id: str, home: Path | None = None, *, columns: list[str] | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
    """Up to ``limit`` rows of a cleaned batch's quarantine, in file order, as dicts of
    ``columns`` (default: all): the Parquet folder the cleaning job writes at
    :meth:`~pipelines.catalog.layout.LinePaths.quarantine_batch` (its part files; names
    starting with ``.`` or ``_`` are Spark's bookkeeping, skipped as Spark and Arrow do).
    ``[]`` when the batch has no cleaning output.

    Reads only as many record batches as the limit needs, so a large quarantine costs
    little. Cleaning a batch again replaces its folder whole
    (:func:`pipelines.storage.swap_directory`); every part file is opened before any is
    read, so the rows come from one cleaning, and a folder replaced between listing and
    opening is a :class:`RecordError` (read again later), never a mix."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = layout.line_paths(line, home).quarantine_batch(batch_id)
    try:
        names = sorted(n for n in os.listdir(folder) if not n.startswith((".", "_")))
    except (FileNotFoundError, NotADirectoryError):
        return []
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        try:
            handles = [(folder / n, stack.enter_context(open(folder / n, "rb"))) for n in names]
        except FileNotFoundError as err:
            raise RecordError(f"{folder}: replaced while being read ({err.filename})") from None
        for path, handle in handles:
            if len(rows) >= limit:
                break
            try:
                part = pq.ParquetFile(handle)
                missing = [c for c in columns or [] if c not in part.schema_arrow.names]
                if missing:
                    raise RecordError(f"{path}: no column(s) {missing} (columns: {part.schema_arrow.names})")
                for batch in part.iter_batches(batch_size=max(1, min(limit, 256)), columns=columns):
                    rows.extend(batch.to_pylist()[: limit - len(rows)])
                    if len(rows) >= limit:
                        break
            except (pa.ArrowException, OSError) as err:
                raise RecordError(f"{path}: cannot be read as Parquet: {err}") from None
    return rows


# ---------------------------------------------------------------- training


class TrainingResult(Record):
    epochs_run: int | None = None
    resumed_from_epoch: int | None = None
    best_epoch: int | None = None
    stopped_early: bool | None = None
    history: list[dict[str, Any]] = []
    val_auc: float | None = None  # binary_classification runs
    val_accuracy: float | None = None  # multiclass_classification runs
    task: str | None = None  # written for runs other than binary_classification
    val_loss: float | None = None
    samples_per_s: float | None = None
    workers: int | None = None
    hosts: list[dict[str, Any]] = []  # [{"rank": r, "host": h}, ...] by rank: where each worker ran
    weights_sha256: str | None = None
    finished_at: str | None = None


def write_training_result(run: Path, result: dict[str, Any]) -> Path:
    return storage.write_json_atomic(layout.training_result_path(run), TrainingResult.model_validate(result).to_json())


def read_training_result(run: Path) -> TrainingResult | None:
    return _load(layout.training_result_path(run), TrainingResult)


class TrainingOutcome(Record):
    """How a training DAG run ended: ``blessed``, ``not_blessed`` or ``failed``."""

    run_id: str
    outcome: str
    model_version: str | None = None
    at: str | None = None


def write_training_outcome(run: Path, outcome: dict[str, Any]) -> Path:
    return storage.write_json_atomic(layout.training_outcome_path(run), TrainingOutcome.model_validate(outcome).to_json())


def read_training_outcome(run: Path) -> TrainingOutcome | None:
    return _load(layout.training_outcome_path(run), TrainingOutcome)


def write_manifest(run: Path, manifest: dict[str, Any]) -> Path:
    return storage.write_json_atomic(layout.manifest_path(run), manifest)


def read_manifest_data(run: Path) -> dict[str, Any] | None:
    """The manifest as its JSON object (:func:`pipelines.training.manifest.load_manifest` validates it)."""
    return _load(layout.manifest_path(run))


def write_mlflow_run_id(run: Path, run_id: str) -> Path:
    return storage.write_text_atomic(layout.mlflow_run_file(run), run_id + "\n")


def read_mlflow_run_id(run: Path) -> str | None:
    try:
        return layout.mlflow_run_file(run).read_text().strip() or None
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------- evaluation


class EvaluationResult(Record):
    line: str | None = None
    training_run: str | None = None
    run_dir: str | None = None
    mlflow_run_id: str | None = None
    blessing: str | None = None  # BLESSED / NOT_BLESSED / FORCED
    why: str | None = None
    force_bless_reason: str | None = None
    pushed: bool | None = None
    serving: dict[str, Any] | None = None  # {"version", "path", "base"} when pushed
    overall: dict[str, float | None] = {}
    registry: dict[str, Any] | None = None
    reused: bool | None = None

    @property
    def serving_version(self) -> int | None:
        version = (self.serving or {}).get("version")
        return int(version) if version is not None else None


def write_evaluation_result(run: Path, result: dict[str, Any]) -> Path:
    return storage.write_json_atomic(layout.evaluation_result_path(run), EvaluationResult.model_validate(result).to_json())


def read_evaluation_result(run: Path) -> EvaluationResult | None:
    return _load(layout.evaluation_result_path(run), EvaluationResult)


class ConfusionMatrix(Record):
    """``matrix[i][j]``: evaluation rows of class ``classes[i]`` predicted as ``classes[j]``
    (the argmax of the probabilities); rows the model gave no class are ``unpredicted``."""

    classes: list[int] = []
    class_names: list[str] | None = None
    matrix: list[list[int]] = []
    unpredicted: list[int] | None = None
    source: str | None = None


def write_confusion_matrix(run: Path, data: dict[str, Any]) -> Path:
    record = ConfusionMatrix.model_validate(data)
    n = len(record.classes)
    if len(record.matrix) != n or any(len(row) != n for row in record.matrix):
        raise RecordError(f"a confusion matrix of {n} classes must be {n} x {n}")
    return storage.write_json_atomic(layout.confusion_matrix_path(run), record.to_json())


def read_confusion_matrix(run: Path) -> ConfusionMatrix | None:
    return _load(layout.confusion_matrix_path(run), ConfusionMatrix)


class Misclassified(Record):
    """Evaluation images the candidate got wrong, most confident first: each entry has
    ``image_id``, ``label`` / ``label_name`` (true), ``predicted`` / ``predicted_name``,
    ``confidence`` (the predicted class's probability) and ``file`` (the PNG, in the folder)."""

    entries: list[dict[str, Any]] = []
    misclassified: int | None = None  # all of them, of which ``entries`` are the first
    rows: int | None = None


def write_misclassified(run: Path, data: dict[str, Any], images: list[bytes]) -> Path:
    """The folder (index and PNGs, ``images[i]`` for ``entries[i]``) replaces the old one whole."""
    record = Misclassified.model_validate(data)
    if len(images) != len(record.entries):
        raise RecordError(f"{len(record.entries)} entries but {len(images)} images")
    final = layout.misclassified_dir(run)
    staged = final.with_name(f".{final.name}.staging-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    entries = []
    for i, (entry, png) in enumerate(zip(record.entries, images, strict=True)):
        name = f"{i:03d}.png"
        (staged / name).write_bytes(png)
        entries.append({**entry, "file": name})
    storage.write_json_atomic(staged / layout.MISCLASSIFIED_INDEX, {**record.to_json(), "entries": entries})
    storage.fsync_tree(staged)
    storage.swap_directory(staged, final)
    return final


def read_misclassified(run: Path) -> Misclassified | None:
    """The index; an entry's image is ``layout.misclassified_dir(run) / entry["file"]``."""
    return _load(layout.misclassified_dir(run) / layout.MISCLASSIFIED_INDEX, Misclassified)


# ---------------------------------------------------------------- serving store


class PushInfo(Record):
    version: int | None = None
    pushed_at: str | None = None
    blessing: str | None = None
    line: str | None = None
    run_dir: str | None = None
    training_run: str | None = None
    mlflow_run_id: str | None = None


class RetiredInfo(Record):
    version: int
    retired_at: str | None = None
    reason: str | None = None
    now_serving: int | None = None


def read_push_info(version_dir: Path) -> PushInfo | None:
    return _load(layout.push_info_path(version_dir), PushInfo)


def read_retired_info(base: Path, version: int) -> RetiredInfo | None:
    return _load(layout.retired_info_path(base, version), RetiredInfo)


def write_model_info(saved_model: Path, info: dict[str, Any]) -> Path:
    """What the export writes beside the model (the run's features, label, metrics)."""
    return storage.write_json_atomic(layout.model_info_path(saved_model), info)


def read_model_info(saved_model: Path) -> dict[str, Any] | None:
    """``assets.extra/factory_model.json`` of an exported model (features, metrics)."""
    return _load(layout.model_info_path(saved_model))


class ServingVersion(Record):
    """One version in a line's serving store, live or retired."""

    version: int
    path: str
    retired: bool = False
    in_serving: bool = False
    push: PushInfo | None = None
    retirement: RetiredInfo | None = None

    @property
    def training_run(self) -> str | None:
        push = self.push
        if push is None:
            return None
        if push.training_run:
            return push.training_run
        return Path(push.run_dir).name if push.run_dir else None


def serving_versions(line: str, home: Path | None = None, errors: list[str] | None = None,
                     store: Path | None = None) -> list[ServingVersion]:
    """Every version of a line's serving store (``store``, else :func:`layout.serving_store`),
    newest first; the highest live one is in serving (TF Serving's rule). Unreadable push
    files are named in ``errors``."""
    base = layout.serving_base(line, home, store)
    live = layout.int_dirs(base)
    out = []
    for folder, retired, versions in ((base, False, live), (layout.retired_dir(base), True, layout.int_dirs(layout.retired_dir(base)))):
        for version in versions:
            path = folder / str(version)
            sv = ServingVersion(version=version, path=str(path), retired=retired,
                                in_serving=not retired and version == live[-1])
            try:
                sv.push = read_push_info(path)
                sv.retirement = read_retired_info(base, version) if retired else None
            except RecordError as err:
                _pass_over(err, errors)
            out.append(sv)
    return sorted(out, key=lambda s: s.version, reverse=True)


# ---------------------------------------------------------------- training runs, together


class TrainingRun(Record):
    """A run folder and what became of it: manifest, result, evaluation."""

    run: str
    path: str
    started: float  # the manifest's mtime (the run's first record)
    manifest: dict[str, Any] | None = None
    result: TrainingResult | None = None
    result_mtime: float | None = None
    mlflow_run_id: str | None = None
    evaluation: EvaluationResult | None = None
    evaluation_mtime: float | None = None
    has_report: bool = False
    unreadable: list[str] = []  # which of manifest, result, evaluation could not be read


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def read_training_run(folder: Path, errors: list[str] | None = None) -> TrainingRun:
    """One run folder and its records. With ``errors``, a record that cannot be read is
    named there and in the run's ``unreadable``; without, it raises :class:`RecordError`."""
    started = _mtime(layout.manifest_path(folder)) or _mtime(layout.training_result_path(folder)) or _mtime(folder)
    run = TrainingRun(run=folder.name, path=str(folder), started=started or 0.0,
                      mlflow_run_id=read_mlflow_run_id(folder),
                      has_report=layout.evaluation_report_path(folder).is_file())
    for attr, reader in (("manifest", read_manifest_data), ("result", read_training_result),
                         ("evaluation", read_evaluation_result)):
        try:
            setattr(run, attr, reader(folder))
        except RecordError as err:
            _pass_over(err, errors)
            run.unreadable.append(attr)
    run.result_mtime = _mtime(layout.training_result_path(folder)) if run.result else None
    run.evaluation_mtime = _mtime(layout.evaluation_result_path(folder)) if run.evaluation else None
    return run


def training_runs(line: str, home: Path | None = None, errors: list[str] | None = None) -> list[TrainingRun]:
    """Every training run of a line, newest first (see :func:`read_training_run`)."""
    runs = [read_training_run(folder, errors) for folder in layout.training_runs(line, home)]
    return sorted(runs, key=lambda r: r.started, reverse=True)


def latest_training_run(line: str, home: Path | None = None, since: float = 0.0) -> TrainingRun | None:
    """The run whose manifest was written last (at or after ``since``), read alone: what a
    progress display polls, without reading every run's records each time."""
    started = [(m, folder) for folder in layout.training_runs(line, home)
               if (m := _mtime(layout.manifest_path(folder))) is not None and m >= since]
    return read_training_run(max(started)[1]) if started else None


# ---------------------------------------------------------------- drift


class DriftHistoryError(RecordError):
    """The drift history is damaged (a record in the middle is not valid JSON)."""


class DriftRecord(Record):
    kind: str = "batch"  # "batch" (a scored batch) or "retrain" (a retrain claimed or finished)
    line: str | None = None
    batch_id: str | None = None
    scored_at: str | None = None
    recorded_at: str | None = None
    model_version: str | int | None = None
    drifted: bool | None = None
    drifted_features: list[Any] = []
    max_psi: dict[str, Any] | None = None
    auc: float | None = None
    report_path: str | None = None
    html_path: str | None = None
    episode_id: str | None = None
    episode_status: str | None = None
    event: str | None = None
    run_id: str | None = None


def append_drift_record_unlocked(line: str, record: dict[str, Any], home: Path | None = None) -> dict[str, Any]:
    """Append one record to the line's history; the caller holds :func:`drift_lock`."""
    storage.append_line(layout.drift_history_path(line, home), storage.dumps(record, indent=None))
    return record


def drift_lock(line: str, home: Path | None = None):
    """The line's drift lock (history appends and episode state)."""
    return storage.exclusive_lock(layout.drift_dir(line, home))


def append_drift_record(line: str, record: dict[str, Any], home: Path | None = None) -> dict[str, Any]:
    with drift_lock(line, home):
        return append_drift_record_unlocked(line, record, home)


def _cut_short(raw: str, err: Exception) -> bool:
    """A line that is the start of a JSON record whose writer died mid-line: the parser
    ran out of text (it may end in a ``}`` of an inner object), not into a wrong character."""
    text = raw.rstrip()
    return (text.startswith("{") and isinstance(err, json.JSONDecodeError) and err.pos >= len(text)) or (
        text.startswith("{") and not text.endswith("}")
    )


def read_drift_history(line: str, home: Path | None = None, kind: str | None = None,
                       skipped: list[str] | None = None) -> list[DriftRecord]:
    """The line's history, oldest first (``kind``: only ``"batch"`` or ``"retrain"``).

    A record cut short by a writer that died mid-append is skipped. Any other bad line
    raises :class:`DriftHistoryError`, or, with ``skipped``, is named there and passed
    over (what a view or an exporter wants: show the rest)."""
    path = layout.drift_history_path(line, home)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    records = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
            record = DriftRecord.model_validate(data)
        except (ValueError, ValidationError) as err:
            if i == len(lines) - 1 or _cut_short(raw, err):
                continue  # an append in progress, or one a crash cut short
            _pass_over(DriftHistoryError(f"{path}: line {i + 1} is not a JSON record: {err}"), skipped)
            continue
        if kind is None or record.kind == kind:
            records.append(record)
    return records


def read_episodes(line: str, home: Path | None = None) -> dict[str, Any] | None:
    return _load(layout.drift_episodes_path(line, home))


def write_episodes(line: str, state: dict[str, Any], home: Path | None = None) -> Path:
    """The caller holds :func:`drift_lock`."""
    return storage.write_json_atomic(layout.drift_episodes_path(line, home), state, indent=1)


def write_drift_report(path: Path, report: dict[str, Any]) -> Path:
    return storage.write_json_atomic(path, report, indent=1)


def read_drift_report(record: DriftRecord, line: str, home: Path | None = None) -> dict[str, Any] | None:
    """The JSON report a history record names: at its recorded path when that is inside
    the line's reports folder, else by name in this home's reports folder (a home moved
    to another machine)."""
    if not record.report_path:
        return None
    folder = layout.drift_reports_dir(line, home)
    recorded = Path(record.report_path)
    path = recorded if recorded.parent.resolve() == folder.resolve() else folder / recorded.name
    return _load(path)


def drift_report_html(record: DriftRecord, line: str, home: Path | None = None) -> Path | None:
    """The HTML report a history record names, when it exists in the line's reports folder."""
    if not record.html_path:
        return None
    path = layout.drift_reports_dir(line, home) / Path(record.html_path).name
    return path if path.suffix == ".html" and path.is_file() else None


# ---------------------------------------------------------------- hyperparameter search


class TunedParams(Record):
    """A line's tuned settings: the best trial of a study, with where it came from. The
    training stage applies ``params`` over the spec's ``training:`` (the run's own params
    still override), and records this provenance in the run's manifest."""

    line: str
    params: dict[str, Any]
    study: str
    trial: int
    metric: str  # the validation metric the study maximised (val_auc, val_accuracy)
    value: float
    batches: list[str] = []  # the study's data window
    space: str | None = None
    spec_version: int | None = None
    mlflow_run_id: str | None = None  # the best trial's nested run
    at: str | None = None


def write_tuned_params(line: str, record: dict[str, Any], home: Path | None = None) -> Path:
    return storage.write_json_atomic(layout.tuned_params_path(line, home),
                                     TunedParams.model_validate(record).to_json())


def read_tuned_params(line: str, home: Path | None = None) -> TunedParams | None:
    return _load(layout.tuned_params_path(line, home), TunedParams)


class TrialRecord(Record):
    """One trial of a study as the study's record keeps it."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None = None
    params: dict[str, Any] = {}
    intermediate: dict[str, float] = {}  # epoch (as text) -> validation metric
    started: str | None = None
    completed: str | None = None
    seconds: float | None = None
    enqueued: bool | None = None  # a warm start or the current settings, not sampled
    mlflow_run_id: str | None = None
    error: str | None = None


class StudyRecord(Record):
    """One tuning study: its settings, every trial, the best one and the settings'
    importances (written by the tuning DAG; the Model Factory view reads it)."""

    study: str
    line: str
    metric: str
    direction: str = "maximize"
    state: str = "running"  # running, finished
    space: str | None = None
    sampler: str | None = None
    pruner: str | None = None
    trials_requested: int | None = None
    parallel: int | None = None
    batches: list[str] = []
    started: str | None = None
    finished: str | None = None
    warm_start_from: str | None = None
    mlflow_run_id: str | None = None  # the study's parent run
    trials: list[TrialRecord] = []
    best: dict[str, Any] | None = None  # {"trial", "value", "params"}
    importances: dict[str, float] = {}


def write_study_record(line: str, study: str, record: dict[str, Any], home: Path | None = None) -> Path:
    path = layout.study_record_path(layout.study_dir(line, study, home))
    return storage.write_json_atomic(path, StudyRecord.model_validate(record).to_json())


def read_study_record(line: str, study: str, home: Path | None = None) -> StudyRecord | None:
    return _load(layout.study_record_path(layout.study_dir(line, study, home)), StudyRecord)


def read_study_records(line: str, home: Path | None = None, errors: list[str] | None = None) -> list[StudyRecord]:
    """The line's studies, oldest first (by start)."""
    root = layout.studies_dir(line, home)
    folders = sorted(root.iterdir()) if root.is_dir() else []
    return _load_each([layout.study_record_path(f) for f in folders], StudyRecord, errors, "started")


# ---------------------------------------------------------------- labelling


class LabelErrorRow(Record):
    """A train row whose given label looks wrong: its batch and key, the label it was given,
    the label the out-of-fold model suggests, and the given label's quality score (0 to 1,
    lower is more suspect)."""

    batch_id: str | None = None
    key: dict[str, Any] = {}
    given: str
    suggested: str
    score: float


class LabelErrorReport(Record):
    """Label errors found in a training run's train split (:mod:`pipelines.labelling.errors`).
    ``found``: suspected rows; ``excluded``: those left out of training (mode ``exclude``);
    ``by_batch``: suspected rows per batch; ``rows``: the worst ones first, at most
    :data:`MAX_LABEL_ERROR_ROWS` listed."""

    line: str
    run_id: str | None = None
    mode: str
    method: str | None = None
    model: str | None = None
    folds: int | None = None
    rows_checked: int = 0
    found: int = 0
    excluded: int = 0
    at: str | None = None
    seconds: float | None = None  # the detection's wall time (out-of-fold fits and cleanlab)
    by_batch: dict[str, int] = {}
    rows: list[LabelErrorRow] = []
    # the suspected rows' index labels in the frame checked (all of them, not only those
    # listed): what mode exclude drops; never stored
    _suspects: list[Any] = PrivateAttr(default_factory=list)

    @property
    def suspects(self) -> list[Any]:
        return self._suspects


MAX_LABEL_ERROR_ROWS = 1000


def write_label_errors(path: Path, report: LabelErrorReport | dict[str, Any]) -> Path:
    """A label-error report at ``path`` (:func:`~pipelines.catalog.layout.label_errors_path`
    of a run, or the line's :func:`~pipelines.catalog.layout.latest_label_errors_path`)."""
    record = report if isinstance(report, LabelErrorReport) else LabelErrorReport.model_validate(report)
    return storage.write_json_atomic(path, record.to_json(), indent=1)


def read_label_errors(run: Path) -> LabelErrorReport | None:
    """A training run's label-error report (None when the run checked no labels)."""
    return _load(layout.label_errors_path(run), LabelErrorReport)


def read_latest_label_errors(line: str, home: Path | None = None) -> LabelErrorReport | None:
    """The label-error report of the line's latest prepared training run."""
    return _load(layout.latest_label_errors_path(line, home), LabelErrorReport)

# ---------------------------------------------------------------- automated labelling


class ClassThreshold(Record):
    """One predicted class: the lowest confidence whose accepted held-out rows reach the
    target precision on its lower bound (None: the class is never auto-accepted)."""

    threshold: float | None = None
    support: int = 0  # held-out rows predicted as this class
    precision: float | None = None  # of the accepted held-out rows
    precision_lower: float | None = None  # its one-sided Clopper-Pearson lower bound
    accepted_share: float = 0.0  # of the class's held-out rows, the share accepted
    reason: str | None = None


class LabelThresholds(Record):
    line: str
    model_version: str | None = None
    target_precision: float
    confidence_level: float
    classes: dict[str, ClassThreshold] = {}
    eval_rows: int | None = None
    run_id: str | None = None  # the training run whose held-out split chose them
    at: str | None = None


def write_label_thresholds(line: str, record: dict[str, Any], home: Path | None = None) -> Path:
    return storage.write_json_atomic(layout.label_thresholds_path(line, home),
                                     LabelThresholds.model_validate(record).to_json())


def read_label_thresholds(line: str, home: Path | None = None) -> LabelThresholds | None:
    return _load(layout.label_thresholds_path(line, home), LabelThresholds)


class LabellingRun(Record):
    line: str
    run_id: str
    source_batches: list[str] = []
    model_version: str | None = None
    rows_unlabelled: int = 0
    auto_labelled: int = 0
    queued: int = 0
    label_batch: str | None = None
    queue: str | None = None
    by_class: dict[str, Any] = {}
    at: str | None = None


def write_labelling_run(line: str, record: dict[str, Any], home: Path | None = None) -> Path:
    record = LabellingRun.model_validate(record)
    return storage.write_json_atomic(layout.labelling_run_path(line, record.run_id, home), record.to_json())


def read_labelling_run(line: str, run_id: str, home: Path | None = None) -> LabellingRun | None:
    return _load(layout.labelling_run_path(line, run_id, home), LabellingRun)


def read_labelling_runs(line: str, home: Path | None = None, errors: list[str] | None = None) -> list[LabellingRun]:
    """The line's labelling runs, oldest first."""
    root = layout.labelling_runs_dir(line, home)
    return _load_each(sorted(root.glob("*.json")) if root.is_dir() else [], LabellingRun, errors, "at")


class ReviewQueue(Record):
    line: str
    queue_id: str
    rows: int = 0
    order: str = "drifted region first, then least confident first"
    created_at: str | None = None
    source_batches: list[str] = []
    model_version: str | None = None
    keys: list[dict[str, Any]] = []  # the key of every queued row, in queue order
    # one entry per import: {"import_id", "labels", "label_batch", "label_batches", "at"}, the queue's own rows'
    imported: list[dict[str, Any]] = []


def write_review_queue(queue: Path, record: dict[str, Any]) -> Path:
    return storage.write_json_atomic(layout.review_queue_record_path(queue), ReviewQueue.model_validate(record).to_json())


def read_review_queue(queue: Path) -> ReviewQueue | None:
    return _load(layout.review_queue_record_path(queue), ReviewQueue)


def read_review_queues(line: str, home: Path | None = None, errors: list[str] | None = None) -> list[ReviewQueue]:
    """The line's review queues, oldest first."""
    root = layout.review_queues_dir(line, home)
    folders = [f for f in sorted(root.iterdir()) if f.is_dir() and not f.name.startswith(".")] if root.is_dir() else []
    return _load_each([layout.review_queue_record_path(f) for f in folders], ReviewQueue, errors, "created_at")


class LabelImport(Record):
    """What one import of a Label Studio export took: its file, tasks, labels, what was
    skipped and why, and the label batch it landed."""

    line: str
    import_id: str
    file: str
    sha256: str | None = None
    tasks: int = 0
    labels: int = 0
    skipped: list[dict[str, Any]] = []  # {"task", "reason"}
    skipped_by_reason: dict[str, int] = {}
    label_batch: str | None = None
    queues: list[str] = []
    at: str | None = None


def write_label_import(line: str, record: dict[str, Any], home: Path | None = None) -> Path:
    record = LabelImport.model_validate(record)
    return storage.write_json_atomic(layout.label_import_path(line, record.import_id, home), record.to_json())


def read_label_import(line: str, import_id: str, home: Path | None = None) -> LabelImport | None:
    return _load(layout.label_import_path(line, import_id, home), LabelImport)


def read_label_imports(line: str, home: Path | None = None, errors: list[str] | None = None) -> list[LabelImport]:
    """The line's imports of reviewed labels, oldest first."""
    root = layout.label_imports_dir(line, home)
    return _load_each(sorted(root.glob("*.json")) if root.is_dir() else [], LabelImport, errors, "at")

