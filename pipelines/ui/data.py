"""What the Model Factory view shows: the page's data as plain dataclasses.

:mod:`pipelines.ui.gather` fills them from the factory's records (through
:mod:`pipelines.catalog`); :mod:`pipelines.ui.render` and :mod:`pipelines.ui.charts` draw
them; ``/api/overview`` serves them as JSON (:meth:`Overview.to_dict`).

What only Airflow or MLflow know comes through two small interfaces, so neither is
needed here: :class:`AirflowRuns` (the DAG run behind a batch or a training run) and
:class:`MlflowInfo` (experiment id, registry versions and aliases); see
:mod:`pipelines.ui.lookups` for the real ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from pipelines.catalog.layout import run_folder_name

__all__ = [
    "AirflowRuns", "Batch", "ConfusionMatrix", "DriftBatch", "DriftPoint", "DriftSeries", "Evaluation",
    "GalleryImage", "LineView", "MlflowInfo", "MlflowLine", "Model", "Overview", "RunRef", "ServingVersion",
    "Study", "Trial", "TunedSettings", "Tuning", "Validation", "LabelErrors", "SuspectedLabel", "ClassThreshold",
    "LabelThresholds", "LabellingRun", "ReviewQueue", "LabelImport", "Labelling", "mlflow_run_url", "run_folder_name",
]

MAX_BATCHES = 25
MAX_MODELS = 20
MAX_DRIFT_POINTS = 60
MAX_QUARANTINE_IMAGES = 24  # quarantined images shown per image line, from its latest batches
MAX_GALLERY = 48  # images in an evaluation's gallery
MAX_LIVE_WINDOWS = 8  # the latest scored windows of live traffic shown per line
MAX_STUDIES = 4  # a line's latest tuning studies shown
MAX_IMPORTANCES = 12  # settings in a study's importance list
MAX_SUSPECTED_LABELS = 20  # the worst suspected label errors shown per line
MAX_LABELLING_RUNS = 8  # a labelling line's latest labelling runs shown
MAX_REVIEW_QUEUES = 8  # its latest review queues shown
MAX_LABEL_IMPORTS = 8  # its latest imports of reviewed labels shown
SHADES = 10  # steps of a confusion matrix cell's colour
DRIFT_METRIC = "psi"
SCORE_FEATURE = "__score__"  # the model's score distribution (pipelines.specs.drift)
MAX_FEATURE = "__max__"  # a batch whose report is gone: only the history's largest PSI


# -- the view's data --------------------------------------------------------------------


@dataclass(frozen=True)
class RunRef:
    """An Airflow DAG run; ``path`` is its page in the Airflow UI, relative to the UI's base."""

    dag_id: str
    run_id: str
    state: str | None = None

    @property
    def path(self) -> str:
        return f"dags/{quote(self.dag_id, safe='')}/runs/{quote(self.run_id, safe='')}"


@dataclass
class Validation:
    success: bool | None
    evaluated: int | None = None
    successful: int | None = None
    failed: list[str] = field(default_factory=list)
    docs: str | None = None  # the Data Docs page, relative to the Data Docs root (a URL path)
    docs_file: str | None = None  # the path the ledger recorded


@dataclass
class Batch:
    batch_id: str
    status: str | None
    landed_at: str | None
    updated_at: str | None
    rows_in: int | None = None
    rows_clean: int | None = None
    rows_quarantined: int | None = None
    duplicates_removed: int | None = None
    rows_unlabelled: int | None = None  # a labelling line's clean rows without a label (None: not counted)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    validation: Validation | None = None
    error: str | None = None
    failed_stage: str | None = None
    airflow: RunRef | None = None


@dataclass
class Model:
    """One training run and what became of its model."""

    run: str  # the run folder's name
    trained_at: str | None = None
    batches: list[str] = field(default_factory=list)
    rows_train: int | None = None
    val_auc: float | None = None
    epochs_run: int | None = None
    samples_per_s: float | None = None
    mlflow_run_id: str | None = None
    has_result: bool = False
    evaluated: bool = False
    blessing: str | None = None  # BLESSED / NOT BLESSED / FORCED
    blessing_why: str | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)
    eval_report: str | None = None  # a link to the gate's report.html, relative to the view
    serving_version: int | None = None
    in_serving: bool = False
    retired: bool = False
    registry_version: str | None = None
    aliases: list[str] = field(default_factory=list)
    airflow: RunRef | None = None


