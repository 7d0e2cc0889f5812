"""The ingest DAG end to end with ``dag.test()``: real Airflow, real Spark job
through SparkSubmitOperator (a local[*] master), real Great Expectations checkpoint."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.catalog import ledger
from pipelines.catalog.layout import line_paths
from pipelines.config import REPO_ROOT, factory_home
from pipelines.ingest import landing
from pipelines.ingest.sources import load_source
from pipelines.specs import load_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["ingest_credit_risk"]


def _states(run) -> dict[tuple[str, int], str]:
    return {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}


def _asset_events(line: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == f"{line}.validated_data")
            .all()
        )
        return [dict(e.extra or {}) for e in rows]


def test_ingest_dag_cleans_validates_and_announces(dag):
    spec = load_spec("credit_risk")
    paths = line_paths("credit_risk")
    source = load_source(spec)
    good = source.iloc[:1500].copy()
    dirty = source.iloc[1500:2000].astype(str).copy()
    dirty.iloc[0, dirty.columns.get_loc("int_rate")] = "not-a-rate"
    dirty.iloc[1, dirty.columns.get_loc("addr_state")] = "XX"
    dirty = pd.concat([dirty, dirty.iloc[[5]]])  # one exact duplicate
    landing.land_frame(spec, good, "good", factory_home())
    landing.land_frame(spec, dirty, "dirty", factory_home())
    small = source.iloc[2000:2050]  # cleans fine, breaks the suite's minimum row count
    landing.land_frame(spec, small, "small", factory_home())

    run = dag.test()
    states = _states(run)
    assert states[("plan", -1)] == "success"
    for i in range(3):
        assert states[("batch.spark_args", i)] == "success"
        assert states[("batch.clean", i)] == "success"
    validated = {i: s for (t, i), s in states.items() if t == "batch.validate"}
    assert sorted(validated.values()) == ["failed", "success", "success"]
    assert run.state == "failed"  # a batch failed its suite: the run says so

    good_r, dirty_r, small_r = (ledger.read(paths, b) for b in ("good", "dirty", "small"))
    assert good_r["status"] == dirty_r["status"] == ledger.VALIDATED
    assert good_r["cleaning"]["rows_clean"] == 1500
    assert dirty_r["cleaning"] is not None and dirty_r["cleaning"]["rows_in"] == 501
    assert dirty_r["cleaning"]["rows_quarantined"] == 2
    assert dirty_r["cleaning"]["duplicates_removed"] == 1
    assert dirty_r["cleaning"]["rows_clean"] == 498
    assert len(pd.read_parquet(paths.clean_batch("good"))) == 1500

    assert small_r["status"] == ledger.FAILED and small_r["failed_stage"] == "validation"
    failed = [f["expectation"] for f in small_r["validation"]["failed"]]
    assert "expect_table_row_count_to_be_between" in failed
    assert small_r["validation"]["data_docs"].endswith(".html")
    assert paths.clean_batch("small").exists()  # the failed batch stays where it is

    assert states[("announce", -1)] == "success"
    assert states[("verdict", -1)] == "failed"
    events = _asset_events("credit_risk")  # one event for the run, naming what passed
    assert len(events) == 1
    assert sorted(events[0]["batches"]) == ["dirty", "good"]
    assert events[0]["rows"] == 1500 + 498 and events[0]["failed"] == ["small"]

    # Nothing left to do: the next scheduled run plans no batch and skips.
    again = dag.test()
    assert _states(again)[("plan", -1)] == "skipped"


def test_an_unknown_conf_key_fails_the_run_in_its_first_task(dag, capfd):
    """Airflow accepts a conf key the DAG does not declare; the run fails in ``plan``, naming
    it, instead of going on as if it had not been given (nothing pending: ``plan`` would skip)."""
    pending = landing.pending(load_spec("credit_risk"), factory_home())
    run = dag.test(run_conf={"batch_id": None, "batchid": "good"})
    states = _states(run)
    assert states[("plan", -1)] == "failed", states
    assert all(s in ("upstream_failed", None) for (t, _), s in states.items() if t != "plan"), states
    out, err = capfd.readouterr()
    assert "ingest_credit_risk: unknown conf key(s) ['batchid'] in the run's conf; the keys it takes: ['batch_id']" in out + err
    assert landing.pending(load_spec("credit_risk"), factory_home()) == pending  # no batch touched
