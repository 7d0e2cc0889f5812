"""pipelines.observability.exporter: the factory's metrics from its catalog, for Prometheus.

The records are written by the factory's own writers (the batch ledger, the training and
evaluation result writers, the serving store's publish and rollback, the drift history and
report writers); the exposition is read back with prometheus_client's parser (and with
`promtool check metrics` where promtool is installed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from pipelines import storage
from pipelines.catalog import layout, ledger, records
from pipelines.evaluation import serving
from pipelines.monitoring import report as report_mod
from pipelines.observability import exporter
from pipelines.observability.exporter import FactoryCollector, collect, exposition, make_server

LINE = "credit_risk"

# ----------------------------------------------------------------------------- reading the exposition


class Scrape:
    """One exposition, parsed by prometheus_client: families by name and every sample by
    (sample name, labels). A series that appears twice is refused (Prometheus would)."""

    def __init__(self, text: str, parse=text_string_to_metric_families) -> None:
        self.text = text
        self.families = {}
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in parse(text):
            assert family.name not in self.families, f"family {family.name} appears twice"
            self.families[family.name] = family
            for s in family.samples:
                key = (s.name, frozenset(s.labels.items()))
                assert key not in self.samples, f"duplicate series {s.name}{s.labels}"
                self.samples[key] = s.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for n, labels in self.samples if n == name]


def scrape(home: Path, store: Path, **kwargs) -> Scrape:
    return Scrape(exposition(home, store, **kwargs))


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# ----------------------------------------------------------------------------- a factory home


class Clock:
    """The ledger's and the serving store's clock, set by the test."""

    now = "2026-11-23T00:00:00+00:00"

    def __call__(self) -> str:
        return self.now


def saved_model(folder: Path, info: dict) -> Path:
    """A stand-in for an exported SavedModel: the files the serving store and the exporter
    look at (the export itself needs TensorFlow)."""
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")
    storage.write_json_atomic(layout.model_info_path(folder), info)
    return folder


def batch(paths: layout.LinePaths, clock: Clock, batch_id: str, at: str, cleaning: dict | None = None,
          validation: dict | None = None) -> None:
    """A batch through the ingest stages, as landing, the cleaning job and validation record it."""
    clock.now = at
    ledger.update(paths, batch_id, "landed", status=ledger.LANDED, landed_at=at)
    if cleaning is not None:
        ledger.update(paths, batch_id, "cleaned", status=ledger.CLEANED, cleaning=cleaning)
    if validation is not None:
        ok = validation["success"]
        ledger.update(paths, batch_id, "validated" if ok else "validation failed",
                      status=ledger.VALIDATED if ok else ledger.FAILED, validation=validation)


def training_run(home: Path, run_id: str, result: dict | None, mtime: float | None = None) -> Path:
    run = layout.run_dir(LINE, run_id, home)
    records.write_manifest(run, {"line": LINE, "run_id": run_id})
    if result is not None:
        records.write_training_result(run, result)
        os.utime(layout.training_result_path(run), (mtime, mtime))
    return run


def evaluation(run: Path, result: dict, mtime: float) -> None:
    records.write_evaluation_result(run, result)
    os.utime(layout.evaluation_result_path(run), (mtime, mtime))


@pytest.fixture
def factory(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A factory home and serving store as the factory's stages leave them."""
    home, store = tmp_path / "home", tmp_path / "serving"
    clock = Clock()
    monkeypatch.setattr(ledger, "now", clock)
    monkeypatch.setattr(serving, "_now", clock)
    # the batch ledger: validated, rejected by validation, landed only
    paths = layout.line_paths(LINE, home)
    batch(paths, clock, "slice-1", "2026-11-23T10:00:00+00:00",
          cleaning={"rows_in": 2465, "rows_clean": 2455, "rows_quarantined": 7, "duplicates_removed": 3,
                    "quarantine_reasons": {"out_of_range:int_rate": 5, 'unparseable:"term"\n': 2}, "seconds": 4.5},
          validation={"success": True, "evaluated": 20, "successful": 20, "failed": []})
    batch(paths, clock, "slice-2", "2026-11-23T11:00:00+00:00",
          cleaning={"rows_in": 100, "rows_clean": 90, "rows_quarantined": 10, "duplicates_removed": 0,
                    "quarantine_reasons": {"out_of_range:int_rate": 10}, "seconds": 2},
          validation={"success": False, "evaluated": 20, "successful": 17, "failed": ["a", "b", "c"]})
    batch(paths, clock, "slice-3", "2026-11-23T12:00:00+00:00")
    # training runs: two finished, one still running (a manifest, no result yet)
    old = training_run(home, "manual_1", {"val_auc": 0.61, "samples_per_s": 900.0, "epochs_run": 3, "workers": 1},
                       1_700_000_000)
    new = training_run(home, "manual_2", {"val_auc": 0.7125, "samples_per_s": 12345.5, "epochs_run": 7,
                                          "workers": 2}, 1_800_000_000)
    training_run(home, "running", None)
    # the evaluation gate's results: one not blessed, one blessed and pushed
    evaluation(old, {"line": LINE, "training_run": "manual_1", "blessing": "NOT_BLESSED", "overall": {"auc": 0.6}},
               1_700_000_100)
    evaluation(new, {"line": LINE, "training_run": "manual_2", "blessing": "BLESSED", "pushed": True,
                     "serving": {"version": 3}, "overall": {"auc": 0.705, "pr_auc": 0.21, "example_count": 2400}},
               1_800_000_100)
    # drift: the JSON report of the latest scored batch and the history
    report_mod.write_json_report({"batch_id": "slice-2", "drifted": True, "features": {
        "int_rate": {"status": "ok", "drifted": True, "severity": 1.5, "metrics": {
            "psi": {"value": 0.3, "threshold": 0.2, "exceeded": True},
            "jsd": {"value": 0.05, "threshold": 0.1, "exceeded": False},
            "linf": {"value": 0.12, "threshold": None, "exceeded": False}, "chi2": {"statistic": 9.0}}},
        "term": {"status": "ok", "drifted": False, "severity": 0.1, "metrics": {
            "psi": {"value": 0.01, "threshold": 0.2, "exceeded": False}}},
        "emp_length": {"status": "ignored", "drifted": False}}}, layout.drift_report_paths(LINE, "slice-2", home)[0])
    for record in (
        {"kind": "batch", "line": LINE, "batch_id": "slice-1", "model_version": "2",
         "scored_at": "2026-11-20T00:00:00+00:00", "drifted": False, "drifted_features": [],
         "max_psi": {"feature": "term", "value": 0.02}, "auc": 0.71, "report_path": "/elsewhere/slice-1.json"},
        {"kind": "retrain", "line": LINE, "event": "pending", "episode_id": "e1", "run_id": "r1"},
        {"kind": "batch", "line": LINE, "batch_id": "slice-2", "model_version": "3",
         "scored_at": "2026-11-23T00:00:00+00:00", "drifted": True,
         "drifted_features": [{"feature": "int_rate", "severity": 1.5, "by": "psi 0.3 >= 0.2"}],
         "max_psi": {"feature": "int_rate", "value": 0.3}, "auc": None,
         # written in another container: found by name under this home
         "report_path": "/opt/factory/home/drift/credit_risk/reports/slice-2.json"},
    ):
        records.append_drift_record(LINE, record, home)
    # the serving store: 1 and 2 pushed, 2 rolled back, 3 pushed; a crashed push's leftover
    base = layout.serving_base(LINE, home, store)
    first = saved_model(tmp_path / "models" / "manual_1", {"line": LINE, "run_id": "manual_1",
                                                            "metrics": {"val_auc": 0.61}})
    second = saved_model(tmp_path / "models" / "manual_2", {"line": LINE, "run_id": "manual_2",
                                                             "metrics": {"val_auc": 0.7125}})
    clock.now = "2026-11-22T09:00:00+00:00"
    serving.publish(first, base, {"training_run": "manual_1", "blessing": "BLESSED"})
    serving.publish(first, base, {"training_run": "manual_1", "blessing": "FORCED"})
    serving.retire_latest(base, "rolled back in a test")
    clock.now = "2026-11-23T12:30:00+00:00"
    assert serving.publish(second, base, {"training_run": "manual_2", "blessing": "BLESSED"})[0] == 3
    tempfile.mkdtemp(prefix=layout.INCOMING_PREFIX, dir=base)
    return home, store


