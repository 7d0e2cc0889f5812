"""The gate's Evaluator: TFX's ``Evaluator`` component with a batched, vectorised executor
(ML environment).

:class:`FastEvaluator` is the stock ``tfx.components.Evaluator`` (same spec: ``examples``,
``model``, ``baseline_model``, ``eval_config`` in; ``evaluation`` (ModelEvaluation) and
``blessing`` (ModelBlessing) out, same lineage in ML Metadata) whose executor,
:class:`FastEvaluatorExecutor`, computes what TFMA would compute without TFMA's
per-example Python work:

* the examples are read once (gzipped TFRecords of the Examples artifact's split) and
  decoded into Arrow by tfx-bsl's C++ coder, for the label and the slicing columns;
* each model (candidate and baseline) answers ``serving_default`` on the serialized
  examples in a few large batches;
* each slice of the EvalConfig's ``slicing_specs`` (Overall, one feature, a cross of
  features) gets its metrics from numpy arrays: counts and sums for ``example_count``,
  ``mean_label``, ``mean_prediction``, ``calibration`` and ``binary_accuracy`` (a
  prediction above 0.5 is positive); ``auc`` and ``auc_precision_recall`` from the
  10,000-bucket calibration histogram TFMA builds, rebinned to TFMA's 10,000 AUC
  thresholds and cumulated into confusion matrices with ``numpy.bincount`` /
  ``cumsum`` (integer counts, so exactly TFMA's matrices), the areas by TFMA's own
  ``AUC`` summation;
* the metric keys are TFMA's (from the EvalConfig, as ``metric_specs.to_computations``
  names them), the baseline's values and the candidate-minus-baseline diffs as TFMA
  adds them; the thresholds are checked by TFMA's ``metrics_validator`` and combined
  as TFMA's writer combines them;
* the output is TFMA's: ``metrics-*``, ``plots-*``, ``attributions-*``,
  ``validations.tfrecord`` and ``eval_config.json`` under the ModelEvaluation's URI,
  protos made by TFMA's writer helpers, so ``tfma.load_metrics`` /
  ``tfma.load_validation_result`` (and :mod:`pipelines.evaluation.gate`) read it
  unchanged; the ModelBlessing gets the ``BLESSED`` / ``NOT_BLESSED`` file and the
  ``blessed``, ``current_model*``, ``baseline_model*`` properties TFX's executor sets.

What it does not compute it hands to the stock executor (TFMA on Beam), whole: any metric
outside :data:`METRICS` (e.g. the multi-class line's per-class precision/recall and its
confusion-matrix plot), binarized or weighted metrics, ``feature_values`` /
SQL / cross-slice specs, a model whose ``probabilities`` are not one column, a slice
column holding several values in one example. :func:`supported` says which.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from tfx import types
from tfx.components.evaluator import component as evaluator_component
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_component_specs

# The metric names this executor computes (TFMA's names)
METRICS = frozenset({
    "example_count", "auc", "auc_precision_recall", "calibration", "binary_accuracy", "mean_label",
    "mean_prediction",
})
BATCH = 65536  # examples per serving_default call
NUM_BUCKETS = 10000  # TFMA's calibration histogram (and AUC's num_thresholds)
ACCURACY_THRESHOLD = 0.5  # TFMA's BinaryAccuracy default


class Unsupported(Exception):
    """The EvalConfig asks for something this executor does not compute (message says what)."""


# --------------------------------------------------------------------------- the plan


def _public_keys(eval_config) -> list:
    """The metric keys TFMA would write for ``eval_config`` (private inputs left out)."""
    from tensorflow_model_analysis.metrics import metric_specs

    keys = []
    for computation in metric_specs.to_computations(eval_config.metrics_specs, eval_config=eval_config):
        for key in computation.keys:
            if not key.name.startswith("_") and key not in keys:
                keys.append(key)
    return keys


def supported(eval_config) -> list:
    """The metric keys to compute; raises :class:`Unsupported` for anything else."""
    if len(eval_config.model_specs) > 2:
        raise Unsupported("more than two models")
    for spec in eval_config.model_specs:
        if spec.example_weight_key or spec.example_weight_keys or spec.label_keys or spec.prediction_keys:
            raise Unsupported(f"model spec {spec.name!r}: weights or multiple outputs")
        if not spec.label_key or not spec.prediction_key:
            raise Unsupported(f"model spec {spec.name!r}: no label_key / prediction_key")
    if eval_config.cross_slicing_specs:
        raise Unsupported("cross-slicing specs")
    for s in eval_config.slicing_specs:
        if s.feature_values or s.slice_keys_sql:
            raise Unsupported("a slicing spec with feature_values or SQL")
    for ms in eval_config.metrics_specs:
        if ms.HasField("binarize") or ms.HasField("aggregate") or ms.output_names or ms.query_key:
            raise Unsupported("binarized, aggregated, multi-output or query metrics")
    keys = _public_keys(eval_config)
    for key in keys:
        if key.name not in METRICS or key.sub_key or key.output_name or key.aggregation_type or key.is_diff:
            raise Unsupported(f"metric {key.name!r} ({key})")
    return keys


# --------------------------------------------------------------------------- the work


def read_examples(file_pattern: str) -> list[bytes]:
    """The serialized tf.Examples of a split (gzipped TFRecords, as ImportExampleGen writes them)."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise ValueError(f"no examples at {file_pattern}")
    records: list[bytes] = []
    for path in files:
        for batch in tf.data.TFRecordDataset(path, compression_type="GZIP").batch(65536):
            records.extend(batch.numpy().tolist())
    return records


