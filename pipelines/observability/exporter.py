"""The factory's own metrics for Prometheus, read from the factory's files.

Design: an HTTP ``/metrics`` endpoint that Prometheus scrapes (pull), computed on each
scrape from the files the factory already writes under ``FACTORY_HOME``. Nothing is
pushed from tasks and nothing is kept in memory, so the files stay the single source
of truth: a restarted exporter loses nothing, a task that dies cannot leave a stale
pushed value behind (the Pushgateway's weak spot), and Prometheus's ``up`` says
whether the numbers are being read at all. Pure standard library; no
``prometheus_client`` needed.

    python -m pipelines.observability.exporter --port 9108      # serve /metrics (and /healthz)
    python -m pipelines.observability.exporter --once           # print the exposition once (textfile use)

What it reads, per product line (lines are the union of ``include/lines/*.yaml`` and
the folders found below), in the formats the factory's own modules write:

| source | file (writer) | metrics |
|---|---|---|
| batch ledger | ``<home>/state/<line>/<batch>.json`` (``pipelines.catalog.ledger``, the cleaning job, validation) | ``factory_batches``, ``factory_rows``, ``factory_rows_in``, ``factory_batch_rows``, ``factory_quarantine_rows``, ``factory_batch_cleaning_seconds``, ``factory_validation_*``, ``factory_batch_validation_success``, ``factory_ledger_last_update_timestamp_seconds`` |
| training runs | ``<home>/training/<line>/<run>/result.json`` (the Horovod worker) | ``factory_training_runs``, ``factory_training_val_auc``, ``factory_training_samples_per_second``, ``factory_training_epochs_run``, ``factory_training_workers``, ``factory_training_last_run_timestamp_seconds``, ``factory_training_run_info`` |
| evaluations | ``<home>/training/<line>/<run>/evaluation/result.json`` (``pipelines.evaluation.gate``) | ``factory_evaluations``, ``factory_evaluation_metric``, ``factory_evaluation_last_timestamp_seconds``, ``factory_evaluation_info`` |
| drift | ``<home>/drift/<line>/history.jsonl`` and the JSON report its latest ``batch`` record names (``pipelines.monitoring``) | ``factory_drift_checks``, ``factory_drift_batch_drifted``, ``factory_drift_features_drifted``, ``factory_drift_max_psi``, ``factory_drift_batch_auc``, ``factory_drift_score``, ``factory_drift_threshold``, ``factory_drift_detected``, ``factory_drift_severity``, ``factory_drift_retrain_events``, ``factory_drift_last_check_*`` |
| pushed models | ``<serving store>/<line>/<version>/`` and ``.retired/`` (``pipelines.evaluation.serving``) | ``factory_serving_versions``, ``factory_serving_latest_version``, ``factory_serving_pushes_total``, ``factory_serving_retired_versions``, ``factory_serving_latest_push_timestamp_seconds``, ``factory_serving_model_val_auc``, ``factory_serving_model_auc``, ``factory_serving_model_info`` |

"Latest" training run or evaluation is the result file written last. Push events are
``factory_serving_pushes_total``, a true counter: the store never reuses a version
number, so the highest number ever given (live or retired) counts the pushes. The
serving store is ``FACTORY_SERVING_STORE`` (default ``<home>/serving``). Files that
cannot be read (half-written, malformed) are skipped and counted in
``factory_metrics_read_errors``; a scrape never fails because of one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pipelines import config
from pipelines.catalog.ledger import STATUSES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_TYPES = ("counter", "gauge", "untyped")
# The factory's file layout (written by pipelines.monitoring.history, pipelines.evaluation.gate,
# pipelines.evaluation.serving and pipelines.training.model; named here so that reading
# metrics never imports those modules).
DRIFT_HISTORY = "history.jsonl"
DRIFT_METRICS = ("psi", "jsd", "linf")
EVALUATION_RESULT = "evaluation/result.json"
SERVING_RETIRED = ".retired"
SERVING_PUSH_INFO = "factory_push.json"
MODEL_INFO = "factory_model.json"


# --------------------------------------------------------------------------- exposition


@dataclass
class Family:
    """One metric family: a name, a type, a help text and its samples."""

    name: str
    type: str
    help: str
    samples: list[tuple[tuple[tuple[str, str], ...], float]] = field(default_factory=list)

    def add(self, value: float | int | bool | None, **labels: Any) -> None:
        """Add a sample; ``None`` (a value the files do not have) adds nothing."""
        if value is None:
            return
        for key in labels:
            if not _LABEL.match(key) or key.startswith("__"):
                raise ValueError(f"invalid label name {key!r} for {self.name}")
        self.samples.append((tuple((k, str(v)) for k, v in labels.items()), float(value)))


class Metrics:
    """An ordered set of families, rendered in the Prometheus text format (0.0.4)."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def family(self, name: str, type_: str, help_: str) -> Family:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        if type_ not in _TYPES:
            raise ValueError(f"unsupported metric type {type_!r}")
        found = self.families.get(name)
        if found is None:
            found = self.families[name] = Family(name, type_, help_)
        elif found.type != type_:
            raise ValueError(f"{name} registered as {found.type} and {type_}")
        return found

    def render(self) -> str:
        out: list[str] = []
        for fam in self.families.values():
            out.append(f"# HELP {fam.name} {escape_help(fam.help)}")
            out.append(f"# TYPE {fam.name} {fam.type}")
            seen: set[tuple[tuple[str, str], ...]] = set()
            for labels, value in fam.samples:
                key = tuple(sorted(labels))
                if key in seen:
                    raise ValueError(f"duplicate series {fam.name}{dict(labels)}")
                seen.add(key)
                body = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels)
                out.append(f"{fam.name}{{{body}}} {format_value(value)}" if body else f"{fam.name} {format_value(value)}")
        return "\n".join(out) + "\n"


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