# ----------------------------------------------------------------------------- tests


def test_metrics_from_every_source(factory):
    home, store = factory
    m = scrape(home, store)
    L = {"line": LINE}
    # ledger: counts per line and per batch, reasons, verdicts
    assert m("factory_batches", **L, status="validated") == 1
    assert m("factory_batches", **L, status="failed") == 1
    assert m("factory_batches", **L, status="landed") == 1
    assert m("factory_batches", **L, status="cleaned") == 0
    assert m("factory_rows", **L, outcome="clean") == 2545
    assert m("factory_rows", **L, outcome="quarantined") == 17
    assert m("factory_rows", **L, outcome="duplicate_removed") == 3
    assert m("factory_rows_in", **L) == 2565
    assert m("factory_batch_rows", **L, batch="slice-1", outcome="in") == 2465
    assert m("factory_quarantine_rows", **L, reason="out_of_range:int_rate") == 15
    assert m("factory_quarantine_rows", **L, reason='unparseable:"term"\n') == 2
    assert m("factory_validation_batches", **L, outcome="passed") == 1
    assert m("factory_validation_pass_ratio", **L) == 0.5
    assert m("factory_validation_expectations", **L, result="failed") == 3
    assert m("factory_batch_validation_success", **L, batch="slice-2") == 0
    assert m("factory_batch_cleaning_seconds", **L, batch="slice-1") == 4.5
    assert m("factory_ledger_last_update_timestamp_seconds", **L) == 1795435200
    # training: the run that wrote its result last
    assert m("factory_training_runs", **L) == 2
    assert m("factory_training_val_auc", **L) == 0.7125
    assert m("factory_training_samples_per_second", **L) == 12345.5
    assert m("factory_training_epochs_run", **L) == 7
    assert m("factory_training_workers", **L) == 2
    assert m("factory_training_last_run_timestamp_seconds", **L) == 1_800_000_000
    assert m("factory_training_run_info", **L, run="manual_2") == 1
    # evaluations: verdicts of all, metrics of the latest
    assert m("factory_evaluations", **L, blessing="BLESSED") == 1
    assert m("factory_evaluations", **L, blessing="NOT_BLESSED") == 1
    assert m("factory_evaluation_metric", **L, metric="auc") == 0.705
    assert m("factory_evaluation_metric", **L, metric="example_count") == 2400
    assert m("factory_evaluation_last_timestamp_seconds", **L) == 1_800_000_100
    assert m("factory_evaluation_info", **L, run="manual_2", blessing="BLESSED") == 1
    # drift: the latest scored batch and its report
    assert m("factory_drift_checks", **L) == 2
    assert m("factory_drift_batch_drifted", **L) == 1
    assert m("factory_drift_features_drifted", **L) == 1
    assert m("factory_drift_max_psi", **L) == 0.3
    assert m("factory_drift_batch_auc", **L) == 0.71  # the latest batch that had labels
    assert m("factory_drift_last_check_timestamp_seconds", **L) == 1795392000
    assert m("factory_drift_last_check_info", **L, batch="slice-2", model_version="3") == 1
    assert m("factory_drift_retrain_events", **L, event="pending") == 1
    assert m("factory_drift_score", **L, feature="int_rate", metric="psi") == 0.3
    assert m("factory_drift_score", **L, feature="int_rate", metric="linf") == 0.12
    assert m("factory_drift_threshold", **L, feature="int_rate", metric="psi") == 0.2
    assert all(s.get("metric") != "linf" for s in m.series("factory_drift_threshold"))
    assert m("factory_drift_detected", **L, feature="int_rate") == 1
    assert m("factory_drift_detected", **L, feature="term") == 0
    assert all(s["feature"] != "emp_length" for s in m.series("factory_drift_detected"))
    assert m("factory_drift_severity", **L, feature="int_rate") == 1.5
    # serving: integer version folders only; pushes count retired versions too
    assert m("factory_serving_versions", **L) == 2
    assert m("factory_serving_latest_version", **L) == 3
    assert m("factory_serving_pushes_total", **L) == 3
    assert m("factory_serving_retired_versions", **L) == 1
    assert m("factory_serving_latest_push_timestamp_seconds", **L) == 1795437000
    assert m("factory_serving_model_val_auc", **L) == 0.7125
    assert m("factory_serving_model_auc", **L) == 0.705
    assert m("factory_serving_model_info", **L, version="3", run="manual_2", blessing="BLESSED") == 1
    # declared lines without records still show up, at zero
    assert m("factory_line_info", line="employment") == 1
    assert m("factory_rows", line="employment", outcome="clean") == 0
    assert m("factory_serving_versions", line="employment") == 0
    assert m.series("factory_metrics_read_errors") == []
    assert m("factory_metrics_scrape_duration_seconds") >= 0
    # one counter, exposed with its _total name; everything else a gauge
    assert {n: f.type for n, f in m.families.items() if f.type != "gauge"} == {"factory_serving_pushes": "counter"}
    assert "# TYPE factory_serving_pushes_total counter\n" in m.text


