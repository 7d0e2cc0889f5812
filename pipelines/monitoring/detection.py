"""Score a new batch against a reference profile: per-feature drift and one verdict.

What is computed
----------------
Every monitored feature is reduced to a distribution over the profile's buckets (numeric:
the reference's quantile bins plus ``__missing__``; categorical: the reference's
categories plus ``__other__`` and ``__missing__``), and compared with:

- PSI, ``sum((q - p) ln(q / p))``, empty buckets smoothed to ``epsilon`` (1e-4);
- Jensen-Shannon divergence in bits (base 2, in [0, 1]);
- L-infinity distance, the largest change of one bucket's share;
- a chi-square test of homogeneity on the bucket counts (sparse buckets pooled);
- numeric features only: the two-sample Kolmogorov-Smirnov test of the batch's values
  against the profile's reference sample (statistic and p-value).

The model's scores (``scores=``) are the numeric feature ``__score__``: prediction drift,
with the same metrics. With labels as well, ROC AUC on the batch is reported next to the
reference's, and the batch's positive-class rate next to the training data's: a change of
at least ``performance.max_label_rate_change`` (five points by default) that a two-sided
two-proportion z-test also finds significant at ``alpha`` is drift named ``__label__``
(a prior shift moves no feature and may not move the scores).

The AUC rule (only with ``performance.max_auc_drop`` set and at least
``min_labelled_rows`` labelled rows) is one more test of the family: a one-sided test at
the same ``alpha / m`` as each feature test. The batch is drifted when the drop
``auc_ref - auc`` reaches ``max(max_auc_drop, z(1 - alpha / m) * se)``, where ``se``
combines the batch AUC's standard error and the reference AUC's (Hanley & McNeil 1982;
the reference is measured on a finite, disjoint set, so the variances add). The report's
``performance`` shows ``auc_se`` (with ``auc_se_batch`` and ``auc_se_ref``),
``auc_threshold``, ``auc_pvalue`` and ``auc_drifted``. A profile that does not store the
reference's ``positives`` counts the batch's error only, and says so in a ``note``.

When a feature alarms
---------------------
A feature is ``drifted`` only when BOTH hold:

1. effect: some effect metric reaches its threshold (defaults PSI >= 0.2, JSD >= 0.1,
   L-inf >= 0.2; per line in the spec's ``drift.thresholds``, per feature in
   ``drift.features.<name>``, for the score in ``drift.prediction``);
2. significance: the feature's p-value is below ``alpha / m`` (Bonferroni), where
   ``alpha`` is the line's family-wise level (default 0.01) and ``m`` the number of tests
   in the batch (two per numeric feature, KS and chi-square, whose smaller p-value
   counts; one per categorical feature; one for the AUC rule when it runs).

Why both. The effect size alone depends on the sample size: between two samples of ONE
distribution the expected PSI is about ``(buckets - 1) * (1/n_ref + 1/n_cur)``, so a batch
of 100 rows of a 50-category feature reads PSI ~ 0.5 from noise alone, and a fixed PSI
threshold would alarm on every small batch. The test alone has the opposite fault: with
tens of thousands of rows any real but harmless change is significant (ANC between the
2015 and 2018 ACS years, PSI 0.014, has a chi-square p-value far below 1e-10), and a model
does not need retraining for it. Requiring both means small batches alarm only on changes
too large to be noise and large batches only on changes large enough to matter.
Bonferroni keeps the chance that any of the ~20 features of a same-distribution batch
passes the test at or under ``alpha``; the effect threshold makes it smaller still. The
defaults follow common practice (PSI 0.1-0.25 "moderate", above 0.25 "major" shift; for
small changes JSD in bits is about PSI / 5.5, so JSD 0.1 sits well above PSI 0.2 and
adds a criterion for changes concentrated in few buckets; L-inf 0.2 is a 20 point move
of one category's share).

Chi-square cells with an expected count under 5 are pooled (Cochran's rule), so one
rare category seen once in a 20-row batch cannot produce a tiny p-value. The KS
p-value is asymptotic; with ties (integer data such as ages) it is conservative.

Bad input
---------
- A monitored feature absent from the batch is a finding with status ``missing`` that
  counts as drift (the batch no longer has what the model was trained on; a retrain on
  the new schema is the fix) and is listed first; ``on_missing="error"`` raises
  :class:`DriftInputError` instead.
- An empty batch gives a report with ``status: "empty"``, ``drifted: false`` and no
  scores: nothing is known about it, and no alarm is raised on no evidence.
- Unparseable values in a numeric column count as missing (the ``__missing__`` bucket).
- A profile that is missing or corrupt fails in :func:`pipelines.monitoring.profile.load_profile`
  with :class:`~pipelines.monitoring.profile.ProfileError`.

Its length is this documentation and one function per kind of evidence (features, score,
labels) that the verdict combines; the rule reads best in one place.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.monitoring import statistics as metrics
from pipelines.monitoring.profile import category_counts, category_key, check_profile, numeric_values
from pipelines.specs.drift import (
    CLASS_FEATURE,
    EFFECT_METRICS,
    LABEL_FEATURE,
    PREDICTION_FEATURES,
    SCORE_FEATURE,
    DriftSpec,
    drift_spec,
)

if TYPE_CHECKING:
    import pandas as pd

REPORT_FORMAT = "factory-drift-report"
MAX_UNSEEN_LISTED = 20


class DriftInputError(ValueError):
    """A batch that cannot be scored as asked (e.g. a monitored feature is missing and
    ``on_missing="error"``)."""


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _numeric_counts(feature: dict[str, Any], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bucket counts of the batch on the profile's bins (+ missing) and the finite values."""
    nan = np.isnan(values)
    finite = values[~nan]
    edges = np.asarray(feature["edges"], dtype="float64")
    counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1)
    return np.append(counts, int(nan.sum())), finite


