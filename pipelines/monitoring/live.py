"""Live traffic scored like landed batches: windows of the prediction log.

The model server logs every answered instance (:mod:`pipelines.serving.predlog`). The
monitor cuts the log into windows of ``serving.live.window_minutes`` (aligned to the
epoch: an hour's window starts on the hour), one per model version that answered in it,
and scores each window once it has closed (:data:`CLOSE_GRACE` after its end) and holds
``serving.live.min_rows`` rows:

- the frame is the logged inputs (the raw features of ``predict_features``), the scores
  the logged positive-class probability (``outputs["probabilities"][0]``), against the
  reference profile of the version that answered (live or retired: the profile travels
  inside the version's SavedModel), under the batch id ``live-<YYYYmmddTHHMM>-v<version>``;
- once ``drift.performance.min_labelled_rows`` of its rows have labels (attached later by
  request id, :func:`pipelines.serving.predlog.attach_labels`), the labelled rows are
  scored again as ``live-<...>-v<version>-labelled``: the live ROC AUC joins the drift
  history, and the AUC rule can open an episode like any batch.

Every record this writes carries ``source: "live"`` and its window's bounds, so the
history tells live windows from landed batches (:func:`pipelines.monitoring.stage.unscored_batches`
reads only the latter).

Rows answered through ``serving_default`` carry serialized tf.Examples, which this
environment (no TensorFlow) does not parse: they are counted, not scored. Image lines are
not scored live (:data:`LIVE_SCORERS`): their profile compares the cleaner's pixel
statistics and the model's embedding, and the server's answers carry no embedding.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipelines.catalog import layout, records

LIVE = "live"
LIVE_PREFIX = "live-"
LABELLED_SUFFIX = "-labelled"
UNPARSED_SIGNATURES = ("serving_default",)
# A record's ``time`` is when the server answered; the record reaches the log one group
# commit later (and the server's clock may run a little behind this one). A window counts
# as closed this long after its end, so the answers of its last moments are in it.
CLOSE_GRACE = timedelta(minutes=2)


def window_batch_id(start: datetime, version: int) -> str:
    """``live-<YYYYmmddTHHMM>-v<version>`` of the window starting at ``start`` (UTC)."""
    return f"{LIVE_PREFIX}{start.astimezone(UTC):%Y%m%dT%H%M}-v{int(version)}"


def is_live(record: Any) -> bool:
    """Whether a drift history record scored a live window (not a landed batch)."""
    return record.get("source") == LIVE


def scored_live_ids(line: str, home: Path | None = None) -> set[str]:
    return {r.get("batch_id") for r in records.read_drift_history(line, home, kind="batch", skipped=[]) if is_live(r)}


def _profiles(line: str, home: Path | None) -> dict[int, Path]:
    """Each version of the store (live or retired) with a reference profile."""
    out = {}
    for sv in records.serving_versions(line, home, errors=[]):
        profile = layout.model_profile_path(Path(sv.path))
        if profile.is_file():
            out[sv.version] = profile
    return out


def _now(now: datetime | None) -> datetime:
    now = now or datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def plan_windows(line: str, home: Path | None = None, now: datetime | None = None,
                 frame: Any = None) -> list[dict[str, Any]]:
    """The closed windows of the log, oldest first, each with ``batch_id``, ``start``,
    ``end``, ``model_version``, ``rows`` (scorable), ``labelled`` and ``todo``: what is
    still to score (``"unlabelled"``, ``"labelled"``). Cheap: reads only the log's key
    columns and the labels."""
    import pandas as pd

    from pipelines.monitoring.batch import line_drift_spec
    from pipelines.serving.predlog import read_labels, read_predictions
    from pipelines.specs import load_spec

    spec = load_spec(line)
    live = spec.serving.live
    min_labelled = line_drift_spec(line).performance.min_labelled_rows
    now = _now(now)
    if frame is None:
        frame = read_predictions(line, home, columns=["request_id", "instance", "time", "model_version", "signature"])
    frame = frame[frame["model_version"].notna() & ~frame["signature"].isin(UNPARSED_SIGNATURES)]
    if frame.empty:
        return []
    width = timedelta(minutes=live.window_minutes)
    seconds = (frame["time"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    width_s = width.total_seconds()
    starts = (seconds // width_s) * width_s
    frame = frame.assign(_start=starts.to_numpy())
    labels = read_labels(line, home)
    labelled_keys = set(zip(labels["request_id"], labels["instance"].astype(int), strict=True))
    frame = frame.assign(_labelled=[(r, int(i)) in labelled_keys
                                    for r, i in zip(frame["request_id"], frame["instance"], strict=True)])
    scored = scored_live_ids(line, home)
    profiles = _profiles(line, home)
    out = []
    for (start_s, version), group in frame.groupby(["_start", "model_version"], sort=True):
        start = datetime.fromtimestamp(float(start_s), UTC)
        end = start + width
        if end + CLOSE_GRACE > now:
            continue  # still open, or its last answers may still be on their way
        batch_id = window_batch_id(start, int(version))
        rows, labelled = int(len(group)), int(group["_labelled"].sum())
        todo = []
        if rows >= live.min_rows and batch_id not in scored:
            todo.append("unlabelled")
        if labelled >= min_labelled and batch_id + LABELLED_SUFFIX not in scored:
            todo.append("labelled")
        profile = profiles.get(int(version))
        out.append({"batch_id": batch_id, "start": start.isoformat(), "end": end.isoformat(),
                    "model_version": int(version), "rows": rows, "labelled": labelled,
                    "todo": todo if profile is not None else [],
                    "blocked": None if profile is not None or not todo else (
                        f"v{int(version)} is not in the serving store or has no reference profile"),
                    "profile": None if profile is None else str(profile)})
    return out


def waiting_windows(line: str, home: Path | None = None, now: datetime | None = None) -> list[str]:
    """The batch ids the monitor would score now (what its sensor wakes for)."""
    from pipelines.specs import load_spec

    if load_spec(line).modality not in LIVE_SCORERS:
        return []
    return [w["batch_id"] + ("" if kind == "unlabelled" else LABELLED_SUFFIX)
            for w in plan_windows(line, home, now) for kind in w["todo"]]


def _tabular_frame(spec, rows) -> Any:
    """The logged inputs as the batch's feature columns, typed as the spec declares them."""
    import pandas as pd

    frame = pd.DataFrame(list(rows["inputs"]), index=range(len(rows)))
    for f in spec.schema.features:
        if f.name not in frame.columns:
            continue
        if f.numeric:
            frame[f.name] = pd.to_numeric(frame[f.name], errors="coerce")
        else:
            frame[f.name] = frame[f.name].map(lambda v: None if v is None else str(v))
    return frame


