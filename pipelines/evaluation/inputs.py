"""The gate's inputs, checked before anything runs: the run's manifest, the held-out
evaluation split and the candidate SavedModel; and the split as gzipped TFRecords of
``tf.Example`` for TFX's ImportExampleGen.

Checks (each failure is a :class:`GateInputError` naming the file and what is wrong;
nothing is evaluated or pushed):

* ``manifest.json`` parses (:func:`pipelines.training.manifest.load_manifest`);
* ``data/eval.parquet`` exists, has the label column (0/1 only, no missing value, both
  classes present), every feature the model reads, the columns the slices need, and at
  least ``min_eval_examples`` rows;
* ``model/Format-Serving/saved_model.pb`` exists and its ``serving_default`` signature
  takes exactly one 1-D string tensor ``examples`` and returns float ``probabilities``.
  Read from the SavedModel proto: no model is loaded for the check.

The examples carry every column of the split (features typed as the model parses them:
integer -> int64, double -> float, string -> bytes; other columns by their Parquet type)
plus the derived slicing features (e.g. ``age_band``), which the model's parser ignores.
A missing value becomes an empty feature (the model's parser then uses its default).
Encoding is tfx-bsl's Arrow -> tf.Example coder (C++), not a Python loop.

A multi-class image line (:data:`PARTS`, keyed by the spec's ``task``) reads its split
differently: ``data/eval.parquet`` has ``image_id``, ``image`` (PNG bytes) and ``label``
(an integer class of the spec's label categories, none missing); the run's manifest is
read as JSON for its ``line`` only (the tabular manifest's feature checks do not apply),
and the label is the spec's. Its tf.Examples carry ``image`` (bytes), ``label`` (int64)
and ``image_id`` (bytes), plus any slicing column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.catalog import layout
from pipelines.catalog.layout import EXPORT_DIR
from pipelines.specs.evaluation import EvaluationSettings

SIGNATURE = "serving_default"
INPUT_KEY = "examples"
PREDICTION_KEY = "probabilities"
EXAMPLES_FILE = "data_tfrecord-00000-of-00001.gz"
SEP = "\x1f"  # joins the values of a crossed slice in slice_counts


class GateInputError(ValueError):
    """The evaluation cannot start: bad manifest, evaluation split or model (message says which)."""


@dataclass(frozen=True)
class EvalInputs:
    run_dir: Path
    manifest: Any  # pipelines.training.manifest.Manifest
    label: str
    rows: int
    positives: int
    slice_counts: dict[str, dict[str, list[int]]]  # "term" -> {"term_36": [rows, positives]}


def load_manifest(run_dir: Path):
    from pipelines.training.manifest import ManifestError
    from pipelines.training.manifest import load_manifest as _load

    try:
        return _load(run_dir)
    except ManifestError as err:
        raise GateInputError(f"{run_dir}: {err}") from None


def check_model(model_root: Path) -> None:
    """The candidate must be a SavedModel with the serving signature the factory serves."""
    pb = Path(model_root) / EXPORT_DIR / "saved_model.pb"
    if not pb.is_file():
        raise GateInputError(f"no SavedModel at {pb.parent} (expected {pb.name})")
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(pb.read_bytes())
    except Exception as err:  # noqa: BLE001 - a corrupt file
        raise GateInputError(f"{pb}: not a SavedModel: {err}") from None
    if not saved.meta_graphs:
        raise GateInputError(f"{pb}: the SavedModel has no MetaGraph")
    sigs = saved.meta_graphs[0].signature_def
    where = f"model {pb.parent}"
    if SIGNATURE not in sigs:
        raise GateInputError(f"{where}: no {SIGNATURE!r} signature (it has: {sorted(sigs) or 'none'})")
    sig = sigs[SIGNATURE]
    inputs = dict(sig.inputs)
    if list(inputs) != [INPUT_KEY]:
        raise GateInputError(
            f"{where}: signature {SIGNATURE!r} must take exactly one input {INPUT_KEY!r} "
            f"(serialized tf.Example), it takes {sorted(inputs)}"
        )
    tensor = inputs[INPUT_KEY]
    dims = [d.size for d in tensor.tensor_shape.dim]
    if tensor.dtype != types_pb2.DT_STRING or tensor.tensor_shape.unknown_rank or len(dims) != 1:
        raise GateInputError(
            f"{where}: input {INPUT_KEY!r} must be a 1-D string tensor, it is "
            f"{types_pb2.DataType.Name(tensor.dtype)} with shape {dims}"
        )
    if PREDICTION_KEY not in sig.outputs:
        raise GateInputError(
            f"{where}: signature {SIGNATURE!r} must return {PREDICTION_KEY!r}, it returns {sorted(sig.outputs)}"
        )
    if sig.outputs[PREDICTION_KEY].dtype not in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        raise GateInputError(f"{where}: output {PREDICTION_KEY!r} must be float")


def _bands(values, bins: list[float], labels: list[str]):
    import numpy as np

    x = np.asarray(values, dtype="float64")
    idx = np.digitize(x, bins, right=False)  # 0: < bins[0]; k: >= bins[-1]
    out = np.asarray(labels, dtype=object)[idx]
    out[np.isnan(x)] = None
    return out


def _read_split(run_dir: Path):
    import pyarrow.parquet as pq

    path = layout.eval_data_path(run_dir)
    if not path.is_file():
        raise GateInputError(f"evaluation split not found: {path}")
    try:
        return path, pq.read_table(path).to_pandas()
    except Exception as err:  # noqa: BLE001
        raise GateInputError(f"{path}: cannot be read as Parquet: {err}") from None


def load_eval_frame(run_dir: Path, settings: EvaluationSettings):
    """The evaluation split, checked, with the derived slicing features added."""
    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    path, frame = _read_split(run_dir)
    label = manifest.label
    if label not in frame.columns:
        raise GateInputError(f"{path}: the label column {label!r} is missing (columns: {list(frame.columns)})")
    y = frame[label]
    if y.isna().any():
        raise GateInputError(f"{path}: the label column {label!r} has {int(y.isna().sum())} missing values")
    if not y.isin([0, 1]).all():
        bad = sorted(map(str, set(y.unique()) - {0, 1}))[:5]
        raise GateInputError(f"{path}: the label column {label!r} must hold 0/1 (1 = positive), found {bad}")
    frame[label] = y.astype("int64")
    missing = [f.name for f in manifest.features if f.name not in frame.columns]
    if missing:
        raise GateInputError(f"{path}: feature column(s) the model reads are missing: {missing}")
    if len(frame) < settings.min_eval_examples:
        raise GateInputError(
            f"{path}: {len(frame)} rows, fewer than min_eval_examples={settings.min_eval_examples}"
        )
    positives = int(frame[label].sum())
    if positives == 0 or positives == len(frame):
        raise GateInputError(f"{path}: the label column {label!r} holds one class only: AUC is undefined")
    for name, d in settings.derived_features.items():
        if d.from_ not in frame.columns:
            raise GateInputError(f"{path}: derived feature {name!r} needs column {d.from_!r}, which is missing")
        frame[name] = _bands(frame[d.from_], d.bins, d.labels())
    for s in settings.slice_features:
        absent = [f for f in s if f not in frame.columns]
        if absent:
            raise GateInputError(f"{path}: slice {list(s)} needs column(s) {absent}, which are missing")
    return manifest, frame


def slice_name(pairs: dict[str, str] | list[tuple[str, str]]) -> str:
    """A slice as TFMA names it: ``term:term_36``; crosses ``SEX_X_age_band:1_X_<16`` (features
    sorted); no feature: ``Overall``."""
    items = sorted(pairs.items() if isinstance(pairs, dict) else pairs)
    if not items:
        return "Overall"
    return "_X_".join(k for k, _ in items) + ":" + "_X_".join(str(v) for _, v in items)


def slice_counts(
    frame, label: str, settings: EvaluationSettings, orders: dict[str, list[str]] | None = None
) -> dict[str, dict[str, list[int]]]:
    """Rows and positives of every slice value: "term" -> {"term_36": [rows, positives]}, in
    the order of ``orders`` (feature -> values: the spec's categories, the derived bands).
    A cross is keyed "SEX x age_band", its values joined with :data:`SEP`."""
    orders = {**(orders or {}), **{n: d.labels() for n, d in settings.derived_features.items()}}

    def rank(feature: str, value: str) -> tuple[int, str]:
        known = orders.get(feature) or []
        return (known.index(value), "") if value in known else (len(known), value)

    out: dict[str, dict[str, list[int]]] = {}
    for s in settings.slice_features:
        grouped = frame.groupby(list(s), dropna=True)[label].agg(["count", "sum"])
        rows = []
        for key, row in grouped.iterrows():
            key = tuple(str(k) for k in (key if isinstance(key, tuple) else (key,)))
            rows.append((tuple(rank(f, v) for f, v in zip(s, key, strict=True)), key, row))
        out[" x ".join(s)] = {
            SEP.join(key): [int(row["count"]), int(row["sum"])] for _, key, row in sorted(rows, key=lambda r: r[0])
        }
    return out


def _arrow_column(series, kind: str):
    """A column as an Arrow list array (one value per row; null -> an empty feature)."""
    import numpy as np
    import pyarrow as pa

    values = pa.array(series, from_pandas=True)
    try:
        if kind == "integer":
            values = values.cast(pa.int64())
        elif kind == "bytes":
            values = values.cast(pa.binary())
        elif kind == "double":
            values = values.cast(pa.float32())
        else:
            values = values.cast(pa.string()).cast(pa.binary())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise GateInputError(f"column {series.name!r} cannot be written as {kind}: {err}") from None
    n = len(values)
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), values, mask=values.is_null())


def column_kinds(frame, manifest) -> dict[str, str]:
    """How each column is typed in the tf.Examples: the model's types for its features,
    the Parquet type for the rest (key, label, metadata, derived)."""
    import pandas as pd

    kinds = {f.name: f.type for f in manifest.features}
    for c in frame.columns:
        if c in kinds:
            continue
        dtype = frame[c].dtype
        if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
            kinds[c] = "integer"
        elif pd.api.types.is_float_dtype(dtype):
            kinds[c] = "double"
        else:
            kinds[c] = "string"
    return kinds


def serialize(frame, kinds: dict[str, str]) -> list[bytes]:
    """Rows as serialized tf.Example (tfx-bsl's C++ coder)."""
    import pyarrow as pa
    from tfx_bsl.coders import example_coder

    cols = list(kinds)
    batch = pa.RecordBatch.from_arrays([_arrow_column(frame[c], kinds[c]) for c in cols], cols)
    return example_coder.RecordBatchToExamples(batch)


def write_examples(frame, manifest, out_dir: Path) -> Path:
    """``<out_dir>/eval/data_tfrecord-00000-of-00001.gz`` (gzipped TFRecord), rewritten whole."""
    return write_records(frame, column_kinds(frame, manifest), out_dir)


def write_records(frame, kinds: dict[str, str], out_dir: Path, split_dir: Path | None = None) -> Path:
    """The rows as tf.Example (``kinds``: column -> integer/double/string/bytes) in
    ``<split_dir>/data_tfrecord-00000-of-00001.gz`` (gzipped TFRecord; ``split_dir``
    defaults to ``<out_dir>/eval``), ``out_dir`` rewritten whole."""
    import shutil

    import tensorflow as tf

    out_dir = Path(out_dir)
    split_dir = Path(split_dir) if split_dir is not None else out_dir / "eval"
    shutil.rmtree(out_dir, ignore_errors=True)
    split_dir.mkdir(parents=True)
    path = split_dir / EXAMPLES_FILE
    records = serialize(frame, kinds)
    with tf.io.TFRecordWriter(str(path), options=tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for r in records:
            w.write(r)
    return path


# --------------------------------------------------------------------------- by task


@dataclass(frozen=True)
class EvalFrame:
    """A checked evaluation split: the run's line, the label column, the rows, how each
    column is written into the tf.Examples, and the manifest (tabular lines)."""

    line: str
    label: str
    frame: Any
    kinds: dict[str, str]
    manifest: Any = None


class BinaryInputs:
    """Tabular binary lines: the manifest's features and label (0/1)."""

    def load(self, run_dir: Path, settings: EvaluationSettings, spec) -> EvalFrame:
        manifest, frame = load_eval_frame(run_dir, settings)
        return EvalFrame(manifest.line, manifest.label, frame, column_kinds(frame, manifest), manifest)

    def counts(self, ev: EvalFrame, settings: EvaluationSettings, orders: dict[str, list[str]]):
        return slice_counts(ev.frame, ev.label, settings, orders)

    def overall(self, ev: EvalFrame) -> tuple[int, int | None]:
        """Rows and positives of the whole split."""
        return len(ev.frame), int(ev.frame[ev.label].sum())


IMAGE_COLUMNS = {"image_id": "string", "image": "bytes", "label": "integer"}


def classes_of(spec) -> list[int]:
    """The label's class ids, from the spec's label field."""
    [field] = [f for f in spec.schema.fields if f.name == spec.schema.label.name]
    return [int(c) for c in field.categories or []]


class MulticlassInputs:
    """Multi-class image lines (contract: image bytes, integer label, image_id)."""

    def load(self, run_dir: Path, settings: EvaluationSettings, spec) -> EvalFrame:
        from pipelines.catalog import records

        run_dir = Path(run_dir)
        try:
            raw = records.read_manifest_data(run_dir)
        except records.RecordError as err:
            raise GateInputError(f"{run_dir}: {err}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("line"), str):
            raise GateInputError(f"{layout.manifest_path(run_dir)}: not found or names no line")
        path, frame = _read_split(run_dir)
        label = spec.schema.label.name
        missing = [c for c in ("image_id", "image", label) if c not in frame.columns]
        if missing:
            raise GateInputError(f"{path}: column(s) {missing} are missing (columns: {list(frame.columns)})")
        y = frame[label]
        if y.isna().any():
            raise GateInputError(f"{path}: the label column {label!r} has {int(y.isna().sum())} missing values")
        classes = classes_of(spec)
        bad = sorted({str(v) for v in y.unique()} - {str(c) for c in classes})
        if bad:
            raise GateInputError(f"{path}: the label column {label!r} holds values that are not classes: {bad[:5]}")
        frame[label] = y.astype("int64")
        if len(frame) < settings.min_eval_examples:
            raise GateInputError(
                f"{path}: {len(frame)} rows, fewer than min_eval_examples={settings.min_eval_examples}"
            )
        for s in settings.slice_features:
            absent = [f for f in s if f not in frame.columns]
            if absent:
                raise GateInputError(f"{path}: slice {list(s)} needs column(s) {absent}, which are missing")
        kinds = {"image_id": "string", "image": "bytes", label: "integer"}
        sliced = {f for s in settings.slice_features for f in s} - set(kinds)
        kinds.update({c: k for c, k in column_kinds(frame[sorted(sliced)], _NoFeatures).items()})
        return EvalFrame(raw["line"], label, frame[list(kinds)], kinds)

    def counts(self, ev: EvalFrame, settings: EvaluationSettings, orders: dict[str, list[str]]):
        """Rows and rows of the smallest class of every slice value."""
        out: dict[str, dict[str, list[int]]] = {}
        for s in settings.slice_features:
            per_class = ev.frame.groupby([*s, ev.label], dropna=True).size()
            values: dict[tuple[str, ...], list[int]] = {}
            for key, n in per_class.items():
                key = tuple(str(k) for k in key[:-1])
                rows, smallest = values.get(key, [0, None])
                values[key] = [rows + int(n), int(n) if smallest is None else min(smallest, int(n))]

            def rank(key: tuple[str, ...], s=s) -> tuple:
                known = [orders.get(f) or [] for f in s]
                return tuple((k.index(v), "") if v in k else (len(k), v) for k, v in zip(known, key, strict=True))

            out[" x ".join(s)] = {SEP.join(k): values[k] for k in sorted(values, key=rank)}
        return out

    def overall(self, ev: EvalFrame) -> tuple[int, int | None]:
        return len(ev.frame), None


class _NoFeatures:
    features: tuple = ()


PARTS = {"binary_classification": BinaryInputs(), "multiclass_classification": MulticlassInputs()}