def _categorical_counts(feature: dict[str, Any], values: Any) -> tuple[np.ndarray, dict[str, int]]:
    """Bucket counts of the batch on the profile's categories, and the values the profile
    does not name (they are counted in ``__other__``)."""
    seen = category_counts(values)
    index = {c: i for i, c in enumerate(feature["categories"])}
    counts = np.zeros(len(index) + 2, dtype="int64")
    unseen: dict[str, int] = {}
    for key, count in seen.items():
        if key is None:
            counts[-1] += count
        elif key in index:
            counts[index[key]] += count
        else:
            counts[-2] += count
            unseen[key] = count
    return counts, unseen


def _summary(finite: np.ndarray, n: int) -> dict[str, Any]:
    if len(finite) == 0:
        return {"n": n, "missing": n, "mean": None, "std": None}
    return {
        "n": n,
        "missing": int(n - len(finite)),
        "mean": _finite(float(finite.mean())),
        "std": _finite(float(finite.std(ddof=1))) if len(finite) > 1 else 0.0,
        "min": float(finite.min()),
        "max": float(finite.max()),
    }


def _compare(feature: dict[str, Any], values: Any, epsilon: float) -> dict[str, Any]:
    """Distances and test statistics of one feature; no decision yet."""
    ref_counts = np.asarray(feature["counts"], dtype="int64")
    out: dict[str, Any] = {"kind": feature["kind"]}
    if feature["kind"] == "numeric":
        cur_counts, finite = _numeric_counts(feature, numeric_values(values))
        statistic, pvalue = metrics.ks_from_sample(np.asarray(feature["sample"], dtype="float64"), finite)
        out["ks"] = {
            "statistic": _finite(statistic),
            "pvalue": pvalue,
            "n_ref_sample": len(feature["sample"]),
            "n_cur": len(finite),
        }
        out["summary_cur"] = _summary(finite, int(cur_counts.sum()))
        out["summary_ref"] = {k: feature["summary"].get(k) for k in ("n", "missing", "mean", "std", "min", "max")}
        out["tests"] = 2
    else:
        cur_counts, unseen = _categorical_counts(feature, values)
        ranked = sorted(unseen.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_UNSEEN_LISTED]
        # values the profile does not name; "new" when the reference had no __other__ values
        out["unseen"] = {
            "values": dict(ranked),
            "distinct": len(unseen),
            "rows": int(sum(unseen.values())),
            "new": bool(unseen) and bool(ref_counts[-2] == 0),
        }
        out["tests"] = 1
    p, q = metrics.shares(ref_counts), metrics.shares(cur_counts)
    chi2, dof, chi2_p = metrics.chi2_homogeneity(ref_counts, cur_counts)
    out["chi2"] = {"statistic": chi2, "dof": dof, "pvalue": chi2_p}
    out["values"] = {
        "psi": metrics.psi(p, q, epsilon),
        "jsd": metrics.jensen_shannon(p, q),
        "linf": metrics.linf(p, q),
    }
    out["pvalue"] = min(chi2_p, out["ks"]["pvalue"]) if "ks" in out else chi2_p
    out["n_ref"] = int(ref_counts.sum())
    out["n_cur"] = int(cur_counts.sum())
    out["distribution"] = {
        "buckets": list(feature["buckets"]),
        "ref": [float(x) for x in p],
        "cur": [float(x) for x in q],
    }
    return out


