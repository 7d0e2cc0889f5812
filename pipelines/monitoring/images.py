"""Drift on image lines: what stands for an image in a profile, and how a batch is scored.

An image is no feature to bucket; drift monitoring reads three kinds of evidence instead,
all numeric or categorical features of the ordinary machinery
(:mod:`~pipelines.monitoring.profile`, :mod:`~pipelines.monitoring.detection`):

- the per-image statistics the cleaner writes (``brightness``, ``contrast``,
  ``sharpness``; :data:`~pipelines.specs.drift.IMAGE_STATISTICS`): a darker camera or a
  blurred lens moves them, and the report names which;
- the model's embedding (the ``embedding`` output of its ``predict_features`` signature,
  the penultimate layer), projected on the first ``drift.embedding.components`` principal
  components of the reference embeddings: ``embedding_pc1``, ... . The projection (mean
  and components) is stored in the profile, so a batch is projected the same way. A
  change the statistics cannot see (rotated or otherwise different pictures) moves what
  the network sees;
- the predicted class (``__class__``, categorical): prediction drift, in place of a
  binary model's score.

Labelled batches add the accuracy rule (in place of the AUC's) and the label's class
mix (in place of the positive rate); see :mod:`~pipelines.monitoring.detection`.

The per-image statistics follow the cleaner's definitions (pixels scaled to [0, 1]:
mean, standard deviation, variance of the 4-neighbour 3x3 Laplacian over the 'valid'
region); :func:`pixel_statistics` computes them for rows that do not carry them (a
training run's shards hold the images only).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.monitoring.profile import ProfileError, build_profile
from pipelines.specs.drift import CLASS_FEATURE, IMAGE_STATISTICS, DriftSpec, drift_spec, embedding_features

if TYPE_CHECKING:
    import pandas as pd

MODALITY = "image"


def pixel_statistics_of(pixels: np.ndarray) -> tuple[float, float, float]:
    """Brightness, contrast and sharpness of one image's pixels: the cleaner's definition
    (:func:`pipelines.ingest.cleaning.images.statistics`), so the profile of a model's
    training images and the statistics columns of a cleaned batch measure the same thing."""
    from pipelines.ingest.cleaning.images import statistics

    return statistics(pixels)


def pixel_statistics(images: Iterable[bytes]) -> pd.DataFrame:
    """The per-image statistics of encoded images (PNG or any format Pillow reads)."""
    import pandas as pd
    from PIL import Image

    rows = []
    for data in images:
        with Image.open(io.BytesIO(data)) as im:
            rows.append(pixel_statistics_of(np.asarray(im.convert("L"))))
    return pd.DataFrame(rows, columns=list(IMAGE_STATISTICS), dtype="float64")


def fit_projection(embeddings: np.ndarray, components: int) -> dict[str, Any]:
    """The first ``components`` principal components of the reference embeddings (SVD of
    the centred matrix), each with the sign that makes its largest loading positive."""
    e = np.asarray(embeddings, dtype="float64")
    if e.ndim != 2 or len(e) < 2:
        raise ProfileError(f"embeddings must be a 2-d array of two or more rows, got shape {e.shape}")
    k = min(components, e.shape[1], len(e) - 1)
    mean = e.mean(axis=0)
    _, s, vt = np.linalg.svd(e - mean, full_matrices=False)
    vt = vt[:k]
    vt *= np.where(vt[np.arange(k), np.abs(vt).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    variance = s**2
    return {
        "method": "pca",
        "dim": int(e.shape[1]),
        "mean": [float(v) for v in mean],
        "components": [[float(v) for v in row] for row in vt],
        "explained_variance_ratio": [float(v) for v in variance[:k] / variance.sum()] if variance.sum() else [0.0] * k,
    }


def project(projection: dict[str, Any], embeddings: np.ndarray) -> np.ndarray:
    """Embeddings on the profile's components, shape ``[N, k]``."""
    e = np.asarray(embeddings, dtype="float64")
    if e.ndim != 2 or e.shape[1] != projection["dim"]:
        raise ProfileError(f"embeddings of shape {e.shape} do not fit the profile's projection "
                           f"(dimension {projection['dim']})")
    return (e - np.asarray(projection["mean"])) @ np.asarray(projection["components"]).T


