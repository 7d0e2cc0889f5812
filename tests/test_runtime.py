"""The Airflow runtime for real: start every component, trigger a DAG through the REST
API with authentication on, run it to success, and stop with no process left."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from pipelines import runtime
from pipelines.catalog import ledger
from pipelines.catalog.layout import line_paths
from pipelines.config import factory_home
from pipelines.ingest import landing
from pipelines.ingest.sources import load_source
from pipelines.runtime import api
from pipelines.specs import load_spec

pytestmark = pytest.mark.integration

PORT = "18080"
# the model server's: off the default too, so a factory running here does not collide
SERVING_PORT = "18501"
# and the Spark Connect server's, which the ingest DAG's clean task goes through here
SPARK_CONNECT_PORT = "18502"


@pytest.fixture(scope="module")
def running():
    saved = {k: os.environ.get(k) for k in ("FACTORY_API_PORT", "FACTORY_SERVING_PORT", "FACTORY_SPARK_CONNECT_PORT",
                                       "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION")}
    os.environ["FACTORY_API_PORT"] = PORT
    os.environ["FACTORY_SERVING_PORT"] = SERVING_PORT
    os.environ["FACTORY_SPARK_CONNECT_PORT"] = SPARK_CONNECT_PORT
    # Only what a test unpauses runs (no training set off by the asset event).
    os.environ["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "True"
    record = runtime.start()
    yield record
    try:
        runtime.stop()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def admin(running) -> api.Client:
    creds = runtime.admin()
    return api.Client(running["url"], creds.username, creds.password)


def test_trigger_through_the_api_runs_to_success(running, admin):
    spec = load_spec("credit_risk")
    landing.land_frame(spec, load_source(spec).iloc[6000:6600], "api-1", factory_home())
    admin.unpause("ingest_credit_risk")
    run = admin.trigger("ingest_credit_risk", {"batch_id": "api-1"})
    final = admin.wait("ingest_credit_risk", run["dag_run_id"], timeout_s=600)
    assert final["state"] == "success"
    tis = {t["task_id"]: t["state"] for t in admin.task_instances("ingest_credit_risk", run["dag_run_id"])}
    assert tis["announce"] == "success" and tis["verdict"] == "success"
    record = ledger.read(line_paths("credit_risk"), "api-1")
    assert record["status"] == ledger.VALIDATED
    # cleaned through the runtime's Spark Connect server, not a spark-submit of its own
    assert running["spark_connect"] == f"sc://127.0.0.1:{SPARK_CONNECT_PORT}"
    log = "\n".join(p.read_text() for p in (factory_home() / "airflow" / "logs").rglob("*.log")
                    if "task_id=batch.clean" in str(p) and "api-1" in p.read_text())
    assert f"through Spark Connect at sc://127.0.0.1:{SPARK_CONNECT_PORT}" in log
    news = admin.xcom("ingest_credit_risk", run["dag_run_id"], "announce")
    assert news["batches"] == ["api-1"] and news["rows"] == 600

    # Each task timed its own work in its process; the run's timeline adds up to its wall time.
    from pipelines.runtime import timing

    spans = [w for w in timing.read_work() if w["run_id"] == run["dag_run_id"]]
    assert {"plan", "batch.spark_args", "batch.clean", "batch.validate", "announce", "verdict"} <= {
        w["task_id"] for w in spans
    }
    clean = next(w for w in spans if w["task_id"] == "batch.clean")
    assert clean["state"] == "success" and clean["end"] > clean["start"]
    since = timing.epoch(final["start_date"])
    t = timing.breakdown(admin.task_instances("ingest_credit_risk", run["dag_run_id"]), spans, since)
    assert 0 < t["work_s"] < t["wall_s"]
    parts = t["work_s"] + t["task_startup_s"] + t["queued_s"] + t["scheduling_s"]
    assert abs(parts - t["wall_s"]) < 0.5, t
    assert t["task_startup_s"] > 0  # task processes start before their work does


def test_a_landed_batch_sets_off_its_ingest_within_seconds(running, admin):
    """No trigger: the landing zone's watcher (run by the triggerer) fires the line's
    landed-data Asset and the scheduler starts the ingest DAG, which cleans and validates it."""
    from pipelines.runtime.timing import epoch

    spec = load_spec("credit_risk")
    admin.unpause("ingest_credit_risk")
    before = {r["dag_run_id"] for r in admin.runs("ingest_credit_risk", limit=50)}
    landed_at = time.time()
    landing.land_frame(spec, load_source(spec).iloc[9000:9600], "watch-1", factory_home())
    deadline = time.time() + 600
    while time.time() < deadline and ledger.read(line_paths("credit_risk"), "watch-1")["status"] != ledger.VALIDATED:
        time.sleep(2)
    assert ledger.read(line_paths("credit_risk"), "watch-1")["status"] == ledger.VALIDATED
    new = [r for r in admin.runs("ingest_credit_risk", limit=50) if r["dag_run_id"] not in before]
    watched = [r for r in new if r["run_type"] == "asset_triggered"]
    assert watched, new
    # the poll (2 s) and the scheduler's loop, not an hourly schedule
    assert min(epoch(r["queued_at"]) for r in watched) - landed_at < 30


def test_official_python_client(running, admin):
    """The README's example with ``apache-airflow-client``: trigger, then read the run."""
    import airflow_client.client as ac
    from airflow_client.client.api.dag_run_api import DagRunApi
    from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

    configuration = ac.Configuration(host=running["url"], access_token=admin.token)
    with ac.ApiClient(configuration) as client:
        runs = DagRunApi(client)
        run = runs.trigger_dag_run("ingest_credit_risk", TriggerDAGRunPostBody(logical_date=None, conf={}))
        assert run.dag_id == "ingest_credit_risk"
        final = admin.wait("ingest_credit_risk", run.dag_run_id, timeout_s=300)
        assert runs.get_dag_run("ingest_credit_risk", run.dag_run_id).state.value == final["state"]
        # nothing new landed: the run plans no batch and skips its work
        assert final["state"] == "success"


