"""Training the image line on real Fashion-MNIST images: the training stage's own prepare on
cleaned batches (PNG bytes in the cleaner's columns), then two Gloo workers under
``horovodrun`` train the spec's CNN for two epochs; the exported SavedModel keeps the image
line's contract (signatures, shapes, probabilities, class ids, embedding, model info), answers
like the in-memory model, and classifies far better than chance.

Without workers: what prepare writes for an image line (unlabelled rows left out and counted,
the eval batch held out whole, the rest split by the key hash) and what the manifest accepts.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from image_batches import available, clean_rows, write_clean_batch
from test_training_worker import HOROVODRUN, WORKERS, _hashes, _ml_python, run_workers

from pipelines.training.manifest import ManifestError, load_manifest, parse_manifest
from pipelines.training.prepare import TrainingInputError, prepare_run, split_bucket

LINE = "fashion"
TRAIN_IMAGES, TEST_IMAGES, UNLABELLED_EVERY = 2000, 500, 40

pytestmark = pytest.mark.skipif(not available(), reason="the dataset-fashion-mnist package is not installed")


def _batches(home, unlabelled_every: int = UNLABELLED_EVERY) -> None:
    write_clean_batch(home, LINE, "slice-1", clean_rows("train", 0, TRAIN_IMAGES, unlabelled_every))
    write_clean_batch(home, LINE, "test", clean_rows("t10k", 0, TEST_IMAGES))


def test_prepare_holds_out_the_eval_batch_and_leaves_out_unlabelled_rows(home, tmp_path):
    _batches(home)
    m = prepare_run(LINE, tmp_path / "run", {"workers": 2, "batch_size": 32}, home=home)
    unlabelled = TRAIN_IMAGES // UNLABELLED_EVERY
    assert m["rows"]["read"] == TRAIN_IMAGES + TEST_IMAGES and m["rows"]["unlabelled"] == unlabelled
    assert m["rows"]["eval"] == TEST_IMAGES
    assert m["rows"]["train"] + m["rows"]["validation"] == TRAIN_IMAGES - unlabelled
    data = tmp_path / "run" / "data"
    evaluation = pd.read_parquet(data / "eval.parquet")
    assert list(evaluation.columns) == ["image_id", "image", "label"]
    assert evaluation["image_id"].str.startswith("t10k-").all()  # the test batch, whole
    train = pd.concat(pd.read_parquet(p) for p in sorted((data / "train").glob("part-*.parquet")))
    validation = pd.read_parquet(data / "validation.parquet")
    assert not set(train["image_id"]) & set(validation["image_id"])
    assert (split_bucket(validation[["image_id"]]) < 10).all() and (split_bucket(train[["image_id"]]) >= 10).all()
    assert train["label"].dtype == "int64" and set(train["label"]) == set(range(10))
    assert train["image"].map(lambda b: bytes(b[:8]) == b"\x89PNG\r\n\x1a\n").all()

    manifest = load_manifest(tmp_path / "run")
    assert (manifest.modality, manifest.task, manifest.num_classes) == ("image", "multiclass_classification", 10)
    assert manifest.image.shape == (28, 28, 1) and manifest.class_names[0] == "T-shirt/top"
    assert manifest.model.kind == "cnn" and manifest.model.augmentation.horizontal_flip
    assert manifest.positive_weight == 1.0


def test_an_image_window_with_only_the_eval_batch_is_refused(home, tmp_path):
    write_clean_batch(home, LINE, "test", clean_rows("t10k", 0, 300))
    with pytest.raises(TrainingInputError, match="needs two or more classes"):
        prepare_run(LINE, tmp_path / "run", home=home)


def test_an_image_manifest_must_fit_its_model_and_task(home, tmp_path):
    _batches(home)
    good = prepare_run(LINE, tmp_path / "run", {"batch_size": 32}, home=home)
    for change, message in [
        ({"model": {**good["model"], "kind": "tabular_dnn"}}, "model: kind 'tabular_dnn' does not fit modality 'image'"),
        ({"label": {**good["label"], "classes": [0, 1]}}, "needs label.classes (three or more)"),
        ({"features": [{**good["features"][0], "shape": [28, 28]}]}, "needs a shape [height, width, channels]"),
    ]:
        with pytest.raises(ManifestError, match=re.escape(message)):
            parse_manifest({**json.loads(json.dumps(good)), **change})


# --------------------------------------------------------------------------- a real training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not HOROVODRUN.exists():
        pytest.skip(f"{HOROVODRUN} not installed")
    home, run_dir = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("train") / "run-1"
    _batches(home)
    manifest = prepare_run(LINE, run_dir, {"workers": WORKERS, "epochs": 2, "batch_size": 32}, home=home)
    done = run_workers(run_dir)
    assert done.returncode == 0, done.stdout[-6000:]
    return run_dir, manifest, done.stdout


CONTRACT = r"""
import json, sys
import numpy as np, pyarrow.parquet as pq, tensorflow as tf
from pipelines.training.model import check_export, serialize_examples
from pipelines.training.manifest import load_manifest
run = sys.argv[1]
m = load_manifest(run)
frame = pq.read_table(run + "/data/eval.parquet").to_pandas()
model = tf.saved_model.load(run + "/model/Format-Serving")
serve, features = model.signatures["serving_default"], model.signatures["predict_features"]
served = serve(examples=tf.constant(serialize_examples(frame, m)))
direct = features(image=tf.constant([bytes(b) for b in frame["image"]]))
p, ids, emb = served["probabilities"].numpy(), served["class_ids"].numpy(), direct["embedding"].numpy()
events = []
import glob
for path in glob.glob(run + "/tensorboard/events.*"):
    for e in tf.compat.v1.train.summary_iterator(path):
        events += [v.tag for v in e.summary.value]