def _positive_probability(outputs: dict[str, Any]) -> float:
    try:
        return float(outputs["probabilities"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return float("nan")


def _score_tabular_window(spec, rows, labels, profile: Path, batch_id: str, version: int, window: dict[str, Any],
                          home: Path | None, now: datetime | None) -> dict[str, Any]:
    from pipelines.monitoring.batch import monitor_batch

    frame = _tabular_frame(spec, rows)
    scores = [_positive_probability(o) for o in rows["outputs"]]
    extra = {"source": LIVE, "window_start": window["start"], "window_end": window["end"],
             "labelled": labels is not None, "rows": int(len(rows))}
    return monitor_batch(
        spec.name, frame, profile, batch_id=batch_id, model_version=str(version), scores=scores,
        labels=None if labels is None else list(labels), positive=str(spec.schema.label.positive),
        home=home, now=now, record_extra=extra,
    )


# how a window is scored, by the line's modality (image lines: see the module's docstring)
LIVE_SCORERS = {"tabular": _score_tabular_window}


def score_live_windows(line: str, home: Path | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Compact the line's prediction log, then score every closed window not scored yet
    (and, with enough labels, once more with them); returns a plain summary."""
    from pipelines.serving.predlog import compact, read_labels, read_predictions
    from pipelines.specs import load_spec

    spec = load_spec(line)
    notes: list[str] = []
    compacted = compact(line, home, skipped=notes)
    summary: dict[str, Any] = {"line": line, "compacted": compacted, "windows": [], "notes": notes}
    if spec.modality not in LIVE_SCORERS:
        summary.update(status="skipped", reason=(
            f"{line} is an {spec.modality} line: its drift profile compares pixel statistics and the model's "
            f"embedding, which the server's answers do not carry; live windows are not scored"))
        return summary
    keys = read_predictions(line, home, columns=["request_id", "instance", "time", "model_version", "signature"])
    unparsed = int(keys["signature"].isin(UNPARSED_SIGNATURES).sum())
    if unparsed:
        notes.append(f"{unparsed} logged row(s) answered through serving_default (serialized tf.Examples) "
                     f"are not scored live")
    plan = plan_windows(line, home, now, keys)
    todo = [w for w in plan if w["todo"]]
    # the inputs and outputs (JSON) of the windows to score only, not of the whole log
    frame = read_predictions(line, home, since=min(w["start"] for w in todo), until=max(w["end"] for w in todo)) \
        if todo else keys.iloc[0:0]
    labels = read_labels(line, home)
    label_of = dict(zip(zip(labels["request_id"], labels["instance"].astype(int), strict=True), labels["label"],
                        strict=True))
    score = LIVE_SCORERS[spec.modality]
    for window in plan:
        if window["blocked"]:
            notes.append(f"{window['batch_id']} ({window['rows']} rows) not scored: {window['blocked']}")
        if not window["todo"]:
            continue
        start, end = datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"])
        rows = frame[(frame["time"] >= start) & (frame["time"] < end)
                     & (frame["model_version"] == window["model_version"])
                     & ~frame["signature"].isin(UNPARSED_SIGNATURES)].reset_index(drop=True)
        for kind in window["todo"]:
            if kind == "unlabelled":
                scored = score(spec, rows, None, Path(window["profile"]), window["batch_id"], window["model_version"],
                               window, home, now)
            else:
                keys = list(zip(rows["request_id"], rows["instance"].astype(int), strict=True))
                has = [k in label_of for k in keys]
                labelled = rows[has].reset_index(drop=True)
                scored = score(spec, labelled, [label_of[k] for k, h in zip(keys, has, strict=True) if h],
                               Path(window["profile"]), window["batch_id"] + LABELLED_SUFFIX,
                               window["model_version"], window, home, now)
            summary["windows"].append({**scored, "kind": kind, "rows": int(len(rows)),
                                       "window_start": window["start"], "window_end": window["end"]})
    summary["status"] = "scored" if summary["windows"] else "nothing_to_score"
    return summary