def _decide(finding: dict[str, Any], thresholds: dict[str, float | None], alpha_test: float) -> None:
    """Fill in the per-metric thresholds, the effect, significance, verdict and severity."""
    table, ratios = {}, []
    for metric in EFFECT_METRICS:
        value, threshold = finding["values"][metric], thresholds.get(metric)
        exceeded = threshold is not None and value >= threshold
        table[metric] = {"value": value, "threshold": threshold, "exceeded": exceeded}
        if threshold is not None:
            ratios.append(value / threshold)
    if "ks" in finding:
        table["ks"] = {
            "statistic": finding["ks"]["statistic"],
            "pvalue": finding["ks"]["pvalue"],
            "n_ref_sample": finding["ks"]["n_ref_sample"],
        }
    table["chi2"] = finding.pop("chi2")
    finding.pop("values")
    finding.pop("ks", None)
    finding["metrics"] = table
    finding["alpha"] = alpha_test
    finding["effect"] = any(table[m]["exceeded"] for m in EFFECT_METRICS)
    finding["significant"] = finding["pvalue"] < alpha_test
    finding["drifted"] = finding["effect"] and finding["significant"]
    finding["severity"] = max(ratios) if ratios else 0.0


def _why(name: str, finding: dict[str, Any]) -> dict[str, Any]:
    if finding["status"] == "missing":
        return {"feature": name, "severity": None, "status": "missing", "by": "absent from the batch"}
    over = [
        f"{m} {finding['metrics'][m]['value']:.3g} >= {finding['metrics'][m]['threshold']:g}"
        for m in EFFECT_METRICS
        if finding["metrics"][m]["exceeded"]
    ]
    return {
        "feature": name,
        "severity": finding["severity"],
        "status": "drifted",
        "by": ", ".join(over) + (f" (p={finding['pvalue']:.2g})" if finding["pvalue"] > 0 else " (p<1e-300)"),
        **{m: finding["metrics"][m]["value"] for m in EFFECT_METRICS},
    }


def _labels01(labels: Any, positive: Any) -> np.ndarray:
    y = np.asarray(labels)
    if positive is not None:
        return np.asarray([str(v) == str(positive) for v in y], dtype=bool)
    if y.dtype == bool:
        return y
    try:
        yf = y.astype("float64")
    except (TypeError, ValueError):
        raise DriftInputError("labels must be 0/1 or boolean (or give positive=)") from None
    if not np.isin(yf[~np.isnan(yf)], (0.0, 1.0)).all():
        raise DriftInputError("labels must be 0/1 or boolean (or give positive=)")
    return yf == 1.0


