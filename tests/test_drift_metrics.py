"""The factory's drift figures against independent implementations.

Tolerances: KS statistic, PSI, JSD, L-inf, chi-square and AUC to 1e-9 (they are exact
computations of the same quantity; only floating-point order differs); the KS p-value
to 1e-6 relative against ``ks_2samp(method="asymp")``, the method the factory uses.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp
from sklearn.metrics import roc_auc_score

from bench.realdata import employment_frame, lending_club_frame
from pipelines.monitoring import statistics as metrics
from pipelines.monitoring.detection import score_batch
from pipelines.monitoring.profile import build_profile, features_from_spec
from pipelines.specs import load_spec

TOL = 1e-9


def numpy_psi(ref_values: np.ndarray, cur_values: np.ndarray, edges: list[float], eps: float = 1e-4) -> float:
    """Straightforward PSI: right-closed bins with open outer ends, a missing bucket,
    shares floored at ``eps``."""
    bounds = [-np.inf, *edges, np.inf]

    def shares(x):
        counts = [np.sum((x > lo) & (x <= hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        counts.append(np.sum(np.isnan(x)))
        return np.asarray(counts, dtype=float) / len(x)

    p, q = np.maximum(shares(ref_values), eps), np.maximum(shares(cur_values), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def category_shares(ref: pd.Series, cur: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    cats = sorted(set(ref.astype(str)) | set(cur.astype(str)))
    p = ref.astype(str).value_counts(normalize=True).reindex(cats, fill_value=0).to_numpy()
    q = cur.astype(str).value_counts(normalize=True).reindex(cats, fill_value=0).to_numpy()
    return p, q


@pytest.fixture(scope="module")
def years():
    frame = employment_frame()
    return frame[frame["year"] == 2015], frame[frame["year"] == 2018]


@pytest.fixture(scope="module")
def report_2015_2018(years):
    ref, cur = years
    profile = build_profile(ref, features_from_spec(load_spec("employment")))
    return profile, score_batch(profile, cur)


# -- KS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_ref,n_cur", [(50, 70), (500, 20_000), (5000, 3), (1, 10)])
def test_ks_matches_scipy_on_continuous_data(n_ref, n_cur):
    rng = np.random.default_rng(n_ref + n_cur)
    ref, cur = np.sort(rng.normal(size=n_ref)), rng.normal(0.2, 1.1, size=n_cur)
    statistic, pvalue = metrics.ks_from_sample(ref, cur)
    expected = ks_2samp(ref, cur, method="asymp")
    assert statistic == pytest.approx(expected.statistic, abs=TOL)
    assert pvalue == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)


def test_ks_matches_scipy_on_tied_real_data(years, report_2015_2018):
    """Ages are whole numbers: many ties, where a sloppy KS goes wrong."""
    profile, report = report_2015_2018
    sample = np.asarray(profile["features"]["AGEP"]["sample"])
    cur = years[1]["AGEP"].to_numpy()
    expected = ks_2samp(sample, cur, method="asymp")
    ks = report["features"]["AGEP"]["metrics"]["ks"]
    assert ks["statistic"] == pytest.approx(expected.statistic, abs=TOL)
    assert ks["pvalue"] == pytest.approx(expected.pvalue, rel=1e-6)
    # and the exact method agrees closely where it can run
    small = cur[:300]
    assert metrics.ks_from_sample(sample, small)[1] == pytest.approx(ks_2samp(sample, small).pvalue, abs=0.02)


# -- PSI -----------------------------------------------------------------------------------


def test_numeric_psi_matches_a_plain_numpy_psi(years, report_2015_2018):
    profile, report = report_2015_2018
    edges = profile["features"]["AGEP"]["edges"]
    expected = numpy_psi(years[0]["AGEP"].to_numpy(), years[1]["AGEP"].to_numpy(), edges)
    assert report["features"]["AGEP"]["metrics"]["psi"]["value"] == pytest.approx(expected, abs=TOL)


def test_numeric_psi_with_missing_and_long_tail_matches():
    loans = lending_club_frame()
    ref, cur = loans.iloc[:6000].copy(), loans.iloc[6000:].copy()
    cur.loc[cur.index[:300], "annual_inc"] = np.nan
    cur["annual_inc"] = cur["annual_inc"] * 1.2
    profile = build_profile(ref, {"annual_inc": "numeric"})
    report = score_batch(profile, cur)
    expected = numpy_psi(ref["annual_inc"].to_numpy(), cur["annual_inc"].to_numpy(), profile["features"]["annual_inc"][
        "edges"])
    assert report["features"]["annual_inc"]["metrics"]["psi"]["value"] == pytest.approx(expected, abs=TOL)


def test_categorical_scores_match_independent_implementations(years, report_2015_2018):
    _, report = report_2015_2018
    for name in ("ANC", "SCHL", "RELP", "RAC1P"):
        p, q = category_shares(years[0][name], years[1][name])
        m = report["features"][name]["metrics"]
        assert m["psi"]["value"] == pytest.approx(float(np.sum((q - p) * np.log(np.maximum(q, 1e-4) / np.maximum(
            p, 1e-4)))), abs=TOL)
        # scipy returns the Jensen-Shannon DISTANCE: the square root of the divergence
        assert m["jsd"]["value"] == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=TOL)
        assert m["linf"]["value"] == pytest.approx(np.abs(p - q).max(), abs=TOL)


def test_chi_square_matches_scipy_when_no_pooling_is_needed(years):
    ref, cur = years
    r = ref["MAR"].value_counts().sort_index().to_numpy()
    c = cur["MAR"].value_counts().sort_index().to_numpy()
    statistic, dof, pvalue = metrics.chi2_homogeneity(r, c)
    expected = chi2_contingency(np.vstack([r, c]), correction=False)
    assert statistic == pytest.approx(expected.statistic, rel=TOL)
    assert dof == expected.dof
    assert pvalue == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)


def test_chi_square_pools_sparse_cells():
    # one cell expected at 0.5 in a tiny batch: pooled, not a p-value of 1e-5
    statistic, dof, pvalue = metrics.chi2_homogeneity(np.array([5000, 5000, 10]), np.array([5, 5, 1]))
    assert dof == 1 and pvalue > 0.5
    assert metrics.chi2_homogeneity(np.array([10, 0]), np.array([0, 0])) == (None, 0, 1.0)


def test_jsd_is_in_bits_and_bounded():
    assert metrics.jensen_shannon(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert metrics.jensen_shannon(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(3000) < 0.3
    s = np.round(rng.random(3000) + 0.3 * y, 1)  # coarse scores: many ties
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert metrics.roc_auc(np.zeros(5), np.arange(5)) is None


def test_auc_at_the_edges():
    y = np.array([0, 1, 0, 1])
    assert metrics.roc_auc([], []) is None
    assert metrics.roc_auc(np.ones(3), np.arange(3)) is None
    assert metrics.roc_auc([1, 2, 2], [0.1, 0.2, 0.3]) is None  # labels are truthy or not: one class
    assert metrics.roc_auc([0, 2, 0, 2], [0.1, 0.9, 0.4, 0.3]) == pytest.approx(0.75)
    assert math.isnan(metrics.roc_auc(y, [0.1, np.nan, 0.4, 0.3]))
    # infinite scores keep their place in the order (scikit-learn refuses them as such)
    assert metrics.roc_auc(y, [-np.inf, np.inf, 0.4, 0.3]) == pytest.approx(0.75)
    assert metrics.roc_auc(y, [np.inf, np.inf, 0.4, 0.3]) == pytest.approx(roc_auc_score(y, [9, 9, 0.4, 0.3]))
    assert metrics.roc_auc(y[:, None], np.array([[0.1], [0.9], [0.4], [0.3]])) == pytest.approx(0.75)


def test_training_auc_is_the_same_auc_with_nan_for_one_class():
    """The worker's AUC (early stopping) is this one; it answers NaN, not None, without both classes."""
    from pipelines.training.model import roc_auc

    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.1
    s = rng.normal(size=500).astype("float32") + y
    assert roc_auc(y.astype("float32"), s) == metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert math.isnan(roc_auc(np.zeros(4), np.arange(4)))
    assert math.isnan(roc_auc([], []))
