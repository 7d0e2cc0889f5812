"""What the Model Factory view shows, gathered from the factory's files.

Sources (all optional: a stage that has not run yet leaves its part of the page empty,
and a file that cannot be read becomes a note on the page, never an error page):

| what | where |
|---|---|
| batches | the batch ledger ``<home>/state/<line>/<batch>.json`` (:mod:`pipelines.catalog.ledger`) |
| Data Docs | the ledger's ``validation.data_docs`` page, under ``<home>/gx/gx/uncommitted/data_docs`` |
| training runs | ``<home>/training/<line>/<run>/{manifest.json,result.json,mlflow_run_id}`` |
| evaluation | ``<run>/evaluation/result.json`` and ``report.html`` (:mod:`pipelines.evaluation.gate`) |
| serving | ``<serving store>/<line>/<version>/assets.extra/factory_push.json``; TF Serving serves the highest integer version; ``.retired/`` holds rolled-back ones |
| drift | ``<home>/drift/<line>/history.jsonl`` (``kind: "batch"`` records) and the JSON/HTML reports they name (``<home>/drift/<line>/reports/``) |

What only Airflow or MLflow know comes through two small interfaces, so this module needs
neither: :class:`AirflowRuns` (the DAG run behind a batch or a training run) and
:class:`MlflowInfo` (experiment id, registry versions and aliases); see
:mod:`pipelines.ui.lookups` for the real ones.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from pipelines.config import factory_home, gx_root, training_root

MAX_BATCHES = 25
MAX_MODELS = 20
MAX_DRIFT_POINTS = 60
DRIFT_METRIC = "psi"
DEFAULT_PSI_THRESHOLD = 0.2
SCORE_FEATURE = "__score__"  # the model's score distribution (pipelines.specs.drift)
MAX_FEATURE = "__max__"  # a history that only keeps the largest PSI of each batch


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
    blessing: str | None = None  # BLESSED / NOT BLESSED / FORCED / ...
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


# -- helpers ------------------------------------------------------------------------------


def run_folder_name(run_id: str) -> str:
    """The run folder an Airflow run id gets (mirrors :func:`pipelines.training.stage.run_folder`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("._") or "run"


def _read_json(path: Path, notes: list[str], what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        notes.append(f"{what}: cannot read {path.name}: {err}")
        return None


def _int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _mtime(path: Path) -> str | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    except OSError:
        return None


def docs_root(home: Path | None = None) -> Path:
    """Where Great Expectations renders its Data Docs (the only folder the view serves).

    A GX file context made with ``project_root_dir=<home>/gx`` (as :mod:`pipelines.ingest.validation`
    does) keeps its project in ``<home>/gx/gx/``; a project rooted at ``<home>/gx`` itself is
    taken when that is what exists."""
    base = gx_root(home)
    candidates = (base / "gx" / "uncommitted" / "data_docs", base / "uncommitted" / "data_docs")
    return next((c for c in candidates if c.is_dir()), candidates[0])


def docs_link(path: str | None, home: Path | None = None) -> str | None:
    """A Data Docs file recorded in the ledger as a URL path relative to :func:`docs_root`,
    or None when it is not under it (or gone)."""
    if not path:
        return None
    root = docs_root(home).resolve()
    try:
        rel = Path(path).resolve().relative_to(root)
    except (ValueError, OSError):
        return None
    if not (root / rel).is_file():
        return None
    return "/".join(quote(part) for part in rel.parts)


# -- batches ------------------------------------------------------------------------------


def _validation(v: Any, home: Path) -> Validation | None:
    if not isinstance(v, dict):
        return None
    failed = []
    for f in v.get("failed") or []:
        if isinstance(f, dict):
            col = f" on {f['column']}" if f.get("column") else ""
            failed.append(f"{f.get('expectation', '?')}{col}")
        else:
            failed.append(str(f))
    success = v.get("success")
    return Validation(
        success=bool(success) if success is not None else None,
        evaluated=_int(v.get("evaluated")),
        successful=_int(v.get("successful")),
        failed=failed,
        docs=docs_link(v.get("data_docs"), home),
        docs_file=v.get("data_docs") or None,
    )


def batch_from_record(record: dict[str, Any], home: Path) -> Batch:
    cleaning = record.get("cleaning") if isinstance(record.get("cleaning"), dict) else {}
    reasons = cleaning.get("quarantine_reasons") if isinstance(cleaning.get("quarantine_reasons"), dict) else {}
    return Batch(
        batch_id=str(record.get("batch_id")),
        status=record.get("status"),
        landed_at=record.get("landed_at"),
        updated_at=record.get("updated_at"),
        rows_in=_int(cleaning.get("rows_in")),
        rows_clean=_int(cleaning.get("rows_clean")),
        rows_quarantined=_int(cleaning.get("rows_quarantined")),
        duplicates_removed=_int(cleaning.get("duplicates_removed")),
        quarantine_reasons={str(k): n for k, v in reasons.items() if (n := _int(v)) is not None},
        validation=_validation(record.get("validation"), home),
        error=record.get("error") or None,
        failed_stage=record.get("failed_stage") or None,
    )


def read_batches(line: str, home: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Every ledger record of a line, newest landing first (unreadable ones become notes)."""
    folder = home / "state" / line
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = _read_json(path, notes, "batch ledger")
        if isinstance(record, dict) and record.get("batch_id") is not None:
            records.append(record)
    records.sort(key=lambda r: (str(r.get("landed_at") or ""), str(r.get("batch_id"))), reverse=True)
    return records


# -- models -------------------------------------------------------------------------------


def _blessing(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "BLESSED" if value else "NOT BLESSED"
    text = str(value).strip().upper().replace("_", " ")
    return text or None


def _numeric_metrics(data: Any) -> dict[str, float]:
    if not isinstance(data, dict):
        return {}
    for key in ("overall", "candidate"):  # {"overall": {...}} or {"candidate": {...}, "baseline": {...}}
        if isinstance(data.get(key), dict):
            return _numeric_metrics(data[key])
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and "value" in v:  # {"auc": {"value": 0.71, "threshold": ...}}
            v = v["value"]
        x = _float(v) if not isinstance(v, bool) else None
        if x is not None:
            out[str(k)] = x
    return out


def evaluation_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Blessing, metrics, pushed version and the verdict's reason from an evaluation
    ``result.json`` (:mod:`pipelines.evaluation.gate`: ``blessing``, ``overall``, ``metrics``
    by slice, ``serving.version``, ``why``), also accepting ``blessed``/``verdict``, flat
    ``metrics``, ``pushed_version``/``serving_version``/``pushed.version``."""
    blessing = None
    for key in ("blessing", "blessed", "verdict"):
        if key in result:
            blessing = _blessing(result[key])
            if blessing:
                break
    if result.get("forced") or result.get("force_bless_reason"):
        blessing = "FORCED"
    pushed = result.get("pushed") if isinstance(result.get("pushed"), dict) else {}
    serving = result.get("serving") if isinstance(result.get("serving"), dict) else {}
    version = None
    # a bare "version" counts only next to "pushed": true (it could be a format version)
    bare = result.get("version") if result.get("pushed") is True else None
    for candidate in (serving.get("version"), result.get("pushed_version"), result.get("serving_version"),
                      pushed.get("version"), bare):
        version = _int(candidate)
        if version is not None:
            break
    metrics = _numeric_metrics(result.get("overall"))  # the gate: the candidate's overall metrics
    if not metrics:
        data = result.get("metrics")
        if isinstance(data, dict) and isinstance(data.get("Overall"), dict):  # TFMA's slice name
            data = data["Overall"]
        metrics = _numeric_metrics(data)
    why = result.get("why") if isinstance(result.get("why"), str) else None
    return {"blessing": blessing, "metrics": metrics, "version": version, "why": why}


def read_models(line: str, home: Path, notes: list[str]) -> list[Model]:
    """Every training run of a line, newest first."""
    root = training_root(line, home)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def started(p: Path) -> float:
        for name in ("manifest.json", "result.json"):
            try:
                return (p / name).stat().st_mtime
            except OSError:
                continue
        return p.stat().st_mtime

    models = []
    for run_dir in sorted(runs, key=started, reverse=True):
        manifest = _read_json(run_dir / "manifest.json", notes, f"training run {run_dir.name}") or {}
        result = _read_json(run_dir / "result.json", notes, f"training run {run_dir.name}")
        rows = manifest.get("rows") if isinstance(manifest.get("rows"), dict) else {}
        m = Model(
            run=run_dir.name,
            batches=[str(b) for b in manifest.get("batches") or []],
            rows_train=_int(rows.get("train")),
            has_result=isinstance(result, dict),
        )
        if isinstance(result, dict):
            m.trained_at = result.get("finished_at") or _mtime(run_dir / "result.json")
            m.val_auc = _float(result.get("val_auc"))
            m.epochs_run = _int(result.get("epochs_run"))
            m.samples_per_s = _float(result.get("samples_per_s"))
        try:
            m.mlflow_run_id = (run_dir / "mlflow_run_id").read_text().strip() or None
        except OSError:
            pass
        evaluation = _read_json(run_dir / "evaluation" / "result.json", notes, f"evaluation of {run_dir.name}")
        if isinstance(evaluation, dict):
            summary = evaluation_summary(evaluation)
            m.evaluated = True
            m.blessing = summary["blessing"]
            m.blessing_why = summary["why"]
            m.eval_metrics = summary["metrics"]
            m.serving_version = summary["version"]
        if (run_dir / "evaluation" / "report.html").is_file():
            m.eval_report = f"reports/{quote(line)}/evaluation/{quote(run_dir.name)}"
        models.append(m)
    return models


# -- serving ------------------------------------------------------------------------------


def serving_base(line: str, home: Path) -> Path:
    store = os.environ.get("FACTORY_SERVING_STORE")  # as pipelines.evaluation.paths.serving_store
    return (Path(store) if store else home / "serving") / line


def _run_of_push(info: dict[str, Any], line: str) -> str | None:
    for key in ("run", "run_folder", "training_run"):
        if isinstance(info.get(key), str) and info[key]:
            return Path(info[key]).name
    for key in ("run_dir", "model_uri", "model_dir"):
        value = info.get(key)
        if isinstance(value, str):
            parts = Path(value).parts
            for i in range(len(parts) - 2):
                if parts[i] == "training" and parts[i + 1] == line:
                    return parts[i + 2]
            if key == "run_dir" and value:
                return Path(value).name
    return None


def read_serving(line: str, home: Path, notes: list[str]) -> list[ServingVersion]:
    """Versions in the serving store, newest first; the highest live one is in serving."""
    base = serving_base(line, home)
    out = []
    for folder, retired in ((base, False), (base / ".retired", True)):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if not (p.is_dir() and p.name.isdigit()):
                continue
            info = _read_json(p / "assets.extra" / "factory_push.json", notes, f"serving version {p.name}") or {}
            reason = None
            if retired:
                reason = (_read_json(folder / f"{p.name}.json", notes, f"retired version {p.name}") or {}).get("reason")
            out.append(
                ServingVersion(
                    version=int(p.name),
                    pushed_at=info.get("pushed_at"),
                    blessing=_blessing(info.get("blessing")),
                    run=_run_of_push(info, line),
                    retired=retired,
                    retired_reason=reason,
                )
            )
    live = [s.version for s in out if not s.retired]
    for s in out:
        s.in_serving = bool(live) and not s.retired and s.version == max(live)
    return sorted(out, key=lambda s: s.version, reverse=True)


# -- drift --------------------------------------------------------------------------------


def _feature_values(record: dict[str, Any], home: Path, notes: list[str]) -> dict[str, float]:
    """Per-feature PSI of one history record: from the record itself when it carries them,
    else from the JSON report it names (under the factory home), else the record's largest."""
    for key in ("scores", "psi", "features"):
        data = record.get(key)
        if isinstance(data, dict) and data:
            out = {}
            for name, v in data.items():
                if isinstance(v, dict):
                    metrics = v.get("metrics") if isinstance(v.get("metrics"), dict) else v
                    v = metrics.get(DRIFT_METRIC)
                    if isinstance(v, dict):
                        v = v.get("value")
                x = _float(v)
                if x is not None:
                    out[str(name)] = x
            if out:
                return out
    report_path = record.get("report_path")
    if isinstance(report_path, str) and report_path:
        path = Path(report_path)
        try:
            inside = path.resolve().is_relative_to(home.resolve())
        except OSError:
            inside = False
        if inside:
            report = _read_json(path, notes, "drift report")
            if isinstance(report, dict) and isinstance(report.get("features"), dict):
                out = {}
                for name, f in report["features"].items():
                    if isinstance(f, dict) and f.get("status") == "ok":
                        x = _float(((f.get("metrics") or {}).get(DRIFT_METRIC) or {}).get("value"))
                        if x is not None:
                            out[str(name)] = x
                if out:
                    return out
    top = record.get("max_psi")
    if isinstance(top, dict) and _float(top.get("value")) is not None:
        return {MAX_FEATURE: _float(top["value"])}
    return {}


def drift_reports_dir(line: str, home: Path) -> Path:
    return home / "drift" / line / "reports"  # pipelines.monitoring.batch.report_paths


def _drift_report_link(line: str, html_path: Any, home: Path) -> str | None:
    if not isinstance(html_path, str) or not html_path:
        return None
    path = Path(html_path)
    try:
        inside = path.resolve().parent == drift_reports_dir(line, home).resolve()
    except OSError:
        return None
    if not inside or not path.is_file() or path.suffix != ".html":
        return None
    return f"reports/{quote(line)}/drift/{quote(path.name)}"


def _threshold(line: str, feature: str) -> float | None:
    try:
        from pipelines.specs.drift import drift_spec
        from pipelines.specs import load_spec

        return drift_spec(load_spec(line).drift).thresholds_for(feature).get(DRIFT_METRIC)
    except Exception:  # noqa: BLE001 - no spec, no drift package yet, or a bad section: the default
        return DEFAULT_PSI_THRESHOLD


def read_drift(line: str, home: Path, notes: list[str]) -> tuple[list[DriftSeries], list[DriftBatch]]:
    path = home / "drift" / line / "history.jsonl"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [], []
    except OSError as err:
        notes.append(f"drift history: {err}")
        return [], []
    records = []
    raw_lines = text.split("\n")
    for i, raw in enumerate(raw_lines):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            if i != len(raw_lines) - 1:  # a partial last line is an append in progress
                notes.append(f"drift history: line {i + 1} is not JSON; skipped")
            continue
        if isinstance(record, dict) and record.get("kind", "batch") == "batch":
            records.append(record)
    records.sort(key=lambda r: str(r.get("scored_at") or r.get("recorded_at") or ""))
    records = records[-MAX_DRIFT_POINTS:]

    series: dict[str, list[DriftPoint]] = {}
    batches = []
    for r in records:
        values = _feature_values(r, home, notes)
        for name, value in values.items():
            series.setdefault(name, []).append(DriftPoint(r.get("batch_id"), r.get("scored_at"), value))
        top = r.get("max_psi") if isinstance(r.get("max_psi"), dict) else {}
        drifted = [
            str(d.get("feature")) if isinstance(d, dict) else str(d) for d in r.get("drifted_features") or []
        ]
        batches.append(
            DriftBatch(
                batch_id=r.get("batch_id"),
                scored_at=r.get("scored_at"),
                model_version=None if r.get("model_version") is None else str(r.get("model_version")),
                drifted=bool(r.get("drifted")),
                drifted_features=drifted,
                max_psi=_float(top.get("value")),
                max_psi_feature=top.get("feature"),
                episode_status=r.get("episode_status"),
                report=_drift_report_link(line, r.get("html_path"), home),
            )
        )
    out = [DriftSeries(name, points, _threshold(line, name)) for name, points in series.items()]
    # the score first, then the features that moved most
    out.sort(key=lambda s: (s.feature != SCORE_FEATURE, -s.peak, s.feature))
    return out, list(reversed(batches))


# -- all together -------------------------------------------------------------------------


def known_lines(home: Path) -> list[tuple[str, str, str]]:
    """(name, description, owner) of every declared line, plus lines that only have files."""
    out: dict[str, tuple[str, str, str]] = {}
    try:
        from pipelines.specs import load_specs

        for spec in load_specs():
            out[spec.name] = (spec.name, spec.description, spec.owner)
    except Exception:  # noqa: BLE001 - a broken spec must not take the view down
        pass
    for folder in ("state", "training", "drift"):
        base = home / folder
        if base.is_dir():
            for p in base.iterdir():
                if p.is_dir() and not p.name.startswith(".") and p.name not in out:
                    out[p.name] = (p.name, "", "")
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

    records = read_batches(line, home, notes)
    view.batch_total = len(records)
    for r in records:
        key = str(r.get("status") or "unknown")
        view.status_counts[key] = view.status_counts.get(key, 0) + 1
    view.batches = [batch_from_record(r, home) for r in records[:max_batches]]

    models = read_models(line, home, notes)
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

    view.drift_series, view.drift_batches = read_drift(line, home, notes)
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
        docs_index=docs_link(str(docs_root(home) / "local_site" / "index.html"), home) if views else None,
    )


def mlflow_run_url(base: str | None, run_id: str | None, experiment_id: str | None) -> str | None:
    """A run's page in the MLflow UI (``FACTORY_MLFLOW_UI``), or None without a UI."""
    if not base or not run_id:
        return None
    if experiment_id:
        return f"{base}/#/experiments/{quote(experiment_id, safe='')}/runs/{quote(run_id, safe='')}"
    return f"{base}/#/runs/{quote(run_id, safe='')}"  # MLflow's UI resolves the experiment
