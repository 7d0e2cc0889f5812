"""The batch ledger: one JSON record per batch, the single source of truth for
where a batch stands (landed, cleaned, validated, failed) and its counts.

Records are written atomically under the line's lock (:mod:`pipelines.storage`), so a
reader never sees half a record and two tasks cannot lose each other's update. Every
change appends an event, so a record is also the batch's history. Readers get
:class:`~pipelines.catalog.records.BatchRecord`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.catalog.layout import LinePaths, is_batch_id
from pipelines.catalog.records import BatchRecord, _load, _load_each

LANDED, CLEANED, VALIDATED, FAILED = "landed", "cleaned", "validated", "failed"
STATUSES = (LANDED, CLEANED, VALIDATED, FAILED)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_path(paths: LinePaths, batch_id: str) -> Path:
    return paths.ledger_record(batch_id)


def read(paths: LinePaths, batch_id: str) -> BatchRecord | None:
    return _load(record_path(paths, batch_id), BatchRecord)


def update(paths: LinePaths, batch_id: str, event: str, **fields: Any) -> BatchRecord:
    """Merge ``fields`` into the batch's record and append ``event`` to its history."""
    if not is_batch_id(batch_id):  # it names the record's file: never "2016\n" beside "2016"
        raise ValueError(f"invalid batch id {batch_id!r}")
    if "status" in fields and fields["status"] not in STATUSES:
        raise ValueError(f"unknown batch status {fields['status']!r}")
    with storage.exclusive_lock(paths.state):
        current = read(paths, batch_id)
        data = current.to_json() if current else {"line": paths.line, "batch_id": batch_id, "events": []}
        data.update(fields)
        data["updated_at"] = now()
        data.setdefault("events", []).append({"at": data["updated_at"], "event": event, "status": data.get("status")})
        record = BatchRecord.model_validate(data)
        storage.write_json_atomic(record_path(paths, batch_id), record.to_json())
        return record


def all_records(paths: LinePaths, errors: list[str] | None = None) -> list[BatchRecord]:
    """Every record of the line, in landing order. With ``errors``, an unreadable record
    is named there and left out; without, it raises :class:`RecordError`."""
    if not paths.state.is_dir():
        return []
    return _load_each(sorted(paths.state.glob("*.json")), BatchRecord, errors,
                      lambda r: (r.landed_at or "", r.batch_id))
