"""The ``evaluation:`` section of a product-line spec: what the gate measures and what
it takes to be blessed.

The spec keeps the section as a plain mapping (each stage validates its own section);
this module is that validation, importable in both environments (pydantic only)::

    evaluation:
      slices:                      # one feature per entry, or a list of features (a cross)
        - term
        - verification_status
      derived_features:            # added to the evaluation tf.Examples only; the model ignores them
        age_band: {from: AGEP, bins: [16, 25, 35, 45, 55, 65]}
      thresholds:                  # the overall slice: these decide the blessing
        auc: {min: 0.65, max_drop: 0.02}
        pr_auc: {min: 0.08}
        calibration: {min: 0.5, max: 2.0}
      slice_thresholds:            # per slice, only where a slice is more than noise
        min_examples: 300
        min_per_class: 20
        thresholds:
          auc: {min: 0.55}
      min_eval_examples: 200       # fewer held-out rows than this: refuse to evaluate

``min``/``max`` are value thresholds; ``max_drop`` is a change threshold against the
baseline (the latest blessed model): the candidate may be at most that much below it.
``max_drop`` applies to metrics where higher is better (auc, pr_auc, binary_accuracy).
A derived feature ``{from: F, bins: [b0, ..., bk]}`` is the band of numeric feature F:
``<b0``, ``[b0,b1)``, ..., ``>=bk``.

Which metrics a spec may threshold depends on the line's ``task`` (:data:`TASKS`, looked
up by the spec's value; an unknown metric for the task fails at spec load)::

    task: multiclass_classification
    evaluation:
      slices: [label]              # a slice per class (only multi-class lines slice on the label)
      thresholds:
        accuracy: {min: 0.85, max_drop: 0.01}
        precision: {min: 0.5}      # per class: every class's precision (TFMA binarizes by class id)
      slice_thresholds:
        min_examples: 500          # a class slice: its rows; min_per_class: its smallest class
        min_per_class: 500
        thresholds:
          accuracy: {min: 0.5}     # in the slice of one class, accuracy is that class's recall

``precision`` and ``recall`` are per class; ``accuracy`` is top-1 accuracy (argmax of
``probabilities``). TFMA also computes the multi-class confusion matrix
(``MultiClassConfusionMatrixPlot``) for the report; it is shown, not thresholded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

BINARY = "binary_classification"
MULTICLASS = "multiclass_classification"

# Spec metric name -> (TFMA metric class, TFMA metric name, higher is better): binary lines
METRICS: dict[str, tuple[str, str, bool | None]] = {
    "auc": ("AUC", "auc", True),
    "pr_auc": ("AUCPrecisionRecall", "auc_precision_recall", True),
    "calibration": ("Calibration", "calibration", None),
    "binary_accuracy": ("BinaryAccuracy", "binary_accuracy", True),
    "example_count": ("ExampleCount", "example_count", True),
    "mean_label": ("MeanLabel", "mean_label", None),
    "mean_prediction": ("MeanPrediction", "mean_prediction", None),
}
# Multi-class lines: overall metrics, and per-class ones (TFMA binarizes them by class id)
MULTICLASS_METRICS: dict[str, tuple[str, str, bool | None]] = {
    "accuracy": ("SparseCategoricalAccuracy", "sparse_categorical_accuracy", True),
    "example_count": ("ExampleCount", "example_count", True),
}
PER_CLASS_METRICS: dict[str, tuple[str, str, bool | None]] = {
    "precision": ("Precision", "precision", True),
    "recall": ("Recall", "recall", True),
}
# Shown in the report of a multi-class line, never thresholded
CONFUSION_PLOT = ("MultiClassConfusionMatrixPlot", "multi_class_confusion_matrix_plot")


@dataclass(frozen=True)
class TaskMetrics:
    """What the gate measures for one ``task``: the metrics a spec may threshold, which of
    them are per class, whether the label is a slice, the thresholds when a spec gives none."""

    metrics: dict[str, tuple[str, str, bool | None]]
    per_class: frozenset[str] = frozenset()
    label_sliceable: bool = False
    default_thresholds: dict[str, dict[str, float]] | None = None


TASKS: dict[str, TaskMetrics] = {
    BINARY: TaskMetrics(METRICS, default_thresholds={"auc": {"min": 0.6, "max_drop": 0.02}}),
    MULTICLASS: TaskMetrics(
        {**MULTICLASS_METRICS, **PER_CLASS_METRICS}, per_class=frozenset(PER_CLASS_METRICS), label_sliceable=True
    ),
}
TFMA_TO_SPEC = {tfma_name: name for t in TASKS.values() for name, (_, tfma_name, _) in t.metrics.items()}


def task_metrics(task: str | None) -> TaskMetrics:
    """The gate's table entry for a spec's ``task`` (a line without one: binary)."""
    try:
        return TASKS[task or BINARY]
    except KeyError:
        raise EvaluationSettingsError(
            f"no evaluation gate for task {task!r} (the gate serves: {', '.join(TASKS)})"
        ) from None


class EvaluationSettingsError(ValueError):
    """The spec's ``evaluation:`` section cannot be used; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Bound(_Strict):
    """Thresholds of one metric: value bounds and the largest drop against the baseline."""

    min: float | None = None
    max: float | None = None
    max_drop: Annotated[float, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _some(self) -> Bound:
        if self.min is None and self.max is None and self.max_drop is None:
            raise ValueError("give at least one of min, max, max_drop")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min must be <= max (got min={self.min}, max={self.max})")
        return self


def _task(info: ValidationInfo) -> str:
    return (info.context or {}).get("task") or BINARY


def _check_metrics(thresholds: dict[str, Bound], task: str = BINARY) -> None:
    known = TASKS[task].metrics
    for name, bound in thresholds.items():
        if name not in known:
            raise ValueError(
                f"thresholds.{name}: unknown metric {name!r} for task {task} (known: {', '.join(known)})"
            )
        if bound.max_drop is not None and known[name][2] is not True:
            raise ValueError(f"thresholds.{name}: max_drop only applies to metrics where higher is better")


class SliceThresholds(_Strict):
    """Per-slice gating: only slices with at least ``min_examples`` rows and ``min_per_class``
    rows of each class are held to ``thresholds``; smaller slices are reported, not gated."""

    min_examples: Annotated[int, Field(ge=1)] = 200
    min_per_class: Annotated[int, Field(ge=1)] = 20
    thresholds: dict[str, Bound] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self, info: ValidationInfo) -> SliceThresholds:
        _check_metrics(self.thresholds, _task(info))
        return self


