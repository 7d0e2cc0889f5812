"""False alarms of each drift rule on labelled same-distribution batches of real data.

    .venv/airflow/bin/python -m bench.drift_false_alarms [--draws 1000] [--rows 1000]

The data is the 2015 employment year (68,785 people). A fixed fifth of it is set aside
to fit the scorer; then, ``--draws`` times, the other rows are split at random into a
reference half, profiled with the scorer's scores and the labels as a model's reference
would be (:func:`pipelines.monitoring.profile.build_profile`), and a pool, from which a
batch of ``--rows`` rows is drawn and scored by the monitor's own detection
(:func:`pipelines.monitoring.detection.score_batch`) with the employment line's
``drift:`` settings (AUC drop limit 0.05, at least 1,000 labelled rows). Every batch
comes from the reference's distribution, so every alarm is a false one.

Two scorers, neither a trained TensorFlow model:

- ``age``: the person's age as the score (no model at all). A weak score (AUC ~0.56), so
  a 1,000-row batch's AUC has a standard error of ~0.018;
- ``logistic regression``: scikit-learn's ``LogisticRegression`` on one-hot features,
  fitted once on the set-aside fifth (AUC ~0.88, standard error ~0.011).

Counted per scorer: batches where a feature rule, the prediction (score) rule, the
label-rate rule or the AUC rule alarms, and the batch verdict; the AUC rule also as it
was before it became a test at the family's per-test level (a drop of at least
``max(max_auc_drop, 2 * se)``, se the batch AUC's alone). Results, with the machine:
``bench/results/drift_false_alarms.json``.
"""

from __future__ import annotations

import argparse
import sys  # noqa: E402
import time
from pathlib import Path  # noqa: E402
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the clone's root first
from bench.machine import describe, host, write_results  # noqa: E402
from bench.realdata import employment_frame  # noqa: E402
from pipelines.monitoring.detection import score_batch  # noqa: E402
from pipelines.monitoring.profile import build_profile, features_from_spec  # noqa: E402
from pipelines.specs import load_spec  # noqa: E402
from pipelines.specs.drift import LABEL_FEATURE, SCORE_FEATURE  # noqa: E402

LINE, YEAR, LABEL = "employment", 2015, "employed"
RULES = ("feature", "prediction", "label_rate", "auc", "auc_before", "batch", "batch_before")


