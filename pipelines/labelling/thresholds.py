"""Per-class confidence thresholds for machine labels.

A predicted label is accepted without review only when its confidence reaches its
predicted class's threshold. The threshold of a class is the lowest confidence whose
accepted rows of the gate's held-out split (the evaluation split of the training run
behind the serving model, with its true labels, scored by the serving model) reach
the spec's ``target_precision`` on a one-sided Clopper-Pearson lower bound at
``confidence_level``: with ``k`` correct of ``m`` accepted, the bound is the
``1 - level`` quantile of ``Beta(k, m - k + 1)``. A class predicted for fewer than
``min_support`` held-out rows, or whose bound never reaches the target, gets no
threshold: its labels always go to review.

The bound, not the observed precision, is what must reach the target: a threshold
chosen where 40 of 40 held-out rows were right says little (the 95% lower bound of 40/40
is 0.928), and on new data its precision would often fall short.

Confidence: binary lines use ``max(p, 1 - p)`` and predict the positive class when
``p >= 0.5``; multi-class models give the argmax class and its probability.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.catalog import layout, records


class ThresholdError(RuntimeError):
    """Thresholds cannot be chosen (no serving model, no held-out split); says why."""


def class_names(spec) -> list[str]:
    """The label's classes as text (how labels are compared and exported)."""
    field = spec.schema.field(spec.schema.label.name)
    return [str(c) for c in field.categories or []]


def binary_predictions(scores: Any, classes: list[str], positive: str) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, confidence) of positive-class probabilities."""
    p = np.asarray(scores, dtype="float64")
    negative = next(c for c in classes if c != positive)
    predicted = np.where(p >= 0.5, positive, negative).astype(object)
    return predicted, np.maximum(p, 1.0 - p)


def predicted_labels(spec, predictions) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class as text, confidence) from what the scorer wrote
    (:func:`pipelines.monitoring.stage.model_predictions`): ``score`` of a binary
    model, ``class_id`` and ``confidence`` of a multi-class one."""
    classes = class_names(spec)
    if "score" in predictions.columns:
        return binary_predictions(predictions["score"], classes, str(spec.schema.label.positive))
    ids = predictions["class_id"].to_numpy()
    return np.asarray([classes[int(i)] for i in ids], dtype=object), predictions["confidence"].to_numpy(dtype="float64")