def test_labels_reach_logged_predictions_through_the_rest_api(running, admin, tmp_path):
    """A system that learns outcomes triggers labels_<line> through the REST API with its
    file: the labels are attached to the predictions the model server logged (the real
    writer), and a file with a label the line does not have fails the run, attaching nothing."""
    from pipelines.serving.predlog import PredictionLog, read_labels

    log = PredictionLog("credit_risk")
    log.append([{"request_id": f"loan-{i}", "instance": 0, "time": "2026-11-30T10:00:00.000000+00:00",
                 "line": "credit_risk", "model_version": 1, "signature": "predict_features",
                 "inputs": {"int_rate": 11.5}, "outputs": {"probabilities": [0.1]}, "latency_ms": 2.0}
                for i in range(3)])
    log.close()
    good, bad = tmp_path / "outcomes.csv", tmp_path / "typo.csv"
    good.write_text("request_id,label\nloan-0,bad\nloan-1,good\nloan-9,good\n")
    bad.write_text("request_id,label\nloan-2,defaulted\n")
    admin.unpause("labels_credit_risk")
    run = admin.trigger("labels_credit_risk", {"file": str(good)})
    assert admin.wait("labels_credit_risk", run["dag_run_id"], timeout_s=300)["state"] == "success"
    result = admin.xcom("labels_credit_risk", run["dag_run_id"], "attach")
    assert (result["matched"], result["unmatched"]) == (2, 1), result
    labels = read_labels("credit_risk")
    assert dict(zip(labels["request_id"], labels["label"], strict=True)) == {"loan-0": "bad", "loan-1": "good",
                                                                           "loan-9": "good"}
    run = admin.trigger("labels_credit_risk", {"file": str(bad)})
    assert admin.wait("labels_credit_risk", run["dag_run_id"], timeout_s=300)["state"] == "failed"
    assert "loan-2" not in set(read_labels("credit_risk")["request_id"])


