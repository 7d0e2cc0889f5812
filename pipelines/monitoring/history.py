"""A line's drift history: ``<FACTORY_HOME>/drift/<line>/history.jsonl``, append-only.

One JSON object per line: ``kind: "batch"`` for every batch scored (drifted or not,
with the model version it was scored against and its drift episode, if any) and
``kind: "retrain"`` for every retrain claimed or finished because of drift. Records
are never rewritten; a reader sees the whole story of a line in order.

Appends take an exclusive ``flock`` on the line's lock file (the one
:mod:`pipelines.monitoring.episodes` uses for its state), write the record as one
``write()`` to a file opened with ``O_APPEND`` and ``fsync`` it, so concurrent writers
cannot interleave and a reader sees whole records. A crash can at worst leave a
partial record; the next append starts on a new line and the reader skips the fragment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipelines.monitoring.files import drift_dir, line_lock

HISTORY_FILE = "history.jsonl"


class HistoryError(ValueError):
    """The history file is damaged (a record in the middle is not valid JSON)."""


def history_path(line: str, home: Path | None = None) -> Path:
    return drift_dir(line, home) / HISTORY_FILE


def append_unlocked(path: Path, record: dict[str, Any]) -> None:
    """Append one record; the caller holds :func:`line_lock`."""
    data = (json.dumps(record, sort_keys=True, default=str, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a writer died mid-record: keep that fragment on its own line
        written = os.write(fd, data)
        if written != len(data):  # only on a full disk or similar; never leave half a record
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def append_history(line: str, record: dict[str, Any], home: Path | None = None) -> dict[str, Any]:
    """Append one record (a JSON-serialisable dict) to the line's history."""
    with line_lock(line, home):
        append_unlocked(history_path(line, home), record)
    return record


def read_history(line: str, home: Path | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    """The line's history records, oldest first (``kind``: only ``"batch"`` or
    ``"retrain"`` records). No history yet: an empty list. A record cut short by a
    writer that died mid-append is skipped; any other bad line raises :class:`HistoryError`."""
    path = history_path(line, home)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    records = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1 or _fragment(raw):  # an interrupted append
                continue
            raise HistoryError(f"{path}: line {i + 1} is not a JSON record: {err}") from None
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records


def _fragment(raw: str) -> bool:
    """A record cut short by a crash: it starts like a record but never ends."""
    return raw.startswith("{") and not raw.rstrip().endswith("}")
