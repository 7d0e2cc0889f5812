"""The Model Factory view without a browser: data gathering from a factory home laid out as
the stages leave it, the SVG charts, the page, the Data Docs path confinement, and the
app's authentication and per-line authorization (with a stand-in for Airflow's auth
manager; tests/test_ui_browser.py runs the real one)."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fastapi import HTTPException

from pipelines.ui import charts, docs, render
from pipelines.ui.app import AirflowAuth, create_app
from pipelines.ui.data import (
    MAX_FEATURE,
    DriftPoint,
    DriftSeries,
    MlflowLine,
    RunRef,
    evaluation_summary,
    gather,
    mlflow_run_url,
    run_folder_name,
)

LINE = "credit_risk"
RUN1 = "manual__2026-11-20T10_00_00_00_00"
RUN2 = "scheduled__2026-11-22T03_00_00_00_00"


def _json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _docs_page(home: Path, batch: str) -> Path:
    page = home / "gx/gx/uncommitted/data_docs/local_site/validations" / LINE / batch / "20261123T100000.000000Z" / "abc.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(f"<html><body>Validation of {batch}</body></html>")
    return page


def _ledger(home: Path, batch: str, **fields) -> None:
    record = {"line": LINE, "batch_id": batch, "events": [], **fields}
    _json(home / "state" / LINE / f"{batch}.json", record)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A factory home with what ingest, training, the gate, serving and drift leave."""
    home = tmp_path / "factory"
    docs_ok = _docs_page(home, "slice-1")
    docs_bad = _docs_page(home, "slice-2")
    cleaning = {"rows_in": 2465, "rows_clean": 2460, "rows_quarantined": 3, "duplicates_removed": 2,
                "quarantine_reasons": {"funded_amnt: out of range": 3}, "clean_path": "/x"}
    _ledger(home, "slice-1", status="validated", landed_at="2026-11-20T09:00:00+00:00",
            updated_at="2026-11-20T09:05:00+00:00", cleaning=cleaning,
            validation={"success": True, "evaluated": 31, "successful": 31, "failed": [], "data_docs": str(docs_ok)})
    _ledger(home, "slice-2", status="failed", landed_at="2026-11-21T09:00:00+00:00", failed_stage="validation",
            error="2 expectation(s) failed <img src=x onerror=alert(1)>",
            cleaning={**cleaning, "rows_in": 2464, "rows_clean": 2464, "rows_quarantined": 0, "duplicates_removed": 0},
            validation={"success": False, "evaluated": 31, "successful": 29, "data_docs": str(docs_bad),
                        "failed": [{"expectation": "expect_column_values_to_be_between", "column": "int_rate"},
                                   {"expectation": "expect_table_row_count_to_be_between", "column": None}]})
    _ledger(home, "slice-3", status="landed", landed_at="2026-11-22T09:00:00+00:00")

    troot = home / "training" / LINE
    for run, auc, batches in ((RUN1, 0.71, ["slice-1"]), (RUN2, 0.69, ["slice-1", "slice-2"])):
        _json(troot / run / "manifest.json", {"run_id": run, "batches": batches, "rows": {"train": 1500}})
        _json(troot / run / "result.json", {"val_auc": auc, "epochs_run": 12, "samples_per_s": 4100.0})
        (troot / run / "mlflow_run_id").write_text(f"mlflow-{run[:6]}\n")
    os.utime(troot / RUN1 / "manifest.json", (1_700_000_000, 1_700_000_000))  # RUN1 is the older run
    # the gate's result.json (pipelines.evaluation.gate), and its report
    _json(troot / RUN1 / "evaluation" / "result.json", {
        "blessing": "BLESSED", "why": "all thresholds met (value thresholds only)", "pushed": True,
        "serving": {"version": 1, "path": str(home / "serving" / LINE / "1")}, "force_bless_reason": None,
        "overall": {"auc": 0.712, "recall": 0.6},
        "metrics": {"Overall": {"candidate": {"auc": 0.712, "recall": 0.6}, "baseline": {}, "diff": {}},
                    "term:term_36": {"candidate": {"auc": 0.7}, "baseline": {}, "diff": {}}}})
    (troot / RUN1 / "evaluation" / "report.html").write_text("<html>gate report</html>")
    _json(troot / RUN2 / "evaluation" / "result.json", {"blessed": False, "metrics": {"auc": {"value": 0.69}}})

    serving = home / "serving" / LINE
    _json(serving / "1" / "assets.extra" / "factory_push.json",
          {"blessing": "BLESSED", "model_uri": str(troot / RUN1 / "model"), "pushed_at": "2026-11-20T10:30:00+00:00"})

    drift = home / "drift" / LINE
    reports = []
    for i, (rate, term) in enumerate(((0.01, 0.02), (0.05, 0.31)), start=1):
        reports.append(_json(drift / "reports" / f"b{i}.json", {"features": {
            "int_rate": {"status": "ok", "metrics": {"psi": {"value": rate}}},
            "term": {"status": "ok", "metrics": {"psi": {"value": term}}},
            "gone": {"status": "missing"}}}))
    (drift / "reports" / "b2.html").write_text("<html>drift report b2</html>")
    history = [
        {"kind": "batch", "batch_id": "b1", "scored_at": "2026-11-21T00:00:00+00:00", "model_version": "1",
         "drifted": False, "drifted_features": [], "max_psi": {"feature": "term", "value": 0.02},
         "report_path": str(reports[0])},
        {"kind": "retrain", "event": "pending", "run_id": "drift__1"},
        {"kind": "batch", "batch_id": "b2", "scored_at": "2026-11-22T00:00:00+00:00", "model_version": "1",
         "drifted": True, "drifted_features": [{"feature": "term", "severity": 1.5, "by": "psi"}],
         "max_psi": {"feature": "term", "value": 0.31}, "report_path": str(reports[1]),
         "html_path": str(drift / "reports" / "b2.html")},
        {"kind": "batch", "batch_id": "b3", "scored_at": "2026-11-23T00:00:00+00:00", "model_version": "1",
         "drifted": False, "scores": {"int_rate": 0.03, "term": 0.05, "__score__": 0.01}},
    ]
    (drift / "history.jsonl").write_text("\n".join(json.dumps(r) for r in history) + '\n{"kind": "batch", "bat')
    return home


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
    assert old.val_auc == 0.71 and old.rows_train == 1500 and old.batches == ["slice-1"]
    assert old.blessing == "BLESSED" and old.eval_metrics == {"auc": 0.712, "recall": 0.6}
    assert old.blessing_why.startswith("all thresholds met")
    assert old.eval_report == f"reports/{LINE}/evaluation/{RUN1}" and new.eval_report is None
    assert (old.serving_version, old.in_serving) == (1, True) and old.mlflow_run_id == f"mlflow-{RUN1[:6]}"
    assert new.blessing == "NOT BLESSED" and new.eval_metrics == {"auc": 0.69}
    assert new.serving_version is None and not new.in_serving
    assert view.serving_version == 1 and view.serving[0].run == RUN1