def score_batch(
    profile: dict[str, Any],
    frame: pd.DataFrame,
    *,
    scores: Any = None,
    labels: Any = None,
    positive: Any = None,
    config: DriftSpec | dict[str, Any] | None = None,
    on_missing: str = "report",
    batch_id: str | None = None,
) -> dict[str, Any]:
    """Compare a batch with a reference profile; return the drift report (JSON-ready).

    ``scores``/``labels``: array-likes aligned with ``frame``, or column names in it.
    ``positive``: the positive label value when labels are not 0/1. ``config``: the line's
    ``drift:`` section. See the module docstring for the rule and the report's fields:
    ``features`` (one finding per monitored feature), ``drifted``, ``drifted_features``
    (sorted, most severe first), ``prediction`` and ``performance``.
    """
    check_profile(profile)
    if on_missing not in ("report", "error"):
        raise ValueError(f"on_missing must be 'report' or 'error', got {on_missing!r}")
    cfg = drift_spec(config)
    n_cur = len(frame)

    def column(value: Any, what: str) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            if value not in frame.columns:
                raise DriftInputError(f"{what} column {value!r} is not in the batch")
            return frame[value]
        if len(value) != n_cur:
            raise DriftInputError(f"{what} has {len(value)} values for {n_cur} rows")
        return value

    score_values = column(scores, "scores")
    label_values = column(labels, "labels")

    notes = []
    names = [n for n in profile["features"] if n != SCORE_FEATURE]
    if CLASS_FEATURE in names and CLASS_FEATURE not in frame.columns:
        # like scores: no predictions for the batch means no prediction drift, not a changed schema
        names.remove(CLASS_FEATURE)
        notes.append("no predicted classes for the batch: no prediction drift")
    if score_values is not None:
        if SCORE_FEATURE in profile["features"]:
            names.append(SCORE_FEATURE)
        else:
            notes.append("scores given, but the profile has no reference scores: no prediction drift")
    absent = [n for n in names if n != SCORE_FEATURE and n not in frame.columns and not cfg.ignored(n)]
    if absent and on_missing == "error":
        raise DriftInputError(f"the batch lacks monitored feature(s) {absent}")

    findings: dict[str, dict[str, Any]] = {}
    for name in names:
        feature = profile["features"][name]
        base = {"kind": feature["kind"], "n_ref": int(sum(feature["counts"])), "n_cur": n_cur}
        if cfg.ignored(name):
            findings[name] = {**base, "status": "ignored", "drifted": False}
        elif name in absent:
            findings[name] = {**base, "status": "missing", "drifted": True, "severity": None}
        elif n_cur == 0:
            findings[name] = {**base, "status": "no_data", "drifted": False}
        else:
            values = score_values if name == SCORE_FEATURE else frame[name]
            findings[name] = {"status": "ok", **_compare(feature, values, cfg.epsilon)}

    performance = None
    if label_values is not None:
        metric = (profile.get("performance") or {}).get("metric", "auc")
        if metric not in PERFORMANCE_RULES:
            raise DriftInputError(f"the profile's performance metric {metric!r} is not one this code tests")
        predictions = frame[CLASS_FEATURE] if CLASS_FEATURE in frame.columns else score_values
        # Rows not yet labelled (a labelling line) count for drift, not for performance.
        import pandas as pd

        labelled = ~pd.isna(np.asarray(label_values, dtype=object))
        if not labelled.all():
            label_values = np.asarray(label_values, dtype=object)[labelled]
            if predictions is not None:
                predictions = np.asarray(predictions)[labelled]
            notes.append(f"{int((~labelled).sum())} unlabelled row(s): performance is measured on the labelled rows")
        performance = PERFORMANCE_RULES[metric](profile, predictions, label_values, positive, cfg)

    # the family: every feature test, and the AUC rule when it runs
    tests = sum(f.get("tests", 0) for f in findings.values()) + (performance["tests"] if performance else 0)
    alpha_test = cfg.alpha / tests if tests else cfg.alpha
    for name, finding in findings.items():
        if finding["status"] == "ok":
            _decide(finding, cfg.thresholds_for(name), alpha_test)
    if performance:
        DECIDERS[performance.get("metric", "auc")](performance, alpha_test)

    drifted = [
        _why(name, f)
        for name, f in findings.items()
        if f["drifted"]
    ]
    if performance and performance.get("label_rate_drifted"):
        drifted.append(_label_why(performance))
    if performance and performance.get("label_mix_drifted"):
        drifted.append(_label_mix_why(performance))
    drifted.sort(key=lambda d: (d["status"] != "missing", -(d["severity"] or 0.0), d["feature"]))
    prediction_findings = [findings[n] for n in PREDICTION_FEATURES if n in findings]
    any_drift = bool(drifted) or bool(performance and performance.get("drifted"))
    return {
        "format": REPORT_FORMAT,
        "format_version": 1,
        "batch_id": batch_id,
        "scored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": {"meta": dict(profile.get("meta") or {}), "created_at": profile.get("created_at"), "n": profile.get("n")},
        "status": "empty" if n_cur == 0 else "ok",
        "n_ref": profile.get("n"),
        "n_cur": n_cur,
        "alpha": cfg.alpha,
        "tests": tests,
        "alpha_per_test": alpha_test,
        "drifted": any_drift,
        "data_drift": any(d["feature"] not in (*PREDICTION_FEATURES, LABEL_FEATURE) for d in drifted),
        "prediction_drift": any(f["drifted"] for f in prediction_findings),
        "schema_changed": bool(absent),
        "drifted_features": drifted,
        "features": findings,
        "performance": performance,
        "notes": notes,
    }


