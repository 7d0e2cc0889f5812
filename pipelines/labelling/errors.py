"""Label errors in a training run's train split, found by confident learning.

A fast scikit-learn model is fitted ``folds`` times (stratified, seeded folds), each time
predicting the fold it did not see, so every train row gets class probabilities from a
model that never saw its label. cleanlab's ``find_label_issues`` then estimates, per pair
of classes, how many rows given one label belong to the other (the confident joint) and
flags the rows whose given label is least supported (``prune_by_noise_rate``). Each
row's score is the out-of-fold probability of its given label (cleanlab's
``self_confidence`` label quality: 0 to 1, lower is more suspect); the suggested label is
the class the out-of-fold model finds most likely.

The model reads the features as the training's manifest describes them (the ``features``
list :mod:`pipelines.training.prepare` builds): categoricals one-hot over the manifest's
categories (a value outside them: all zeros), numerics standardised by the manifest's
train mean and standard deviation, after ``log1p`` where the entry says ``log``; a
missing numeric is the mean (0 after standardising).

Which model: measured on real slices with 5% of the labels flipped at random (seeded),
5 folds (``bench/label_errors_bench.py``, results in
``bench/results/label_errors.json``)::

    slice (train rows)              model                   precision  recall  seconds
    credit_risk, all (6,427)        logistic regression     0.62       0.70     2.4
    credit_risk, all (6,427)        hist gradient boosting  0.53       0.71     2.4
    employment 2015 (48,199)        logistic regression     0.23       0.72    24
    employment 2015 (48,199)        hist gradient boosting  0.25       0.75    75

(2 shared cores.) Both find about the same share of the flipped labels; logistic
regression is more precise on credit_risk and three times faster on the larger slice, so
it is the detector's model. On employment both are far less precise: besides the flipped
rows they flag thousands whose given label the features do not support either way (the
line's own ambiguous rows), which is what a report is for and why ``exclude`` is a
choice a line makes, not the default.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines.catalog.records import MAX_LABEL_ERROR_ROWS, LabelErrorReport, LabelErrorRow

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from pipelines.specs import LineSpec

SEED = 20261123
METHOD = "cleanlab.find_label_issues (confident learning, prune_by_noise_rate; score: self_confidence)"
MODEL = "logistic regression (lbfgs, C=1.0), one-hot categoricals, standardised numerics; out-of-fold"


def encode(frame: pd.DataFrame, features: list[dict[str, Any]]) -> np.ndarray:
    """The feature matrix the detector's model reads (see the module's text)."""
    import numpy as np

    columns = []
    for f in features:
        values = frame[f["name"]]
        if f["kind"] == "categorical":
            categories = f.get("categories") or sorted({str(v) for v in values.dropna()})
            text = values.astype(str).to_numpy()
            columns.append(np.stack([text == str(c) for c in categories], axis=1).astype("float64"))
        else:
            x = values.astype("float64").to_numpy()
            if f.get("log"):
                x = np.log1p(np.clip(x, 0, None))
            mean = f.get("mean") if f.get("mean") is not None else float(np.nanmean(x))
            std = f.get("std") or 1.0
            x = (x - mean) / std
            columns.append(np.nan_to_num(x, nan=0.0).reshape(-1, 1))
    return np.concatenate(columns, axis=1) if columns else np.zeros((len(frame), 0))


def class_names(spec: LineSpec) -> list[str]:
    """The label's classes by code: a binary line's rows carry 0/1 (1: the positive class)."""
    label = spec.schema.field(spec.schema.label.name)
    categories = [str(c) for c in label.categories or []]
    if spec.task == "binary_classification":
        positive = str(spec.schema.label.positive)
        negative = next((c for c in categories if c != positive), "0")
        return [negative, positive]
    return categories


def out_of_fold_probabilities(x: np.ndarray, labels: np.ndarray, classes: int, folds: int) -> np.ndarray:
    """Each row's class probabilities from the model fitted on the other folds."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(labels), classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=SEED)
    for fit, held in splitter.split(x, labels):
        model = LogisticRegression(C=1.0, max_iter=500)
        model.fit(x[fit], labels[fit])
        probs[np.ix_(held, model.classes_)] = model.predict_proba(x[held])
    return probs