def test_a_rollback_moves_serving_to_the_previous_version(home):
    serving = home / "serving" / LINE
    _json(serving / ".retired" / "2" / "assets.extra" / "factory_push.json",
          {"blessing": "FORCED", "run_dir": str(home / "training" / LINE / RUN2)})
    _json(serving / ".retired" / "2.json", {"reason": "AUC dropped in production"})
    view = gather(home, [LINE]).line(LINE)
    assert [(s.version, s.retired, s.in_serving) for s in view.serving] == [(2, True, False), (1, False, True)]
    new = view.models[0]
    assert (new.serving_version, new.retired, new.in_serving) == (2, True, False)
    assert view.serving[0].retired_reason == "AUC dropped in production"


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
    view = gather(home, [LINE]).line(LINE)
    series = {s.feature: s for s in view.drift_series}
    assert set(series) == {"int_rate", "term", "__score__"}
    assert [p.value for p in series["term"].points] == [0.02, 0.31, 0.05]
    assert [p.batch_id for p in series["int_rate"].points] == ["b1", "b2", "b3"]
    assert series["term"].threshold == 0.2  # the spec's default PSI threshold
    assert view.drift_series[0].feature == "__score__"  # the score first, then by peak
    assert [d.batch_id for d in view.drift_batches] == ["b3", "b2", "b1"]
    assert view.drift_batches[1].drifted and view.drift_batches[1].drifted_features == ["term"]
    assert view.drift_batches[1].report == f"reports/{LINE}/drift/b2.html" and view.drift_batches[0].report is None
    assert view.notes == []  # the partial last line is an append in progress, not an error


