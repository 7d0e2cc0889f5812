"""Profiles on disk, bad input, prediction drift and AUC, the HTML report, settings."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bench.realdata import lending_club_frame, make_validated_batch
from pipelines.catalog.layout import DRIFT_PROFILE as PROFILE_FILE
from pipelines.monitoring.detection import DriftInputError, score_batch
from pipelines.monitoring.profile import (
    ProfileError,
    build_profile,
    build_profile_from_run,
    features_from_spec,
    load_profile,
    save_profile,
)
from pipelines.monitoring.report import render_html, write_html_report, write_json_report
from pipelines.specs import load_spec
from pipelines.specs.drift import LABEL_FEATURE, SCORE_FEATURE, drift_spec


@pytest.fixture(scope="module")
def features() -> list[dict]:
    return features_from_spec(load_spec("credit_risk"))


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return pd.concat([lending_club_frame(i) for i in (1, 2, 3)], ignore_index=True)


@pytest.fixture(scope="module")
def profile(reference, features) -> dict:
    return build_profile(reference, features, meta={"line": "credit_risk", "model_version": "7"})


def toy_score(frame: pd.DataFrame) -> np.ndarray:
    """A fixed 'model': higher interest rate, higher risk (real signal in this data)."""
    return 1 / (1 + np.exp(-(frame["int_rate"].to_numpy() - 14) / 3))


# -- the profile --------------------------------------------------------------------------


def test_profile_layout(profile, reference):
    f = profile["features"]
    term = f["term"]
    assert term["categories"] == ["term_36", "term_60"] and term["buckets"][-2:] == ["__other__", "__missing__"]
    assert sum(term["counts"]) == len(reference)
    states = f["addr_state"]["categories"]
    assert len(states) == 51  # every spec category, seen or not
    inc = f["annual_inc"]
    assert len(inc["edges"]) <= 9 and inc["edges"] == sorted(set(inc["edges"]))
    assert len(inc["counts"]) == len(inc["edges"]) + 2  # open outer bins + missing
    assert inc["sample"] == sorted(inc["sample"]) and len(inc["sample"]) == 5000
    assert inc["summary"]["mean"] == pytest.approx(reference["annual_inc"].mean())
    # a spiky count feature keeps few bins after de-duplication
    assert len(f["acc_now_delinq"]["edges"]) <= 2


def test_profile_is_deterministic_and_round_trips(tmp_path, profile, reference, features):
    again = build_profile(reference, features, meta={"line": "credit_risk", "model_version": "7"})
    assert again["features"] == profile["features"]
    path = save_profile(profile, tmp_path)  # a model folder: the file goes inside it
    assert path == tmp_path / PROFILE_FILE
    assert load_profile(tmp_path) == json.loads(json.dumps(profile))
    assert path.stat().st_size < 1_000_000


def test_profile_from_a_training_run(home, tmp_path):
    from pipelines.training.prepare import prepare_run

    for n in (1, 2, 3):
        make_validated_batch(home, "credit_risk", f"s{n}", lending_club_frame(n))
    run = tmp_path / "run-1"
    manifest = prepare_run("credit_risk", run, home=home)
    profile = build_profile_from_run(run, meta={"model_version": "1"})
    assert list(profile["features"]) == [f["name"] for f in manifest["features"]]
    assert profile["n"] == manifest["rows"]["train"]
    assert profile["meta"]["run_id"] == "run-1" and profile["meta"]["model_version"] == "1"
    assert profile["features"]["emp_length"]["categories"][:2] == ["emp_lt_1", "emp_1"]
    assert score_batch(profile, lending_club_frame(4))["drifted"] is False


def test_profile_from_a_run_without_data_is_a_clear_error(tmp_path):
    with pytest.raises(ProfileError, match="no training manifest"):
        build_profile_from_run(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"features": [{"name": "a", "kind": "numeric"}]}))
    with pytest.raises(ProfileError, match="no training shards"):
        build_profile_from_run(tmp_path)


@pytest.mark.parametrize(
    "frame,features,message",
    [
        (pd.DataFrame({"a": []}), {"a": "numeric"}, "empty"),
        (pd.DataFrame({"a": [1.0]}), {"b": "numeric"}, r"lacks feature column\(s\) \['b'\]"),
        (pd.DataFrame({"a": [np.nan, np.nan]}), {"a": "numeric"}, "'a' has no non-missing values"),
        (pd.DataFrame({"a": [1]}), {"a": "ordinal"}, "kind must be numeric or categorical"),
        (pd.DataFrame({"a": [1]}), [], "no features"),
    ],
)
def test_bad_reference_data(frame, features, message):
    with pytest.raises(ProfileError, match=message):
        build_profile(frame, features)


def test_kinds_follow_dtypes_for_plain_names():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"], "flag": [True, False, True]})
    p = build_profile(frame, ["x", "c", "flag"])
    assert [p["features"][n]["kind"] for n in ("x", "c", "flag")] == ["numeric", "categorical", "categorical"]


# -- bad profile files --------------------------------------------------------------------


def test_missing_profile_file(tmp_path):
    with pytest.raises(ProfileError, match="no drift profile at .*was it saved after training"):
        load_profile(tmp_path / "model-3")


def test_corrupt_profile_files(tmp_path, profile):
    path = save_profile(profile, tmp_path / "p.json")
    path.write_text(path.read_text()[:5000])  # truncated mid-write
    with pytest.raises(ProfileError, match="corrupt"):
        load_profile(path)
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ProfileError, match="not a drift profile"):
        load_profile(path)
    damaged = json.loads(json.dumps(profile))
    damaged["features"]["int_rate"]["counts"].pop()
    path.write_text(json.dumps(damaged))
    with pytest.raises(ProfileError, match="feature 'int_rate': counts and buckets"):
        load_profile(path)
    damaged = json.loads(json.dumps(profile))
    damaged["format_version"] = 99
    path.write_text(json.dumps(damaged))
    with pytest.raises(ProfileError, match="format version 99"):
        load_profile(path)


# -- bad batches --------------------------------------------------------------------------


def test_missing_feature_is_a_drift_finding_or_an_error(profile):
    batch = lending_club_frame(4).drop(columns=["int_rate"])
    report = score_batch(profile, batch)
    assert report["drifted"] is True and report["schema_changed"] is True
    assert report["features"]["int_rate"]["status"] == "missing"
    assert report["drifted_features"][0] == {
        "feature": "int_rate", "severity": None, "status": "missing", "by": "absent from the batch"
    }
    # the other features are still scored
    assert report["features"]["annual_inc"]["status"] == "ok" and not report["features"]["annual_inc"]["drifted"]
    with pytest.raises(DriftInputError, match=r"lacks monitored feature\(s\) \['int_rate'\]"):
        score_batch(profile, batch, on_missing="error")


def test_empty_batch_is_a_clear_outcome(profile, tmp_path):
    report = score_batch(profile, lending_club_frame(4).iloc[:0])
    assert report["status"] == "empty" and report["drifted"] is False and report["n_cur"] == 0
    assert {f["status"] for f in report["features"].values()} == {"no_data"}
    assert "EMPTY BATCH" in write_html_report(report, tmp_path / "r.html").read_text()
    json.dumps(report, allow_nan=False)


def test_unparseable_numbers_count_as_missing(profile):
    batch = lending_club_frame(4).astype({"int_rate": object})
    batch.loc[batch.index[: len(batch) // 2], "int_rate"] = "n/a"
    report = score_batch(profile, batch)
    f = report["features"]["int_rate"]
    assert f["summary_cur"]["missing"] == len(batch) // 2
    assert f["drifted"] and f["distribution"]["cur"][-1] == pytest.approx(0.5, abs=0.01)


def test_scores_and_labels_of_the_wrong_length_are_refused(profile):
    with pytest.raises(DriftInputError, match="scores has 3 values for"):
        score_batch(profile, lending_club_frame(4), scores=[0.1, 0.2, 0.3])
    with pytest.raises(DriftInputError, match="labels column 'nope'"):
        score_batch(profile, lending_club_frame(4), labels="nope")


# -- prediction drift and performance -----------------------------------------------------


def test_prediction_drift_and_auc(reference, features):
    y_ref = (reference["Class"] == "bad").to_numpy()
    profile = build_profile(reference, features, scores=toy_score(reference), labels=y_ref)
    assert SCORE_FEATURE in profile["features"]
    assert profile["performance"]["auc"] == pytest.approx(roc_auc_score(y_ref, toy_score(reference)))

    batch = lending_club_frame(4)
    report = score_batch(profile, batch, scores=toy_score(batch), labels="Class", positive="bad")
    assert report["prediction_drift"] is False and report["drifted"] is False
    perf = report["performance"]
    assert perf["auc"] == pytest.approx(roc_auc_score(batch["Class"] == "bad", toy_score(batch)))
    assert perf["n"] == len(batch) and perf["positives"] == int((batch["Class"] == "bad").sum())

    riskier = batch.assign(int_rate=batch["int_rate"] + 4)  # rates up 4 points: scores move
    report = score_batch(profile, riskier, scores=toy_score(riskier))
    assert report["prediction_drift"] is True
    assert {d["feature"] for d in report["drifted_features"]} == {"int_rate", SCORE_FEATURE}


def test_scores_without_reference_scores_are_noted(profile):
    batch = lending_club_frame(4)
    report = score_batch(profile, batch, scores=toy_score(batch))
    assert SCORE_FEATURE not in report["features"] and report["prediction_drift"] is False
    assert "no reference scores" in report["notes"][0]


def test_auc_drop_alarms_only_when_configured(reference, features):
    y_ref = (reference["Class"] == "bad").to_numpy()
    profile = build_profile(reference, features, scores=toy_score(reference), labels=y_ref)
    batch = lending_club_frame(4)
    noise = np.random.default_rng(0).random(len(batch))  # a model that lost its signal
    report = score_batch(profile, batch, scores=noise, labels="Class", positive="bad")
    assert report["performance"]["auc_drop"] > 0.1 and report["performance"]["drifted"] is False
    cfg = {"performance": {"max_auc_drop": 0.05}}
    report = score_batch(profile, batch, scores=noise, labels="Class", positive="bad", config=cfg)
    assert report["performance"]["drifted"] is True and report["drifted"] is True


def graded_scores(rows: int, positives: int, auc: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores whose ROC AUC is ``auc`` (to about 1e-4): both classes' scores
    are evenly spaced normal quantiles, the positives' shifted by ``sqrt(2) z(auc)``."""
    from statistics import NormalDist

    normal = NormalDist()

    def quantiles(k: int) -> np.ndarray:
        return np.array([normal.inv_cdf((i + 0.5) / k) for i in range(k)])

    shift = normal.inv_cdf(auc) * 2**0.5
    return np.arange(rows) < positives, np.concatenate([shift + quantiles(positives), quantiles(rows - positives)])


