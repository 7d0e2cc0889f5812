"""The label DAG's task logic; ``dags/label.py`` only wires it.

- :func:`plan` checks the run's params (nothing changes when one is bad) and finds the
  validated batches with unlabelled rows that no later label batch has labelled and no
  review queue holds.
- :func:`prelabel` scores those rows with the serving model; a label whose confidence
  reaches its class's threshold (:mod:`pipelines.labelling.thresholds`) is accepted and
  the rows go out as ONE label batch per source batch, ``<source>-labels-<n>``, landed
  like any batch (the ingest DAG cleans and validates it); the others go to a review
  queue for Label Studio: rows in a drifted region first (a value of a drifted feature
  where the new data's share exceeds the reference profile's), then least confident
  first, at most ``review_batch`` of them.
- :func:`import_reviews` reads Label Studio's JSON export of reviewed tasks and lands
  the human labels as a label batch (``label_source: human``), which wins over a
  machine label of the same row at training.

Every step records what it did (:class:`~pipelines.catalog.records.LabellingRun`,
:class:`~pipelines.catalog.records.ReviewQueue`,
:class:`~pipelines.catalog.records.LabelImport`). A retried task finds its record and
does not land a second label batch for the same rows: the batch id it chose is recorded
before landing, and landing the same content under the same id is a no-op.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import storage
from pipelines.catalog import layout, ledger, records
from pipelines.labelling import LABEL_CONFIDENCE, LABEL_MODEL, LABEL_SOURCE, PROVENANCE_COLUMNS
from pipelines.specs import load_spec

LABEL_BATCH = re.compile(r"^(?P<source>.+)-labels-(?P<n>[1-9][0-9]*)$")


class LabellingError(ValueError):
    """Bad params or inputs; nothing was changed. The message says which and why."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _spec(line: str):
    spec = load_spec(line)
    if spec.labelling is None:
        raise LabellingError(f"{line} has no labelling section in its spec")
    return spec


def label_batch_id(source: str, n: int) -> str:
    return f"{source}-labels-{n}"


def _lock(line: str, home: Path | None):
    folder = layout.labelling_dir(line, home)
    folder.mkdir(parents=True, exist_ok=True)
    return storage.exclusive_lock(folder)


def _key_tuples(frame, key: list[str]) -> list[tuple]:
    return list(zip(*[frame[k].astype(str) for k in key], strict=True)) if len(frame) else []


def _read_landed(record: records.BatchRecord):
    import pandas as pd

    path = record.get("file")
    if not path or not Path(path).is_file():
        return None
    return pd.read_csv(path) if str(path).endswith(".csv") else pd.read_parquet(path)


def _labelled_keys(spec, source: str, home: Path | None, own: set[str] = frozenset()) -> set[tuple]:
    """Keys of ``source`` that a label batch landed for it (other than ``own``) already labels."""
    paths = layout.line_paths(spec.name, home)
    label = spec.schema.label.name
    done: set[tuple] = set()
    for record in ledger.all_records(paths, errors=[]):
        match = LABEL_BATCH.match(record.batch_id)
        if not match or match["source"] != source or record.batch_id in own:
            continue
        frame = _read_landed(record)
        if frame is not None and label in frame.columns:
            done.update(_key_tuples(frame[frame[label].notna()], spec.schema.key))
    return done


def _queued_keys(spec, source: str, home: Path | None, own: str | None = None) -> set[tuple]:
    out: set[tuple] = set()
    for queue in records.read_review_queues(spec.name, home, errors=[]):
        if queue.queue_id == own:
            continue
        for item in queue.keys:
            if item.get("batch_id") == source:
                out.add(tuple(str(item["key"][k]) for k in spec.schema.key))
    return out


def _clean_frame(spec, record: records.BatchRecord, home: Path | None):
    import pandas as pd

    path = (record.cleaning.get("clean_path") if record.cleaning else None) or \
        layout.line_paths(spec.name, home).clean_batch(record.batch_id)
    return pd.read_parquet(path)


def pending_rows(spec, batch_id: str, home: Path | None = None, *, own_batches: set[str] = frozenset(),
                 own_queue: str | None = None):
    """The batch's unlabelled rows that no label batch has labelled and no queue holds
    (a retried run's own label batches and queue aside)."""
    record = ledger.read(layout.line_paths(spec.name, home), batch_id)
    frame = _clean_frame(spec, record, home)
    label = spec.schema.label.name
    rows = frame[frame[label].isna()]
    skip = _labelled_keys(spec, batch_id, home, own_batches) | _queued_keys(spec, batch_id, home, own_queue)
    if skip and len(rows):
        keep = [k not in skip for k in _key_tuples(rows, spec.schema.key)]
        rows = rows[np.asarray(keep, dtype=bool)]
    return rows.reset_index(drop=True)


