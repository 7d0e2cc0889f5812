"""The factory's own metrics for Prometheus, read through the factory's catalog.

Design: an HTTP ``/metrics`` endpoint that Prometheus scrapes (pull), computed on each
scrape from the records the factory already writes under ``FACTORY_HOME``. Nothing is
pushed from tasks and nothing is kept in memory, so the records stay the single source
of truth: a restarted exporter loses nothing, a task that dies cannot leave a stale
pushed value behind (the Pushgateway's weak spot), and Prometheus's ``up`` says
whether the numbers are being read at all. :class:`FactoryCollector` is a
``prometheus_client`` custom collector: every record comes from the catalog's readers
(:mod:`pipelines.catalog.records`, :mod:`pipelines.catalog.ledger`, paths from
:mod:`pipelines.catalog.layout`); ``prometheus_client`` writes the exposition and serves it.

    python -m pipelines.observability.exporter --port 9108      # serve /metrics (and /healthz) on 127.0.0.1
    python -m pipelines.observability.exporter --once           # print the exposition once (textfile use)

What it reads, per product line (lines are the union of ``include/lines/*.yaml`` and
the lines that have records, :func:`pipelines.catalog.layout.lines_with_records`):

| source | catalog reader (writer) | metrics |
|---|---|---|
| batch ledger | ``ledger.all_records`` (``pipelines.catalog.ledger.update``: landing, the cleaning job, validation) | ``factory_batches``, ``factory_rows``, ``factory_rows_in``, ``factory_batch_rows``, ``factory_quarantine_rows``, ``factory_batch_cleaning_seconds``, ``factory_validation_*``, ``factory_batch_validation_success``, ``factory_ledger_last_update_timestamp_seconds`` |
| training runs | ``records.training_runs``: each run's ``result`` (``records.write_training_result``, the Horovod worker) | ``factory_training_runs``, ``factory_training_val_auc``, ``factory_training_samples_per_second``, ``factory_training_epochs_run``, ``factory_training_workers``, ``factory_training_last_run_timestamp_seconds``, ``factory_training_run_info`` |
| evaluations | ``records.training_runs``: each run's ``evaluation`` (``records.write_evaluation_result``, the gate) | ``factory_evaluations``, ``factory_evaluation_metric``, ``factory_evaluation_last_timestamp_seconds``, ``factory_evaluation_info`` |
| drift | ``records.read_drift_history`` and ``records.read_drift_report`` of its latest ``batch`` record (``pipelines.monitoring``) | ``factory_drift_checks``, ``factory_drift_batch_drifted``, ``factory_drift_features_drifted``, ``factory_drift_max_psi``, ``factory_drift_batch_auc``, ``factory_drift_score``, ``factory_drift_threshold``, ``factory_drift_detected``, ``factory_drift_severity``, ``factory_drift_retrain_events``, ``factory_drift_last_check_*`` |
| pushed models | ``records.serving_versions`` (live and ``.retired/``) and ``records.read_model_info`` of the served one (``pipelines.evaluation.serving``) | ``factory_serving_versions``, ``factory_serving_latest_version``, ``factory_serving_pushes_total``, ``factory_serving_retired_versions``, ``factory_serving_latest_push_timestamp_seconds``, ``factory_serving_model_val_auc``, ``factory_serving_model_auc``, ``factory_serving_model_info`` |
| the exporter | | ``factory_line_info``, ``factory_metrics_read_errors``, ``factory_metrics_scrape_duration_seconds`` |

"Latest" training run or evaluation is the result written last. Push events are
``factory_serving_pushes_total``, a true counter: the store never reuses a version
number, so the highest number ever given (live or retired) counts the pushes. The
serving store is ``FACTORY_SERVING_STORE`` (default ``<home>/serving``). Records that
cannot be read (half-written, malformed) are left out by the readers and counted in
``factory_metrics_read_errors{line,source}``; a scrape never fails because of one.

Long because of this table and one small reader class per source above: every metric
the factory exposes is declared in this one file, next to the record it comes from.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.simple_server import make_server as _wsgi_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from pipelines import config
from pipelines.catalog import layout, ledger, records
from pipelines.catalog.ledger import STATUSES

log = logging.getLogger(__name__)

DRIFT_METRICS = ("psi", "jsd", "linf")


# --------------------------------------------------------------------------- families


class _Families:
    """The families of one scrape, in the order they are declared."""

    def __init__(self) -> None:
        self.all: dict[str, Metric] = {}

    def _add(self, family: Metric) -> Metric:
        if family.name in self.all:
            raise ValueError(f"metric family {family.name} declared twice")
        self.all[family.name] = family
        return family

    def gauge(self, name: str, documentation: str, *labels: str) -> GaugeMetricFamily:
        return self._add(GaugeMetricFamily(name, documentation, labels=labels))

    def counter(self, name: str, documentation: str, *labels: str) -> CounterMetricFamily:
        """``name`` without ``_total``: the exposition appends it."""
        return self._add(CounterMetricFamily(name, documentation, labels=labels))


def _put(family: Metric, value: float | int | bool | None, *labels: Any) -> None:
    """Add a sample; ``None`` (a value the records do not have) or a string adds nothing."""
    if value is None or isinstance(value, str):
        return
    family.add_metric([str(v) for v in labels], float(value))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# --------------------------------------------------------------------------- reading, per source


class _Scrape:
    """What the readers of one scrape share: where to read, the unreadable records found
    so far (``(line, source) -> count``) and each line's training runs, read once."""

    def __init__(self, home: Path, store: Path | None) -> None:
        self.home = home
        self.store = store
        self.failed: dict[tuple[str, str], int] = {}
        self._runs: dict[str, list[records.TrainingRun]] = {}

    def count(self, line: str, source: str, n: int = 1) -> None:
        if n:
            self.failed[(line, source)] = self.failed.get((line, source), 0) + n

    def runs(self, line: str) -> list[records.TrainingRun]:
        """The line's training runs, newest first; an unreadable evaluation result counts
        against ``evaluation``, any other unreadable record of a run against ``training``."""
        if line not in self._runs:
            runs = records.training_runs(line, self.home, errors=[])
            for run in runs:
                for record in run.unreadable:
                    self.count(line, "evaluation" if record == "evaluation" else "training")
            self._runs[line] = runs
        return self._runs[line]


