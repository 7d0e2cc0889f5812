"""The Spark cleaning job on real rows with every kind of dirt: each problem
gets a clear outcome (clean with a repair, quarantine with a reason, or a
failure naming it), counts reconcile, and re-running a batch is idempotent."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from pipelines.catalog import ledger
from pipelines.catalog.layout import line_paths
from pipelines.ingest import landing
from pipelines.ingest.cleaning import job
from pipelines.ingest.sources import load_source
from pipelines.specs import LineSpec, load_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def credit():
    return load_spec("credit_risk")


@pytest.fixture(scope="module")
def real_rows(credit) -> list[dict]:
    frame = load_source(credit).head(12)
    return [{k: str(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _csv(rows: list[dict], header: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _variant(row: dict, loan_id: int, **changes) -> dict:
    return {**row, "loan_id": str(loan_id), **changes}


@pytest.fixture(scope="module")
def dirty_batch(credit, real_rows) -> tuple[str, dict]:
    """A CSV batch of real rows, each problem on its own row, with what should happen to it."""
    good = real_rows[:8]
    base = real_rows[8]
    rows = list(good)
    rows += [
        _variant(base, 9001, int_rate="abc"),  # unparseable
        _variant(base, 9002, funded_amnt="1500.5"),  # not an integer
        _variant(base, 9003, funded_amnt="100"),  # below the spec's min
        _variant(base, 9004, addr_state="ZZ"),  # unknown category
        _variant(base, 9005, Class=""),  # missing label: kept unlabelled (labelling:)
        _variant(base, 9006, int_rate="n/a", term="term_99"),  # two problems
        _variant(base, 9007, annual_inc="5000000"),  # clipped to 2,000,000
        _variant(base, 9008, term=" TERM_36 ", verification_status="Not Verified"),  # standardised
        _variant(base, 9009, emp_length=""),  # filled with emp_unk
        _variant(base, 9010, emp_length="emp_99"),  # unknown, mapped to emp_unk
        _variant(base, 9011, funded_amnt="2000.0"),  # a whole number written as a float
        _variant(base, 9012, int_rate="1.5d"),  # a Java literal, not a number in a file
        _variant(base, 9013, annual_inc="Infinity"),  # not a finite number: not clipped
        {**base, "loan_id": "1e30"},  # an integer beyond 64 bits: this row, not the batch
        good[0],  # exact duplicate of the first row
        _variant(good[1], int(good[1]["loan_id"]), int_rate="9.99"),  # a later correction of row 2
    ]
    header = credit.schema.names
    text = _csv(rows, header)
    text += "1,2,3\n"  # a malformed line: too few fields
    expected = {
        "rows_in": len(rows) + 1,
        "quarantined": 9,
        "duplicates": 2,
        "reasons": {
            "unparseable:int_rate": 2,
            "unparseable:annual_inc": 1,
            "overflow:loan_id": 1,
            "not_an_integer:funded_amnt": 1,
            "out_of_range:funded_amnt": 1,
            "unknown_category:addr_state": 1,
            "unknown_category:term": 1,
            "missing:int_rate": 1,
            "malformed_record": 1,
        },
    }
    return text, expected


def _land_text(spec, home, tmp_path, batch_id, text, suffix=".csv"):
    f = tmp_path / f"{batch_id}{suffix}"
    f.write_text(text)
    return landing.land_file(spec, f, batch_id, home)


def test_dirty_batch(spark, credit, dirty_batch, real_rows, home, tmp_path):
    text, expected = dirty_batch
    _land_text(credit, home, tmp_path, "dirty", text)
    report = job.run("credit_risk", ["dirty"], home)["dirty"]

    assert report["rows_in"] == expected["rows_in"]
    assert report["rows_quarantined"] == expected["quarantined"]
    assert report["duplicates_removed"] == expected["duplicates"]
    assert report["duplicates"] == {"exact": 1, "key": 1}
    assert report["rows_in"] == report["rows_clean"] + report["rows_quarantined"] + report["duplicates_removed"]
    assert report["quarantine_reasons"] == expected["reasons"]
    assert report["repairs"] == {"clipped:annual_inc": 1, "filled:emp_length": 1, "mapped_unknown:emp_length": 1}

    assert report["rows_unlabelled"] == 1 and report["rows_labelled"] == report["rows_clean"] - 1
    clean = pd.read_parquet(report["clean_path"]).set_index("loan_id")
    assert list(clean.columns) == [*credit.schema.names[1:], "label_source", "label_model", "label_confidence"]
    assert pd.isna(clean.loc[9005, "Class"]) and pd.isna(clean.loc[9005, "label_source"])
    assert clean.index.is_unique
    assert clean.loc[9007, "annual_inc"] == 2_000_000
    assert clean.loc[9008, "term"] == "term_36"
    assert clean.loc[9008, "verification_status"] == "Not_Verified"
    assert clean.loc[9009, "emp_length"] == "emp_unk" and clean.loc[9010, "emp_length"] == "emp_unk"
    assert clean.loc[9011, "funded_amnt"] == 2000
    assert clean.loc[int(real_rows[1]["loan_id"]), "int_rate"] == pytest.approx(9.99)  # last one wins
    assert str(clean["funded_amnt"].dtype) == "int64" and str(clean["int_rate"].dtype) == "float64"

    quarantine = pd.read_parquet(report["quarantine_path"])
    assert len(quarantine) == expected["quarantined"]
    by_id = quarantine.set_index("loan_id")
    assert by_id.loc["9006", "_reason"] == "unknown_category:term; missing:int_rate"
    assert by_id.loc["9001", "int_rate"] == "abc"  # the raw value is kept as it arrived
    assert by_id.loc["1e30", "_reason"] == "overflow:loan_id"
    malformed = quarantine[quarantine["_reason"] == "malformed_record"]
    assert malformed["_raw_record"].tolist() == ["1,2,3"]

    record = ledger.read(line_paths("credit_risk", home), "dirty")
    assert record["status"] == ledger.CLEANED
    assert record["cleaning"]["rows_clean"] == report["rows_clean"]

    # Idempotent: the same batch again gives the same output, not twice the rows.
    again = job.run("credit_risk", ["dirty"], home)["dirty"]
    assert {k: again[k] for k in ("rows_in", "rows_clean", "rows_quarantined")} == {
        k: report[k] for k in ("rows_in", "rows_clean", "rows_quarantined")
    }
    clean_again = pd.read_parquet(again["clean_path"]).set_index("loan_id").sort_index()
    pd.testing.assert_frame_equal(clean_again, clean.sort_index())
    assert not _staged_files(home)


def _expect_batch_failure(home, line, batch_id, match):
    with pytest.raises(job.CleaningError, match=match):
        job.run(line, [batch_id], home)
    record = ledger.read(line_paths(line, home), batch_id)
    assert record["status"] == ledger.FAILED and record["failed_stage"] == "cleaning"
    assert landing.batch_file(line_paths(line, home), batch_id).exists()  # nothing lost
    assert not line_paths(line, home).clean_batch(batch_id).exists()


def test_key_conflicts_quarantined_and_clip_keeps_missing(spark, credit, real_rows, home, tmp_path):
    """key_duplicates: quarantine sends every version of a conflicting key to the
    quarantine, counted once; a clipped field with missing: keep stays missing."""
    data = credit.model_dump(by_alias=True)
    data["cleaning"]["key_duplicates"] = "quarantine"
    for f in data["schema"]["fields"]:
        if f["name"] == "annual_inc":
            f["missing"] = "keep"
    spec = LineSpec.model_validate(data)
    rows = list(real_rows[:6])
    rows.append(_variant(rows[0], int(rows[0]["loan_id"]), int_rate="9.99"))  # conflicts with row 1
    rows.append(dict(rows[1]))  # an exact duplicate: removed, not a conflict
    rows.append(_variant(rows[2], 9101, annual_inc=""))  # missing, clipped field
    rows.append(_variant(rows[2], 9102, annual_inc="5000000"))  # clipped
    _land_text(spec, home, tmp_path, "conflict", _csv(rows, spec.schema.names))
    report = job.clean_one(spark, spec, line_paths("credit_risk", home), "conflict")

    assert report["rows_in"] == 10, report
    assert report["rows_quarantined"] == 2, (report["quarantine_reasons"], report["duplicates"])
    assert report["quarantine_reasons"] == {"key_conflict:loan_id": 2}
    assert report["duplicates"] == {"exact": 1}
    assert report["rows_clean"] == 7
    assert report["rows_in"] == report["rows_clean"] + report["rows_quarantined"] + report["duplicates_removed"]
    clean = pd.read_parquet(report["clean_path"]).set_index("loan_id")
    assert int(rows[0]["loan_id"]) not in clean.index
    assert pd.isna(clean.loc[9101, "annual_inc"])
    assert clean.loc[9102, "annual_inc"] == 2_000_000
    assert report["repairs"] == {"clipped:annual_inc": 1}


def test_missing_column_fails_naming_it(spark, credit, real_rows, home, tmp_path):
    header = [c for c in credit.schema.names if c != "int_rate"]
    rows = [{k: v for k, v in r.items() if k != "int_rate"} for r in real_rows]
    _land_text(credit, home, tmp_path, "no-rate", _csv(rows, header))
    _expect_batch_failure(home, "credit_risk", "no-rate", r"missing column\(s\) \['int_rate'\]")


def test_extra_column_fails_naming_it(spark, credit, real_rows, home, tmp_path):
    header = [*credit.schema.names, "ssn"]
    rows = [{**r, "ssn": "x"} for r in real_rows]
    _land_text(credit, home, tmp_path, "extra", _csv(rows, header))
    _expect_batch_failure(home, "credit_risk", "extra", r"unexpected column\(s\) \['ssn'\]")


def test_empty_file_and_header_only(spark, credit, home, tmp_path):
    _land_text(credit, home, tmp_path, "empty", "")
    _expect_batch_failure(home, "credit_risk", "empty", "empty")
    _land_text(credit, home, tmp_path, "header-only", ",".join(credit.schema.names) + "\n")
    _expect_batch_failure(home, "credit_risk", "header-only", "no rows")


def test_parquet_batch_with_wrong_types(spark, home):
    """Employment arrives as Parquet; a column of the wrong type is parsed, not trusted."""
    spec = load_spec("employment")
    frame = load_source(spec).head(50).copy()
    frame["AGEP"] = frame["AGEP"].astype(str)
    frame.loc[0, "AGEP"] = "sixty"
    frame.loc[1, "AGEP"] = "130"
    frame.loc[2, "SEX"] = "3"
    landing.land_frame(spec, frame, "typed", home)
    report = job.run("employment", ["typed"], home)["typed"]
    assert report["rows_in"] == 50
    assert report["quarantine_reasons"] == {
        "unparseable:AGEP": 1,
        "out_of_range:AGEP": 1,
        "unknown_category:SEX": 1,
    }
    clean = pd.read_parquet(report["clean_path"])
    assert len(clean) == 47
    assert str(clean["AGEP"].dtype) == "float64" and str(clean["employed"].dtype) == "int64"
    assert set(clean["employed"]) <= {0, 1}


# A re-clean killed at the swap: the process exchanges the first staged folder into
# place, then dies by SIGKILL (no handler, no finally), as a killed Spark driver would.
_KILLED_RECLEAN = """
import os, signal, sys
from pathlib import Path
from pipelines import storage
from pipelines.catalog.layout import line_paths
from pipelines.ingest.cleaning import job
from pipelines.specs import LineSpec, load_spec

