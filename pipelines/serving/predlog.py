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
``<start>-<pid>-<seq>.jsonl`` when it is closed (rotation, or the server stopping). Names
are never shared: a writer with the same pid that starts in the same second (another log
object, a replica in another container on shared storage) takes the next free ``<seq>``,
and closing never replaces a closed segment. A
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

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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
                 max_age_s: float = MAX_SEGMENT_AGE_S, encode: Callable[[dict[str, Any]], bytes] | None = None) -> None:
        """``encode``: one record as a JSON line's bytes without the newline (the model server
        passes orjson's, several times faster than the standard library's, the default)."""
        self.line = line
        self.encode = encode or _encode
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

    def _fresh_stem(self, start: str) -> str:
        """The next ``<start>-<pid>-<seq>`` no segment has, open or closed. Another writer
        with this pid may start in the same second (a second log object in this process,
        a replica in another container on shared storage): names are never shared."""
        while True:
            self._seq += 1
            stem = f"{start}-{os.getpid()}-{self._seq:06d}"
            if not (self.dir / f"{stem}{OPEN_SUFFIX}").exists() and not (self.dir / f"{stem}{CLOSED_SUFFIX}").exists():
                return stem

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        start = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        while True:
            self._path = self.dir / f"{self._fresh_stem(start)}{OPEN_SUFFIX}"
            try:  # O_EXCL: a writer that took the name since it was checked keeps it
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                                   0o644)
                break
            except FileExistsError:
                continue
        # Held for as long as the segment is open: how a compaction elsewhere (another
        # process, another container on the same storage) tells a live writer's segment
        # from a killed one's, where a pid means nothing across pid namespaces.
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fsync_dir(self.dir)
        self._opened = time.monotonic()
        self._size = 0

    def _close(self) -> None:
        if self._fd is None or self._path is None:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        closed = self._path.with_name(self._path.name[: -len(OPEN_SUFFIX)] + CLOSED_SUFFIX)
        start = closed.name.split("-", 1)[0]
        while True:
            try:  # a link never replaces a closed segment of the same name; rename would
                os.link(self._path, closed)
            except FileExistsError:
                closed = self.dir / f"{self._fresh_stem(start)}{CLOSED_SUFFIX}"
                continue
            except OSError:  # a filesystem without hard links
                os.rename(self._path, closed)
                break
            os.unlink(self._path)
            break
        fsync_dir(self.dir)
        self._fd, self._path = None, None

    def append(self, records: list[dict[str, Any]]) -> None:
        """Make ``records`` durable (written and fsynced) or raise :class:`PredictionLogError`."""
        if not records:
            return
        try:
            data = b"\n".join(map(self.encode, records)) + b"\n"
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


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


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


# ---------------------------------------------------------------- reader side
#
# Compaction turns closed segments into Parquet, one file per segment and day:
# ``log/date=<YYYY-MM-DD>/<segment stem>.parquet`` (the day of each record's ``time``, so
# a segment open across midnight lands in both days; ``<stem>.<n>.parquet`` when a
# segment of the same name was compacted before). The Parquet file is written
# atomically before its segment is removed, and readers read the segments before the
# Parquet files: a record is always in one of the two when a reader looks (in both for a
# moment, which the reader's one-row-per-(request_id, instance) rule absorbs).
#
# Labels are Parquet files under ``labels/``, named ``<seq>-<time>.parquet`` with a
# sequence number taken under the folder's lock: the later file wins for the same
# (request_id, instance), so a corrected label file overrides an earlier one.

PREDICTION_COLUMNS = ["request_id", "instance", "time", "model_version", "signature", "latency_ms", "inputs",
                      "outputs"]
LABEL_COLUMNS = ["request_id", "instance", "label"]
COMPACT_LOCK = "compact.lock"
LABELS_LOCK = ".lock"


class LabelError(ValueError):
    """A label file that cannot be attached; the message says why."""