def check_params(spec, params: dict[str, Any], home: Path | None = None) -> dict[str, Any]:
    """The run's params, checked: ``batch_id`` a validated batch of the line,
    ``review_file`` an absolute path of a readable file, ``target_precision`` in (0.5, 1)."""
    params = dict(params or {})
    batch_id, review_file, target = params.get("batch_id"), params.get("review_file"), params.get("target_precision")
    if batch_id is not None:
        record = ledger.read(layout.line_paths(spec.name, home), batch_id) if layout.is_batch_id(batch_id) else None
        if record is None:
            raise LabellingError(f"{spec.name} has no batch {batch_id!r}")
        if record.status != ledger.VALIDATED:
            raise LabellingError(f"batch {batch_id!r} of {spec.name} is {record.status}, not validated")
    if review_file is not None:
        path = Path(review_file)
        if not path.is_absolute():
            raise LabellingError(f"review_file: {review_file!r} is not an absolute path")
        if not path.is_file():
            raise LabellingError(f"review_file: {review_file} is not a file")
    if target is not None and not (isinstance(target, int | float) and 0.5 < float(target) < 1):
        raise LabellingError(f"target_precision: must be in (0.5, 1), got {target!r}")
    return {"batch_id": batch_id, "review_file": review_file,
            "target_precision": float(target) if target is not None else None}


def plan(line: str, params: dict[str, Any] | None = None, home: Path | None = None) -> dict[str, Any]:
    """What this run does: the checked params and the batches with rows to label."""
    spec = _spec(line)
    checked = check_params(spec, params or {}, home)
    batches = []
    if checked["review_file"] is None or checked["batch_id"] is not None:
        # a batch whose cleaning counted no unlabelled row is not read (the common case:
        # this runs on every validated batch of the line)
        wanted = [checked["batch_id"]] if checked["batch_id"] else [
            r.batch_id for r in ledger.all_records(layout.line_paths(line, home), errors=[])
            if r.status == ledger.VALIDATED and not LABEL_BATCH.match(r.batch_id)
            and (r.cleaning or {}).get("rows_unlabelled") != 0]
        for batch_id in wanted:
            n = len(pending_rows(spec, batch_id, home))
            if n:
                batches.append({"batch_id": batch_id, "rows_unlabelled": n})
    return {"line": line, **checked, "batches": batches, "rows_unlabelled": sum(b["rows_unlabelled"] for b in batches)}


# ---------------------------------------------------------------- drifted regions


def _latest_drift_report(line: str, sources: list[str], home: Path | None) -> dict[str, Any] | None:
    """The drift report of a source batch when it drifted, else the line's latest drifted batch's."""
    history = [r for r in records.read_drift_history(line, home, kind="batch", skipped=[]) if r.drifted]
    own = [r for r in history if r.batch_id in sources]
    for record in reversed(own or history):
        try:
            report = records.read_drift_report(record, line, home)
        except records.RecordError:
            continue
        if report:
            return report
    return None


def drifted_region(frame, report: dict[str, Any] | None, profile: dict[str, Any] | None) -> np.ndarray:
    """Rows whose value of a drifted feature falls in a bucket (the reference profile's
    bins) where the drifted data's share exceeds the reference's."""
    from pipelines.monitoring.profile import category_key, numeric_values

    region = np.zeros(len(frame), dtype=bool)
    if not report or not profile or not len(frame):
        return region
    for name, finding in (report.get("features") or {}).items():
        feature = (profile.get("features") or {}).get(name)
        dist = finding.get("distribution") if isinstance(finding, dict) else None
        if not finding.get("drifted") or feature is None or name not in frame.columns or not dist:
            continue
        ref, cur = np.asarray(dist["ref"], dtype=float), np.asarray(dist["cur"], dtype=float)
        if len(ref) != len(feature["buckets"]) or len(cur) != len(ref):
            continue
        hot = cur > ref
        if feature["kind"] == "numeric":
            values = numeric_values(frame[name])
            idx = np.searchsorted(np.asarray(feature["edges"], dtype=float), values, side="left")
            idx[np.isnan(values)] = len(ref) - 1
        else:
            index = {c: i for i, c in enumerate(feature["categories"])}
            keys = [category_key(v) for v in frame[name]]
            idx = np.asarray([len(ref) - 1 if k is None else index.get(k, len(ref) - 2) for k in keys])
        region |= hot[idx]
    return region