def test_auc_rule_is_a_test_at_the_familys_level(reference, features):
    """A 1,000-row batch whose AUC is 0.058 under the reference's with a standard error
    of 0.018: three standard errors, which the old "two standard errors" rule flagged,
    is p ~ 6e-4 one-sided, over the per-test level every feature test is held to."""
    from statistics import NormalDist

    y_ref, s_ref = graded_scores(len(reference), 2_500, 0.758)
    profile = build_profile(reference, features, scores=s_ref, labels=y_ref)
    assert profile["performance"]["n"] == len(reference) and profile["performance"]["positives"] == 2_500
    batch = lending_club_frame(4).head(1_000)
    y, s = graded_scores(1_000, 340, 0.700)
    cfg = {"performance": {"max_auc_drop": 0.05, "min_labelled_rows": 1_000}}
    report = score_batch(profile, batch, scores=s, labels=y, config=cfg)
    perf = report["performance"]
    assert perf["auc_drop"] == pytest.approx(0.058, abs=0.001)
    assert perf["auc_se_batch"] == pytest.approx(0.018, abs=0.0005)
    assert perf["auc_drop"] >= max(0.05, 2 * perf["auc_se_batch"])  # what used to alarm
    # the reference AUC is an estimate too (7,395 loans): its variance adds
    assert 0.005 < perf["auc_se_ref"] < 0.007
    assert perf["auc_se"] == pytest.approx(np.hypot(perf["auc_se_batch"], perf["auc_se_ref"]))
    # one family: the AUC rule is one more test, at the level each feature test gets
    without_labels = score_batch(profile, batch, scores=s, config=cfg)
    assert report["tests"] == without_labels["tests"] + 1
    assert perf["auc_alpha"] == report["alpha_per_test"] == pytest.approx(0.01 / report["tests"])
    assert report["features"]["int_rate"]["alpha"] == report["alpha_per_test"]
    z = NormalDist().inv_cdf(1 - report["alpha_per_test"])
    assert perf["auc_threshold"] == pytest.approx(max(0.05, z * perf["auc_se"]))
    assert perf["auc_pvalue"] > report["alpha_per_test"]
    assert perf["auc_drifted"] is False and perf["drifted"] is False
    page = render_html(report)  # the page shows the threshold the drop was held to
    assert "auc_threshold" in page and f"{perf['auc_threshold']:.4f}" in page

    # a large drop (a model that lost its signal) still alarms
    lost = score_batch(profile, batch, scores=np.random.default_rng(0).random(1_000), labels=y, config=cfg)
    assert lost["performance"]["auc_drop"] > 0.2
    assert lost["performance"]["auc_drifted"] is True and lost["drifted"] is True

    # the threshold follows the configured level: at a family-wise 0.5 the same drop alarms
    loose = score_batch(profile, batch, scores=s, labels=y, config={**cfg, "alpha": 0.5})["performance"]
    assert loose["auc_alpha"] == pytest.approx(0.5 / report["tests"])
    assert loose["auc_threshold"] < perf["auc_threshold"]
    assert loose["auc_drifted"] is True

    # without a max_auc_drop the AUC is reported only: no test, nothing spent on it
    off = score_batch(profile, batch, scores=s, labels=y)
    assert off["tests"] == without_labels["tests"] and "auc_drifted" not in off["performance"]


