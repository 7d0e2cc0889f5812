"""Distance and test statistics between a reference and a current distribution.

Pure numpy/scipy functions on counts, shares and samples (the ROC AUC is scikit-learn's);
no pandas, no files. The tests check each against an independent implementation
(``scipy.stats.ks_2samp``, ``scipy.spatial.distance.jensenshannon``,
``scipy.stats.chi2_contingency`` and a plain numpy PSI) or, for the AUC, its edge cases.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

# Cochran's rule: a chi-square cell needs an expected count of at least 5.
MIN_EXPECTED = 5.0


def shares(counts: np.ndarray) -> np.ndarray:
    """Counts to shares (all zeros stay zeros)."""
    counts = np.asarray(counts, dtype="float64")
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def psi(ref: np.ndarray, cur: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population stability index ``sum((q - p) * ln(q / p))`` of two share vectors over the
    same buckets. Empty buckets are smoothed to ``epsilon`` (shares are not renormalised),
    so a bucket that is empty on one side adds a large but finite term."""
    p = np.maximum(np.asarray(ref, dtype="float64"), epsilon)
    q = np.maximum(np.asarray(cur, dtype="float64"), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def jensen_shannon(ref: np.ndarray, cur: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (base 2): 0 for equal distributions, 1 for
    disjoint ones. No smoothing is needed (``0 * log 0`` is 0). Note that
    ``scipy.spatial.distance.jensenshannon`` returns the square root of this."""
    p = np.asarray(ref, dtype="float64")
    q = np.asarray(cur, dtype="float64")
    m = 0.5 * (p + q)
    # rel_entr(x, y) = x * ln(x / y), 0 where x == 0
    value = 0.5 * (special.rel_entr(p, m).sum() + special.rel_entr(q, m).sum()) / math.log(2)
    return float(min(max(value, 0.0), 1.0))


def linf(ref: np.ndarray, cur: np.ndarray) -> float:
    """L-infinity distance: the largest change of one bucket's share."""
    return float(np.max(np.abs(np.asarray(cur, dtype="float64") - np.asarray(ref, dtype="float64"))))


def chi2_homogeneity(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float | None, int, float]:
    """Chi-square test that two count vectors come from one distribution (2 x K table).

    Buckets whose expected count is under 5 on either side are pooled into one bucket
    (and that bucket into the smallest other one while it is still under 5), so sparse
    categories of a small batch cannot produce tiny p-values on their own. Returns
    ``(statistic, degrees of freedom, p-value)``; with fewer than two usable buckets
    there is nothing to test: ``(None, 0, 1.0)``.
    """
    r = np.asarray(ref_counts, dtype="float64")
    c = np.asarray(cur_counts, dtype="float64")
    keep = (r + c) > 0
    r, c = r[keep], c[keep]
    n_r, n_c = r.sum(), c.sum()
    if n_r == 0 or n_c == 0 or len(r) < 2:
        return None, 0, 1.0
    total = r + c
    small = np.minimum(n_r * total, n_c * total) / (n_r + n_c) < MIN_EXPECTED
    if small.any():
        pooled_r, pooled_c = r[small].sum(), c[small].sum()
        r, c = list(r[~small]), list(c[~small])
        pooled_total = pooled_r + pooled_c
        if min(n_r, n_c) * pooled_total / (n_r + n_c) >= MIN_EXPECTED or not r:
            r.append(pooled_r)
            c.append(pooled_c)
        else:
            i = int(np.argmin(np.add(r, c)))
            r[i] += pooled_r
            c[i] += pooled_c
        r, c = np.asarray(r), np.asarray(c)
    if len(r) < 2:
        return None, 0, 1.0
    total = r + c
    e_r, e_c = n_r * total / (n_r + n_c), n_c * total / (n_r + n_c)
    statistic = float(np.sum((r - e_r) ** 2 / e_r) + np.sum((c - e_c) ** 2 / e_c))
    dof = len(r) - 1
    return statistic, dof, float(stats.chi2.sf(statistic, dof))


def ks_from_sample(ref_sorted: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test of a (sorted) reference sample against the
    current values; returns ``(statistic, p-value)``.

    The statistic is exactly ``scipy.stats.ks_2samp``'s, computed without sorting the
    (large) current sample: between two consecutive distinct reference values the
    reference CDF is flat and the current CDF monotone, so the supremum of their
    difference is reached at the ends of those intervals; the current CDF is needed
    only there, which one ``searchsorted`` of the current values into the reference's
    distinct values gives. The p-value is the two-sided asymptotic one
    (``kstwo.sf(D, round(n*m/(n+m)))``, as ``ks_2samp(method="asymp")``); with ties
    (integer data) it is conservative.
    """
    ref_sorted = np.asarray(ref_sorted, dtype="float64")
    cur = np.asarray(cur, dtype="float64")
    m, n = len(ref_sorted), len(cur)
    if m == 0 or n == 0:
        return float("nan"), 1.0
    values, ref_counts = np.unique(ref_sorted, return_counts=True)
    k = len(values)
    ref_le = np.cumsum(ref_counts) / m  # F_ref(v_j)
    ref_lt = ref_le - ref_counts / m  # F_ref(v_j-)
    # below[j]: number of current values < v_j; at[j]: number equal to v_j
    pos = np.searchsorted(values, cur, side="left")
    hit = pos < k
    equal = np.zeros(n, dtype=bool)
    equal[hit] = values[pos[hit]] == cur[hit]
    per_slot = np.bincount(pos, minlength=k + 1)  # slot j: v_{j-1} < x <= v_j (slot k: x > v_{k-1})
    at = np.bincount(pos[equal], minlength=k + 1)[:k]
    le_or_below = np.cumsum(per_slot)[:k]  # current values <= v_j
    cur_le = le_or_below / n
    cur_lt = (le_or_below - at) / n
    statistic = float(max(np.max(np.abs(ref_le - cur_le)), np.max(np.abs(ref_lt - cur_lt))))
    en = m * n / (m + n)
    pvalue = float(np.clip(stats.kstwo.sf(statistic, max(round(en), 1)), 0.0, 1.0))
    return statistic, pvalue


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for ``labels`` (truthy: positive), by
    ``sklearn.metrics.roc_auc_score``: tied scores count half. ``None`` without both
    classes (no rows, or one class only); NaN when a score is NaN. A score of +inf (-inf)
    ranks above (below) every finite one."""
    from sklearn.metrics import roc_auc_score  # sklearn loads slowly: only where an AUC is wanted

    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype="float64").ravel()
    if y.all() or not y.any():
        return None
    if np.isnan(s).any():
        return float("nan")
    if np.isinf(s).any():  # sklearn refuses infinities; the AUC depends only on the scores' order
        s = np.unique(s, return_inverse=True)[1].astype("float64")
    return float(roc_auc_score(y, s))