class _Ledger:
    source = "ledger"

    def __init__(self, fams: _Families) -> None:
        self.batches = fams.gauge("factory_batches", "Batches in the ledger by status.", "line", "status")
        self.rows = fams.gauge("factory_rows", "Rows of all cleaned batches by outcome (clean, quarantined, "
                               "duplicate_removed).", "line", "outcome")
        self.rows_in = fams.gauge("factory_rows_in", "Rows read by the cleaning job, all cleaned batches.", "line")
        self.batch_rows = fams.gauge("factory_batch_rows", "Rows of one cleaned batch by outcome (in, clean, "
                                     "quarantined, duplicate_removed).", "line", "batch", "outcome")
        self.reasons = fams.gauge("factory_quarantine_rows", "Quarantined rows by reason, all cleaned batches.",
                                  "line", "reason")
        self.seconds = fams.gauge("factory_batch_cleaning_seconds", "Seconds the cleaning job took for a batch.",
                                  "line", "batch")
        self.vbatches = fams.gauge("factory_validation_batches",
                                   "Batches with a validation verdict, by outcome (passed, failed).", "line", "outcome")
        self.ratio = fams.gauge("factory_validation_pass_ratio",
                                "Share of validated-or-rejected batches that passed their expectation suite.", "line")
        self.expectations = fams.gauge("factory_validation_expectations",
                                       "Expectations evaluated over all verdicts, by result (successful, failed).",
                                       "line", "result")
        self.bsuccess = fams.gauge("factory_batch_validation_success",
                                   "1 if the batch passed its expectation suite, 0 if it failed.", "line", "batch")
        self.updated = fams.gauge("factory_ledger_last_update_timestamp_seconds",
                                  "When the line's ledger last changed (Unix time).", "line")

    def read(self, scrape: _Scrape, line: str) -> None:
        errors: list[str] = []
        batch_records = ledger.all_records(layout.line_paths(line, scrape.home), errors=errors)
        scrape.count(line, self.source, len(errors))
        status_counts = dict.fromkeys(STATUSES, 0)
        totals = {"clean": 0.0, "quarantined": 0.0, "duplicate_removed": 0.0}
        total_in = 0.0
        by_reason: dict[str, float] = {}
        passed = rejected = 0
        evaluated = successful = 0.0
        last: float | None = None
        for record in batch_records:
            batch = record.batch_id
            if record.status in status_counts:
                status_counts[record.status] += 1
            ts = _timestamp(record.updated_at)
            if ts is not None:
                last = ts if last is None else max(last, ts)
            cleaning = record.cleaning
            if cleaning is not None:
                values = {"in": cleaning.rows_in, "clean": cleaning.rows_clean,
                          "quarantined": cleaning.rows_quarantined, "duplicate_removed": cleaning.duplicates_removed}
                for outcome, value in values.items():
                    _put(self.batch_rows, value, line, batch, outcome)
                    if value is None:
                        continue
                    if outcome == "in":
                        total_in += value
                    else:
                        totals[outcome] += value
                for reason, n in cleaning.quarantine_reasons.items():
                    by_reason[reason] = by_reason.get(reason, 0.0) + n
                _put(self.seconds, cleaning.seconds, line, batch)
            validation = record.validation
            if validation is not None and validation.success is not None:
                ok = bool(validation.success)
                passed += ok
                rejected += not ok
                _put(self.bsuccess, ok, line, batch)
                evaluated += validation.evaluated or 0
                successful += validation.successful or 0
        for status, n in status_counts.items():
            _put(self.batches, n, line, status)
        for outcome, value in totals.items():
            _put(self.rows, value, line, outcome)
        _put(self.rows_in, total_in, line)
        for reason, n in sorted(by_reason.items()):
            _put(self.reasons, n, line, reason)
        _put(self.vbatches, passed, line, "passed")
        _put(self.vbatches, rejected, line, "failed")
        if passed + rejected:
            _put(self.ratio, passed / (passed + rejected), line)
        _put(self.expectations, successful, line, "successful")
        _put(self.expectations, max(evaluated - successful, 0.0), line, "failed")
        _put(self.updated, last, line)