def _schema(records: list[bytes], names: set[str]) -> bytes:
    """A serialized TFMD schema of just ``names`` (typed as the examples hold them), so the
    decoder decodes those columns only."""
    from tensorflow.core.example import example_pb2
    from tensorflow_metadata.proto.v0 import schema_pb2

    kinds = {"bytes_list": schema_pb2.BYTES, "int64_list": schema_pb2.INT, "float_list": schema_pb2.FLOAT}
    found: dict[str, int] = {}
    for record in records:
        features = example_pb2.Example.FromString(record).features.feature
        for name in names - set(found):
            if name in features and features[name].WhichOneof("kind"):
                found[name] = kinds[features[name].WhichOneof("kind")]
        if len(found) == len(names):
            break
    missing = sorted(names - set(found))
    if missing:
        raise ValueError(f"feature(s) {missing} are in no example")
    return schema_pb2.Schema(feature=[schema_pb2.Feature(name=n, type=t) for n, t in sorted(found.items())]
                             ).SerializeToString()


def _columns(records: list[bytes], names: set[str]) -> dict[str, Any]:
    """The named features, one value per example (None where absent), from tfx-bsl's coder."""
    import numpy as np
    import pyarrow as pa
    from tfx_bsl.coders import example_coder

    batch = example_coder.ExamplesToRecordBatchDecoder(_schema(records, names)).DecodeBatch(records)
    out = {}
    for name in names:
        i = batch.schema.get_field_index(name)
        if i < 0:
            raise ValueError(f"feature {name!r} is in no example")
        column = batch.column(i)
        lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
        if (lengths > 1).any():
            raise Unsupported(f"feature {name!r} holds several values in an example")
        values = column.flatten()
        if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
            try:  # TFMA's slicer keys a bytes value by its text
                flat = np.asarray([v.decode() for v in values.to_pylist()], dtype=object)
            except UnicodeDecodeError:
                raise Unsupported(f"feature {name!r} holds non-UTF-8 bytes") from None
        else:
            flat = values.to_numpy(zero_copy_only=False)
        full = np.full(len(records), None, dtype=object)
        full[lengths == 1] = flat.tolist() if flat.dtype == object else flat.astype(object)
        out[name] = full
    return out


def predict(model_path: str, records: list[bytes], signature: str, output: str):
    """One model's predictions (float64, one per example) through ``signature``."""
    import numpy as np
    import tensorflow as tf

    serve = tf.saved_model.load(model_path).signatures[signature]
    input_name = list(serve.structured_input_signature[1])[0]
    parts = []
    for i in range(0, len(records), BATCH):
        out = serve(**{input_name: tf.constant(records[i:i + BATCH])})[output].numpy()
        if out.ndim == 2 and out.shape[1] != 1 or out.ndim > 2:
            raise Unsupported(f"{output!r} has shape {list(out.shape)}: not one probability per example")
        parts.append(out.reshape(-1))
    return np.concatenate(parts).astype("float64")


