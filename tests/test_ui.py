"""The Model Factory view without a browser: data gathering from a factory home written by
the stages' own record writers, the SVG charts, the page, the Data Docs path confinement, and the
app's authentication and per-line authorization (with a stand-in for Airflow's auth
manager; tests/test_ui_browser.py runs the real one)."""

from __future__ import annotations

import base64
import gzip
import io
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from factory_records import batch_frame, push, reference_profile, write_gate_result, write_training_run
from fastapi import HTTPException

from pipelines.catalog import layout, ledger, records
from pipelines.evaluation import serving
from pipelines.ingest.validation import FailedExpectation, ValidationOutcome
from pipelines.monitoring import episodes
from pipelines.monitoring.batch import monitor_batch
from pipelines.monitoring.detection import score_batch
from pipelines.monitoring.profile import save_profile
from pipelines.monitoring.report import write_json_report
from pipelines.ui import charts, docs, render
from pipelines.ui.app import AirflowAuth, create_app
from pipelines.ui.data import (
    MAX_FEATURE,
    DriftPoint,
    DriftSeries,
    MlflowLine,
    RunRef,
    mlflow_run_url,
    run_folder_name,
)
from pipelines.ui.gather import gather

LINE = "credit_risk"
RUN1_ID = "manual__2026-11-20T10:00:00+00:00"
RUN2_ID = "scheduled__2026-11-22T03:00:00+00:00"
RUN1 = run_folder_name(RUN1_ID)  # the run folders the training stage gives them
RUN2 = run_folder_name(RUN2_ID)


# -- a factory home, written by the stages' own writers -----------------------------------


def _docs_page(home: Path, batch: str) -> Path:
    """The page Great Expectations renders for a validation (validation.py records its path)."""
    page = home / "gx/gx/uncommitted/data_docs/local_site/validations" / LINE / batch / "20261123T100000.000000Z" / "abc.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(f"<html><body>Validation of {batch}</body></html>")
    return page


def _cleaning(paths: layout.LinePaths, batch: str, rows_in: int, clean: int, quarantined: int, duplicates: int) -> dict:
    """The report pipelines.ingest.cleaning.job records."""
    return {"rows_in": rows_in, "rows_clean": clean, "rows_quarantined": quarantined, "duplicates_removed": duplicates,
            "duplicates": {"exact": duplicates} if duplicates else {},
            "quarantine_reasons": {"funded_amnt: out of range": quarantined} if quarantined else {},
            "repairs": {}, "clean_path": str(paths.clean_batch(batch)), "quarantine_path": str(paths.quarantine_batch(batch)),
            "seconds": 4.2, "spark_version": "3.5.3", "spec_version": 1}


def _land(paths: layout.LinePaths, batch: str, landed_at: str) -> None:
    """What pipelines.ingest.landing records."""
    ledger.update(paths, batch, "landed", status=ledger.LANDED, file=str(paths.landing / f"{batch}.csv"), format="csv",
                  sha256="0" * 64, bytes=1234, landed_at=landed_at)


def _ingest(home: Path) -> None:
    paths = layout.line_paths(LINE, home)
    _land(paths, "slice-1", "2026-11-20T09:00:00+00:00")
    ledger.update(paths, "slice-1", "cleaned", status=ledger.CLEANED, cleaning=_cleaning(paths, "slice-1", 2465, 2460, 3, 2),
                  error=None, failed_stage=None)
    ok = ValidationOutcome(success=True, evaluated=31, successful=31, data_docs=str(_docs_page(home, "slice-1")))
    ledger.update(paths, "slice-1", "validated", status=ledger.VALIDATED, validation=ok.to_dict(),
                  validated_at=ledger.now(), error=None, failed_stage=None)
    _land(paths, "slice-2", "2026-11-21T09:00:00+00:00")
    ledger.update(paths, "slice-2", "cleaned", status=ledger.CLEANED, cleaning=_cleaning(paths, "slice-2", 2464, 2464, 0, 0),
                  error=None, failed_stage=None)
    failed = [FailedExpectation("expect_column_values_to_be_between", "int_rate", {"column": "int_rate", "max_value": 40},
                                {"unexpected_count": 2, "partial_unexpected_list": [41.0, 44.5]}),
              FailedExpectation("expect_table_row_count_to_be_between", None, {"min_value": 2500}, 2464)]
    bad = ValidationOutcome(success=False, evaluated=31, successful=29, failed=failed,
                            data_docs=str(_docs_page(home, "slice-2")))
    ledger.update(paths, "slice-2", "validation failed", status=ledger.FAILED, failed_stage="validation",
                  validation=bad.to_dict(), error="2 expectation(s) failed <img src=x onerror=alert(1)>")
    _land(paths, "slice-3", "2026-11-22T09:00:00+00:00")