@dataclass
class ServingVersion:
    version: int
    pushed_at: str | None
    blessing: str | None
    run: str | None
    retired: bool = False
    retired_reason: str | None = None
    in_serving: bool = False


@dataclass
class DriftPoint:
    batch_id: str | None
    scored_at: str | None
    value: float


@dataclass
class DriftSeries:
    feature: str
    points: list[DriftPoint]
    threshold: float | None

    @property
    def label(self) -> str:
        return {SCORE_FEATURE: "model score", MAX_FEATURE: "largest feature PSI"}.get(self.feature, self.feature)

    @property
    def peak(self) -> float:
        return max((p.value for p in self.points), default=0.0)


@dataclass
class DriftBatch:
    batch_id: str | None
    scored_at: str | None
    model_version: str | None
    drifted: bool
    drifted_features: list[str]
    max_psi: float | None
    max_psi_feature: str | None
    episode_status: str | None = None
    report: str | None = None  # a link to the drift report's HTML, relative to the view


@dataclass
class LiveWindow:
    """A scored window of live traffic (a ``source: "live"`` drift history record)."""

    batch_id: str | None
    window_start: str | None
    model_version: str | None
    drifted: bool
    drifted_features: list[str]
    labelled: bool = False
    auc: float | None = None
    report: str | None = None


@dataclass
class LiveServing:
    """What the model server did for a line over the last hour (its prediction log) and
    the verdicts of the latest live windows."""

    version: int | None  # the version in service (the highest live one)
    requests: int = 0  # in the last hour
    instances: int = 0
    per_minute: float = 0.0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    windows: list[LiveWindow] = field(default_factory=list)


@dataclass
class GalleryImage:
    """One image of a gallery: ``src`` is a ``data:`` URI of the image re-encoded for display
    (:mod:`pipelines.ui.images`), or None with ``problem`` saying why it cannot be shown."""

    image_id: str | None
    caption: str
    src: str | None = None
    problem: str | None = None
    details: list[str] = field(default_factory=list)  # e.g. a quarantined image's reasons
    batch_id: str | None = None


@dataclass
class ConfusionMatrix:
    """Counts of true class (rows) by predicted class (columns), with display names."""

    classes: list[str]
    matrix: list[list[int]]

    @property
    def row_totals(self) -> list[int]:
        return [sum(row) for row in self.matrix]

    @property
    def column_totals(self) -> list[int]:
        return [sum(col) for col in zip(*self.matrix, strict=True)] if self.matrix else []

    @property
    def total(self) -> int:
        return sum(self.row_totals)

    @property
    def correct(self) -> int:
        return sum(self.matrix[i][i] for i in range(len(self.matrix)))

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None

    def share(self, i: int, j: int) -> float:
        """A cell's share of its row (of the true class's examples)."""
        total = sum(self.matrix[i])
        return self.matrix[i][j] / total if total else 0.0

    def shade(self, i: int, j: int) -> int:
        """The cell's colour step, 0..:data:`SHADES`, from its row share (row-normalised)."""
        return round(self.share(i, j) * SHADES)

    def recall(self, i: int) -> float | None:
        total = sum(self.matrix[i])
        return self.matrix[i][i] / total if total else None


@dataclass
class Evaluation:
    """What an evaluation of a multi-class model shows beyond its metrics."""

    run: str | None = None  # the training run evaluated
    confusion: ConfusionMatrix | None = None
    gallery: list[GalleryImage] = field(default_factory=list)


