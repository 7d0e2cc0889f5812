"""Score Parquet files with an exported model: ``python -m pipelines.training.batch_predict``.

Runs in the ML environment. Reads the model's feature list from its
``assets.extra/factory_model.json``, feeds the raw columns to the model's
``predict_features`` signature in chunks, and writes one column ``score`` (the
positive-class probability) in input row order::

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


def _features(model_dir: Path) -> list[dict]:
    info = read_model_info(model_dir)
    if info is None:
        raise ScoreError(f"{model_dir}: not a factory model ({MODEL_INFO} is missing)")
    return info["features"]


def score_files(model_dir: Path, inputs: list[Path]) -> list[float]:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import pandas as pd

    features = _features(model_dir)
    frames = [pd.read_parquet(p) for p in inputs]
    for path, frame in zip(inputs, frames, strict=True):
        missing = [f["name"] for f in features if f["name"] not in frame.columns]
        if missing:
            raise ScoreError(f"{path}: feature column(s) {missing} are missing")
        gaps = [f["name"] for f in features if frame[f["name"]].isna().any()]
        if gaps:
            raise ScoreError(f"{path}: feature column(s) {gaps} have missing values")
    if not frames or sum(len(f) for f in frames) == 0:
        return []
    data = pd.concat(frames, ignore_index=True)

    import tensorflow as tf

    loaded = tf.saved_model.load(str(model_dir))
    if "predict_features" not in loaded.signatures:
        raise ScoreError(f"{model_dir}: the model has no predict_features signature")
    predict = loaded.signatures["predict_features"]
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
    return np.concatenate(out).astype(float).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipelines.training.batch_predict")
    parser.add_argument("--model", required=True, type=Path, help="the SavedModel directory")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("inputs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        scores = score_files(args.model, args.inputs)
    except (ScoreError, OSError) as err:
        sys.stderr.write(f"factory-score: error: {err}\n")
        return 2
    import pyarrow as pa
    import pyarrow.parquet as pq

    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    pq.write_table(pa.table({"score": pa.array(scores, type=pa.float64())}), tmp)
    tmp.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
