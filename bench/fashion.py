"""Fashion-MNIST for the image line's drift tests and benchmarks: the real images, shifted
copies of them, and a small CNN that meets the exported model's contract.

The images are the Debian package's IDX files (nothing is downloaded). The shifts are
what a camera or a catalogue can do to arriving photos:

- ``darker``: pixel values times 0.6 (an underexposed camera);
- ``blurred``: a Gaussian blur (Pillow, radius 1; an out-of-focus lens);
- ``rotated``: turned by 25 degrees (a tilted mount), background filled black;
- a changed class mix (only some garments arrive) is a choice of rows, not a transform.

:func:`train_small_cnn` (ML environment; a subprocess of :func:`build_model`) trains a
small CNN for a few steps on real images and exports it as the line's SavedModel
would be: ``serving_default`` on tf.Examples, ``predict_features`` on PNG bytes with
``probabilities``, ``class_ids`` and ``embedding`` (the penultimate layer), and the
model info with the image fields. It stands in for the line's trained CNN.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

DATA = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
SHAPE = (28, 28, 1)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 28, 28] uint8, labels [N] int64)`` of ``train`` or ``t10k``."""
    return _idx(DATA / f"{split}-images-idx3-ubyte.gz"), _idx(DATA / f"{split}-labels-idx1-ubyte.gz").astype("int64")


def darker(images: np.ndarray, factor: float = 0.6) -> np.ndarray:
    return np.clip(np.rint(images.astype("float64") * factor), 0, 255).astype(np.uint8)


def _each(images: np.ndarray, change) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(change(Image.fromarray(im, mode="L"))) for im in images])


def blurred(images: np.ndarray, radius: float = 1.0) -> np.ndarray:
    from PIL import ImageFilter

    return _each(images, lambda im: im.filter(ImageFilter.GaussianBlur(radius)))


def rotated(images: np.ndarray, degrees: float = 25.0) -> np.ndarray:
    from PIL import Image

    return _each(images, lambda im: im.rotate(degrees, resample=Image.BILINEAR, fillcolor=0))


SHIFTS = {"darker": darker, "blurred": blurred, "rotated": rotated}


def encode_png(images: np.ndarray) -> list[bytes]:
    """8-bit grayscale PNGs, as the source writes them."""
    from PIL import Image

    out = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im, mode="L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def write_images_parquet(path: Path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """A Parquet file of rows ``image_id``, ``image`` (PNG bytes), ``label``: the columns a
    cleaned batch and a training shard share."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "image_id": [f"img-{i:05d}" for i in range(len(images))],
        "image": pa.array(encode_png(images), type=pa.binary()),
        "label": pa.array(None if labels is None else labels.tolist(), type=pa.int64())
        if labels is not None else pa.nulls(len(images), type=pa.int64()),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


# -- the stand-in model (ML environment) ---------------------------------------------------


def train_small_cnn(out: Path, rows: np.ndarray, epochs: int, dense_units: int, seed: int) -> Path:
    """Train on the training images ``rows`` and export to ``out`` (see the module doc)."""
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf_keras as keras

    from pipelines.catalog.records import write_model_info

    tf.random.set_seed(seed)
    images, labels = fashion_arrays("train")
    x = images[rows][..., None].astype("float32") / 255.0
    y = labels[rows]
    inputs = keras.Input(SHAPE)
    h = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    embedding = keras.layers.Dense(dense_units, activation="relu", name="embedding")(h)
    logits = keras.layers.Dense(len(CLASS_NAMES), name="logits")(embedding)
    model = keras.Model(inputs, [logits, embedding])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=[keras.losses.SparseCategoricalCrossentropy(from_logits=True), None])
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=0, shuffle=True)

    def decode(png):
        pixels = tf.map_fn(lambda b: tf.io.decode_png(b, channels=1), png,
                           fn_output_signature=tf.TensorSpec(SHAPE, tf.uint8))
        return tf.cast(pixels, tf.float32) / 255.0

    def outputs(png, with_embedding):
        logit, emb = model(decode(png), training=False)
        probabilities = tf.nn.softmax(logit)
        out = {"probabilities": probabilities, "class_ids": tf.argmax(probabilities, axis=1, output_type=tf.int64)}
        if with_embedding:
            out["embedding"] = emb
        return out

    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve(examples):
        parsed = tf.io.parse_example(examples, {"image": tf.io.FixedLenFeature([], tf.string)})
        return outputs(parsed["image"], False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image")], autograph=False)
    def predict_features(image):
        return outputs(image, True)

    module.serve, module.predict_features = serve, predict_features
    out = Path(out)
    tf.saved_model.save(module, str(out), signatures={"serving_default": serve, "predict_features": predict_features})
    write_model_info(out, {
        "line": "fashion", "modality": "image", "task": "multiclass_classification",
        "classes": list(range(len(CLASS_NAMES))), "class_names": CLASS_NAMES, "image_shape": list(SHAPE),
        "embedding_dim": dense_units, "features": [{"name": "image", "type": "image"}],
        "label": {"name": "label"}, "key": ["image_id"], "trained_rows": int(len(rows)), "epochs": epochs,
    })
    return out


def build_model(out: Path, rows: np.ndarray, epochs: int = 1, dense_units: int = 64, seed: int = 0) -> Path:
    """Train and export the stand-in CNN in the ML environment (a subprocess)."""
    from pipelines.config import REPO_ROOT, ml_python
    from pipelines.training.launch import worker_environment

    out = Path(out)
    rows_file = out.parent / f"{out.name}.rows.json"
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    rows_file.write_text(json.dumps([int(r) for r in rows]))
    cmd = [str(ml_python()), "-m", "bench.fashion", "--output", str(out), "--rows", str(rows_file),
           "--epochs", str(epochs), "--dense-units", str(dense_units), "--seed", str(seed)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=worker_environment(), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"training the stand-in CNN failed:\n{done.stderr[-3000:]}")
    return out


def predict(model: Path, inputs: list[Path], output: Path) -> pd.DataFrame:
    """The product's scorer (``pipelines.training.batch_predict``) on ``inputs``."""
    import pandas as pd

    from pipelines.config import REPO_ROOT, ml_python
    from pipelines.training.launch import worker_environment

    cmd = [str(ml_python()), "-m", "pipelines.training.batch_predict", "--model", str(model), "--output",
           str(output), *map(str, inputs)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=worker_environment(), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"batch_predict failed:\n{done.stderr[-3000:]}")
    return pd.read_parquet(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train and export the stand-in fashion CNN")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--rows", type=Path, required=True, help="JSON list of training-image indices")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dense-units", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = np.asarray(json.loads(args.rows.read_text()), dtype="int64")
    train_small_cnn(args.output, rows, args.epochs, args.dense_units, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
