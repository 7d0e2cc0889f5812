"""The serving store: SavedModels in TF Serving's layout, published atomically.

Layout (``--model_base_path=<store>/<line>`` for TF Serving)::

    <store>/<line>/1/saved_model.pb, variables/, assets.extra/factory_push.json
    <store>/<line>/2/...                     TF Serving serves the highest integer version
    <store>/<line>/.retired/2/               rolled back: moved out of TF Serving's sight
    <store>/<line>/.retired/2.json           when and why
    <store>/<line>/.incoming-XXXX/           a push being copied (ignored by TF Serving)
    <store>/<line>/.lock                     serialises version numbers and renames

TF Serving only loads directories whose names are integers, so a push is copied and
fsynced into an ``.incoming-*`` directory first, then renamed to the next integer version
while holding ``.lock``: a reader never sees half a version, and two concurrent pushes
get two different versions. Version numbers are never reused (a retired number stays
taken), so a version number names one model forever.

Rollback moves the highest version into ``.retired/`` (one rename, under the lock):
TF Serving then serves the next-highest version, which is the previous push. Nothing
is copied, and the registry keeps the same version numbers.

Plain Python (no TensorFlow): used by the TFX Pusher's executor and by rollback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.catalog import layout
from pipelines.catalog.records import read_push_info


class ServingStoreError(RuntimeError):
    """The serving store cannot do what was asked (e.g. nothing to roll back to)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def locked(base: Path) -> Iterator[None]:
    """An exclusive lock on a line's serving directory."""
    with storage.exclusive_lock(base):
        yield


def live_versions(base: Path) -> list[int]:
    """The versions TF Serving can see, ascending."""
    return layout.int_dirs(base)


def retired_versions(base: Path) -> list[int]:
    return layout.int_dirs(layout.retired_dir(base))


def serving_version(base: Path) -> int | None:
    """The version TF Serving serves (the highest), or None."""
    versions = live_versions(base)
    return versions[-1] if versions else None


def push_info(version_dir: Path) -> dict[str, Any]:
    info = read_push_info(version_dir)
    return info.to_json() if info is not None else {}


def holding(base: Path, model_uri: str) -> tuple[int, Path] | None:
    """The version (live, else retired) that already holds the model at ``model_uri``."""
    for folder in (base, layout.retired_dir(base)):
        for version in layout.int_dirs(folder):
            if push_info(folder / str(version)).get("model_uri") == model_uri:
                return version, folder / str(version)
    return None


def publish(model_dir: Path, base: Path, info: dict[str, Any]) -> tuple[int, Path]:
    """Copy a SavedModel into ``base`` as the next integer version; return (version, path).

    ``info`` is written to ``<version>/assets.extra/factory_push.json`` with the version.
    Idempotent per model: when a version already holds ``info["model_uri"]`` (a push
    whose gate died before it could record it, then retried), that version is the
    answer and nothing is copied.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "saved_model.pb").is_file():
        raise ServingStoreError(f"{model_dir} is not a SavedModel (no saved_model.pb)")
    base.mkdir(parents=True, exist_ok=True)
    key = info.get("model_uri")
    if key and (held := holding(base, key)) is not None:
        return held
    tmp = Path(tempfile.mkdtemp(prefix=layout.INCOMING_PREFIX, dir=base))
    try:
        staged = tmp / "model"
        shutil.copytree(model_dir, staged)
        extra = staged / "assets.extra"
        extra.mkdir(exist_ok=True)
        storage.fsync_tree(staged)  # the long part, outside the lock
        with locked(base):
            if key and (held := holding(base, key)) is not None:  # pushed meanwhile
                return held
            taken = live_versions(base) + retired_versions(base)
            version = (max(taken) if taken else 0) + 1
            storage.write_json_atomic(layout.push_info_path(staged), {**info, "version": version, "pushed_at": _now()})
            storage.fsync_tree(extra)
            final = base / str(version)
            os.rename(staged, final)
            storage.fsync_dir(base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return version, final


def retire_latest(base: Path, reason: str, expected: int | None = None) -> tuple[int, int]:
    """Roll back: move the served version into ``.retired/``; return (retired, now served).

    ``expected``: refuse unless this is the version being served (a guard against rolling
    back twice). Raises :class:`ServingStoreError` when no earlier version is left.
    """
    with locked(base):
        versions = live_versions(base)
        if not versions:
            raise ServingStoreError(f"{base}: no model is being served")
        current = versions[-1]
        if expected is not None and current != expected:
            raise ServingStoreError(f"{base}: version {current} is being served, not {expected}")
        if len(versions) < 2:
            raise ServingStoreError(
                f"{base}: version {current} is the only version: nothing to roll back to"
            )
        retired = layout.retired_dir(base)
        retired.mkdir(exist_ok=True)
        storage.write_json_atomic(
            layout.retired_info_path(base, current),
            {"version": current, "retired_at": _now(), "reason": reason, "now_serving": versions[-2]},
        )
        os.rename(base / str(current), retired / str(current))
        storage.fsync_dir(retired)
        storage.fsync_dir(base)
    return current, versions[-2]


def clean_incoming(base: Path, older_than_s: float = 3600.0) -> list[Path]:
    """Remove ``.incoming-*`` directories a crashed push left behind."""
    import time

    removed = []
    if base.is_dir():
        for p in base.glob(f"{layout.INCOMING_PREFIX}*"):
            if time.time() - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed
