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
"""

from __future__ import annotations

from typing import Any

from pipelines.evaluation.inputs import PREDICTION_KEY, SEP, SIGNATURE
from pipelines.specs.evaluation import METRICS, Bound, EvaluationSettings


def gated_slices(settings: EvaluationSettings, counts: dict[str, dict[str, list[int]]]) -> list[dict[str, str]]:
    """The slice values held to the per-slice thresholds: feature -> value mappings."""
    st = settings.slice_thresholds
    out = []
    for s in settings.slice_features:
        for value, (rows, positives) in counts.get(" x ".join(s), {}).items():
            if rows >= st.min_examples and min(positives, rows - positives) >= st.min_per_class:
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


def build_eval_config(settings: EvaluationSettings, label: str, counts: dict[str, dict[str, list[int]]]) -> Any:
    import tensorflow_model_analysis as tfma

    gated = gated_slices(settings, counts)
    metrics = []
    for name, (cls, _, _) in METRICS.items():
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
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name=SIGNATURE,
                prediction_key=PREDICTION_KEY,
                label_key=label,
                model_type="tf_generic",
            )
        ],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
        slicing_specs=[tfma.SlicingSpec()]
        + [tfma.SlicingSpec(feature_keys=list(s)) for s in settings.slice_features],
    )