class _Training:
    source = "training"

    def __init__(self, fams: _Families) -> None:
        self.runs = fams.gauge("factory_training_runs", "Training runs that finished (have a result).", "line")
        self.auc = fams.gauge("factory_training_val_auc", "Validation AUC of the latest finished training run.", "line")
        self.speed = fams.gauge("factory_training_samples_per_second",
                                "Training throughput of the latest run, all Horovod workers together.", "line")
        self.epochs = fams.gauge("factory_training_epochs_run", "Epochs the latest training run ran.", "line")
        self.workers = fams.gauge("factory_training_workers", "Horovod workers of the latest training run.", "line")
        self.when = fams.gauge("factory_training_last_run_timestamp_seconds",
                               "When the latest training run wrote its result (Unix time).", "line")
        self.info = fams.gauge("factory_training_run_info", "The latest finished training run of the line.",
                               "line", "run")

    def read(self, scrape: _Scrape, line: str) -> None:
        finished = [r for r in scrape.runs(line) if r.result is not None]
        _put(self.runs, len(finished), line)
        if not finished:
            return
        latest = max(finished, key=lambda r: (r.result_mtime or 0.0, r.run))
        result = latest.result
        _put(self.auc, result.val_auc, line)
        _put(self.speed, result.samples_per_s, line)
        _put(self.epochs, result.epochs_run, line)
        _put(self.workers, result.workers, line)
        _put(self.when, latest.result_mtime, line)
        _put(self.info, 1, line, latest.run)


class _Evaluation:
    source = "evaluation"

    def __init__(self, fams: _Families) -> None:
        self.verdicts = fams.gauge("factory_evaluations", "Evaluated candidate models by the gate's verdict "
                                   "(BLESSED, NOT_BLESSED, FORCED).", "line", "blessing")
        self.metric = fams.gauge("factory_evaluation_metric", "Overall metric of the latest evaluated candidate "
                                 "(TFMA, held-out eval rows), e.g. auc.", "line", "metric")
        self.when = fams.gauge("factory_evaluation_last_timestamp_seconds", "When the latest evaluation finished.",
                               "line")
        self.info = fams.gauge("factory_evaluation_info", "The latest evaluated training run and its verdict.",
                               "line", "run", "blessing")

    def read(self, scrape: _Scrape, line: str) -> None:
        evaluated = [r for r in scrape.runs(line) if r.evaluation is not None]
        counts: dict[str, int] = {}
        for run in evaluated:
            verdict = run.evaluation.blessing or "UNKNOWN"
            counts[verdict] = counts.get(verdict, 0) + 1
        for verdict, n in sorted(counts.items()):
            _put(self.verdicts, n, line, verdict)
        if not evaluated:
            return
        latest = max(evaluated, key=lambda r: (r.evaluation_mtime or 0.0, r.run))
        result = latest.evaluation
        for name, value in sorted(result.overall.items()):
            _put(self.metric, value, line, name)
        _put(self.when, latest.evaluation_mtime, line)
        _put(self.info, 1, line, result.training_run or latest.run, _text(result.blessing))


