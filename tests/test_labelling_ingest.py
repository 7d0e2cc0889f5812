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


def test_unlabelled_rows_are_kept_validated_and_counted_apart(spark, home, tmp_path):
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

    # training reads it: the integer label with gaps comes back from Parquet as floats,
    # and must still train as the spec's classes (about half the people are employed)
    from pipelines.training.prepare import prepare_run

    manifest = prepare_run("employment", tmp_path / "run", {"workers": 1, "batch_size": 256}, home)
    assert manifest["rows"]["unlabelled"] == len(blank)
    assert manifest["rows"]["by_source"]["given"] == manifest["rows"]["train"]
    assert 0.35 < manifest["label"]["positive_rate"] < 0.65


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


def _ingest(spec, frame, batch_id, home):
    landing.land_frame(spec, frame, batch_id, home)
    job.run(spec.name, [batch_id], home)
    stage.validate_batch(spec.name, batch_id, home)


def test_training_data_merges_labels_and_treats_machine_labels_as_the_spec_says(spark, home, tmp_path):
    """A slice with labels blanked, then its label batches (machine labels, then human
    ones for some of the same loans), through the real cleaning and validation: the
    training data never holds an unlabelled row, a human label beats a machine one, and
    the three machine_labels modes shape the train split and its counts."""
    from pipelines.training.prepare import prepare_run

    spec = load_spec("credit_risk")
    source = lending_club_frame(1)
    blank = source.index[::5]
    arriving = source.copy()
    arriving.loc[blank, "Class"] = None
    _ingest(spec, arriving, "slice-1", home)

    # Label batches are validated like any batch: they keep the line's class rates and
    # row count. The model labels half of the blanked loans, 15 good ones wrongly bad;
    # reviewers then label 120 of them, those 15 among them, right.
    machine = source.loc[blank].iloc[: len(blank) // 2].copy()
    machine[LABEL_SOURCE], machine[LABEL_MODEL], machine[LABEL_CONFIDENCE] = "machine", "7", 0.99
    wrong = machine.index[machine["Class"] == "good"][:15]
    machine.loc[wrong, "Class"] = "bad"
    _ingest(spec, machine, "slice-1-labels-1", home)
    human = source.loc[machine.index[:120]].copy()
    assert set(wrong) <= set(human.index)
    human[LABEL_SOURCE], human[LABEL_MODEL], human[LABEL_CONFIDENCE] = "human", "reviewer@example.org", None
    _ingest(spec, human, "slice-1-labels-2", home)
    corrected = set(machine.loc[wrong, "loan_id"])

    still_unlabelled = len(blank) - len(machine)
    manifests, parts = {}, {}
    for mode in ("use", "downweight", "ignore"):
        moded = spec.model_copy(update={"labelling": spec.labelling.model_copy(update={"machine_labels": mode})})
        run_dir = tmp_path / mode
        manifests[mode] = prepare_run("credit_risk", run_dir, {"workers": 1, "batch_size": 64}, home, spec=moded)
        parts[mode] = {
            "train": pd.concat([pd.read_parquet(p) for p in sorted((run_dir / "data" / "train").glob("*.parquet"))]),
            "validation": pd.read_parquet(run_dir / "data" / "validation.parquet"),
            "eval": pd.read_parquet(run_dir / "data" / "eval.parquet"),
        }

    machine_only = set(machine["loan_id"]) - set(human["loan_id"])
    unlabelled_ids = set(source.loc[blank, "loan_id"]) - set(machine["loan_id"])
    for mode, split in parts.items():
        rows = manifests[mode]["rows"]
        assert rows["unlabelled"] == still_unlabelled
        every = pd.concat(split.values())
        assert not set(every["loan_id"]) & unlabelled_ids, mode  # never in any split
        assert every["loan_id"].is_unique
        # the human label (good) beat the machine one (bad) wherever the loan landed
        assert (every.set_index("loan_id").loc[list(corrected & set(every["loan_id"])), "Class"] == 0).all()
        assert corrected & set(every["loan_id"])
        # machine labels are trained on (or not), never judged on
        assert not set(split["validation"]["loan_id"]) & machine_only
        assert not set(split["eval"]["loan_id"]) & machine_only
        assert sum(rows["by_source"].values()) == rows["train"] == len(split["train"])
        assert LABEL_SOURCE not in split["train"].columns

    train_machine = set(parts["use"]["train"]["loan_id"]) & machine_only
    assert train_machine and manifests["use"]["rows"]["by_source"]["machine"] == len(train_machine)
    assert manifests["use"]["rows"]["by_source"]["human"] > 0
    assert "_weight" not in parts["use"]["train"].columns
    assert manifests["ignore"]["rows"]["by_source"]["machine"] == 0
    assert not set(parts["ignore"]["train"]["loan_id"]) & machine_only
    weighted = parts["downweight"]["train"].set_index("loan_id")["_weight"]
    assert (weighted.loc[list(train_machine)] == 0.5).all()
    assert (weighted.drop(index=list(train_machine)) == 1.0).all()
    assert manifests["downweight"]["rows"]["by_source"] == manifests["use"]["rows"]["by_source"]


def test_a_label_batch_is_held_to_the_suites_row_expectations_not_its_population_ones(spark, home):
    """The model's confident labels are mostly of one class, and a review queue is a few
    hundred rows: a label batch is a chosen subset, so the suite's population expectations
    (row count, class set and rate, means, medians) are left out for it and named in the
    ledger, while every row-level one still applies. The same rows as an ordinary batch
    fail those population expectations."""
    spec = load_spec("employment")
    year = employment_frame(2017)
    employed = year[year["employed"] == 1].sample(300, random_state=3).reset_index(drop=True)
    labels = employed.assign(**{LABEL_SOURCE: "machine", LABEL_MODEL: "4", LABEL_CONFIDENCE: 0.995})
    landing.land_frame(spec, labels, "2017-labels-1", home)
    job.run("employment", ["2017-labels-1"], home)
    stage.validate_batch("employment", "2017-labels-1", home)
    record = ledger.read(line_paths("employment", home), "2017-labels-1")
    assert record["status"] == ledger.VALIDATED
    skipped = record["validation"]["skipped"]
    assert "expect_table_row_count_to_be_between" in skipped
    assert "expect_column_mean_to_be_between on employed" in skipped
    assert not any("to_be_unique" in s or "ordered_list" in s for s in skipped)

    landing.land_frame(spec, employed, "2017-employed-only", home)
    job.run("employment", ["2017-employed-only"], home)
    with pytest.raises(stage.ValidationFailed) as failed:
        stage.validate_batch("employment", "2017-employed-only", home)
    assert "expect_table_row_count_to_be_between" in str(failed.value)
    assert "expect_column_mean_to_be_between on employed" in str(failed.value)



def test_a_batch_whose_labels_all_come_later_is_validated_on_everything_else(spark, home):
    """A survey year lands before any outcome is known: no row has a label. The class set
    and rate cannot be measured and are left out (named in the ledger); the features'
    population expectations still apply."""
    spec = load_spec("employment")
    year = employment_frame(2016).sample(2000, random_state=5).reset_index(drop=True)
    year["employed"] = pd.array([pd.NA] * len(year), dtype="Int64")
    landing.land_frame(spec, year, "2016-blind", home)
    report = job.run("employment", ["2016-blind"], home)["2016-blind"]
    assert report["rows_unlabelled"] == report["rows_clean"] == 2000 and report["rows_labelled"] == 0
    stage.validate_batch("employment", "2016-blind", home)
    record = ledger.read(line_paths("employment", home), "2016-blind")
    assert record["status"] == ledger.VALIDATED
    assert sorted(record["validation"]["skipped"]) == [
        "expect_column_distinct_values_to_equal_set on employed", "expect_column_mean_to_be_between on employed"]

    # the features' population expectations still bind it: 1,200 children
    kids = employment_frame(2016)
    kids = kids[kids["AGEP"] < 16].head(1200).copy()
    kids["employed"] = pd.array([pd.NA] * len(kids), dtype="Int64")
    landing.land_frame(spec, kids, "2016-kids", home)
    job.run("employment", ["2016-kids"], home)
    with pytest.raises(stage.ValidationFailed, match="expect_column_median_to_be_between on AGEP"):
        stage.validate_batch("employment", "2016-kids", home)