def _record_without_report(home: Path, batch: str, report_path: Path | None = None, feature: str = "int_rate") -> dict:
    """A history record whose JSON report is not in the line's reports folder."""
    report = score_batch(reference_profile(feature), batch_frame(500, 0.8, feature), scores="score", batch_id=batch)
    if report_path is not None:
        write_json_report(report, report_path)
    episodes.record_batch(LINE, report, model_version="1", batch_id=batch,
                          report_path=None if report_path is None else str(report_path), home=home)
    return report


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A factory home with what ingest, training, the gate, serving and drift leave."""
    home = tmp_path / "factory"
    _ingest(home)
    run1 = write_training_run(home, RUN1_ID, ["slice-1"], 0.71)
    run2 = write_training_run(home, RUN2_ID, ["slice-1", "slice-2"], 0.69)
    os.utime(layout.manifest_path(run1), (1_700_000_000, 1_700_000_000))  # RUN1 is the older run
    write_gate_result(home, run1, "BLESSED", "all thresholds met (value thresholds only)", {"auc": 0.712, "recall": 0.6},
          pushed=push(home, run1, "BLESSED"))
    write_gate_result(home, run2, "NOT_BLESSED", "[Overall] auc below 0.7", {"auc": 0.69})

    version = layout.serving_base(LINE, home) / "1"
    save_profile(reference_profile(), layout.drift_profile_path(version))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "matplotlib", None)  # the report's inline SVG charts: matplotlib's PNG is slow
        for batch, share_60 in (("b1", 0.32), ("b2", 0.8), ("b3", 0.35)):
            monitor_batch(LINE, batch_frame(500, share_60), layout.drift_profile_path(version), batch_id=batch,
                          scores="score", home=home)
            if batch == "b2":  # the drifted batch opens an episode, and a retrain is claimed for it
                assert episodes.claim_retrain(LINE, "drift__1", home=home).retrain
    # a monitor appending its record right now
    with layout.drift_history_path(LINE, home).open("a") as f:
        f.write('{"kind": "batch", "bat')
    return home


def _reports(home: Path) -> dict[str, dict]:
    """The JSON drift reports the monitor wrote, by batch."""
    history = records.read_drift_history(LINE, home, kind="batch")
    return {r.batch_id: records.read_drift_report(r, LINE, home) for r in history}


class FakeAirflow:
    def batch_runs(self, line):
        return {"slice-1": RunRef(f"ingest_{line}", "manual__2026-11-20T09:01:00+00:00", "success")}

    def training_runs(self, line):
        return {run_folder_name("manual__2026-11-20T10:00:00+00:00"): RunRef(f"train_{line}",
                                                                            "manual__2026-11-20T10:00:00+00:00", "success")}


class FakeMlflow:
    def line(self, line):
        return MlflowLine(experiment_id="7", aliases={"champion": "3"},
                          versions=[{"version": "3", "run_id": f"mlflow-{RUN1[:6]}", "aliases": ["champion"]}])


# -- data ---------------------------------------------------------------------------------


def test_batches_come_from_the_ledger_newest_first(home):
    view = gather(home, [LINE]).line(LINE)
    assert [b.batch_id for b in view.batches] == ["slice-3", "slice-2", "slice-1"]
    assert view.batch_total == 3 and view.status_counts == {"validated": 1, "failed": 1, "landed": 1}
    ok = view.batches[2]
    assert (ok.rows_in, ok.rows_clean, ok.rows_quarantined, ok.duplicates_removed) == (2465, 2460, 3, 2)
    assert ok.rows_in == ok.rows_clean + ok.rows_quarantined + ok.duplicates_removed
    assert ok.validation.success is True and ok.validation.evaluated == 31
    assert ok.validation.docs == f"local_site/validations/{LINE}/slice-1/20261123T100000.000000Z/abc.html"
    bad = view.batches[1]
    assert bad.validation.success is False and bad.failed_stage == "validation"
    assert bad.validation.failed == ["expect_column_values_to_be_between on int_rate",
                                     "expect_table_row_count_to_be_between"]
    landed = view.batches[0]
    assert landed.validation is None and landed.rows_in is None
    assert view.notes == []


def test_models_have_metrics_blessing_and_serving(home):
    view = gather(home, [LINE]).line(LINE)
    assert [m.run for m in view.models] == [RUN2, RUN1]
    new, old = view.models
    assert old.val_auc == 0.71 and old.rows_train == 1500 and old.batches == ["slice-1"] and old.epochs_run == 12
    assert old.blessing == "BLESSED" and old.eval_metrics == {"auc": 0.712, "recall": 0.6}
    assert old.blessing_why.startswith("all thresholds met")
    assert old.eval_report == f"reports/{LINE}/evaluation/{RUN1}" and new.eval_report == f"reports/{LINE}/evaluation/{RUN2}"
    assert (old.serving_version, old.in_serving) == (1, True) and old.mlflow_run_id == f"mlflow-{RUN1[:6]}"
    assert new.blessing == "NOT BLESSED" and new.eval_metrics == {"auc": 0.69} and new.blessing_why == "[Overall] auc below 0.7"
    assert new.serving_version is None and not new.in_serving
    assert view.serving_version == 1 and view.serving[0].run == RUN1 and view.serving[0].blessing == "BLESSED"
    assert view.serving[0].pushed_at is not None


def test_a_run_not_yet_evaluated(home):
    write_training_run(home, "manual__2026-11-23T08:00:00+00:00", ["slice-1"], 0.7)
    newest = gather(home, [LINE]).line(LINE).models[0]
    assert newest.run.startswith("manual__2026-11-23T08_00_00_00_00--") and newest.has_result and newest.trained_at
    assert (newest.evaluated, newest.blessing, newest.eval_report, newest.serving_version) == (False, None, None, None)


def test_a_rollback_moves_serving_to_the_previous_version(home):
    run2 = layout.run_dir(LINE, RUN2_ID, home)
    write_gate_result(home, run2, "FORCED", "force-blessed despite: [Overall] auc below 0.7. Reason given: hotfix", {"auc": 0.69},
          pushed=push(home, run2, "FORCED"))
    assert gather(home, [LINE]).line(LINE).serving_version == 2
    serving.retire_latest(layout.serving_base(LINE, home), "AUC dropped in production", expected=2)
    view = gather(home, [LINE]).line(LINE)
    assert [(s.version, s.retired, s.in_serving) for s in view.serving] == [(2, True, False), (1, False, True)]
    assert view.serving[0].run == RUN2 and view.serving[0].blessing == "FORCED" and view.serving_version == 1
    new = view.models[0]
    assert (new.serving_version, new.retired, new.in_serving, new.blessing) == (2, True, False, "FORCED")
    assert view.serving[0].retired_reason == "AUC dropped in production"
    assert view.models[1].in_serving


def test_airflow_and_mlflow_links(home):
    view = gather(home, [LINE], airflow=FakeAirflow(), mlflow=FakeMlflow()).line(LINE)
    old = view.models[1]
    assert old.airflow.path == f"dags/train_{LINE}/runs/manual__2026-11-20T10%3A00%3A00%2B00%3A00"
    assert old.registry_version == "3" and old.aliases == ["champion"] and view.champion == "3"
    assert view.batches[2].airflow.dag_id == f"ingest_{LINE}" and view.batches[1].airflow is None
    assert mlflow_run_url("http://mlflow:5000", "abc", "7") == "http://mlflow:5000/#/experiments/7/runs/abc"
    assert mlflow_run_url("http://mlflow:5000", "abc", None) == "http://mlflow:5000/#/runs/abc"
    assert mlflow_run_url(None, "abc", "7") is None


def test_run_folder_name_matches_the_training_stage():
    from pipelines.training.stage import run_folder

    for run_id in ("manual__2026-11-20T10:00:00+00:00", "asset_triggered__2026-11-23T11:37:02.123+00:00", "..x"):
        assert run_folder_name(run_id) == run_folder(LINE, run_id, Path("/h")).name


def test_drift_series_per_feature_over_time(home):
    reports = _reports(home)
    view = gather(home, [LINE]).line(LINE)
    series = {s.feature: s for s in view.drift_series}
    assert set(series) == {"int_rate", "term", "__score__"}
    psi = {name: [reports[b]["features"][name]["metrics"]["psi"]["value"] for b in ("b1", "b2", "b3")] for name in series}
    assert {name: [p.value for p in s.points] for name, s in series.items()} == psi
    assert psi["term"][1] > 0.2 > max(psi["term"][0], psi["term"][2])  # only b2 moved, and only its term
    assert [p.batch_id for p in series["int_rate"].points] == ["b1", "b2", "b3"]
    assert series["term"].threshold == 0.2  # the spec's PSI threshold
    assert [s.feature for s in view.drift_series] == ["__score__", "term", "int_rate"]  # the score first, then by peak
    assert [d.batch_id for d in view.drift_batches] == ["b3", "b2", "b1"]
    b2 = view.drift_batches[1]
    assert b2.drifted and b2.drifted_features == ["term"] and b2.episode_status == "open"
    assert (b2.max_psi_feature, b2.max_psi, b2.model_version) == ("term", psi["term"][1], "1")
    assert not view.drift_batches[0].drifted and view.drift_batches[2].episode_status is None
    assert b2.report == f"reports/{LINE}/drift/b2.html" and view.drift_batches[0].report == f"reports/{LINE}/drift/b3.html"
    assert view.notes == []  # the partial last line is an append in progress, not an error


def test_a_batch_whose_html_report_is_gone_has_no_link(home):
    layout.drift_report_paths(LINE, "b3", home)[1].unlink()
    view = gather(home, [LINE]).line(LINE)
    assert view.drift_batches[0].batch_id == "b3" and view.drift_batches[0].report is None
    assert "term" in {s.feature for s in view.drift_series}  # its JSON report is still read


def test_history_with_only_the_largest_psi(tmp_path):
    home = tmp_path / "factory"
    report = _record_without_report(home, "b9")
    top = max(f["metrics"]["psi"]["value"] for f in report["features"].values())
    series = gather(home, [LINE]).line(LINE).drift_series
    assert [(s.feature, s.label, [p.value for p in s.points]) for s in series] == [
        (MAX_FEATURE, "largest feature PSI", [top])]


def test_a_drift_report_outside_the_home_is_not_read(tmp_path):
    home = tmp_path / "factory"
    _record_without_report(home, "b9", report_path=tmp_path / "elsewhere.json", feature="secret")
    assert (tmp_path / "elsewhere.json").is_file()
    series = gather(home, [LINE]).line(LINE).drift_series
    assert [s.feature for s in series] == [MAX_FEATURE]  # the record's own figure, not the outside report's features


def test_an_empty_home_shows_none_yet(tmp_path):
    overview = gather(tmp_path / "nothing")
    assert {lv.name for lv in overview.lines} >= {"credit_risk", "employment"}
    for lv in overview.lines:
        assert (lv.batches, lv.models, lv.serving, lv.drift_series, lv.notes) == ([], [], [], [], [])
    html = render.page(overview)
    assert "No batch has landed yet" in html and "No model trained yet" in html and "No drift scores yet" in html


def test_unreadable_files_become_notes(home):
    layout.line_paths(LINE, home).ledger_record("broken").write_text("{not json")
    layout.training_result_path(layout.run_dir(LINE, RUN1_ID, home)).write_text("[truncated")
    with layout.drift_history_path(LINE, home).open("a") as f:
        f.write('\n{"kind": "batch", "batch_id": "b4", "max_psi": 0.3}\n')  # a record no reader can take
    view = gather(home, [LINE]).line(LINE)
    assert view.batch_total == 3
    assert any("broken.json" in n for n in view.notes) and any(RUN1 in n for n in view.notes)
    assert any(n.startswith("drift history:") and "line 6" in n for n in view.notes)
    assert not any(str(home) in n for n in view.notes)  # paths relative to the factory home
    assert view.models[1].has_result is False
    assert [d.batch_id for d in view.drift_batches] == ["b3", "b2", "b1"]


def test_allowed_filters_lines(home):
    assert [lv.name for lv in gather(home, allowed={"employment"}).lines] == ["employment"]


# -- charts and page ----------------------------------------------------------------------


def test_chart_is_valid_svg_with_threshold_and_points():
    s = DriftSeries("term", [DriftPoint(f"b{i}", None, v) for i, v in enumerate((0.01, 0.3, 0.05))], 0.2)
    svg = charts.line_chart(s)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}circle")) == 3
    assert len(root.findall(f"{ns}circle[@class='pt over']")) == 1
    assert root.find(f"{ns}line[@class='thr']") is not None
    assert root.find(f"{ns}polyline") is not None
    assert "http" not in svg.replace("http://www.w3.org/2000/svg", "")
    one = charts.line_chart(DriftSeries("x<y", [DriftPoint("<b>", None, 0.0)], None))
    ET.fromstring(one)  # escaped, still well-formed
    assert charts.nice_max(0.23) == 0.4 and charts.nice_max(0.31) == 0.4 and charts.nice_max(3) == 4


def test_page_content_links_and_escaping(home):
    os.environ["FACTORY_MLFLOW_UI"] = "http://mlflow.example:5000/"
    try:
        overview = gather(home, [LINE], airflow=FakeAirflow(), mlflow=FakeMlflow())
    finally:
        del os.environ["FACTORY_MLFLOW_UI"]
    html = render.page(overview, user="admin", nonce="abc")
    for text in (LINE, "slice-1", "slice-2", "slice-3", "2,465", "2,460", RUN1, "BLESSED", "NOT BLESSED"):
        assert text in html
    assert f'href="docs/local_site/validations/{LINE}/slice-1/20261123T100000.000000Z/abc.html"' in html
    assert f'href="../dags/ingest_{LINE}/runs/manual__2026-11-20T09%3A01%3A00%2B00%3A00"' in html
    assert 'href="http://mlflow.example:5000/#/experiments/7/runs/mlflow-manual"' in html
    assert "<img src=x" not in html and "&lt;img src=x" in html
    assert 'href="docs/local_site/index.html"' not in html  # no index rendered yet
    assert html.count("<svg") == 3 and '<script nonce="abc">' in html
    assert f'href="reports/{LINE}/evaluation/{RUN1}"' in html and f'href="reports/{LINE}/drift/b2.html"' in html
    assert 'title="all thresholds met (value thresholds only)"' in html
    # nothing is loaded from elsewhere: no external src/href other than the MLflow link
    assert 'src="http' not in html and "<link" not in html and "@import" not in html


def test_without_mlflow_ui_the_run_id_is_shown(home, monkeypatch):
    monkeypatch.delenv("FACTORY_MLFLOW_UI", raising=False)
    html = render.page(gather(home, [LINE]))
    assert f"MLflow run <code>mlflow-{RUN1[:6]}</code>" in html


# -- Data Docs confinement ----------------------------------------------------------------


def test_docs_resolve_is_confined(home, tmp_path):
    ok = f"local_site/validations/{LINE}/slice-1/20261123T100000.000000Z/abc.html"
    assert docs.resolve(ok, home) == (home / "gx/gx/uncommitted/data_docs" / ok).resolve()
    (home / "gx/gx/great_expectations.yml").write_text("secret: config")
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    link = home / "gx/gx/uncommitted/data_docs/local_site/escape.html"
    link.symlink_to(secret)
    (home / "gx/gx/uncommitted/data_docs/local_site/.hidden").write_text("x")
    for bad in ("../../great_expectations.yml", "local_site/../../great_expectations.yml", "/etc/passwd",
                "local_site/escape.html", "local_site/.hidden", "local_site\\..\\x", "a\x00b", "nope.html"):
        assert docs.resolve(bad, home) is None, bad
    (home / "gx/gx/uncommitted/data_docs/local_site/index.html").write_text("<html>index</html>")
    assert docs.resolve("local_site", home).name == "index.html"
    assert gather(home, [LINE]).docs_index == "local_site/index.html"


def test_docs_pages_map_to_lines():
    suites = {"credit_risk": "credit_risk"}
    assert docs.line_of("local_site/validations/credit_risk/b/t/x.html", suites) == "credit_risk"
    assert docs.line_of("local_site/expectations/credit_risk.html", suites) == "credit_risk"
    assert docs.line_of("local_site/index.html", suites) is None
    assert docs.suite_lines()["credit_risk"] == "credit_risk"


# -- the app: authentication and authorization --------------------------------------------


class FakeAuth:
    """Tokens "admin" (every DAG) and "credit" (credit_risk's DAGs only)."""

    async def user(self, request):
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or request.cookies.get("_token")
        if not token:
            raise HTTPException(401, "Not authenticated")
        if token not in ("admin", "credit"):
            raise HTTPException(403, "Invalid JWT token")
        return token

    def name(self, user):
        return user

    def can_read_dag(self, user, dag_id):
        return user == "admin" or dag_id.endswith("_credit_risk")


@pytest.fixture
def client(home):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette: "Using httpx with starlette.testclient is deprecated"
        from fastapi.testclient import TestClient

    app = create_app(auth=FakeAuth(), home=home, airflow_runs=FakeAirflow(), mlflow=FakeMlflow())
    return TestClient(app)


def test_no_token_is_401(client):
    for path in ("/", "/api/overview", f"/docs/local_site/validations/{LINE}/slice-1/20261123T100000.000000Z/abc.html"):
        r = client.get(path)
        assert r.status_code == 401 and r.json() == {"detail": "Not authenticated"}, path
        assert LINE not in r.text
    r = client.get("/", headers={"Accept": "text/html"})
    assert r.status_code == 401 and "Sign in" in r.text and "../auth/login?next=" in r.text
    assert client.get("/", headers={"Authorization": "Bearer forged"}).status_code == 403


def test_page_with_a_token(client):
    r = client.get("/", headers={"Authorization": "Bearer admin"})
    assert r.status_code == 200 and "slice-2" in r.text and "employment" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'nonce-" in csp and "http" not in csp
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in r.text
    cookie = client.get("/", cookies={"_token": "admin"})
    assert cookie.status_code == 200
    data = client.get("/api/overview", headers={"Authorization": "Bearer admin"}).json()
    assert [lv["name"] for lv in data["lines"]] == ["credit_risk", "employment", "fashion"]
    assert data["lines"][0]["batches"][2]["rows_clean"] == 2460


def test_lines_are_filtered_by_dag_access(client, home):
    data = client.get("/api/overview", headers={"Authorization": "Bearer credit"}).json()
    assert [lv["name"] for lv in data["lines"]] == ["credit_risk"]
    page = client.get("/", headers={"Authorization": "Bearer credit"}).text
    assert 'id="line-employment"' not in page
    # Data Docs of a line the user may not see are refused
    other = home / "gx/gx/uncommitted/data_docs/local_site/validations/employment/2016/t/p.html"
    other.parent.mkdir(parents=True)
    other.write_text("<html>employment</html>")
    r = client.get("/docs/local_site/validations/employment/2016/t/p.html", headers={"Authorization": "Bearer credit"})
    assert r.status_code == 403
    r = client.get("/docs/local_site/validations/employment/2016/t/p.html", headers={"Authorization": "Bearer admin"})
    assert r.status_code == 200 and "employment" in r.text


def test_docs_are_served_confined(client):
    auth = {"Authorization": "Bearer admin"}
    r = client.get(f"/docs/local_site/validations/{LINE}/slice-1/20261123T100000.000000Z/abc.html", headers=auth)
    assert r.status_code == 200 and "Validation of slice-1" in r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for bad in ("/docs/..%2F..%2Fgreat_expectations.yml", "/docs/local_site/..%2F..%2F..%2Fstate%2Fcredit_risk%2Fslice-1.json",
                "/docs/%2Fetc%2Fpasswd", "/docs/missing.html"):
        assert client.get(bad, headers=auth).status_code == 404, bad


def test_reports_are_served_by_name_only(client, home):
    auth = {"Authorization": "Bearer admin"}
    r = client.get(f"/reports/{LINE}/evaluation/{RUN1}", headers=auth)
    assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
    assert r.text == layout.evaluation_report_path(layout.run_dir(LINE, RUN1_ID, home)).read_text()
    assert "all thresholds met" in r.text and RUN1 in r.text
    drift = client.get(f"/reports/{LINE}/drift/b2.html", headers=auth)
    assert drift.status_code == 200 and drift.text == layout.drift_report_paths(LINE, "b2", home)[1].read_text()
    assert "b2" in drift.text
    assert client.get(f"/reports/{LINE}/drift/b2.html").status_code == 401
    write_training_run(home, "manual__2026-11-23T08:00:00+00:00", ["slice-1"], 0.7)  # not evaluated yet: no report
    for bad in (f"/reports/{LINE}/evaluation/..", f"/reports/{LINE}/evaluation/%2E%2E", f"/reports/{LINE}/drift/b1.json",
                f"/reports/{LINE}/drift/..%2Fhistory.jsonl", f"/reports/{LINE}/other/x",
                f"/reports/{LINE}/evaluation/manual__2026-11-23T08_00_00_00_00", f"/reports/{LINE}/evaluation/{RUN1}.",
                "/reports/..%2Fstate/drift/x.html"):
        assert client.get(bad, headers=auth).status_code in (403, 404), bad
    # a folder named before run ids were hashed (its manifest names the folder) is still served
    legacy = write_training_run(home, "manual__2026-11-19T10_00_00_00_00", ["slice-1"], 0.7)
    write_gate_result(home, legacy, "BLESSED", "all thresholds met", {"auc": 0.71})
    assert client.get(f"/reports/{LINE}/evaluation/{legacy.name}", headers=auth).status_code == 200
    # the longest run id Airflow keeps (250 characters) gets a folder whose report is served
    long = write_training_run(home, "manual__" + "x" * 220 + ":2026-11-19T10:00:00+00:00"[:22], ["slice-1"], 0.7)
    write_gate_result(home, long, "BLESSED", "all thresholds met", {"auc": 0.71})
    assert client.get(f"/reports/{LINE}/evaluation/{long.name}", headers=auth).status_code == 200
    emp = write_training_run(home, RUN1_ID, ["2016"], 0.7, line="employment")
    write_gate_result(home, emp, "NOT_BLESSED", "[Overall] auc below 0.7", {"auc": 0.6}, line="employment")
    assert client.get(f"/reports/employment/evaluation/{RUN1}", headers={"Authorization": "Bearer credit"}).status_code == 403
    assert client.get(f"/reports/employment/evaluation/{RUN1}", headers=auth).status_code == 200


def test_the_icon_is_public(client):
    r = client.get("/static/icon.svg")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    ET.fromstring(r.text)


def test_airflow_auth_refuses_a_request_without_token():
    import asyncio

    from starlette.requests import Request

    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""})
    with pytest.raises(HTTPException) as info:
        asyncio.run(AirflowAuth().user(request))
    assert info.value.status_code == 401


