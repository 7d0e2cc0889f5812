"""Where every record and dataset of the factory lives: the only module that builds these paths.

Everything is under ``FACTORY_HOME`` (:func:`pipelines.config.factory_home`) unless a
variable moves it (shared storage at scale):

| what | path | variable |
|---|---|---|
| landed batches | ``<home>/landing/<line>/<batch>.<csv|parquet>`` | |
| cleaned batch | ``<home>/cleaned/<line>/batch=<id>/``: ``clean/`` (rows), ``quarantine/`` (rows set aside); attempts staged in ``.staging/batch=<id>/`` | |
| batch ledger | ``<home>/state/<line>/<batch>.json`` | |
| Great Expectations project | ``<home>/gx/`` (results, Data Docs) | |
| training runs | ``<home>/training/<line>/<run>/`` (:func:`run_folder_name`): ``manifest.json``, ``result.json``, ``mlflow_run_id``, ``model/`` | |
| evaluations | ``<run>/evaluation/``: ``result.json``, ``report.html``; multi-class lines also ``confusion_matrix.json``, ``misclassified/`` (``index.json`` + PNGs) | |
| TFX pipeline and ML Metadata | ``<home>/tfx/<line>/root``, ``metadata.db`` | ``FACTORY_TFX_ROOT``, ``FACTORY_MLMD_URI`` |
| serving store | ``<store>/<line>/<version>/`` (TF Serving's layout), ``.retired/`` | ``FACTORY_SERVING_STORE`` |
| drift | ``<home>/drift/<line>/``: ``history.jsonl``, ``episodes.json``, ``reports/`` | |
| prediction log | ``<home>/predictions/<line>/``: ``wal/`` (segments being written, JSON lines), ``log/date=<day>/`` (Parquet), ``labels/`` | ``FACTORY_PREDICTION_LOG`` |
| model server | ``<home>/run/model-server.json`` (its record) | |
| labelling | ``<home>/labelling/<line>/``: ``thresholds.json``, ``runs/<run>.json``, ``queue/<queue>/`` (``tasks.json``, ``label_config.xml``, ``queue.json``), ``imports/<import>.json``, ``label_errors.json`` (the latest training's label-error report; each run keeps its own as ``<run>/label_errors.json``) | |

Light: no import beyond the standard library and :mod:`pipelines.config`, so both
environments and DAG files may import it.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import factory_home

# file names inside the folders above
LOCK = ".lock"
TRAINING_MANIFEST = "manifest.json"
LABEL_ERRORS = "label_errors.json"
TRAINING_RESULT = "result.json"
TRAINING_OUTCOME = "outcome.json"
TRAINING_MLFLOW_RUN = "mlflow_run_id"
TRAINING_MODEL = "model"  # <run>/model/Format-Serving: the exported SavedModel
EXPORT_DIR = "Format-Serving"  # the folder name TFX expects under a model root
MODEL_INFO = "factory_model.json"  # <SavedModel>/assets.extra/
EVALUATION_DIR = "evaluation"
EVALUATION_RESULT = "result.json"
EVALUATION_REPORT = "report.html"
CONFUSION_MATRIX = "confusion_matrix.json"
MISCLASSIFIED = "misclassified"  # <run>/evaluation/: index.json and the images it names
MISCLASSIFIED_INDEX = "index.json"
PUSH_INFO = "factory_push.json"  # <store>/<line>/<version>/assets.extra/
RETIRED = ".retired"
INCOMING_PREFIX = ".incoming-"
DRIFT_HISTORY = "history.jsonl"
DRIFT_EPISODES = "episodes.json"
DRIFT_REPORTS = "reports"
DRIFT_PROFILE = "drift_profile.json"
GATE_LOCK = "gate.lock"
# Held by the live process tree working on a run folder (training, evaluation).
RUN_LOCK = "run.lock"
CLEAN_ROWS = "clean"  # <cleaned batch>/: the rows that passed
QUARANTINE_ROWS = "quarantine"  # <cleaned batch>/: the rows set aside, with reasons
STAGING = ".staging"  # cleaned/<line>/: hidden from readers (Spark and Arrow skip '.' names)
LANDING_LOCK = "landing.lock"  # <home>/state/<line>/: one drop at a time checks and lands


# A batch id: the name of its files and folders. Written for JSON Schema (the ingest DAG's
# ``batch_id`` param) as much as for Python: ``$(?!\n)`` is the end of the text in both,
# where Python's ``$`` alone also matches before a final newline ("2016\n").
BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$(?!\n)"


def is_batch_id(batch_id: object) -> bool:
    """Whether ``batch_id`` is a whole, valid batch id (:data:`BATCH_ID_PATTERN`)."""
    return isinstance(batch_id, str) and re.fullmatch(BATCH_ID_PATTERN, batch_id) is not None


def _home(home: Path | None) -> Path:
    return Path(home) if home is not None else factory_home()


@dataclass(frozen=True)
class LinePaths:
    """The data folders of one product line under a factory home."""

    home: Path
    line: str

    @property
    def landing(self) -> Path:
        return self.home / "landing" / self.line

    @property
    def cleaned(self) -> Path:
        """The cleaning job's output, one folder per batch (:meth:`cleaned_batch`)."""
        return self.home / "cleaned" / self.line

    @property
    def state(self) -> Path:
        """The batch ledger's folder."""
        return self.home / "state" / self.line

    def cleaned_batch(self, batch_id: str) -> Path:
        """A batch's cleaning output: its clean rows and its quarantine, in one folder that
        is put in place whole, so a reader never finds one without the other or neither."""
        return self.cleaned / f"batch={batch_id}"

    def clean_batch(self, batch_id: str) -> Path:
        return self.cleaned_batch(batch_id) / CLEAN_ROWS

    def quarantine_batch(self, batch_id: str) -> Path:
        return self.cleaned_batch(batch_id) / QUARANTINE_ROWS

    def cleaning_staging(self, batch_id: str) -> Path:
        """Where attempts at cleaning a batch stage their output (one folder each), beside
        the batch's cleaning lock."""
        return self.cleaned / STAGING / f"batch={batch_id}"

    def ledger_record(self, batch_id: str) -> Path:
        return self.state / f"{batch_id}.json"


