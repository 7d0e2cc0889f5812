"""pipelines.observability.exporter: the factory's metrics from its files, in the Prometheus text format.

The exposition is checked by a strict parser written here (the text format 0.0.4
grammar: HELP/TYPE lines, metric and label names, escaped label values, numbers, one
family per name, no duplicate series), by prometheus_client's parser where an
environment has it (the ML environment does), and by `promtool check metrics` where
promtool is installed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipelines.config import ml_python
from pipelines.observability.exporter import CONTENT_TYPE, Metrics, collect, make_server

# ----------------------------------------------------------------------------- a strict parser

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? ({_VALUE})(?: (-?\d+))?$")
_PAIR = re.compile(rf'({_LABEL})="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def parse_exposition(text: str) -> dict[str, dict]:
    """``name -> {"type", "help", "samples": {labels tuple: value}}``; raises ValueError on
    anything the text format 0.0.4 does not allow (or allows but Prometheus rejects)."""
    if not text.endswith("\n"):
        raise ValueError("the exposition must end with a newline")
    families: dict[str, dict] = {}
    current = None
    closed: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not re.fullmatch(_NAME, name):
                    raise ValueError(f"line {n}: bad metric name {name!r}")
                if name in closed:
                    raise ValueError(f"line {n}: family {name} is not contiguous")
                if current and current != name:
                    closed.add(current)
                fam = families.setdefault(name, {"type": None, "help": None, "samples": {}})
                if fam["samples"]:
                    raise ValueError(f"line {n}: {parts[1]} of {name} after its samples")
                value = parts[3] if len(parts) > 3 else ""
                key = parts[1].lower()
                if fam[key] is not None:
                    raise ValueError(f"line {n}: second {parts[1]} for {name}")
                if key == "type" and value not in ("counter", "gauge", "histogram", "summary", "untyped"):
                    raise ValueError(f"line {n}: unknown type {value!r}")
                if key == "help" and not re.fullmatch(r"(?:[^\\]|\\[\\n])*", value):
                    raise ValueError(f"line {n}: bad escape in HELP")
                fam[key] = value
                current = name
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ValueError(f"line {n}: not a sample: {line!r}")
        name, body, value = m.group(1), m.group(2), m.group(3)
        if name != current:
            raise ValueError(f"line {n}: sample {name} outside its family (current: {current})")
        labels = []
        if body:
            pos = 0
            while pos < len(body):
                pm = _PAIR.match(body, pos)
                if not pm:
                    raise ValueError(f"line {n}: bad labels {body!r}")
                raw = pm.group(2)
                labels.append((pm.group(1), re.sub(r"\\(.)", lambda e: {"n": "\n"}.get(e.group(1), e.group(1)), raw)))
                pos = pm.end()
        names = [k for k, _ in labels]
        if len(set(names)) != len(names) or any(k.startswith("__") for k in names):
            raise ValueError(f"line {n}: repeated or reserved label in {line!r}")
        key = tuple(sorted(labels))
        fam = families[name]
        if key in fam["samples"]:
            raise ValueError(f"line {n}: duplicate series {line!r}")
        fam["samples"][key] = float(value.replace("Inf", "inf").replace("NaN", "nan"))
    return families


def sample(families: dict, name: str, **labels) -> float:
    return families[name]["samples"][tuple(sorted(labels.items()))]


# ----------------------------------------------------------------------------- a factory home


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def factory(tmp_path: Path) -> tuple[Path, Path]:
    """A factory home and serving store with what each stage writes (the ledger's record
    shape is pipelines.catalog.ledger's and the cleaning job's; result.json the worker's;
    factory_model.json the exporter's)."""
    home, store = tmp_path / "home", tmp_path / "serving"
    state = home / "state" / "credit_risk"
    write_json(state / "slice-1.json", {
        "line": "credit_risk", "batch_id": "slice-1", "status": "validated", "updated_at": "2026-11-23T10:00:00+00:00",
        "cleaning": {"rows_in": 2465, "rows_clean": 2455, "rows_quarantined": 7, "duplicates_removed": 3,
                     "quarantine_reasons": {"out_of_range:int_rate": 5, 'unparseable:"term"\n': 2}, "seconds": 4.5},
        "validation": {"success": True, "evaluated": 20, "successful": 20, "failed": []}, "events": []})
    write_json(state / "slice-2.json", {
        "line": "credit_risk", "batch_id": "slice-2", "status": "failed", "updated_at": "2026-11-23T11:00:00+00:00",
        "cleaning": {"rows_in": 100, "rows_clean": 90, "rows_quarantined": 10, "duplicates_removed": 0,
                     "quarantine_reasons": {"out_of_range:int_rate": 10}, "seconds": 2},
        "validation": {"success": False, "evaluated": 20, "successful": 17}, "events": []})
    write_json(state / "slice-3.json", {"line": "credit_risk", "batch_id": "slice-3", "status": "landed",
                                        "updated_at": "2026-11-23T12:00:00+00:00", "events": []})
    (state / ".lock").write_text("")
    old, new = home / "training" / "credit_risk" / "manual_1", home / "training" / "credit_risk" / "manual_2"
    write_json(old / "result.json", {"val_auc": 0.61, "samples_per_s": 900.0, "epochs_run": 3, "workers": 1})
    write_json(new / "result.json", {"val_auc": 0.7125, "samples_per_s": 12345.5, "epochs_run": 7, "workers": 2})
    os.utime(old / "result.json", (1_700_000_000, 1_700_000_000))
    os.utime(new / "result.json", (1_800_000_000, 1_800_000_000))
    (home / "training" / "credit_risk" / "running").mkdir()  # a run without a result yet
    # evaluation gate results (pipelines.evaluation.gate): one blessed, one not
    write_json(old / "evaluation" / "result.json", {"line": "credit_risk", "training_run": "manual_1",
                                                     "blessing": "NOT_BLESSED", "overall": {"auc": 0.6}})
    write_json(new / "evaluation" / "result.json", {
        "line": "credit_risk", "training_run": "manual_2", "blessing": "BLESSED", "pushed": True,
        "serving": {"version": 3}, "overall": {"auc": 0.705, "pr_auc": 0.21, "example_count": 2400}})
    os.utime(old / "evaluation" / "result.json", (1_700_000_100, 1_700_000_100))
    os.utime(new / "evaluation" / "result.json", (1_800_000_100, 1_800_000_100))
    # drift (pipelines.monitoring): history records and the JSON report of the latest batch
    drift = home / "drift" / "credit_risk"
    report = drift / "reports" / "slice-2.json"
    write_json(report, {"batch_id": "slice-2", "drifted": True, "features": {
        "int_rate": {"status": "ok", "drifted": True, "severity": 1.5, "metrics": {
            "psi": {"value": 0.3, "threshold": 0.2, "exceeded": True},
            "jsd": {"value": 0.05, "threshold": 0.1, "exceeded": False},
            "linf": {"value": 0.12, "threshold": None, "exceeded": False}, "chi2": {"statistic": 9.0}}},
        "term": {"status": "ok", "drifted": False, "severity": 0.1, "metrics": {
            "psi": {"value": 0.01, "threshold": 0.2, "exceeded": False}}},
        "emp_length": {"status": "ignored", "drifted": False}}})
    records = [
        {"kind": "batch", "line": "credit_risk", "batch_id": "slice-1", "model_version": "2",
         "scored_at": "2026-11-20T00:00:00+00:00", "drifted": False, "drifted_features": [],
         "max_psi": {"feature": "term", "value": 0.02}, "auc": 0.71, "report_path": "/elsewhere/slice-1.json"},
        {"kind": "retrain", "line": "credit_risk", "event": "pending", "episode_id": "e1", "run_id": "r1"},
        {"kind": "batch", "line": "credit_risk", "batch_id": "slice-2", "model_version": "3",
         "scored_at": "2026-11-23T00:00:00+00:00", "drifted": True,
         "drifted_features": [{"feature": "int_rate", "severity": 1.5, "by": "psi 0.3 >= 0.2"}],
         "max_psi": {"feature": "int_rate", "value": 0.3}, "auc": None,
         # written in another container: found by name under this home
         "report_path": "/opt/factory/home/drift/credit_risk/reports/slice-2.json"},
    ]
    (drift / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # serving store (pipelines.evaluation.serving): live 1 and 3, 2 rolled back
    for version in (1, 3):
        (store / "credit_risk" / str(version)).mkdir(parents=True)
    (store / "credit_risk" / ".retired" / "2").mkdir(parents=True)
    (store / "credit_risk" / ".incoming-abc").mkdir()
    write_json(store / "credit_risk" / "3" / "assets.extra" / "factory_model.json",
               {"line": "credit_risk", "run_id": "manual_2", "metrics": {"val_auc": 0.7125}})
    write_json(store / "credit_risk" / "3" / "assets.extra" / "factory_push.json",
               {"blessing": "BLESSED", "training_run": "manual_2", "version": 3,
                "pushed_at": "2026-11-23T12:30:00+00:00"})
    return home, store


# ----------------------------------------------------------------------------- tests


def test_metrics_from_every_source(factory):
    home, store = factory
    fams = parse_exposition(collect(home, store).render())
    L = {"line": "credit_risk"}
    # ledger: counts per line and per batch, reasons, verdicts
    assert sample(fams, "factory_batches", **L, status="validated") == 1
    assert sample(fams, "factory_batches", **L, status="failed") == 1
    assert sample(fams, "factory_batches", **L, status="landed") == 1
    assert sample(fams, "factory_batches", **L, status="cleaned") == 0
    assert sample(fams, "factory_rows", **L, outcome="clean") == 2545
    assert sample(fams, "factory_rows", **L, outcome="quarantined") == 17
    assert sample(fams, "factory_rows", **L, outcome="duplicate_removed") == 3
    assert sample(fams, "factory_rows_in", **L) == 2565
    assert sample(fams, "factory_batch_rows", **L, batch="slice-1", outcome="in") == 2465
    assert sample(fams, "factory_quarantine_rows", **L, reason="out_of_range:int_rate") == 15
    assert sample(fams, "factory_quarantine_rows", **L, reason='unparseable:"term"\n') == 2
    assert sample(fams, "factory_validation_batches", **L, outcome="passed") == 1
    assert sample(fams, "factory_validation_pass_ratio", **L) == 0.5
    assert sample(fams, "factory_validation_expectations", **L, result="failed") == 3
    assert sample(fams, "factory_batch_validation_success", **L, batch="slice-2") == 0
    assert sample(fams, "factory_batch_cleaning_seconds", **L, batch="slice-1") == 4.5
    assert sample(fams, "factory_ledger_last_update_timestamp_seconds", **L) == 1795435200
    # training: the run that wrote its result last
    assert sample(fams, "factory_training_runs", **L) == 2
    assert sample(fams, "factory_training_val_auc", **L) == 0.7125
    assert sample(fams, "factory_training_samples_per_second", **L) == 12345.5
    assert sample(fams, "factory_training_workers", **L) == 2
    assert sample(fams, "factory_training_last_run_timestamp_seconds", **L) == 1_800_000_000
    assert sample(fams, "factory_training_run_info", **L, run="manual_2") == 1
    # evaluations: verdicts of all, metrics of the latest
    assert sample(fams, "factory_evaluations", **L, blessing="BLESSED") == 1
    assert sample(fams, "factory_evaluations", **L, blessing="NOT_BLESSED") == 1
    assert sample(fams, "factory_evaluation_metric", **L, metric="auc") == 0.705
    assert sample(fams, "factory_evaluation_metric", **L, metric="example_count") == 2400
    assert sample(fams, "factory_evaluation_info", **L, run="manual_2", blessing="BLESSED") == 1
    # drift: the latest scored batch and its report
    assert sample(fams, "factory_drift_checks", **L) == 2
    assert sample(fams, "factory_drift_batch_drifted", **L) == 1
    assert sample(fams, "factory_drift_features_drifted", **L) == 1
    assert sample(fams, "factory_drift_max_psi", **L) == 0.3
    assert sample(fams, "factory_drift_batch_auc", **L) == 0.71  # the latest batch that had labels
    assert sample(fams, "factory_drift_last_check_timestamp_seconds", **L) == 1795392000
    assert sample(fams, "factory_drift_last_check_info", **L, batch="slice-2", model_version="3") == 1
    assert sample(fams, "factory_drift_retrain_events", **L, event="pending") == 1
    assert sample(fams, "factory_drift_score", **L, feature="int_rate", metric="psi") == 0.3
    assert sample(fams, "factory_drift_score", **L, feature="int_rate", metric="linf") == 0.12
    assert sample(fams, "factory_drift_threshold", **L, feature="int_rate", metric="psi") == 0.2
    assert ("metric", "linf") not in {kv for k in fams["factory_drift_threshold"]["samples"] for kv in k}
    assert sample(fams, "factory_drift_detected", **L, feature="int_rate") == 1
    assert sample(fams, "factory_drift_detected", **L, feature="term") == 0
    assert ("feature", "emp_length") not in {kv for k in fams["factory_drift_detected"]["samples"] for kv in k}
    assert sample(fams, "factory_drift_severity", **L, feature="int_rate") == 1.5
    # serving: integer version folders only; pushes count retired versions too
    assert sample(fams, "factory_serving_versions", **L) == 2
    assert sample(fams, "factory_serving_latest_version", **L) == 3
    assert sample(fams, "factory_serving_pushes_total", **L) == 3
    assert sample(fams, "factory_serving_retired_versions", **L) == 1
    assert sample(fams, "factory_serving_latest_push_timestamp_seconds", **L) == 1795437000
    assert sample(fams, "factory_serving_model_val_auc", **L) == 0.7125
    assert sample(fams, "factory_serving_model_auc", **L) == 0.705
    assert sample(fams, "factory_serving_model_info", **L, version="3", run="manual_2", blessing="BLESSED") == 1
    # declared lines without files still show up, at zero
    assert sample(fams, "factory_line_info", line="employment") == 1
    assert sample(fams, "factory_rows", line="employment", outcome="clean") == 0
    assert sample(fams, "factory_serving_versions", line="employment") == 0
    assert fams["factory_metrics_read_errors"]["samples"] == {}
    assert {n for n, f in fams.items() if f["type"] != "gauge"} == {"factory_serving_pushes_total"}


def test_an_empty_factory_is_a_valid_exposition(tmp_path):
    fams = parse_exposition(collect(tmp_path / "nothing", tmp_path / "none").render())
    assert sample(fams, "factory_batches", line="credit_risk", status="validated") == 0
    assert "factory_validation_pass_ratio" in fams and not fams["factory_validation_pass_ratio"]["samples"]


def test_unreadable_files_are_counted_not_fatal(factory):
    home, store = factory
    (home / "state" / "credit_risk" / "slice-4.json").write_text('{"batch_id": "slice-4", "sta')  # half-written
    with open(home / "drift" / "credit_risk" / "history.jsonl", "a") as fh:
        fh.write('{"kind": "batch", "batch_id": "slice-3", "drif')  # being appended
    fams = parse_exposition(collect(home, store).render())
    assert sample(fams, "factory_metrics_read_errors", line="credit_risk", source="ledger") == 1
    assert sample(fams, "factory_metrics_read_errors", line="credit_risk", source="drift") == 1
    # the last complete drift record is still read
    assert sample(fams, "factory_drift_score", line="credit_risk", feature="int_rate", metric="psi") == 0.3


def test_reads_what_the_factorys_own_writers_write(tmp_path):
    """The serving store and the drift history as pipelines.evaluation.serving and
    pipelines.monitoring write them (skipped where those modules are not part of the tree)."""
    serving = pytest.importorskip("pipelines.evaluation.serving")
    history = pytest.importorskip("pipelines.monitoring.history")
    report_mod = pytest.importorskip("pipelines.monitoring.report")
    home, store = tmp_path / "home", tmp_path / "serving"
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")
    base = store / "employment"
    for run in ("run-a", "run-b", "run-c"):
        serving.publish(model, base, {"training_run": run, "blessing": "BLESSED"})
    serving.retire_latest(base, "rolled back in a test")
    report = {"features": {"AGEP": {"status": "ok", "drifted": True, "severity": 2.0,
                                    "metrics": {"psi": {"value": 0.4, "threshold": 0.2, "exceeded": True}}}}}
    path = report_mod.write_json_report(report, home / "drift" / "employment" / "reports" / "2018.json")
    history.append_history("employment", {"kind": "batch", "batch_id": "2018", "drifted": True,
                                          "drifted_features": [{"feature": "AGEP"}], "report_path": str(path),
                                          "scored_at": "2026-11-23T00:00:00+00:00"}, home=home)
    fams = parse_exposition(collect(home, store, lines=["employment"]).render())
    L = {"line": "employment"}
    assert sample(fams, "factory_serving_latest_version", **L) == 2
    assert sample(fams, "factory_serving_pushes_total", **L) == 3
    assert sample(fams, "factory_serving_retired_versions", **L) == 1
    assert sample(fams, "factory_serving_model_info", **L, version="2", run="run-b", blessing="BLESSED") == 1
    assert sample(fams, "factory_drift_score", **L, feature="AGEP", metric="psi") == 0.4
    assert sample(fams, "factory_drift_detected", **L, feature="AGEP") == 1
    assert fams["factory_metrics_read_errors"]["samples"] == {}


def test_text_format_escaping_and_values():
    m = Metrics()
    fam = m.family("x_total", "counter", "back\\slash and\nnewline")
    fam.add(1, a='quo"te', b="back\\slash", c="new\nline")
    fam.add(float("nan"), a="nan")
    fam.add(float("inf"), a="inf")
    fam.add(0.1, a="float")
    fam.add(None, a="missing")  # nothing
    text = m.render()
    assert "# HELP x_total back\\\\slash and\\nnewline\n" in text
    fams = parse_exposition(text)
    assert sample(fams, "x_total", a='quo"te', b="back\\slash", c="new\nline") == 1
    assert math.isnan(sample(fams, "x_total", a="nan"))
    assert sample(fams, "x_total", a="inf") == math.inf
    assert sample(fams, "x_total", a="float") == 0.1
    assert len(fams["x_total"]["samples"]) == 4


def test_bad_names_and_duplicates_are_refused():
    m = Metrics()
    with pytest.raises(ValueError, match="metric name"):
        m.family("bad-name", "gauge", "")
    fam = m.family("ok", "gauge", "")
    with pytest.raises(ValueError, match="label name"):
        fam.add(1, **{"bad-label": "x"})
    with pytest.raises(ValueError, match="registered as gauge"):
        m.family("ok", "counter", "")
    fam.add(1, a="x")
    fam.add(2, a="x")
    with pytest.raises(ValueError, match="duplicate series"):
        m.render()


def test_the_parser_here_rejects_what_prometheus_rejects():
    for bad in ('x{a="1"} 1\n', "# TYPE x gauge\nx{a=1} 1\n", "# TYPE x gauge\nx 1\nx 2\n",
                "# TYPE x gauge\nx one\n", '# TYPE x gauge\nx{a="\\q"} 1\n', "# TYPE x gauge\nx 1",
                "# TYPE x gauge\n# TYPE y gauge\ny 1\n# TYPE x gauge\n"):
        with pytest.raises(ValueError):
            parse_exposition(bad)


_CLIENT_PARSE = """
import sys
from prometheus_client.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(sys.stdin.read()))
print(len(families), sum(len(f.samples) for f in families))
"""


def test_prometheus_client_parser_reads_it(factory):
    """prometheus_client's own parser, here or in the ML environment (which has it)."""
    home, store = factory
    text = collect(home, store).render()
    expected = parse_exposition(text)
    try:
        import prometheus_client  # noqa: F401

        python = sys.executable
    except ImportError:
        python = str(ml_python())
        if not Path(python).exists():
            pytest.skip("prometheus_client is in neither this environment nor the ML one")
    done = subprocess.run([python, "-c", _CLIENT_PARSE], input=text, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "No module named 'prometheus_client'" in done.stderr:
        pytest.skip("prometheus_client is not installed")
    assert done.returncode == 0, done.stderr
    n_families, n_samples = map(int, done.stdout.split())
    assert n_families == len(expected)
    assert n_samples == sum(len(f["samples"]) for f in expected.values())


def test_promtool_checks_it(factory):
    if not shutil.which("promtool"):
        pytest.skip("promtool not installed (Debian package prometheus)")
    home, store = factory
    done = subprocess.run(["promtool", "check", "metrics"], input=collect(home, store).render(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_http_server_reads_the_files_on_every_scrape(factory):
    home, store = factory
    server = make_server("127.0.0.1", 0, home, store)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"] == CONTENT_TYPE
            first = parse_exposition(r.read().decode())
        assert sample(first, "factory_serving_latest_version", line="credit_risk") == 3
        (store / "credit_risk" / "4").mkdir()  # a push between two scrapes
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            second = parse_exposition(r.read().decode())
        assert sample(second, "factory_serving_latest_version", line="credit_risk") == 4
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as r:
            assert r.read() == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/nope", timeout=10)
        assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_command_line_once(factory):
    home, store = factory
    env = {**os.environ, "FACTORY_HOME": str(home), "FACTORY_SERVING_STORE": str(store)}
    done = subprocess.run([sys.executable, "-m", "pipelines.observability.exporter", "--once"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sample(parse_exposition(done.stdout), "factory_training_val_auc", line="credit_risk") == 0.7125
