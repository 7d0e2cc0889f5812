"""The retraining loop end to end on the real runtime: a drifted batch is validated,
its validated-data Asset event starts a training and the monitor, the monitor finds
the drift, and exactly one training runs: the one the batch set off becomes the drift
episode's retrain (``training.retrain_on: new_data``), and its outcome is recorded
against the episode."""

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
# the model server's: off the default too, so a factory running here does not collide
SERVING_PORT = "18581"


@pytest.fixture(scope="module")
def without_cron(tmp_path_factory):
    """The line without its cron retrain: the scheduler would start the cron's latest
    retrain when the DAG is unpaused, a training of its own beside the one under test."""
    import shutil

    import yaml

    from pipelines.config import include_dir

    include = tmp_path_factory.mktemp("loop") / "include"
    shutil.copytree(include_dir(), include)
    path = include / "lines" / f"{LINE}.yaml"
    data = yaml.safe_load(path.read_text())
    data["training"]["schedule"] = None
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    mp = pytest.MonkeyPatch()
    mp.setenv("FACTORY_INCLUDE", str(include))
    yield include
    mp.undo()


@pytest.fixture(scope="module")
def dagbag(airflow_db, without_cron):
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
    # Asset events of the dag.test runs above must not set off runs of their own once the
    # scheduler starts: this test is about the drifted batch only.
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(AssetDagRunQueue).delete()
    # Real loans whose incomes moved up by half: within the suite's bounds, far from the profile.
    drifted = source.iloc[3000:5000].copy()
    drifted["annual_inc"] = drifted["annual_inc"] * 1.5
    landing.land_frame(spec, drifted, "loop-drift", factory_home())
    # Ingested and validated: its validated-data event waits for the training and the
    # monitor DAGs, which are paused until the test unpauses them.
    dagbag.dags[f"ingest_{LINE}"].test(run_conf={"batch_id": "loop-drift"})
    assert _validated("loop-drift")
    return "loop-drift"


@pytest.fixture(scope="module")
def admin(served_and_drifted):
    saved = {k: os.environ.get(k) for k in ("FACTORY_API_PORT", "FACTORY_SERVING_PORT",
                                       "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION")}
    os.environ["FACTORY_API_PORT"] = PORT
    os.environ["FACTORY_SERVING_PORT"] = SERVING_PORT
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


def _wait_for(what: str, probe, timeout_s: float, poll_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_drifted_batch_trains_once_and_that_training_is_the_episodes_retrain(admin, served_and_drifted):
    from pipelines.catalog.records import read_drift_history
    from pipelines.monitoring.episodes import load_state
    from pipelines.monitoring.stage import retrain_decision

    assert load_spec(LINE).training.retrain_on == "new_data"
    def set_off():  # the trainings not run by the tests' dag.test (the baseline is one)
        return [r for r in admin.runs(f"train_{LINE}", limit=50) if r["run_type"] != "manual"]

    # the batch's validated-data event sets off the training and the monitor together
    for dag in ("train", "monitor"):
        admin.unpause(f"{dag}_{LINE}")

    # the monitor scores the batch against the serving model and opens an episode
    def scored():
        return {r["batch_id"]: r for r in read_drift_history(LINE, kind="batch")}.get(served_and_drifted)

    record = _wait_for("the monitor to score the drifted batch", scored, timeout_s=600)
    assert record["drifted"] is True and [d["feature"] for d in record["drifted_features"]] == ["annual_inc"]
    episode_id = record["episode_id"]

    def outcome():
        return [r for r in read_drift_history(LINE, kind="retrain")
                if r.get("episode_id") == episode_id and r.get("event") in ("blessed", "not_blessed", "failed")]

    outcomes = _wait_for("the retrain's outcome", outcome, timeout_s=1200, poll_s=10)
    new_runs = set_off()
    assert len(new_runs) == 1, new_runs  # exactly one training for the drifted batch
    assert new_runs[0]["run_type"] == "asset_triggered"
    run_id = new_runs[0]["dag_run_id"]
    assert admin.wait(f"train_{LINE}", run_id, timeout_s=300)["state"] == "success"
    evaluation = admin.xcom(f"train_{LINE}", run_id, "evaluate")
    assert [o["event"] for o in outcomes] == [evaluation["blessing"].lower().replace("forced", "blessed")]
    episode = next(e for e in load_state(LINE)["episodes"] if e["id"] == episode_id)
    assert [a["train_run_id"] for a in episode["attempts"]] == [run_id]
    # no drift event was emitted: nothing was claimed for a second training
    assert not [r for r in read_drift_history(LINE, kind="retrain") if r.get("event") == "pending"]
    assert admin.xcom(f"train_{LINE}", run_id, "finish")["outcome"] == outcomes[0]["event"]

    # the monitor's own run ends without a drift event, and another look starts nothing
    # (the one the batch set off; a scheduled one may wait in its sensor for hours)
    for monitor in admin.runs(f"monitor_{LINE}", limit=5):
        if monitor["run_type"] == "asset_triggered":
            assert admin.wait(f"monitor_{LINE}", monitor["dag_run_id"], timeout_s=600)["state"] == "success"
    assert retrain_decision(LINE, "second-look")["retrain"] is False
    time.sleep(20)
    assert [r["dag_run_id"] for r in set_off()] == [new_runs[0]["dag_run_id"]]
