"""The training DAG end to end with ``dag.test()`` after the ingest DAG: real Airflow,
real Spark and GX for the data, real ``horovodrun`` workers, a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import tracking
from pipelines.catalog import ledger
from pipelines.catalog.layout import line_paths
from pipelines.config import REPO_ROOT, factory_home, ml_python
from pipelines.ingest import landing
from pipelines.ingest.sources import load_source
from pipelines.specs import load_spec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (ml_python().parent / "horovodrun").exists(), reason="ML environment not set up"),
]


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


@pytest.fixture(scope="module")
def validated_credit_risk(dagbag) -> list[str]:
    """Validated credit_risk batches, through the real ingest DAG if none are there yet."""
    paths = line_paths("credit_risk")
    ok = [r["batch_id"] for r in ledger.all_records(paths) if r.get("status") == ledger.VALIDATED]
    if sum(ledger.read(paths, b)["cleaning"]["rows_clean"] for b in ok) < 1500:
        spec = load_spec("credit_risk")
        landing.land_frame(spec, load_source(spec).iloc[3000:5000], "train-e2e", factory_home())
        dagbag.dags["ingest_credit_risk"].test()
        ok = [r["batch_id"] for r in ledger.all_records(paths) if r.get("status") == ledger.VALIDATED]
    assert ok
    return ok


def test_train_dag_end_to_end(dagbag, validated_credit_risk):
    dag = dagbag.dags["train_credit_risk"]
    run = dag.test(run_conf={"epochs": 4, "workers": 2, "batch_size": 64})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"prepare": "success", "train": "success", "evaluate": "success", "finish": "success"}, states
    ended = run.get_task_instance("finish").xcom_pull(task_ids="finish")
    blessing = run.get_task_instance("evaluate").xcom_pull(task_ids="evaluate")["blessing"]
    assert ended["outcome"] == {"BLESSED": "blessed", "FORCED": "blessed", "NOT_BLESSED": "not_blessed"}[blessing]

    result = run.get_task_instance("train").xcom_pull(task_ids="train")
    run_dir = Path(result["run_dir"])
    assert sorted(result["batches"]) == sorted(validated_credit_risk)
    assert (run_dir / "model" / "Format-Serving" / "saved_model.pb").exists()
    assert 0.5 < result["val_auc"] <= 1.0

    c = tracking.client()
    mlrun = c.get_run(result["mlflow_run_id"])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.tags["airflow.dag_id"] == "train_credit_risk"
    assert mlrun.data.tags["airflow.run_id"] == run.run_id
    assert mlrun.data.tags["factory.line"] == "credit_risk"
    assert mlrun.data.params["workers"] == "2" and mlrun.data.params["epochs"] == "4"
    # the embedded default runs both ranks on this machine, named as horovodrun's -H names it
    assert result["hosts"] == [{"rank": 0, "host": "localhost"}, {"rank": 1, "host": "localhost"}]
    assert mlrun.data.tags["horovod_hosts"] == "0=localhost,1=localhost"
    history = c.get_metric_history(mlrun.info.run_id, "val_auc")
    assert [m.step for m in history] == list(range(1, result["epochs_run"] + 1))
    artifacts = {a.path for a in c.list_artifacts(mlrun.info.run_id)}
    assert {"model", "tensorboard", "training"} <= artifacts
    assert "saved_model.pb" in {Path(a.path).name for a in c.list_artifacts(mlrun.info.run_id, "model")}
    assert json.loads((run_dir / "manifest.json").read_text())["params"]["epochs"] == 4
    # the reference profile for drift monitoring travels inside the SavedModel
    profile = run_dir / "model" / "Format-Serving" / "assets.extra" / "drift_profile.json"
    performance = json.loads(profile.read_text())["performance"]
    assert performance["source"] == "held-out evaluation split"
    # the label-rate reference is the training rows' rate, not the held-out split's
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert performance["positive_rate"] == pytest.approx(manifest["label"]["positive_rate"])

    evaluation = run.get_task_instance("evaluate").xcom_pull(task_ids="evaluate")
    assert evaluation["blessing"] in ("BLESSED", "NOT_BLESSED")
    assert evaluation["model_version"] is not None  # every candidate is registered
    if evaluation["blessing"] == "BLESSED":
        assert (Path(evaluation["serving_path"]) / "saved_model.pb").exists()


def test_force_bless_without_a_reason_is_refused_before_training(dagbag, validated_credit_risk):
    run = dagbag.dags["train_credit_risk"].test(run_conf={"force_bless": True})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["prepare"] == "failed" and states["train"] == "upstream_failed"


def test_bad_param_fails_before_any_worker_starts(dagbag, validated_credit_risk):
    from airflow.exceptions import ParamValidationError

    dag = dagbag.dags["train_credit_risk"]
    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"workers": 0})


def test_unknown_batch_fails_prepare_with_a_clear_error(dagbag, validated_credit_risk):
    dag = dagbag.dags["train_credit_risk"]
    run = dag.test(run_conf={"batches": ["no-such-batch"]})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["prepare"] == "failed"
    assert states["train"] == "upstream_failed"
