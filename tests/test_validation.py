"""The real Great Expectations checkpoint on real data: each line's suite passes the
real batches and names what breaks in a damaged one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.realdata import employment_frame, lending_club_frame, with_provenance
from pipelines.config import include_dir
from pipelines.ingest.validation import load_suite_dict, run_checkpoint
from pipelines.specs import load_spec

pytestmark = pytest.mark.integration


def _suite(line: str) -> Path:
    return include_dir() / load_spec(line).expectations


def test_real_credit_risk_slices_pass(tmp_path):
    for n in (1, 4):
        outcome = run_checkpoint(
            with_provenance(lending_club_frame(n), load_spec("credit_risk")), _suite("credit_risk"), line="credit_risk", batch_id=f"s{n}", gx_dir=tmp_path
        )
        assert outcome.success, outcome.describe()
        assert outcome.evaluated == outcome.successful == len(load_suite_dict(_suite("credit_risk"))["expectations"])
    assert Path(outcome.data_docs).is_file() and outcome.data_docs.endswith(".html")


def test_real_employment_year_passes(tmp_path):
    outcome = run_checkpoint(
        with_provenance(employment_frame(2018), load_spec("employment")), _suite("employment"), line="employment", batch_id="2018", gx_dir=tmp_path
    )
    assert outcome.success, outcome.describe()


def test_damaged_batch_fails_and_names_the_expectations(tmp_path):
    frame = with_provenance(lending_club_frame(2), load_spec("credit_risk"))
    frame.loc[:9, "int_rate"] = 99.0  # outside the suite's range
    frame.loc[10:19, "loan_id"] = frame.loc[0, "loan_id"]  # duplicate keys
    frame = frame.drop(columns=["revol_util"])
    outcome = run_checkpoint(frame, _suite("credit_risk"), line="credit_risk", batch_id="bad", gx_dir=tmp_path)
    assert not outcome.success
    failed = {(f.expectation, f.column) for f in outcome.failed}
    assert ("expect_column_values_to_be_between", "int_rate") in failed
    assert ("expect_column_values_to_be_unique", "loan_id") in failed
    assert any(f.expectation == "expect_table_columns_to_match_ordered_list" for f in outcome.failed)
    message = outcome.describe()
    assert "int_rate" in message and "Data Docs:" in message
    assert Path(outcome.data_docs).is_file()
    json.dumps(outcome.to_dict())  # what the ledger records is plain JSON


def test_rerun_of_a_batch_keeps_both_results(tmp_path):
    batch = with_provenance(lending_club_frame(1), load_spec("credit_risk"))
    a = run_checkpoint(batch, _suite("credit_risk"), line="credit_risk", batch_id="1", gx_dir=tmp_path)
    b = run_checkpoint(batch, _suite("credit_risk"), line="credit_risk", batch_id="1", gx_dir=tmp_path)
    assert a.result_id != b.result_id


@pytest.mark.parametrize(
    "content,message",
    [("{not json", "not valid JSON"), ('{"name": "x", "expectations": []}', "non-empty list"),
     ('{"name": "x", "expectations": [{"kwargs": {}}]}', "needs a 'type'")],
)
def test_bad_suite_file_is_refused(tmp_path, content, message):
    suite = tmp_path / "suite.json"
    suite.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_suite_dict(suite)