def test_an_empty_factory_is_a_valid_exposition(tmp_path):
    m = scrape(tmp_path / "nothing", tmp_path / "none")
    assert m("factory_batches", line="credit_risk", status="validated") == 0
    assert m("factory_serving_pushes_total", line="credit_risk") == 0
    assert "factory_validation_pass_ratio" in m.families and not m.families["factory_validation_pass_ratio"].samples
    assert "factory_drift_checks" in m.families and not m.series("factory_drift_checks")


def test_the_catalog_decides_which_lines_are_read(factory, tmp_path):
    home, store = factory
    m = scrape(home, store, lines=["employment"])
    assert m.series("factory_line_info") == [{"line": "employment"}]
    include = tmp_path / "include"
    (include / "lines").mkdir(parents=True)
    (include / "lines" / "fraud.yaml").write_text("name: fraud\n")
    m = scrape(home, store, include=include)
    assert {s["line"] for s in m.series("factory_line_info")} == {LINE, "fraud"}
    # a line whose only records are in the serving store is found there
    serving.publish(saved_model(tmp_path / "m", {"run_id": "r"}), layout.serving_base("churn", home, store), {})
    m = scrape(home, store)
    assert m("factory_line_info", line="churn") == 1
    assert m("factory_serving_latest_version", line="churn") == 1