@dataclass
class Trial:
    """One trial of a study as its chart plots it."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING (Optuna's states)
    value: float | None = None  # a complete trial's value
    last_intermediate: float | None = None  # the last epoch's validation value (where a pruned trial stopped)
    last_epoch: int | None = None


@dataclass
class Study:
    """A tuning study (its :class:`~pipelines.catalog.records.StudyRecord`) as the page shows it."""

    study: str
    state: str
    metric: str
    direction: str = "maximize"
    space: str | None = None
    sampler: str | None = None
    pruner: str | None = None
    trials_requested: int | None = None
    parallel: int | None = None
    batches: list[str] = field(default_factory=list)
    started: str | None = None
    finished: str | None = None
    warm_start_from: str | None = None
    mlflow_run_id: str | None = None  # the study's parent run
    counts: dict[str, int] = field(default_factory=dict)  # complete, pruned, failed, running (+ waiting)
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    importances: list[tuple[str, float]] = field(default_factory=list)  # largest first
    trials: list[Trial] = field(default_factory=list)  # by number

    @property
    def trial_total(self) -> int:
        return sum(self.counts.values())


@dataclass
class TunedSettings:
    """The line's tuned settings (its :class:`~pipelines.catalog.records.TunedParams`) and
    whether its next training uses them."""

    params: dict[str, Any]
    study: str
    trial: int
    metric: str
    value: float | None
    batches: list[str] = field(default_factory=list)  # the study's data window
    space: str | None = None
    at: str | None = None
    mlflow_run_id: str | None = None  # the best trial's nested run
    used: bool = False  # the spec's ``tuning.use_tuned`` and the settings still fit the spec
    why_not: str | None = None


@dataclass
class Tuning:
    """A line's hyperparameter search: its latest studies, newest first, and its tuned settings."""

    studies: list[Study] = field(default_factory=list)
    study_total: int = 0
    tuned: TunedSettings | None = None
    tune_dag: str = ""


@dataclass
class SuspectedLabel:
    """A train row whose given label looks wrong (one row of a label-error report)."""

    batch_id: str | None
    key: dict[str, Any]
    given: str
    suggested: str
    score: float | None  # the given label's quality, 0 to 1: lower is more suspect


@dataclass
class LabelErrors:
    """The line's latest label-error report (:class:`~pipelines.catalog.records.LabelErrorReport`):
    what the latest prepared training found in its train split."""

    mode: str
    run_id: str | None = None
    at: str | None = None
    model: str | None = None
    folds: int | None = None
    rows_checked: int = 0
    found: int = 0
    excluded: int = 0
    by_batch: list[tuple[str, int]] = field(default_factory=list)  # most suspects first
    rows: list[SuspectedLabel] = field(default_factory=list)  # the worst first
    rows_listed: int = 0  # rows the report lists, of which ``rows`` are the first


@dataclass
class ClassThreshold:
    """One predicted class of the thresholds in use: its confidence threshold (None: never
    auto-accepted, ``reason`` says why) and what it was chosen on."""

    value: str  # the class as the label's value
    name: str  # its display name
    threshold: float | None = None
    support: int = 0  # held-out rows predicted as this class
    precision: float | None = None  # of the accepted held-out rows
    precision_lower: float | None = None  # its one-sided lower bound
    accepted_share: float = 0.0  # of the class's held-out rows
    reason: str | None = None


@dataclass
class LabelThresholds:
    """The line's thresholds (:class:`~pipelines.catalog.records.LabelThresholds`): chosen for
    one model version on its training run's held-out split."""

    model_version: str | None
    target_precision: float
    confidence_level: float
    classes: list[ClassThreshold] = field(default_factory=list)
    eval_rows: int | None = None
    run_id: str | None = None
    at: str | None = None
    stale: bool = False  # another version is in serving: the next labelling run chooses them again


@dataclass
class LabellingRun:
    """One run of the label DAG's pre-labelling (:class:`~pipelines.catalog.records.LabellingRun`)."""

    run_id: str
    at: str | None = None
    state: str | None = None  # done, or landing (interrupted; a retry finishes it)
    model_version: str | None = None
    source_batches: list[str] = field(default_factory=list)
    rows_unlabelled: int = 0
    auto_labelled: int = 0
    queued: int = 0
    label_batches: list[str] = field(default_factory=list)
    queue: str | None = None


