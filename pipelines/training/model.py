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
import math
import os
import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
EXPORT_DIR = "Format-Serving"  # the directory name TFX expects under a model root
MODEL_INFO = "factory_model.json"  # in <export>/assets.extra/
FEATURE_TYPES = ("integer", "double", "string")
FEATURE_KINDS = ("numeric", "categorical")


class ManifestError(ValueError):
    """The run's manifest is missing or cannot be used; the message names the field."""


class DataError(ValueError):
    """A data file does not match the manifest."""


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Feature:
    name: str
    type: str  # integer | double | string
    kind: str  # numeric | categorical
    categories: tuple[str, ...] | None
    log: bool
    mean: float | None
    std: float | None

    @property
    def scale(self) -> float:
        """The standard deviation used for scaling (1 for a constant feature)."""
        return self.std if self.std else 1.0

    def default(self) -> int | float | str:
        """What a missing value in a tf.Example stands for: the train mean (raw scale), or OOV."""
        if self.kind == "categorical":
            if self.type == "integer":  # a code none of the categories has: out of vocabulary
                return min(int(c) for c in self.categories) - 1
            return ""
        raw = math.expm1(self.mean) if self.log else self.mean
        return int(round(raw)) if self.type == "integer" else float(raw)


@dataclass(frozen=True)
class Params:
    workers: int
    epochs: int
    batch_size: int
    learning_rate: float
    early_stopping_patience: int
    seed: int


@dataclass(frozen=True)
class ModelConfig:
    kind: str
    hidden_units: tuple[int, ...]
    dropout: float
    one_hot_max: int
    embedding_dim: int
    log_features: tuple[str, ...]
    class_weight: str


