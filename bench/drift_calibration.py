"""False-alarm check of the drift rule on real data: batches from the SAME distribution.

    .venv/airflow/bin/python bench/drift_calibration.py [--draws 100]

For each line and batch size, ``--draws`` times: the real data is split at random into a
reference half (profiled as a model's training data would be) and a pool, and a batch of
that size is drawn from the pool (without replacement) and scored with the default
``drift:`` settings. A drifted batch here is a false alarm. Also counted, per batch: a
feature over an effect threshold (what a PSI-only rule would alarm on) and a feature
with a p-value under alpha/m (what a test-only rule would alarm on). Results:
``bench/results/drift_calibration.json``.
"""

from __future__ import annotations

import argparse
import json
import sys  # noqa: E402
import time
from pathlib import Path  # noqa: E402

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the clone's root first
from bench.realdata import employment_frame, lending_club_frame  # noqa: E402
from pipelines.config import REPO_ROOT  # noqa: E402
from pipelines.monitoring.detection import score_batch  # noqa: E402
from pipelines.monitoring.profile import build_profile, features_from_spec  # noqa: E402
from pipelines.specs import load_spec  # noqa: E402

SIZES = {"employment": (20, 100, 1000, 10_000, 34_000), "credit_risk": (20, 100, 500, 2_000, 4_900)}


def calibrate(line: str, frame: pd.DataFrame, draws: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    declared = features_from_spec(load_spec(line))
    rows = []
    for size in SIZES[line]:
        alarms = effect_any = significant_any = 0
        max_psi = []
        for draw in range(draws):
            # a fresh random split per draw, so the draws are independent
            half = rng.permutation(len(frame)) < len(frame) // 2
            profile = build_profile(frame[half], declared, seed=draw)
            pool = frame[~half]
            batch = pool.iloc[rng.choice(len(pool), size=min(size, len(pool)), replace=False)]
            report = score_batch(profile, batch)
            findings = [f for f in report["features"].values() if f["status"] == "ok"]
            alarms += report["drifted"]
            effect_any += any(f["effect"] for f in findings)
            significant_any += any(f["significant"] for f in findings)
            max_psi.append(max(f["metrics"]["psi"]["value"] for f in findings))
        rows.append({
            "line": line,
            "batch_rows": size,
            "draws": draws,
            "false_alarms": alarms,
            "batches_with_an_effect_over_threshold": effect_any,
            "batches_with_a_significant_test": significant_any,
            "max_psi_median": float(np.median(max_psi)),
            "max_psi_p95": float(np.quantile(max_psi, 0.95)),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=100)
    args = parser.parse_args()
    t = time.perf_counter()
    emp = employment_frame()
    rows = calibrate("employment", emp[emp["year"] == 2016].reset_index(drop=True), args.draws)
    rows += calibrate("credit_risk", lending_club_frame(), args.draws)
    print(f"{'line':<12}{'rows':>8}{'draws':>7}{'false alarms':>14}{'effect only':>13}{'test only':>11}"
          f"{'max PSI median':>16}{'p95':>8}")
    for r in rows:
        print(f"{r['line']:<12}{r['batch_rows']:>8,}{r['draws']:>7}{r['false_alarms']:>14}"
              f"{r['batches_with_an_effect_over_threshold']:>13}{r['batches_with_a_significant_test']:>11}"
              f"{r['max_psi_median']:>16.4f}{r['max_psi_p95']:>8.4f}")
    out = REPO_ROOT / "bench" / "results" / "drift_calibration.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "seconds": time.perf_counter() - t}, indent=1))
    print(f"{time.perf_counter() - t:.0f} s; results: {out}")


if __name__ == "__main__":
    main()
