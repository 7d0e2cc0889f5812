"""The factory's storage toolkit: one lock, atomic writes, an atomic directory swap.

Every file the factory keeps is written through these, so a reader sees the old content
or the new, never a part, and two processes that change the same record take turns.

- :func:`exclusive_lock`: an ``flock`` on a lock file, held for the ``with`` block (or
  refused at once with ``wait=False``). A lock dies with its process (the kernel releases
  it), so a killed task never leaves a line locked. :func:`hold_lock` takes one as a
  descriptor that can be handed to a child process tree (the run-folder lock of a
  training or a gate).
- :func:`write_text_atomic` / :func:`write_json_atomic` (and :func:`atomic_file` for any
  other writer, e.g. Parquet): a temp file in the same folder, fsync, rename. JSON is strict: a NaN or an infinity is a :class:`ValueError` at write
  time, never invalid JSON in a file that other tools (Prometheus, a browser, ``jq``) read.
  A writer whose value can be missing writes ``null`` for it, on purpose.
- :func:`append_line`: one whole line appended to a log (``O_APPEND``, one ``write``, fsync);
  a fragment left by a writer that died mid-line stays on a line of its own.
- :func:`swap_directory`: puts a staged directory in the place of another with one
  ``renameat2(RENAME_EXCHANGE)``, so a reader finds the old tree or the new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"


class Busy(RuntimeError):
    """A lock is still held by someone else after waiting for it."""


def hold_lock(path: Path, wait_s: float | None) -> int:
    """Take an exclusive ``flock`` on ``path`` (created if missing), waiting up to
    ``wait_s`` (None: as long as it takes); return the open descriptor that holds it
    (close it to release, or hand it to a child process, which then holds the lock for
    as long as it keeps it open). Raises :class:`Busy` if it is still held by another
    after ``wait_s``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    if wait_s is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise Busy(f"{path} is held by another process") from None
            time.sleep(0.2)


@contextlib.contextmanager
def exclusive_lock(folder: Path, name: str = LOCK_FILE, *, wait: bool = True) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``<folder>/<name>`` (created if missing) for the
    ``with`` block; yields ``folder``. ``wait=False``: raise :class:`Busy` at once if
    another holder has it."""
    fd = hold_lock(Path(folder) / name, None if wait else 0)
    try:
        yield Path(folder)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder below ``root`` (before it is renamed into sight)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` for the block to write (any writer: text,
    Parquet, ...); when the block ends it is fsynced and renamed over ``path``, so readers
    see the old or the new file, never a part; if the block raises it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` so that readers see the old or the new content, never a part."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def dumps(data: Any, indent: int | None = 2) -> str:
    """The factory's JSON: sorted keys, strict numbers (NaN/infinity raise ValueError)."""
    return json.dumps(data, indent=indent, sort_keys=True, allow_nan=False, default=str)


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> Path:
    """:func:`dumps` then :func:`write_text_atomic`. ``indent=None`` for large files
    (profiles hold thousands of sample values)."""
    return write_text_atomic(path, dumps(data, indent) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file, or None when it does not exist (a malformed one raises ValueError)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def append_line(path: Path, text: str) -> None:
    """Append ``text`` as one line; the caller holds the log's lock."""
    data = (text.rstrip("\n") + "\n").encode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a writer died mid-line: keep that fragment on its own line
        written = os.write(fd, data)
        if written != len(data):  # only on a full disk or similar; never leave half a line
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with ``renameat2(RENAME_EXCHANGE)``; False where the
    kernel, libc or filesystem cannot (the caller falls back to two renames)."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_directory(staged: Path, final: Path) -> None:
    """Put ``staged`` (a complete tree) at ``final``, replacing what was there.

    With an existing ``final`` the two are exchanged in one system call and the old tree
    is removed afterwards; a reader sees the whole old tree or the whole new one. Where
    the filesystem cannot exchange, the old tree is renamed aside first (a short window
    without ``final``, never a mixed tree). ``staged`` must be on the same filesystem.
    """
    staged, final = Path(staged), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        os.rename(staged, final)
        fsync_dir(final.parent)
        return
    if _exchange(staged, final):
        shutil.rmtree(staged, ignore_errors=True)  # now holds the old tree
    else:
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
        os.rename(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)