# ---------------------------------------------------------------- pre-labelling


def _typed_labels(spec, values: list[str]):
    field = spec.schema.field(spec.schema.label.name)
    if field.type == "integer":
        return [int(v) for v in values]
    if field.type == "double":
        return [float(v) for v in values]
    return [str(v) for v in values]


def label_frame(spec, rows, labels: list[str], source: str, model: list[str | None],
                confidence: list[float | None]):
    """A label batch: the spec's columns (features copied, the label filled) and the
    provenance columns."""
    import pandas as pd

    out = rows[spec.schema.names].copy().reset_index(drop=True)
    out[spec.schema.label.name] = pd.Series(_typed_labels(spec, labels), index=out.index)
    out[LABEL_SOURCE] = pd.Series([source] * len(out), dtype="object")
    out[LABEL_MODEL] = pd.Series(model, dtype="object")
    out[LABEL_CONFIDENCE] = pd.Series(confidence, dtype="float64")
    return out[[*spec.schema.names, *PROVENANCE_COLUMNS]]


def _next_label_batch(spec, source: str, home: Path | None, taken: set[str] = frozenset()) -> str:
    used = [int(m["n"]) for r in ledger.all_records(layout.line_paths(spec.name, home), errors=[])
            if (m := LABEL_BATCH.match(r.batch_id)) and m["source"] == source]
    used += [int(m["n"]) for t in taken if (m := LABEL_BATCH.match(t)) and m["source"] == source]
    return label_batch_id(source, max(used, default=0) + 1)


def _land(spec, frame, batch_id: str, home: Path | None) -> None:
    """Land once: a batch id already in the ledger was landed by an earlier attempt."""
    from pipelines.ingest.landing import land_frame

    if ledger.read(layout.line_paths(spec.name, home), batch_id) is None:
        land_frame(spec, frame, batch_id, home)


def _export_queue(spec, queue_id: str, tasks: list[dict[str, Any]], record: dict[str, Any], home: Path | None) -> Path:
    """Write the queue's folder (tasks, interface, record) whole, check it with Label
    Studio's SDK when its environment exists, and put it in place."""
    from pipelines.labelling import studio
    from pipelines.labelling.thresholds import class_names

    final = layout.review_queue_dir(spec.name, queue_id, home)
    staged = final.with_name(f".{queue_id}.staging")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    storage.write_text_atomic(layout.review_config_path(staged),
                              studio.label_config(class_names(spec), spec.schema.label.names,
                                                  title=f"{spec.name}: {spec.schema.label.name}"))
    storage.write_json_atomic(layout.review_tasks_path(staged), tasks, indent=1)
    if studio.sdk_available():
        studio.check_with_sdk(layout.review_config_path(staged), layout.review_tasks_path(staged))
    records.write_review_queue(staged, record)
    storage.fsync_tree(staged)
    storage.swap_directory(staged, final)
    shutil.rmtree(staged, ignore_errors=True)
    return final