def segment_stem(path: Path) -> str:
    """``<start>-<pid>-<seq>``: a segment's name without ``.open.jsonl`` / ``.jsonl``."""
    name = path.name
    for suffix in (OPEN_SUFFIX, CLOSED_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# An open segment nobody holds is a dead writer's only once it is this old: a writer
# takes its lock microseconds after creating the file.
ORPHAN_AGE_S = 10.0


def _writer_holds(path: Path) -> bool:
    """Whether a live writer holds the segment's lock (see :meth:`PredictionLog._open`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock, if it got one
    return False


def is_closed_segment(path: Path) -> bool:
    """Closed: renamed to ``.jsonl``, or still ``.open`` but no writer holds its lock (a
    killed server's) and it is older than :data:`ORPHAN_AGE_S`."""
    if is_open_segment(path):
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        return age >= ORPHAN_AGE_S and not _writer_holds(path)
    return path.name.endswith(CLOSED_SUFFIX)


def segments(line: str, home: Path | None = None) -> list[Path]:
    """Every segment of the line's write-ahead folder (open and closed), oldest first."""
    folder = layout.prediction_wal_dir(line, home)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(CLOSED_SUFFIX) and not n.startswith("."))
    except FileNotFoundError:
        return []
    return [folder / n for n in names]


def _frame(records: list[dict[str, Any]]):
    """Records as the log's columns; ``inputs``/``outputs`` as JSON text (Parquet's form)."""
    import pandas as pd

    rows = []
    for r in records:
        try:
            rows.append({
                "request_id": str(r["request_id"]),
                "instance": int(r.get("instance", 0)),
                "time": r["time"],
                "line": r.get("line"),
                "model_version": int(r["model_version"]) if r.get("model_version") is not None else None,
                "signature": r.get("signature"),
                "latency_ms": float(r["latency_ms"]) if r.get("latency_ms") is not None else None,
                "inputs": json.dumps(r.get("inputs"), separators=(",", ":")),
                "outputs": json.dumps(r.get("outputs"), separators=(",", ":")),
            })
        except (KeyError, TypeError, ValueError):
            continue  # whole JSON but not a record: nothing a client was told about
    frame = pd.DataFrame(rows, columns=["request_id", "instance", "time", "line", "model_version", "signature",
                                        "latency_ms", "inputs", "outputs"])
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    frame["instance"] = frame["instance"].astype("int64")
    frame["model_version"] = frame["model_version"].astype("Int64")
    frame["latency_ms"] = frame["latency_ms"].astype("float64")
    return frame


def _write_parquet_atomic(frame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.storage import atomic_file

    with atomic_file(path) as tmp:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    fsync_dir(path.parent)


def _compacted_path(folder: Path, stem: str, part) -> Path:
    """``<stem>.parquet``, unless that holds other records: a segment of the same name was
    compacted before (a writer with the same pid opened one in the same second after the
    first had left ``wal/``); then ``<stem>.<n>.parquet``. A file holding the same records
    is this segment's own from a compaction that died before removing it: replaced."""
    import pyarrow.parquet as pq

    keys = set(zip(part["request_id"], part["instance"].astype(int), strict=True))
    n = 0
    while True:
        path = folder / (f"{stem}.parquet" if n == 0 else f"{stem}.{n}.parquet")
        try:
            held = pq.read_table(path, columns=["request_id", "instance"]).to_pandas()
        except FileNotFoundError:
            return path
        if set(zip(held["request_id"], held["instance"].astype(int), strict=True)) == keys:
            return path
        n += 1


def _segment_records(segment: Path, skipped: list[str] | None) -> list[dict[str, Any]] | None:
    """A segment's whole records (None if it was compacted away meanwhile); lines that are
    not whole JSON are named in ``skipped``."""
    try:
        recs, bad = read_segment(segment)
    except FileNotFoundError:
        return None
    if bad and skipped is not None:
        skipped.append(f"{segment.name}: {bad} line(s) not whole JSON skipped")
    return recs


def compact(line: str, home: Path | None = None, *, skipped: list[str] | None = None) -> int:
    """Closed segments -> ``log/date=<day>/<stem>.parquet``, then the segment is removed;
    returns the records compacted. A partial last line (a killed writer) is skipped and
    named in ``skipped``. One compaction at a time per line (a lock); the server's open
    segment is left alone."""
    from pipelines.storage import exclusive_lock

    root = layout.prediction_log_dir(line, home)
    if not layout.prediction_wal_dir(line, home).is_dir():
        return 0
    done = 0
    with exclusive_lock(root, COMPACT_LOCK):
        for segment in segments(line, home):
            if not is_closed_segment(segment):
                continue
            recs = _segment_records(segment, skipped)
            if recs is None:
                continue
            frame = _frame(recs)
            stem = segment_stem(segment)
            if len(frame):
                days = frame["time"].dt.strftime("%Y-%m-%d")
                for day, part in frame.groupby(days, sort=True):
                    path = _compacted_path(layout.prediction_parquet_dir(line, home) / f"date={day}", stem, part)
                    _write_parquet_atomic(part.reset_index(drop=True), path)
            segment.unlink()
            fsync_dir(segment.parent)
            done += len(frame)
    return done


def _decode(frame):
    frame = frame.copy()
    for col in ("inputs", "outputs"):
        frame[col] = [json.loads(v) if isinstance(v, str) else v for v in frame[col]]
    return frame


def _parquet_files(line: str, home: Path | None, since, until) -> list[Path]:
    folder = layout.prediction_parquet_dir(line, home)
    try:
        days = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("date="))
    except FileNotFoundError:
        return []
    out = []
    for day in days:
        name = day.name[len("date="):]
        if since is not None and name < since.strftime("%Y-%m-%d"):
            continue
        if until is not None and name > until.strftime("%Y-%m-%d"):
            continue
        out.extend(sorted(p for p in day.glob("*.parquet") if not p.name.startswith(".")))
    return out


def _utc(t):
    import pandas as pd

    if t is None:
        return None
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def read_predictions(line: str, home: Path | None = None, since=None, until=None, *,
                     columns: list[str] | None = None, skipped: list[str] | None = None):
    """The line's logged predictions, one row per (request_id, instance), oldest first:
    ``request_id, instance, time (datetime64 UTC), model_version, signature, latency_ms,
    inputs (dict), outputs (dict)``, from the Parquet log and every segment (open ones
    too). ``since`` (inclusive) / ``until`` (exclusive) bound ``time``. ``columns``: only
    those (without ``inputs``/``outputs`` no JSON is decoded: cheap for counting)."""
    import pandas as pd
    import pyarrow.parquet as pq

    since, until = _utc(since), _utc(until)
    wanted = list(columns) if columns is not None else list(PREDICTION_COLUMNS)
    read_cols = list(dict.fromkeys(["request_id", "instance", "time", *wanted]))
    parts = []
    # segments first: one compacted meanwhile is in Parquet by the time the folder is listed
    for segment in segments(line, home):
        recs = _segment_records(segment, skipped)
        if recs is not None:
            parts.append(_frame(recs)[read_cols])
    for path in _parquet_files(line, home, since, until):
        try:
            parts.append(pq.read_table(path, columns=read_cols).to_pandas())
        except FileNotFoundError:  # removed by retention meanwhile
            continue
    if not parts:
        empty = _frame([])[read_cols]
        return _decode(empty)[wanted] if {"inputs", "outputs"} & set(wanted) else empty[wanted]
    frame = pd.concat(parts, ignore_index=True)
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    if since is not None:
        frame = frame[frame["time"] >= since]
    if until is not None:
        frame = frame[frame["time"] < until]
    frame = frame.drop_duplicates(["request_id", "instance"], keep="first")
    frame = frame.sort_values(["time", "request_id", "instance"], kind="stable").reset_index(drop=True)
    if {"inputs", "outputs"} & set(wanted):
        frame = _decode(frame)
    return frame[wanted]


def apply_retention(line: str, days: int, home: Path | None = None, now: datetime | None = None) -> list[str]:
    """Remove the day partitions older than ``days`` days (by the partition's date; today
    counts as day 0); returns the days removed."""
    import shutil

    if days < 1:
        raise ValueError(f"retention must keep at least one day, got {days}")
    now = now or datetime.now(UTC)
    cutoff = (now - timedelta(days=days)).strftime("%Y-%m-%d")
    folder = layout.prediction_parquet_dir(line, home)
    removed = []
    try:
        partitions = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("date="))
    except FileNotFoundError:
        return []
    for part in partitions:
        day = part.name[len("date="):]
        if day < cutoff:
            # renamed aside first: a reader sees the whole day or none of it
            aside = folder / f".removing-{part.name}-{os.getpid()}"
            os.rename(part, aside)
            shutil.rmtree(aside, ignore_errors=True)
            removed.append(day)
    if removed:
        fsync_dir(folder)
    return removed


