"""Drift history (append-only JSONL) and episodes: one retrain per episode, cooldown,
stale claims, outcomes; the file wrappers under concurrency; monitor_batch end to end."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from bench.realdata import lending_club_frame
from pipelines.catalog.layout import drift_history_path
from pipelines.catalog.records import DriftHistoryError, append_drift_record, read_drift_history
from pipelines.monitoring import episodes as ep
from pipelines.monitoring.batch import monitor_batch
from pipelines.monitoring.profile import build_profile, features_from_spec, save_profile
from pipelines.specs import load_spec
from pipelines.specs.drift import RetrainPolicy

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
COOLDOWN = 24 * HOUR


def batch(batch_id: str, drifted: bool, status: str = "ok") -> dict:
    features = [{"feature": "AGEP", "severity": 2.0}] if drifted else []
    return {"batch_id": batch_id, "drifted": drifted, "status": status, "model_version": "1",
            "drifted_features": features}


def feed(state: dict, *batches: dict, at: datetime = T0) -> dict:
    for b in batches:
        state, _ = ep.apply_batch(state, b, at)
    return state


# -- pure logic ---------------------------------------------------------------------------


def test_no_drift_no_episode_no_retrain():
    state = feed(ep.new_state("employment"), batch("b1", False), batch("b2", False))
    assert state["episodes"] == []
    decision = ep.should_retrain(state, T0, COOLDOWN)
    assert not decision.retrain and decision.reason == "no open drift episode"


def test_one_retrain_per_episode():
    state = feed(ep.new_state("employment"), batch("b1", True), batch("b2", True), batch("b3", False))
    assert len(state["episodes"]) == 1  # the drifted batches share one episode
    episode = state["episodes"][0]
    assert episode["opened_by"] == "b1" and episode["batches"] == ["b1", "b2", "b3"]
    first = ep.should_retrain(state, T0, COOLDOWN)
    assert first.retrain and first.episode_id == episode["id"] and first.batches == ("b1", "b2", "b3")
    assert "AGEP" in first.reason
    state = ep.apply_claim(state, first, "retrain-1", T0)
    # more drifted batches while the retrain is pending or running: no second retrain
    state = feed(state, batch("b4", True), at=T0 + HOUR)
    later = ep.should_retrain(state, T0 + 30 * HOUR, COOLDOWN)
    assert not later.retrain and "'retrain-1'" in later.reason and "pending" in later.reason
    state = ep.apply_running(state, episode["id"], "retrain-1", T0 + HOUR)
    assert "running" in ep.should_retrain(state, T0 + 2 * HOUR, COOLDOWN).reason


def test_blessed_retrain_resolves_the_episode_and_new_drift_opens_another():
    state = feed(ep.new_state("l"), batch("b1", True))
    d = ep.should_retrain(state, T0, COOLDOWN)
    state = ep.apply_claim(state, d, "r1", T0)
    state = ep.apply_outcome(state, d.episode_id, "r1", "blessed", T0 + 2 * HOUR, model_version="2")
    assert state["episodes"][0]["status"] == "resolved" and "model 2" in state["episodes"][0]["close_reason"]
    assert not ep.should_retrain(state, T0 + 48 * HOUR, COOLDOWN).retrain
    state = feed(state, batch("b9", True), at=T0 + 3 * HOUR)
    assert len(state["episodes"]) == 2 and state["episodes"][1]["status"] == "open"
    # a new episode still waits for the line's cooldown
    d2 = ep.should_retrain(state, T0 + 3 * HOUR, COOLDOWN)
    assert not d2.retrain and d2.wait_until == (T0 + COOLDOWN).isoformat()
    assert ep.should_retrain(state, T0 + COOLDOWN, COOLDOWN).retrain


def test_not_blessed_allows_another_attempt_after_the_cooldown_only():
    state = feed(ep.new_state("l"), batch("b1", True))
    d = ep.should_retrain(state, T0, COOLDOWN)
    state = ep.apply_claim(state, d, "r1", T0)
    state = ep.apply_outcome(state, d.episode_id, "r1", "not_blessed", T0 + HOUR)
    assert state["episodes"][0]["status"] == "open"
    assert not ep.should_retrain(state, T0 + 2 * HOUR, COOLDOWN).retrain
    again = ep.should_retrain(state, T0 + 25 * HOUR, COOLDOWN)
    assert again.retrain and again.episode_id == d.episode_id and "attempt 2" in again.reason


def test_attempts_are_capped():
    state = feed(ep.new_state("l"), batch("b1", True))
    now = T0
    for i in range(2):
        d = ep.should_retrain(state, now, COOLDOWN, max_attempts=2)
        assert d.retrain
        state = ep.apply_claim(state, d, f"r{i}", now)
        state = ep.apply_outcome(state, d.episode_id, f"r{i}", "failed", now + HOUR)
        now += COOLDOWN
    d = ep.should_retrain(state, now, COOLDOWN, max_attempts=2)
    assert not d.retrain and "needs a person" in d.reason


def test_stale_claims_do_not_block_forever():
    state = feed(ep.new_state("l"), batch("b1", True))
    d = ep.should_retrain(state, T0, COOLDOWN)
    state = ep.apply_claim(state, d, "r1", T0)
    assert not ep.should_retrain(state, T0 + 25 * HOUR, COOLDOWN, stale_after=30 * HOUR).retrain
    d2 = ep.should_retrain(state, T0 + 31 * HOUR, COOLDOWN, stale_after=30 * HOUR)
    assert d2.retrain and d2.stale_runs == ("r1",)
    state = ep.apply_claim(state, d2, "r2", T0 + 31 * HOUR)
    assert [a["status"] for a in state["episodes"][0]["attempts"]] == ["stale", "pending"]
    # the late outcome of the stale run is still recorded
    state = ep.apply_outcome(state, d.episode_id, "r1", "not_blessed", T0 + 32 * HOUR)
    assert state["episodes"][0]["attempts"][0]["status"] == "not_blessed"


def test_episode_subsides_after_clean_batches_unless_a_retrain_is_in_flight():
    policy = RetrainPolicy(close_after_clean_batches=2)
    state, _ = ep.apply_batch(ep.new_state("l"), batch("b1", True), T0, policy)
    for b in (batch("e", False, status="empty"), batch("b2", False)):  # an empty batch is no evidence
        state, _ = ep.apply_batch(state, b, T0, policy)
    assert state["episodes"][0]["status"] == "open"
    state, _ = ep.apply_batch(state, batch("b3", False), T0, policy)
    assert state["episodes"][0]["status"] == "subsided"

    state, _ = ep.apply_batch(ep.new_state("l"), batch("b1", True), T0, policy)
    state = ep.apply_claim(state, ep.should_retrain(state, T0, COOLDOWN), "r1", T0)
    for b in ("b2", "b3", "b4"):
        state, _ = ep.apply_batch(state, batch(b, False), T0, policy)
    assert state["episodes"][0]["status"] == "open"  # the retrain's outcome decides


def test_bad_operations_are_refused():
    state = feed(ep.new_state("l"), batch("b1", True))
    with pytest.raises(ep.EpisodeError, match="nothing to claim"):
        ep.apply_claim(state, ep.RetrainDecision(False, "no"), "r", T0)
    d = ep.should_retrain(state, T0, COOLDOWN)
    state = ep.apply_claim(state, d, "r1", T0)
    with pytest.raises(ep.EpisodeError, match="outcome must be one of"):
        ep.apply_outcome(state, d.episode_id, "r1", "great", T0)
    with pytest.raises(ep.EpisodeError, match="no retrain 'r9'"):
        ep.apply_outcome(state, d.episode_id, "r9", "blessed", T0)
    with pytest.raises(ep.EpisodeError, match="no drift episode 'ep-x'"):
        ep.apply_outcome(state, "ep-x", "r1", "blessed", T0)
    state = ep.apply_outcome(state, d.episode_id, "r1", "blessed", T0)
    with pytest.raises(ep.EpisodeError, match="already ended blessed"):
        ep.apply_outcome(state, d.episode_id, "r1", "failed", T0)


# -- files: history and state -------------------------------------------------------------


def report(drifted: bool) -> dict:
    finding = {"status": "ok", "metrics": {"psi": {"value": 0.3 if drifted else 0.01}}}
    return {
        "batch_id": None, "scored_at": T0.isoformat(), "status": "ok", "n_cur": 100, "drifted": drifted,
        "features": {"AGEP": finding},
        "drifted_features": [{"feature": "AGEP", "severity": 1.5, "by": "psi 0.3 >= 0.2"}] if drifted else [],
    }


def test_history_records_every_batch_with_its_model_and_episode(home):
    r1 = ep.record_batch("employment", report(False), model_version="1", batch_id="2015", home=home, now=T0)
    r2 = ep.record_batch("employment", report(True), model_version="1", batch_id="2016", home=home, now=T0 + HOUR)
    r3 = ep.record_batch("employment", report(True), model_version="1", batch_id="2017", home=home, now=T0 + HOUR)
    assert r1["episode_id"] is None and r2["episode_id"] == r3["episode_id"] is not None
    history = read_drift_history("employment", home)
    assert [h["batch_id"] for h in history] == ["2015", "2016", "2017"]
    assert history[1]["max_psi"] == {"feature": "AGEP", "value": 0.3} and history[1]["model_version"] == "1"

    decision = ep.claim_retrain("employment", "run-a", home=home, now=T0 + 2 * HOUR)
    assert decision.retrain and decision.episode_id == r2["episode_id"]
    second = ep.claim_retrain("employment", "run-b", home=home, now=T0 + 5 * HOUR)
    assert not second.retrain and "pending" in second.reason
    ep.mark_retrain_running("employment", decision.episode_id, "run-a", home=home, now=T0 + 3 * HOUR)
    episode = ep.record_retrain_outcome(
        "employment", decision.episode_id, "run-a", "blessed", model_version="2", home=home, now=T0 + 4 * HOUR
    )
    assert episode["status"] == "resolved"
    events = [(h["kind"], h.get("event")) for h in read_drift_history("employment", home)]
    assert events[3:] == [("retrain", "pending"), ("retrain", "running"), ("retrain", "blessed")]
    assert len(read_drift_history("employment", home, kind="batch")) == 3
    assert ep.load_state("employment", home)["episodes"][0]["attempts"][0]["model_version"] == "2"


def test_retrain_can_be_switched_off(home):
    ep.record_batch("l", report(True), model_version="1", batch_id="b", home=home, now=T0)
    decision = ep.claim_retrain("l", "r", policy=RetrainPolicy(enabled=False), home=home, now=T0)
    assert not decision.retrain and "switched off" in decision.reason


def test_reader_skips_a_torn_record_and_refuses_a_damaged_one(home):
    append_drift_record("l", {"kind": "batch", "batch_id": "a"}, home)
    path = drift_history_path("l", home)
    with open(path, "a") as fh:
        fh.write('{"kind": "batch", "batch_')  # a writer died here
    assert [r["batch_id"] for r in read_drift_history("l", home)] == ["a"]
    append_drift_record("l", {"kind": "batch", "batch_id": "b"}, home)  # starts on a fresh line
    assert [r["batch_id"] for r in read_drift_history("l", home)] == ["a", "b"]
    path.write_text(path.read_text() + "garbage\n" + json.dumps({"batch_id": "c"}) + "\n")
    with pytest.raises(DriftHistoryError, match="is not a JSON record"):
        read_drift_history("l", home)
    assert read_drift_history("nothing-yet", home) == []


def test_corrupt_state_file_is_a_clear_error(home):
    ep.record_batch("l", report(True), model_version="1", batch_id="b", home=home, now=T0)
    ep.state_path("l", home).write_text("{")
    with pytest.raises(ep.EpisodeError, match="corrupt"):
        ep.load_state("l", home)


def _append_many(args):
    home, worker = args
    for i in range(25):
        append_drift_record("l", {"kind": "batch", "batch_id": f"{worker}-{i}", "pad": "x" * 5000}, home)


def _claim(args):
    home, worker = args
    return ep.claim_retrain("l", f"run-{worker}", home=home, now=T0).retrain


def test_concurrent_appends_and_claims(home):
    # Fresh interpreters: a fork of this process (Spark's JVM gateway and other threads
    # may live in it by now) can inherit a lock some thread held and hang in the child.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.map(_append_many, [(home, w) for w in range(4)])
    records = read_drift_history("l", home)
    assert len(records) == 100 and len({r["batch_id"] for r in records}) == 100
    ep.record_batch("l", report(True), model_version="1", batch_id="b", home=home, now=T0)
    with ctx.Pool(4) as pool:
        claims = pool.map(_claim, [(home, w) for w in range(8)])
    assert sum(claims) == 1  # exactly one sensor wins the retrain


# -- end to end ---------------------------------------------------------------------------


def _served_model(tmp_path):
    """A serving model folder holding the reference profile of loans slices 1-3."""
    features = features_from_spec(load_spec("credit_risk"))
    reference = pd.concat([lending_club_frame(i) for i in (1, 2, 3)], ignore_index=True)
    model_dir = tmp_path / "models" / "3"
    model_dir.mkdir(parents=True)
    save_profile(build_profile(reference, features, meta={"model_version": "3"}), model_dir)
    return model_dir


def test_monitor_batch_scores_reports_and_records(home, tmp_path):
    model_dir = _served_model(tmp_path)

    quiet = monitor_batch("credit_risk", lending_club_frame(4), model_dir, batch_id="4", home=home, now=T0)
    assert quiet["drifted"] is False and quiet["episode_id"] is None and quiet["model_version"] == "3"
    shifted = lending_club_frame(4).assign(annual_inc=lambda f: f["annual_inc"] * 1.5)
    loud = monitor_batch("credit_risk", shifted, model_dir, batch_id="4b", home=home, now=T0 + HOUR)
    assert loud["drifted_features"] == ["annual_inc"] and loud["episode_id"]
    assert "annual_inc" in open(loud["html_path"]).read()
    assert json.loads(open(loud["report_path"]).read())["drifted"] is True
    assert [h["drifted"] for h in read_drift_history("credit_risk", home)] == [False, True]
    json.dumps(loud)  # a plain XCom value


def test_a_record_cut_short_after_an_inner_brace_is_skipped_and_the_monitor_reads_on(home):
    """A writer that died after an inner object's ``}``: the fragment looks closed, but
    the record is cut short; later appends start on lines of their own."""
    ep.record_batch("l", report(True), model_version="1", batch_id="a", home=home, now=T0)
    path = drift_history_path("l", home)
    whole = path.read_text().splitlines()[0]
    cut = whole[: whole.index("}") + 1]  # up to the end of the first inner object
    assert cut.endswith("}") and cut.startswith("{")
    with open(path, "a") as fh:
        fh.write(cut)
    ep.record_batch("l", report(False), model_version="1", batch_id="b", home=home, now=T0 + HOUR)
    assert [r["batch_id"] for r in read_drift_history("l", home, kind="batch")] == ["a", "b"]


def test_a_retried_scoring_task_counts_each_batch_once(home, tmp_path):
    model_dir = _served_model(tmp_path)
    shifted = lending_club_frame(4).assign(annual_inc=lambda f: f["annual_inc"] * 1.5)
    loud = monitor_batch("credit_risk", shifted, model_dir, batch_id="4b", home=home, now=T0)
    # the scoring task of the next batch fails after recording and is retried, three times
    for attempt in range(3):
        quiet = monitor_batch("credit_risk", lending_club_frame(4), model_dir, batch_id="4", home=home,
                              now=T0 + (attempt + 1) * HOUR)
    assert quiet["episode_id"] == loud["episode_id"]
    assert [r["batch_id"] for r in read_drift_history("credit_risk", home, kind="batch")] == ["4b", "4"]
    episode = ep.load_state("credit_risk", home)["episodes"][0]
    # one clean batch, not three: the episode stays open (it closes after 3 clean batches)
    assert episode["status"] == "open" and episode["clean_streak"] == 1


def test_a_training_that_includes_the_drifted_batch_becomes_the_episodes_retrain(home):
    """retrain_on: new_data: the training the drifted batch set off is the episode's
    retrain, whoever links them first; its outcome is the episode's."""
    first = ep.record_batch("l", report(True), model_version="1", batch_id="b2", home=home, now=T0)
    assert ep.adopt_at_prepare("l", "run-0", ["b1"], home=home, now=T0) is None  # not on the drifted batch
    context = ep.adopt_at_prepare("l", "run-1", ["b1", "b2"], home=home, now=T0)
    assert context["episode_id"] == first["episode_id"] and "b2" in context["reason"]
    # a retried prepare finds its own attempt; another training meanwhile is not a second retrain
    assert ep.adopt_at_prepare("l", "run-1", ["b1", "b2"], home=home, now=T0)["episode_id"] == first["episode_id"]
    assert ep.adopt_at_prepare("l", "run-2", ["b1", "b2"], home=home, now=T0) is None
    assert ep.record_training_outcome("l", "run-1", "not_blessed", home=home, now=T0 + HOUR) == [first["episode_id"]]
    assert ep.record_training_outcome("l", "run-2", "blessed", home=home, now=T0 + HOUR) == []  # not a retrain
    # the monitor links an episode to a training that had started (and ended) before it looked
    adopted = ep.adopt_existing_training(
        "l", [{"run_id": "run-3", "batches": ["b1", "b2"], "outcome": "blessed", "model_version": "2"},
              {"run_id": "run-1", "batches": ["b1", "b2"], "outcome": "not_blessed"}],
        home=home, now=T0 + 2 * HOUR,
    )
    assert adopted == {"episode_id": first["episode_id"], "run_id": "run-3", "outcome": "blessed"}
    episode = ep.load_state("l", home)["episodes"][0]
    assert [(a["run_id"], a["status"], a["adopted_by"]) for a in episode["attempts"]] == [
        ("run-1", "not_blessed", "prepare"), ("run-3", "blessed", "monitor")]
    assert episode["status"] == "resolved" and episode["attempts"][1]["model_version"] == "2"


