"""The ingest stage's task logic: which batches to process, the Spark job's
arguments, and the validation gate. ``dags/ingest.py`` only wires these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.catalog import ledger
from pipelines.catalog.layout import gx_root, line_paths
from pipelines.config import factory_home, include_dir
from pipelines.ingest import landing
from pipelines.specs import load_spec

CLEANING_JOB = Path(__file__).resolve().parent / "cleaning" / "job.py"


class BatchNotReady(ValueError):
    """A batch asked for by id that is not there, or not in a state to process."""


class ValidationFailed(RuntimeError):
    """The batch broke its expectation suite; the message lists what failed."""


def plan_batches(line: str, batch_id: str | None = None, home: Path | None = None) -> list[str]:
    """The batches this run processes: the one asked for, or every pending one."""
    spec = load_spec(line)
    paths = line_paths(line, home)
    if batch_id:
        landing.check_batch_id(batch_id)
        if ledger.read(paths, batch_id) is None:
            known = [r["batch_id"] for r in ledger.all_records(paths)]
            raise BatchNotReady(f"no batch {batch_id!r} has landed for {line}; landed batches: {known or 'none'}")
        return [batch_id]
    return landing.pending(spec, home)


def cleaning_args(line: str, batch_id: str, home: Path | None = None) -> list[str]:
    """``application_args`` for the Spark job, resolved on the worker at run time."""
    return ["--line", line, "--batch", batch_id, "--home", str(home or factory_home())]


def _all_columns(spec, path: str) -> list[str] | None:
    return None


def _image_metadata(spec, path: str) -> list[str]:
    """Every column but the encoded images: the suite reads the metadata, never the bytes."""
    import pyarrow.parquet as pq

    images = {f.name for f in spec.schema.fields if f.type == "image"}
    return [c for c in pq.ParquetDataset(path).schema.names if c not in images]


# Which columns of a clean batch the suite sees, by the spec's modality.
VALIDATED_COLUMNS = {"tabular": _all_columns, "image": _image_metadata}


def is_label_batch(spec, frame) -> bool:
    """A batch of labels given later (by the label DAG or a reviewer): every row's label
    came from a machine or a person. Its rows were chosen, so the suite's population
    expectations are not applied to it (:func:`pipelines.ingest.validation.leave_out`)."""
    from pipelines.labelling import HUMAN, LABEL_SOURCE, MACHINE

    if spec.labelling is None or LABEL_SOURCE not in frame.columns or not len(frame):
        return False
    return bool(frame[LABEL_SOURCE].isin([MACHINE, HUMAN]).all())


def _unlabelled_label(spec, frame) -> str | None:
    """The label column of a labelling line's batch in which no row has a label yet (its
    labels come later): the suite's population expectations on it are left out."""
    label = spec.schema.label.name
    if spec.labelling is None or label not in frame.columns or frame[label].notna().any():
        return None
    return label


def validate_batch(line: str, batch_id: str, home: Path | None = None) -> dict[str, Any]:
    """Run the line's checkpoint on a cleaned batch and record the verdict.

    A failing batch stays where it is, marked ``failed`` with the failed
    expectations, and :class:`ValidationFailed` is raised; only a passing batch
    is marked ``validated``, which is what training reads.
    """
    import pandas as pd

    from pipelines.ingest.validation import run_checkpoint

    spec = load_spec(line)
    paths = line_paths(line, home)
    record = ledger.read(paths, batch_id)
    if record is None or "cleaning" not in record:
        raise BatchNotReady(f"batch {batch_id!r} of {line} has not been cleaned")
    path = record["cleaning"]["clean_path"]
    frame = pd.read_parquet(path, columns=VALIDATED_COLUMNS[spec.modality](spec, path))
    outcome = run_checkpoint(
        frame, include_dir() / spec.expectations, line=line, batch_id=batch_id, gx_dir=gx_root(home),
        label_batch=is_label_batch(spec, frame), unlabelled=_unlabelled_label(spec, frame),
    )
    if not outcome.success:
        ledger.update(
            paths,
            batch_id,
            "validation failed",
            status=ledger.FAILED,
            failed_stage="validation",
            validation=outcome.to_dict(),
            error=f"{len(outcome.failed)} expectation(s) failed",
        )
        raise ValidationFailed(f"batch {batch_id!r} of {line} failed validation\n{outcome.describe()}")
    ledger.update(
        paths,
        batch_id,
        "validated",
        status=ledger.VALIDATED,
        validation=outcome.to_dict(),
        validated_at=ledger.now(),
        error=None,
        failed_stage=None,
    )
    return {
        "line": line,
        "batch_id": batch_id,
        "rows": record["cleaning"]["rows_clean"],
        "path": record["cleaning"]["clean_path"],
        "data_docs": outcome.data_docs,
    }


def announcement(line: str, batch_ids: list[str], home: Path | None = None) -> dict[str, Any]:
    """What the validated-data event says: which of this run's batches passed, with rows."""
    paths = line_paths(line, home)
    passed = []
    for batch_id in batch_ids:
        record = ledger.read(paths, batch_id) or {}
        if record.get("status") == ledger.VALIDATED:
            passed.append({"batch_id": batch_id, "rows": record["cleaning"]["rows_clean"]})
    return {
        "line": line,
        "batches": [p["batch_id"] for p in passed],
        "rows": sum(p["rows"] for p in passed),
        "failed": [b for b in batch_ids if b not in {p["batch_id"] for p in passed}],
    }
