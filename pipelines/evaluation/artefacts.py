"""What the gate leaves for the UI besides its result, by ``task`` (:data:`ARTEFACTS`;
ML environment).

A multi-class line gets, through :mod:`pipelines.catalog.records`:

* ``confusion_matrix.json``: TFMA's ``MultiClassConfusionMatrixPlot`` of the candidate on
  the whole evaluation split (threshold 0: the predicted class is the argmax of
  ``probabilities``), as a classes x classes table of counts;
* ``misclassified/``: the first :data:`MISCLASSIFIED_MAX` evaluation images the candidate
  got wrong, most confident first (image, true and predicted class, confidence). The
  predictions come from the candidate's ``serving_default`` on the same tf.Examples the
  Evaluator read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.catalog import layout, records
from pipelines.evaluation.inputs import PREDICTION_KEY, SIGNATURE, serialize
from pipelines.specs.evaluation import CONFUSION_PLOT, MULTICLASS

MISCLASSIFIED_MAX = 24
BATCH = 1024


def tfma_confusion_matrix(evaluation_uri: str, classes: list[int]) -> tuple[list[list[int]], list[int]]:
    """The candidate's overall matrix from TFMA's plot: (matrix, rows with no prediction per class)."""
    import tensorflow_model_analysis as tfma

    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    unpredicted = [0] * len(classes)
    found = False
    for plots in tfma.load_plots(evaluation_uri):
        if len(plots.slice_key.single_slice_keys):
            continue  # not the Overall slice
        for kv in plots.plot_keys_and_values:
            if kv.key.name != CONFUSION_PLOT[1] or kv.key.model_name == "baseline":
                continue
            [at] = [m for m in kv.value.multi_class_confusion_matrix_at_thresholds.matrices if m.threshold == 0.0]
            for e in at.entries:
                n = int(round(e.num_weighted_examples))
                if e.predicted_class_id in index:
                    matrix[index[e.actual_class_id]][index[e.predicted_class_id]] += n
                else:
                    unpredicted[index[e.actual_class_id]] += n
            found = True
    if not found:
        raise RuntimeError(f"no {CONFUSION_PLOT[0]} of the candidate in {evaluation_uri}")
    return matrix, unpredicted


def predict(model_dir: Path, frame, kinds: dict[str, str]):
    """The candidate's probabilities [N, C] for the rows, through ``serving_default``."""
    import numpy as np
    import tensorflow as tf

    serve = tf.saved_model.load(str(model_dir)).signatures[SIGNATURE]
    examples = serialize(frame, kinds)
    out = [serve(examples=tf.constant(examples[i:i + BATCH]))[PREDICTION_KEY].numpy()
           for i in range(0, len(examples), BATCH)]
    return np.concatenate(out) if out else np.zeros((0, 0), "float32")


def write_multiclass(run_dir: Path, evaluation_uri: str, ev, spec) -> dict[str, Any]:
    """Write the confusion matrix and the misclassified images; return their summary."""
    import numpy as np

    from pipelines.evaluation.inputs import classes_of

    classes = classes_of(spec)
    names = spec.schema.label.names or [str(c) for c in classes]
    matrix, unpredicted = tfma_confusion_matrix(evaluation_uri, classes)
    records.write_confusion_matrix(run_dir, {
        "classes": classes, "class_names": names, "matrix": matrix, "unpredicted": unpredicted,
        "source": f"TFMA {CONFUSION_PLOT[0]} (candidate, Overall, threshold 0)",
    })
    probs = predict(layout.exported_model(run_dir), ev.frame, ev.kinds)
    predicted = np.asarray(classes)[probs.argmax(axis=1)]
    confidence = probs.max(axis=1)
    truth = ev.frame[ev.label].to_numpy()
    wrong = np.flatnonzero(predicted != truth)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    name = dict(zip(classes, names, strict=True))
    entries, images = [], []
    for i in wrong[:MISCLASSIFIED_MAX]:
        row = ev.frame.iloc[int(i)]
        entries.append({
            "image_id": str(row["image_id"]), "label": int(truth[i]), "label_name": name[int(truth[i])],
            "predicted": int(predicted[i]), "predicted_name": name[int(predicted[i])],
            "confidence": round(float(confidence[i]), 6),
        })
        images.append(bytes(row["image"]))
    records.write_misclassified(run_dir, {"entries": entries, "misclassified": int(len(wrong)), "rows": len(truth)},
                                images)
    return {
        "confusion_matrix": {"classes": classes, "class_names": names, "matrix": matrix,
                             "path": str(layout.confusion_matrix_path(run_dir))},
        "misclassified": {"count": int(len(wrong)), "shown": len(entries),
                          "path": str(layout.misclassified_dir(run_dir))},
    }


# What the gate writes for the UI, by task (binary lines: nothing beyond the result)
ARTEFACTS = {MULTICLASS: write_multiclass}