def detect_label_errors(
    spec: LineSpec, train: pd.DataFrame, features: list[dict[str, Any]], *, batch_of: pd.Series,
    run_id: str | None = None,
) -> LabelErrorReport:
    """Suspected label errors among ``train``'s rows (labels as the train split holds them:
    a binary line's 0/1, a class index otherwise); ``batch_of``: each row's batch id, on
    ``train``'s index. The report's ``suspects`` are the index labels of every suspected
    row (what mode ``exclude`` drops); its ``rows`` list the worst first."""
    import numpy as np
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    settings = spec.labelling.label_errors
    label = spec.schema.label.name
    names = class_names(spec)
    report = dict(line=spec.name, run_id=run_id, mode=settings.mode, method=METHOD, model=MODEL,
                  folds=settings.folds, rows_checked=0, found=0, excluded=0,
                  at=datetime.now(UTC).isoformat(timespec="seconds"), by_batch={}, rows=[])

    checked = train
    if len(checked) > settings.max_rows:
        pick = np.sort(np.random.default_rng(SEED).choice(len(checked), settings.max_rows, replace=False))
        checked = checked.iloc[pick]
    labels = checked[label].to_numpy().astype("int64")
    counts = np.bincount(labels, minlength=len(names))
    folds = min(settings.folds, int(counts[counts > 0].min()) if len(labels) else 0)
    if len(labels) == 0 or (counts > 0).sum() < 2 or folds < 2:
        return LabelErrorReport(**report)  # one class, or too few rows of one: nothing to learn from
    report["folds"] = folds

    started = time.perf_counter()
    probs = out_of_fold_probabilities(encode(checked, features), labels, len(names), folds)
    # n_jobs=1: by default cleanlab prunes with a multiprocessing.Pool per core, started by
    # fork on Linux; forking the Airflow task process (its heartbeat and log threads, the
    # Spark gateway's) can leave a child blocked on a lock no thread will release, and the
    # training hangs. The pruning is a per-class pass over the probabilities: serial is quick.
    issues = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    scores = get_label_quality_scores(labels, probs, method="self_confidence")
    suggested = probs.argmax(axis=1)
    found = np.flatnonzero(issues)
    found = found[np.argsort(scores[found], kind="stable")]  # worst first

    key = list(spec.schema.key)
    batches = batch_of.reindex(checked.index).astype(object).where(batch_of.reindex(checked.index).notna(), None)
    suspects = checked.index[found]
    by_batch: dict[str, int] = {}
    for b in batches.iloc[found]:
        by_batch[str(b)] = by_batch.get(str(b), 0) + 1
    rows = []
    keys = checked[key].iloc[found[:MAX_LABEL_ERROR_ROWS]]
    for pos, (_, key_row) in zip(found[:MAX_LABEL_ERROR_ROWS], keys.iterrows(), strict=True):
        rows.append(LabelErrorRow(
            batch_id=None if batches.iloc[pos] is None else str(batches.iloc[pos]),
            key={k: _plain(v) for k, v in key_row.items()},
            given=names[labels[pos]], suggested=names[suggested[pos]], score=round(float(scores[pos]), 6),
        ))
    report.update(rows_checked=len(labels), found=len(found),
                  excluded=len(found) if settings.mode == "exclude" else 0, by_batch=by_batch, rows=rows,
                  seconds=round(time.perf_counter() - started, 2))
    out = LabelErrorReport(**report)
    out._suspects = list(suspects)
    return out


def _plain(value: Any) -> Any:
    """A key value as JSON has it (numpy scalars to Python's)."""
    return value.item() if hasattr(value, "item") else value
