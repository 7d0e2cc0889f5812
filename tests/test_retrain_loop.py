"""The retraining loop end to end on the real runtime: a drifted batch lands, the
monitor detects it, exactly one retrain runs for the drift episode, the candidate goes
through the evaluation gate, and the outcome is recorded against the episode."""

from __future__ import annotations

import os
import time

import pytest

from pipelines import runtime
from pipelines.catalog import ledger
from pipelines.catalog.layout import line_paths
from pipelines.config import REPO_ROOT, factory_home, ml_python
from pipelines.ingest import landing
from pipelines.ingest.sources import load_source
from pipelines.runtime import api
from pipelines.specs import load_spec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (ml_python().parent / "horovodrun").exists(), reason="ML environment not set up"),
]
LINE = "credit_risk"
PORT = "18480"


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def _validated(batch_id: str) -> bool:
    record = ledger.read(line_paths(LINE), batch_id)
    return bool(record) and record["status"] == ledger.VALIDATED


@pytest.fixture(scope="module")
def served_and_drifted(dagbag) -> str:
    """A model in serving (with its reference profile), then a drifted batch validated."""
    from pipelines.monitoring.stage import serving_model

    spec = load_spec(LINE)
    source = load_source(spec)
    if serving_model(LINE) is None:
        landing.land_frame(spec, source.iloc[0:3000], "loop-base", factory_home())
        dagbag.dags[f"ingest_{LINE}"].test(run_conf={"batch_id": "loop-base"})
        assert _validated("loop-base")
        run = dagbag.dags[f"train_{LINE}"].test(
            run_conf={"epochs": 4, "force_bless": True, "force_bless_reason": "a baseline for the retrain-loop test"}
        )
        assert {ti.task_id: ti.state for ti in run.get_task_instances()}["evaluate"] == "success"
    assert serving_model(LINE) is not None
    # Real loans whose incomes moved up by half: within the suite's bounds, far from the profile.
    drifted = source.iloc[3000:5000].copy()
    drifted["annual_inc"] = drifted["annual_inc"] * 1.5
    landing.land_frame(spec, drifted, "loop-drift", factory_home())
    dagbag.dags[f"ingest_{LINE}"].test(run_conf={"batch_id": "loop-drift"})
    assert _validated("loop-drift")
    # Asset events of the dag.test runs above must not set off runs of their own once the
    # scheduler starts: this test is about the drift event only.
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(AssetDagRunQueue).delete()
    return "loop-drift"


@pytest.fixture(scope="module")
def admin(served_and_drifted):
    saved = {k: os.environ.get(k) for k in ("FACTORY_API_PORT", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION")}
    os.environ["FACTORY_API_PORT"] = PORT
    os.environ["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "True"
    record = runtime.start()
    try:
        creds = runtime.admin()
        yield api.Client(record["url"], creds.username, creds.password)
    finally:
        runtime.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _drift_runs(client: api.Client, episode_id: str) -> list[dict]:
    runs = []
    for run in client.runs(f"train_{LINE}", limit=50):
        try:
            prepared = client.xcom(f"train_{LINE}", run["dag_run_id"], "prepare")
        except api.ApiError:
            continue
        if (prepared or {}).get("drift") and prepared["drift"]["episode_id"] == episode_id:
            runs.append(run)
    return runs


def _wait_for(what: str, probe, timeout_s: float, poll_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def test_drift_sets_off_exactly_one_retrain_recorded_against_its_episode(admin, served_and_drifted):
    from pipelines.catalog.records import read_drift_history
    from pipelines.monitoring.episodes import load_state

    # Unpaused, the monitor runs on its own schedule: its sensor sees the new batch and a
    # serving model, scores, and claims the episode's retrain.
    admin.unpause(f"train_{LINE}")
    admin.unpause(f"monitor_{LINE}")

    def claimed():
        return next((r for r in read_drift_history(LINE, kind="retrain") if r.get("event") == "pending"), None)

    claim = _wait_for("the monitor to claim a retrain", claimed, timeout_s=900)
    episode_id, monitor_run = claim["episode_id"], claim["run_id"]
    scored = {r["batch_id"]: r for r in read_drift_history(LINE, kind="batch")}
    assert scored[served_and_drifted]["drifted"] is True
    assert [d["feature"] for d in scored[served_and_drifted]["drifted_features"]] == ["annual_inc"]
    assert scored[served_and_drifted]["episode_id"] == episode_id
    event = _wait_for(
        "the monitor's retrain task", lambda: admin.xcom(f"monitor_{LINE}", monitor_run, "retrain"), 120
    )
    assert event["episode_id"] == episode_id and "annual_inc" in event["drifted"]

    # The drift event schedules the training DAG; the candidate goes through the gate and
    # its verdict is recorded against the episode.
    def outcome():
        return [
            r for r in read_drift_history(LINE, kind="retrain")
            if r.get("episode_id") == episode_id and r.get("event") in ("blessed", "not_blessed", "failed")
        ]

    outcomes = _wait_for("the retrain's outcome", outcome, timeout_s=1200, poll_s=10)
    runs = _drift_runs(admin, episode_id)
    assert len(runs) == 1, runs  # exactly one retrain for the episode
    train = admin.wait(f"train_{LINE}", runs[0]["dag_run_id"], timeout_s=300)
    assert train["state"] == "success"
    evaluation = admin.xcom(f"train_{LINE}", runs[0]["dag_run_id"], "evaluate")
    assert [o["event"] for o in outcomes] == [evaluation["blessing"].lower()]
    episode = next(e for e in load_state(LINE)["episodes"] if e["id"] == episode_id)
    assert len(episode["attempts"]) == 1

    # one retrain per episode: another look now starts nothing
    from pipelines.monitoring.stage import retrain_decision

    assert retrain_decision(LINE, "second-look") is None
    assert len(_drift_runs(admin, episode_id)) == 1