class DerivedFeature(_Strict):
    """A band of a numeric feature, for slicing (e.g. an age band)."""

    from_: str = Field(alias="from")
    bins: Annotated[list[float], Field(min_length=1)]

    @model_validator(mode="after")
    def _sorted(self) -> DerivedFeature:
        if any(b >= a for a, b in zip(self.bins[1:], self.bins[:-1], strict=False)) or len(set(self.bins)) != len(
            self.bins
        ):
            raise ValueError("bins must be strictly increasing")
        return self

    def labels(self) -> list[str]:
        """The band names in order: ``<b0``, ``[b0,b1)``, ..., ``>=bk``."""
        b = [f"{x:g}" for x in self.bins]
        return [f"<{b[0]}"] + [f"[{lo},{hi})" for lo, hi in zip(b[:-1], b[1:], strict=True)] + [f">={b[-1]}"]


class EvaluationSettings(_Strict):
    slices: list[str | list[str]] = Field(default_factory=list)
    derived_features: dict[str, DerivedFeature] = Field(default_factory=dict)
    thresholds: dict[str, Bound] = Field(default_factory=dict)  # none given: the task's defaults
    slice_thresholds: SliceThresholds = Field(default_factory=SliceThresholds)
    min_eval_examples: Annotated[int, Field(ge=1)] = 100

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> EvaluationSettings:
        task = _task(info)
        defaults = TASKS[task].default_thresholds
        if "thresholds" not in self.model_fields_set and defaults:
            object.__setattr__(self, "thresholds", {k: Bound(**v) for k, v in defaults.items()})
        if not self.thresholds:
            raise ValueError("thresholds: at least one overall threshold is needed to bless a model")
        _check_metrics(self.thresholds, task)
        for name in self.derived_features:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"derived_features: {name!r} is not a valid feature name")
        seen = set()
        for i, s in enumerate(self.slice_features):
            if not s:
                raise ValueError(f"slices.{i}: an empty cross")
            if len(set(s)) != len(s):
                raise ValueError(f"slices.{i}: a feature appears twice in {list(s)}")
            if s in seen:
                raise ValueError(f"slices.{i}: {list(s)} is listed twice")
            seen.add(s)
        return self

    @property
    def slice_features(self) -> list[tuple[str, ...]]:
        """Each slice as a tuple of feature names (one name: a plain slice)."""
        return [(s,) if isinstance(s, str) else tuple(s) for s in self.slices]


