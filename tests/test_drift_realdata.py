"""Drift scoring on the real data: no alarm on same-distribution samples or on the real
year-to-year change, an alarm naming the right feature on real rows with a shifted mix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.realdata import employment_frame, lending_club_frame
from pipelines.monitoring.detection import score_batch
from pipelines.monitoring.profile import build_profile, features_from_spec
from pipelines.specs import load_spec
from pipelines.specs.drift import LABEL_FEATURE

# ANC (ancestry recode) moves most between survey years; PSI against 2015, measured on
# the full years (about 69k people each). Equal to a plain category-share PSI, since
# ANC's buckets are its four categories.
ANC_PSI_FROM_2015 = {2016: 0.0049, 2017: 0.0090, 2018: 0.0141}
# Features with no plausible link to a person's age or education.
UNRELATED = ["SEX", "RAC1P", "ANC", "NATIVITY", "CIT", "MIG", "DEYE"]


@pytest.fixture(scope="module")
def employment() -> pd.DataFrame:
    return employment_frame()


@pytest.fixture(scope="module")
def emp_features() -> list[dict]:
    return features_from_spec(load_spec("employment"))


@pytest.fixture(scope="module")
def profile_2015(employment, emp_features) -> dict:
    return build_profile(employment[employment["year"] == 2015], emp_features)


@pytest.fixture(scope="module")
def credit_features() -> list[dict]:
    return features_from_spec(load_spec("credit_risk"))


@pytest.fixture(scope="module")
def credit_profile(credit_features) -> dict:
    reference = pd.concat([lending_club_frame(i) for i in (1, 2, 3)], ignore_index=True)
    return build_profile(reference, credit_features)


def psi_of(report: dict) -> dict[str, float]:
    return {n: f["metrics"]["psi"]["value"] for n, f in report["features"].items()}


def resample(frame: pd.DataFrame, weights: np.ndarray, seed: int) -> pd.DataFrame:
    """Real rows drawn with replacement, with probability proportional to ``weights``."""
    p = np.asarray(weights, dtype="float64")
    idx = np.random.default_rng(seed).choice(len(frame), size=len(frame), p=p / p.sum())
    return frame.iloc[idx].reset_index(drop=True)


# -- same distribution: no alarm ----------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_halves_of_one_year_raise_no_alarm(employment, emp_features, seed):
    year = employment[employment["year"] == 2016].reset_index(drop=True)
    first = np.random.default_rng(seed).permutation(len(year)) < len(year) // 2
    profile = build_profile(year[first], emp_features, seed=seed)
    report = score_batch(profile, year[~first])
    assert report["drifted"] is False and report["drifted_features"] == []
    assert max(psi_of(report).values()) < 0.005
    assert not any(f["effect"] for f in report["features"].values())


def test_small_same_distribution_batches_raise_no_alarm(employment, emp_features, credit_profile):
    """Small batches read large PSI from noise alone; the significance gate stops it."""
    year = employment[employment["year"] == 2016].reset_index(drop=True)
    first = np.random.default_rng(7).permutation(len(year)) < len(year) // 2
    profile = build_profile(year[first], emp_features)
    rest = year[~first]
    noisy_effects = 0
    for n in (20, 200, 2000):
        for seed in range(10):
            report = score_batch(profile, rest.sample(n, random_state=seed))
            assert report["drifted_features"] == [], (n, seed, report["drifted_features"])
            noisy_effects += sum(f["effect"] for f in report["features"].values())
    # the effect gate alone would have alarmed on some of the 20-row batches
    assert noisy_effects > 0
    loans = lending_club_frame(4)
    for n in (25, 250):
        for seed in range(10):
            assert score_batch(credit_profile, loans.sample(n, random_state=seed))["drifted"] is False


def test_unchanged_credit_slice_raises_no_alarm(credit_profile):
    report = score_batch(credit_profile, lending_club_frame(4))
    assert report["drifted"] is False
    assert max(psi_of(report).values()) < 0.05


# -- real year-to-year change: visible, no alarm ------------------------------------------


def test_year_to_year_change_shows_in_scores_without_alarm(employment, profile_2015):
    for year, expected in ANC_PSI_FROM_2015.items():
        report = score_batch(profile_2015, employment[employment["year"] == year])
        psi = psi_of(report)
        assert report["drifted"] is False, report["drifted_features"]
        assert psi["ANC"] == pytest.approx(expected, abs=5e-4)
        assert max(psi, key=psi.get) == "ANC"  # the largest change, as measured before
        anc = report["features"]["ANC"]
        # significant at this size, but far below the effect threshold: the rule's point
        assert anc["significant"] and not anc["effect"]
    # the change grows with the distance in years
    anc = [psi_of(score_batch(profile_2015, employment[employment["year"] == y]))["ANC"] for y in (2016, 2017, 2018)]
    assert anc == sorted(anc)


# -- real rows, shifted mix: alarm on the right feature ------------------------------------


def test_older_age_mix_alarms_on_age_and_not_unrelated_features(employment, profile_2015):
    base = employment[employment["year"] == 2018].reset_index(drop=True)
    shifted = resample(base, base["AGEP"].to_numpy() + 10, seed=1)
    rise = shifted["AGEP"].mean() - base["AGEP"].mean()
    assert 9 < rise < 12
    report = score_batch(profile_2015, shifted)
    assert report["drifted"] is True
    assert report["drifted_features"][0]["feature"] == "AGEP"
    assert [d["feature"] for d in report["drifted_features"]] == ["AGEP"]
    assert report["features"]["AGEP"]["metrics"]["psi"]["value"] > 0.2
    for name in UNRELATED:
        assert not report["features"][name]["drifted"], name


def test_a_milder_age_shift_shows_as_the_largest_score(employment, profile_2015):
    """About +7 years: a moderate PSI on AGEP, the largest of all features, under the
    default alarm threshold (0.2)."""
    base = employment[employment["year"] == 2018].reset_index(drop=True)
    shifted = resample(base, np.sqrt(base["AGEP"].to_numpy() + 1), seed=1)
    assert 6 < shifted["AGEP"].mean() - base["AGEP"].mean() < 9
    psi = psi_of(score_batch(profile_2015, shifted))
    assert max(psi, key=psi.get) == "AGEP" and 0.1 < psi["AGEP"] < 0.2


def test_a_per_feature_threshold_catches_the_milder_age_shift(employment, profile_2015):
    """The employment line holds AGEP (its strongest predictor) to PSI 0.1: the +7 year
    shift then alarms, on AGEP alone, and the real year-to-year change still does not."""
    config = {"features": {"AGEP": {"psi": 0.1}}}
    base = employment[employment["year"] == 2018].reset_index(drop=True)
    shifted = resample(base, np.sqrt(base["AGEP"].to_numpy() + 1), seed=1)
    report = score_batch(profile_2015, shifted, config=config)
    assert [d["feature"] for d in report["drifted_features"]] == ["AGEP"]
    assert report["features"]["AGEP"]["metrics"]["psi"]["threshold"] == 0.1
    assert score_batch(profile_2015, base, config=config)["drifted"] is False


def test_more_educated_mix_alarms_on_schl_only(employment, profile_2015):
    base = employment[employment["year"] == 2018].reset_index(drop=True)
    degree = base["SCHL"].astype(int).to_numpy() >= 21  # bachelor's degree or higher
    shifted = resample(base, np.where(degree, 2.5, 1.0), seed=2)
    report = score_batch(profile_2015, shifted)
    assert [d["feature"] for d in report["drifted_features"]] == ["SCHL"]
    assert "psi" in report["drifted_features"][0]["by"]


def test_credit_income_inflation_alarms_on_annual_inc(credit_profile):
    batch = lending_club_frame(4).copy()
    batch["annual_inc"] = batch["annual_inc"] * 1.5
    report = score_batch(credit_profile, batch)
    assert [d["feature"] for d in report["drifted_features"]] == ["annual_inc"]
    inc = report["features"]["annual_inc"]
    assert inc["metrics"]["psi"]["value"] > 0.4 and inc["metrics"]["ks"]["pvalue"] < 1e-50
    assert inc["summary_cur"]["mean"] == pytest.approx(1.5 * lending_club_frame(4)["annual_inc"].mean())


def test_credit_new_category_is_named_and_alarms_when_large(credit_profile):
    batch = lending_club_frame(4).copy()
    batch["annual_inc"] = batch["annual_inc"] * 1.5
    pending = np.random.default_rng(3).random(len(batch)) < 0.3
    batch.loc[pending, "verification_status"] = "Pending"
    report = score_batch(credit_profile, batch)
    names = [d["feature"] for d in report["drifted_features"]]
    assert names == ["verification_status", "annual_inc"]  # most severe first
    severities = [d["severity"] for d in report["drifted_features"]]
    assert severities == sorted(severities, reverse=True)
    unseen = report["features"]["verification_status"]["unseen"]
    assert unseen["new"] is True and unseen["values"] == {"Pending": int(pending.sum())}


def test_credit_rare_new_category_is_reported_without_alarm(credit_profile):
    batch = lending_club_frame(4).copy()
    batch.loc[batch.index[:10], "verification_status"] = "Pending"  # 0.4 % of the batch
    report = score_batch(credit_profile, batch)
    assert report["drifted"] is False
    assert report["features"]["verification_status"]["unseen"]["values"] == {"Pending": 10}


# -- the label's rate: real years no alarm, a prior shift named ------------------------------


def test_employment_label_rate_real_years_quiet_prior_shift_named(employment, emp_features):
    """The employed rate moves about one point from 2015 to 2018 (0.494 -> 0.505): no
    alarm. Real 2018 rows with the rate lowered 15 points, drawn within each class so the
    people look the same given their label: named as ``__label__`` and nothing else."""

    def score(frame: pd.DataFrame) -> np.ndarray:  # any fixed score will do: age
        return frame["AGEP"].to_numpy(dtype="float64")

    y2015 = employment[employment["year"] == 2015]
    profile = build_profile(y2015, emp_features, scores=score(y2015), labels=y2015["employed"].to_numpy())
    for year in (2016, 2017, 2018):
        batch = employment[employment["year"] == year]
        perf = score_batch(profile, batch, scores=score(batch), labels="employed")["performance"]
        assert abs(perf["positive_rate_change"]) < 0.02 and perf["label_rate_drifted"] is False

    y2018 = employment[employment["year"] == 2018]
    employed = y2018["employed"].astype(bool).to_numpy()
    n, rate = 20_000, employed.mean() - 0.15
    rng = np.random.default_rng(15)
    pos = rng.choice(np.flatnonzero(employed), round(n * rate), replace=False)
    neg = rng.choice(np.flatnonzero(~employed), n - len(pos), replace=False)
    shifted = y2018.iloc[np.concatenate([pos, neg])].reset_index(drop=True)
    report = score_batch(profile, shifted, scores=score(shifted), labels="employed")
    assert report["performance"]["positive_rate_change"] == pytest.approx(-0.139, abs=0.01)
    assert report["drifted"] is True
    assert [d["feature"] for d in report["drifted_features"]] == [LABEL_FEATURE]


def test_unlabelled_rows_count_for_drift_not_for_performance(credit_features):
    """A labelling line's validated batch keeps rows without a label. The monitor reads
    the batch's labels as text (pipelines.monitoring.stage.label_text): measured on the
    labelled rows only, the AUC and label rate are the fully labelled batch's; drift
    still sees every row. Scores: the real interest rate, a real risk score."""
    from pipelines.monitoring.stage import label_text

    reference = pd.concat([lending_club_frame(1), lending_club_frame(2)], ignore_index=True)
    profile = build_profile(reference, credit_features, reference["int_rate"].to_numpy(),
                            labels=(reference["Class"] == "bad").to_numpy())
    batch = lending_club_frame(4)
    full = score_batch(profile, batch, scores=batch["int_rate"].to_numpy(),
                       labels=label_text(batch["Class"], "string"), positive="bad")
    partial = batch.copy()
    partial.loc[partial.index[::3], "Class"] = None
    report = score_batch(profile, partial, scores=partial["int_rate"].to_numpy(),
                         labels=label_text(partial["Class"], "string"), positive="bad")
    labelled = partial["Class"].notna()
    assert report["performance"]["n"] == int(labelled.sum()) < len(batch)
    assert report["performance"]["positives"] == int((partial["Class"] == "bad").sum())
    assert abs(report["performance"]["auc"] - full["performance"]["auc"]) < 0.03
    assert report["performance"]["auc"] > 0.6
    assert psi_of(report) == psi_of(full)  # drift on all rows
    # an integer label with missing values reads as floats: 1.0 is the label "1"
    assert list(label_text(pd.Series([1.0, None, 0.0]), "integer")) == ["1", None, "0"]