def test_a_profile_without_reference_positives_is_noted(reference, features):
    y_ref, s_ref = graded_scores(len(reference), 2_500, 0.758)
    profile = build_profile(reference, features, scores=s_ref, labels=y_ref)
    del profile["performance"]["positives"]  # as profiles written before it was kept
    y, s = graded_scores(1_000, 340, 0.700)
    batch = lending_club_frame(4).head(1_000)
    perf = score_batch(profile, batch, scores=s, labels=y, config={"performance": {"max_auc_drop": 0.05}})[
        "performance"
    ]
    assert perf["auc_se_ref"] is None and perf["auc_se"] == perf["auc_se_batch"]
    assert "uncertainty is not counted" in perf["note"]


def test_a_runs_reference_auc_keeps_the_held_out_rows_and_positives(home, monkeypatch):
    """The reference AUC of a run's profile is measured on its held-out split; the rows and
    positives kept beside it must be that split's, not the training rows', or the
    reference's standard error would be computed on the wrong set."""
    from factory_records import write_training_run

    from pipelines.catalog import layout
    from pipelines.monitoring import stage

    run = write_training_run(home, "run-auc", ["slice-1"], 0.8)
    loans = lending_club_frame(1).assign(bad_loan=lambda f: (f["Class"] == "bad").astype("int64"))
    train, held_out = loans.iloc[:1500], loans.iloc[1500:2100]
    for rank, part in enumerate((train.iloc[:750], train.iloc[750:])):
        path = layout.train_shard_path(run, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        part[["int_rate", "term", "bad_loan"]].to_parquet(path, index=False)
    held_out[["int_rate", "term", "bad_loan"]].to_parquet(layout.eval_data_path(run), index=False)
    # the model: the interest rate, read from the files it is asked to score
    monkeypatch.setattr(stage, "model_scores", lambda model, inputs: list(toy_score(
        pd.concat([pd.read_parquet(p) for p in inputs], ignore_index=True))))

    performance = load_profile(stage.write_reference_profile(run))["performance"]
    assert performance["source"] == "held-out evaluation split"
    assert performance["auc"] == pytest.approx(roc_auc_score(held_out["bad_loan"], toy_score(held_out)))
    assert performance["n"] == len(held_out) and performance["positives"] == int(held_out["bad_loan"].sum())
    assert performance["labelled_rows"] == len(train)  # the label's rate stays the training rows'


# -- settings -----------------------------------------------------------------------------


def test_settings_validation_and_overrides(profile):
    with pytest.raises(ValueError, match=r"drift\.alpha"):
        drift_spec({"alpha": 2})
    with pytest.raises(ValueError, match=r"drift\.thresholds\.psj"):
        drift_spec({"thresholds": {"psj": 0.1}})
    cfg = drift_spec({"thresholds": {"psi": 0.3}, "features": {"annual_inc": {"psi": 0.1}, "term": {"ignore": True}}})
    assert cfg.thresholds_for("annual_inc")["psi"] == 0.1 and cfg.thresholds_for("int_rate")["psi"] == 0.3
    batch = lending_club_frame(4).assign(annual_inc=lambda f: f["annual_inc"] * 1.5)
    report = score_batch(profile, batch, config=cfg)
    assert report["features"]["term"]["status"] == "ignored"
    assert report["features"]["annual_inc"]["metrics"]["psi"]["threshold"] == 0.1
    # a feature can be held to a stricter standard: a threshold no shift here reaches
    strict = drift_spec({"features": {"annual_inc": {"psi": 5, "jsd": 5, "linf": 5}}})
    assert score_batch(profile, batch, config=strict)["drifted"] is False


def test_the_spec_drift_section_is_valid_for_every_line():
    for line in ("credit_risk", "employment"):
        drift_spec(load_spec(line).drift)


# -- the HTML report ----------------------------------------------------------------------


def drifted_report(profile) -> dict:
    batch = lending_club_frame(4).assign(annual_inc=lambda f: f["annual_inc"] * 1.5)
    batch.loc[batch.index[:800], "verification_status"] = "Pending"
    return score_batch(profile, batch, batch_id="2026-11-23")


def test_html_report_has_every_score_and_a_chart_per_drifted_feature(profile, tmp_path):
    report = drifted_report(profile)
    page = write_html_report(report, tmp_path / "drift" / "b.html").read_text()
    assert "DRIFT" in page and "2026-11-23" in page
    for name in profile["features"]:
        assert f">{name}</td>" in page
    assert page.count("<img ") == len(report["drifted_features"]) == 2
    assert "Pending (800)" in page
    write_json_report(report, tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["drifted"] is True


def test_html_report_falls_back_to_inline_svg(profile, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    page = render_html(drifted_report(profile))
    assert page.count("<svg") == 2 and "<img " not in page


def test_a_changed_label_rate_is_drift_of_its_own(reference, features):
    """A prior shift: more loans go bad while the loans look the same. Built from real
    rows: the last slice with every bad loan kept and the good ones thinned to 15% bad."""
    y_ref = (reference["Class"] == "bad").to_numpy()
    profile = build_profile(reference, features, scores=toy_score(reference), labels=y_ref)
    assert profile["performance"]["positive_rate"] == pytest.approx(y_ref.mean())

    batch = lending_club_frame(4)
    same = score_batch(profile, batch, scores=toy_score(batch), labels="Class", positive="bad")
    assert same["performance"]["label_rate_drifted"] is False
    assert LABEL_FEATURE not in {d["feature"] for d in same["drifted_features"]}

    bad = batch[batch["Class"] == "bad"]
    good = batch[batch["Class"] == "good"].sample(n=len(bad) * 85 // 15, random_state=0)
    shifted = pd.concat([bad, good], ignore_index=True)
    # the line's own settings: their min_labelled_rows (2,000) guards the AUC rule, not this one
    line_drift = load_spec("credit_risk").drift
    report = score_batch(
        profile, shifted, scores=toy_score(shifted), labels="Class", positive="bad", config=line_drift
    )
    perf = report["performance"]
    assert len(shifted) < line_drift.performance.min_labelled_rows
    assert perf["positive_rate"] == pytest.approx(0.15, abs=0.01)
    assert perf["label_rate_drifted"] is True and report["drifted"] is True
    named = {d["feature"]: d for d in report["drifted_features"]}
    assert "positive rate" in named[LABEL_FEATURE]["by"]

    # too few rows for the test's normal approximation (under five expected bad loans): no verdict
    tiny = pd.concat([bad.head(6), good.head(14)], ignore_index=True)
    few = score_batch(profile, tiny, scores=toy_score(tiny), labels="Class", positive="bad")
    assert few["performance"]["positive_rate"] == pytest.approx(0.3)
    assert few["performance"]["label_rate_drifted"] is False

    # reported, not an alarm, when the line switches the check off
    off = score_batch(
        profile, shifted, scores=toy_score(shifted), labels="Class", positive="bad",
        config={"performance": {"max_label_rate_change": None}},
    )
    assert off["performance"]["positive_rate_change"] > 0.09
    assert off["performance"]["label_rate_drifted"] is False
    assert LABEL_FEATURE not in {d["feature"] for d in off["drifted_features"]}