@dataclass(frozen=True)
class Manifest:
    raw: dict
    line: str
    spec_version: int
    run_id: str
    batches: tuple[str, ...]
    key: tuple[str, ...]
    label: str
    positive_rate: float
    features: tuple[Feature, ...]
    rows: dict[str, int]
    shards: tuple[int, ...]
    params: Params
    model: ModelConfig

    @property
    def numeric(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "numeric"]

    @property
    def categorical(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "categorical"]

    @property
    def positive_weight(self) -> float:
        """Weight of a positive example in the loss: (1-p)/p when class_weight is balanced."""
        if self.model.class_weight == "balanced":
            return (1.0 - self.positive_rate) / self.positive_rate
        return 1.0


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ManifestError(f"{MANIFEST}: {where}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _section(data: dict, name: str, typ: type) -> Any:
    _need(name in data, name, "missing")
    _need(isinstance(data[name], typ), name, f"must be a {typ.__name__}, got {type(data[name]).__name__}")
    return data[name]


def _feature(i: int, f: Any) -> Feature:
    where = f"features.{i}"
    _need(isinstance(f, dict), where, "must be a mapping")
    name = f.get("name")
    _need(isinstance(name, str) and name != "", where, "needs a name")
    where = f"features.{i} ({name})"
    ftype, kind = f.get("type"), f.get("kind")
    _need(ftype in FEATURE_TYPES, where + ".type", f"must be one of {list(FEATURE_TYPES)}, got {ftype!r}")
    _need(kind in FEATURE_KINDS, where + ".kind", f"must be one of {list(FEATURE_KINDS)}, got {kind!r}")
    log = f.get("log", False)
    _need(isinstance(log, bool), where + ".log", "must be true or false")
    cats = f.get("categories")
    if kind == "categorical":
        _need(ftype in ("string", "integer"), where, "a categorical feature must be of type string or integer")
        _need(isinstance(cats, list) and len(cats) > 0, where + ".categories", "a categorical needs categories")
        _need(all(isinstance(c, str) for c in cats), where + ".categories", "categories must be strings")
        if ftype == "integer":
            _need(all(re.fullmatch(r"-?[0-9]+", c) for c in cats), where + ".categories",
                  "an integer categorical's categories must be integers written as strings")
        _need(len(set(cats)) == len(cats), where + ".categories", "categories must be unique")
        _need(not log, where + ".log", "only numeric features can be log-transformed")
        return Feature(name, ftype, kind, tuple(cats), False, None, None)
    _need(ftype in ("integer", "double"), where, "a numeric feature must be of type integer or double")
    mean, std = f.get("mean"), f.get("std")
    _need(_is_num(mean), where + ".mean", f"a numeric feature needs a finite mean, got {mean!r}")
    _need(_is_num(std) and std >= 0, where + ".std", f"a numeric feature needs a finite std >= 0, got {std!r}")
    return Feature(name, ftype, kind, None, log, float(mean), float(std))


def parse_manifest(data: Any) -> Manifest:
    """Validate a manifest's parsed JSON; raise :class:`ManifestError` naming the field."""
    _need(isinstance(data, dict), "(top level)", "must be a JSON object")
    line = _section(data, "line", str)
    version = data.get("spec_version")
    _need(_is_int(version), "spec_version", f"must be an integer, got {version!r}")
    run_id = _section(data, "run_id", str)
    batches = _section(data, "batches", list)
    key = _section(data, "key", list)
    label = _section(data, "label", dict)
    _need(isinstance(label.get("name"), str), "label.name", "missing")
    rate = label.get("positive_rate")
    _need(_is_num(rate) and 0 < rate < 1, "label.positive_rate", f"must be strictly between 0 and 1, got {rate!r}")
    feats = _section(data, "features", list)
    _need(len(feats) > 0, "features", "must not be empty")
    features = tuple(_feature(i, f) for i, f in enumerate(feats))
    names = [f.name for f in features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    _need(not dupes, "features", f"duplicate names {dupes}")
    _need(label["name"] not in names, "label.name", "the label cannot also be a feature")

    rows = _section(data, "rows", dict)
    for split in ("train", "validation", "eval"):
        _need(_is_int(rows.get(split)) and rows[split] >= 0, f"rows.{split}", "must be an integer >= 0")
    shards = _section(data, "shards", list)
    _need(len(shards) > 0, "shards", "must list at least one shard")
    _need(all(_is_int(n) and n >= 0 for n in shards), "shards", "must be row counts (integers >= 0)")
    _need(sum(shards) == rows["train"], "shards", f"add up to {sum(shards)}, but rows.train is {rows['train']}")

    p = _section(data, "params", dict)
    for name in ("workers", "epochs", "batch_size", "early_stopping_patience"):
        _need(_is_int(p.get(name)) and p[name] >= 1, f"params.{name}", f"must be an integer >= 1, got {p.get(name)!r}")
    _need(_is_num(p.get("learning_rate")) and p["learning_rate"] > 0, "params.learning_rate", "must be > 0")
    _need(_is_int(p.get("seed")), "params.seed", f"must be an integer, got {p.get('seed')!r}")
    params = Params(p["workers"], p["epochs"], p["batch_size"], float(p["learning_rate"]),
                    p["early_stopping_patience"], p["seed"])

    mo = _section(data, "model", dict)
    _need(mo.get("kind", "tabular_dnn") == "tabular_dnn", "model.kind", f"unsupported model {mo.get('kind')!r}")
    hidden = mo.get("hidden_units", [64, 32])
    _need(isinstance(hidden, list) and all(_is_int(u) and u >= 1 for u in hidden), "model.hidden_units",
          "must be a list of positive integers")
    dropout = mo.get("dropout", 0.0)
    _need(_is_num(dropout) and 0 <= dropout < 1, "model.dropout", "must be in [0, 1)")
    one_hot_max, emb = mo.get("one_hot_max", 12), mo.get("embedding_dim", 8)
    _need(_is_int(one_hot_max) and one_hot_max >= 0, "model.one_hot_max", "must be an integer >= 0")
    _need(_is_int(emb) and emb >= 1, "model.embedding_dim", "must be an integer >= 1")
    cw = mo.get("class_weight", "none")
    _need(cw in ("balanced", "none"), "model.class_weight", f"must be 'balanced' or 'none', got {cw!r}")
    model = ModelConfig("tabular_dnn", tuple(hidden), float(dropout), one_hot_max, emb,
                        tuple(mo.get("log_features", [])), cw)
    return Manifest(
        raw=data, line=line, spec_version=version, run_id=run_id, batches=tuple(str(b) for b in batches),
        key=tuple(key), label=label["name"], positive_rate=float(rate), features=features,
        rows={k: rows[k] for k in ("train", "validation", "eval")}, shards=tuple(shards),
        params=params, model=model,
    )


def load_manifest(run_dir: Path | str) -> Manifest:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path} not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: not valid JSON: {err}") from None
    return parse_manifest(data)


def prior_correction(manifest: Manifest) -> float:
    """What the exported model subtracts from the core's logit: ``log(positive_weight)``.

    Weighting positive examples by ``w`` in the loss multiplies the odds the network
    learns by ``w`` (with balanced weights, a 5% class reads as 50%). Subtracting
    ``log(w)`` restores probabilities calibrated to the training data's rate; the ranking,
    and so every AUC, is unchanged. 0 when the line trains unweighted.
    """
    return math.log(manifest.positive_weight)


def model_info(manifest: Manifest, metrics: dict[str, Any]) -> dict[str, Any]:
    """The manifest subset written next to the exported model (``assets.extra/factory_model.json``)."""
    raw = manifest.raw
    info = {k: raw[k] for k in ("line", "spec_version", "run_id", "batches", "features", "label", "params")}
    info["key"] = raw["key"]
    info["metrics"] = metrics
    info["prior_correction"] = prior_correction(manifest)
    return info


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
        if f.type == "string":
            out[f.name] = np.asarray(col.astype(str).to_numpy(), dtype=object)
        else:
            try:
                out[f.name] = col.to_numpy().astype(_NUMPY_DTYPES[f.type])
            except (TypeError, ValueError) as err:
                raise DataError(f"column {f.name!r} is not {f.type}: {err}") from None
    return out


def frame_to_labels(frame, manifest: Manifest):
    """The label column as float32 0/1."""
    import numpy as np

    if manifest.label not in frame.columns:
        raise DataError(f"label column {manifest.label!r} is missing")
    y = frame[manifest.label].to_numpy()
    if len(y) and not np.isin(y, (0, 1)).all():
        raise DataError(f"label column {manifest.label!r} must hold 0/1")
    return y.astype("float32")


def serialize_examples(frame, manifest: Manifest, extra_columns: bool = True) -> list[bytes]:
    """Rows as serialized tf.Example: every feature (integer -> int64, double -> float, string ->
    bytes) and, with ``extra_columns``, the key and label columns present in the frame."""
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
            if t == "string":
                feats[c] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode()]))
            elif t == "integer":
                feats[c] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
            else:
                feats[c] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    return out