@dataclass
class ReviewQueue:
    """A review queue (:class:`~pipelines.catalog.records.ReviewQueue`) and the files a
    reviewer imports into Label Studio; ``imports`` empty: still waiting for its review."""

    queue_id: str
    rows: int = 0
    drifted_rows: int | None = None
    created_at: str | None = None
    model_version: str | None = None
    source_batches: list[str] = field(default_factory=list)
    tasks_file: str | None = None  # tasks.json (Label Studio's import format); None when it is gone
    config_file: str | None = None  # label_config.xml (the labelling interface); None when it is gone
    imports: list[dict[str, Any]] = field(default_factory=list)  # {"import_id", "labels", "label_batch", "at"}

    @property
    def imported_labels(self) -> int:
        return sum(int(i.get("labels") or 0) for i in self.imports)


@dataclass
class LabelImport:
    """One import of a Label Studio export (:class:`~pipelines.catalog.records.LabelImport`)."""

    import_id: str
    file: str
    at: str | None = None
    state: str | None = None
    tasks: int = 0
    labels: int = 0
    skipped: int = 0
    skipped_by_reason: list[tuple[str, int]] = field(default_factory=list)  # most first
    label_batches: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)


@dataclass
class Labelling:
    """A labelling line's automated labelling: the thresholds in use, the latest labelling
    runs, review queues and imports, newest first."""

    label_dag: str
    thresholds: LabelThresholds | None = None
    runs: list[LabellingRun] = field(default_factory=list)
    run_total: int = 0
    queues: list[ReviewQueue] = field(default_factory=list)
    queue_total: int = 0
    imports: list[LabelImport] = field(default_factory=list)
    import_total: int = 0


@dataclass
class LineView:
    name: str
    description: str = ""
    owner: str = ""
    ingest_dag: str = ""
    train_dag: str = ""
    batches: list[Batch] = field(default_factory=list)
    batch_total: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    models: list[Model] = field(default_factory=list)
    model_total: int = 0
    serving: list[ServingVersion] = field(default_factory=list)
    serving_version: int | None = None
    champion: str | None = None  # the registry version with the "champion" alias
    mlflow_experiment_id: str | None = None
    drift_series: list[DriftSeries] = field(default_factory=list)
    drift_batches: list[DriftBatch] = field(default_factory=list)
    drift_metric: str = DRIFT_METRIC
    modality: str = "tabular"  # the spec's modality: which of the parts below it has
    quarantine_images: list[GalleryImage] = field(default_factory=list)  # image lines
    evaluation: Evaluation | None = None
    live: LiveServing | None = None  # None: nothing logged and no live window scored
    tuning: Tuning | None = None  # None: no study and no tuned settings
    label_errors: LabelErrors | None = None  # None: no training has checked the line's labels
    labelling: Labelling | None = None  # None: no labelling section and no labelling record
    notes: list[str] = field(default_factory=list)


@dataclass
class Overview:
    generated_at: str
    home: str
    lines: list[LineView]
    mlflow_ui: str | None = None
    docs_index: str | None = None  # the Data Docs site's index page, relative to the Data Docs root

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self, name: str) -> LineView:
        for lv in self.lines:
            if lv.name == name:
                return lv
        raise KeyError(name)


# -- what Airflow and MLflow know (see pipelines.ui.lookups) -------------------------------


class AirflowRuns(Protocol):
    def batch_runs(self, line: str) -> dict[str, RunRef]:
        """The latest ingest run that processed each batch: batch id -> run."""

    def training_runs(self, line: str) -> dict[str, RunRef]:
        """Training runs by their run folder's name (:func:`run_folder_name`) -> run."""


@dataclass
class MlflowLine:
    experiment_id: str | None = None
    versions: list[dict[str, Any]] = field(default_factory=list)  # {version, run_id, aliases, status}
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version
    error: str | None = None


class MlflowInfo(Protocol):
    def line(self, line: str) -> MlflowLine: ...


def mlflow_run_url(base: str | None, run_id: str | None, experiment_id: str | None) -> str | None:
    """A run's page in the MLflow UI (``FACTORY_MLFLOW_UI``), or None without a UI."""
    if not base or not run_id:
        return None
    if experiment_id:
        return f"{base}/#/experiments/{quote(experiment_id, safe='')}/runs/{quote(run_id, safe='')}"
    return f"{base}/#/runs/{quote(run_id, safe='')}"  # MLflow's UI resolves the experiment
