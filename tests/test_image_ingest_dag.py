"""The ingest DAG on an image line with ``dag.test()``: real archives landed, the real
Spark job through SparkSubmitOperator (a local[*] master), the real GX suite on the clean metadata."""

from __future__ import annotations

import pandas as pd
import pytest
from test_image_cleaning import BAD_REASONS, bad_batch

from pipelines.catalog import ledger
from pipelines.catalog.layout import line_paths
from pipelines.config import REPO_ROOT, factory_home
from pipelines.ingest import landing
from pipelines.ingest.sources import load_source
from pipelines.specs import load_spec

pytestmark = pytest.mark.integration


def test_image_batches_are_landed_cleaned_validated_or_blocked(airflow_db, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["ingest_fashion"]
    spec = load_spec("fashion")
    paths = line_paths("fashion")
    real = load_source(spec, holdout="test")
    files = bad_batch(real.iloc[:1200].reset_index(drop=True), tmp_path / "drop", good=1198)
    landing.land_file(spec, tmp_path / "drop", "mixed", factory_home())
    one_class = real[real["label"] == 0]  # 1000 real images, all T-shirts
    landing.land_frame(spec, one_class, "one-class", factory_home())

    run = dag.test()
    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert sorted(s for (t, _), s in states.items() if t == "batch.clean") == ["success", "success"], states
    assert sorted(s for (t, _), s in states.items() if t == "batch.validate") == ["failed", "success"], states

    mixed = ledger.read(paths, "mixed")
    assert mixed["status"] == ledger.VALIDATED
    report = mixed["cleaning"]
    assert report["rows_in"] == len(files) + 1
    assert report["quarantine_reasons"] == BAD_REASONS and report["duplicates_removed"] == 1
    assert report["rows_clean"] == 1198
    assert len(pd.read_parquet(paths.clean_batch("mixed"), columns=["image_id"])) == 1198

    blocked = ledger.read(paths, "one-class")
    assert blocked["status"] == ledger.FAILED and blocked["failed_stage"] == "validation"
    failed = {(f["expectation"], f["column"]) for f in blocked["validation"]["failed"]}
    assert ("expect_column_values_to_be_in_set", "label") in failed
    assert blocked["validation"]["data_docs"].endswith(".html")
    assert run.state == "failed"
