"""The Model Factory view for real: the Airflow runtime with the plugin, a real batch of
credit_risk landed and run through the ingest DAG (Spark cleaning, Great Expectations), and
headless Chromium (Selenium through Debian's chromedriver, see ``tests/browser.py``) opening
the view with the Airflow session cookie, standalone and inside the Airflow UI.

The training run, its evaluation and push are written by those stages' own record writers
and the drift history by the drift monitor itself (training is a Horovod job of minutes,
outside this test's scope); the batches, their counts, validation and Data Docs, and the
Airflow runs are real.

Screenshots go to the test's tmp dir, and a copy to ``bench/results/ui/``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from browser import chromium, evaluate, group, group_alive, missing, screenshot, wait_for
from factory_records import batch_frame, push, reference_profile, write_gate_result, write_training_run

from pipelines import runtime
from pipelines.catalog import layout, ledger
from pipelines.catalog.layout import line_paths
from pipelines.config import REPO_ROOT, airflow_home, apply_airflow_environment
from pipelines.ingest import landing
from pipelines.ingest.sources import load_source
from pipelines.monitoring.batch import monitor_batch
from pipelines.monitoring.profile import save_profile
from pipelines.runtime import api
from pipelines.specs import load_spec
from pipelines.ui.data import run_folder_name

pytestmark = pytest.mark.integration

PORT = "18280"
SERVING_PORT = "18281"  # the model server's, off the default like the API's
LINE = "credit_risk"
MLFLOW_UI = "http://mlflow.factory.invalid:5000"
RESULTS = REPO_ROOT / "bench" / "results" / "ui"
TRAIN_RUN = "manual__2026-11-23T08:00:00+00:00"


def _later_stages(home: Path) -> None:
    """A training run with its evaluation, its push and a drift history on four batches,
    written by the stages' own writers (tests/factory_records.py) and the drift monitor."""
    run = write_training_run(home, TRAIN_RUN, ["ui-1"], 0.7042, line=LINE,
                             mlflow_run_id="0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    pushed = push(home, run, "BLESSED", line=LINE)
    write_gate_result(home, run, "BLESSED", "all thresholds met (value thresholds only (no blessed model yet))",
                      {"auc": 0.6981, "recall": 0.61}, pushed=pushed, line=LINE)
    profile = save_profile(reference_profile(), layout.drift_profile_path(pushed[1]))
    for i, share_60 in enumerate((0.31, 0.33, 0.8, 0.36), start=1):
        monitor_batch(LINE, batch_frame(500, share_60), profile, batch_id=f"ui-d{i}", scores="score",
                      model_version="1", home=home)


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    if reason := missing():
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("ui") / "factory"
    saved = dict(os.environ)
    for key in ("FACTORY_HOME", "AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "MLFLOW_TRACKING_URI"):
        os.environ.pop(key, None)
    os.environ.update({
        "FACTORY_HOME": str(home),
        "FACTORY_API_PORT": PORT,
        "FACTORY_SERVING_PORT": SERVING_PORT,
        # only what this test unpauses runs (no training set off by the asset event)
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "FACTORY_MLFLOW_UI": MLFLOW_UI,
    })
    apply_airflow_environment(home)
    try:
        record = runtime.start(home)
        try:
            yield home, record
        finally:
            runtime.stop(home)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def ingested(factory):
    """ui-1 landed and run through ingest_credit_risk; ui-2 landed only."""
    home, record = factory
    spec = load_spec(LINE)
    source = load_source(spec)
    landing.land_frame(spec, source.iloc[6000:6500], "ui-1", home)
    creds = runtime.admin()
    admin = api.Client(record["url"], creds.username, creds.password)
    dag_id = f"ingest_{LINE}"
    admin.unpause(dag_id)
    run = admin.trigger(dag_id, {"batch_id": "ui-1"})
    final = admin.wait(dag_id, run["dag_run_id"], timeout_s=600)
    assert final["state"] == "success"
    # Unpausing also let the scheduler start the @hourly run; let it end, pause, then land
    # ui-2, which stays "landed".
    for other in admin.runs(dag_id):
        admin.wait(dag_id, other["dag_run_id"], timeout_s=600)
    admin.pause(dag_id)
    landing.land_frame(spec, source.iloc[7000:7300], "ui-2", home)
    _later_stages(home)
    runs = {r["dag_run_id"]: r["state"] for r in admin.runs(dag_id)}
    return {"admin": admin, "runs": runs, "ledger": ledger.read(line_paths(LINE, home), "ui-1")}


def test_the_view_needs_an_airflow_token(factory, ingested):
    home, record = factory
    base = f"{record['url']}/factory"
    for path in ("/", "/api/overview"):
        r = httpx.get(base + path)
        assert r.status_code == 401 and "ui-1" not in r.text, path
    r = httpx.get(base + "/", headers={"Accept": "text/html"})
    assert r.status_code == 401 and "Sign in" in r.text
    r = httpx.get(base + "/api/overview", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 403
    r = httpx.get(base + "/", cookies={"_token": "not-a-jwt"})
    assert r.status_code in (401, 403) and "ui-1" not in r.text

    import jwt

    token = ingested["admin"].token
    claims = jwt.decode(token, options={"verify_signature": False})
    now = int(time.time())
    claims.update(iat=now - 7200, nbf=now - 7200, exp=now - 60)
    secret = os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET") or (airflow_home(home) / "jwt_secret").read_text().strip()
    expired = jwt.encode(claims, secret, algorithm=jwt.get_unverified_header(token)["alg"])
    r = httpx.get(base + "/api/overview", headers={"Authorization": f"Bearer {expired}"})
    assert (r.status_code, r.json()["detail"]) == (401, "Token Expired")

    # a viewer may read; the menu icon is public
    v = runtime.viewer()
    viewer = api.Client(record["url"], v.username, v.password)
    r = httpx.get(base + "/api/overview", headers={"Authorization": f"Bearer {viewer.token}"})
    assert r.status_code == 200 and [lv["name"] for lv in r.json()["lines"]] == ["credit_risk", "employment", "fashion"]
    assert httpx.get(base + "/static/icon.svg").status_code == 200


def test_plugin_is_registered_with_airflow(factory, ingested):
    _, record = factory
    r = httpx.get(f"{record['url']}/api/v2/plugins", headers={"Authorization": f"Bearer {ingested['admin'].token}"})
    assert r.status_code == 200
    [plugin] = [p for p in r.json()["plugins"] if p["name"] == "factory_ui"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/factory"
    assert plugin["external_views"][0]["url_route"] == "model-factory"


def test_overview_has_the_real_batches_and_runs(factory, ingested):
    _, record = factory
    r = httpx.get(f"{record['url']}/factory/api/overview", headers={"Authorization": f"Bearer {ingested['admin'].token}"})
    line = next(lv for lv in r.json()["lines"] if lv["name"] == LINE)
    batches = {b["batch_id"]: b for b in line["batches"]}
    cleaning = ingested["ledger"]["cleaning"]
    ui1 = batches["ui-1"]
    assert ui1["status"] == "validated" and ui1["rows_in"] == cleaning["rows_in"] == 500
    assert (ui1["rows_clean"], ui1["rows_quarantined"], ui1["duplicates_removed"]) == (
        cleaning["rows_clean"], cleaning["rows_quarantined"], cleaning["duplicates_removed"])
    assert ui1["validation"]["success"] is True and ui1["validation"]["docs"]
    # the latest ingest run that processed it (the triggered one, or the scheduled one if it ran later)
    assert ui1["airflow"]["dag_id"] == f"ingest_{LINE}" and ui1["airflow"]["state"] == "success"
    assert ui1["airflow"]["run_id"] in ingested["runs"]
    assert batches["ui-2"]["status"] == "landed" and batches["ui-2"]["airflow"] is None
    [model] = line["models"]
    assert model["blessing"] == "BLESSED" and model["in_serving"] and model["serving_version"] == 1
    assert line["serving_version"] == 1 and len(line["drift_series"]) == 3


def test_data_docs_are_served_confined(factory, ingested):
    _, record = factory
    auth = {"Authorization": f"Bearer {ingested['admin'].token}"}
    base = f"{record['url']}/factory"
    docs = next(b for b in httpx.get(base + "/api/overview", headers=auth).json()["lines"][0]["batches"]
                if b["batch_id"] == "ui-1")["validation"]["docs"]
    r = httpx.get(f"{base}/docs/{docs}", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and "ui-1" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert httpx.get(f"{base}/docs/{docs}").status_code == 401
    assert httpx.get(f"{base}/docs/local_site/index.html", headers=auth).status_code == 200
    for bad in ("..%2F..%2Fgreat_expectations.yml", "..%2F..%2F..%2Fairflow%2Fjwt_secret", "%2Fetc%2Fpasswd"):
        assert httpx.get(f"{base}/docs/{bad}", headers=auth).status_code == 404, bad


def test_the_view_in_headless_chromium(factory, ingested, tmp_path):
    home, record = factory
    url = record["url"]
    ledger = ingested["ledger"]["cleaning"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    with chromium(tmp_path / "chromium-profile") as browser:
        driver = browser.driver
        # WebDriver sets cookies for the page it is on: a public one of the same origin
        driver.get(f"{url}/factory/static/icon.svg")
        driver.add_cookie({"name": "_token", "value": ingested["admin"].token, "path": "/",
                           "httpOnly": True, "sameSite": "Lax"})
        assert "chromium" in group(browser.pgid)  # the browser shares chromedriver's process group

        # the view on its own
        driver.get(f"{url}/factory/")
        wait_for(driver, "document.querySelector('section.line[data-line=\"credit_risk\"] table.batches') !== null")
        text = evaluate(driver, "document.body.innerText")
        for expected in ("Model Factory", "credit_risk", "employment", "ui-1", "ui-2", "validated", "landed",
                         f"{ledger['rows_in']:,}", f"{ledger['rows_clean']:,}", "passed", "BLESSED", "serving",
                         "signed in as admin", "Evaluation report"):
            assert expected in text, expected
        links = evaluate(driver, "Array.from(document.querySelectorAll('a')).map(a => a.href)")
        overview = httpx.get(f"{url}/factory/api/overview", cookies={"_token": ingested["admin"].token}).json()
        run_id = next(b for b in overview["lines"][0]["batches"] if b["batch_id"] == "ui-1")["airflow"]["run_id"]
        run_link = f"{url}/dags/ingest_{LINE}/runs/{quote(run_id, safe='')}"
        assert run_link in links, links
        assert any(h.startswith(f"{url}/factory/docs/local_site/validations/") for h in links)
        assert any(h.startswith(MLFLOW_UI + "/#/runs/0f1e2d3c") for h in links)
        assert f"{url}/factory/reports/{LINE}/evaluation/{run_folder_name(TRAIN_RUN)}" in links
        assert f"{url}/factory/reports/{LINE}/drift/ui-d3.html" in links
        assert evaluate(driver, "document.querySelectorAll('svg.chart').length") == 3
        # nothing was fetched from anywhere else
        resources = evaluate(driver, "performance.getEntriesByType('resource').map(e => e.name)")
        assert all(r.startswith(url) for r in resources), resources
        shot = screenshot(driver, tmp_path / "model-factory.png")
        shutil.copy(shot, RESULTS / "model-factory.png")

        # the Data Docs page behind the link
        driver.get(evaluate(driver, "document.querySelector('table.batches a[href^=\"docs/\"]').href"))
        wait_for(driver, "document.body && document.body.innerText.includes('ui-1')", timeout_s=30)

        # inside the Airflow UI: the navigation entry and the view in its frame
        driver.get(f"{url}/plugin/model-factory")
        wait_for(
            driver,
            "(() => { const f = document.querySelector('iframe[title=\"Model Factory\"]');"
            " return f && f.contentDocument && f.contentDocument.querySelector('section.line') !== null; })()",
            timeout_s=120,
        )
        assert evaluate(driver, "document.querySelector('a[href*=\"plugin/model-factory\"]') !== null")  # the nav entry
        frame_text = evaluate(
            driver, "document.querySelector('iframe[title=\"Model Factory\"]').contentDocument.body.innerText")
        assert "ui-1" in frame_text and "credit_risk" in frame_text
        time.sleep(1.0)  # let the UI settle for the picture
        shot = screenshot(driver, tmp_path / "airflow-ui-model-factory.png", full_page=False)
        shutil.copy(shot, RESULTS / "airflow-ui-model-factory.png")

        # a run link in the frame opens the run's page in the UI's own window
        evaluate(
            driver,
            "document.querySelector('iframe[title=\"Model Factory\"]').contentDocument"
            f".querySelector('a[href*=\"dags/ingest_{LINE}/runs/\"]').click()",
        )
        wait_for(driver, f"location.pathname.startsWith('/dags/ingest_{LINE}/runs/')", timeout_s=60)
    # quit() alone ended chromedriver, Chromium and every helper process
    assert browser.left_behind == [], browser.left_behind
    assert not group_alive(browser.pgid)
