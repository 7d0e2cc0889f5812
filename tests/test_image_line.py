"""The image line end to end through its real parts, on a small slice of real Fashion-MNIST.

In a factory home of its own: 1,200 real training images with one bad file of every kind
and a 600-image holdout ``test`` batch are landed as archives, cleaned by the Spark job and
validated by the line's suite; prepare and two Horovod workers train the line's CNN for three
epochs (the training stage writes the reference profile, as the train DAG does); the gate
blesses the candidate and pushes version 1. Then a batch of real images made darker
(x0.6) is blocked by the suite, and a batch of mildly rotated images passes it; the monitor
scores both against the served model and names what moved. Last, the Model Factory view
shows the quarantined images with the cleaner's reasons, the gate's confusion matrix and
the misclassified images.

The unit-level tests of the gate (tests/test_evaluation_images.py) and of drift
(tests/test_drift_images.py) use a small model that keeps the export contract; this test is
the one on a model the line's own training made.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_image_cleaning import BAD_REASONS, bad_batch

from bench.fashion import darker, encode_png, fashion_arrays, rotated
from pipelines.catalog import layout, ledger, records
from pipelines.config import include_dir, ml_python
from pipelines.ingest import landing
from pipelines.ingest.sources import load_source
from pipelines.specs import load_spec
from pipelines.specs.drift import EMBEDDING_PREFIX

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (ml_python().parent / "horovodrun").exists(), reason="ML environment not set up"),
    pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed"),
]

LINE = "fashion"
TRAIN, HOLDOUT, SHIFTED = 1200, 600, 1200
# 3 epochs of 16-image batches on two workers: about 100 steps, enough to classify well above
# chance (2 epochs of 32: 34 steps, and a validation accuracy near 0.25)
EPOCHS = 3
# The slice is smaller than the line's production batches: the suite's row count and the
# gate's example counts are scaled down in a copy of include/; nothing else is changed.
EVALUATION = {
    "slices": ["label"],
    "thresholds": {"accuracy": {"min": 0.5, "max_drop": 0.01}},
    "slice_thresholds": {"min_examples": 30, "min_per_class": 30, "thresholds": {"accuracy": {"min": 0.05}}},
    "min_eval_examples": 500,
}


def _small_include(target: Path) -> Path:
    shutil.copytree(include_dir(), target)
    spec_path = target / "lines" / f"{LINE}.yaml"
    data = yaml.safe_load(spec_path.read_text())
    data["evaluation"] = EVALUATION
    data["ingest"]["min_rows"] = 500
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    suite_path = target / data["expectations"]
    suite = suite_path.read_text().replace('"min_value": 1000', '"min_value": 500')
    assert suite != suite_path.read_text()
    suite_path.write_text(suite)
    return target


def _frame(images: np.ndarray, labels: np.ndarray, first: int, prefix: str) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"{prefix}-{first + i:05d}" for i in range(len(images))],
                         "image": encode_png(images), "label": labels.astype("int64")})


def _ingest(batch_ids: list[str], home: Path) -> dict[str, str]:
    """The ingest DAG's work on landed batches: the Spark job, then the suite on each."""
    from pipelines.ingest.cleaning import job
    from pipelines.ingest.stage import ValidationFailed, validate_batch

    job.run(LINE, batch_ids, home)
    outcome = {}
    for batch_id in batch_ids:
        try:
            validate_batch(LINE, batch_id, home)
            outcome[batch_id] = "validated"
        except ValidationFailed:
            outcome[batch_id] = "blocked"
    return outcome


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    root = tmp_path_factory.mktemp("image-line")
    home = root / "factory"
    mp = pytest.MonkeyPatch()
    mp.setenv("FACTORY_HOME", str(home))
    mp.setenv("FACTORY_INCLUDE", str(_small_include(root / "include")))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        yield _run_the_line(home, root)
    finally:
        mp.undo()


def _run_the_line(home: Path, root: Path) -> dict:
    from pipelines.evaluation.stage import evaluate_and_push
    from pipelines.monitoring.stage import score_new_batches
    from pipelines.training import stage as training

    spec = load_spec(LINE)
    # landed through the source and landing code: a folder with bad files, the holdout
    train = load_source(spec).iloc[: TRAIN + 2].reset_index(drop=True)
    files = bad_batch(train, root / "drop", good=TRAIN)
    landing.land_file(spec, root / "drop", "slice-1", home)
    landing.land_frame(spec, load_source(spec, holdout="test").iloc[:HOLDOUT], "test", home)
    ingested = _ingest(["slice-1", "test"], home)

    prepared = training.prepare(LINE, "run-1", {"workers": 2, "epochs": EPOCHS, "batch_size": 16}, home=home)
    trained = training.train(LINE, prepared["run_dir"], home=home)
    gate = evaluate_and_push(LINE, trained["run_dir"], home=home)

    # new arrivals: real images the line has not seen, made darker / mildly rotated
    images, labels = fashion_arrays("train")
    start = TRAIN + 2
    dark = slice(start, start + SHIFTED)
    turned = slice(start + SHIFTED, start + 2 * SHIFTED)
    landing.land_frame(spec, _frame(darker(images[dark]), labels[dark], dark.start, "train"), "dark", home)
    landing.land_frame(spec, _frame(rotated(images[turned], 15.0), labels[turned], turned.start, "train"),
                       "rotated", home)
    arrivals = _ingest(["dark", "rotated"], home)
    scored = score_new_batches(LINE, ["dark", "rotated"], home)
    return {"home": home, "files": files, "ingested": ingested, "prepared": prepared, "trained": trained,
            "gate": gate, "arrivals": arrivals, "scored": scored}


def test_batches_are_cleaned_validated_and_the_line_trains_and_is_blessed(line):
    from pipelines.monitoring.stage import serving_model

    home = line["home"]
    paths = layout.line_paths(LINE, home)
    assert line["ingested"] == {"slice-1": "validated", "test": "validated"}
    report = ledger.read(paths, "slice-1")["cleaning"]
    assert report["rows_in"] == len(line["files"]) + 1 and report["rows_clean"] == TRAIN
    assert report["quarantine_reasons"] == BAD_REASONS and report["duplicates_removed"] == 1
    assert ledger.read(paths, "test")["cleaning"]["rows_clean"] == HOLDOUT

    rows = line["prepared"]["rows"]
    assert rows["eval"] == HOLDOUT and rows["train"] + rows["validation"] == TRAIN
    run_dir = Path(line["trained"]["run_dir"])
    assert records.read_training_result(run_dir).to_json()["epochs_run"] == EPOCHS
    assert 0 < line["trained"]["val_accuracy"] <= 1 and line["trained"]["val_auc"] is None
    from pipelines import tracking

    params = tracking.client(home).get_run(line["trained"]["mlflow_run_id"]).data.params
    assert {"conv_filters", "dense_units", "augmentation"} <= set(params) and "hidden_units" not in params
    assert layout.model_profile_path(layout.exported_model(run_dir)).exists()  # the reference profile

    gate = line["gate"]
    assert gate["blessing"] == "BLESSED", gate["why"]
    assert gate["pushed"] and gate["serving_version"] == 1
    assert serving_model(LINE, home) == (1, layout.serving_base(LINE, home) / "1")
    result = records.read_evaluation_result(run_dir).to_json()
    assert result["overall"]["example_count"] == HOLDOUT and result["overall"]["accuracy"] >= 0.5
    # the main job's summary of the line
    from pipelines.cli import _model_rows

    rows = _model_rows(LINE, home)
    assert rows[0].startswith("  model: val accuracy 0.") and f"{EPOCHS} epochs" in rows[0], rows
    assert rows[2].startswith("  evaluation: BLESSED") and "accuracy 0." in rows[2] and "class_" not in rows[2], rows


def test_a_darker_batch_is_blocked_and_shifted_batches_are_named_by_what_moved(line):
    assert line["arrivals"] == {"dark": "blocked", "rotated": "validated"}
    dark = ledger.read(layout.line_paths(LINE, line["home"]), "dark")
    failed = {(f["expectation"], f["column"]) for f in dark["validation"]["failed"]}
    assert ("expect_column_mean_to_be_between", "brightness") in failed

    scored = line["scored"]
    assert scored["status"] == "scored" and scored["model_version"] == 1
    by_batch = {s["batch_id"]: s for s in scored["batches"]}
    named = {b: [d["feature"] for d in records_for(line["home"], b)["drifted_features"]] for b in by_batch}
    assert by_batch["dark"]["drifted"] and {"brightness", "contrast"} <= set(named["dark"]), named
    assert by_batch["rotated"]["drifted"], named
    assert any(f.startswith(EMBEDDING_PREFIX) for f in named["rotated"]), named
    assert "brightness" not in named["rotated"], named


def records_for(home: Path, batch_id: str) -> dict:
    return {r["batch_id"]: r for r in records.read_drift_history(LINE, home, kind="batch")}[batch_id]


def test_the_model_factory_view_shows_quarantine_confusion_matrix_and_misclassified(line):
    from pipelines.ui.gather import MAX_GALLERY, gather

    home = line["home"]
    view = gather(home, [LINE]).line(LINE)
    assert view.modality == "image"
    assert view.serving_version == 1

    shown = [g for g in view.quarantine_images if g.batch_id == "slice-1"]
    reasons = sorted(r for g in shown for r in g.details)
    assert reasons == sorted(BAD_REASONS)  # one of each, as the cleaner gave them
    by_reason = {g.details[0]: g for g in shown}
    assert by_reason["blank"].src and by_reason["wrong_size"].src and by_reason["label_not_a_class"].src
    assert by_reason["no_image_file"].src is None and by_reason["undecodable"].src is None

    run_dir = Path(line["trained"]["run_dir"])
    recorded = records.read_confusion_matrix(run_dir)
    assert view.evaluation is not None and view.evaluation.run == run_dir.name
    assert view.evaluation.confusion.matrix == recorded.matrix
    assert view.evaluation.confusion.classes == recorded.class_names
    assert sum(map(sum, recorded.matrix)) + sum(recorded.unpredicted or []) == HOLDOUT
    wrong = records.read_misclassified(run_dir)
    assert wrong.entries and len(view.evaluation.gallery) == min(len(wrong.entries), MAX_GALLERY)
    assert all(g.src for g in view.evaluation.gallery)
    first = wrong.entries[0]
    assert view.evaluation.gallery[0].caption.startswith(f"{first['label_name']} \u2192 {first['predicted_name']}")
