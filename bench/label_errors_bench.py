"""Label-error detection: which out-of-fold model finds flipped labels, and how fast.

    .venv/airflow/bin/python bench/label_errors_bench.py [--rate 0.05] [--folds 5]

Real rows (``bench/realdata.py``) go through the training stage's own preparation (validated
batches in a temporary ``FACTORY_HOME``, the tabular preparer's train split and feature
list); a seeded ``--rate`` of the train labels is flipped; the detector
(:mod:`pipelines.labelling.errors`: its encoding, stratified seeded folds, cleanlab's
``find_label_issues``) runs with each candidate model. Precision: flipped rows among those
found; recall: found rows among those flipped. Prints the table; writes
``bench/results/label_errors.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _models():
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    return {
        "logistic regression": lambda: LogisticRegression(C=1.0, max_iter=500),
        "hist gradient boosting": lambda: HistGradientBoostingClassifier(max_iter=100, random_state=0),
    }


def train_split(line: str, frames: dict, home: Path):
    """The train split and feature list the training stage would prepare from ``frames``."""
    from bench.realdata import make_validated_batch
    from pipelines.catalog import ledger
    from pipelines.catalog.layout import line_paths
    from pipelines.specs import load_spec
    from pipelines.training.prepare import PREPARERS

    spec = load_spec(line)
    for batch_id, frame in frames.items():
        make_validated_batch(home, line, batch_id, frame)
    records = [r for r in ledger.all_records(line_paths(line, home)) if r.get("status") == ledger.VALIDATED]
    prepared = PREPARERS["tabular"](spec, records)
    return spec, prepared.parts["train"].reset_index(drop=True), prepared.sections["features"]


def flip(labels, rate: float, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(labels), round(rate * len(labels)), replace=False))
    noisy = labels.copy()
    noisy[flipped] = 1 - noisy[flipped]
    return noisy, flipped


def run(model_factory, x, noisy, folds: int):
    import numpy as np
    from cleanlab.filter import find_label_issues
    from sklearn.model_selection import StratifiedKFold

    from pipelines.labelling.errors import SEED

    probs = np.zeros((len(noisy), 2))
    for fit, held in StratifiedKFold(n_splits=folds, shuffle=True, random_state=SEED).split(x, noisy):
        model = model_factory()
        model.fit(x[fit], noisy[fit])
        probs[held] = model.predict_proba(x[held])
    return np.flatnonzero(find_label_issues(noisy, probs, filter_by="prune_by_noise_rate"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()

    from bench.realdata import employment_frame, lending_club_frame
    from pipelines.labelling.errors import encode

    slices = {
        "credit_risk, all": ("credit_risk", lambda: {"all": lending_club_frame()}),
        "employment 2015": ("employment", lambda: {"2015": employment_frame(2015)}),
    }
    results = []
    for name, (line, frames) in slices.items():
        with tempfile.TemporaryDirectory() as tmp:
            spec, train, features = train_split(line, frames(), Path(tmp))
        labels = train[spec.schema.label.name].to_numpy().astype("int64")
        noisy, flipped = flip(labels, args.rate, seed=7)
        x = encode(train, features)
        for model_name, factory in _models().items():
            start = time.perf_counter()
            found = run(factory, x, noisy, args.folds)
            seconds = time.perf_counter() - start
            hits = len(set(found) & set(flipped))
            row = {"slice": name, "train_rows": len(train), "model": model_name, "flipped": len(flipped),
                   "found": len(found), "precision": round(hits / max(len(found), 1), 3),
                   "recall": round(hits / len(flipped), 3), "seconds": round(seconds, 1)}
            results.append(row)
            print(f"{name:20} {len(train):>7,} {model_name:24} precision {row['precision']:.2f} "
                  f"recall {row['recall']:.2f} found {len(found):>5} {seconds:6.1f} s", flush=True)
    out = ROOT / "bench" / "results" / "label_errors.json"
    out.write_text(json.dumps({"rate": args.rate, "folds": args.folds, "cpus": os.cpu_count(),
                               "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