def test_unreadable_records_are_counted_not_fatal(factory):
    home, store = factory
    (home / "state" / LINE / "slice-4.json").write_text('{"batch_id": "slice-4", "sta')  # half-written by hand
    history = layout.drift_history_path(LINE, home)
    with open(history, "a") as fh:
        fh.write("not a record\n")  # damaged: counted and passed over
    records.append_drift_record(LINE, {"kind": "retrain", "line": LINE, "event": "running", "episode_id": "e1"}, home)
    with open(history, "a") as fh:
        fh.write('{"kind": "batch", "batch_id": "slice-3", "drif')  # being appended: not an error
    m = scrape(home, store)
    assert m("factory_metrics_read_errors", line=LINE, source="ledger") == 1
    assert m("factory_metrics_read_errors", line=LINE, source="drift") == 1
    # the rest is still read: the other batches, the last complete drift records
    assert m("factory_batches", line=LINE, status="validated") == 1
    assert m("factory_drift_score", line=LINE, feature="int_rate", metric="psi") == 0.3
    assert m("factory_drift_retrain_events", line=LINE, event="running") == 1
    assert m("factory_drift_checks", line=LINE) == 2


def test_each_unreadable_record_counts_against_its_source(factory):
    home, store = factory
    runs = {r.run: Path(r.path) for r in records.training_runs(LINE, home)}
    layout.training_result_path(runs["manual_1"]).write_text("{")
    layout.evaluation_result_path(runs["manual_1"]).write_text("[]")
    version_1 = Path(next(v.path for v in records.serving_versions(LINE, home, store=store) if v.version == 1))
    layout.push_info_path(version_1).write_text('{"version": "one"}')
    report = layout.drift_report_paths(LINE, "slice-2", home)[0]
    report.write_text("{")
    m = scrape(home, store)
    for source in ("training", "evaluation", "serving", "drift"):
        assert m("factory_metrics_read_errors", line=LINE, source=source) == 1, source
    assert m("factory_training_runs", line=LINE) == 1
    assert m("factory_evaluations", line=LINE, blessing="BLESSED") == 1
    assert all(s["blessing"] != "NOT_BLESSED" for s in m.series("factory_evaluations"))
    assert m("factory_serving_versions", line=LINE) == 2
    assert m("factory_drift_checks", line=LINE) == 2
    assert m.series("factory_drift_score") == []
    # the served model's own records, unreadable
    served = Path(next(v.path for v in records.serving_versions(LINE, home, [], store=store) if v.in_serving))
    layout.model_info_path(served).write_text("{")
    layout.push_info_path(served).write_text("{")
    m = scrape(home, store)
    assert m("factory_metrics_read_errors", line=LINE, source="serving") == 3
    assert m("factory_serving_latest_version", line=LINE) == 3
    assert m("factory_serving_latest_push_timestamp_seconds", line=LINE) == served.stat().st_mtime
    assert m.series("factory_serving_model_val_auc") == []