class _Event:
    """What Airflow hands a task for a triggering asset event: an object with ``extra``."""

    def __init__(self, extra: dict):
        self.extra = extra


def test_a_drift_retrain_that_fails_before_the_gate_is_recorded_at_once(home, monkeypatch):
    from pipelines.runtime.assets import drift_asset
    from pipelines.training import stage

    monkeypatch.setenv("FACTORY_HOME", str(home))
    ep.record_batch("credit_risk", report(True), model_version="1", batch_id="b", home=home, now=T0)
    claim = ep.claim_retrain("credit_risk", "monitor-run", home=home)
    events = {drift_asset("credit_risk"): [_Event({"episode_id": claim.episode_id, "claimed_by": "monitor-run"})]}
    context = stage.drift_context("credit_risk", "train-run", events, home=home)
    assert context["episode_id"] == claim.episode_id and "note" not in context
    # a retried prepare marks it running again: no error, no second record
    assert "note" not in stage.drift_context("credit_risk", "train-run", events, home=home)
    # prepare or train failed: the run's last task records it (no evaluation), the episode is free again
    ended = stage.record_outcome("credit_risk", "train-run", None, None, home=home)
    assert ended["outcome"] == "failed" and ended["episodes"] == [claim.episode_id]
    attempt = ep.load_state("credit_risk", home)["episodes"][0]["attempts"][0]
    assert attempt["status"] == "failed" and attempt["train_run_id"] == "train-run"
    # a late duplicate of the drift event does not fail the run: it is noted
    late = stage.drift_context("credit_risk", "train-run-2", events, home=home)
    assert "not recorded as the episode's retrain" in late["note"]
    events_run = [(r["event"], r.get("train_run_id")) for r in read_drift_history("credit_risk", home, kind="retrain")]
    assert events_run == [("pending", None), ("running", "train-run"), ("failed", None)]