def line_paths(line: str, home: Path | None = None) -> LinePaths:
    return LinePaths(_home(home), line)


# ---------------------------------------------------------------- validation


def gx_root(home: Path | None = None) -> Path:
    """The Great Expectations project (stores and Data Docs)."""
    return _home(home) / "gx"


def data_docs_root(home: Path | None = None) -> Path:
    """Where Great Expectations renders its Data Docs. A GX file context made with
    ``project_root_dir=<home>/gx`` keeps its project in ``<home>/gx/gx/``."""
    base = gx_root(home)
    candidates = (base / "gx" / "uncommitted" / "data_docs", base / "uncommitted" / "data_docs")
    return next((c for c in candidates if c.is_dir()), candidates[0])


def data_docs_index(home: Path | None = None) -> Path:
    """The index page of the Data Docs site validation builds (``local_site``:
    :data:`pipelines.ingest.validation.DOCS_SITE`)."""
    return data_docs_root(home) / "local_site" / "index.html"


# ---------------------------------------------------------------- training


def training_root(line: str, home: Path | None = None) -> Path:
    """Where a line's training runs live: one folder per run (data, checkpoints, model)."""
    return _home(home) / "training" / line


_SAFE_RUN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_HASHED_RUN = re.compile(r"[A-Za-z0-9_.-]+--[0-9a-f]{12}")
_STEM_MAX = 200  # a folder name stays well under the 255 bytes file systems allow


def run_folder_name(run_id: str) -> str:
    """The folder of an Airflow run id: one folder per run id, and never one for two.

    A run id that is already a safe, short folder name (and does not end like the names
    below) is its own folder name, so every folder that exists keeps its name. Any
    other id gets a readable stem (what is not ``[A-Za-z0-9_.-]`` becomes ``_``) and
    ``--`` plus 12 hex digits of the SHA-256 of the exact id, e.g.
    ``manual__2026-11-29T10_00_00_00_00--3f9a1c0b2d4e``. Ids differing only in ``:``
    or ``+`` thus get different folders; a kept id never ends like a hashed one.
    """
    if _SAFE_RUN.fullmatch(run_id) and not run_id.endswith(".") and len(run_id) <= _STEM_MAX \
            and not _HASHED_RUN.fullmatch(run_id):
        return run_id
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("._")[:_STEM_MAX].rstrip(".") or "run"
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{stem}--{digest}"


def is_run_folder_name(name: str) -> bool:
    """Whether ``name`` is a name :func:`run_folder_name` gives (kept or hashed)."""
    return run_folder_name(name) == name or bool(
        _HASHED_RUN.fullmatch(name) and _SAFE_RUN.fullmatch(name) and len(name) <= _STEM_MAX + 14
    )


