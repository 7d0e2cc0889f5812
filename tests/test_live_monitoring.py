"""Live traffic scored like landed batches: windows of the prediction log, written by the
real writer, scored by the monitor against the profile of the version that answered;
labels attached later give the window's live ROC AUC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from factory_records import push, write_training_run

from bench.realdata import lending_club_frame
from pipelines.catalog import layout, ledger
from pipelines.catalog.records import read_drift_history
from pipelines.monitoring import live
from pipelines.monitoring.batch import monitor_batch
from pipelines.monitoring.episodes import load_state
from pipelines.monitoring.profile import build_profile, features_from_spec, save_profile
from pipelines.monitoring.stage import retrain_decision, unscored_batches
from pipelines.serving.predlog import PredictionLog, attach_labels
from pipelines.specs import load_spec

LINE = "credit_risk"
W0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # a window's start (windows of 60 minutes)
AFTER = W0 + timedelta(minutes=70)  # the first window has closed, the next is open


def model_scores(frame: pd.DataFrame, informative: bool = True, seed: int = 0) -> np.ndarray:
    """A model's positive-class probability: higher for bad loans (or blind to them, with
    the same distribution of scores)."""
    rng = np.random.default_rng(seed)
    bad = (frame["Class"] == "bad").to_numpy()
    lift = bad if informative else rng.permutation(bad)
    return np.clip(rng.uniform(0.05, 0.6, len(frame)) + 0.35 * lift, 0, 1)


def served_version(home, frame: pd.DataFrame, run_id: str) -> int:
    """A version pushed to the serving store with the reference profile of ``frame``."""
    spec = load_spec(LINE)
    run = write_training_run(home, run_id, ["slice-1"], 0.9)
    version, path = push(home, run, "BLESSED")
    scores = model_scores(frame)
    profile = build_profile(frame, features_from_spec(spec), scores, labels=(frame["Class"] == "bad").to_numpy(),
                            config=spec.drift, meta={"line": LINE, "model_version": str(version)})
    save_profile(profile, layout.model_profile_path(path))
    return version


def log_traffic(home, frame: pd.DataFrame, version: int, start: datetime, *, informative: bool = True,
                prefix: str = "req") -> list[str]:
    """The server's log of ``frame`` answered by ``version`` within the window at ``start``."""
    spec = load_spec(LINE)
    names = [f.name for f in spec.schema.features]
    scores = model_scores(frame, informative)
    log = PredictionLog(LINE, home)
    ids = []
    rows = frame[names].astype(object).to_dict("records")
    for lo in range(0, len(rows), 500):
        group = []
        for i in range(lo, min(lo + 500, len(rows))):
            rid = f"{prefix}-{i}"
            at = start + timedelta(seconds=i * 3599 / len(rows))
            group.append({"request_id": rid, "instance": 0, "time": at.isoformat(timespec="microseconds"), "line": LINE,
                          "model_version": version, "signature": "predict_features", "inputs": rows[i],
                          "outputs": {"probabilities": [float(scores[i])], "logits": [0.0]}, "latency_ms": 3.0})
            ids.append(rid)
        log.append(group)
    log.close()
    return ids


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return pd.concat([lending_club_frame(i) for i in (1, 2, 3)], ignore_index=True)


def test_a_window_is_scored_once_and_once_more_with_labels(home, reference):
    version = served_version(home, reference, "run-1")
    traffic = lending_club_frame(4)
    ids = log_traffic(home, traffic, version, W0)
    log_traffic(home, traffic.head(100), version, W0 + timedelta(minutes=60), prefix="open")  # still open
    first = live.score_live_windows(LINE, home, now=AFTER)
    assert first["compacted"] == len(traffic) + 100
    [window] = first["windows"]
    assert window["batch_id"] == "live-20261120T1000-v1" and window["kind"] == "unlabelled"
    assert window["drifted"] is False and window["rows"] == len(traffic)
    assert live.score_live_windows(LINE, home, now=AFTER)["windows"] == []  # scored once
    [record] = read_drift_history(LINE, home, kind="batch")
    assert record["source"] == "live" and record["window_start"] == W0.isoformat() and record["auc"] is None
    # labels arrive for the window's requests: scored once more, with its live AUC
    labels = pd.DataFrame({"request_id": ids, "label": traffic["Class"].tolist()})
    assert attach_labels(LINE, labels, home)["matched"] == len(traffic)
    assert live.waiting_windows(LINE, home, now=AFTER) == ["live-20261120T1000-v1-labelled"]
    [labelled] = live.score_live_windows(LINE, home, now=AFTER)["windows"]
    assert labelled["batch_id"] == "live-20261120T1000-v1-labelled" and labelled["kind"] == "labelled"
    assert labelled["auc"] > 0.85 and labelled["drifted"] is False and labelled["episode_id"] is None
    assert live.score_live_windows(LINE, home, now=AFTER)["windows"] == []
    assert live.waiting_windows(LINE, home, now=AFTER) == []
    # the next window closes: too few rows to score (min_rows), it waits
    assert live.waiting_windows(LINE, home, now=AFTER + timedelta(hours=1)) == []