def prelabel(line: str, run_id: str, planned: dict[str, Any], home: Path | None = None) -> dict[str, Any]:
    """Pre-label the planned rows with the serving model; land the accepted labels, queue
    the rest for review; the run's record (a retry returns it)."""
    from pipelines.labelling.thresholds import compute_thresholds, predicted_labels, serving_run
    from pipelines.monitoring.profile import ProfileError, load_profile
    from pipelines.monitoring.stage import model_predictions

    spec = _spec(line)
    labelling = spec.labelling
    with _lock(line, home):
        done = records.read_labelling_run(line, run_id, home)
        if done is not None and done.get("state") == "done":
            return done.to_json()
        intent = done.to_json() if done is not None else {}
        thresholds = compute_thresholds(spec, target_precision=planned.get("target_precision"), home=home)
        version, model_dir, _ = serving_run(line, home)
        try:
            profile = load_profile(layout.model_profile_path(model_dir))
        except ProfileError:
            profile = None
        sources = [b["batch_id"] for b in planned.get("batches") or []]
        report = _latest_drift_report(line, sources, home)
        from pipelines.labelling.studio import build_task
        from pipelines.labelling.thresholds import accept

        key = spec.schema.key
        features = [f.name for f in spec.schema.features]
        chosen: dict[str, str] = dict(intent.get("label_batches") or {})
        by_class: dict[str, dict[str, int]] = {}
        landed: list[tuple[str, Any]] = []
        queue_rows = []
        total = 0
        import pandas as pd

        for source in sources:
            rows = pending_rows(spec, source, home, own_batches=set(chosen.values()), own_queue=intent.get("queue"))
            if not len(rows):
                continue
            total += len(rows)
            with _scratch(rows) as path:
                predicted, confidence = predicted_labels(spec, model_predictions(model_dir, [path]))
            ok = accept(predicted, confidence, thresholds.classes)
            for cls, acc in zip(predicted, ok, strict=True):
                entry = by_class.setdefault(str(cls), {"predicted": 0, "auto_labelled": 0, "queued": 0})
                entry["predicted"] += 1
                entry["auto_labelled" if acc else "queued"] += 1
            if ok.any():
                chosen.setdefault(source, _next_label_batch(spec, source, home, set(chosen.values())))
                frame = label_frame(spec, rows[ok], list(predicted[ok]), "machine", [version] * int(ok.sum()),
                                    [float(c) for c in confidence[ok]])
                landed.append((chosen[source], frame))
            rest = rows[~ok].copy()
            rest["__predicted"], rest["__confidence"] = predicted[~ok], confidence[~ok]
            rest["__source"] = source
            rest["__drifted"] = drifted_region(rest, report, profile)
            queue_rows.append(rest)
        queue_id = intent.get("queue")
        queued = pd.concat(queue_rows, ignore_index=True) if queue_rows else pd.DataFrame()
        if len(queued):
            queued = queued.sort_values(["__drifted", "__confidence"], ascending=[False, True], kind="stable")
            queued = queued.head(labelling.review_batch)
            queue_id = queue_id or _next_queue_id(line, sources[0], home)
        record = {
            "line": line, "run_id": run_id, "source_batches": sources, "model_version": version,
            "rows_unlabelled": total, "auto_labelled": int(sum(len(f) for _, f in landed)),
            "queued": int(len(queued)), "label_batch": landed[0][0] if landed else None,
            "label_batches": {s: b for s, b in chosen.items() if any(b == x for x, _ in landed)},
            "queue": queue_id if len(queued) else None, "by_class": by_class,
            "thresholds": {c: t.threshold for c, t in thresholds.classes.items()},
            "state": "landing", "at": _now(),
        }
        # the ids are recorded before anything lands: a retry reuses them
        records.write_labelling_run(line, record, home)
        for batch_id, frame in landed:
            _land(spec, frame, batch_id, home)
        if len(queued):
            tasks = [
                build_task({f: r[f] for f in features}, batch_id=r["__source"], key={k: r[k] for k in key},
                           predicted=str(r["__predicted"]), confidence=float(r["__confidence"]),
                           model_version=version,
                           meta={"drifted_region": bool(r["__drifted"]), "rank": i + 1})
                for i, (_, r) in enumerate(queued.iterrows())
            ]
            _export_queue(spec, queue_id, tasks, {
                "line": line, "queue_id": queue_id, "rows": len(tasks), "created_at": _now(),
                "source_batches": sources, "model_version": version, "run_id": run_id,
                "drifted_rows": int(queued["__drifted"].sum()),
                "keys": [{"batch_id": t["data"]["batch_id"], "key": t["data"]["key"]} for t in tasks],
                "imported": [],
            }, home)
        record["state"] = "done"
        records.write_labelling_run(line, record, home)
        return record


def _next_queue_id(line: str, source: str, home: Path | None) -> str:
    root = layout.review_queues_dir(line, home)
    n = 1
    while (root / f"{source}-review-{n}").exists():
        n += 1
    return f"{source}-review-{n}"


class _scratch:
    """The rows as a Parquet file the scorer reads, removed afterwards."""

    def __init__(self, rows):
        self.rows = rows

    def __enter__(self) -> Path:
        import tempfile

        self.tmp = tempfile.TemporaryDirectory(prefix="factory-label-")
        path = Path(self.tmp.name) / "rows.parquet"
        self.rows.to_parquet(path, index=False)
        return path

    def __exit__(self, *exc) -> None:
        self.tmp.cleanup()