def test_a_study_runs_its_trials_in_parallel_through_the_scheduler(running, admin):
    """tune_<line> through the REST API on the real scheduler: one mapped task instance per
    trial, two at once (Airflow's parallelism, not a loop in one task), every trial in the
    study's record, and the best trial's settings become the line's tuned settings."""
    from datetime import datetime

    from pipelines.catalog import records

    spec = load_spec("credit_risk")
    # rows no other test lands: landing refuses a file whose content is already a batch
    landing.land_frame(spec, load_source(spec).iloc[4100:6900], "api-tune", factory_home())
    admin.unpause("ingest_credit_risk")
    run = admin.trigger("ingest_credit_risk", {"batch_id": "api-tune"})
    assert admin.wait("ingest_credit_risk", run["dag_run_id"], timeout_s=600)["state"] == "success"

    admin.unpause("tune_credit_risk")
    run = admin.trigger("tune_credit_risk", {"trials": 3, "parallel": 2, "epochs": 2, "warm_start": False})
    final = admin.wait("tune_credit_risk", run["dag_run_id"], timeout_s=900)
    assert final["state"] == "success", final
    tis = admin.task_instances("tune_credit_risk", run["dag_run_id"])
    trials = sorted(t.get("map_index") for t in tis if t["task_id"] == "trial")
    assert trials == [0, 1, 2], tis
    assert all(t["state"] == "success" for t in tis), [(t["task_id"], t.get("map_index"), t["state"]) for t in tis]

    info = admin.xcom("tune_credit_risk", run["dag_run_id"], "start", key="study")
    record = records.read_study_record("credit_risk", info["study"])
    assert record.state == "finished" and [t.state for t in record.trials] == ["COMPLETE"] * 3
    spans = sorted((datetime.fromisoformat(t.started), datetime.fromisoformat(t.completed)) for t in record.trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)), f"no two trials overlapped: {spans}"
    tuned = records.read_tuned_params("credit_risk")
    assert tuned.study == info["study"] and tuned.trial == record.best["trial"]


def test_no_token_is_401(running):
    r = httpx.post(f"{running['url']}/api/v2/dags/ingest_credit_risk/dagRuns", json={"logical_date": None})
    assert r.status_code == 401


def test_expired_and_forged_tokens_are_refused(running, admin):
    import jwt

    from pipelines.config import airflow_home

    claims = jwt.decode(admin.token, options={"verify_signature": False})
    now = int(time.time())
    claims.update(iat=now - 7200, nbf=now - 7200, exp=now - 60)
    secret = (airflow_home() / "jwt_secret").read_text().strip()
    expired = jwt.encode(claims, secret, algorithm=jwt.get_unverified_header(admin.token)["alg"])
    r = httpx.get(f"{running['url']}/api/v2/dags", headers={"Authorization": f"Bearer {expired}"})
    assert (r.status_code, r.json()["detail"]) == (401, "Token Expired")
    # Airflow answers a token it cannot verify with 403
    r = httpx.get(f"{running['url']}/api/v2/dags", headers={"Authorization": "Bearer not-a-valid-token"})
    assert (r.status_code, r.json()["detail"]) == (403, "Invalid JWT token")


def test_bad_password_is_refused(running):
    with pytest.raises(api.ApiError) as info:
        api.Client(running["url"], runtime.admin().username, "wrong password")
    assert info.value.status == 401


def test_viewer_can_read_but_not_trigger(running):
    creds = runtime.viewer()
    viewer = api.Client(running["url"], creds.username, creds.password)
    assert viewer.dag("ingest_credit_risk")["dag_id"] == "ingest_credit_risk"
    with pytest.raises(api.ApiError) as info:
        viewer.trigger("ingest_credit_risk")
    assert info.value.status == 403


def test_bad_params_and_unknown_dag(admin):
    with pytest.raises(api.ApiError) as info:
        admin.trigger("train_credit_risk", {"workers": "two"})
    assert info.value.status == 400 and "workers" in str(info.value)
    with pytest.raises(api.ApiError) as info:
        admin.trigger("train_credit_risk", {"learning_rate": -1})
    assert info.value.status == 400
    with pytest.raises(api.ApiError) as info:
        admin.trigger("no_such_dag")
    assert info.value.status == 404


def test_second_start_is_refused(running):
    with pytest.raises(runtime.RuntimeFailure, match="already running"):
        runtime.start()


def test_stop_leaves_no_process_behind(running, admin):
    # runs last in this module: stop, then the fixture's stop is a no-op
    pids = dict(running["pids"])
    assert runtime.group_processes(pids.values())
    assert set(pids.values()) <= set(runtime.runtime_processes(running))
    stopped = runtime.stop()
    assert sorted(stopped) == sorted(runtime.COMPONENTS)
    assert runtime.group_processes(pids.values()) == []
    assert runtime.runtime_processes(running) == {}
    assert runtime.status() is None
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{running['url']}/api/v2/monitor/health", timeout=3)

