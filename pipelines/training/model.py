"""The tabular model of a product line, built from a training run's manifest.

Two parts, so the expensive one can be XLA-compiled:

* the **preprocessor** (strings -> numbers, a ``tf.Module``): numeric features
  are cast to float32, optionally ``log1p``-ed and standardised with the
  manifest's train-split mean and std; categoricals (strings, or integer codes
  by their text) are looked up in a static table with ``StringLookup``'s
  mapping: the declared vocabulary at 1..K and one out-of-vocabulary slot, 0.
  It outputs ``{"numeric": [n, d] float32, "cat_<name>": [n] int64}``. The
  worker runs it inside ``tf.data.Dataset.map``; lookups do not compile.
* the **core** (numbers -> logit, a ``tf_keras`` functional model): each
  categorical index is one-hot encoded (``len(categories) <= one_hot_max``; a
  fixed identity embedding) or embedded (``embedding_dim``), then the hidden
  ``Dense`` layers with dropout and a one-unit logit. The worker trains it with
  ``jit_compile=True``.

The exported SavedModel composes both, so serving needs no outside code:
``serving_default`` takes ``examples`` (a 1-D string tensor of serialized
``tf.Example``) and returns ``probabilities`` and ``logits`` (``[n, 1]``
float32; the logit less :func:`prior_correction`, so probabilities are calibrated
to the training rate even when the loss weighted the classes); ``predict_features`` takes the raw feature tensors by name. It is a
plain ``tf.Module``, so ``tf.saved_model.load`` reads it and TFMA treats it as a
generic TF model (not a Keras one).

Everything that needs TensorFlow imports it inside the function, so the
manifest helpers here work without it (the worker validates a run before it
pays for importing TensorFlow). Keras is ``tf_keras`` (``TF_USE_LEGACY_KERAS=1``):
Horovod's TensorFlow API does not work with Keras 3.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.catalog import layout
from pipelines.catalog.layout import EXPORT_DIR
from pipelines.catalog.records import read_training_result, write_model_info
from pipelines.training.manifest import Manifest, load_manifest, model_info, prior_correction


class DataError(ValueError):
    """A data file does not match the manifest."""


# --------------------------------------------------------------------------- data

_NUMPY_DTYPES = {"integer": "int64", "double": "float32"}


def frame_to_features(frame, manifest: Manifest) -> dict[str, Any]:
    """The model's raw inputs from a pandas frame: integer -> int64, double -> float32 (what a
    tf.Example carries), string -> object array of str."""
    import numpy as np

    out = {}
    for f in manifest.features:
        if f.name not in frame.columns:
            raise DataError(f"column {f.name!r} is missing")
        col = frame[f.name]
        if col.isna().any():
            raise DataError(f"column {f.name!r} has {int(col.isna().sum())} missing values")
        if f.type == "image":  # the encoded file, as bytes
            out[f.name] = np.asarray([bytes(v) for v in col], dtype=object)
        elif f.type == "string":
            out[f.name] = np.asarray(col.astype(str).to_numpy(), dtype=object)
        else:
            try:
                out[f.name] = col.to_numpy().astype(_NUMPY_DTYPES[f.type])
            except (TypeError, ValueError) as err:
                raise DataError(f"column {f.name!r} is not {f.type}: {err}") from None
    return out


def frame_to_labels(frame, manifest: Manifest):
    """The label column: float32 0/1 (binary), int64 class indices 0..C-1 (multiclass)."""
    import numpy as np

    if manifest.label not in frame.columns:
        raise DataError(f"label column {manifest.label!r} is missing")
    y = frame[manifest.label].to_numpy()
    if manifest.task == "multiclass_classification":
        if len(y) and (y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= manifest.num_classes):
            raise DataError(f"label column {manifest.label!r} must hold class indices 0..{manifest.num_classes - 1}")
        return y.astype("int64")
    if len(y) and not np.isin(y, (0, 1)).all():
        raise DataError(f"label column {manifest.label!r} must hold 0/1")
    return y.astype("float32")


def serialize_examples(frame, manifest: Manifest, extra_columns: bool = True) -> list[bytes]:
    """Rows as serialized tf.Example: every feature (integer -> int64, double -> float, string ->
    bytes, image -> its encoded bytes) and, with ``extra_columns``, the key and label columns present in the frame."""
    import tensorflow as tf

    types = {f.name: f.type for f in manifest.features}
    cols = [f.name for f in manifest.features]
    if extra_columns:
        for c in (*manifest.key, manifest.label):
            if c in frame.columns and c not in types:
                kind = frame[c].dtype.kind
                types[c] = "integer" if kind in "iub" else "double" if kind == "f" else "string"
                cols.append(c)
    values = {c: frame[c].tolist() for c in cols}
    out = []
    for i in range(len(frame)):
        feats = {}
        for c in cols:
            v, t = values[c][i], types[c]
            if t == "image":
                feats[c] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes(v)]))
            elif t == "string":
                feats[c] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode()]))
            elif t == "integer":
                feats[c] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
            else:
                feats[c] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    return out


def roc_auc(labels, scores) -> float:
    """ROC AUC as :func:`pipelines.monitoring.statistics.roc_auc` computes it, but NaN (not
    None) without both classes, so a caller can test it with ``isfinite``."""
    from pipelines.monitoring.statistics import roc_auc as auc

    value = auc(labels, scores)
    return float("nan") if value is None else value


# --------------------------------------------------------------------------- model


def _tf():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import tf_keras as keras

    return tf, keras


def raw_dtypes(manifest: Manifest) -> dict[str, Any]:
    tf, _ = _tf()
    types = {"integer": tf.int64, "double": tf.float32, "string": tf.string}
    return {f.name: types[f.type] for f in manifest.features}


@lru_cache(maxsize=1)
def _preprocessor_class():
    tf, _ = _tf()

    class Preprocessor(tf.Module):
        """Raw features (dict of 1-D tensors) -> {"numeric": [n, d] float32, "cat_<name>": [n] int64}.

        A categorical's lookup table is StringLookup's mapping with one OOV slot: category i
        (in the declared order) -> i + 1, anything else -> 0. Plain TF ops and tables (no
        Keras layers) keep tracing it into tf.data and into the SavedModel cheap.
        """

        def __init__(self, manifest: Manifest):
            super().__init__(name="preprocessor")
            self._numeric = [f.name for f in manifest.numeric]
            self._categorical = [(f.name, f.type) for f in manifest.categorical]
            self._log = tf.constant([f.log for f in manifest.numeric], tf.bool)
            self._mean = tf.constant([f.mean for f in manifest.numeric], tf.float32)
            self._scale = tf.constant([f.scale for f in manifest.numeric], tf.float32)
            self.tables = [
                tf.lookup.StaticHashTable(
                    tf.lookup.KeyValueTensorInitializer(
                        tf.constant(list(f.categories), tf.string),
                        tf.range(1, len(f.categories) + 1, dtype=tf.int64),
                    ),
                    default_value=0,
                    name=f"lookup_{f.name}",
                )
                for f in manifest.categorical
            ]

        def __call__(self, features):
            out = {}
            if self._numeric:
                x = tf.stack([tf.cast(features[name], tf.float32) for name in self._numeric], axis=1)
                x = tf.where(self._log, tf.math.log1p(tf.maximum(x, 0.0)), x)
                out["numeric"] = (x - self._mean) / self._scale
            for (name, ftype), table in zip(self._categorical, self.tables, strict=True):
                x = features[name]
                if ftype == "integer":  # integer codes: looked up by their decimal text
                    x = tf.strings.as_string(x)
                out[category_key(name)] = table.lookup(x)
            return out

    return Preprocessor


def category_key(name: str) -> str:
    """The preprocessor's output (and the core's input) for categorical ``name``."""
    return f"cat_{name}"


def build_preprocessor(manifest: Manifest):
    """Raw features (dict of 1-D tensors) -> {"numeric": [n, d] float32, "cat_<name>": [n] int64}."""
    return _preprocessor_class()(manifest)


def build_core(manifest: Manifest):
    """{"numeric", "cat_<name>"...} -> logit [n, 1]: one-hot or embedded categoricals, Dense + dropout.

    Only stock Keras layers (no TF ops on Keras tensors): tf_keras wraps each such op in a
    ``TFOpLambda`` layer, and tracing those took ~10 s per trace here."""
    tf, keras = _tf()
    cfg = manifest.model
    inputs, parts = {}, []
    if manifest.numeric:
        inputs["numeric"] = keras.Input(shape=(len(manifest.numeric),), dtype=tf.float32, name="numeric")
        parts.append(inputs["numeric"])
    for f in manifest.categorical:
        key = category_key(f.name)
        idx = inputs[key] = keras.Input(shape=(), dtype=tf.int64, name=key)
        depth = len(f.categories) + 1  # index 0: out of vocabulary
        if len(f.categories) <= cfg.one_hot_max:
            # one-hot as a fixed identity embedding: a gather XLA compiles once (CategoryEncoding's
            # value checks made XLA recompile for every new batch)
            onehot = keras.layers.Embedding(
                depth, depth, embeddings_initializer="identity", trainable=False, name=f"onehot_{f.name}"
            )
            parts.append(onehot(idx))
        else:
            parts.append(keras.layers.Embedding(depth, cfg.embedding_dim, name=f"embed_{f.name}")(idx))
    x = keras.layers.Concatenate(name="features")(parts) if len(parts) > 1 else parts[0]
    for i, units in enumerate(cfg.hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
        if cfg.dropout > 0:
            x = keras.layers.Dropout(cfg.dropout, name=f"dropout_{i}")(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    return keras.Model(inputs, logit, name="core")


def weights_sha256(model) -> str:
    """A digest of a model's weights (shapes, dtypes and bytes, in order)."""
    import numpy as np

    h = hashlib.sha256()
    for w in model.get_weights():
        w = np.ascontiguousarray(w)
        h.update(f"{w.dtype.str}{w.shape}".encode())
        h.update(w.tobytes())
    return h.hexdigest()


