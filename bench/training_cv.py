"""K-fold check of the tuning candidates: is the factory model really below logistic regression?

    .venv/airflow/bin/python bench/training_cv.py [--line credit_risk] [--folds 4] [--settings 0,1,2]

``bench/training_bench.py`` compares models on the one held-out eval split the training stage
makes, and picks tuning candidates on its validation split. On credit_risk those are ~2,400 and
~1,000 rows with ~130 and ~50 bad loans: one split cannot separate settings that differ by 0.01
AUC. This check rotates the split: fold k is ``prepare_run`` itself with the stage's hash buckets
shifted by ``k * 100 / folds`` (so each row is in the eval split of exactly one fold; validation
and train follow the spec's percentages), and on every fold it trains the spec's model and each
candidate from ``training_bench.TRIALS`` (2 Horovod workers, the factory's worker), plus the
logistic regression and LightGBM of the benchmark. Reported: each model's eval AUC per fold, the
mean, and the mean paired difference to logistic regression with its standard error over folds.

Writes ``bench/results/training_cv.json``. About 20 s per factory run on 2 busy cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import training_bench as tb


def render(report: dict[str, Any]) -> None:
    mc = report["machine"]
    print(
        f"{tb.describe(mc)}; load average at end {mc['loadavg_end']}; total {report['total_s']:.0f} s"
    )
    print(
        f"{report['line']}: eval AUC over {report['folds']} rotated splits (fold 0: the stage's own), one run per split"
    )
    print(f"{'model':<62}{'mean':>7}{'-LR':>8}{'+-se':>7}{'-spec':>8}{'+-se':>7}  folds")
    for s in report["summary"]:
        name = s["model"]
        if name == "factory":
            name += " " + (json.dumps(s["changes"], separators=(",", ":")) if s["changes"] else "(spec)")
        se = f"{s['minus_logreg_se']:.4f}" if s.get("minus_logreg_se") else "-"
        ds = f"{s['minus_spec_mean']:+.4f}" if s.get("minus_spec_se") else "-"
        dse = f"{s['minus_spec_se']:.4f}" if s.get("minus_spec_se") else "-"
        print(
            f"{name[:61]:<62}{s['eval_auc_mean']:>7.4f}{s['minus_logreg_mean']:>+8.4f}{se:>7}{ds:>8}{dse:>7}  "
            + " ".join(f"{a:.3f}" for a in s["eval_auc_folds"])
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--line", default="credit_risk")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--settings", default="", help="indices into training_bench.TRIALS[line] (default: all)")
    ap.add_argument("--out", type=Path, default=tb.RESULTS / "training_cv.json")
    ap.add_argument("--render", type=Path, help="only print the tables of a saved result")
    args = ap.parse_args()
    if args.render:
        render(json.loads(args.render.read_text()))
        return 0

    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    import pipelines.training.prepare as prep
    from bench.realdata import CREDIT_RISK_SLICES, lending_club_frame, make_validated_batch

    trials = tb.TRIALS[args.line]
    if args.settings:
        trials = [trials[int(i)] for i in args.settings.split(",")]
    settings = [{}] + trials
    work = Path(tempfile.mkdtemp(prefix="training-cv-"))
    report: dict[str, Any] = {
        "machine": tb.machine(),
        "line": args.line,
        "folds": args.folds,
        "settings": settings,
    }
    try:
        home = work / "home"
        if args.line == "credit_risk":
            for i in range(1, CREDIT_RISK_SLICES + 1):
                make_validated_batch(home, "credit_risk", f"slice{i}", lending_club_frame(i))
        else:
            tb.write_batches(home)
        original = prep.split_bucket
        folds = []
        for k in range(args.folds):
            shift = k * 100 // args.folds
            prep.split_bucket = lambda keys, s=shift: (original(keys) - s) % 100  # noqa: B023
            run = work / f"fold-{k}"
            try:
                manifest = prep.prepare_run(args.line, run, None, home=home)
            finally:
                prep.split_bucket = original
            split = tb.read_split(run)
            base = tb.baselines(run, split)
            y = split["eval"][manifest["label"]["name"]].to_numpy()
            fold = {"fold": k, "rows": manifest["rows"], "eval_positives": int(y.sum()), "runs": []}
            for i, changes in enumerate(settings):
                tdir = work / f"fold-{k}-s{i}"
                r = tb.run_trial(run, tdir, split["train"], changes, manifest["params"]["workers"])
                r.update(setting=i, dir=str(tdir))
                fold["runs"].append(r)
                tb.log(
                    f"fold {k}: {changes or '(spec)'}: val {r['val_auc']:.4f}, best epoch {r['best_epoch']}"
                )
            tb.score_models(
                [
                    (
                        Path(r["dir"]) / "model" / "Format-Serving",
                        run / "data" / "eval.parquet",
                        Path(r["dir"]) / "s.pq",
                    )
                    for r in fold["runs"]
                ]
            )
            for r in fold["runs"]:
                r["eval_auc"] = float(roc_auc_score(y, pd.read_parquet(Path(r["dir"]) / "s.pq")["score"]))
                r.pop("dir")
            fold["logreg"] = base["logreg"]["auc"]
            fold["lightgbm"] = base["lightgbm"]["auc"]
            fold["lightgbm_settings"] = base["lightgbm"]["settings"]
            tb.log(
                f"fold {k}: eval AUC LR {fold['logreg']:.4f} LGBM {fold['lightgbm']:.4f} factory "
                + " ".join(f"{r['eval_auc']:.4f}" for r in fold["runs"])
            )
            folds.append(fold)
        report["per_fold"] = folds
        summary = []
        lr = np.array([f["logreg"] for f in folds])
        spec = np.array([f["runs"][0]["eval_auc"] for f in folds])
        for i, changes in enumerate(settings):
            auc = np.array([f["runs"][i]["eval_auc"] for f in folds])
            d = auc - lr
            ds = auc - spec
            summary.append(
                {
                    "model": "factory",
                    "changes": changes,
                    "eval_auc_mean": float(auc.mean()),
                    "eval_auc_folds": [round(a, 4) for a in auc],
                    "minus_logreg_mean": float(d.mean()),
                    "minus_logreg_se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None,
                    "minus_spec_mean": float(ds.mean()),
                    "minus_spec_se": float(ds.std(ddof=1) / np.sqrt(len(ds))) if len(ds) > 1 and i else None,
                    "best_epochs": [f["runs"][i]["best_epoch"] for f in folds],
                }
            )
        for name in ("logreg", "lightgbm"):
            auc = np.array([f[name] for f in folds])
            summary.append(
                {
                    "model": name,
                    "eval_auc_mean": float(auc.mean()),
                    "eval_auc_folds": [round(a, 4) for a in auc],
                    "minus_logreg_mean": float((auc - lr).mean()),
                    "minus_logreg_se": float((auc - lr).std(ddof=1) / np.sqrt(len(lr)))
                    if len(lr) > 1
                    else None,
                }
            )
        report["summary"] = summary
    finally:
        report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        report["total_s"] = round(time.perf_counter() - tb.T0, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
        shutil.rmtree(work, ignore_errors=True)

    render(report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