def test_a_rollback_and_a_fresh_line(tmp_path):
    """A line with three pushes and a rollback, scored once, nothing else."""
    home, store = tmp_path / "home", tmp_path / "serving"
    model = saved_model(tmp_path / "model", {"run_id": "run-a"})
    base = layout.serving_base("employment", home, store)
    for run in ("run-a", "run-b", "run-c"):
        serving.publish(model, base, {"training_run": run, "blessing": "BLESSED"})
    serving.retire_latest(base, "rolled back in a test")
    report = {"features": {"AGEP": {"status": "ok", "drifted": True, "severity": 2.0,
                                    "metrics": {"psi": {"value": 0.4, "threshold": 0.2, "exceeded": True}}}}}
    path = report_mod.write_json_report(report, layout.drift_report_paths("employment", "2018", home)[0])
    records.append_drift_record("employment", {"kind": "batch", "batch_id": "2018", "drifted": True,
                                               "drifted_features": [{"feature": "AGEP"}], "report_path": str(path),
                                               "scored_at": "2026-11-23T00:00:00+00:00"}, home)
    m = scrape(home, store, lines=["employment"])
    L = {"line": "employment"}
    assert m("factory_serving_latest_version", **L) == 2
    assert m("factory_serving_pushes_total", **L) == 3
    assert m("factory_serving_retired_versions", **L) == 1
    assert m("factory_serving_model_info", **L, version="2", run="run-b", blessing="BLESSED") == 1
    assert m.series("factory_serving_model_auc") == []  # run-b was never evaluated here
    assert m("factory_drift_score", **L, feature="AGEP", metric="psi") == 0.4
    assert m("factory_drift_detected", **L, feature="AGEP") == 1
    assert m("factory_drift_last_check_info", **L, batch="2018", model_version="") == 1
    assert m.series("factory_drift_batch_auc") == []
    assert m.series("factory_metrics_read_errors") == []


def test_a_served_model_finds_its_run_by_folder_or_run_id(tmp_path):
    """The gate's push names the run folder (hashed for an Airflow run id), the model's info the
    exact run id; a folder named before run ids were hashed is found by either too."""
    home, store = tmp_path / "home", tmp_path / "serving"
    base = layout.serving_base(LINE, home, store)
    for run_id, auc, push_names_folder in (("manual__2026-11-29T10:00:00+00:00", 0.81, True),
                                            ("manual__2026-11-29T10_00_00_00_00", 0.62, False)):
        run = training_run(home, run_id, {"val_auc": auc, "samples_per_s": 1.0, "epochs_run": 1, "workers": 1}, 1e9)
        evaluation(run, {"line": LINE, "training_run": run.name, "blessing": "BLESSED", "overall": {"auc": auc}}, 1e9)
        model = saved_model(tmp_path / run.name, {"line": LINE, "run_id": run_id, "metrics": {"val_auc": auc}})
        serving.publish(model, base, {"training_run": run.name, "blessing": "BLESSED"} if push_names_folder
                        else {"blessing": "BLESSED"})
        assert scrape(home, store, lines=[LINE])("factory_serving_model_auc", line=LINE) == auc


def test_label_values_and_numbers_survive_the_text_format(factory):
    """Label values with quotes, backslashes and newlines, integers past 2**31 and fractions
    come back from prometheus_client's parser as they went in."""
    home, store = factory
    odd = 'a "quoted" \\back\\slash\nand a newline'
    paths = layout.line_paths(LINE, home)
    ledger.update(paths, "odd", "cleaned", status=ledger.CLEANED,
                  cleaning={"rows_in": 3_000_000_000, "rows_clean": 1, "rows_quarantined": 2,
                            "duplicates_removed": 0, "quarantine_reasons": {odd: 2}, "seconds": 0.1})
    m = scrape(home, store)
    assert m("factory_quarantine_rows", line=LINE, reason=odd) == 2
    assert m("factory_batch_rows", line=LINE, batch="odd", outcome="in") == 3_000_000_000
    assert m("factory_batch_cleaning_seconds", line=LINE, batch="odd") == 0.1
    assert m("factory_rows_in", line=LINE) == 3_000_000_000 + 2565
    assert '\\"quoted\\" \\\\back\\\\slash\\nand' in m.text


def test_collect_gives_the_families_and_the_collector_reads_on_each_call(factory):
    home, store = factory
    families = {f.name: f for f in collect(home, store, lines=[LINE])}
    assert families["factory_serving_pushes"].type == "counter"
    assert {s.name for s in families["factory_serving_pushes"].samples} == {"factory_serving_pushes_total"}
    collector = FactoryCollector(home, store, lines=[LINE])
    before = {f.name: f for f in collector.collect()}["factory_serving_latest_version"].samples[0].value
    serving.publish(saved_model(home.parent / "m", {"run_id": "x"}), layout.serving_base(LINE, home, store), {})
    after = {f.name: f for f in collector.collect()}["factory_serving_latest_version"].samples[0].value
    assert (before, after) == (3, 4)


