"""The image model of a product line (``training.model.kind: cnn``), built from a run's manifest.

The same two parts as the tabular model (:mod:`pipelines.training.model`):

* the **preprocessor** (a ``tf.Module``): the encoded PNG bytes of the image feature ->
  ``{"image": [n, height, width, channels] float32}`` in [0, 1] (``tf.io.decode_png``, cast,
  / 255). The worker runs it in ``tf.data``; the export runs it inside the SavedModel, so
  a client sends the PNG file as it is.
* the **core** (a ``tf_keras`` functional model): one block per ``conv_filters`` entry (two
  3x3 convolutions, each with batch normalisation and ReLU, then 2x2 max pooling and dropout),
  then ``dense_units`` with batch normalisation and ReLU (the **embedding**, what drift
  monitoring reads), dropout, and one logit per class. It returns
  ``{"logits": [n, C], "embedding": [n, dense_units]}``.

The **augmenter** (Keras preprocessing layers, from the spec's ``augmentation``: horizontal
flip, translation, rotation, zoom) changes training images only; the worker applies it in the
input pipeline, after the preprocessor, and nothing else ever calls it.

The exported SavedModel (``Format-Serving``, a plain ``tf.Module``) has two signatures:
``serving_default(examples)``: serialized ``tf.Example`` with a bytes feature named after the
image field -> ``probabilities`` [n, C] float32 and ``class_ids`` [n] int64 (the argmax);
``predict_features(<image field>)``: the raw PNG bytes -> the same plus ``embedding``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.training.manifest import Manifest

# Batch normalisation's moving statistics follow the last ~10 batches (Keras' default, 0.99,
# follows ~100): a short run's exported model then normalises with its data's statistics,
# not with the initial ones.
BN_MOMENTUM = 0.9


def _tf():
    from pipelines.training.model import _tf as tf_and_keras

    return tf_and_keras()


def image_shape(manifest: Manifest) -> tuple[int, int, int]:
    height, width, channels = manifest.image.shape
    return height, width, channels


def decode_images(encoded, shape: tuple[int, int, int]):
    """A 1-D string tensor of PNG files -> [n, height, width, channels] float32 in [0, 1]. An
    image of another shape fails the call (the cleaner let only the spec's shape through)."""
    tf, _ = _tf()
    height, width, channels = shape

    def one(png):
        pixels = tf.io.decode_png(png, channels=channels, dtype=tf.uint8)
        return tf.ensure_shape(pixels, [height, width, channels])

    pixels = tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8))
    return tf.cast(pixels, tf.float32) / 255.0


@lru_cache(maxsize=1)
def _preprocessor_class():
    tf, _ = _tf()

    class ImagePreprocessor(tf.Module):
        """{<image field>: [n] PNG bytes} -> {"image": [n, h, w, c] float32 in [0, 1]}."""

        def __init__(self, manifest: Manifest):
            super().__init__(name="image_preprocessor")
            self._name = manifest.image.name
            self._shape = image_shape(manifest)

        def __call__(self, features):
            return {"image": decode_images(features[self._name], self._shape)}

    return ImagePreprocessor


def build_preprocessor(manifest: Manifest):
    return _preprocessor_class()(manifest)


def build_core(manifest: Manifest):
    """{"image": [n, h, w, c]} -> {"logits": [n, C], "embedding": [n, dense_units]}."""
    tf, keras = _tf()
    cfg, layers = manifest.model, keras.layers
    image = keras.Input(shape=image_shape(manifest), dtype=tf.float32, name="image")
    x = image
    for b, filters in enumerate(cfg.conv_filters):
        for c in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{b}_{c}")(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"conv{b}_{c}_bn")(x)
            x = layers.ReLU(name=f"conv{b}_{c}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"pool{b}")(x)
        if cfg.dropout > 0:
            x = layers.Dropout(cfg.dropout, name=f"pool{b}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(cfg.dense_units, use_bias=False, name="dense")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="dense_bn")(x)
    embedding = layers.ReLU(name="embedding")(x)
    x = layers.Dropout(cfg.dropout, name="embedding_dropout")(embedding) if cfg.dropout > 0 else embedding
    logits = layers.Dense(manifest.num_classes, name="logits")(x)
    return keras.Model({"image": image}, {"logits": logits, "embedding": embedding}, name="cnn")


def build_augmenter(manifest: Manifest):
    """A Keras model of the spec's random changes, or None when the spec asks for none."""
    _, keras = _tf()
    aug, layers = manifest.model.augmentation, keras.layers
    steps = []
    if aug.horizontal_flip:
        steps.append(layers.RandomFlip("horizontal", name="flip"))
    if aug.translate:
        steps.append(layers.RandomTranslation(aug.translate, aug.translate, fill_mode="constant", name="translate"))
    if aug.rotate_degrees:
        steps.append(layers.RandomRotation(aug.rotate_degrees / 360.0, fill_mode="constant", name="rotate"))
    if aug.zoom:
        steps.append(layers.RandomZoom(aug.zoom, fill_mode="constant", name="zoom"))
    if not steps:
        return None
    return keras.Sequential(steps, name="augmentation")


def probabilities(core, features) -> Any:
    """The class probabilities of preprocessed ``features`` (inference mode)."""
    tf, _ = _tf()
    return tf.nn.softmax(core(features, training=False)["logits"])


def export_saved_model(preprocessor, core, manifest: Manifest, model_root: Path, metrics: dict) -> Path:
    """Write ``<model_root>/Format-Serving`` (replacing it whole) and its ``assets.extra`` info."""
    from pipelines.training.model import save_module

    tf, _ = _tf()
    name = manifest.image.name
    spec = {name: tf.io.FixedLenFeature([], tf.string)}

    module = tf.Module()
    module.preprocessor = preprocessor
    module.core_variables = list(core.variables)

    def outputs(encoded):
        out = core(preprocessor({name: encoded}), training=False)
        probs = tf.nn.softmax(out["logits"])
        return {"probabilities": probs, "class_ids": tf.argmax(probs, axis=1, output_type=tf.int64),
                "embedding": out["embedding"]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve(examples):
        out = outputs(tf.io.parse_example(examples, spec)[name])
        return {"probabilities": out["probabilities"], "class_ids": out["class_ids"]}

    @tf.function(autograph=False)
    def predict_features(**features):
        return outputs(features[name])

    module.serve = serve
    module.predict_features = predict_features
    signatures = {"serving_default": serve.get_concrete_function(),
                  "predict_features": predict_features.get_concrete_function(
                      **{name: tf.TensorSpec([None], tf.string, name=name)})}
    return save_module(module, signatures, manifest, model_root, metrics)