def feature_frame(
    statistics: pd.DataFrame, embeddings: np.ndarray | None, classes: Sequence[Any] | None, projection: dict[str, Any]
) -> pd.DataFrame:
    """What a profile compares for image rows: the statistics, the embedding's components
    and the predicted class. Without embeddings (or classes) those columns are absent:
    the embedding's components then read as missing features, the class as no prediction."""
    import pandas as pd

    missing = [c for c in IMAGE_STATISTICS if c not in statistics.columns]
    if missing:
        raise ProfileError(f"the image rows lack the statistics {missing}")
    out = statistics[list(IMAGE_STATISTICS)].reset_index(drop=True).astype("float64")
    if embeddings is not None:
        if len(embeddings) != len(out):
            raise ProfileError(f"{len(embeddings)} embeddings for {len(out)} images")
        names = embedding_features(len(projection["components"]))
        out = pd.concat([out, pd.DataFrame(project(projection, embeddings), columns=names)], axis=1)
    if classes is not None:
        if len(classes) != len(out):
            raise ProfileError(f"{len(classes)} predicted classes for {len(out)} images")
        out[CLASS_FEATURE] = [str(c) for c in classes]
    return out


def declared_features(classes: Sequence[Any], components: int) -> list[dict[str, Any]]:
    return [
        *({"name": n, "kind": "numeric"} for n in IMAGE_STATISTICS),
        *({"name": n, "kind": "numeric"} for n in embedding_features(components)),
        {"name": CLASS_FEATURE, "kind": "categorical", "categories": [str(c) for c in classes]},
    ]


def build_image_profile(
    statistics: pd.DataFrame,
    embeddings: np.ndarray,
    predicted: Sequence[Any],
    *,
    classes: Sequence[Any],
    labels: Sequence[Any] | None = None,
    accuracy_on: tuple[Sequence[Any], Sequence[Any]] | None = None,
    config: DriftSpec | dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The reference profile of an image model's training rows.

    ``statistics``: the per-image statistics; ``embeddings`` ``[N, D]`` and ``predicted``
    (class ids) the model's outputs on the same rows; ``classes``: the label's categories.
    ``labels`` give the reference class mix; ``accuracy_on`` = ``(predicted, labels)`` of
    held-out rows gives the reference accuracy (on the training rows themselves it reads
    optimistic, and every honest batch would look like a drop).
    """
    cfg = drift_spec(config)
    projection = fit_projection(embeddings, cfg.embedding.components)
    frame = feature_frame(statistics, embeddings, predicted, projection)
    declared = declared_features(classes, len(projection["components"]))
    profile = build_profile(frame, declared, config=cfg, meta=meta)
    profile["modality"] = MODALITY
    profile["projection"] = projection
    names = [str(c) for c in classes]
    performance: dict[str, Any] = {"metric": "accuracy", "classes": names, "accuracy": None}
    if labels is not None:
        keys = [str(v) for v in labels if v is not None and not (isinstance(v, float) and np.isnan(v))]
        performance["label_counts"] = {c: sum(1 for k in keys if k == c) for c in names}
        performance["labelled_rows"] = len(keys)
    if accuracy_on is not None:
        pred, truth = (np.asarray([str(v) for v in a]) for a in accuracy_on)
        if len(pred) != len(truth) or not len(pred):
            raise ProfileError("accuracy_on: predictions and labels of the same, non-zero length")
        performance.update(accuracy=float((pred == truth).mean()), n=int(len(pred)))
    profile["performance"] = performance
    return profile


def score_image_batch(
    profile: dict[str, Any],
    statistics: pd.DataFrame,
    embeddings: np.ndarray | None,
    predicted: Sequence[Any] | None,
    *,
    labels: Sequence[Any] | None = None,
    config: DriftSpec | dict[str, Any] | None = None,
    batch_id: str | None = None,
) -> dict[str, Any]:
    """Score an image batch against an image profile (see :func:`score_batch`)."""
    from pipelines.monitoring.detection import score_batch

    if profile.get("modality") != MODALITY or "projection" not in profile:
        raise ProfileError("not an image profile (no embedding projection)")
    frame = feature_frame(statistics, embeddings, predicted, profile["projection"])
    if labels is not None:
        import pandas as pd

        labels = [None if pd.isna(v) else v for v in labels]
    return score_batch(profile, frame, labels=labels, config=config,
                       batch_id=batch_id)