def example_feature_spec(manifest: Manifest) -> dict[str, Any]:
    """The tf.Example feature spec; a missing feature reads as the train mean (numeric) or OOV."""
    tf, _ = _tf()
    dtypes = raw_dtypes(manifest)
    return {
        f.name: tf.io.FixedLenFeature([], dtypes[f.name], default_value=f.default()) for f in manifest.features
    }


def export_saved_model(preprocessor, core, manifest: Manifest, model_root: Path, metrics: dict) -> Path:
    """Write ``<model_root>/Format-Serving`` (replacing it whole) and its ``assets.extra`` info."""
    tf, _ = _tf()
    spec = example_feature_spec(manifest)
    dtypes = raw_dtypes(manifest)

    module = tf.Module()
    module.preprocessor = preprocessor
    # The core's variables, not the Keras model: the signatures are all a server needs, and
    # saving the model itself would trace every Keras layer again (seconds per layer stack).
    module.core_variables = list(core.variables)

    shift = prior_correction(manifest)

    def outputs(features):
        logits = core(preprocessor(features), training=False) - shift
        return {"probabilities": tf.sigmoid(logits), "logits": logits}

    # autograph=False: nothing here branches on tensors, and converting Keras' call
    # machinery costs seconds per first trace
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve(examples):
        return outputs(tf.io.parse_example(examples, spec))

    @tf.function(autograph=False)
    def predict_features(**features):
        return outputs(features)

    module.serve = serve
    module.predict_features = predict_features
    signatures = {
        "serving_default": serve.get_concrete_function(),
        "predict_features": predict_features.get_concrete_function(
            **{name: tf.TensorSpec([None], dt, name=name) for name, dt in dtypes.items()}
        ),
    }
    return save_module(module, signatures, manifest, model_root, metrics)