class _Drift:
    source = "drift"

    def __init__(self, fams: _Families) -> None:
        self.checks = fams.gauge("factory_drift_checks", "Batches scored for drift (history records of kind batch).",
                                 "line")
        self.batch_drifted = fams.gauge("factory_drift_batch_drifted", "1 if the latest scored batch drifted.", "line")
        self.n_drifted = fams.gauge("factory_drift_features_drifted",
                                    "Features that drifted in the latest scored batch.", "line")
        self.max_psi = fams.gauge("factory_drift_max_psi", "Largest PSI of any feature in the latest scored batch.",
                                  "line")
        self.live_auc = fams.gauge("factory_drift_batch_auc",
                                   "AUC of the served model on the latest scored batch that had labels.", "line")
        self.when = fams.gauge("factory_drift_last_check_timestamp_seconds", "When the latest batch was scored.",
                               "line")
        self.last = fams.gauge("factory_drift_last_check_info",
                               "The latest scored batch and the model it was scored against.",
                               "line", "batch", "model_version")
        self.retrains = fams.gauge("factory_drift_retrain_events",
                                   "Drift retrain records by event (pending, running, ...).", "line", "event")
        self.score = fams.gauge("factory_drift_score",
                                "Drift metric (psi, jsd, linf) of a feature in the latest scored batch.",
                                "line", "feature", "metric")
        self.threshold = fams.gauge("factory_drift_threshold", "Threshold the feature's drift metric is held to.",
                                    "line", "feature", "metric")
        self.detected = fams.gauge("factory_drift_detected", "1 if the latest scored batch's feature drifted.",
                                   "line", "feature")
        self.severity = fams.gauge("factory_drift_severity", "Largest metric/threshold ratio of a feature.",
                                   "line", "feature")

    def read(self, scrape: _Scrape, line: str) -> None:
        skipped: list[str] = []
        history = records.read_drift_history(line, scrape.home, skipped=skipped)
        scrape.count(line, self.source, len(skipped))
        batches = [r for r in history if r.kind == "batch"]
        events: dict[str, int] = {}
        for record in history:
            if record.kind == "retrain":
                event = record.event or "unknown"
                events[event] = events.get(event, 0) + 1
        if not history and not layout.drift_history_path(line, scrape.home).is_file():
            return  # a line that was never scored has no drift series at all
        _put(self.checks, len(batches), line)
        for event, n in sorted(events.items()):
            _put(self.retrains, n, line, event)
        if not batches:
            return
        record = batches[-1]
        _put(self.batch_drifted, bool(record.drifted), line)
        _put(self.n_drifted, len(record.drifted_features), line)
        _put(self.max_psi, _number((record.max_psi or {}).get("value")), line)
        _put(self.when, _timestamp(record.scored_at) or _timestamp(record.recorded_at), line)
        _put(self.last, 1, line, _text(record.batch_id), _text(record.model_version))
        labelled = [r for r in batches if r.auc is not None]
        if labelled:
            _put(self.live_auc, labelled[-1].auc, line)
        try:
            report = records.read_drift_report(record, line, scrape.home)
        except records.RecordError as err:
            log.warning("drift report of %s: %s", line, err)
            scrape.count(line, self.source)
            return
        features = report.get("features") if isinstance(report, dict) else None
        if not isinstance(features, dict):
            return
        for name, finding in sorted(features.items()):
            if not isinstance(finding, dict):
                continue
            if finding.get("status") in ("ok", "missing"):
                _put(self.detected, bool(finding.get("drifted")), line, name)
            _put(self.severity, _number(finding.get("severity")), line, name)
            metrics = finding.get("metrics") if isinstance(finding.get("metrics"), dict) else {}
            for metric_name in DRIFT_METRICS:
                entry = metrics.get(metric_name)
                if isinstance(entry, dict):
                    _put(self.score, _number(entry.get("value")), line, name, metric_name)
                    _put(self.threshold, _number(entry.get("threshold")), line, name, metric_name)


