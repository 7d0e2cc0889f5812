"""The landing zone: batches arrive as files (CSV or Parquet), one folder per line.

An image line's batch (``source.format: images``) is a ``.zip`` archive: the images
as ``images/<image_id>.png`` and a manifest ``labels.csv`` (header ``image,label``;
``image`` names a file under ``images/``, ``label`` is empty when not known). A folder
holding ``images/`` and ``labels.csv`` is zipped on landing. An archive that is not
one (not a zip, a damaged member, no manifest, a manifest without that header or
listing a file twice, members elsewhere) is refused here, whole; the cleaner judges
each image and manifest row (:mod:`pipelines.ingest.cleaning.images`). Archives are
written with a fixed member order and fixed timestamps, so the same batch hashes the
same and a re-sent batch is recognised.

A batch is landed atomically (copied beside its final name, then renamed), its
content hashed, and recorded in the ledger as ``landed``. The same content
landed twice is refused by hash, whatever its name, so a re-sent file never
doubles the data; the same batch id with other content is refused too (a batch
is immutable once landed; land a correction under a new id). These checks, the
rename and the ledger record happen under the line's landing lock, so concurrent
drops take turns and a check always sees every batch landed before it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import storage
from pipelines.catalog import ledger
from pipelines.catalog.layout import LANDING_LOCK, LinePaths, is_batch_id, line_paths
from pipelines.specs import LineSpec

if TYPE_CHECKING:
    import pandas as pd

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".zip": "images"}
SUFFIXES = {"csv": ".csv", "parquet": ".parquet", "images": ".zip"}
# An image batch's archive: its manifest, its header, the folder of its images.
MANIFEST = "labels.csv"
MANIFEST_HEADER = ["image", "label"]
IMAGES_DIR = "images/"
# Every member's timestamp (the earliest a zip can hold): the same batch, the same bytes.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


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


def _zip_member(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.external_attr = 0o644 << 16
    info.create_system = 3  # unix, wherever it was written
    # Stored: PNGs are compressed already, and no zlib version changes the bytes.
    zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)


def write_image_archive(path: Path, images: dict[str, bytes], labels: list[tuple[str, str]]) -> Path:
    """Write an image batch's archive: ``images`` (file name -> encoded bytes) under
    images/ in name order, then the manifest rows ``(file name, label text)``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_HEADER)
    writer.writerows(labels)
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(images):
            _zip_member(zf, IMAGES_DIR + name, images[name])
        _zip_member(zf, MANIFEST, buf.getvalue().encode())
    return path


def check_image_archive(path: Path) -> int:
    """Refuse what is not an image batch's archive (:class:`LandingError`, naming the
    problem); return how many image files it holds."""
    name = Path(path).name
    if not zipfile.is_zipfile(path):
        raise LandingError(f"{name}: not a zip archive; an image batch is a .zip of images/ and {MANIFEST}")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise LandingError(f"{name}: member {bad!r} is damaged (its checksum does not match)")
            members = [i.filename for i in zf.infolist() if not i.is_dir()]
            if MANIFEST not in members:
                raise LandingError(f"{name}: no {MANIFEST} (the manifest, header {','.join(MANIFEST_HEADER)})")
            stray = [m for m in members if m != MANIFEST and not (m.startswith(IMAGES_DIR) and "/" not in m[len(IMAGES_DIR) :])]
            if stray:
                raise LandingError(
                    f"{name}: members outside images/ (or in folders under it): {sorted(stray)[:5]}; "
                    f"an image batch holds images/<file> and {MANIFEST} only"
                )
            text = zf.read(MANIFEST).decode("utf-8-sig")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as err:
        raise LandingError(f"{name}: unreadable zip archive: {err}") from None
    except UnicodeDecodeError:
        raise LandingError(f"{name}: {MANIFEST} is not UTF-8 text") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != MANIFEST_HEADER:
        raise LandingError(
            f"{name}: {MANIFEST} must start with the header {','.join(MANIFEST_HEADER)!r}, "
            f"got {','.join(rows[0]) if rows else 'an empty file'!r}"
        )
    listed = [r[0] for r in rows[1:] if r]
    twice = sorted({n for n in listed if listed.count(n) > 1}) if len(set(listed)) != len(listed) else []
    if twice:
        raise LandingError(f"{name}: {MANIFEST} lists file(s) more than once: {twice[:5]}")
    return len(members) - 1