def slices(eval_config, columns: dict[str, Any], n: int) -> list[tuple[tuple, Any]]:
    """(TFMA slice key, row indices) of every slice of the config's slicing specs."""
    import numpy as np
    import pandas as pd

    out: list[tuple[tuple, Any]] = []
    for spec in eval_config.slicing_specs:
        features = sorted(spec.feature_keys)
        if not features:
            out.append(((), np.arange(n)))
            continue
        frame = pd.DataFrame({f: columns[f] for f in features})
        for value, idx in frame.groupby(features, dropna=True, sort=True).indices.items():
            value = value if isinstance(value, tuple) else (value,)
            out.append((tuple(zip(features, value, strict=True)), np.asarray(idx)))
    return out


def bucket_ids(p):
    """TFMA's calibration-histogram bucket of each prediction: 0 below 0, 1..10,000 for
    [0, 1), 10,001 from 1 up (``CalibrationHistogramCombiner._bucket_index``)."""
    import numpy as np

    index = p * NUM_BUCKETS + 1.0
    return np.where(index < 0, 0, np.where(index >= NUM_BUCKETS + 1, NUM_BUCKETS + 1, index)).astype("int64")


@functools.lru_cache(maxsize=1)
def _thresholds():
    """TFMA's AUC thresholds and, per histogram bucket, the threshold interval
    ``calibration_histogram.rebin`` puts it in (as ``binary_confusion_matrices`` calls it)."""
    import numpy as np
    from tensorflow_model_analysis.metrics import binary_confusion_matrices as bcm

    thresholds = bcm._interpolated_thresholds(NUM_BUCKETS)  # noqa: SLF001 - TFMA's own thresholds
    eps = bcm._EPSILON  # noqa: SLF001
    rebin = np.asarray([t + eps if t != 0 else t for t in thresholds])
    ids = np.arange(NUM_BUCKETS + 2)
    with np.errstate(invalid="ignore"):
        start = np.where(ids == 0, -np.inf, np.where(ids >= NUM_BUCKETS + 1, np.inf, (ids - 1) / NUM_BUCKETS * 1.0 + 0.0))
    return thresholds, np.searchsorted(rebin[1:], start, side="right")


def matrices(y, buckets):
    """TFMA's binary confusion matrices at its 10,000 default thresholds (what AUC and PR AUC
    read), from the slice's labels and histogram buckets: the rebinned histogram's
    positives and negatives, cumulated (integer counts: exact)."""
    import numpy as np
    from tensorflow_model_analysis.metrics import binary_confusion_matrices as bcm

    thresholds, interval = _thresholds()
    n = len(thresholds)
    at = interval[buckets]
    pos = np.bincount(at, weights=y, minlength=n)
    neg = np.bincount(at, minlength=n) - pos
    tp = np.cumsum(pos[::-1])[::-1]
    fp = np.cumsum(neg[::-1])[::-1]
    fn = np.concatenate([[0.0], np.cumsum(pos)[:-1]])
    tn = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    last = np.asarray(thresholds) >= 1.0 + bcm._EPSILON  # noqa: SLF001
    fn[last], tn[last] = tp[0], fp[0]
    tp[last], fp[last] = 0.0, 0.0
    return bcm.Matrices(thresholds, tp.tolist(), tn.tolist(), fp.tolist(), fn.tolist())


