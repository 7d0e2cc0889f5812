"""The prediction log's writer: every instance the model server answers, durable before
the answer leaves the server.

A record is one answered instance (one row of a request), a JSON object on a line:

| field | type | what |
|---|---|---|
| ``request_id`` | str | the request's id (the client's ``X-Request-Id`` header, else one the server made) |
| ``instance`` | int | the row's index in its request (0 for a one-row request) |
| ``time`` | str | when the server answered, ISO 8601 in UTC with microseconds |
| ``line`` | str | the product line |
| ``model_version`` | int | the serving store's version that produced the outputs |
| ``signature`` | str | the signature that was called |
| ``inputs`` | object | the row as the client sent it (feature name -> value; bytes as ``{"b64": ...}``) |
| ``outputs`` | object | the row's outputs as the server answered them (output name -> value) |
| ``latency_ms`` | float | the request's time in the server, from its arrival to its answer being ready |

Segments: ``<home>/predictions/<line>/wal/<start>-<pid>-<seq>.open.jsonl`` while a server
process writes it (``<start>``: ``YYYYmmddTHHMMSSZ`` when it was opened); renamed to
``<start>-<pid>-<seq>.jsonl`` when it is closed (rotation, or the server stopping). A
segment whose name still says ``.open`` but whose process is gone (a killed server) is
closed too: its complete lines are the records it acknowledged.

Durability: :meth:`PredictionLog.append` writes a group of records with one ``write`` on a
descriptor opened with ``O_APPEND`` and ``fsync``\\ s before it returns; the server answers
only after it returned, so every acknowledged prediction is on disk. A server killed in the
middle of a write leaves at most one partial last line, which no client was told about;
readers skip a line that is not whole JSON.

Group commit: the server calls :meth:`append` once per micro-batch, so one ``fsync`` covers
every request of the batch.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.catalog import layout
from pipelines.storage import fsync_dir

OPEN_SUFFIX = ".open.jsonl"
CLOSED_SUFFIX = ".jsonl"
MAX_SEGMENT_BYTES = 32 * 1024 * 1024
MAX_SEGMENT_AGE_S = 300.0


class PredictionLogError(RuntimeError):
    """A record could not be made durable; the server must not acknowledge it."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def segment_pid(path: Path) -> int | None:
    """The pid of the process that wrote a segment (from its name), or None."""
    parts = path.name.split("-")
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return None


def is_open_segment(path: Path) -> bool:
    return path.name.endswith(OPEN_SUFFIX)


class PredictionLog:
    """Appends a line's records to its current segment; one instance per server process
    and line. Thread-safe."""

    def __init__(self, line: str, home: Path | None = None, *, max_bytes: int = MAX_SEGMENT_BYTES,
                 max_age_s: float = MAX_SEGMENT_AGE_S) -> None:
        self.line = line
        self.dir = layout.prediction_wal_dir(line, home)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._opened = 0.0
        self._size = 0
        self._seq = 0

    @property
    def path(self) -> Path | None:
        """The segment being written, if one is open."""
        return self._path

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        start = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self._path = self.dir / f"{start}-{os.getpid()}-{self._seq:06d}{OPEN_SUFFIX}"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        fsync_dir(self.dir)
        self._opened = time.monotonic()
        self._size = 0

    def _close(self) -> None:
        if self._fd is None or self._path is None:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        closed = self._path.with_name(self._path.name[: -len(OPEN_SUFFIX)] + CLOSED_SUFFIX)
        os.rename(self._path, closed)
        fsync_dir(self.dir)
        self._fd, self._path = None, None

    def append(self, records: list[dict[str, Any]]) -> None:
        """Make ``records`` durable (written and fsynced) or raise :class:`PredictionLogError`."""
        if not records:
            return
        try:
            data = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in records).encode()
        except (TypeError, ValueError) as err:
            raise PredictionLogError(f"a prediction record is not JSON: {err}") from err
        with self._lock:
            try:
                if self._fd is not None and (
                    self._size >= self.max_bytes or time.monotonic() - self._opened >= self.max_age_s
                ):
                    self._close()
                if self._fd is None:
                    self._open()
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)
                self._size += len(data)
            except OSError as err:
                raise PredictionLogError(f"the prediction log {self.dir} cannot be written: {err}") from err

    def rotate(self) -> None:
        """Close the current segment (the next append opens a new one)."""
        with self._lock:
            self._close()

    def close(self) -> None:
        self.rotate()


def read_segment(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The whole records of a segment, and how many lines were not whole JSON (a partial
    last line left by a killed writer)."""
    records, bad = [], 0
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                bad += 1
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                bad += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
    return records, bad