# ---------------------------------------------------------------- reviewed labels


def import_reviews(line: str, run_id: str, review_file: str | Path, home: Path | None = None) -> dict[str, Any]:
    """Land the human labels of a Label Studio JSON export as one label batch per source
    batch; skipped tasks are counted with their reasons. A file that cannot be read lands
    nothing; the same file imported again lands nothing new."""
    from pipelines.labelling.studio import StudioError, read_export, reviewed_labels
    from pipelines.labelling.thresholds import class_names

    spec = _spec(line)
    path = Path(review_file)
    try:
        tasks = read_export(path)
    except StudioError as err:
        raise LabellingError(str(err)) from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    import_id = run_id
    with _lock(line, home):
        for earlier in records.read_label_imports(line, home, errors=[]):
            if earlier.sha256 == digest and earlier.get("state") == "done":
                return {**earlier.to_json(), "already_imported": True}
        current = records.read_label_import(line, import_id, home)
        chosen: dict[str, str] = dict((current.get("label_batches") if current else None) or {})
        labels, skipped = reviewed_labels(tasks, class_names(spec))
        queues = records.read_review_queues(line, home, errors=[])
        queued: dict[tuple, str] = {}
        for queue in queues:
            for item in queue.keys:
                queued[(item.get("batch_id"), *(str(item["key"].get(k)) for k in spec.schema.key))] = queue.queue_id
        key = spec.schema.key
        usable: dict[str, list[dict[str, Any]]] = {}
        for item in labels:
            ident = (item["batch_id"], *(str(item["key"].get(k)) for k in key))
            if ident not in queued:
                skipped.append({"task": item["task"], "reason": "its row is in no review queue of the line"})
                continue
            usable.setdefault(item["batch_id"], []).append({**item, "queue": queued[ident]})
        landed = []
        per_queue: dict[str, dict[str, Any]] = {}  # each queue's own labels and the batches they land in
        for source, items in usable.items():
            record = ledger.read(layout.line_paths(line, home), source)
            frame = _clean_frame(spec, record, home)
            index = {t: i for i, t in enumerate(_key_tuples(frame, key))}
            latest = {tuple(str(it["key"][k]) for k in key): it for it in items}  # a later task wins
            picks = [index[k] for k in latest if k in index]
            rows = frame.iloc[picks]
            found = [latest[k] for k in latest if k in index]
            chosen.setdefault(source, _next_label_batch(spec, source, home, set(chosen.values())))
            for f in found:
                mine = per_queue.setdefault(f["queue"], {"labels": 0, "label_batches": set()})
                mine["labels"] += 1
                mine["label_batches"].add(chosen[source])
            landed.append((chosen[source], label_frame(spec, rows, [f["label"] for f in found], "human",
                                                        [f["reviewer"] for f in found], [None] * len(found)),
                           sorted({f["queue"] for f in found})))
        by_reason: dict[str, int] = {}
        for s in skipped:
            reason = re.sub(r"'[^']*'", "'...'", s["reason"]) if "not one of the classes" in s["reason"] else s["reason"]
            by_reason[reason] = by_reason.get(reason, 0) + 1
        record = {
            "line": line, "import_id": import_id, "file": str(path), "sha256": digest, "tasks": len(tasks),
            "labels": int(sum(len(f) for _, f, _ in landed)), "skipped": skipped[:1000],
            "skipped_by_reason": by_reason, "label_batch": landed[0][0] if landed else None,
            "label_batches": {s: b for s, b in chosen.items()},
            "queues": sorted({q for _, _, qs in landed for q in qs}), "state": "landing", "at": _now(),
        }
        records.write_label_import(line, record, home)
        for batch_id, frame, _ in landed:
            _land(spec, frame, batch_id, home)
        for queue in queues:
            if queue.queue_id in record["queues"] and not any(i.get("import_id") == import_id for i in queue.imported):
                folder = layout.review_queue_dir(line, queue.queue_id, home)
                data = queue.to_json()
                mine = per_queue[queue.queue_id]
                batches = sorted(mine["label_batches"])
                data["imported"] = [*queue.imported, {"import_id": import_id, "labels": mine["labels"],
                                                      "label_batch": batches[0], "label_batches": batches,
                                                      "at": record["at"]}]
                records.write_review_queue(folder, data)
        record["state"] = "done"
        records.write_label_import(line, record, home)
        return record
