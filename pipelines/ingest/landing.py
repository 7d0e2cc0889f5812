"""The landing zone: batches arrive as files (CSV or Parquet), one folder per line.

A batch is landed atomically (copied beside its final name, then renamed), its
content hashed, and recorded in the ledger as ``landed``. The same content
landed twice is refused by hash, whatever its name, so a re-sent file never
doubles the data; the same batch id with other content is refused too (a batch
is immutable once landed; land a correction under a new id). These checks, the
rename and the ledger record happen under the line's landing lock, so concurrent
drops take turns and a check always sees every batch landed before it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import storage
from pipelines.catalog import ledger
from pipelines.catalog.layout import LANDING_LOCK, LinePaths, is_batch_id, line_paths
from pipelines.specs import LineSpec

if TYPE_CHECKING:
    import pandas as pd

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class LandingError(ValueError):
    """A batch that cannot be landed; nothing was written."""


@dataclass(frozen=True)
class Landed:
    line: str
    batch_id: str
    path: Path
    sha256: str
    created: bool  # False: the identical batch was already there


def check_batch_id(batch_id: str) -> str:
    if not is_batch_id(batch_id):
        raise LandingError(
            f"invalid batch id {batch_id!r}: use letters, digits, '.', '_' or '-' (at most 100, not starting with a symbol)"
        )
    return batch_id


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def batch_file(paths: LinePaths, batch_id: str) -> Path | None:
    for p in paths.landing.glob(f"{batch_id}.*"):
        if p.suffix in FORMATS:
            return p
    return None


def _check_new(spec: LineSpec, paths: LinePaths, source: Path, batch_id: str, digest: str) -> Landed | None:
    """Refuse a batch id landed with other content, or content landed under another id;
    the identical batch already landed is returned. The caller holds the landing lock."""
    existing = ledger.read(paths, batch_id)
    if existing is not None:
        if existing.get("sha256") == digest:
            return Landed(spec.name, batch_id, Path(existing["file"]), digest, created=False)
        raise LandingError(
            f"batch {batch_id!r} of {spec.name} already landed with other content; "
            "batches are immutable: land the new file under a new batch id"
        )
    for record in ledger.all_records(paths):
        if record.get("sha256") == digest:
            raise LandingError(
                f"{source.name} has the same content as batch {record['batch_id']!r} of {spec.name}, "
                "landed at " + str(record.get("landed_at")) + "; not landed again"
            )
    return None


def land_file(spec: LineSpec, source: Path, batch_id: str, home: Path | None = None) -> Landed:
    """Copy ``source`` into the line's landing zone as batch ``batch_id``."""
    check_batch_id(batch_id)
    source = Path(source)
    if source.suffix not in FORMATS:
        raise LandingError(f"{source.name}: batches are .csv or .parquet files")
    if not source.is_file():
        raise LandingError(f"{source}: no such file")
    paths = line_paths(spec.name, home)
    paths.landing.mkdir(parents=True, exist_ok=True)
    target = paths.landing / f"{batch_id}{'.csv' if FORMATS[source.suffix] == 'csv' else '.parquet'}"
    # The copy is made (and hashed: what lands is what the ledger records) before the
    # lock; the checks, the rename and the ledger record happen under it, so two drops
    # of one batch id, or of one content, cannot both pass the checks.
    fd, tmp = tempfile.mkstemp(dir=paths.landing, prefix=f".{batch_id}.", suffix=".partial")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        digest = sha256_file(Path(tmp))
        with storage.exclusive_lock(paths.state, LANDING_LOCK):
            existing = _check_new(spec, paths, source, batch_id, digest)
            if existing is not None:
                return existing
            os.replace(tmp, target)
            ledger.update(
                paths,
                batch_id,
                "landed",
                status=ledger.LANDED,
                file=str(target),
                format=FORMATS[target.suffix],
                sha256=digest,
                bytes=target.stat().st_size,
                landed_at=ledger.now(),
            )
    finally:
        Path(tmp).unlink(missing_ok=True)
    return Landed(spec.name, batch_id, target, digest, created=True)


def land_frame(spec: LineSpec, frame: pd.DataFrame, batch_id: str, home: Path | None = None) -> Landed:
    """Write ``frame`` in the line's landing format and land it."""
    check_batch_id(batch_id)
    suffix = ".csv" if spec.source.format == "csv" else ".parquet"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{batch_id}{suffix}"
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        return land_file(spec, path, batch_id, home)


def source_batches(spec: LineSpec, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Cut the line's real data into the batches it arrives in."""
    batching = spec.source.batching
    if batching.by is not None:
        return {str(value): part for value, part in frame.groupby(batching.by, sort=True)}
    n = batching.slices or 1
    size = -(-len(frame) // n)
    return {f"slice-{i + 1}": frame.iloc[i * size : (i + 1) * size] for i in range(n)}


def replay(spec: LineSpec, home: Path | None = None, only: list[str] | None = None) -> list[Landed]:
    """Land the line's real batches (all, or the named ones) as arrivals."""
    from pipelines.ingest.sources import load_source

    batches = source_batches(spec, load_source(spec))
    if only:
        unknown = sorted(set(only) - set(batches))
        if unknown:
            raise LandingError(f"{spec.name} has no source batch {unknown}; it has {sorted(batches)}")
        batches = {k: v for k, v in batches.items() if k in only}
    return [land_frame(spec, part, batch_id, home) for batch_id, part in batches.items()]


def pending(spec: LineSpec, home: Path | None = None) -> list[str]:
    """Batches landed but not yet cleaned, oldest first."""
    return [r["batch_id"] for r in ledger.all_records(line_paths(spec.name, home)) if r["status"] == ledger.LANDED]
