"""The gate on a multi-class image line, end to end on real Fashion-MNIST images.

These are unit tests of the gate's mechanics with a small contract-conforming model:
two candidates come from :mod:`tests.image_models` (a small Keras CNN exported with the
image line's serving signatures), one trained 200 steps, one not trained at all; the gate
on a model the line's own training made is covered by ``tests/test_image_line.py``.
The real gate process runs on each, in order: the first is BLESSED on value thresholds
(no baseline yet) and pushed; the second is NOT_BLESSED against it, with per-class slice
thresholds in the verdict. The confusion matrix the gate records (TFMA's plot) is checked
against the candidate's own predictions on the same images.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.catalog import layout, records
from pipelines.config import REPO_ROOT, include_dir, ml_python
from pipelines.evaluation import serving
from pipelines.evaluation.report import render
from pipelines.evaluation.stage import ml_environment

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not ml_python().exists(), reason="ML environment not set up"),
    pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed"),
]

LINE = "fashion"
EVAL_ROWS = 1000
# The gate's settings here (the line's YAML holds the production ones, for a full CNN)
EVALUATION = {
    "slices": ["label"],
    "thresholds": {"accuracy": {"min": 0.6, "max_drop": 0.01}},
    "slice_thresholds": {"min_examples": 50, "min_per_class": 50, "thresholds": {"accuracy": {"min": 0.1}}},
    "min_eval_examples": 500,
}


def _gate(home: Path, run: Path) -> dict:
    env = {**ml_environment(home), "FACTORY_INCLUDE": str(home / "include")}
    done = subprocess.run([str(ml_python()), "-m", "pipelines.evaluation.gate", "--line", LINE, "--run-dir", str(run)],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return records.read_evaluation_result(run).to_json()


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    home = tmp_path_factory.mktemp("images") / "factory"
    shutil.copytree(include_dir(), home / "include")
    spec_path = home / "include" / "lines" / f"{LINE}.yaml"
    data = yaml.safe_load(spec_path.read_text())
    data["evaluation"] = EVALUATION
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    runs = {name: home / "training" / LINE / name for name in ("good", "worse")}
    helper = str(Path(__file__).with_name("image_models.py"))
    procs = [subprocess.Popen([str(ml_python()), helper, str(runs[name]), "--eval", str(EVAL_ROWS),
                               "--steps", str(steps)], env=ml_environment(home), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for name, steps in (("good", 200), ("worse", 0))]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    good = _gate(home, runs["good"])
    worse = _gate(home, runs["worse"])
    return home, runs, good, worse


def test_first_candidate_is_blessed_with_no_baseline_and_its_artefacts_are_recorded(gated):
    home, runs, good, _ = gated
    assert good["task"] == "multiclass_classification"
    assert good["blessing"] == "BLESSED", good["why"]
    assert good["baseline"] is None and good["blessed_on"].startswith("value thresholds only")
    assert good["serving"]["version"] == 1
    assert serving.push_info(layout.serving_base(LINE, home) / "1")["run_dir"] == str(runs["good"])
    assert good["overall"]["accuracy"] >= 0.6 and good["overall"]["example_count"] == EVAL_ROWS
    assert {f"recall/class_{c}" for c in range(10)} <= set(good["overall"])
    # a slice per class, each gated (about 100 test images per class)
    label_slices = {s["slice"]: s for s in good["slices"] if s["slice"].startswith("label:")}
    assert sorted(label_slices) == [f"label:{c}" for c in range(10)]
    assert all(s["gated"] for s in label_slices.values())
    assert sum(s["examples"] for s in label_slices.values()) == EVAL_ROWS

    cm = records.read_confusion_matrix(runs["good"])
    assert cm.classes == list(range(10)) and cm.class_names[6] == "Shirt"
    assert sum(map(sum, cm.matrix)) + sum(cm.unpredicted) == EVAL_ROWS
    correct = sum(cm.matrix[i][i] for i in range(10))
    assert correct / EVAL_ROWS == pytest.approx(good["overall"]["accuracy"], abs=1e-6)

    wrong = records.read_misclassified(runs["good"])
    assert wrong.misclassified == EVAL_ROWS - correct and 0 < len(wrong.entries) <= 24
    confidences = [e["confidence"] for e in wrong.entries]
    assert confidences == sorted(confidences, reverse=True)
    folder = layout.misclassified_dir(runs["good"])
    for e in wrong.entries:
        assert e["label"] != e["predicted"] and e["predicted_name"] == cm.class_names[e["predicted"]]
        assert (folder / e["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = (runs["good"] / "evaluation" / "report.html").read_text()
    assert "Confusion matrix" in page and "Shirt" in page and "Per-class metrics" in page


def test_worse_candidate_is_not_blessed_against_the_blessed_baseline(gated):
    home, runs, _, worse = gated
    assert worse["blessing"] == "NOT_BLESSED"
    assert worse["baseline"]["training_run"] == "good"
    assert not worse["pushed"] and serving.live_versions(layout.serving_base(LINE, home)) == [1]
    failed = {(f["slice"], f["metric"], f["kind"]) for f in worse["failures"]}
    assert ("Overall", "accuracy", "value") in failed and ("Overall", "accuracy", "change") in failed
    # the per-class slice thresholds are part of the verdict
    per_class = [f for f in worse["failures"] if f["slice"].startswith("label:")]
    assert per_class and all(f["metric"] == "accuracy" and "must be >= 0.1" in f["message"] for f in per_class)
    assert "[label:" in worse["why"]
    assert "FAIL" in render(worse)


PROBE = r"""
import json, sys
import numpy as np, pyarrow.parquet as pq, tensorflow as tf
run = sys.argv[1]
frame = pq.read_table(run + "/data/eval.parquet").to_pandas()
model = tf.saved_model.load(run + "/model/Format-Serving")
out = model.signatures["predict_features"](image=tf.constant(list(frame["image"])))
pred = np.argmax(out["probabilities"].numpy(), axis=1)
matrix = np.zeros((10, 10), int)
np.add.at(matrix, (frame["label"].to_numpy(), pred), 1)
print(json.dumps({"matrix": matrix.tolist(), "class_ids": out["class_ids"].numpy().tolist() == pred.tolist()}))
"""


def test_recorded_confusion_matrix_agrees_with_the_models_predictions(gated):
    home, runs, _, _ = gated
    done = subprocess.run([str(ml_python()), "-c", PROBE, str(runs["good"])], env=ml_environment(home),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["class_ids"]
    assert records.read_confusion_matrix(runs["good"]).matrix == probe["matrix"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
