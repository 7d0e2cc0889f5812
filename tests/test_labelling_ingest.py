"""Automated labelling on the ingest side, on real rows through the real Spark cleaning
and the real Great Expectations checkpoint: unlabelled rows of a labelling line are kept
and counted apart, a line without labelling still quarantines them, and a label batch
(the provenance columns) is cleaned, checked and validated."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.realdata import employment_frame, lending_club_frame
from pipelines.catalog import ledger
from pipelines.catalog.layout import line_paths
from pipelines.ingest import landing, stage
from pipelines.ingest.cleaning import job
from pipelines.labelling import LABEL_CONFIDENCE, LABEL_MODEL, LABEL_SOURCE, PROVENANCE_COLUMNS
from pipelines.specs import LineSpec, load_spec

pytestmark = pytest.mark.integration


def test_unlabelled_rows_are_kept_validated_and_counted_apart(spark, home):
    spec = load_spec("employment")
    frame = employment_frame(2018).sample(3000, random_state=1).reset_index(drop=True)  # the year in small
    frame["employed"] = frame["employed"].astype("Int64")
    blank = frame.index[::7]  # every 7th person has no label yet
    frame.loc[blank, "employed"] = pd.NA
    frame.loc[frame.index[1], "AGEP"] = 130.0  # still quarantined: labelling changes nothing else
    landing.land_frame(spec, frame, "2018-part", home)

    report = job.run("employment", ["2018-part"], home)["2018-part"]
    assert report["rows_in"] == 3000
    assert report["rows_quarantined"] == 1 and report["quarantine_reasons"] == {"out_of_range:AGEP": 1}
    assert report["rows_unlabelled"] == len(blank)
    assert report["rows_labelled"] == 3000 - len(blank) - 1
    assert report["rows_clean"] == report["rows_labelled"] + report["rows_unlabelled"]
    assert report["labels_by_source"] == {"given": report["rows_labelled"], "machine": 0, "human": 0}

    clean = pd.read_parquet(report["clean_path"])
    assert list(clean.columns) == [*spec.schema.names, *PROVENANCE_COLUMNS]
    unlabelled = clean["employed"].isna()
    assert int(unlabelled.sum()) == len(blank)
    assert clean.loc[unlabelled, LABEL_SOURCE].isna().all()
    assert (clean.loc[~unlabelled, LABEL_SOURCE] == "given").all()
    assert clean[LABEL_MODEL].isna().all() and clean[LABEL_CONFIDENCE].isna().all()

    out = stage.validate_batch("employment", "2018-part", home)
    assert out["rows"] == report["rows_clean"]
    assert ledger.read(line_paths("employment", home), "2018-part")["status"] == ledger.VALIDATED


def test_line_without_labelling_still_quarantines_a_missing_label(spark, home, tmp_path):
    data = load_spec("credit_risk").model_dump(by_alias=True)
    data["labelling"] = None
    for f in data["schema"]["fields"]:
        if f["name"] == "Class":
            f["missing"] = "quarantine"
    spec = LineSpec.model_validate(data)
    frame = lending_club_frame(1).head(40).copy()
    frame.loc[frame.index[:3], "Class"] = None
    landing.land_frame(spec, frame, "no-labelling", home)
    report = job.clean_one(spark, spec, line_paths("credit_risk", home), "no-labelling")
    assert report["quarantine_reasons"] == {"missing:Class": 3}
    assert report["rows_clean"] == 37
    assert "rows_unlabelled" not in report
    assert list(pd.read_parquet(report["clean_path"]).columns) == spec.schema.names


def label_batch(source: pd.DataFrame) -> pd.DataFrame:
    """A label batch as the label DAG writes it: the rows' features, a label, and its provenance."""
    frame = source.copy()
    frame[LABEL_SOURCE] = "machine"
    frame[LABEL_MODEL] = "7"
    frame[LABEL_CONFIDENCE] = 0.99
    frame.loc[frame.index[:20], LABEL_SOURCE] = "human"
    frame.loc[frame.index[:20], LABEL_MODEL] = "reviewer@example.org"
    frame.loc[frame.index[:20], LABEL_CONFIDENCE] = None
    return frame


def test_label_batch_is_cleaned_checked_and_validated(spark, home):
    spec = load_spec("credit_risk")
    frame = label_batch(lending_club_frame(2).head(400))
    bad = frame.index[-3:]
    frame.loc[bad[0], LABEL_SOURCE] = "robot"  # not a provenance
    frame.loc[bad[1], "Class"] = None  # a machine label without a label
    frame.loc[bad[2], LABEL_CONFIDENCE] = 1.7  # not a probability
    landing.land_frame(spec, frame, "slice-2-labels-1", home)

    report = job.run("credit_risk", ["slice-2-labels-1"], home)["slice-2-labels-1"]
    assert report["quarantine_reasons"] == {
        "unknown_category:label_source": 1,
        "source_without_label:label_source": 1,
        "out_of_range:label_confidence": 1,
    }
    assert report["labels_by_source"] == {"given": 0, "machine": 377, "human": 20}
    assert report["rows_unlabelled"] == 0 and report["rows_labelled"] == report["rows_clean"] == 397

    clean = pd.read_parquet(report["clean_path"]).set_index("loan_id")
    assert list(clean.columns) == [*spec.schema.names[1:], *PROVENANCE_COLUMNS]
    assert str(clean[LABEL_CONFIDENCE].dtype) == "float64"
    human = clean[clean[LABEL_SOURCE] == "human"]
    assert (human[LABEL_MODEL] == "reviewer@example.org").all() and human[LABEL_CONFIDENCE].isna().all()
    assert (clean.loc[clean[LABEL_SOURCE] == "machine", LABEL_CONFIDENCE] == 0.99).all()
    stage.validate_batch("credit_risk", "slice-2-labels-1", home)