def metric_values(y, p, buckets) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one model on one slice, as TFMA computes it."""
    import numpy as np
    from tensorflow_model_analysis.metrics import confusion_matrix_metrics as cmm

    n = float(len(y))
    labels, predictions = float(y.sum()), float(p.sum())
    positive = p > ACCURACY_THRESHOLD
    correct = float(np.count_nonzero(positive == (y > 0.5)))
    m = matrices(y, buckets)
    auc = cmm.AUC()
    nan = float("nan")
    return {
        "example_count": n,
        "mean_label": labels / n if n else nan,
        "mean_prediction": predictions / n if n else nan,
        "calibration": nan if np.isclose(labels, 0.0) else predictions / labels,
        "binary_accuracy": correct / n if n > 0 else nan,
        "auc": float(auc._metric_value("ROC", "interpolation", None, m)),  # noqa: SLF001
        "auc_precision_recall": float(auc._metric_value("PR", "interpolation", None, m)),  # noqa: SLF001
    }


def compute(eval_config, records: list[bytes], model_paths: dict[str, str]) -> list[tuple[tuple, dict]]:
    """(slice key, {MetricKey: value}) per slice, with the diffs against the baseline."""
    import numpy as np
    from tensorflow_model_analysis.utils import model_util

    keys = supported(eval_config)
    specs = {s.name: s for s in eval_config.model_specs}
    features = {f for s in eval_config.slicing_specs for f in s.feature_keys}
    labels_of = {s.label_key for s in specs.values()}
    columns = _columns(records, features | labels_of)
    n = len(records)
    y = {}
    for spec in specs.values():
        raw = columns[spec.label_key]
        if any(v is None for v in raw):
            raise ValueError(f"label {spec.label_key!r} is missing in some examples")
        y[spec.name] = np.asarray(raw, dtype="float64")
    p = {name: predict(model_paths[name], records, spec.signature_name or "serving_default", spec.prediction_key)
         for name, spec in specs.items()}
    buckets = {name: bucket_ids(values) for name, values in p.items()}
    baseline = model_util.get_baseline_model_spec(eval_config)
    baseline_name = baseline.name if baseline else None
    out = []
    for slice_key, idx in slices(eval_config, columns, n):
        values = {name: metric_values(y[name][idx], p[name][idx], buckets[name][idx]) for name in specs}
        metrics = {key: values[key.model_name][key.name] for key in keys}
        if baseline_name is not None:
            for key in keys:
                base = key.make_baseline_key(baseline_name)
                if key.model_name != baseline_name and base in metrics:
                    metrics[key.make_diff_key()] = metrics[key] - metrics[base]
        out.append((slice_key, metrics))
    return out


def validate(eval_config, sliced: list[tuple[tuple, dict]]):
    """The ValidationResult, as TFMA's evaluator and writer make it."""
    from tensorflow_model_analysis.evaluators import metrics_validator
    from tensorflow_model_analysis.writers import metrics_plots_and_validations_writer as w

    combine = w.CombineValidations(eval_config, rubber_stamp=False)
    acc = combine.create_accumulator()
    for item in sliced:
        acc = combine.add_input(acc, metrics_validator.validate_metrics(item, eval_config))
    return combine.extract_output(acc)


def write(output_uri: str, eval_config, sliced, validation, data_location: str,
          model_locations: dict[str, str]) -> None:
    """TFMA's output files under ``output_uri``."""
    import tensorflow as tf
    from tensorflow_model_analysis import constants
    from tensorflow_model_analysis.writers import eval_config_writer
    from tensorflow_model_analysis.writers import metrics_plots_and_validations_writer as w

    tf.io.gfile.makedirs(output_uri)
    shard = "-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(os.path.join(output_uri, constants.METRICS_KEY + shard)) as out:
        for item in sliced:
            out.write(w.convert_slice_metrics_to_proto(item, add_metrics_callbacks=None).SerializeToString())
    for empty in (constants.PLOTS_KEY, constants.ATTRIBUTIONS_KEY):
        with tf.io.TFRecordWriter(os.path.join(output_uri, empty + shard)):
            pass
    with tf.io.TFRecordWriter(os.path.join(output_uri, constants.VALIDATIONS_KEY + ".tfrecord")) as out:
        out.write(validation.SerializeToString())
    text = eval_config_writer._serialize_eval_run(  # noqa: SLF001 - the writer's own format
        eval_config, data_location, "tfrecords", model_locations)
    with tf.io.gfile.GFile(os.path.join(output_uri, eval_config_writer.EVAL_CONFIG_FILE + ".json"), "w") as f:
        f.write(text)


# --------------------------------------------------------------------------- TFX


