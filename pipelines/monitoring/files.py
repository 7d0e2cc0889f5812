"""Where a line's drift files live, the line's lock, and atomic JSON writes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.config import factory_home

LOCK_FILE = ".lock"


def drift_dir(line: str, home: Path | None = None) -> Path:
    """``<FACTORY_HOME>/drift/<line>``: the line's history, episode state and reports."""
    return (home or factory_home()) / "drift" / line


@contextlib.contextmanager
def line_lock(line: str, home: Path | None = None) -> Iterator[Path]:
    """Exclusive ``flock`` on the line's drift folder (history and episode state)."""
    folder = drift_dir(line, home)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write a file so that readers see the old or the new content, never a part:
    a temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, data: Any, indent: int | None = None) -> Path:
    """JSON (strict: NaN or infinity is an error, not invalid JSON in the file), atomically.
    Compact by default: profiles hold thousands of sample values."""
    return write_text_atomic(path, json.dumps(data, indent=indent, allow_nan=False, default=str) + "\n")
