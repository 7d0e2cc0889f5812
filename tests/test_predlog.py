"""The prediction log's reader side: compaction of closed segments (a killed server's
too), reads that see every acknowledged record once, retention, and labels attached by
request id. Every segment is written by the real writer (:class:`PredictionLog`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from pipelines.catalog import layout
from pipelines.serving import predlog
from pipelines.serving.predlog import LabelError, PredictionLog

LINE = "credit_risk"
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def record(request_id: str, instance: int = 0, at: datetime = T0, version: int = 1, score: float = 0.3,
           latency_ms: float = 4.0) -> dict:
    """One answered instance as the model server hands it to the writer."""
    return {"request_id": request_id, "instance": instance, "time": at.isoformat(timespec="microseconds"),
            "line": LINE, "model_version": version, "signature": "predict_features",
            "inputs": {"int_rate": 13.5, "term": "36 months"}, "outputs": {"probabilities": [score], "logits": [0.1]},
            "latency_ms": latency_ms}


WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from pipelines.serving.predlog import PredictionLog
    home, line, groups, mode = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    log = PredictionLog(line, home)
    for g in range(groups):
        ids = [f"r{g}-{i}" for i in range(3)]
        log.append([{"request_id": rid, "instance": 0, "time": f"2026-11-20T10:{g % 60:02d}:00.000000+00:00",
                     "line": line, "model_version": 1, "signature": "predict_features",
                     "inputs": {"int_rate": 10.0 + g}, "outputs": {"probabilities": [0.5]}, "latency_ms": 1.0}
                    for rid in ids])
        print(" ".join(ids), flush=True)  # acknowledged: append returned
    if mode == "exit":
        os._exit(0)  # gone without closing its segment, like a killed server
    """
)


def _writer(home, groups: int, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(home), LINE, str(groups), mode],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_open_segment_of_a_dead_writer_is_compacted_and_a_partial_last_line_is_skipped(home):
    proc = _writer(home, 4, "exit")
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    [segment] = predlog.segments(LINE, home)
    assert predlog.is_open_segment(segment) and predlog.is_closed_segment(segment)  # its pid is gone
    # the writer died in the middle of its next group: half a record at the end
    whole = segment.read_bytes()
    with open(segment, "ab") as fh:
        fh.write(whole.splitlines(keepends=True)[0][:40])
    # a live server's open segment beside it: read, never compacted
    live = PredictionLog(LINE, home)
    live.append([record("live-1")])
    skipped: list[str] = []
    assert predlog.compact(LINE, home, skipped=skipped) == 12
    assert skipped and "1 line(s) not whole JSON" in skipped[0]
    assert predlog.segments(LINE, home) == [live.path]
    [part] = layout.prediction_parquet_dir(LINE, home).glob("date=2026-11-20/*.parquet")
    assert part.name == predlog.segment_stem(segment) + ".parquet"
    frame = predlog.read_predictions(LINE, home)
    assert len(frame) == 13 and frame["request_id"].is_unique
    assert list(frame.columns) == predlog.PREDICTION_COLUMNS
    assert str(frame["time"].dt.tz) == "UTC"
    assert frame.loc[frame["request_id"] == "r2-1", "inputs"].item() == {"int_rate": 12.0}
    assert frame.loc[frame["request_id"] == "live-1", "outputs"].item()["probabilities"] == [0.3]
    # compacting again changes nothing; the live segment, once closed, is compacted too
    assert predlog.compact(LINE, home) == 0
    live.close()
    assert predlog.compact(LINE, home) == 1 and predlog.segments(LINE, home) == []
    assert len(predlog.read_predictions(LINE, home)) == 13


