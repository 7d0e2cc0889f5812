"""The TFMA EvalConfig of a line, from its spec's ``evaluation:`` section (ML environment).

The candidate is evaluated as a generic TF SavedModel (``model_type: tf_generic``)
through ``serving_default`` (serialized tf.Example in, ``probabilities`` out), not as a
Keras model: TFMA then computes only the metrics asked for here, not the model's compiled
ones. The baseline (when there is one) gets the same spec; TFX's Evaluator adds it.

Where thresholds apply (decided here, not left to TFMA's defaults):

* ``thresholds`` apply to the **overall** slice only. A TFMA ``MetricConfig.threshold``
  would apply to every slice, and one small, noisy slice (a dozen positives) could then
  block a blessing by chance.
* ``slice_thresholds.thresholds`` apply to each slice value that has at least
  ``min_examples`` rows and ``min_per_class`` rows of each class in this evaluation split;
  the gate counts them before it builds the config and lists each slice as gated or not
  in its result. Smaller slices are still computed and reported, never gated.

The config is built by the line's ``task`` (:data:`BUILDERS`, keyed by task). A
multi-class line (``multiclass_classification``: ``probabilities`` [N, C], an integer
label) gets two metric specs: top-1 ``accuracy`` (Keras' SparseCategoricalAccuracy),
the example count and TFMA's ``MultiClassConfusionMatrixPlot``; and ``precision`` /
``recall`` binarized by class id (one value per class, a threshold on them holds for
every class). A slice's "smallest class" there is the rows of its least frequent class
(a slice on the label holds one class: all its rows).
"""

from __future__ import annotations

from typing import Any

from pipelines.evaluation.inputs import PREDICTION_KEY, SEP, SIGNATURE
from pipelines.specs.evaluation import (
    BINARY,
    CONFUSION_PLOT,
    METRICS,
    MULTICLASS,
    MULTICLASS_METRICS,
    PER_CLASS_METRICS,
    Bound,
    EvaluationSettings,
)

# How a slice's counts [rows, n] give the rows of its smallest class, by task: binary
# lines count positives; multi-class lines count the smallest class itself.
SMALLEST_CLASS = {
    BINARY: lambda rows, positives: min(positives, rows - positives),
    MULTICLASS: lambda rows, smallest: smallest,
}


def gated_slices(
    settings: EvaluationSettings, counts: dict[str, dict[str, list[int]]], task: str = BINARY
) -> list[dict[str, str]]:
    """The slice values held to the per-slice thresholds: feature -> value mappings."""
    st = settings.slice_thresholds
    smallest = SMALLEST_CLASS[task]
    out = []
    for s in settings.slice_features:
        for value, (rows, n) in counts.get(" x ".join(s), {}).items():
            if rows >= st.min_examples and smallest(rows, n) >= st.min_per_class:
                out.append(dict(zip(s, value.split(SEP), strict=True)))
    return out


def _threshold(tfma, bound: Bound):
    t = tfma.MetricThreshold()
    if bound.min is not None or bound.max is not None:
        v = tfma.GenericValueThreshold()
        if bound.min is not None:
            v.lower_bound.value = bound.min
        if bound.max is not None:
            v.upper_bound.value = bound.max
        t.value_threshold.CopyFrom(v)
    if bound.max_drop is not None:
        c = tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER)
        c.absolute.value = -bound.max_drop
        t.change_threshold.CopyFrom(c)
    return t


def _metric_configs(tfma, table: dict, settings: EvaluationSettings, gated: list[dict[str, str]]) -> list:
    """One MetricConfig per metric of ``table``, with the overall and per-slice thresholds."""
    metrics = []
    for name, (cls, _, _) in table.items():
        config = tfma.MetricConfig(class_name=cls)
        if name in settings.thresholds:
            config.per_slice_thresholds.append(
                tfma.PerSliceMetricThreshold(
                    slicing_specs=[tfma.SlicingSpec()], threshold=_threshold(tfma, settings.thresholds[name])
                )
            )
        bound = settings.slice_thresholds.thresholds.get(name)
        if bound is not None and gated:
            config.per_slice_thresholds.append(
                tfma.PerSliceMetricThreshold(
                    slicing_specs=[tfma.SlicingSpec(feature_values=g) for g in gated],
                    threshold=_threshold(tfma, bound),
                )
            )
        metrics.append(config)
    return metrics


def _binary_specs(tfma, settings: EvaluationSettings, gated: list[dict[str, str]], classes: list[int] | None) -> list:
    return [tfma.MetricsSpec(metrics=_metric_configs(tfma, METRICS, settings, gated))]


def _multiclass_specs(
    tfma, settings: EvaluationSettings, gated: list[dict[str, str]], classes: list[int] | None
) -> list:
    if not classes:
        raise ValueError("a multi-class evaluation needs the label's classes")
    overall = _metric_configs(tfma, MULTICLASS_METRICS, settings, gated)
    overall.append(tfma.MetricConfig(class_name=CONFUSION_PLOT[0]))
    per_class = tfma.MetricsSpec(
        metrics=_metric_configs(tfma, PER_CLASS_METRICS, settings, gated),
        binarize=tfma.BinarizationOptions(class_ids={"values": [int(c) for c in classes]}),
    )
    return [tfma.MetricsSpec(metrics=overall), per_class]


# The metric specs of each task
BUILDERS = {BINARY: _binary_specs, MULTICLASS: _multiclass_specs}


def build_eval_config(
    settings: EvaluationSettings,
    label: str,
    counts: dict[str, dict[str, list[int]]],
    task: str = BINARY,
    classes: list[int] | None = None,
) -> Any:
    """The EvalConfig of a line's gate; ``classes``: the label's class ids (multi-class)."""
    import tensorflow_model_analysis as tfma

    gated = gated_slices(settings, counts, task)
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name=SIGNATURE,
                prediction_key=PREDICTION_KEY,
                label_key=label,
                model_type="tf_generic",
            )
        ],
        metrics_specs=BUILDERS[task](tfma, settings, gated, classes),
        slicing_specs=[tfma.SlicingSpec()]
        + [tfma.SlicingSpec(feature_keys=list(s)) for s in settings.slice_features],
    )