def logistic_scorer(fit_rows: pd.DataFrame, declared: list[dict[str, Any]]):
    """A scikit-learn logistic regression on one-hot features, fitted on ``fit_rows``."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f["name"] for f in declared if f["kind"] == "numeric"]
    categorical = [f["name"] for f in declared if f["kind"] == "categorical"]
    model = make_pipeline(
        ColumnTransformer([
            ("num", StandardScaler(), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]),
        LogisticRegression(max_iter=2000),
    )
    model.fit(fit_rows[numeric + categorical], fit_rows[LABEL].astype(bool))
    return lambda frame: model.predict_proba(frame[numeric + categorical])[:, 1]


def verdicts(report: dict[str, Any]) -> dict[str, bool]:
    """Which rules alarmed on one batch; ``auc_before``: the rule as it was."""
    perf = report["performance"]
    named = {d["feature"] for d in report["drifted_features"]}
    auc_before = bool(perf["tests"]) and perf["auc_drop"] >= max(perf["max_auc_drop"], 2 * perf["auc_se_batch"])
    out = {
        "feature": bool(named - {SCORE_FEATURE, LABEL_FEATURE}),
        "prediction": SCORE_FEATURE in named,
        "label_rate": bool(perf["label_rate_drifted"]),
        "auc": bool(perf.get("auc_drifted")),
        "auc_before": auc_before,
        "batch": bool(report["drifted"]),
    }
    out["batch_before"] = out["feature"] or out["prediction"] or out["label_rate"] or auc_before
    return out


def upper_95(alarms: int, draws: int) -> float:
    """One-sided 95% upper bound of a false-alarm rate (Clopper-Pearson)."""
    from scipy.stats import beta

    return 1.0 if alarms >= draws else float(beta.ppf(0.95, alarms + 1, draws - alarms))


def run(draws: int, rows: int, seed: int = 0) -> dict[str, Any]:
    spec = load_spec(LINE)
    declared = features_from_spec(spec)
    frame = employment_frame(YEAR)
    rng = np.random.default_rng(seed)
    fit = rng.permutation(len(frame)) < len(frame) // 5
    rest = frame[~fit].reset_index(drop=True)
    scorers = {
        "age": lambda f: f["AGEP"].to_numpy(dtype="float64"),
        "logistic regression": logistic_scorer(frame[fit], declared),
    }
    scores = {name: np.asarray(score(rest), dtype="float64") for name, score in scorers.items()}
    labels = rest[LABEL].to_numpy().astype(bool)
    counts = {name: dict.fromkeys(RULES, 0) for name in scorers}
    seen: dict[str, dict[str, list[float]]] = {
        name: {"auc": [], "auc_ref": [], "auc_se": [], "auc_se_batch": [], "z": [], "tests": []} for name in scorers
    }
    for draw in range(draws):
        # a fresh random split per draw, so the draws are independent
        half = rng.permutation(len(rest)) < len(rest) // 2
        pool = np.flatnonzero(~half)
        picked = rng.choice(pool, size=rows, replace=False)
        batch = rest.iloc[picked]
        for name in scorers:
            profile = build_profile(
                rest[half], declared, scores=scores[name][half], labels=labels[half], config=spec.drift, seed=draw
            )
            report = score_batch(profile, batch, scores=scores[name][picked], labels=LABEL, config=spec.drift)
            for rule, hit in verdicts(report).items():
                counts[name][rule] += hit
            perf = report["performance"]
            s = seen[name]
            s["auc"].append(perf["auc"])
            s["auc_ref"].append(perf["auc_ref"])
            s["auc_se"].append(perf["auc_se"])
            s["auc_se_batch"].append(perf["auc_se_batch"])
            s["z"].append(perf["auc_drop"] / perf["auc_se"])
            s["tests"].append(report["tests"])
    out = []
    for name in scorers:
        s = seen[name]
        out.append({
            "scorer": name,
            "draws": draws,
            "batch_rows": rows,
            "alarms": counts[name],
            "rates": {rule: counts[name][rule] / draws for rule in RULES},
            "upper_95": {rule: upper_95(counts[name][rule], draws) for rule in RULES},
            "tests_per_batch": int(np.median(s["tests"])),
            "alpha_per_test": spec.drift.alpha / int(np.median(s["tests"])),
            "auc_median": float(np.median(s["auc"])),
            "auc_ref_median": float(np.median(s["auc_ref"])),
            "auc_se_median": float(np.median(s["auc_se"])),
            "auc_se_batch_median": float(np.median(s["auc_se_batch"])),
            "auc_drop_over_se_max": float(np.max(s["z"])),
            # the AUC's test alone, without the max_auc_drop floor: how often noise passes it
            "auc_drop_over_2_se": int(np.sum(np.asarray(s["z"]) >= 2)),
            "auc_drop_over_z_per_test_se": int(np.sum(np.asarray(s["z"]) >= NormalDist().inv_cdf(
                1 - spec.drift.alpha / np.median(s["tests"])))),
        })
    return {"line": LINE, "year": YEAR, "fit_rows": int(fit.sum()), "reference_rows": int(len(rest) // 2),
            "alpha": spec.drift.alpha, "performance": spec.drift.performance.model_dump(), "scorers": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args()
    machine = host()
    print(describe(machine))
    t = time.perf_counter()
    result = run(args.draws, args.rows)
    seconds = time.perf_counter() - t
    print(f"{LINE} {YEAR}: {args.draws} same-distribution batches of {args.rows:,} rows; "
          f"reference {result['reference_rows']:,} rows; alpha {result['alpha']} family-wise")
    print(f"{'scorer':<21}{'AUC (ref)':>16}{'SE':>8}{'tests':>7}"
          + "".join(f"{r:>14}" for r in RULES))
    for r in result["scorers"]:
        print(f"{r['scorer']:<21}{r['auc_median']:>8.3f} ({r['auc_ref_median']:.3f}){r['auc_se_median']:>8.4f}"
              f"{r['tests_per_batch']:>7}" + "".join(f"{r['alarms'][k]:>8} {r['rates'][k]:>5.1%}" for k in RULES))
    print("false alarms per rule: count and rate; 'before': the AUC rule as max(max_auc_drop, 2 SE of the batch)")
    for r in result["scorers"]:
        print(f"{r['scorer']}: the AUC's test alone (no max_auc_drop floor) passes at 2 SE in "
              f"{r['auc_drop_over_2_se']} batches, at z(1 - alpha/m) SE in {r['auc_drop_over_z_per_test_se']}; "
              f"largest drop / SE {r['auc_drop_over_se_max']:.2f}")
    out = write_results("drift_false_alarms", "python -m bench.drift_false_alarms", machine, seconds, result)
    print(f"{seconds:.0f} s; results: bench/results/{out.name}")


if __name__ == "__main__":
    main()