class FastEvaluatorExecutor(evaluator_executor.Executor):
    """TFX's Evaluator executor computing supported configs itself (see the module)."""

    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        from absl import logging

        self.fallback = None
        try:
            self._fast(input_dict, output_dict, exec_properties)
        except Unsupported as why:
            self.fallback = str(why)
            logging.warning("FastEvaluator: %s; TFMA evaluates instead", why)
            super().Do(input_dict, output_dict, exec_properties)

    def _fast(self, input_dict, output_dict, exec_properties) -> None:
        import tensorflow_model_analysis as tfma
        from tfx.components.evaluator import constants
        from tfx.utils import io_utils, json_utils, path_utils, proto_utils

        config_json = exec_properties.get(standard_component_specs.EVAL_CONFIG_KEY)
        if not config_json:
            raise Unsupported("no eval_config (a feature_slicing_spec)")
        if exec_properties.get(standard_component_specs.MODULE_FILE_KEY) or exec_properties.get(
                standard_component_specs.MODULE_PATH_KEY) or input_dict.get(standard_component_specs.SCHEMA_KEY):
            raise Unsupported("a module file or a schema")
        models = input_dict.get(standard_component_specs.MODEL_KEY) or []
        baselines = input_dict.get(standard_component_specs.BASELINE_MODEL_KEY) or []
        if len(models) != 1 or len(baselines) > 1:
            raise ValueError(f"one candidate and at most one baseline model, got {len(models)} and {len(baselines)}")
        eval_config = tfma.EvalConfig()
        proto_utils.json_to_proto(config_json, eval_config)
        eval_config = tfma.utils.update_eval_config_with_defaults(
            eval_config, has_baseline=bool(baselines), rubber_stamp=True)
        tfma.utils.verify_eval_config(eval_config)
        run_validation = bool(tfma.metrics.metric_thresholds_from_metrics_specs(
            eval_config.metrics_specs, eval_config=eval_config))
        supported(eval_config)
        model_paths = {}
        for spec in eval_config.model_specs:
            if tfma.utils.get_model_type(spec) != tfma.TF_GENERIC:
                raise Unsupported(f"model type {tfma.utils.get_model_type(spec)!r}")
            artifact = baselines[0] if spec.is_baseline else models[0]
            model_paths[spec.name] = path_utils.serving_model_path(
                artifact.uri, path_utils.is_old_model_artifact(artifact))

        self._log_startup(input_dict, output_dict, exec_properties)
        splits = json_utils.loads(exec_properties.get(standard_component_specs.EXAMPLE_SPLITS_KEY, "null")) or ["eval"]
        records, patterns = [], []
        for split in splits:
            for uri in artifact_utils.get_split_uris(input_dict[standard_component_specs.EXAMPLES_KEY], split):
                pattern = io_utils.all_files_pattern(uri)
                patterns.append(pattern)
                records.extend(read_examples(pattern))
        sliced = compute(eval_config, records, model_paths)
        validation = validate(eval_config, sliced)
        output_uri = artifact_utils.get_single_uri(output_dict[standard_component_specs.EVALUATION_KEY])
        write(output_uri, eval_config, sliced, validation, ",".join(patterns), model_paths)
        if not run_validation:
            return
        blessing = artifact_utils.get_single_instance(output_dict[standard_component_specs.BLESSING_KEY])
        blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, models[0].uri)
        blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, models[0].id)
        if baselines:
            blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baselines[0].uri)
            blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, baselines[0].id)
        if "current_component_id" in exec_properties:
            blessing.set_string_custom_property("component_id", exec_properties["current_component_id"])
        ok = tfma.load_validation_result(output_uri).validation_ok
        name = constants.BLESSED_FILE_NAME if ok else constants.NOT_BLESSED_FILE_NAME
        io_utils.write_string_file(os.path.join(blessing.uri, name), "")
        blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                         constants.BLESSED_VALUE if ok else constants.NOT_BLESSED_VALUE)


class FastEvaluator(evaluator_component.Evaluator):
    """``tfx.components.Evaluator`` with :class:`FastEvaluatorExecutor`."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(FastEvaluatorExecutor)