# ---------------------------------------------------------------- labels


def _label_key(value: Any) -> str | None:
    """A label as the line's categories are written (``1.0`` from a CSV column with a gap
    reads as ``1``)."""
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item"):  # numpy scalars
        return _label_key(value.item())
    return str(value).strip()


def line_label_classes(line: str) -> tuple[str, list[str]]:
    """The line's label column and its classes as text."""
    from pipelines.specs import load_spec

    spec = load_spec(line)
    label = spec.schema.field(spec.schema.label.name)
    return label.name, [str(c) for c in label.categories or []]


def check_labels(line: str, frame) -> Any:
    """The label frame as attached: ``request_id`` (text), ``instance`` (int, 0 when the
    file has none), ``label`` (text, one of the line's classes); raise :class:`LabelError`
    naming what is wrong."""
    import pandas as pd

    missing = [c for c in ("request_id", "label") if c not in frame.columns]
    if missing:
        raise LabelError(f"a label file needs the columns request_id and label (instance optional); "
                         f"missing {missing}, found {list(frame.columns)}")
    extra = sorted(set(frame.columns) - set(LABEL_COLUMNS))
    if extra:
        raise LabelError(f"unknown column(s) {extra}: a label file has request_id, instance (optional), label")
    if len(frame) == 0:
        raise LabelError("the label file has no rows")
    out = pd.DataFrame({"request_id": frame["request_id"].map(lambda v: None if pd.isna(v) else str(v).strip())})
    empty_ids = int(out["request_id"].isna().sum() + (out["request_id"] == "").sum())
    if empty_ids:
        raise LabelError(f"{empty_ids} row(s) have no request_id")
    if "instance" in frame.columns:
        instance = pd.to_numeric(frame["instance"], errors="coerce")
        bad = frame["instance"][instance.isna() | (instance < 0) | (instance % 1 != 0)]
        if len(bad):
            raise LabelError(f"instance must be a whole number >= 0; got {bad.head(5).tolist()}")
        out["instance"] = instance.astype("int64")
    else:
        out["instance"] = 0
    name, classes = line_label_classes(line)
    labels = frame["label"].map(_label_key)
    unknown = sorted({str(v) for v in labels if v not in classes}, key=str)
    if unknown:
        raise LabelError(f"label(s) {unknown[:10]} are not classes of {line}'s label {name!r} (those are {classes})")
    out["label"] = labels.astype(str)
    return out