# --------------------------------------------------------------------------- reading


def serving_store(home: Path) -> Path:
    """The TF Serving model store: ``FACTORY_SERVING_STORE``, else ``<home>/serving``."""
    value = os.environ.get("FACTORY_SERVING_STORE")
    return Path(value) if value else home / "serving"


def _timestamp(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class _Reader:
    """Reads JSON files, counting the ones that cannot be read instead of failing the scrape."""

    def __init__(self, errors: Family) -> None:
        self.errors = errors
        self.counts: dict[tuple[str, str], int] = {}

    def json(self, path: Path, line: str, source: str) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            self.counts[(line, source)] = self.counts.get((line, source), 0) + 1
            return None

    def flush(self) -> None:
        for (line, source), n in sorted(self.counts.items()):
            self.errors.add(n, line=line, source=source)


def discover_lines(home: Path, store: Path, include: Path | None = None) -> list[str]:
    """Declared lines (``include/lines/*.yaml``) plus any line that has files."""
    names: set[str] = set()
    lines_dir = (include or config.include_dir()) / "lines"
    if lines_dir.is_dir():
        names.update(p.stem for p in lines_dir.glob("*.yaml"))
    for root in (home / "state", home / "training", home / "drift", store):
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(names)


def collect(
    home: Path | None = None,
    store: Path | None = None,
    lines: Iterable[str] | None = None,
    include: Path | None = None,
) -> Metrics:
    """Every factory metric, read now from the files."""
    started = time.monotonic()
    home = Path(home) if home is not None else config.factory_home()
    store = Path(store) if store is not None else serving_store(home)
    m = Metrics()
    reader = _Reader(m.family("factory_metrics_read_errors", "gauge",
                              "Files that could not be read in this scrape (half-written or malformed)."))
    line_list = sorted(lines) if lines is not None else discover_lines(home, store, include)
    m.family("factory_line_info", "gauge", "A declared or active product line.")
    for line in line_list:
        m.families["factory_line_info"].add(1, line=line)
    for line in line_list:
        _ledger(m, reader, home, line)
    for line in line_list:
        _training(m, reader, home, line)
    for line in line_list:
        _evaluation(m, reader, home, line)
    for line in line_list:
        _drift(m, reader, home, line)
    for line in line_list:
        _serving(m, reader, home, store, line)
    reader.flush()
    m.family("factory_metrics_scrape_duration_seconds", "gauge",
             "Seconds spent reading the factory's files for this scrape.").add(time.monotonic() - started)
    return m


def _ledger(m: Metrics, reader: _Reader, home: Path, line: str) -> None:
    batches = m.family("factory_batches", "gauge", "Batches in the ledger by status.")
    rows = m.family("factory_rows", "gauge",
                    "Rows of all cleaned batches by outcome (clean, quarantined, duplicate_removed).")
    rows_in = m.family("factory_rows_in", "gauge", "Rows read by the cleaning job, all cleaned batches.")
    batch_rows = m.family("factory_batch_rows", "gauge",
                          "Rows of one cleaned batch by outcome (in, clean, quarantined, duplicate_removed).")
    reasons = m.family("factory_quarantine_rows", "gauge", "Quarantined rows by reason, all cleaned batches.")
    seconds = m.family("factory_batch_cleaning_seconds", "gauge", "Seconds the cleaning job took for a batch.")
    vbatches = m.family("factory_validation_batches", "gauge",
                        "Batches with a validation verdict, by outcome (passed, failed).")
    ratio = m.family("factory_validation_pass_ratio", "gauge",
                     "Share of validated-or-rejected batches that passed their expectation suite.")
    expectations = m.family("factory_validation_expectations", "gauge",
                            "Expectations evaluated over all verdicts, by result (successful, failed).")
    bsuccess = m.family("factory_batch_validation_success", "gauge",
                        "1 if the batch passed its expectation suite, 0 if it failed.")
    updated = m.family("factory_ledger_last_update_timestamp_seconds", "gauge",
                       "When the line's ledger last changed (Unix time).")

    status_counts = dict.fromkeys(STATUSES, 0)
    totals = {"clean": 0.0, "quarantined": 0.0, "duplicate_removed": 0.0}
    total_in = 0.0
    by_reason: dict[str, float] = {}
    passed = failed = 0
    evaluated = successful = 0.0
    last: float | None = None
    state_dir = config.line_paths(line, home).state
    records = []
    if state_dir.is_dir():
        for path in sorted(state_dir.glob("*.json")):
            if path.name.startswith("."):
                continue
            record = reader.json(path, line, "ledger")
            if isinstance(record, dict):
                records.append((path.stem, record))
    for batch_id, record in records:
        batch = str(record.get("batch_id", batch_id))
        status = record.get("status")
        if status in status_counts:
            status_counts[status] += 1
        ts = _timestamp(record.get("updated_at"))
        if ts is not None:
            last = ts if last is None else max(last, ts)
        cleaning = record.get("cleaning")
        if isinstance(cleaning, dict):
            values = {
                "in": _number(cleaning.get("rows_in")),
                "clean": _number(cleaning.get("rows_clean")),
                "quarantined": _number(cleaning.get("rows_quarantined")),
                "duplicate_removed": _number(cleaning.get("duplicates_removed")),
            }
            for outcome, value in values.items():
                batch_rows.add(value, line=line, batch=batch, outcome=outcome)
                if value is None:
                    continue
                if outcome == "in":
                    total_in += value
                else:
                    totals[outcome] += value
            for reason, n in (cleaning.get("quarantine_reasons") or {}).items():
                if _number(n) is not None:
                    by_reason[str(reason)] = by_reason.get(str(reason), 0.0) + float(n)
            seconds.add(_number(cleaning.get("seconds")), line=line, batch=batch)
        validation = record.get("validation")
        if isinstance(validation, dict) and "success" in validation:
            ok = bool(validation.get("success"))
            passed += ok
            failed += not ok
            bsuccess.add(ok, line=line, batch=batch)
            ev = _number(validation.get("evaluated")) or 0.0
            su = _number(validation.get("successful")) or 0.0
            evaluated += ev
            successful += su
    for status, n in status_counts.items():
        batches.add(n, line=line, status=status)
    for outcome, value in totals.items():
        rows.add(value, line=line, outcome=outcome)
    rows_in.add(total_in, line=line)
    for reason, n in sorted(by_reason.items()):
        reasons.add(n, line=line, reason=reason)
    vbatches.add(passed, line=line, outcome="passed")
    vbatches.add(failed, line=line, outcome="failed")
    if passed + failed:
        ratio.add(passed / (passed + failed), line=line)
    expectations.add(successful, line=line, result="successful")
    expectations.add(max(evaluated - successful, 0.0), line=line, result="failed")
    updated.add(last, line=line)


def _training(m: Metrics, reader: _Reader, home: Path, line: str) -> None:
    runs = m.family("factory_training_runs", "gauge", "Training runs that finished (have a result.json).")
    auc = m.family("factory_training_val_auc", "gauge", "Validation AUC of the latest finished training run.")
    speed = m.family("factory_training_samples_per_second", "gauge",
                     "Training throughput of the latest run, all Horovod workers together.")
    epochs = m.family("factory_training_epochs_run", "gauge", "Epochs the latest training run ran.")
    workers = m.family("factory_training_workers", "gauge", "Horovod workers of the latest training run.")
    when = m.family("factory_training_last_run_timestamp_seconds", "gauge",
                    "When the latest training run wrote its result (Unix time).")
    info = m.family("factory_training_run_info", "gauge", "The latest finished training run of the line.")

    root = config.training_root(line, home)
    results = []
    if root.is_dir():
        for path in root.glob("*/result.json"):
            try:
                results.append((path.stat().st_mtime, path))
            except OSError:
                continue
    runs.add(len(results), line=line)
    if not results:
        return
    mtime, path = max(results)
    result = reader.json(path, line, "training")
    if not isinstance(result, dict):
        return
    auc.add(_number(result.get("val_auc")), line=line)
    speed.add(_number(result.get("samples_per_s")), line=line)
    epochs.add(_number(result.get("epochs_run")), line=line)
    workers.add(_number(result.get("workers")), line=line)
    when.add(mtime, line=line)
    info.add(1, line=line, run=path.parent.name)


def _latest(paths: Iterable[Path]) -> tuple[float, Path] | None:
    found = []
    for path in paths:
        try:
            found.append((path.stat().st_mtime, path))
        except OSError:
            continue
    return max(found) if found else None


def _evaluation(m: Metrics, reader: _Reader, home: Path, line: str) -> None:
    verdicts = m.family("factory_evaluations", "gauge",
                        "Evaluated candidate models by the gate's verdict (BLESSED, NOT_BLESSED, FORCED).")
    metric = m.family("factory_evaluation_metric", "gauge",
                      "Overall metric of the latest evaluated candidate (TFMA, held-out eval rows), e.g. auc.")
    when = m.family("factory_evaluation_last_timestamp_seconds", "gauge", "When the latest evaluation finished.")
    info = m.family("factory_evaluation_info", "gauge", "The latest evaluated training run and its verdict.")

    root = config.training_root(line, home)
    paths = sorted(root.glob(f"*/{EVALUATION_RESULT}")) if root.is_dir() else []
    counts: dict[str, int] = {}
    results = {}
    for path in paths:
        result = reader.json(path, line, "evaluation")
        if isinstance(result, dict):
            results[path] = result
            verdict = str(result.get("blessing") or "UNKNOWN")
            counts[verdict] = counts.get(verdict, 0) + 1
    for verdict, n in sorted(counts.items()):
        verdicts.add(n, line=line, blessing=verdict)
    latest = _latest(results)
    if latest is None:
        return
    mtime, path = latest
    result = results[path]
    overall = result.get("overall") if isinstance(result.get("overall"), dict) else {}
    for name, value in sorted(overall.items()):
        if _LABEL.match(str(name)):
            metric.add(_number(value), line=line, metric=str(name))
    when.add(mtime, line=line)
    info.add(1, line=line, run=str(result.get("training_run", path.parent.parent.name)),
             blessing=str(result.get("blessing", "")))


def _drift(m: Metrics, reader: _Reader, home: Path, line: str) -> None:
    checks = m.family("factory_drift_checks", "gauge", "Batches scored for drift (history records of kind batch).")
    batch_drifted = m.family("factory_drift_batch_drifted", "gauge", "1 if the latest scored batch drifted.")
    n_drifted = m.family("factory_drift_features_drifted", "gauge", "Features that drifted in the latest scored batch.")
    max_psi = m.family("factory_drift_max_psi", "gauge", "Largest PSI of any feature in the latest scored batch.")
    live_auc = m.family("factory_drift_batch_auc", "gauge",
                        "AUC of the served model on the latest scored batch that had labels.")
    when = m.family("factory_drift_last_check_timestamp_seconds", "gauge", "When the latest batch was scored.")
    last = m.family("factory_drift_last_check_info", "gauge", "The latest scored batch and the model it was scored against.")
    retrains = m.family("factory_drift_retrain_events", "gauge", "Drift retrain records by event (pending, running, ...).")
    score = m.family("factory_drift_score", "gauge",
                     "Drift metric (psi, jsd, linf) of a feature in the latest scored batch.")
    threshold = m.family("factory_drift_threshold", "gauge", "Threshold the feature's drift metric is held to.")
    detected = m.family("factory_drift_detected", "gauge", "1 if the latest scored batch's feature drifted.")
    severity = m.family("factory_drift_severity", "gauge", "Largest metric/threshold ratio of a feature.")

    path = home / "drift" / line / DRIFT_HISTORY
    if not path.is_file():
        return
    try:
        lines = path.read_text().split("\n")
    except OSError:
        reader.counts[(line, "drift")] = reader.counts.get((line, "drift"), 0) + 1
        return
    batch_records: list[dict] = []
    events: dict[str, int] = {}
    for text in lines:
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError:  # a record cut short by a writer that died, or one being appended
            reader.counts[(line, "drift")] = reader.counts.get((line, "drift"), 0) + 1
            continue
        if not isinstance(record, dict):
            continue
        if record.get("kind") == "batch":
            batch_records.append(record)
        elif record.get("kind") == "retrain":
            event = str(record.get("event", "unknown"))
            events[event] = events.get(event, 0) + 1
    checks.add(len(batch_records), line=line)
    for event, n in sorted(events.items()):
        retrains.add(n, line=line, event=event)
    if not batch_records:
        return
    record = batch_records[-1]
    batch_drifted.add(bool(record.get("drifted")), line=line)
    n_drifted.add(len(record.get("drifted_features") or []), line=line)
    top = record.get("max_psi") if isinstance(record.get("max_psi"), dict) else {}
    max_psi.add(_number(top.get("value")), line=line)
    when.add(_timestamp(record.get("scored_at")) or _timestamp(record.get("recorded_at")), line=line)
    last.add(1, line=line, batch=str(record.get("batch_id", "")), model_version=str(record.get("model_version", "")))
    labelled = [r for r in batch_records if _number(r.get("auc")) is not None]
    if labelled:
        live_auc.add(_number(labelled[-1].get("auc")), line=line)

    report = _drift_report(reader, home, line, record)
    features = report.get("features") if isinstance(report, dict) else None
    if not isinstance(features, dict):
        return
    for name, finding in sorted(features.items()):
        if not isinstance(finding, dict):
            continue
        if finding.get("status") in ("ok", "missing"):
            detected.add(bool(finding.get("drifted")), line=line, feature=name)
        severity.add(_number(finding.get("severity")), line=line, feature=name)
        metrics = finding.get("metrics") if isinstance(finding.get("metrics"), dict) else {}
        for metric_name in DRIFT_METRICS:
            entry = metrics.get(metric_name)
            if isinstance(entry, dict):
                score.add(_number(entry.get("value")), line=line, feature=name, metric=metric_name)
                threshold.add(_number(entry.get("threshold")), line=line, feature=name, metric=metric_name)


def _drift_report(reader: _Reader, home: Path, line: str, record: dict) -> Any:
    """The JSON drift report a history record points to; found by name under this home's
    ``drift/<line>/reports/`` when the recorded path is not visible here."""
    recorded = record.get("report_path")
    if not recorded:
        return None
    path = Path(str(recorded))
    if not path.is_file():
        path = home / "drift" / line / "reports" / path.name
    if not path.is_file():
        return None
    return reader.json(path, line, "drift")


def _serving(m: Metrics, reader: _Reader, home: Path, store: Path, line: str) -> None:
    versions = m.family("factory_serving_versions", "gauge", "Live model versions in the serving store.")
    latest = m.family("factory_serving_latest_version", "gauge", "The version TF Serving serves (the highest live one).")
    pushes = m.family("factory_serving_pushes_total", "counter",
                      "Models pushed to the serving store (version numbers are never reused).")
    retired = m.family("factory_serving_retired_versions", "gauge", "Versions rolled back (moved to .retired/).")
    pushed = m.family("factory_serving_latest_push_timestamp_seconds", "gauge",
                      "When the served version was pushed (Unix time).")
    val_auc = m.family("factory_serving_model_val_auc", "gauge",
                       "Training validation AUC of the served model (assets.extra/factory_model.json).")
    eval_auc = m.family("factory_serving_model_auc", "gauge",
                        "Evaluation AUC of the served model (its training run's evaluation/result.json).")
    info = m.family("factory_serving_model_info", "gauge", "The served model: version, training run and verdict.")

    root = store / line
    live = _int_dirs(root)
    gone = _int_dirs(root / SERVING_RETIRED)
    versions.add(len(live), line=line)
    retired.add(len(gone), line=line)
    pushes.add(max(live + gone, default=0), line=line)
    if not live:
        return
    version = live[-1]
    path = root / str(version)
    latest.add(version, line=line)
    push = reader.json(path / "assets.extra" / SERVING_PUSH_INFO, line, "serving") \
        if (path / "assets.extra" / SERVING_PUSH_INFO).is_file() else None
    push = push if isinstance(push, dict) else {}
    try:
        pushed.add(_timestamp(push.get("pushed_at")) or path.stat().st_mtime, line=line)
    except OSError:
        pass
    model = reader.json(path / "assets.extra" / MODEL_INFO, line, "serving") \
        if (path / "assets.extra" / MODEL_INFO).is_file() else None
    model = model if isinstance(model, dict) else {}
    metrics = model.get("metrics") if isinstance(model.get("metrics"), dict) else {}
    val_auc.add(_number(metrics.get("val_auc")), line=line)
    run = str(push.get("training_run") or model.get("run_id") or "")
    if run:
        evaluation = config.training_root(line, home) / run / EVALUATION_RESULT
        if evaluation.is_file():
            result = reader.json(evaluation, line, "evaluation")
            overall = result.get("overall") if isinstance(result, dict) and isinstance(result.get("overall"), dict) else {}
            eval_auc.add(_number(overall.get("auc")), line=line)
    info.add(1, line=line, version=str(version), run=run, blessing=str(push.get("blessing", "")))


def _int_dirs(path: Path) -> list[int]:
    try:
        return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    except OSError:
        return []


# --------------------------------------------------------------------------- HTTP


def make_server(host: str, port: int, home: Path | None = None, store: Path | None = None) -> ThreadingHTTPServer:
    """An HTTP server answering ``GET /metrics`` (read fresh on each request) and ``GET /healthz``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    body, status, ctype = collect(home, store).render().encode(), 200, CONTENT_TYPE
                except Exception as err:  # noqa: BLE001 - a scrape error is an HTTP 500, not a crash
                    body, status, ctype = f"error: {err}\n".encode(), 500, "text/plain; charset=utf-8"
            elif path == "/healthz":
                body, status, ctype = b"ok\n", 200, "text/plain; charset=utf-8"
            else:
                body, status, ctype = b"not found: try /metrics\n", 404, "text/plain; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
            return  # one line per scrape is noise

    return ThreadingHTTPServer((host, port), Handler)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the factory's metrics for Prometheus.")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=9108, help="port to listen on (default: 9108)")
    parser.add_argument("--home", type=Path, default=None, help="factory home (default: $FACTORY_HOME)")
    parser.add_argument("--serving-store", type=Path, default=None,
                        help="TF Serving model store (default: $FACTORY_SERVING_STORE or <home>/serving)")
    parser.add_argument("--once", action="store_true", help="print the exposition once and exit")
    args = parser.parse_args(argv)
    if args.once:
        sys.stdout.write(collect(args.home, args.serving_store).render())
        return 0
    server = make_server(args.host, args.port, args.home, args.serving_store)
    signal.signal(signal.SIGTERM, _interrupt)  # `docker stop` sends SIGTERM: exit at once
    sys.stderr.write(f"factory metrics on http://{args.host}:{server.server_address[1]}/metrics\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
