"""Drift on the image line, on real Fashion-MNIST images: the profile, the features an
image line monitors (validated by modality), each shift named by the feature it moves,
and no alarm on a batch of the same distribution.

These are unit tests of the drift mechanics with a small contract-conforming model: a
small CNN trained for a few steps on real images and exported with the line's
``predict_features`` contract (:mod:`bench.fashion`); its predictions come from the
product's scorer, ``pipelines.training.batch_predict``, in the ML environment. Drift on a
model the line's own training made, scored by the monitor stage, is covered by
``tests/test_image_line.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bench.fashion import (
    SHIFTS,
    blurred,
    build_model,
    darker,
    encode_png,
    fashion_arrays,
    predict,
    write_images_parquet,
)
from pipelines.config import include_dir
from pipelines.monitoring.images import build_image_profile, pixel_statistics, score_image_batch
from pipelines.monitoring.profile import load_profile, save_profile
from pipelines.specs import SpecError, load_spec, parse_spec
from pipelines.specs.drift import CLASS_FEATURE, EMBEDDING_PREFIX, IMAGE_STATISTICS, LABEL_FEATURE

MIX_CLASSES = (1, 7, 8)


def _fashion_with_drift(features: dict, embedding: dict | None = None) -> dict:
    data = yaml.safe_load((include_dir() / "lines" / "fashion.yaml").read_text())
    data["drift"] = {**data.get("drift", {}), "features": features}
    if embedding is not None:
        data["drift"]["embedding"] = embedding
    return data


def test_drift_features_of_an_image_line_are_its_statistics_and_embedding_components():
    ok = parse_spec(_fashion_with_drift({"brightness": {"psi": 0.1}, "embedding_pc8": {"ignore": True}}),
                    Path("fashion.yaml"))
    assert ok.drift.thresholds_for("brightness")["psi"] == 0.1
    assert ok.drift.ignored("embedding_pc8")
    for wrong in ("image", "embedding_pc9", "AGEP"):
        with pytest.raises(SpecError, match=f"drift.features.*{wrong}.*not monitored features of a image line"):
            parse_spec(_fashion_with_drift({wrong: {"psi": 0.1}}), Path("fashion.yaml"))
    # more components: more names
    parse_spec(_fashion_with_drift({"embedding_pc9": {"psi": 0.3}}, {"components": 12}), Path("fashion.yaml"))
    # the prediction's thresholds live under prediction:, for the class as for the score
    with pytest.raises(SpecError, match="prediction"):
        parse_spec(_fashion_with_drift({CLASS_FEATURE: {"psi": 0.1}}), Path("fashion.yaml"))
    # a tabular line does not monitor image statistics
    data = yaml.safe_load((include_dir() / "lines" / "employment.yaml").read_text())
    data["drift"]["features"] = {"brightness": {"psi": 0.1}}
    with pytest.raises(SpecError, match="brightness.*not monitored features of a tabular line"):
        parse_spec(data, Path("employment.yaml"))
    spec = load_spec("fashion")
    assert spec.drift.embedding.components == 8
    assert spec.drift.thresholds_for(CLASS_FEATURE)["linf"] == 0.1


def test_pixel_statistics_of_real_images_follow_the_shifts():
    images, _ = fashion_arrays("train")
    sample = images[:300]
    stats = pixel_statistics(encode_png(sample))
    assert list(stats.columns) == list(IMAGE_STATISTICS)
    np.testing.assert_allclose(stats["brightness"], sample.reshape(300, -1).mean(axis=1) / 255, rtol=1e-12)
    np.testing.assert_allclose(stats["contrast"], sample.reshape(300, -1).std(axis=1) / 255, rtol=1e-12)
    dark = pixel_statistics(encode_png(darker(sample)))
    np.testing.assert_allclose(dark["brightness"] / stats["brightness"], 0.6, atol=0.01)
    blur = pixel_statistics(encode_png(blurred(sample)))
    assert (blur["sharpness"] < stats["sharpness"]).all()


# -- with a model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict:
    """Reference, held-out and batch rows of real images, shifted copies of the batch and
    a three-class batch, all scored by the stand-in CNN through batch_predict."""
    work = tmp_path_factory.mktemp("drift-images")
    images, labels = fashion_arrays("train")
    order = np.random.default_rng(7).permutation(len(images))
    model = build_model(work / "model", order[:3000], epochs=2)
    pool = order[3000:13000]
    mix = pool[np.isin(labels[pool], MIX_CLASSES)][:1000]
    parts = {"reference": pool[:3000], "held_out": pool[3000:4000], "batch": pool[4000:5000], "class_mix": mix}
    arrays = {name: images[rows] for name, rows in parts.items()}
    arrays.update({name: shift(images[parts["batch"]]) for name, shift in SHIFTS.items()})
    rows = {**parts, **dict.fromkeys(SHIFTS, parts["batch"])}
    paths = {n: write_images_parquet(work / f"{n}.parquet", a, labels[rows[n]]) for n, a in arrays.items()}
    out = predict(model, list(paths.values()), work / "predictions.parquet")
    result, start = {}, 0
    for name, path in paths.items():
        n = len(arrays[name])
        part = out.iloc[start:start + n]
        start += n
        result[name] = {
            "statistics": pixel_statistics(pd.read_parquet(path, columns=["image"])["image"]),
            "embeddings": np.stack(part["embedding"].to_numpy()),
            "classes": part["class_id"].to_numpy(),
            "confidence": part["confidence"].to_numpy(),
            "labels": labels[rows[name]],
        }
    assert start == len(out)
    return result


@pytest.fixture(scope="module")
def profile(scored) -> dict:
    spec = load_spec("fashion")
    ref, held = scored["reference"], scored["held_out"]
    return build_image_profile(
        ref["statistics"], ref["embeddings"], ref["classes"],
        classes=spec.schema.field("label").categories, labels=ref["labels"],
        accuracy_on=(held["classes"], held["labels"]), config=spec.drift, meta={"line": "fashion"},
    )


def _score(profile, part, labelled=True):
    return score_image_batch(profile, part["statistics"], part["embeddings"], part["classes"],
                             labels=part["labels"] if labelled else None, config=load_spec("fashion").drift)


@pytest.mark.integration
def test_image_profile_from_real_images(scored, profile, tmp_path):
    ref = scored["reference"]
    assert ref["embeddings"].shape == (3000, 64) and ref["embeddings"].dtype == np.float32
    assert ((ref["confidence"] > 0) & (ref["confidence"] <= 1)).all()
    names = [*IMAGE_STATISTICS, *(f"{EMBEDDING_PREFIX}{i}" for i in range(1, 9)), CLASS_FEATURE]
    assert list(profile["features"]) == names
    assert profile["features"][CLASS_FEATURE]["categories"] == [str(c) for c in range(10)]
    assert len(profile["projection"]["components"]) == 8 and profile["projection"]["dim"] == 64
    explained = profile["projection"]["explained_variance_ratio"]
    assert explained == sorted(explained, reverse=True) and 0 < sum(explained) <= 1
    perf = profile["performance"]
    assert perf["metric"] == "accuracy" and 0.6 < perf["accuracy"] < 1 and perf["n"] == 1000
    assert sum(perf["label_counts"].values()) == 3000
    # the profile is strict JSON and reads back whole
    assert load_profile(save_profile(profile, tmp_path)) == profile


@pytest.mark.integration
def test_a_same_distribution_batch_does_not_alarm(scored, profile):
    report = _score(profile, scored["batch"])
    assert not report["drifted"], report["drifted_features"]
    assert report["performance"]["tests"] == 1 and not report["performance"]["accuracy_drifted"]
    assert report["tests"] == 2 * 11 + 1 + 1  # KS and chi-square per numeric feature, the class, the accuracy


@pytest.mark.integration
@pytest.mark.parametrize("shift,named", [
    ("darker", "brightness"),
    ("blurred", "sharpness"),
    ("rotated", EMBEDDING_PREFIX),
])
def test_each_shift_is_named_by_the_feature_it_moves(scored, profile, shift, named):
    report = _score(profile, scored[shift])
    features = [d["feature"] for d in report["drifted_features"]]
    assert report["drifted"]
    assert any(f.startswith(named) for f in features), features
    if shift == "rotated":  # a rotation keeps the pixel statistics' distribution close: the embedding sees it
        assert "brightness" not in features


@pytest.mark.integration
def test_a_changed_class_mix_is_prediction_and_label_drift(scored, profile):
    report = _score(profile, scored["class_mix"])
    features = [d["feature"] for d in report["drifted_features"]]
    assert CLASS_FEATURE in features and LABEL_FEATURE in features
    assert report["prediction_drift"]
    assert report["performance"]["label_mix_class"] in {str(c) for c in MIX_CLASSES} | set(map(str, range(10)))
    # unlabelled, the predicted classes alone still see it
    unlabelled = _score(profile, scored["class_mix"], labelled=False)
    assert CLASS_FEATURE in [d["feature"] for d in unlabelled["drifted_features"]]
    assert unlabelled["performance"] is None