def test_a_record_in_a_segment_and_in_parquet_is_read_once(home):
    """Compaction killed after writing the Parquet file but before removing the segment."""
    log = PredictionLog(LINE, home)
    log.append([record("a"), record("a", 1), record("b")])
    log.close()
    [segment] = predlog.segments(LINE, home)
    kept = segment.read_bytes()
    assert predlog.compact(LINE, home) == 3
    segment.write_bytes(kept)  # the segment is still there
    assert predlog.read_predictions(LINE, home)[["request_id", "instance"]].values.tolist() == [
        ["a", 0], ["a", 1], ["b", 0]]
    assert predlog.compact(LINE, home) == 3 and len(predlog.read_predictions(LINE, home)) == 3


def test_every_acknowledged_record_survives_a_killed_writer(home):
    proc = _writer(home, 100_000, "run")
    acknowledged: list[str] = []
    for _ in range(40):
        acknowledged += proc.stdout.readline().split()
    proc.send_signal(signal.SIGKILL)  # mid-loop: maybe in the middle of a write
    acknowledged += proc.stdout.read().split()  # what it printed before it died
    proc.wait(timeout=30)
    assert len(acknowledged) >= 120
    logged = set(predlog.read_predictions(LINE, home)["request_id"])
    assert set(acknowledged) <= logged
    predlog.compact(LINE, home)
    assert set(acknowledged) <= set(predlog.read_predictions(LINE, home)["request_id"])


def test_since_and_until_bound_the_time(home):
    log = PredictionLog(LINE, home)
    log.append([record(f"m{i}", at=T0 + timedelta(minutes=i)) for i in range(10)])
    log.close()
    predlog.compact(LINE, home)
    frame = predlog.read_predictions(LINE, home, since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=5))
    assert frame["request_id"].tolist() == ["m2", "m3", "m4"]
    assert predlog.read_predictions(LINE, home, columns=["request_id"]).shape == (10, 1)


def test_retention_removes_old_days_only(home):
    log = PredictionLog(LINE, home)
    days = [T0 - timedelta(days=d) for d in (0, 1, 5, 40)]
    log.append([record(f"d{i}", at=t) for i, t in enumerate(days)])
    log.close()
    predlog.compact(LINE, home)
    parts = sorted(p.name for p in layout.prediction_parquet_dir(LINE, home).iterdir())
    assert parts == ["date=2026-10-11", "date=2026-11-15", "date=2026-11-19", "date=2026-11-20"]
    assert predlog.apply_retention(LINE, 3, home, now=T0) == ["2026-10-11", "2026-11-15"]
    assert predlog.read_predictions(LINE, home)["request_id"].tolist() == ["d1", "d0"]
    assert predlog.apply_retention(LINE, 3, home, now=T0) == []
    with pytest.raises(ValueError):
        predlog.apply_retention(LINE, 0, home)


def test_labels_join_by_request_id_and_the_last_attached_wins(home):
    log = PredictionLog(LINE, home)
    log.append([record("a"), record("b"), record("b", 1)])
    first = predlog.attach_labels(LINE, pd.DataFrame({"request_id": ["a", "b", "later"], "label": ["good", "bad", "bad"]}),
                                  home)
    assert (first["rows"], first["matched"], first["unmatched"]) == (3, 2, 1)
    # a person's corrections for one request
    fixed = predlog.attach_labels(LINE, pd.DataFrame({"request_id": ["a"], "instance": [0], "label": ["bad"]}), home)
    assert (fixed["matched"], fixed["unmatched"]) == (1, 0)
    labels = predlog.read_labels(LINE, home).set_index(["request_id", "instance"])["label"].to_dict()
    assert labels == {("a", 0): "bad", ("b", 0): "bad", ("later", 0): "bad"}
    # the unmatched id was kept: its prediction arrives later
    log.append([record("later")])
    assert ("later", 0) in labels