def _performance(
    profile: dict[str, Any], scores: Any, labels: Any, positive: Any, cfg: DriftSpec
) -> dict[str, Any]:
    """AUC and positive rate of a labelled batch against the reference's. The AUC's
    verdict waits for the family's per-test level (:func:`_decide_auc`); ``tests`` says
    whether the AUC rule is one of the batch's tests (1) or not (0)."""
    ref = profile.get("performance") or {}
    out: dict[str, Any] = {
        "metric": "auc", "auc": None, "auc_ref": ref.get("auc"), "n": 0, "positives": 0, "drifted": False,
    }
    y = _labels01(labels, positive)
    out.update(_label_rate(y, ref, cfg))
    limit = cfg.performance.max_auc_drop
    out["max_auc_drop"] = limit
    out["tests"] = 0
    if scores is None:
        out["note"] = "labels without scores: no AUC"
        return out
    s = numeric_values(scores)
    ok = ~np.isnan(s)
    y, s = y[ok], s[ok]
    out.update(n=int(len(y)), positives=int(y.sum()), auc=metrics.roc_auc(y, s))
    if out["auc"] is None or out["auc_ref"] is None:
        return out
    out["auc_drop"] = out["auc_ref"] - out["auc"]
    # The drop's noise is the batch AUC's (Hanley & McNeil 1982) and, when the reference
    # AUC is itself measured on a finite set, the reference's too: the two sets are
    # disjoint, so the variances add.
    se_batch = _auc_standard_error(out["auc"], out["positives"], out["n"] - out["positives"])
    ref_n, ref_pos = ref.get("n"), ref.get("positives")
    se_ref = None
    if isinstance(ref_n, int) and isinstance(ref_pos, int):
        se_ref = _auc_standard_error(out["auc_ref"], ref_pos, ref_n - ref_pos)
    else:
        out["note"] = "the profile does not store the reference AUC's positives: its own uncertainty is not counted"
    out["auc_se_batch"], out["auc_se_ref"] = se_batch, se_ref
    out["auc_se"] = math.hypot(se_batch, se_ref or 0.0)
    if limit is not None and out["n"] >= cfg.performance.min_labelled_rows:
        out["tests"] = 1
    return out


