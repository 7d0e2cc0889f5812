"""Drift on the image line: false alarms on same-distribution batches, power on shifts.

    .venv/airflow/bin/python -m bench.drift_images [--draws 50] [--rows 1000]

Real Fashion-MNIST training images (:mod:`bench.fashion`). A stand-in CNN (a few epochs
on ``--train-rows`` images, exported with the line's ``predict_features`` contract) is
trained once; a disjoint pool of ``--pool`` images and its darker, blurred and rotated
copies are scored once by the product's scorer (``pipelines.training.batch_predict``:
predicted class, confidence, embedding). Then ``--draws`` times the pool is split at
random: a reference half is profiled as the model's reference would be
(:func:`pipelines.monitoring.images.build_image_profile`, with held-out rows for the
reference accuracy), and a labelled batch of ``--rows`` rows from the other half is
scored (:func:`~pipelines.monitoring.images.score_image_batch`) with the fashion line's
``drift:`` settings, as it is (same distribution: every alarm is false) and shifted
(the same rows darker, blurred, rotated; and a batch of three classes only). Counted:
batch alarms and the features named. The embedding's summary is compared at several
numbers of principal components (the embedding features' alarms only). Results, with
the machine: ``bench/results/drift_images.json``.
"""

from __future__ import annotations

import argparse
import sys  # noqa: E402
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the clone's root first
from bench.fashion import SHIFTS, build_model, fashion_arrays, predict, write_images_parquet  # noqa: E402
from bench.machine import describe, host, write_results  # noqa: E402
from pipelines.monitoring.images import build_image_profile, pixel_statistics, score_image_batch  # noqa: E402
from pipelines.specs import load_spec  # noqa: E402
from pipelines.specs.drift import EMBEDDING_PREFIX  # noqa: E402

LINE = "fashion"
MIX_CLASSES = (1, 7, 8)  # Trouser, Sneaker, Bag
SCENARIOS = ("same", *SHIFTS, "class_mix")
COMPONENTS = (4, 8, 16)


def scored_pool(model: Path, images: np.ndarray, labels: np.ndarray, work: Path) -> dict[str, dict[str, Any]]:
    """Per variant (as is, and each shift): the statistics, embeddings and predicted classes."""
    variants = {"same": images, **{name: shift(images) for name, shift in SHIFTS.items()}}
    paths = [write_images_parquet(work / f"{name}.parquet", arr, labels) for name, arr in variants.items()]
    out = predict(model, paths, work / "predictions.parquet")
    n = len(images)
    scored = {}
    for i, (name, _arr) in enumerate(variants.items()):
        part = out.iloc[i * n:(i + 1) * n]
        png = pd.read_parquet(paths[i], columns=["image"])["image"]
        scored[name] = {
            "statistics": pixel_statistics(png),
            "embeddings": np.stack(part["embedding"].to_numpy()),
            "classes": part["class_id"].to_numpy(),
        }
    return scored