def test_the_plugin_wires_the_app_and_a_nav_view():
    import importlib.util

    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse
    from airflow.plugins_manager import AirflowPlugin

    path = Path(__file__).resolve().parent.parent / "plugins" / "factory_ui.py"
    spec = importlib.util.spec_from_file_location("factory_ui_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin = module.FactoryUIPlugin
    assert issubclass(plugin, AirflowPlugin) and plugin.name == "factory_ui"
    [app] = plugin.fastapi_apps
    assert app["url_prefix"] == "/factory" and app["app"].docs_url is None
    [view] = plugin.external_views
    model = ExternalViewResponse(**view)
    assert model.destination == "nav" and model.url_route == "model-factory"
    assert not model.href.startswith("/")  # relative to the UI's base URL


# -- an image line: quarantined images, the confusion matrix, galleries -------------------

FASHION = "fashion"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _idx(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images (uint8 [n, 28, 28]) and labels of a Fashion-MNIST split, read
    from the IDX files (big-endian header: magic, counts and sizes, then the bytes)."""
    with gzip.open(FASHION_MNIST / f"{split}-images-idx3-ubyte.gz") as f:
        magic, count, rows, cols = np.frombuffer(f.read(16), ">u4")
        assert magic == 2051 and count >= n
        images = np.frombuffer(f.read(n * rows * cols), np.uint8).reshape(n, rows, cols)
    with gzip.open(FASHION_MNIST / f"{split}-labels-idx1-ubyte.gz") as f:
        magic, count = np.frombuffer(f.read(8), ">u4")
        assert magic == 2049
        labels = np.frombuffer(f.read(n), np.uint8)
    return images, labels


def _png(pixels: np.ndarray, text: str | None = None) -> bytes:
    from PIL import Image, PngImagePlugin

    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", text)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _decode(src: str) -> np.ndarray:
    from PIL import Image

    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)), formats=["PNG"]))


MARKER = "<script>alert('stored')</script>"  # a text chunk in a stored PNG: never reaches the page


def _quarantine(home: Path, batch: str, landed_at: str, rows: list[dict]) -> None:
    """A cleaned image batch as the cleaning job leaves it: the ledger's report and the
    quarantine Parquet folder (a part file and Spark's _SUCCESS) in the contract's columns."""
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = layout.line_paths(FASHION, home)
    ledger.update(paths, batch, "landed", status=ledger.LANDED, file=str(paths.landing / f"{batch}.zip"),
                  format="images", sha256="0" * 64, bytes=4321, landed_at=landed_at)
    reasons: dict[str, int] = {}
    for r in rows:
        for reason in r["_reasons"]:
            reasons[reason] = reasons.get(reason, 0) + 1
    schema = pa.schema([("image_id", pa.string()), ("file", pa.string()), ("image", pa.binary()),
                        ("label", pa.string()), ("_reasons", pa.list_(pa.string()))])
    folder = paths.quarantine_batch(batch)
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"part-00000-{uuid.uuid4()}-c000.snappy.parquet")
    (folder / "_SUCCESS").write_text("")
    ledger.update(paths, batch, "cleaned", status=ledger.CLEANED, error=None, failed_stage=None, cleaning={
        "rows_in": 1000, "rows_clean": 1000 - len(rows), "rows_quarantined": len(rows), "duplicates_removed": 0,
        "duplicates": {}, "quarantine_reasons": reasons, "repairs": {}, "clean_path": str(paths.clean_batch(batch)),
        "quarantine_path": str(folder), "seconds": 3.1, "spark_version": "3.5.3", "spec_version": 1})


@pytest.fixture(scope="module")
def garments() -> tuple[np.ndarray, np.ndarray]:
    return _idx("train", 40)


def _fashion_home(home: Path, garments) -> dict[str, np.ndarray]:
    """Two cleaned batches of the fashion line with quarantined rows of every kind; the
    pixels each decodable row should show, by image id."""
    from PIL import Image

    images, _ = garments
    big = np.asarray(Image.fromarray(images[5]).resize((32, 32), Image.Resampling.NEAREST))
    truncated = _png(images[11])[:60]  # a PNG cut short: undecodable
    _quarantine(home, "slice-1", "2026-11-20T09:00:00+00:00", [
        {"image_id": "train-00001", "file": "train-00001.png", "image": _png(np.zeros((28, 28), np.uint8)),
         "label": "0", "_reasons": ["blank"]},
        {"image_id": "train-00002", "file": "train-00002.png", "image": _png(np.zeros((2000, 2000), np.uint8)),
         "label": "4", "_reasons": ["too_large", "wrong_size"]},
    ])
    _quarantine(home, "slice-2", "2026-11-21T09:00:00+00:00", [
        {"image_id": "train-00007", "file": "train-00007.png", "image": _png(images[7], MARKER), "label": "12",
         "_reasons": ["label_not_a_class"]},
        {"image_id": "train-00011", "file": "train-00011.png", "image": truncated, "label": "3",
         "_reasons": ["undecodable"]},
        {"image_id": None, "file": "train-00019.png", "image": None, "label": "3", "_reasons": ["no_image_file"]},
        {"image_id": "train-00005", "file": "train-00005.png", "image": _png(big), "label": None,
         "_reasons": ["wrong_size"]},
    ])
    return {"train-00007": images[7], "train-00005": big, "train-00001": np.zeros((28, 28), np.uint8)}


def _upscaled(pixels: np.ndarray, box: int = 84) -> np.ndarray:
    scale = box // max(pixels.shape)
    return np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)


def test_an_image_line_shows_its_quarantined_images(tmp_path, garments):
    home = tmp_path / "factory"
    expected = _fashion_home(home, garments)
    view = gather(home, [FASHION]).line(FASHION)
    assert view.modality == "image" and view.notes == []
    shown = view.quarantine_images
    # newest batch first, in file order, with the reasons the cleaning job gave
    assert [(g.batch_id, g.image_id, g.details) for g in shown] == [
        ("slice-2", "train-00007", ["label_not_a_class"]), ("slice-2", "train-00011", ["undecodable"]),
        ("slice-2", None, ["no_image_file"]), ("slice-2", "train-00005", ["wrong_size"]),
        ("slice-1", "train-00001", ["blank"]), ("slice-1", "train-00002", ["too_large", "wrong_size"])]
    by_id = {g.image_id: g for g in shown}
    for image_id, pixels in expected.items():  # decoded, upscaled by a whole factor, nearest-neighbour
        assert np.array_equal(_decode(by_id[image_id].src), _upscaled(pixels)), image_id
    assert _decode(by_id["train-00005"].src).shape == (64, 64)
    assert by_id["train-00011"].src is None and by_id["train-00011"].problem.startswith("cannot be decoded")
    assert by_id[None].src is None and by_id[None].problem == "no image" and by_id[None].caption.startswith("train-00019.png")
    assert by_id["train-00002"].src is None and by_id["train-00002"].problem == "too large to show (2000x2000)"
    assert by_id["train-00007"].caption == "train-00007 \u00b7 label 12"


def test_quarantine_reads_stop_at_the_limit(tmp_path, garments):
    home = tmp_path / "factory"
    _fashion_home(home, garments)
    rows = records.read_quarantine(FASHION, "slice-2", home, columns=["image_id", "_reasons"], limit=2)
    assert rows == [{"image_id": "train-00007", "_reasons": ["label_not_a_class"]},
                    {"image_id": "train-00011", "_reasons": ["undecodable"]}]
    assert records.read_quarantine(FASHION, "slice-9", home) == []  # not cleaned
    with pytest.raises(records.RecordError, match="no column"):
        records.read_quarantine(FASHION, "slice-2", home, columns=["image_id", "loan_id"])
    view = gather(home, [FASHION]).line(FASHION)
    from pipelines.ui.gather import read_quarantine_images

    notes: list[str] = []
    batches = list(reversed(ledger.all_records(layout.line_paths(FASHION, home))))
    assert [g.image_id for g in read_quarantine_images(FASHION, batches, home, notes, limit=3)] == [
        "train-00007", "train-00011", None]
    assert len(view.quarantine_images) == 6 and notes == []


def test_an_unreadable_quarantine_is_a_note(tmp_path, garments):
    home = tmp_path / "factory"
    _fashion_home(home, garments)
    part = next(layout.line_paths(FASHION, home).quarantine_batch("slice-2").glob("part-*"))
    part.write_bytes(part.read_bytes()[:100])  # a part file cut short
    view = gather(home, [FASHION]).line(FASHION)
    assert [g.batch_id for g in view.quarantine_images] == ["slice-1", "slice-1"]
    assert any(n.startswith("quarantine of slice-2:") and "cannot be read as Parquet" in n for n in view.notes)
    assert not any(str(home) in n for n in view.notes)


def test_the_page_shows_thumbnails_reasons_and_placeholders(tmp_path, garments):
    home = tmp_path / "factory"
    expected = _fashion_home(home, garments)
    html = render.page(gather(home, [FASHION]), nonce="n")
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 3
    assert [_decode(s).shape for s in sources] == [(84, 84), (64, 64), (84, 84)]
    assert np.array_equal(_decode(sources[0]), _upscaled(expected["train-00007"]))
    for reason in ("label not a class", "undecodable", "no image file", "wrong size", "blank", "too large"):
        assert reason in html, reason
    assert html.count('class="placeholder"') == 3 and "cannot be decoded" in html and "too large to show (2000x2000)" in html
    # the stored bytes are never passed through: the PNG's text chunk is gone, even encoded
    assert "alert(" not in html and all(b"alert" not in base64.b64decode(s.split(",", 1)[1]) for s in sources)
    assert base64.b64encode(_png(garments[0][7], MARKER)).decode() not in html
    assert 'src="http' not in html


def test_a_tabular_line_has_no_image_parts(home):
    view = gather(home, [LINE]).line(LINE)
    assert view.modality == "tabular" and view.quarantine_images == [] and view.evaluation is None
    html = render.page(gather(home, [LINE]))
    assert "<img" not in html and 'class="gallery"' not in html and "<h3>Evaluation</h3>" not in html
    assert "Quarantined images" not in html and 'class="confusion"' not in html


def test_the_app_serves_thumbnails_under_its_csp(client, home, garments):
    _fashion_home(home, garments)
    r = client.get("/", headers={"Authorization": "Bearer admin"})
    assert r.status_code == 200 and 'id="line-fashion"' in r.text
    sources = re.findall(r'<img src="([^"]+)"', r.text)
    assert len(sources) == 3 and all(_decode(s).size for s in sources)
    csp = r.headers["content-security-policy"]
    assert "img-src 'self' data:;" in csp and "default-src 'none'" in csp and "http" not in csp
    assert "<img" not in client.get("/", headers={"Authorization": "Bearer credit"}).text  # fashion is not theirs


def _evaluation_data(n: int = 2000) -> tuple[dict, list[dict], np.ndarray, np.ndarray, np.ndarray]:
    """A confusion matrix and captioned examples as an evaluation of the official test set
    would give them: true classes from the IDX labels, predictions that confuse shirts
    (6) with T-shirts (0) and every 9th pullover (2) with a coat (4)."""
    images, labels = _idx("t10k", n)
    predicted = labels.copy()
    predicted[labels == 6] = 0
    pullovers = np.flatnonzero(labels == 2)
    predicted[pullovers[::9]] = 4
    matrix = np.zeros((10, 10), int)
    np.add.at(matrix, (labels, predicted), 1)
    examples = [{"image_id": f"t10k-{i:05d}", "png": _png(images[i]),
                 "caption": f"true {labels[i]}, predicted {predicted[i]} (0.93)"} for i in range(12)]
    return {"classes": list(range(10)), "matrix": matrix.tolist()}, examples, images, labels, matrix


def test_confusion_matrix_and_gallery_from_plain_data(tmp_path):
    from pipelines.specs import load_spec
    from pipelines.ui.gather import class_names, evaluation_view

    confusion, examples, images, labels, matrix = _evaluation_data()
    names = class_names(load_spec(FASHION))
    assert names["0"] == "T-shirt/top" and names["9"] == "Ankle boot"
    evaluation = evaluation_view(confusion, examples, names=names, run="manual__2026-12-01")
    cm = evaluation.confusion
    assert cm.classes[0] == "T-shirt/top" and cm.classes[6] == "Shirt" and cm.total == 2000
    assert cm.row_totals == np.bincount(labels, minlength=10).tolist() and cm.column_totals == matrix.sum(0).tolist()
    assert cm.recall(6) == 0.0 and cm.shade(6, 0) == 10 and cm.shade(1, 1) == 10 and cm.shade(6, 6) == 0
    pullovers = matrix[2].sum()
    assert cm.shade(2, 4) == round(matrix[2, 4] / pullovers * 10) and 0 < cm.shade(2, 4) < cm.shade(2, 2)
    assert [_decode(g.src).shape for g in evaluation.gallery] == [(84, 84)] * 12
    assert np.array_equal(_decode(evaluation.gallery[3].src), _upscaled(images[3]))

    overview = gather(tmp_path / "factory", [FASHION])
    overview.line(FASHION).evaluation = evaluation
    html = render.page(overview)
    table = html[html.index('<table class="confusion">'):html.index("</table>", html.index('<table class="confusion">'))]
    root = ET.fromstring(table.replace("&ndash;", "-") + "</table>")
    header = [th.text for th in root.find("thead/tr")]
    assert header == ["true \\ predicted", *[names[str(i)] for i in range(10)], "total", "recall"]
    body = [[td.text for td in tr.findall("td")] for tr in root.find("tbody")]
    assert [row[:10] for row in body] == [[f"{x:,}" for x in row] for row in matrix.tolist()]
    assert [row[10] for row in body] == [f"{x:,}" for x in matrix.sum(1)]
    foot = [td.text for td in root.find("tfoot/tr").findall("td")]
    assert foot[:11] == [f"{x:,}" for x in [*matrix.sum(0), matrix.sum()]]
    assert f"accuracy {np.trace(matrix) / matrix.sum():.4f}" in html
    shirts = root.find("tbody")[6].findall("td")
    assert "h10" in shirts[0].get("class").split() and "diag" in shirts[6].get("class").split()
    assert "<h3>Evaluation</h3>" in html and "true 9, predicted 9 (0.93)" in html and "manual__2026-12-01" in html
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == 12


def test_the_evaluation_adapter_refuses_a_bad_matrix():
    from pipelines.ui.gather import evaluation_view

    for bad in ({"classes": [0, 1], "matrix": [[1, 2]]}, {"classes": [0, 1], "matrix": [[1, 2], [3]]},
                {"classes": [0, 1], "matrix": [[1, -2], [3, 4]]}, {"classes": [0, 1], "matrix": [[1, 2.5], [3, 4]]},
                {"classes": [], "matrix": []}):
        with pytest.raises(ValueError, match="confusion matrix"):
            evaluation_view(bad)
    only_images = evaluation_view(None, [{"image_id": "x", "png": b"\x89PNG junk", "caption": "true 1"}])
    assert only_images.confusion is None and only_images.gallery[0].problem.startswith("cannot be decoded")


def test_live_serving_shows_the_version_rate_latency_and_window_verdicts(home):
    """The model server's log of the last hour and the monitor's live windows, written by
    their own writers (:class:`PredictionLog`, :func:`score_live_windows`)."""
    from datetime import UTC, datetime, timedelta

    from pipelines.monitoring.live import score_live_windows
    from pipelines.serving.predlog import PredictionLog

    assert gather(home, [LINE]).line(LINE).live is None  # nothing logged yet: no section
    version = layout.serving_base(LINE, home) / "1"
    save_profile(reference_profile(), layout.model_profile_path(version))
    now = datetime.now(UTC)
    earlier = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)  # a window that has closed
    frame = batch_frame(250, 0.3)
    log = PredictionLog(LINE, home)

    def answered(rid: str, i: int, at: datetime, latency: float, row: dict) -> dict:
        return {"request_id": rid, "instance": i, "time": at.isoformat(timespec="microseconds"), "line": LINE,
                "model_version": 1, "signature": "predict_features", "inputs": {"int_rate": row["int_rate"],
                "term": row["term"]}, "outputs": {"probabilities": [row["score"]]}, "latency_ms": latency}

    rows = frame.to_dict("records")
    log.append([answered(f"w{i}", 0, earlier + timedelta(seconds=10 * i), 5.0, r) for i, r in enumerate(rows)])
    # the last hour: 90 requests of two instances each (too few for a window), two slow
    log.append([answered(f"h{i}", j, now - timedelta(minutes=50) + timedelta(seconds=i), 300.0 if i >= 88 else 2.0 + i % 3,
                         rows[i]) for i in range(90) for j in (0, 1)])
    log.close()
    [window] = score_live_windows(LINE, home)["windows"]
    view = gather(home, [LINE]).line(LINE)
    live = view.live
    assert live.version == 1 and (live.requests, live.instances) == (90, 180)
    assert live.per_minute == round(90 / 60, 2)
    assert live.latency_p50_ms == 3.0 and live.latency_p99_ms == 300.0
    [scored] = live.windows
    assert scored.batch_id == window["batch_id"] == f"live-{earlier:%Y%m%dT%H%M}-v1"
    assert scored.model_version == "1" and scored.drifted is False and scored.report
    html = render.page(gather(home, [LINE]), user="admin", nonce="abc")
    assert "<h3>Live serving</h3>" in html and window["batch_id"] in html and "p99" in html