def read_label_file(path: Path):
    """A CSV or Parquet label file as a frame (not yet checked: :func:`check_labels`)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise LabelError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype={"request_id": str, "label": str})
    except Exception as err:  # noqa: BLE001 - whatever the parser says, said with the file's name
        raise LabelError(f"{path.name}: cannot be read: {err}") from None
    raise LabelError(f"{path.name}: a label file is .csv or .parquet")


def _label_files(line: str, home: Path | None) -> list[Path]:
    folder = layout.prediction_labels_dir(line, home)
    try:
        return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    except FileNotFoundError:
        return []


def read_labels(line: str, home: Path | None = None):
    """Every attached label, one per (request_id, instance): the last attached wins.
    Columns ``request_id, instance, label, attached_at``."""
    import pandas as pd
    import pyarrow.parquet as pq

    parts = []
    for path in _label_files(line, home):
        try:
            parts.append(pq.read_table(path).to_pandas())
        except FileNotFoundError:
            continue
    if not parts:
        return pd.DataFrame({"request_id": pd.Series(dtype=str), "instance": pd.Series(dtype="int64"),
                             "label": pd.Series(dtype=str), "attached_at": pd.Series(dtype=str)})
    frame = pd.concat(parts, ignore_index=True)
    return frame.drop_duplicates(["request_id", "instance"], keep="last").reset_index(drop=True)


def attach_labels(line: str, frame, home: Path | None = None) -> dict[str, Any]:
    """Check ``frame`` (:func:`check_labels`) and keep it as a new label file; returns
    ``rows``, ``matched`` (rows whose prediction is in the log now), ``unmatched`` (kept
    all the same: the prediction may still be on its way) and ``path``."""
    from pipelines.storage import exclusive_lock

    labels = check_labels(line, frame).drop_duplicates(["request_id", "instance"], keep="last")
    attached_at = now_iso()
    labels["attached_at"] = attached_at
    folder = layout.prediction_labels_dir(line, home)
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder, LABELS_LOCK):
        seqs = [int(p.name.split("-", 1)[0]) for p in _label_files(line, home) if p.name.split("-", 1)[0].isdigit()]
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = folder / f"{max(seqs, default=0) + 1:08d}-{stamp}.parquet"
        _write_parquet_atomic(labels.reset_index(drop=True), path)
    logged = read_predictions(line, home, columns=["request_id", "instance"])
    keys = set(zip(logged["request_id"], logged["instance"].astype(int), strict=True))
    matched = sum((r, int(i)) in keys for r, i in zip(labels["request_id"], labels["instance"], strict=True))
    return {"line": line, "rows": int(len(labels)), "matched": int(matched), "unmatched": int(len(labels) - matched),
            "path": str(path)}