def save_module(module, signatures: dict[str, Any], manifest: Manifest, model_root: Path, metrics: dict) -> Path:
    """Save ``module`` as ``<model_root>/Format-Serving`` with its model info, replacing any
    earlier export whole (written beside it, then renamed)."""
    tf, _ = _tf()
    model_root = Path(model_root)
    final = model_root / EXPORT_DIR
    tmp = model_root / f".{EXPORT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, str(tmp), signatures=signatures)
    write_model_info(tmp, model_info(manifest, metrics))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


# --------------------------------------------------------------------------- model kinds


@dataclass(frozen=True)
class ModelKind:
    """What the worker, the export and the export check use of one kind of model."""

    build_preprocessor: Callable[[Manifest], Any]
    build_core: Callable[[Manifest], Any]
    # (core, preprocessed features) -> probabilities as the export serves them
    probabilities: Callable[[Any, Any, Manifest], Any]
    export: Callable[..., Path]
    # the training images' random changes (a Keras model), or None
    build_augmenter: Callable[[Manifest], Any] = lambda manifest: None
    # XLA-compile the forward and backward pass (convolutions run faster with oneDNN)
    jit_compile: bool = True
    # batch normalisation's moving statistics: averaged over the ranks after each epoch
    sync_statistics: bool = False


