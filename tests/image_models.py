"""A stand-in for the image line's training output, for the gate's tests (ML environment).

    python tests/image_models.py RUN_DIR --train N --eval N --steps N [--seed S]

Reads real Fashion-MNIST images from the Debian package's IDX files (numpy), writes a
training run folder as the image line's training does (contract 3 and 4):
``data/eval.parquet`` (``image_id``, ``image`` PNG bytes, ``label`` int64; the first
``--eval`` images of the t10k set), ``manifest.json`` and ``model/Format-Serving``: a
small Keras CNN trained ``--steps`` steps on the first ``--train`` training images,
exported with exactly the contract's signatures (``serving_default(examples)`` ->
``probabilities``, ``class_ids``; ``predict_features(image)`` -> those and ``embedding``),
decoding the PNG inside the model. Fewer steps: a worse model.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FASHION = Path("/usr/share/datasets/fashion-mnist")
LINE = "fashion"
DENSE = 32
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]


def read_idx(split: str, n: int):
    """(images uint8 [n, 28, 28], labels uint8 [n]) of ``train`` or ``t10k``."""
    import numpy as np

    with gzip.open(FASHION / f"{split}-images-idx3-ubyte.gz") as fh:
        raw = fh.read()
    count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)[:n]
    with gzip.open(FASHION / f"{split}-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)[:n]
    return images, labels


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--eval", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf
    import tf_keras as keras

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipelines.catalog import layout, records

    run = args.run_dir
    tf.keras.utils.set_random_seed(args.seed)
    x_eval, y_eval = read_idx("t10k", args.eval)
    pngs = [tf.io.encode_png(img[:, :, None]).numpy() for img in x_eval]
    layout.run_data_dir(run).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "image_id": pa.array([f"t10k-{i:05d}" for i in range(len(pngs))], pa.string()),
        "image": pa.array(pngs, pa.binary()),
        "label": pa.array(y_eval.astype("int64"), pa.int64()),
    }), layout.eval_data_path(run))
    records.write_manifest(run, {"line": LINE, "run_id": run.name, "modality": "image",
                                 "task": "multiclass_classification", "label": {"name": "label"},
                                 "rows": {"eval": len(pngs)}})

    x, y = read_idx("train", args.train)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    embedding = keras.layers.Dense(DENSE, activation="relu")(h)
    probabilities = keras.layers.Dense(10, activation="softmax")(embedding)
    model = keras.Model(inputs, [probabilities, embedding])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=["sparse_categorical_crossentropy", None])
    data = tf.data.Dataset.from_tensor_slices((x[..., None].astype("float32") / 255.0, y.astype("int64")))
    data = data.shuffle(len(x), seed=args.seed).repeat().batch(64)
    if args.steps:
        model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0)

    module = tf.Module()
    module.model = model

    def decode(png):
        return tf.cast(tf.io.decode_png(png, channels=1), tf.float32) / 255.0

    def run_model(images):
        pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec([28, 28, 1], tf.float32))
        probs, emb = module.model(pixels, training=False)
        return {"probabilities": probs, "class_ids": tf.argmax(probs, axis=1), "embedding": emb}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serving_default(examples):
        parsed = tf.io.parse_example(examples, {"image": tf.io.FixedLenFeature([], tf.string)})
        out = run_model(parsed["image"])
        return {"probabilities": out["probabilities"], "class_ids": out["class_ids"]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image")])
    def predict_features(image):
        return run_model(image)

    export = layout.exported_model(run)
    tf.saved_model.save(module, str(export), signatures={
        "serving_default": serving_default, "predict_features": predict_features})
    records.write_model_info(export, {
        "line": LINE, "run_id": run.name, "modality": "image", "task": "multiclass_classification",
        "classes": list(range(10)), "class_names": CLASS_NAMES, "image_shape": [28, 28, 1],
        "embedding_dim": DENSE, "label": {"name": "label"},
    })


if __name__ == "__main__":
    main(sys.argv[1:])