def test_a_shifted_window_drifts_against_the_profile_of_the_version_that_answered_it(home, reference):
    shifted = lending_club_frame(4).assign(annual_inc=lambda f: f["annual_inc"] * 1.5)
    old = served_version(home, reference, "run-1")
    new = served_version(home, pd.concat([reference, shifted]).assign(
        annual_inc=lambda f: f["annual_inc"] * 1.5), "run-2")  # in serving now
    log_traffic(home, shifted, old, W0, prefix="old")
    log_traffic(home, shifted, new, W0, prefix="new")
    out = {w["batch_id"]: w for w in live.score_live_windows(LINE, home, now=AFTER)["windows"]}
    assert out["live-20261120T1000-v1"]["drifted_features"] == ["annual_inc"]
    assert out["live-20261120T1000-v1"]["episode_id"]
    assert out["live-20261120T1000-v2"]["drifted"] is False


def test_a_window_whose_live_auc_drops_opens_an_episode(home, reference):
    version = served_version(home, reference, "run-1")
    traffic = lending_club_frame(4)
    ids = log_traffic(home, traffic, version, W0, informative=False)
    [unlabelled] = live.score_live_windows(LINE, home, now=AFTER)["windows"]
    assert unlabelled["drifted"] is False  # the scores look as they always did
    attach_labels(LINE, pd.DataFrame({"request_id": ids, "label": traffic["Class"].tolist()}), home)
    [labelled] = live.score_live_windows(LINE, home, now=AFTER)["windows"]
    assert labelled["drifted"] is True and labelled["auc"] < 0.7 and labelled["episode_id"]
    [episode] = load_state(LINE, home)["episodes"]
    assert episode["status"] == "open" and episode["opened_by"] == "live-20261120T1000-v1-labelled"
    # the line retrains on new data, but no training will ever include a live window: the
    # monitor claims the retrain itself, and the drift event names the episode
    assert load_spec(LINE).training.retrain_on == "new_data"
    event = retrain_decision(LINE, "monitor-run-1", home)
    assert event["retrain"] is True and event["episode_id"] == episode["id"], event
    assert retrain_decision(LINE, "monitor-run-2", home)["retrain"] is False  # one per episode


def test_a_landed_batch_is_not_mistaken_for_a_live_window(home, reference):
    """A landed batch may carry any valid id, one that reads like a live window's too."""
    version = served_version(home, reference, "run-1")
    log_traffic(home, lending_club_frame(4), version, W0)
    live.score_live_windows(LINE, home, now=AFTER)
    paths = layout.line_paths(LINE, home)
    ledger.update(paths, "live-20261120T1000-v1", "validated", status=ledger.VALIDATED)
    ledger.update(paths, "2026-11", "validated", status=ledger.VALIDATED)
    assert sorted(unscored_batches(LINE, home)) == ["2026-11", "live-20261120T1000-v1"]
    # scored by the same model: recorded as the landed batch it is, not taken for the window
    profile = layout.model_profile_path(layout.serving_base(LINE, home) / str(version))
    landed = monitor_batch(LINE, lending_club_frame(4), profile, batch_id="live-20261120T1000-v1",
                           model_version=str(version), home=home)
    assert landed["drifted"] is False
    assert unscored_batches(LINE, home) == ["2026-11"]
    history = read_drift_history(LINE, home, kind="batch")
    assert [(r["batch_id"], r.get("source")) for r in history] == [
        ("live-20261120T1000-v1", "live"), ("live-20261120T1000-v1", None)]