def _decide_auc(perf: dict[str, Any], alpha_test: float) -> None:
    """The AUC rule, a one-sided test at the family's per-test level: drifted when the
    drop reaches both ``max_auc_drop`` and ``z(1 - alpha_test)`` standard errors."""
    if perf["tests"]:
        z = NormalDist().inv_cdf(1 - alpha_test)
        se, drop = perf["auc_se"], perf["auc_drop"]
        perf["auc_alpha"] = alpha_test
        perf["auc_z"] = z
        if 0 < se < math.inf:
            perf["auc_pvalue"] = 0.5 * math.erfc(drop / se / math.sqrt(2))
        else:
            perf["auc_pvalue"] = 0.0 if se == 0 and drop > 0 else 1.0
        perf["auc_threshold"] = max(perf["max_auc_drop"], z * se)
        perf["auc_drifted"] = drop >= perf["auc_threshold"]
    perf["drifted"] = bool(perf.get("auc_drifted")) or perf["label_rate_drifted"]


def _label_rate(y: np.ndarray, ref: dict[str, Any], cfg: DriftSpec) -> dict[str, Any]:
    """The batch's positive rate against the reference's: change, z-test p-value, verdict."""
    limit = cfg.performance.max_label_rate_change
    n, ref_rate, ref_n = int(len(y)), ref.get("positive_rate"), ref.get("labelled_rows")
    out: dict[str, Any] = {
        "positive_rate": float(y.mean()) if n else None,
        "positive_rate_ref": ref_rate,
        "max_label_rate_change": limit,
        "label_rate_drifted": False,
    }
    if not n or ref_rate is None or not ref_n:
        return out
    change = out["positive_rate"] - ref_rate
    pooled = (y.sum() + ref_rate * ref_n) / (n + ref_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / ref_n))
    pvalue = math.erfc(abs(change) / se / math.sqrt(2)) if se > 0 else (0.0 if change else 1.0)
    out.update(positive_rate_change=change, positive_rate_pvalue=pvalue)
    # min_labelled_rows is the AUC's guard; the z-test carries its own, and only needs
    # the normal approximation to hold: five expected rows of the rarer class.
    if limit is not None and n * min(ref_rate, 1 - ref_rate) >= 5:
        out["label_rate_drifted"] = abs(change) >= limit and pvalue < cfg.alpha
    return out


def _label_why(perf: dict[str, Any]) -> dict[str, Any]:
    p = perf["positive_rate_pvalue"]
    return {
        "feature": LABEL_FEATURE,
        "severity": abs(perf["positive_rate_change"]) / perf["max_label_rate_change"],
        "status": "drifted",
        "by": (
            f"positive rate {perf['positive_rate_ref']:.3f} -> {perf['positive_rate']:.3f}, "
            f"change {perf['positive_rate_change']:+.3f} >= {perf['max_label_rate_change']:g}"
            + (f" (p={p:.2g})" if p > 0 else " (p<1e-300)")
        ),
    }



def _performance_accuracy(
    profile: dict[str, Any], predicted: Any, labels: Any, positive: Any, cfg: DriftSpec
) -> dict[str, Any]:
    """Multiclass: accuracy of the predicted classes on the batch against the reference's,
    and the label's class mix against the training data's. The accuracy's verdict waits
    for the family's per-test level (:func:`_decide_accuracy`)."""
    ref = profile.get("performance") or {}
    classes = [str(c) for c in ref.get("classes") or []]
    out: dict[str, Any] = {
        "metric": "accuracy", "accuracy": None, "accuracy_ref": ref.get("accuracy"), "n": 0,
        "max_accuracy_drop": cfg.performance.max_accuracy_drop, "tests": 0, "drifted": False,
    }
    keys = [category_key(v) for v in labels]
    out.update(_label_mix(keys, classes, ref, cfg))
    if predicted is None:
        out["note"] = "labels without predicted classes: no accuracy"
        return out
    pairs = [(k, category_key(p)) for k, p in zip(keys, predicted, strict=True) if k is not None]
    pairs = [(k, p) for k, p in pairs if p is not None]
    n = len(pairs)
    out["n"] = n
    if not n:
        return out
    accuracy = sum(k == p for k, p in pairs) / n
    out["accuracy"] = accuracy
    ref_acc, ref_n = ref.get("accuracy"), ref.get("n")
    if ref_acc is None:
        return out
    out["accuracy_drop"] = ref_acc - accuracy
    # binomial standard errors; the reference's own when it was measured on a finite set
    se_batch = math.sqrt(max(accuracy * (1 - accuracy), 1.0 / n) / n)
    se_ref = math.sqrt(ref_acc * (1 - ref_acc) / ref_n) if isinstance(ref_n, int) and ref_n > 0 else 0.0
    out.update(accuracy_se_batch=se_batch, accuracy_se_ref=se_ref, accuracy_se=math.hypot(se_batch, se_ref))
    if out["max_accuracy_drop"] is not None and n >= cfg.performance.min_labelled_rows:
        out["tests"] = 1
    return out