class _Serving:
    source = "serving"

    def __init__(self, fams: _Families) -> None:
        self.versions = fams.gauge("factory_serving_versions", "Live model versions in the serving store.", "line")
        self.latest = fams.gauge("factory_serving_latest_version",
                                 "The version TF Serving serves (the highest live one).", "line")
        self.pushes = fams.counter("factory_serving_pushes",  # exposed as factory_serving_pushes_total
                                   "Models pushed to the serving store (version numbers are never reused).", "line")
        self.retired = fams.gauge("factory_serving_retired_versions", "Versions rolled back (moved to .retired/).",
                                  "line")
        self.pushed = fams.gauge("factory_serving_latest_push_timestamp_seconds",
                                 "When the served version was pushed (Unix time).", "line")
        self.val_auc = fams.gauge("factory_serving_model_val_auc",
                                  "Training validation AUC of the served model (assets.extra/factory_model.json).",
                                  "line")
        self.eval_auc = fams.gauge("factory_serving_model_auc",
                                   "Evaluation AUC of the served model (its training run's evaluation result).", "line")
        self.info = fams.gauge("factory_serving_model_info", "The served model: version, training run and verdict.",
                               "line", "version", "run", "blessing")

    def read(self, scrape: _Scrape, line: str) -> None:
        errors: list[str] = []
        versions = records.serving_versions(line, scrape.home, errors=errors, store=scrape.store)
        scrape.count(line, self.source, len(errors))
        live = [v for v in versions if not v.retired]
        _put(self.versions, len(live), line)
        _put(self.retired, len(versions) - len(live), line)
        _put(self.pushes, max((v.version for v in versions), default=0), line)
        served = next((v for v in versions if v.in_serving), None)
        if served is None:
            return
        path = Path(served.path)
        _put(self.latest, served.version, line)
        push = served.push or records.PushInfo()
        pushed_at = _timestamp(push.pushed_at)
        if pushed_at is None:
            try:
                pushed_at = path.stat().st_mtime
            except OSError:
                pushed_at = None
        _put(self.pushed, pushed_at, line)
        try:
            model = records.read_model_info(path)
        except records.RecordError as err:
            log.warning("model info of %s version %s: %s", line, served.version, err)
            scrape.count(line, self.source)
            model = None
        model = model if isinstance(model, dict) else {}
        metrics = model.get("metrics") if isinstance(model.get("metrics"), dict) else {}
        _put(self.val_auc, _number(metrics.get("val_auc")), line)
        run = served.training_run or _text(model.get("run_id"))
        if run:
            # a push names the run's folder, a model's info its run id
            by_folder = {r.run: r for r in scrape.runs(line)}
            found = by_folder.get(run) or by_folder.get(layout.run_folder_name(run))
            if found is not None and found.evaluation is not None:
                _put(self.eval_auc, found.evaluation.overall.get("auc"), line)
        _put(self.info, 1, line, served.version, run, _text(push.blessing))


_SOURCES = (_Ledger, _Training, _Evaluation, _Drift, _Serving)


# --------------------------------------------------------------------------- the collector


def declared_lines(include: Path | None = None) -> list[str]:
    """The lines declared in ``include/lines/*.yaml`` (by file name: a broken spec still counts)."""
    lines_dir = (include or config.include_dir()) / "lines"
    return sorted(p.stem for p in lines_dir.glob("*.yaml")) if lines_dir.is_dir() else []