def test_a_window_of_a_version_without_a_profile_is_named_not_scored(home, reference):
    served_version(home, reference, "run-1")
    log_traffic(home, lending_club_frame(4), 7, W0)  # answered by a version the store does not hold
    out = live.score_live_windows(LINE, home, now=AFTER)
    assert out["windows"] == [] and out["status"] == "nothing_to_score"
    assert out["notes"] == [f"live-20261120T1000-v7 ({len(lending_club_frame(4))} rows) not scored: "
                            "v7 is not in the serving store or has no reference profile"]
    assert live.waiting_windows(LINE, home, now=AFTER) == []  # the sensor does not wake for it


def test_image_lines_are_skipped_with_a_reason(home):
    out = live.score_live_windows("fashion", home, now=AFTER)
    assert out["status"] == "skipped" and "embedding" in out["reason"]
    assert live.waiting_windows("fashion", home, now=AFTER) == []


def test_the_monitors_sensor_wakes_for_a_closed_window_and_for_new_labels(home, reference):
    from pipelines.monitoring.sensor import _ready, pending_work

    version = served_version(home, reference, "run-1")
    assert not _ready(pending_work(LINE, str(home)))
    traffic = lending_club_frame(4)
    ids = log_traffic(home, traffic, version, W0)  # a window long closed
    work = pending_work(LINE, str(home))
    assert work["batches"] == [] and work["live"] == ["live-20261120T1000-v1"] and _ready(work)
    live.score_live_windows(LINE, home)
    assert not _ready(pending_work(LINE, str(home)))
    attach_labels(LINE, pd.DataFrame({"request_id": ids, "label": traffic["Class"].tolist()}), home)
    assert pending_work(LINE, str(home))["live"] == ["live-20261120T1000-v1-labelled"]


@pytest.mark.integration
def test_the_monitor_dag_scores_logged_traffic(airflow_db, home, reference, monkeypatch):
    """``dag.test()`` of the monitor on a log of live traffic alone (no landed batch): the
    window is scored, the log compacted, old days removed."""
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.config import REPO_ROOT

    monkeypatch.setenv("FACTORY_HOME", str(home))
    version = served_version(home, reference, "run-1")
    traffic = lending_club_frame(4).assign(annual_inc=lambda f: f["annual_inc"] * 1.5)
    log_traffic(home, traffic, version, W0)
    log_traffic(home, traffic.head(50), version, W0 - timedelta(days=60), prefix="old")  # past retention
    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags[f"monitor_{LINE}"]
    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    # the shifted traffic opens an episode, and the monitor claims its retrain (the drift Asset)
    assert states == {"wait": "success", "score": "success", "live": "success", "retrain": "success"}, states
    [record] = read_drift_history(LINE, home, kind="batch")
    assert record["batch_id"] == "live-20261120T1000-v1" and record["source"] == "live" and record["drifted"]
    [claim] = read_drift_history(LINE, home, kind="retrain")
    assert claim["episode_id"] == record["episode_id"] and claim["event"] == "pending"
    assert [p.name for p in layout.prediction_parquet_dir(LINE, home).iterdir()] == ["date=2026-11-20"]
    assert not list(layout.prediction_wal_dir(LINE, home).glob("*.jsonl"))


def test_a_window_is_scored_only_after_the_answers_of_its_last_moments_are_logged(home, reference):
    """A record's time is when the server answered; the record reaches the log a group
    commit later. A window scored the instant it ends would miss the answers of its last
    moments that were still on their way, and never count them."""
    version = served_version(home, reference, "run-1")
    traffic = lending_club_frame(4)
    log_traffic(home, traffic, version, W0)
    end = W0 + timedelta(hours=1)
    early = live.score_live_windows(LINE, home, now=end + timedelta(milliseconds=5))
    # the last request of the hour, answered 1 ms before its end, lands in the log now
    log = PredictionLog(LINE, home)
    row = traffic.iloc[0][[f.name for f in load_spec(LINE).schema.features]].astype(object).to_dict()
    log.append([{"request_id": "last", "instance": 0, "time": (end - timedelta(milliseconds=1)).isoformat(),
                 "line": LINE, "model_version": version, "signature": "predict_features", "inputs": row,
                 "outputs": {"probabilities": [0.2]}, "latency_ms": 2.0}])
    log.close()
    scored = early["windows"] + live.score_live_windows(LINE, home, now=end + live.CLOSE_GRACE)["windows"]
    [window] = scored
    assert window["rows"] == len(traffic) + 1