def test_bad_label_files_are_refused(home, tmp_path):
    with pytest.raises(LabelError, match=r"missing \['label'\]"):
        predlog.attach_labels(LINE, pd.DataFrame({"request_id": ["a"], "Class": ["bad"]}), home)
    with pytest.raises(LabelError, match=r"\['maybe'\] are not classes of credit_risk's label 'Class'"):
        predlog.attach_labels(LINE, pd.DataFrame({"request_id": ["a", "b"], "label": ["bad", "maybe"]}), home)
    with pytest.raises(LabelError, match="instance must be a whole number"):
        predlog.attach_labels(LINE, pd.DataFrame({"request_id": ["a"], "instance": [-1], "label": ["bad"]}), home)
    with pytest.raises(LabelError, match="no request_id"):
        predlog.attach_labels(LINE, pd.DataFrame({"request_id": [None], "label": ["bad"]}), home)
    assert not layout.prediction_labels_dir(LINE, home).exists() or not list(
        layout.prediction_labels_dir(LINE, home).glob("*.parquet"))
    # numbers from a CSV column with a gap read as the line's classes
    csv = tmp_path / "labels.csv"
    csv.write_text("request_id,label\nx,1\ny,0\n")
    out = predlog.attach_labels("employment", predlog.read_label_file(csv), home)
    assert out["unmatched"] == 2
    assert predlog.read_labels("employment", home)["label"].tolist() == ["1", "0"]
    with pytest.raises(LabelError, match="no such file"):
        predlog.read_label_file(tmp_path / "nope.csv")


def test_two_writers_with_the_same_pid_in_the_same_second_keep_both_segments(home):
    """Segment names are ``<start second>-<pid>-<seq>``: a second writer of the line in
    one process (a server that makes its log again), or a replica with the same pid in
    another container on shared storage, starts at the same name in the same second."""
    first = PredictionLog(LINE, home)
    first.append([record("first")])
    second = PredictionLog(LINE, home)
    second.append([record("second")])
    first.close()
    second.append([record("second-2")])
    second.close()
    third = PredictionLog(LINE, home)
    third.append([record("third")])
    third.close()
    assert sorted(predlog.read_predictions(LINE, home)["request_id"]) == ["first", "second", "second-2", "third"]
    assert len(predlog.segments(LINE, home)) == 3


def test_factory_labels_prints_the_counts_and_refuses_a_bad_file(home, tmp_path, monkeypatch, capsys):
    from pipelines import cli

    monkeypatch.setenv("FACTORY_HOME", str(home))
    log = PredictionLog(LINE)
    log.append([record("a"), record("b")])
    log.close()
    good = tmp_path / "labels.parquet"
    pd.DataFrame({"request_id": ["a", "b", "c"], "instance": [0, 0, 0], "label": ["bad", "good", "good"]}).to_parquet(good)
    assert cli.main(["labels", LINE, "--file", str(good)]) == 0
    assert "3 label(s) attached: 2 matched a logged prediction, 1 unmatched" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,outcome\na,bad\n")
    assert cli.main(["labels", LINE, "--file", str(bad)]) == 2
    assert "missing ['label']" in capsys.readouterr().err
    assert len(predlog.read_labels(LINE)) == 3


def test_a_segment_named_like_one_already_compacted_does_not_replace_its_parquet(home):
    """Once a segment is compacted its name is free in ``wal/``: a writer with the same pid
    that opens a segment in the same second (a second log object in this process, a
    replica in another container) gets the same stem."""
    for attempt in range(50):
        first = PredictionLog(LINE, home)
        first.append([record(f"first-{attempt}")])
        stem = predlog.segment_stem(first.path)
        first.close()
        predlog.compact(LINE, home)
        second = PredictionLog(LINE, home)
        second.append([record(f"second-{attempt}")])
        same = predlog.segment_stem(second.path) == stem
        second.close()
        predlog.compact(LINE, home)
        if same:
            break
    assert same, "no two segments opened within one second"
    logged = set(predlog.read_predictions(LINE, home)["request_id"])
    assert {f"first-{attempt}", f"second-{attempt}"} <= logged
