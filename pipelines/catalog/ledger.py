"""The batch ledger: one JSON record per batch, the single source of truth for
where a batch stands (landed, cleaned, validated, failed) and its counts.

Records are written atomically (temp file + rename) under a per-line lock, so a
reader never sees half a record and two tasks cannot lose each other's update.
Every change appends an event, so a record is also the batch's history.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.config import LinePaths

LANDED, CLEANED, VALIDATED, FAILED = "landed", "cleaned", "validated", "failed"
STATUSES = (LANDED, CLEANED, VALIDATED, FAILED)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(paths: LinePaths) -> Iterator[None]:
    paths.state.mkdir(parents=True, exist_ok=True)
    with open(paths.state / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record_path(paths: LinePaths, batch_id: str) -> Path:
    return paths.state / f"{batch_id}.json"


def read(paths: LinePaths, batch_id: str) -> dict[str, Any] | None:
    p = record_path(paths, batch_id)
    if not p.exists():
        return None
    return json.loads(p.read_text())


def update(paths: LinePaths, batch_id: str, event: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the batch's record and append ``event`` to its history."""
    with _locked(paths):
        record = read(paths, batch_id) or {"line": paths.line, "batch_id": batch_id, "events": []}
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown batch status {fields['status']!r}")
        record.update(fields)
        record["updated_at"] = now()
        record["events"].append({"at": record["updated_at"], "event": event, "status": record.get("status")})
        write_json_atomic(record_path(paths, batch_id), record)
        return record


def all_records(paths: LinePaths) -> list[dict[str, Any]]:
    if not paths.state.exists():
        return []
    records = [json.loads(p.read_text()) for p in paths.state.glob("*.json")]
    return sorted(records, key=lambda r: (r.get("landed_at", ""), r["batch_id"]))