def _format(line: str, data: Any, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in ("evaluation", *e["loc"])]
        msg = re.sub(r"^Value error, ", "", e["msg"])
        # a model-level check names its field at the start of the message: "slices.0: ..."
        m = re.match(r"^([A-Za-z_]\w*(?:\.\w+)*): (.*)$", msg, re.DOTALL)
        if m:
            loc.append(m.group(1))
            msg = m.group(2)
        lines.append(f"{line}.yaml: {'.'.join(loc)}: {msg}")
    return "invalid evaluation settings\n  " + "\n  ".join(lines)


def parse_settings(
    line: str,
    data: dict[str, Any] | None,
    fields: dict[str, str],
    not_sliceable: set[str] | frozenset = frozenset(),
    task: str | None = None,
) -> EvaluationSettings:
    """Validate a spec's ``evaluation:`` mapping against the line's fields (name -> type)
    and ``task`` (which metrics exist); ``not_sliceable``: the key and label columns."""
    task = task or BINARY
    if task not in TASKS:
        raise EvaluationSettingsError(f"{line}.yaml: task: no evaluation gate for {task!r} (it serves: {', '.join(TASKS)})")
    try:
        settings = EvaluationSettings.model_validate(data or {}, context={"task": task})
    except ValidationError as err:
        raise EvaluationSettingsError(_format(line, data, err)) from None
    problems = []
    for name, d in settings.derived_features.items():
        if name in fields:
            problems.append(f"derived_features.{name}: a field of that name already exists")
        if fields.get(d.from_) not in ("integer", "double"):
            problems.append(f"derived_features.{name}.from: {d.from_!r} is not a numeric field")
    known = set(fields) | set(settings.derived_features)
    for i, s in enumerate(settings.slice_features):
        for f in s:
            if f not in known:
                problems.append(f"slices.{i}: {f!r} is not a field or a derived feature")
            elif f in not_sliceable:
                problems.append(f"slices.{i}: {f!r} is the key or the label: not a slice")
            elif fields.get(f) == "double":
                problems.append(f"slices.{i}: {f!r} is a double: slice on a derived band of it instead")
            elif fields.get(f) == "image":
                problems.append(f"slices.{i}: {f!r} is an image: not a slice")
    if problems:
        raise EvaluationSettingsError(
            "invalid evaluation settings\n  " + "\n  ".join(f"{line}.yaml: evaluation.{p}" for p in problems)
        )
    return settings


def load_settings(spec: Any) -> EvaluationSettings:
    """The evaluation settings of a :class:`pipelines.specs.LineSpec`."""
    fields = {f.name: f.type for f in spec.schema.fields}
    task = getattr(spec, "task", None) or BINARY
    not_sliceable = set(spec.schema.key)
    if not (task in TASKS and TASKS[task].label_sliceable):
        not_sliceable.add(spec.schema.label.name)
    return parse_settings(spec.name, dict(spec.evaluation), fields, not_sliceable, task)