def _decide_accuracy(perf: dict[str, Any], alpha_test: float) -> None:
    """The accuracy rule, one-sided at the family's per-test level, like the AUC's."""
    if perf["tests"]:
        z = NormalDist().inv_cdf(1 - alpha_test)
        se, drop = perf["accuracy_se"], perf["accuracy_drop"]
        perf["accuracy_alpha"] = alpha_test
        perf["accuracy_pvalue"] = 0.5 * math.erfc(drop / se / math.sqrt(2))
        perf["accuracy_threshold"] = max(perf["max_accuracy_drop"], z * se)
        perf["accuracy_drifted"] = drop >= perf["accuracy_threshold"]
    perf["drifted"] = bool(perf.get("accuracy_drifted")) or perf["label_mix_drifted"]


def _label_mix(keys: list[str | None], classes: list[str], ref: dict[str, Any], cfg: DriftSpec) -> dict[str, Any]:
    """The batch's class mix against the reference's: largest share change (L-inf) and a
    chi-square test of homogeneity; drifted when both pass (``max_label_rate_change``, ``alpha``)."""
    limit = cfg.performance.max_label_rate_change
    ref_counts = ref.get("label_counts")
    out: dict[str, Any] = {"max_label_rate_change": limit, "label_mix_drifted": False}
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros(len(classes) + 1, dtype="int64")  # last: a value that is not a class
    for k in keys:
        if k is not None:
            counts[index.get(k, len(classes))] += 1
    out["label_counts"] = {c: int(n) for c, n in zip(classes, counts, strict=False)}
    if not classes or not ref_counts or counts.sum() == 0:
        return out
    ref_vec = np.asarray([int(ref_counts.get(c, 0)) for c in classes] + [0], dtype="int64")
    p, q = metrics.shares(ref_vec), metrics.shares(counts)
    change = q - p
    worst = int(np.argmax(np.abs(change)))
    _, _, pvalue = metrics.chi2_homogeneity(ref_vec, counts)
    out.update(
        label_mix_change=float(abs(change[worst])),
        label_mix_class=classes[worst] if worst < len(classes) else "__other__",
        label_mix_share=float(q[worst]),
        label_mix_share_ref=float(p[worst]),
        label_mix_pvalue=pvalue,
    )
    if limit is not None:
        out["label_mix_drifted"] = out["label_mix_change"] >= limit and pvalue < cfg.alpha
    return out


def _label_mix_why(perf: dict[str, Any]) -> dict[str, Any]:
    p = perf["label_mix_pvalue"]
    return {
        "feature": LABEL_FEATURE,
        "severity": perf["label_mix_change"] / perf["max_label_rate_change"],
        "status": "drifted",
        "by": (
            f"class {perf['label_mix_class']} share {perf['label_mix_share_ref']:.3f} -> {perf['label_mix_share']:.3f}, "
            f"change {perf['label_mix_change']:.3f} >= {perf['max_label_rate_change']:g}"
            + (f" (p={p:.2g})" if p > 0 else " (p<1e-300)")
        ),
    }


# the performance rule by the reference's metric: ROC AUC (binary), accuracy (multiclass)
PERFORMANCE_RULES = {"auc": _performance, "accuracy": _performance_accuracy}
DECIDERS = {"auc": _decide_auc, "accuracy": _decide_accuracy}


def _auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's standard error of a ROC AUC estimate."""
    if positives < 1 or negatives < 1:
        return float("inf")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives
    )
    return float(max(var, 0.0) ** 0.5)