def test_openmetrics_when_the_scraper_asks_for_it(factory):
    """Prometheus negotiates OpenMetrics: the same series, and prometheus_client's strict
    OpenMetrics parser accepts the text."""
    home, store = factory
    app = exporter.make_app(exporter.registry(home, store))
    got = {}
    body = b"".join(app({"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", "QUERY_STRING": "",
                         "HTTP_ACCEPT": "application/openmetrics-text; version=1.0.0"},
                        lambda status, headers: got.update(status=status, headers=dict(headers))))
    assert got["status"].startswith("200") and got["headers"]["Content-Type"].startswith("application/openmetrics-text")
    om = Scrape(body.decode(), parse=openmetrics_families)
    text = scrape(home, store)
    assert set(om.samples) == set(text.samples)
    assert om("factory_serving_pushes_total", line=LINE) == 3


def test_promtool_checks_it(factory):
    if not shutil.which("promtool"):
        pytest.skip("promtool not installed (Debian package prometheus)")
    home, store = factory
    done = subprocess.run(["promtool", "check", "metrics"], input=exposition(home, store),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def served(factory):
    home, store = factory
    server = make_server("127.0.0.1", 0, home, store)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", home, store
    finally:
        server.shutdown()
        server.server_close()


def test_http_server_reads_the_records_on_every_scrape(served, tmp_path):
    base, home, store = served
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4
        first = Scrape(r.read().decode())
    assert first("factory_serving_latest_version", line=LINE) == 3
    # only the factory's metrics: no process or Python collectors in this registry
    assert all(name.startswith("factory_") for name in first.families)
    serving.publish(saved_model(tmp_path / "m", {"run_id": "x"}), layout.serving_base(LINE, home, store), {})
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        second = Scrape(r.read().decode())
    assert second("factory_serving_latest_version", line=LINE) == 4
    assert second("factory_serving_pushes_total", line=LINE) == 4
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as r:
        assert r.read() == b"ok\n"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{base}/nope", timeout=10)
    assert err.value.code == 404


def test_a_failed_scrape_is_a_bare_500(served, monkeypatch, caplog):
    base, _, _ = served

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail /opt/factory/home")

    monkeypatch.setattr(records, "serving_versions", broken)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{base}/metrics", timeout=10)
    assert err.value.code == 500
    body = err.value.read().decode()
    assert "secret" not in body and "/opt" not in body
    assert "secret detail" in caplog.text  # logged for the operator
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as r:
        assert r.status == 200


def test_command_line_once(factory):
    home, store = factory
    env = {**os.environ, "FACTORY_HOME": str(home), "FACTORY_SERVING_STORE": str(store)}
    done = subprocess.run([sys.executable, "-m", "pipelines.observability.exporter", "--once"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    m = Scrape(done.stdout)
    assert m("factory_training_val_auc", line=LINE) == 0.7125
    assert m("factory_serving_latest_version", line=LINE) == 3
    assert not any(name.startswith(("python_", "process_")) for name in m.families)


def _listening(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_the_exporter_process_listens_on_loopback_only(factory):
    """The real command, as a user starts it, with no --host: bound to 127.0.0.1."""
    home, store = factory
    env = {**os.environ, "FACTORY_HOME": str(home), "FACTORY_SERVING_STORE": str(store)}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.observability.exporter", "--port", "0"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        assert _listening(port) == {"0100007F"}  # 127.0.0.1, little-endian hex
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_command_line_serves_on_loopback_by_default(monkeypatch):
    seen = {}

    class Server:
        server_address = ("127.0.0.1", 9108)

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            seen["closed"] = True

    def fake(host, port, home, store):
        seen.update(host=host, port=port)
        return Server()

    monkeypatch.setattr(exporter, "make_server", fake)
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert exporter.main([]) == 0
        assert seen == {"host": "127.0.0.1", "port": 9108, "closed": True}
        assert exporter.main(["--host", "0.0.0.0", "--port", "9200"]) == 0
        assert (seen["host"], seen["port"]) == ("0.0.0.0", 9200)
    finally:
        signal.signal(signal.SIGTERM, previous)

