"""Score Parquet files with an exported model: ``python -m pipelines.training.batch_predict``.

Runs in the ML environment. Reads the model's info (``assets.extra/factory_model.json``)
and scores by the model's ``modality`` (a table, :data:`PREDICTORS`), in input row order:

- ``tabular``: feeds the raw feature columns to ``predict_features`` in chunks and writes
  one column ``score`` (the positive-class probability);
- ``image``: feeds the encoded images (the image field, PNG bytes) to
  ``predict_features(image=...)`` and writes ``class_id`` (int64, the predicted class's
  index), ``confidence`` (its probability) and ``embedding`` (list of float32, the
  penultimate layer drift monitoring reads).

::

    python -m pipelines.training.batch_predict --model DIR --output scores.parquet a.parquet b.parquet

Used for the reference profile of a trained model (scores on its training data)
and by the drift monitor (scores of the serving model on a new batch). Exits 2 with
one line on stderr when the input cannot be scored (a missing feature column, a
missing value, a model without the signature).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipelines.catalog.layout import MODEL_INFO
from pipelines.catalog.records import read_model_info

CHUNK = 65536


class ScoreError(ValueError):
    """The input cannot be scored; the message says why."""


def _info(model_dir: Path) -> dict:
    info = read_model_info(model_dir)
    if info is None:
        raise ScoreError(f"{model_dir}: not a factory model ({MODEL_INFO} is missing)")
    return info


def _predict_signature(model_dir: Path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model_dir))
    if "predict_features" not in loaded.signatures:
        raise ScoreError(f"{model_dir}: the model has no predict_features signature")
    return loaded, loaded.signatures["predict_features"]


def score_files(model_dir: Path, inputs: list[Path]) -> list[float]:
    """Positive-class probabilities of a tabular model (the ``score`` column)."""
    return _score_tabular(model_dir, _info(model_dir), inputs)["score"]


def predict_files(model_dir: Path, inputs: list[Path]) -> dict[str, list]:
    """The output columns for the model's modality, in input row order."""
    info = _info(model_dir)
    modality = info.get("modality", "tabular")
    if modality not in PREDICTORS:
        raise ScoreError(f"{model_dir}: modality {modality!r} is not one this scorer knows")
    return PREDICTORS[modality](model_dir, info, inputs)


def _score_tabular(model_dir: Path, info: dict, inputs: list[Path]) -> dict[str, list]:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import pandas as pd

    features = info["features"]
    frames = [pd.read_parquet(p) for p in inputs]
    for path, frame in zip(inputs, frames, strict=True):
        missing = [f["name"] for f in features if f["name"] not in frame.columns]
        if missing:
            raise ScoreError(f"{path}: feature column(s) {missing} are missing")
        gaps = [f["name"] for f in features if frame[f["name"]].isna().any()]
        if gaps:
            raise ScoreError(f"{path}: feature column(s) {gaps} have missing values")
    if not frames or sum(len(f) for f in frames) == 0:
        return {"score": []}
    data = pd.concat(frames, ignore_index=True)

    import tensorflow as tf

    _loaded, predict = _predict_signature(model_dir)
    dtypes = {"integer": np.int64, "double": np.float32}
    out: list[np.ndarray] = []
    for start in range(0, len(data), CHUNK):
        chunk = data.iloc[start : start + CHUNK]
        tensors = {}
        for f in features:
            col = chunk[f["name"]]
            if f["type"] == "string":
                tensors[f["name"]] = tf.constant(col.astype(str).to_numpy(dtype=object))
            else:
                tensors[f["name"]] = tf.constant(col.to_numpy().astype(dtypes[f["type"]]))
        out.append(predict(**tensors)["probabilities"].numpy().reshape(-1))
    return {"score": np.concatenate(out).astype(float).tolist()}


def _image_field(info: dict) -> str:
    return next((f["name"] for f in info.get("features") or [] if f.get("type") == "image"), "image")


def _predict_images(model_dir: Path, info: dict, inputs: list[Path]) -> dict[str, list]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import pyarrow.parquet as pq

    field = _image_field(info)
    columns = []
    for path in inputs:
        table = pq.read_table(path)
        if field not in table.column_names:
            raise ScoreError(f"{path}: the image column {field!r} is missing")
        column = table.column(field).to_pylist()
        if any(v is None for v in column):
            raise ScoreError(f"{path}: the image column {field!r} has missing values")
        columns.extend(column)
    out: dict[str, list] = {"class_id": [], "confidence": [], "embedding": []}
    if not columns:
        return out

    import tensorflow as tf

    _loaded, predict = _predict_signature(model_dir)
    chunk = 4096  # images decode inside the model: a smaller chunk than the tabular rows'
    for start in range(0, len(columns), chunk):
        result = predict(image=tf.constant(columns[start : start + chunk], dtype=tf.string))
        if "embedding" not in result:
            raise ScoreError(f"{model_dir}: predict_features has no embedding output")
        probabilities = result["probabilities"].numpy()
        out["class_id"].extend(result["class_ids"].numpy().reshape(-1).astype(int).tolist())
        out["confidence"].extend(probabilities.max(axis=1).astype(float).tolist())
        out["embedding"].extend(np.asarray(result["embedding"].numpy(), dtype=np.float32))
    return out


# how a model is scored, by the modality in its model info
PREDICTORS = {"tabular": _score_tabular, "image": _predict_images}

ARROW_TYPES = {"score": "float64", "class_id": "int64", "confidence": "float64", "embedding": "list<float32>"}


def _arrow(name: str, values: list):
    import pyarrow as pa

    kind = ARROW_TYPES[name]
    if kind == "list<float32>":
        return pa.array([v.tolist() if hasattr(v, "tolist") else v for v in values], type=pa.list_(pa.float32()))
    return pa.array(values, type=getattr(pa, kind)())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipelines.training.batch_predict")
    parser.add_argument("--model", required=True, type=Path, help="the SavedModel directory")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("inputs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        columns = predict_files(args.model, args.inputs)
    except (ScoreError, OSError) as err:
        sys.stderr.write(f"factory-score: error: {err}\n")
        return 2
    import pyarrow as pa
    import pyarrow.parquet as pq

    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    pq.write_table(pa.table({name: _arrow(name, values) for name, values in columns.items()}), tmp)
    tmp.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