class FactoryCollector:
    """A ``prometheus_client`` collector: every factory metric, read through the catalog on
    each :meth:`collect` (each scrape).

    ``home``: the factory home (default ``FACTORY_HOME``); ``store``: the serving store
    (default ``FACTORY_SERVING_STORE`` or ``<home>/serving``); ``lines``: only these lines
    (default: declared ones and those with records); ``include``: the folder that holds
    ``lines/*.yaml``."""

    def __init__(self, home: Path | None = None, store: Path | None = None,
                 lines: Iterable[str] | None = None, include: Path | None = None) -> None:
        self.home = Path(home) if home is not None else None
        self.store = Path(store) if store is not None else None
        self.lines = sorted(lines) if lines is not None else None
        self.include = Path(include) if include is not None else None

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        home = self.home if self.home is not None else config.factory_home()
        scrape = _Scrape(home, self.store)
        fams = _Families()
        read_errors = fams.gauge("factory_metrics_read_errors",
                                 "Records that could not be read in this scrape (half-written or malformed).",
                                 "line", "source")
        line_info = fams.gauge("factory_line_info", "A declared or active product line.", "line")
        lines = self.lines if self.lines is not None else sorted(
            set(declared_lines(self.include)) | set(layout.lines_with_records(home, self.store)))
        for line in lines:
            _put(line_info, 1, line)
        for source in [cls(fams) for cls in _SOURCES]:
            for line in lines:
                try:
                    source.read(scrape, line)
                except (OSError, ValueError) as err:  # a folder that cannot be listed, a file that cannot be read
                    log.warning("%s records of %s: %s", source.source, line, err)
                    scrape.count(line, source.source)
        for (line, source_name), n in sorted(scrape.failed.items()):
            _put(read_errors, n, line, source_name)
        scrape_seconds = fams.gauge("factory_metrics_scrape_duration_seconds",
                                    "Seconds spent reading the factory's records for this scrape.")
        _put(scrape_seconds, time.monotonic() - started)
        yield from fams.all.values()


def registry(home: Path | None = None, store: Path | None = None,
             lines: Iterable[str] | None = None, include: Path | None = None) -> CollectorRegistry:
    """A registry that holds only the factory's collector (no process or platform metrics)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FactoryCollector(home, store, lines, include))
    return reg


def collect(home: Path | None = None, store: Path | None = None,
            lines: Iterable[str] | None = None, include: Path | None = None) -> list[Metric]:
    """Every factory metric family, read now through the catalog."""
    return list(FactoryCollector(home, store, lines, include).collect())


def exposition(home: Path | None = None, store: Path | None = None,
               lines: Iterable[str] | None = None, include: Path | None = None) -> str:
    """The metrics in the Prometheus text format (0.0.4), as ``--once`` prints them."""
    return generate_latest(registry(home, store, lines, include)).decode()


# --------------------------------------------------------------------------- HTTP


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
        return  # one line per scrape is noise


def make_app(reg: CollectorRegistry) -> Callable:
    """The WSGI app: ``/metrics`` (read fresh on each request, by ``prometheus_client``),
    ``/healthz``, 404 elsewhere. A scrape that fails is logged here and answered with a
    bare 500: the client never sees the error's text."""
    metrics = make_wsgi_app(reg)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            try:
                body = metrics(environ, start_response)
            except Exception:  # noqa: BLE001 - a scrape error is an HTTP 500, not a crash
                log.exception("scrape failed")
                start_response("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"scrape failed; see the exporter's log\n"]
            return body
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics\n"]

    return app


def make_server(host: str, port: int, home: Path | None = None, store: Path | None = None,
                lines: Iterable[str] | None = None, include: Path | None = None) -> WSGIServer:
    """A threading HTTP server for :func:`make_app` over a registry holding only the factory's
    collector (``port`` 0: any free port, see ``server.server_address``)."""
    return _wsgi_server(host, port, make_app(registry(home, store, lines, include)),
                        server_class=_Server, handler_class=_QuietHandler)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the factory's metrics for Prometheus.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=9108, help="port to listen on (default: 9108)")
    parser.add_argument("--home", type=Path, default=None, help="factory home (default: $FACTORY_HOME)")
    parser.add_argument("--serving-store", type=Path, default=None,
                        help="TF Serving model store (default: $FACTORY_SERVING_STORE or <home>/serving)")
    parser.add_argument("--once", action="store_true", help="print the exposition once and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.once:
        sys.stdout.write(exposition(args.home, args.serving_store))
        return 0
    server = make_server(args.host, args.port, args.home, args.serving_store)
    signal.signal(signal.SIGTERM, _interrupt)  # `docker stop` sends SIGTERM: exit at once
    log.info("factory metrics on http://%s:%s/metrics", args.host, server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