def test_history_with_only_the_largest_psi(home):
    path = home / "drift" / LINE / "history.jsonl"
    path.write_text(json.dumps({"kind": "batch", "batch_id": "b9", "max_psi": {"feature": "term", "value": 0.4}}) + "\n")
    series = gather(home, [LINE]).line(LINE).drift_series
    assert [(s.feature, s.label, [p.value for p in s.points]) for s in series] == [
        (MAX_FEATURE, "largest feature PSI", [0.4])]


def test_a_drift_report_outside_the_home_is_not_read(home, tmp_path):
    outside = _json(tmp_path / "elsewhere.json", {"features": {"secret": {"status": "ok", "metrics": {"psi": {"value": 9}}}}})
    (home / "drift" / LINE / "history.jsonl").write_text(json.dumps({"kind": "batch", "report_path": str(outside)}))
    assert gather(home, [LINE]).line(LINE).drift_series == []


def test_an_empty_home_shows_none_yet(tmp_path):
    overview = gather(tmp_path / "nothing")
    assert {lv.name for lv in overview.lines} >= {"credit_risk", "employment"}
    for lv in overview.lines:
        assert (lv.batches, lv.models, lv.serving, lv.drift_series, lv.notes) == ([], [], [], [], [])
    html = render.page(overview)
    assert "No batch has landed yet" in html and "No model trained yet" in html and "No drift scores yet" in html


def test_unreadable_files_become_notes(home):
    (home / "state" / LINE / "broken.json").write_text("{not json")
    (home / "training" / LINE / RUN1 / "result.json").write_text("[truncated")
    view = gather(home, [LINE]).line(LINE)
    assert view.batch_total == 3
    assert any("broken.json" in n for n in view.notes) and any(RUN1 in n for n in view.notes)
    assert view.models[1].has_result is False


def test_allowed_filters_lines(home):
    assert [lv.name for lv in gather(home, allowed={"employment"}).lines] == ["employment"]


def test_evaluation_summary_shapes():
    assert evaluation_summary({"blessing": "NOT_BLESSED"})["blessing"] == "NOT BLESSED"
    assert evaluation_summary({"blessed": True, "pushed_version": "4"}) == {
        "blessing": "BLESSED", "metrics": {}, "version": 4, "why": None}
    gate = {"blessing": "FORCED", "force_bless_reason": "hotfix", "pushed": True, "serving": {"version": 3},
            "why": "force-blessed despite: auc", "metrics": {"Overall": {"candidate": {"auc": 0.55}}}}
    assert evaluation_summary(gate) == {"blessing": "FORCED", "metrics": {"auc": 0.55}, "version": 3,
                                        "why": "force-blessed despite: auc"}
    assert evaluation_summary({"blessing": "NOT_BLESSED", "pushed": False, "serving": None})["version"] is None
    assert evaluation_summary({"blessed": False, "force_bless_reason": "hotfix"})["blessing"] == "FORCED"
    assert evaluation_summary({"version": 1})["version"] is None  # a format version, not a push
    assert evaluation_summary({"pushed": True, "version": 5})["version"] == 5
    assert evaluation_summary({"pushed": {"version": 6}})["version"] == 6
    assert evaluation_summary({"metrics": {"candidate": {"auc": 0.7}, "baseline": {"auc": 0.6}}})["metrics"] == {"auc": 0.7}


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
    assert [lv["name"] for lv in data["lines"]] == ["credit_risk", "employment"]
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
    assert r.status_code == 200 and "gate report" in r.text and "default-src 'self'" in r.headers["content-security-policy"]
    assert client.get(f"/reports/{LINE}/drift/b2.html", headers=auth).text == "<html>drift report b2</html>"
    assert client.get(f"/reports/{LINE}/drift/b2.html").status_code == 401
    for bad in (f"/reports/{LINE}/evaluation/..", f"/reports/{LINE}/evaluation/%2E%2E", f"/reports/{LINE}/drift/b1.json",
                f"/reports/{LINE}/drift/..%2Fhistory.jsonl", f"/reports/{LINE}/other/x", f"/reports/{LINE}/evaluation/{RUN2}",
                "/reports/..%2Fstate/drift/x.html"):
        assert client.get(bad, headers=auth).status_code in (403, 404), bad
    (home / "training" / "employment" / RUN1 / "evaluation").mkdir(parents=True)
    (home / "training" / "employment" / RUN1 / "evaluation" / "report.html").write_text("<html>emp</html>")
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