real_exchange = storage._exchange

def exchange_then_die(a, b):
    real_exchange(a, b)
    os.kill(os.getpid(), signal.SIGKILL)

storage._exchange = exchange_then_die
data = load_spec("credit_risk").model_dump(by_alias=True)
data["cleaning"]["key_duplicates"] = "quarantine"
spark = job.spark_session("factory-killed-reclean")
job.clean_one(spark, LineSpec.model_validate(data), line_paths("credit_risk", Path(sys.argv[1])), sys.argv[2])
"""


class _Killed(BaseException):
    """Stands for a kill in the middle of the job (not an error the job handles)."""


def _on_disk(home, batch_id) -> tuple[int, int]:
    """What a reader finds for a cleaned batch: rows of its clean and quarantine output."""
    record = ledger.read(line_paths("credit_risk", home), batch_id)
    return (
        len(pd.read_parquet(record["cleaning"]["clean_path"])),
        len(pd.read_parquet(record["cleaning"]["quarantine_path"])),
    )


def _staged_files(home) -> list:
    """Files left in any staging folder of the home (a lock file is not output)."""
    return [p for s in home.rglob(".staging") for p in s.rglob("*") if p.is_file() and p.name != ".lock"]


def test_reclean_killed_at_the_swap_leaves_one_whole_output(spark, credit, real_rows, home, tmp_path, monkeypatch):
    """A re-clean killed while it puts its output in place leaves the batch's clean rows
    and quarantine from one run (never new rows beside the old quarantine, never no
    data); its staged leftovers are removed by the next run, whose counts add up."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    rows = list(real_rows[:6])
    rows.append(_variant(rows[0], int(rows[0]["loan_id"]), int_rate="9.99"))  # a key conflict
    rows.append(_variant(real_rows[8], 9001, int_rate="abc"))  # quarantined either way
    _land_text(credit, home, tmp_path, "redo", _csv(rows, credit.schema.names))
    first = job.run("credit_risk", ["redo"], home)["redo"]
    before = (first["rows_clean"], first["rows_quarantined"])
    assert before == (6, 1) and _on_disk(home, "redo") == before

    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RECLEAN, str(home), "redo"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    after_kill = _on_disk(home, "redo")  # the ledger still points where it did: readable

    # The next run (same spec as the killed one) tidies up and publishes.
    data = credit.model_dump(by_alias=True)
    data["cleaning"]["key_duplicates"] = "quarantine"
    second = job.clean_one(spark, LineSpec.model_validate(data), line_paths("credit_risk", home), "redo")
    after = (second["rows_clean"], second["rows_quarantined"])
    assert after == (5, 3)
    assert after_kill in (before, after), f"the kill left clean and quarantine of different runs: {after_kill}"
    assert not _staged_files(home)
    assert _on_disk(home, "redo") == after
    assert second["rows_in"] == sum(after) + second["duplicates_removed"]

    # Killed before its output is in place: the previous output stays, whole.
    def killed_at_the_swap(*args, **kwargs):
        raise _Killed()

    monkeypatch.setattr(job, "swap_directory", killed_at_the_swap)
    with pytest.raises(_Killed):
        job.clean_one(spark, credit, line_paths("credit_risk", home), "redo")
    assert _on_disk(home, "redo") == after
