"""Label Studio's files: the labelling interface, the tasks, the export read back.

A review queue is exported in Label Studio's import format: a JSON list of tasks
``{"data": {...}, "predictions": [...], "meta": {...}}``. ``data.row`` holds the row's
features (shown by a ``Table``), ``data.batch_id`` and ``data.key`` say which row it is
(they travel through Label Studio's export unchanged); the one prediction is the
serving model's label with its confidence as ``score`` (a pre-annotation the reviewer
accepts or changes). The interface (``label_config.xml``) is one single ``Choices``
named ``label`` over the label's classes.

Label Studio's JSON export of the reviewed project is the same list of tasks, each with
its ``annotations`` (``result`` like a prediction's, ``completed_by``,
``was_cancelled``): :func:`reviewed_labels` takes the latest annotation of a task that
was not cancelled.

:func:`check_with_sdk` validates the files with Label Studio's own SDK
(``label_studio_sdk.label_interface.LabelInterface``), which lives in an environment of
its own (``.venv/labelstudio``; ``FACTORY_LABELSTUDIO_PYTHON`` overrides): it runs there
as a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from pipelines.config import REPO_ROOT

FROM_NAME = "label"  # the Choices tag
TO_NAME = "row"  # the Table tag, over data.row


class StudioError(ValueError):
    """Label Studio's files do not fit: the message gives the SDK's complaint or the file's fault."""


def labelstudio_python() -> Path:
    """The Label Studio SDK's interpreter (``FACTORY_LABELSTUDIO_PYTHON`` overrides)."""
    return Path(os.environ.get("FACTORY_LABELSTUDIO_PYTHON", REPO_ROOT / ".venv" / "labelstudio" / "bin" / "python"))


def label_config(classes: list[str], names: list[str] | None = None, *, title: str = "") -> str:
    """The labelling interface: the row as a table and one choice per class (the
    choice's value is the class as text; a display name, when the spec has one, is its hint)."""
    choices = "\n".join(
        f"    <Choice value={quoteattr(c)}" + (f" hint={quoteattr(n)}" if n else "") + "/>"
        for c, n in zip(classes, names or [None] * len(classes), strict=True)
    )
    header = f'  <Header value={quoteattr(title)}/>\n' if title else ""
    return (f"<View>\n{header}  <Table name=\"{TO_NAME}\" value=\"$row\"/>\n"
            f"  <Choices name=\"{FROM_NAME}\" toName=\"{TO_NAME}\" choice=\"single\" showInLine=\"true\">\n"
            f"{choices}\n  </Choices>\n</View>\n")


def _plain(value: Any) -> Any:
    """A JSON value of a cell (numpy scalars to Python; NaN to null)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def choice_result(label: str) -> list[dict[str, Any]]:
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [str(label)]}}]


def build_task(row: dict[str, Any], *, batch_id: str, key: dict[str, Any], predicted: str, confidence: float,
               model_version: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """One task in Label Studio's import format, the model's label as its pre-annotation."""
    return {
        "data": {"row": {k: _plain(v) for k, v in row.items()}, "batch_id": batch_id,
                 "key": {k: _plain(v) for k, v in key.items()}},
        "predictions": [{"model_version": str(model_version), "score": float(confidence),
                         "result": choice_result(predicted)}],
        "meta": {"batch_id": batch_id, "key": {k: _plain(v) for k, v in key.items()}, **(meta or {})},
    }


def _completed_by(annotation: dict[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("username") or who.get("id")
    return str(who) if who not in (None, "") else "unknown"


def latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The task's latest annotation that was not cancelled (by ``updated_at``, then
    ``created_at``, then ``id``), or None."""
    done = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not done:
        return None
    return max(done, key=lambda a: (str(a.get("updated_at") or ""), str(a.get("created_at") or ""),
                                    a.get("id") if isinstance(a.get("id"), int) else -1))


def annotation_choice(annotation: dict[str, Any]) -> str | None:
    """The class chosen in an annotation's ``label`` choices, or None."""
    for item in annotation.get("result") or []:
        if isinstance(item, dict) and item.get("from_name") == FROM_NAME and item.get("type") == "choices":
            chosen = (item.get("value") or {}).get("choices") or []
            if len(chosen) == 1:
                return str(chosen[0])
            return None
    return None