print(json.dumps({
    "serving_inputs": sorted(serve.structured_input_signature[1]),
    "serving_outputs": sorted(serve.structured_outputs),
    "features_inputs": sorted(features.structured_input_signature[1]),
    "features_outputs": sorted(features.structured_outputs),
    "dtypes": [str(served["probabilities"].dtype.name), str(served["class_ids"].dtype.name),
               str(direct["embedding"].dtype.name)],
    "p_shape": list(p.shape), "emb_shape": list(emb.shape),
    "max_sum_error": float(abs(p.sum(axis=1) - 1).max()),
    "ids_are_argmax": bool((ids == p.argmax(axis=1)).all()),
    "same_from_both": float(abs(direct["probabilities"].numpy() - p).max()),
    "accuracy": float((ids == frame["label"].to_numpy()).mean()),
    "parity": check_export(run),
    "tensorboard": sorted(set(events)),
}))
"""


@pytest.fixture(scope="module")
def contract(trained) -> dict:
    run_dir, _, _ = trained
    return json.loads(_ml_python(CONTRACT, str(run_dir)).strip().splitlines()[-1])


@pytest.mark.integration
def test_both_ranks_train_one_multiclass_model(trained):
    run_dir, manifest, out = trained
    result = json.loads((run_dir / "result.json").read_text())
    assert result["task"] == "multiclass_classification" and result["epochs_run"] == 2
    assert 0 < result["val_accuracy"] <= 1 and "val_auc" not in result
    assert [set(h) >= {"loss", "val_loss", "val_accuracy"} for h in result["history"]] == [True, True]
    hashes = _hashes(out)
    assert sorted(hashes) == list(range(WORKERS)) and len(set(hashes.values())) == 1  # batch-norm statistics too
    assert hashes[0] == result["weights_sha256"]


@pytest.mark.integration
def test_the_export_keeps_the_image_contract(trained, contract):
    run_dir, manifest, _ = trained
    assert contract["serving_inputs"] == ["examples"]
    assert contract["serving_outputs"] == ["class_ids", "probabilities"]
    assert contract["features_inputs"] == ["image"]
    assert contract["features_outputs"] == ["class_ids", "embedding", "probabilities"]
    assert contract["dtypes"] == ["float32", "int64", "float32"]
    assert contract["p_shape"] == [TEST_IMAGES, 10]
    assert contract["emb_shape"] == [TEST_IMAGES, manifest["model"]["dense_units"]]
    assert contract["max_sum_error"] < 1e-5 and contract["ids_are_argmax"]
    assert contract["same_from_both"] < 1e-6
    info = json.loads((run_dir / "model" / "Format-Serving" / "assets.extra" / "factory_model.json").read_text())
    assert (info["modality"], info["task"], info["image_shape"]) == ("image", "multiclass_classification", [28, 28, 1])
    assert info["classes"] == list(range(10)) and info["class_names"][9] == "Ankle boot"
    assert info["embedding_dim"] == manifest["model"]["dense_units"]
    assert info["metrics"]["val_accuracy"] == json.loads((run_dir / "result.json").read_text())["val_accuracy"]


@pytest.mark.integration
def test_the_export_answers_like_the_trained_model_and_beats_chance(contract):
    assert contract["parity"] < 1e-5
    assert contract["accuracy"] > 0.5  # chance: 0.1 on ten classes


@pytest.mark.integration
def test_tensorboard_shows_training_images_and_the_confusion_matrix(contract):
    assert {"training_images", "validation_confusion_matrix", "val_accuracy"} <= set(contract["tensorboard"])