def _take(variant: dict[str, Any], rows: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    return (variant["statistics"].iloc[rows].reset_index(drop=True), variant["embeddings"][rows],
            variant["classes"][rows])


def run(draws: int, rows: int, pool: int, train_rows: int, epochs: int, seed: int = 0) -> dict[str, Any]:
    spec = load_spec(LINE)
    cfg = spec.drift
    classes = [str(c) for c in spec.schema.field(spec.schema.label.name).categories]
    images, labels = fashion_arrays("train")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    fit_rows, pool_rows = order[:train_rows], order[train_rows:train_rows + pool]
    with tempfile.TemporaryDirectory(prefix="drift-images-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        model = build_model(work / "model", fit_rows, epochs=epochs)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        scored = scored_pool(model, images[pool_rows], labels[pool_rows], work)
        predict_s = time.perf_counter() - t
    y = labels[pool_rows]
    accuracy = float((scored["same"]["classes"] == y).mean())
    mixed = np.flatnonzero(np.isin(y, MIX_CLASSES))
    alarms = {s: 0 for s in SCENARIOS}
    named: dict[str, Counter] = {s: Counter() for s in SCENARIOS}
    first: dict[str, Counter] = {s: Counter() for s in SCENARIOS}  # the most severe named feature
    embedding_alarms = {k: {s: 0 for s in SCENARIOS} for k in COMPONENTS}
    for draw in range(draws):
        half = rng.permutation(len(pool_rows))
        ref, rest = half[: len(half) // 2], half[len(half) // 2:]
        held_out, candidates = rest[:2000], rest[2000:]
        batch = rng.choice(candidates, size=rows, replace=False)
        mix_batch = rng.choice(np.intersect1d(candidates, mixed), size=rows, replace=False)
        for k in COMPONENTS:
            settings = cfg.model_copy(update={"embedding": cfg.embedding.model_copy(update={"components": k})})
            stats, emb, cls = _take(scored["same"], ref)
            profile = build_image_profile(
                stats, emb, cls, classes=classes, labels=y[ref],
                accuracy_on=(scored["same"]["classes"][held_out], y[held_out]), config=settings, meta={"draw": draw},
            )
            for scenario in SCENARIOS:
                variant = scored.get(scenario, scored["same"])
                picked = mix_batch if scenario == "class_mix" else batch
                stats, emb, cls = _take(variant, picked)
                report = score_image_batch(profile, stats, emb, cls, labels=y[picked], config=settings)
                names = {d["feature"] for d in report["drifted_features"]}
                embedding_alarms[k][scenario] += any(n.startswith(EMBEDDING_PREFIX) for n in names)
                if k == cfg.embedding.components:
                    alarms[scenario] += bool(report["drifted"])
                    named[scenario].update(names)
                    if report["drifted_features"]:
                        first[scenario][report["drifted_features"][0]["feature"]] += 1
                    if report["performance"].get("accuracy_drifted"):
                        named[scenario]["accuracy"] += 1
    return {
        "line": LINE,
        "draws": draws,
        "batch_rows": rows,
        "reference_rows": len(pool_rows) // 2,
        "stand_in_model": {"train_rows": train_rows, "epochs": epochs, "pool_accuracy": accuracy,
                           "train_seconds": train_s, "predict_seconds": predict_s},
        "shifts": {"darker": "pixels x 0.6", "blurred": "Gaussian blur, radius 1 (Pillow)",
                   "rotated": "25 degrees, bilinear, black fill", "class_mix": f"classes {list(MIX_CLASSES)} only"},
        "components": cfg.embedding.components,
        "alpha": cfg.alpha,
        "rates": {s: alarms[s] / draws for s in SCENARIOS},
        "alarms": alarms,
        "named": {s: dict(named[s].most_common()) for s in SCENARIOS},
        "most_severe": {s: dict(first[s].most_common()) for s in SCENARIOS},
        "embedding_components": {
            str(k): {s: embedding_alarms[k][s] / draws for s in SCENARIOS} for k in COMPONENTS
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=12000)
    parser.add_argument("--train-rows", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    machine = host()
    print(describe(machine))
    t = time.perf_counter()
    result = run(args.draws, args.rows, args.pool, args.train_rows, args.epochs)
    seconds = time.perf_counter() - t
    print(f"{LINE}: {args.draws} draws, batches of {args.rows:,} labelled rows against a reference of "
          f"{result['reference_rows']:,}; stand-in CNN accuracy {result['stand_in_model']['pool_accuracy']:.3f}")
    for s in SCENARIOS:
        named = ", ".join(f"{n} {c}" for n, c in sorted(result["named"][s].items()))
        worst = ", ".join(f"{n} {c}" for n, c in result["most_severe"][s].items())
        print(f"{s:<10} alarm rate {result['rates'][s]:>6.1%}   most severe: {worst}   named: {named}")
    print("embedding features alone, by principal components:")
    for k, rates in result["embedding_components"].items():
        print(f"  k={k:>2} " + "  ".join(f"{s} {r:.0%}" for s, r in rates.items()))
    out = write_results("drift_images", "python -m bench.drift_images", machine, seconds, result)
    print(f"{seconds:.0f} s; results: bench/results/{out.name}")


if __name__ == "__main__":
    main()