def read_export(path: Path) -> list[dict[str, Any]]:
    """A Label Studio JSON export: a list of task objects; :class:`StudioError` otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise StudioError(f"{path}: cannot be read: {err}") from None
    except json.JSONDecodeError as err:
        raise StudioError(f"{path}: not a Label Studio JSON export (not valid JSON: {err})") from None
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise StudioError(f"{path}: not a Label Studio JSON export (expected a list of tasks)")
    return data


def reviewed_labels(tasks: list[dict[str, Any]], classes: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(labels, skipped): per task with a usable annotation ``{"task", "batch_id", "key",
    "label", "reviewer"}``; the others with the reason they were skipped."""
    labels, skipped = [], []
    allowed = set(classes)
    for i, task in enumerate(tasks):
        ref = task.get("id", i)
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        batch_id, key = data.get("batch_id"), data.get("key")
        if not isinstance(batch_id, str) or not isinstance(key, dict) or not key:
            skipped.append({"task": ref, "reason": "no batch_id and key in the task's data"})
            continue
        annotation = latest_annotation(task)
        if annotation is None:
            skipped.append({"task": ref, "reason": "no annotation that was not cancelled"})
            continue
        choice = annotation_choice(annotation)
        if choice is None:
            skipped.append({"task": ref, "reason": "the annotation chose no single label"})
            continue
        if choice not in allowed:
            skipped.append({"task": ref, "reason": f"label {choice!r} is not one of the classes {classes}"})
            continue
        labels.append({"task": ref, "batch_id": batch_id, "key": key, "label": choice,
                       "reviewer": _completed_by(annotation)})
    return labels, skipped


_CHECK = r"""
import json, sys
from label_studio_sdk.label_interface import LabelInterface
config, tasks_path, kind = sys.argv[1], sys.argv[2], sys.argv[3]
li = LabelInterface(open(config).read())
tasks = json.load(open(tasks_path))
problems = []
for i, task in enumerate(tasks):
    # the task's data alone: this SDK's validate_task fails on a task with predictions
    if not li.validate_task({"data": task.get("data")}):
        problems.append(f"task {i}: data does not fit the labelling interface")
    for j, pred in enumerate(task.get("predictions") or []):
        if not li.validate_prediction(pred):
            chosen = [r.get("value") for r in pred.get("result") or [] if isinstance(r, dict)]
            problems.append(f"task {i}, prediction {j}: does not fit the labelling interface ({chosen})")
    if kind == "export":
        for j, ann in enumerate(task.get("annotations") or []):
            if ann.get("was_cancelled"):
                continue
            if not li.validate_annotation(ann):
                problems.append(f"task {i}, annotation {j}: does not fit the labelling interface")
print(json.dumps({"tasks": len(tasks), "problems": problems[:20], "count": len(problems)}))
"""


def sdk_available() -> bool:
    return labelstudio_python().exists()


def check_with_sdk(config: Path, tasks: Path, *, kind: str = "tasks", timeout: float = 300) -> dict[str, Any]:
    """Validate ``tasks`` (import format, or ``kind="export"``: with annotations) against
    the interface ``config`` with Label Studio's SDK; raises :class:`StudioError` with the
    SDK's complaints, returns ``{"tasks": n}``."""
    if kind not in ("tasks", "export"):
        raise ValueError(f"kind must be tasks or export, not {kind!r}")
    python = labelstudio_python()
    if not python.exists():
        raise StudioError(f"Label Studio's SDK environment is missing ({python}); build it with "
                          "scripts/setup.sh labelstudio")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AIRFLOW", "SPARK", "PYSPARK"))}
    done = subprocess.run([str(python), "-c", _CHECK, str(config), str(tasks), kind], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise StudioError(f"Label Studio's SDK could not check {tasks}: {lines[-1] if lines else done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["count"]:
        raise StudioError(f"{tasks}: {result['count']} problem(s) by Label Studio's SDK: " + "; ".join(result["problems"]))
    return {"tasks": result["tasks"]}