def lower_bound(correct: np.ndarray, accepted: np.ndarray, level: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bounds of ``correct / accepted`` at ``level``."""
    from scipy.stats import beta

    correct = np.asarray(correct, dtype="float64")
    accepted = np.asarray(accepted, dtype="float64")
    out = np.zeros_like(correct)
    some = correct > 0
    out[some] = beta.ppf(1.0 - level, correct[some], accepted[some] - correct[some] + 1.0)
    return out


def choose_thresholds(predicted: Any, confidence: Any, truth: Any, classes: list[str], *,
                      target_precision: float, confidence_level: float, min_support: int) -> dict[str, dict[str, Any]]:
    """Per predicted class: ``threshold`` (None: never accepted), ``support``,
    ``precision`` and ``precision_lower`` of the rows it accepts, ``accepted_share``."""
    predicted = np.asarray(predicted, dtype=object).astype(str)
    confidence = np.asarray(confidence, dtype="float64")
    truth = np.asarray(truth, dtype=object).astype(str)
    out: dict[str, dict[str, Any]] = {}
    for cls in classes:
        rows = predicted == cls
        support = int(rows.sum())
        entry: dict[str, Any] = {"threshold": None, "support": support, "precision": None,
                                 "precision_lower": None, "accepted_share": 0.0}
        if support < min_support:
            entry["reason"] = f"{support} held-out rows predicted {cls}, fewer than min_support {min_support}"
            out[cls] = entry
            continue
        order = np.argsort(-confidence[rows], kind="stable")
        conf = confidence[rows][order]
        right = (truth[rows][order] == cls).astype("int64")
        correct, accepted = np.cumsum(right), np.arange(1, support + 1)
        # a threshold accepts every row at or above it: only the last row of a tie counts
        last = np.r_[conf[1:] != conf[:-1], True]
        bounds = lower_bound(correct, accepted, confidence_level)
        passing = np.flatnonzero(last & (bounds >= target_precision))
        if len(passing) == 0:
            entry["reason"] = (f"no threshold reaches precision {target_precision} at {confidence_level} "
                               f"confidence on {support} held-out rows")
            out[cls] = entry
            continue
        i = int(passing[-1])  # the most rows accepted: the lowest threshold that passes
        entry.update(threshold=float(conf[i]), precision=float(correct[i] / accepted[i]),
                     precision_lower=float(bounds[i]), accepted_share=float(accepted[i] / support))
        out[cls] = entry
    return out


def accept(predicted: Any, confidence: Any, thresholds: dict[str, Any]) -> np.ndarray:
    """Which predictions pass their class's threshold (a class without one: none)."""
    predicted = np.asarray(predicted, dtype=object).astype(str)
    confidence = np.asarray(confidence, dtype="float64")
    limits = np.asarray([
        (thresholds.get(c) or {}).get("threshold") if isinstance(thresholds.get(c), dict)
        else getattr(thresholds.get(c), "threshold", None) for c in predicted
    ], dtype=object)
    known = np.asarray([v is not None for v in limits], dtype=bool)
    out = np.zeros(len(predicted), dtype=bool)
    out[known] = confidence[known] >= limits[known].astype("float64")
    return out


def serving_run(line: str, home: Path | None = None) -> tuple[str, Path, Path]:
    """(version, SavedModel folder, training run folder) of the model in serving."""
    from pipelines.monitoring.stage import serving_model

    served = serving_model(line, home)
    if served is None:
        raise ThresholdError(f"{line} has no model in serving: nothing to pre-label with")
    version, model_dir = served
    push = records.read_push_info(model_dir)
    candidates = []
    if push is not None and push.run_dir:
        candidates.append(Path(push.run_dir))
    if push is not None and push.training_run:
        candidates.append(layout.run_dir_named(line, push.training_run, home))
    run = next((c for c in candidates if layout.eval_data_path(c).is_file()), None)
    if run is None:
        raise ThresholdError(f"{line} v{version}: the held-out split of its training run is not found "
                             f"(looked in {[str(c) for c in candidates] or 'no run named by its push'})")
    return str(version), model_dir, run


def compute_thresholds(spec, *, target_precision: float | None = None, home: Path | None = None,
                       reuse: bool = True) -> records.LabelThresholds:
    """The serving model's thresholds, chosen on its training run's held-out split and
    recorded at :func:`~pipelines.catalog.layout.label_thresholds_path`. The record is
    reused while the model version and the targets are the same."""
    import pandas as pd

    from pipelines.monitoring.stage import model_predictions

    labelling = spec.labelling
    if labelling is None:
        raise ThresholdError(f"{spec.name} has no labelling section")
    target = float(target_precision if target_precision is not None else labelling.target_precision)
    version, model_dir, run = serving_run(spec.name, home)
    current = records.read_label_thresholds(spec.name, home) if reuse else None
    if (current is not None and current.model_version == version and current.target_precision == target
            and current.confidence_level == labelling.confidence_level
            and current.get("min_support") == labelling.min_support):
        return current
    eval_path = layout.eval_data_path(run)
    label = spec.schema.label.name
    truth = pd.read_parquet(eval_path, columns=[label])[label]
    predicted, confidence = predicted_labels(spec, model_predictions(model_dir, [eval_path]))
    manifest = records.read_manifest_data(run) or {}
    record = {
        "line": spec.name,
        "model_version": version,
        "target_precision": target,
        "confidence_level": labelling.confidence_level,
        "min_support": labelling.min_support,
        "classes": choose_thresholds(predicted, confidence, truth.astype(str).to_numpy(), class_names(spec),
                                     target_precision=target, confidence_level=labelling.confidence_level,
                                     min_support=labelling.min_support),
        "eval_rows": int(len(truth)),
        "run_id": manifest.get("run_id") or run.name,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    records.write_label_thresholds(spec.name, record, home)
    return records.LabelThresholds.model_validate(record)