def zip_image_folder(folder: Path, target: Path) -> Path:
    """An archive of a folder holding ``images/`` and ``labels.csv``, written as
    :func:`write_image_archive` writes one (so the same folder lands as the same batch)."""
    folder = Path(folder)
    images_dir, manifest = folder / IMAGES_DIR.rstrip("/"), folder / MANIFEST
    if not images_dir.is_dir() or not manifest.is_file():
        raise LandingError(f"{folder}: an image batch folder holds images/ and {MANIFEST}")
    nested = sorted(p.name for p in images_dir.iterdir() if not p.is_file())
    if nested:
        raise LandingError(f"{folder}: images/ holds folders {nested[:5]}; put the image files directly in it")
    with zipfile.ZipFile(target, "w") as zf:
        for p in sorted(images_dir.iterdir()):
            _zip_member(zf, IMAGES_DIR + p.name, p.read_bytes())
        _zip_member(zf, MANIFEST, manifest.read_bytes())
    return target


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
    images = spec.source.format == "images"
    if images and source.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            return land_file(spec, zip_image_folder(source, Path(tmp) / f"{batch_id}.zip"), batch_id, home)
    if images and source.suffix != ".zip":
        raise LandingError(f"{source.name}: {spec.name} lands images: a .zip of images/ and {MANIFEST}, or such a folder")
    if not images and (source.suffix not in FORMATS or FORMATS[source.suffix] == "images"):
        raise LandingError(f"{source.name}: batches are .csv or .parquet files")
    if not source.is_file():
        raise LandingError(f"{source}: no such file")
    if images:
        check_image_archive(source)
    paths = line_paths(spec.name, home)
    paths.landing.mkdir(parents=True, exist_ok=True)
    target = paths.landing / f"{batch_id}{SUFFIXES[FORMATS[source.suffix]]}"
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
    """Write ``frame`` in the line's landing format and land it. An image line's frame has
    the key, the encoded image (PNG bytes) and the label (missing: an empty label)."""
    check_batch_id(batch_id)
    suffix = SUFFIXES[spec.source.format]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{batch_id}{suffix}"
        if spec.source.format == "images":
            _write_frame_archive(spec, frame, path)
        elif suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        return land_file(spec, path, batch_id, home)


def _write_frame_archive(spec: LineSpec, frame: pd.DataFrame, path: Path) -> None:
    import pandas as pd

    (key,) = spec.schema.key
    (image,) = [f.name for f in spec.schema.features if f.type == "image"]
    label = spec.schema.label.name
    names = [f"{k}.png" for k in frame[key].astype(str)]
    if len(set(names)) != len(names):
        raise LandingError(f"the batch has {len(names) - len(set(names))} repeated {key}(s); each image is one file")
    labels = ["" if pd.isna(v) else str(int(v)) if isinstance(v, float) else str(v) for v in frame[label]]
    write_image_archive(path, dict(zip(names, frame[image], strict=True)), list(zip(names, labels, strict=True)))


def source_batches(spec: LineSpec, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Cut the line's real data into the batches it arrives in."""
    batching = spec.source.batching
    if batching.by is not None:
        return {str(value): part for value, part in frame.groupby(batching.by, sort=True)}
    n = batching.slices or 1
    size = -(-len(frame) // n)
    return {f"slice-{i + 1}": frame.iloc[i * size : (i + 1) * size] for i in range(n)}


def replay(spec: LineSpec, home: Path | None = None, only: list[str] | None = None) -> list[Landed]:
    """Land the line's real batches (all, or the named ones) as arrivals: the source cut
    into its batches, then each ``source.holdout`` batch under its own name. A source
    is read only when one of its batches is asked for."""
    from pipelines.ingest.sources import load_source

    holdouts = list(spec.source.holdout)
    wanted = set(only or [])
    batches: dict[str, pd.DataFrame] = {}
    if not wanted or wanted - set(holdouts):
        batches = source_batches(spec, load_source(spec))
    clash = sorted(set(batches) & set(holdouts))
    if clash:
        raise LandingError(f"{spec.name}: source.holdout {clash} share their id with a source batch")
    if wanted:
        unknown = sorted(wanted - set(batches) - set(holdouts))
        if unknown:
            raise LandingError(f"{spec.name} has no source batch {unknown}; it has {sorted(batches) + holdouts}")
        batches = {k: v for k, v in batches.items() if k in wanted}
    landed = [land_frame(spec, part, batch_id, home) for batch_id, part in batches.items()]
    for name in holdouts:
        if not wanted or name in wanted:
            landed.append(land_frame(spec, load_source(spec, holdout=name), name, home))
    return landed


def pending(spec: LineSpec, home: Path | None = None) -> list[str]:
    """Batches landed but not yet cleaned, oldest first."""
    return [r["batch_id"] for r in ledger.all_records(line_paths(spec.name, home)) if r["status"] == ledger.LANDED]