def roc_auc(labels, scores) -> float:
    """Exact ROC AUC (Mann-Whitney U with tied scores averaged); NaN if only one class."""
    import numpy as np

    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = avg_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


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
    model_root = Path(model_root)
    final = model_root / EXPORT_DIR
    tmp = model_root / f".{EXPORT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, str(tmp), signatures=signatures)
    extra = tmp / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / MODEL_INFO).write_text(json.dumps(model_info(manifest, metrics), indent=2, sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


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
    pre, core = build_preprocessor(manifest), build_core(manifest)
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint under {run_dir / 'checkpoints'}")
    tf.train.Checkpoint(best_model=core).restore(latest).expect_partial()
    result_path = run_dir / "result.json"
    if result_path.exists():
        expected = json.loads(result_path.read_text())["weights_sha256"]
        if weights_sha256(core) != expected:
            raise ValueError("the checkpoint's best weights are not the exported ones (weights_sha256 differs)")

    frame = pq.read_table(run_dir / "data" / "eval.parquet").to_pandas().head(max_rows)
    feats = {k: tf.constant(v) for k, v in frame_to_features(frame, manifest).items()}
    memory = tf.sigmoid(core(pre(feats), training=False) - prior_correction(manifest)).numpy()

    loaded = tf.saved_model.load(str(run_dir / "model" / EXPORT_DIR))
    served = loaded.signatures["serving_default"](examples=tf.constant(serialize_examples(frame, manifest)))
    probs = served["probabilities"].numpy()
    if probs.shape != memory.shape:
        raise ValueError(f"serving returned shape {probs.shape}, expected {memory.shape}")
    return float(abs(probs - memory).max())


if __name__ == "__main__":  # python -m pipelines.training.model RUN_DIR: prints the parity as JSON
    import sys

    diff = check_export(sys.argv[1])
    sys.stdout.write(json.dumps({"max_abs_diff": diff}) + "\n")