def legacy_run_folder_name(run_id: str) -> str:
    """The folder older versions gave a run id (lossy: ``:`` and ``+`` both became ``_``).
    Only for linking runs recorded before, never to choose a run's folder."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("._") or "run"


def run_dir(line: str, run_id: str, home: Path | None = None) -> Path:
    """The folder of a run id (:func:`run_folder_name`)."""
    return training_root(line, home) / run_folder_name(run_id)


def run_dir_named(line: str, folder: str, home: Path | None = None) -> Path:
    """A run folder by its name (what :func:`training_runs` lists and pages link to)."""
    return training_root(line, home) / folder


def training_runs(line: str, home: Path | None = None) -> list[Path]:
    """Every run folder of a line (unordered)."""
    root = training_root(line, home)
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]


def run_data_dir(run: Path) -> Path:
    """The run's data: ``train/part-<rank>.parquet`` (one shard per worker),
    ``validation.parquet``, ``eval.parquet`` (the gate's held-out split)."""
    return Path(run) / "data"


def train_shards_dir(run: Path) -> Path:
    return run_data_dir(run) / "train"


def train_shards(run: Path) -> list[Path]:
    """The training shards in rank order."""
    return sorted(train_shards_dir(run).glob("part-*.parquet"))


def train_shard_path(run: Path, rank: int) -> Path:
    return train_shards_dir(run) / f"part-{rank:05d}.parquet"


def validation_data_path(run: Path) -> Path:
    return run_data_dir(run) / "validation.parquet"


def eval_data_path(run: Path) -> Path:
    return run_data_dir(run) / "eval.parquet"


def checkpoints_dir(run: Path) -> Path:
    return Path(run) / "checkpoints"


def tensorboard_dir(run: Path) -> Path:
    return Path(run) / "tensorboard"


def run_lock_path(run: Path) -> Path:
    """Held (flock) by the process tree working on the run folder; see runtime.tether."""
    return Path(run) / RUN_LOCK


def training_log_path(run: Path) -> Path:
    """What ``horovodrun`` and its workers print."""
    return Path(run) / "logs" / "horovodrun.log"


def model_root(run: Path) -> Path:
    """The folder holding the run's exported SavedModel (:func:`exported_model`)."""
    return Path(run) / TRAINING_MODEL


def manifest_path(run: Path) -> Path:
    return Path(run) / TRAINING_MANIFEST


def label_errors_path(run: Path) -> Path:
    """The run's label-error report: train rows whose given label looks wrong."""
    return Path(run) / LABEL_ERRORS


def training_result_path(run: Path) -> Path:
    return Path(run) / TRAINING_RESULT


def training_outcome_path(run: Path) -> Path:
    """How the training DAG run ended (blessed, not blessed, failed), written by its last task."""
    return Path(run) / TRAINING_OUTCOME


def mlflow_run_file(run: Path) -> Path:
    return Path(run) / TRAINING_MLFLOW_RUN


def exported_model(run: Path) -> Path:
    """The run's SavedModel (TFX wants the ``Format-Serving`` folder name)."""
    return model_root(run) / EXPORT_DIR


def model_info_path(saved_model: Path) -> Path:
    return Path(saved_model) / "assets.extra" / MODEL_INFO


def evaluation_dir(run: Path) -> Path:
    return Path(run) / EVALUATION_DIR


def evaluation_result_path(run: Path) -> Path:
    return evaluation_dir(run) / EVALUATION_RESULT


def evaluation_report_path(run: Path) -> Path:
    return evaluation_dir(run) / EVALUATION_REPORT


def evaluation_examples_dir(run: Path) -> Path:
    """The held-out split as TFRecords of tf.Example, the Examples the Evaluator reads."""
    return evaluation_dir(run) / "examples"


EVALUATION_SPLIT = "eval"


def evaluation_split_dir(run: Path) -> Path:
    """The Examples artifact's ``eval`` split, where TFX looks for it (``Split-eval``)."""
    return evaluation_examples_dir(run) / f"Split-{EVALUATION_SPLIT}"


def gate_log_path(run: Path) -> Path:
    return evaluation_dir(run) / "gate.log"


def confusion_matrix_path(run: Path) -> Path:
    """The candidate's confusion matrix on the evaluation split (multi-class lines)."""
    return evaluation_dir(run) / CONFUSION_MATRIX


def misclassified_dir(run: Path) -> Path:
    """Misclassified evaluation images: ``index.json`` and one PNG per entry."""
    return evaluation_dir(run) / MISCLASSIFIED


# ---------------------------------------------------------------- evaluation gate (TFX, ML Metadata)


def tfx_root(line: str, home: Path | None = None) -> Path:
    base = os.environ.get("FACTORY_TFX_ROOT")
    return (Path(base) if base else _home(home) / "tfx") / line


def pipeline_root(line: str, home: Path | None = None) -> Path:
    return tfx_root(line, home) / "root"


def sqlite_metadata_path(line: str, home: Path | None = None) -> Path:
    return tfx_root(line, home) / "metadata.db"


def mlmd_uri(line: str, home: Path | None = None) -> str:
    """The ML Metadata store as a URI: ``FACTORY_MLMD_URI`` (one store for all lines, each
    its own TFX pipeline) or the line's SQLite file."""
    return os.environ.get("FACTORY_MLMD_URI") or f"sqlite:///{sqlite_metadata_path(line, home)}"


def rollback_log_path(line: str, home: Path | None = None) -> Path:
    return tfx_root(line, home) / "rollback.log"


def pipeline_name(line: str) -> str:
    return f"factory_eval_{line}"


def registered_model_name(line: str) -> str:
    """The line's model in the MLflow registry."""
    return f"factory.{line}"


# ---------------------------------------------------------------- serving store


def serving_store(home: Path | None = None) -> Path:
    """The root TF Serving reads (``--model_base_path=<store>/<line>``)."""
    store = os.environ.get("FACTORY_SERVING_STORE")
    return Path(store) if store else _home(home) / "serving"


def serving_base(line: str, home: Path | None = None, store: Path | None = None) -> Path:
    """A line's folder in the serving store (``store``: that store rather than :func:`serving_store`)."""
    return (Path(store) if store is not None else serving_store(home)) / line


def push_info_path(version_dir: Path) -> Path:
    return Path(version_dir) / "assets.extra" / PUSH_INFO


def retired_dir(base: Path) -> Path:
    return Path(base) / RETIRED


def retired_info_path(base: Path, version: int) -> Path:
    return retired_dir(base) / f"{version}.json"


def int_dirs(path: Path) -> list[int]:
    """The integer-named folders of ``path`` (TF Serving's versions), ascending."""
    try:
        return sorted(int(p.name) for p in Path(path).iterdir() if p.is_dir() and p.name.isdigit())
    except OSError:
        return []


# ---------------------------------------------------------------- drift


def drift_dir(line: str, home: Path | None = None) -> Path:
    """``<FACTORY_HOME>/drift/<line>``: the line's history, episode state and reports."""
    return _home(home) / "drift" / line


def drift_history_path(line: str, home: Path | None = None) -> Path:
    return drift_dir(line, home) / DRIFT_HISTORY


def drift_episodes_path(line: str, home: Path | None = None) -> Path:
    return drift_dir(line, home) / DRIFT_EPISODES


def drift_reports_dir(line: str, home: Path | None = None) -> Path:
    return drift_dir(line, home) / DRIFT_REPORTS


def drift_report_paths(line: str, batch_id: str, home: Path | None = None) -> tuple[Path, Path]:
    """The JSON and HTML drift report of one scored batch."""
    safe = re.sub(r"[^A-Za-z0-9._=-]", "_", batch_id) or "batch"
    folder = drift_reports_dir(line, home)
    return folder / f"{safe}.json", folder / f"{safe}.html"


def model_profile_path(saved_model: Path) -> Path:
    """The reference profile inside a SavedModel, so it travels with every push."""
    return Path(saved_model) / "assets.extra" / DRIFT_PROFILE


def drift_profile_path(folder: Path) -> Path:
    """The reference profile kept beside a model (a run's model folder or a served version)."""
    folder = Path(folder)
    return folder if folder.suffix == ".json" else folder / DRIFT_PROFILE


# ---------------------------------------------------------------- all lines


def lines_with_records(home: Path | None = None, store: Path | None = None) -> list[str]:
    """Lines that have any record under this home or in the serving store (``store``, else
    :func:`serving_store`)."""
    home = _home(home)
    names: set[str] = set()
    for root in (home / "state", home / "training", home / "drift",
                 Path(store) if store is not None else serving_store(home)):
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(names)


# ---------------------------------------------------------------- online serving


def prediction_log_root(home: Path | None = None) -> Path:
    """Where the model server logs what it answered (every line below it)."""
    root = os.environ.get("FACTORY_PREDICTION_LOG")
    return Path(root) if root else _home(home) / "predictions"


def prediction_log_dir(line: str, home: Path | None = None) -> Path:
    return prediction_log_root(home) / line


def prediction_wal_dir(line: str, home: Path | None = None) -> Path:
    """Segments the server is writing or has closed, not yet compacted: JSON lines, one
    record per answered instance, fsynced before the answer leaves the server."""
    return prediction_log_dir(line, home) / "wal"


def prediction_parquet_dir(line: str, home: Path | None = None) -> Path:
    """Compacted segments: ``date=<YYYY-MM-DD>/<segment>.parquet``."""
    return prediction_log_dir(line, home) / "log"


def prediction_labels_dir(line: str, home: Path | None = None) -> Path:
    """Labels attached later to logged predictions (by request id)."""
    return prediction_log_dir(line, home) / "labels"


def model_server_record(home: Path | None = None) -> Path:
    return _home(home) / "run" / "model-server.json"


def task_work_log(home: Path | None = None) -> Path:
    """One JSON line per task try: when its operator's work started and ended
    (:mod:`pipelines.runtime.timing`)."""
    return _home(home) / "run" / "task-work.jsonl"


# ---------------------------------------------------------------- hyperparameter search


def tuning_root(line: str, home: Path | None = None) -> Path:
    """``<FACTORY_HOME>/tuning/<line>``: the line's studies and its tuned settings."""
    return _home(home) / "tuning" / line


def tuned_params_path(line: str, home: Path | None = None) -> Path:
    """The line's tuned settings: the best trial of the last study, with its provenance."""
    return tuning_root(line, home) / "tuned_params.json"


def studies_dir(line: str, home: Path | None = None) -> Path:
    return tuning_root(line, home) / "studies"


def study_dir(line: str, study: str, home: Path | None = None) -> Path:
    """One study's folder: its record and one run folder per trial."""
    return studies_dir(line, home) / study


def study_record_path(study: Path) -> Path:
    return Path(study) / "study.json"


def trial_dir(study: Path, number: int) -> Path:
    """A trial's run folder (the training stage's run folder layout)."""
    return Path(study) / "trials" / f"trial-{number:04d}"


def study_slot_lock(study: Path, slot: int) -> Path:
    """One of the study's ``parallel`` trial slots: a trial runs while it holds one."""
    return Path(study) / "slots" / f"{slot}.lock"



def study_ask_lock(study: Path) -> Path:
    """Held while a trial task asks the study for its trial: one ask at a time."""
    return Path(study) / "ask.lock"


# ---------------------------------------------------------------- automated labelling


def labelling_dir(line: str, home: Path | None = None) -> Path:
    """``<FACTORY_HOME>/labelling/<line>``: thresholds, labelling runs, review queues, imports
    (and the lock the label DAG's tasks take)."""
    return _home(home) / "labelling" / line


def label_thresholds_path(line: str, home: Path | None = None) -> Path:
    """The per-class confidence thresholds of the serving model's machine labels."""
    return labelling_dir(line, home) / "thresholds.json"


def labelling_runs_dir(line: str, home: Path | None = None) -> Path:
    return labelling_dir(line, home) / "runs"


def labelling_run_path(line: str, run_id: str, home: Path | None = None) -> Path:
    """One run of the label DAG: what it labelled, queued and landed."""
    return labelling_runs_dir(line, home) / f"{run_folder_name(run_id)}.json"


def review_queues_dir(line: str, home: Path | None = None) -> Path:
    """Label Studio serves this folder as local files (read-only)."""
    return labelling_dir(line, home) / "queue"


def review_queue_dir(line: str, queue_id: str, home: Path | None = None) -> Path:
    """One review queue: ``tasks.json`` (Label Studio's import format), ``label_config.xml``,
    ``queue.json`` (its record)."""
    return review_queues_dir(line, home) / queue_id


def review_tasks_path(queue: Path) -> Path:
    return Path(queue) / "tasks.json"


def review_config_path(queue: Path) -> Path:
    return Path(queue) / "label_config.xml"


def review_queue_record_path(queue: Path) -> Path:
    return Path(queue) / "queue.json"


def label_imports_dir(line: str, home: Path | None = None) -> Path:
    return labelling_dir(line, home) / "imports"


def label_import_path(line: str, import_id: str, home: Path | None = None) -> Path:
    """What one import of reviewed labels took and landed."""
    return label_imports_dir(line, home) / f"{run_folder_name(import_id)}.json"


def latest_label_errors_path(line: str, home: Path | None = None) -> Path:
    """A copy of the label-error report of the line's latest prepared training run."""
    return labelling_dir(line, home) / LABEL_ERRORS