def _tabular_probabilities(core, features, manifest: Manifest):
    tf, _ = _tf()
    return tf.sigmoid(core(features, training=False) - prior_correction(manifest))


def model_kind(manifest: Manifest) -> ModelKind:
    """The manifest's ``model.kind`` looked up in the table of model kinds."""
    from pipelines.training import cnn

    kinds = {
        "tabular_dnn": ModelKind(build_preprocessor, build_core, _tabular_probabilities, export_saved_model),
        "cnn": ModelKind(cnn.build_preprocessor, cnn.build_core, lambda core, x, m: cnn.probabilities(core, x),
                         cnn.export_saved_model, cnn.build_augmenter, jit_compile=False, sync_statistics=True),
    }
    return kinds[manifest.model.kind]


# --------------------------------------------------------------------------- export check


def check_export(run_dir: Path | str, max_rows: int = 2000) -> float:
    """Max |p_serving - p_memory| over the first ``max_rows`` eval rows.

    The in-memory model is rebuilt from the manifest with the best weights from the run's
    latest checkpoint (what the worker exported); it reads the eval rows as the worker reads
    training data (pandas -> tensors). The exported SavedModel reads the same rows as
    serialized tf.Example through ``serving_default``. Raises if the restored weights are
    not the ones ``result.json`` reports.
    """
    import pyarrow.parquet as pq

    tf, _ = _tf()
    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    kind = model_kind(manifest)
    pre, core = kind.build_preprocessor(manifest), kind.build_core(manifest)
    latest = tf.train.latest_checkpoint(str(layout.checkpoints_dir(run_dir)))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint under {layout.checkpoints_dir(run_dir)}")
    tf.train.Checkpoint(best_model=core).restore(latest).expect_partial()
    result = read_training_result(run_dir)
    if result is not None:
        if weights_sha256(core) != result.weights_sha256:
            raise ValueError("the checkpoint's best weights are not the exported ones (weights_sha256 differs)")

    frame = pq.read_table(layout.eval_data_path(run_dir)).to_pandas().head(max_rows)
    feats = {k: tf.constant(v) for k, v in frame_to_features(frame, manifest).items()}
    memory = kind.probabilities(core, pre(feats), manifest).numpy()

    loaded = tf.saved_model.load(str(layout.exported_model(run_dir)))
    served = loaded.signatures["serving_default"](examples=tf.constant(serialize_examples(frame, manifest)))
    probs = served["probabilities"].numpy()
    if probs.shape != memory.shape:
        raise ValueError(f"serving returned shape {probs.shape}, expected {memory.shape}")
    if "class_ids" in served and (served["class_ids"].numpy() != probs.argmax(axis=1)).any():
        raise ValueError("serving's class_ids are not the argmax of its probabilities")
    return float(abs(probs - memory).max())


if __name__ == "__main__":  # python -m pipelines.training.model RUN_DIR: prints the parity as JSON
    import sys

    diff = check_export(sys.argv[1])
    sys.stdout.write(json.dumps({"max_abs_diff": diff}) + "\n")
