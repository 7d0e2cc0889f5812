"""Drift episodes and the retrain cooldown: one retrain per episode, not one per batch.

An episode OPENS at the first drifted batch of a line. Later batches, drifted or not,
join the open episode. A retrain may start for it (:func:`should_retrain`) when

- no retrain of that episode is pending (claimed) or running, and
- the cooldown has passed since the line's last drift-started retrain, and
- the episode has not used up ``max_attempts`` retrains.

A claimed or running retrain with no outcome after ``stale_after`` is treated as failed
(a crashed DAG run must not block the line forever). The episode CLOSES as

- ``resolved`` when a retrain's model is blessed (the next batches are scored against
  the new model's profile; fresh drift opens a new episode), or
- ``subsided`` after ``close_after_clean_batches`` batches in a row without drift while no
  retrain is in flight.

A retrain that ends not blessed (or failed) leaves the episode open: another may start
after the cooldown. Empty batches neither open episodes nor count as clean.

Which training is an episode's retrain depends on the line's ``training.retrain_on``:

- ``new_data`` (the default): every validated batch already starts a training that
  includes it, so drift starts no second one. The episode *adopts* the training that
  includes its drifted batch (:func:`apply_adoption`): the training's ``prepare`` adopts
  an episode that is open when it starts (:func:`adopt_at_prepare`), and the monitor adopts
  a training that had started before the episode opened (:func:`adopt_existing_training`),
  with its outcome at once when it has already ended. Exactly one training per drifted
  batch, and its outcome is the episode's.
- ``drift``: a new batch alone trains nothing; the monitor claims a retrain
  (:func:`claim_retrain`), the drift Asset starts it, its ``prepare`` marks it running.

Either way the training DAG's last task records how the run ended, failed included
(:func:`record_training_outcome`), against whichever attempt names that run.

The logic is pure functions of a state dict (:func:`apply_batch`, :func:`should_retrain`,
:func:`apply_claim`, :func:`apply_outcome`), tested without files or Airflow. The state
lives in ``<FACTORY_HOME>/drift/<line>/episodes.json``; the wrappers
(:func:`record_batch`, :func:`claim_retrain`, :func:`mark_retrain_running`,
:func:`record_retrain_outcome`, the adoptions) read-modify-write it under the line's lock and append
the matching record to the drift history (:mod:`pipelines.catalog.records`), which
carries the episode id of every batch.

Longer than most modules on purpose: the state machine and the four locked transitions
that apply it are one unit; apart, a transition would drift from the rule it applies.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipelines.catalog import records
from pipelines.catalog.layout import drift_episodes_path
from pipelines.catalog.records import RecordError
from pipelines.specs.drift import RetrainPolicy

OPEN, RESOLVED, SUBSIDED = "open", "resolved", "subsided"
PENDING, RUNNING = "pending", "running"
BLESSED, NOT_BLESSED, FAILED, STALE = "blessed", "not_blessed", "failed", "stale"
IN_FLIGHT = (PENDING, RUNNING)
OUTCOMES = (BLESSED, NOT_BLESSED, FAILED)


class EpisodeError(ValueError):
    """An episode operation that does not fit the state (unknown episode or run)."""


@dataclass(frozen=True)
class RetrainDecision:
    """Whether to start a retrain now, for which episode, and why (or why not)."""

    retrain: bool
    reason: str
    episode_id: str | None = None
    batches: tuple[str, ...] = ()  # the episode's batches so far, oldest first
    wait_until: str | None = None  # cooldown end, when that is what blocks
    stale_runs: tuple[str, ...] = field(default_factory=tuple)  # in-flight runs given up as stale

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batches"], d["stale_runs"] = list(self.batches), list(self.stale_runs)
        return d


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds")


def _time(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def new_state(line: str) -> dict[str, Any]:
    return {"line": line, "episodes": [], "last_retrain_at": None}


def open_episode(state: dict[str, Any]) -> dict[str, Any] | None:
    """The line's open episode (there is at most one), or None."""
    for episode in reversed(state["episodes"]):
        if episode["status"] == OPEN:
            return episode
    return None


def find_episode(state: dict[str, Any], episode_id: str) -> dict[str, Any]:
    for episode in state["episodes"]:
        if episode["id"] == episode_id:
            return episode
    raise EpisodeError(f"{state['line']}: no drift episode {episode_id!r}")


def _is_stale(attempt: dict[str, Any], now: datetime, stale_after: timedelta | None) -> bool:
    since = attempt.get("started_at") or attempt["claimed_at"]
    return stale_after is not None and now - _time(since) >= stale_after


# -- pure logic ---------------------------------------------------------------------------


def apply_batch(
    state: dict[str, Any],
    batch: dict[str, Any],
    now: datetime,
    policy: RetrainPolicy | None = None,
) -> tuple[dict[str, Any], str | None]:
    """The state after one scored batch; returns ``(new state, episode id or None)``.

    ``batch``: ``{"batch_id", "drifted", "status", "model_version", "drifted_features"}``
    (a history record; ``status`` ``"empty"`` marks a batch with no rows).
    """
    policy = policy or RetrainPolicy()
    state = copy.deepcopy(state)
    episode = open_episode(state)
    if batch.get("drifted"):
        if episode is None:
            episode = {
                "id": f"ep{len(state['episodes']) + 1:04d}-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}",
                "status": OPEN,
                "opened_at": _iso(now),
                "opened_by": batch.get("batch_id"),
                "model_version": batch.get("model_version"),
                "batches": [],
                "drifted_batches": [],
                "features": {},
                "clean_streak": 0,
                "attempts": [],
                "closed_at": None,
                "close_reason": None,
            }
            state["episodes"].append(episode)
        episode["batches"].append(batch.get("batch_id"))
        episode["drifted_batches"].append(batch.get("batch_id"))
        episode["clean_streak"] = 0
        for d in batch.get("drifted_features") or []:
            name, severity = d["feature"], d.get("severity")
            if name in episode["features"] and episode["features"][name] is None:
                continue  # missing from a batch (severity None) stays the worst
            old = episode["features"].get(name)
            episode["features"][name] = None if severity is None else max(severity, old or 0.0)
        return state, episode["id"]
    if episode is None:
        return state, None
    episode["batches"].append(batch.get("batch_id"))
    if batch.get("status", "ok") == "ok":
        episode["clean_streak"] += 1
    in_flight = any(a["status"] in IN_FLIGHT for a in episode["attempts"])
    if episode["clean_streak"] >= policy.close_after_clean_batches and not in_flight:
        episode.update(
            status=SUBSIDED,
            closed_at=_iso(now),
            close_reason=f"{episode['clean_streak']} batches in a row without drift",
        )
    return state, episode["id"]


def should_retrain(
    state: dict[str, Any],
    now: datetime,
    cooldown: timedelta,
    *,
    stale_after: timedelta | None = None,
    max_attempts: int | None = None,
) -> RetrainDecision:
    """Decide whether a drift retrain may start now. ``state``: the line's episode
    state (its history of episodes and retrain attempts). Pure: nothing is changed."""
    now = _now(now)
    episode = open_episode(state)
    if episode is None:
        return RetrainDecision(False, "no open drift episode")
    batches = tuple(episode["batches"])
    stale = tuple(
        a["run_id"] for a in episode["attempts"] if a["status"] in IN_FLIGHT and _is_stale(a, now, stale_after)
    )
    for a in episode["attempts"]:
        if a["status"] in IN_FLIGHT and a["run_id"] not in stale:
            since = a.get("started_at") or a["claimed_at"]
            return RetrainDecision(
                False,
                f"retrain {a['run_id']!r} of episode {episode['id']} is {a['status']} since {since}",
                episode["id"],
                batches,
            )
    used = len(episode["attempts"])
    if max_attempts is not None and used >= max_attempts:
        return RetrainDecision(
            False,
            f"episode {episode['id']} has used its {max_attempts} retrain attempts without a blessed "
            "model: needs a person",
            episode["id"],
            batches,
            stale_runs=stale,
        )
    last = state.get("last_retrain_at")
    if last is not None and now - _time(last) < cooldown:
        until = _time(last) + cooldown
        return RetrainDecision(
            False,
            f"cooldown: the last drift retrain started at {last}; the next may start at {_iso(until)}",
            episode["id"],
            batches,
            wait_until=_iso(until),
            stale_runs=stale,
        )
    drifted = ", ".join(episode["features"]) or "?"
    what = "first retrain" if used == 0 else f"retrain attempt {used + 1}"
    return RetrainDecision(
        True,
        f"{what} for episode {episode['id']} (opened {episode['opened_at']} by batch "
        f"{episode['opened_by']!r}; drifted: {drifted})",
        episode["id"],
        batches,
        stale_runs=stale,
    )


def apply_claim(state: dict[str, Any], decision: RetrainDecision, run_id: str, now: datetime) -> dict[str, Any]:
    """The state after a positive decision is acted on: the attempt is ``pending``."""
    if not decision.retrain or decision.episode_id is None:
        raise EpisodeError(f"nothing to claim: {decision.reason}")
    state = copy.deepcopy(state)
    episode = find_episode(state, decision.episode_id)
    for a in episode["attempts"]:
        if a["run_id"] in decision.stale_runs:
            a.update(status=STALE, finished_at=_iso(now))
        if a["run_id"] == run_id:
            raise EpisodeError(f"run {run_id!r} already has an attempt in episode {episode['id']}")
    episode["attempts"].append(
        {"run_id": run_id, "status": PENDING, "claimed_at": _iso(now), "started_at": None, "finished_at": None,
         "model_version": None}
    )
    state["last_retrain_at"] = _iso(now)
    return state


def adoptable(state: dict[str, Any], batches: list[str] | tuple[str, ...], now: datetime,
              stale_after: timedelta | None = None) -> dict[str, Any] | None:
    """The open episode a training on ``batches`` would be the retrain of: one with a
    drifted batch among them and no retrain in flight (a stale one does not count)."""
    episode = open_episode(state)
    if episode is None or not set(episode["drifted_batches"]) & set(batches):
        return None
    for a in episode["attempts"]:
        if a["status"] in IN_FLIGHT and not _is_stale(a, now, stale_after):
            return None
    return episode


def apply_adoption(state: dict[str, Any], episode_id: str, run_id: str, now: datetime,
                   by: str) -> dict[str, Any]:
    """The state after training run ``run_id`` becomes a retrain of the episode
    (``running``; ``by`` says who linked them: the training's prepare or the monitor)."""
    state = copy.deepcopy(state)
    episode = find_episode(state, episode_id)
    for a in episode["attempts"]:
        if a["status"] in IN_FLIGHT:
            a.update(status=STALE, finished_at=_iso(now))
        if a.get("train_run_id", a["run_id"]) == run_id:
            raise EpisodeError(f"training {run_id!r} already is a retrain of episode {episode_id}")
    episode["attempts"].append(
        {"run_id": run_id, "train_run_id": run_id, "status": RUNNING, "adopted_by": by, "claimed_at": _iso(now),
         "started_at": _iso(now), "finished_at": None, "model_version": None}
    )
    return state


def _attempt(state: dict[str, Any], episode_id: str, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    episode = find_episode(state, episode_id)
    for a in episode["attempts"]:
        if a["run_id"] == run_id:
            return episode, a
    raise EpisodeError(f"episode {episode_id} has no retrain {run_id!r}")


def apply_running(state: dict[str, Any], episode_id: str, run_id: str, now: datetime,
                  train_run_id: str | None = None) -> dict[str, Any]:
    """The state after a claimed retrain's training started (``train_run_id``: its DAG
    run). Starting again (a retried ``prepare``) is no change."""
    state = copy.deepcopy(state)
    _, attempt = _attempt(state, episode_id, run_id)
    if attempt["status"] == RUNNING and attempt.get("train_run_id") in (None, train_run_id):
        return state
    if attempt["status"] != PENDING:
        raise EpisodeError(f"retrain {run_id!r} is {attempt['status']}, not pending")
    attempt.update(status=RUNNING, started_at=_iso(now), train_run_id=train_run_id)
    return state


def apply_outcome(
    state: dict[str, Any],
    episode_id: str,
    run_id: str,
    outcome: str,
    now: datetime,
    model_version: str | None = None,
) -> dict[str, Any]:
    """The state after a retrain ends: ``blessed`` resolves the episode; ``not_blessed``
    and ``failed`` leave it open for another attempt after the cooldown. A late outcome
    of an attempt already marked stale is still recorded."""
    if outcome not in OUTCOMES:
        raise EpisodeError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    state = copy.deepcopy(state)
    episode, attempt = _attempt(state, episode_id, run_id)
    if attempt["status"] in OUTCOMES:
        raise EpisodeError(f"retrain {run_id!r} already ended {attempt['status']}")
    attempt.update(status=outcome, finished_at=_iso(now), model_version=model_version)
    if outcome == BLESSED and episode["status"] == OPEN:
        episode.update(
            status=RESOLVED,
            closed_at=_iso(now),
            close_reason=f"retrain {run_id!r} blessed" + (f" (model {model_version})" if model_version else ""),
        )
    return state


# -- the state file -----------------------------------------------------------------------


def state_path(line: str, home: Path | None = None) -> Path:
    return drift_episodes_path(line, home)


def load_state(line: str, home: Path | None = None) -> dict[str, Any]:
    """The line's episode state (a fresh one when there is none yet)."""
    try:
        state = records.read_episodes(line, home)
    except RecordError as err:
        raise EpisodeError(f"drift episode state is corrupt: {err}") from None
    return new_state(line) if state is None else state


def _save(line: str, state: dict[str, Any], home: Path | None) -> None:
    records.write_episodes(line, state, home)


def batch_record(
    report: dict[str, Any],
    *,
    line: str,
    model_version: str | None,
    batch_id: str | None = None,
    report_path: str | None = None,
    html_path: str | None = None,
) -> dict[str, Any]:
    """The compact history record of one drift report."""
    psi = {
        name: f["metrics"]["psi"]["value"]
        for name, f in report["features"].items()
        if f.get("status") == "ok"
    }
    top = max(psi, key=psi.get) if psi else None
    return {
        "kind": "batch",
        "line": line,
        "batch_id": batch_id or report.get("batch_id"),
        "model_version": model_version,
        "scored_at": report.get("scored_at"),
        "status": report.get("status"),
        "n_cur": report.get("n_cur"),
        "drifted": bool(report.get("drifted")),
        "prediction_drift": bool(report.get("prediction_drift")),
        "schema_changed": bool(report.get("schema_changed")),
        "drifted_features": [
            {"feature": d["feature"], "severity": d["severity"], "by": d["by"]} for d in report["drifted_features"]
        ],
        "max_psi": {"feature": top, "value": psi[top]} if top else None,
        "auc": (report.get("performance") or {}).get("auc"),
        "positive_rate": (report.get("performance") or {}).get("positive_rate"),
        "report_path": report_path,
        "html_path": html_path,
    }


def record_batch(
    line: str,
    report: dict[str, Any],
    *,
    model_version: str | None,
    batch_id: str | None = None,
    report_path: str | None = None,
    html_path: str | None = None,
    policy: RetrainPolicy | None = None,
    home: Path | None = None,
    now: datetime | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record a scored batch: update the episodes and append the history record (with its
    ``episode_id``), atomically under the line's lock. Returns the record. ``extra``:
    fields kept on the history record besides the report's (a live window's ``source``
    and bounds)."""
    now = _now(now)
    record = batch_record(
        report, line=line, model_version=model_version, batch_id=batch_id, report_path=report_path,
        html_path=html_path,
    )
    record.update({k: v for k, v in (extra or {}).items() if k not in record})
    record["recorded_at"] = _iso(now)
    with records.drift_lock(line, home):
        for earlier in records.read_drift_history(line, home, kind="batch"):
            if earlier.get("batch_id") == record["batch_id"] and earlier.get("model_version") == model_version \
                    and earlier.get("source") == record.get("source"):
                return earlier.to_json()  # a retried scoring task: the batch counts once
        state, episode_id = apply_batch(load_state(line, home), record, now, policy)
        record["episode_id"] = episode_id
        episode = find_episode(state, episode_id) if episode_id else None
        record["episode_status"] = episode["status"] if episode else None
        _save(line, state, home)
        records.append_drift_record_unlocked(line, record, home)
    return record


def claim_retrain(
    line: str,
    run_id: str,
    *,
    policy: RetrainPolicy | None = None,
    home: Path | None = None,
    now: datetime | None = None,
) -> RetrainDecision:
    """Decide and, when the answer is yes, claim the retrain (``pending``) in one locked
    step, so two sensors cannot both start one. ``run_id`` names the retrain (e.g. the
    DAG run id it will have)."""
    policy = policy or RetrainPolicy()
    now = _now(now)
    if not policy.enabled:
        return RetrainDecision(False, "drift retraining is switched off (drift.retrain.enabled: false)")
    with records.drift_lock(line, home):
        state = load_state(line, home)
        decision = should_retrain(
            state,
            now,
            timedelta(hours=policy.cooldown_hours),
            stale_after=timedelta(hours=policy.stale_after_hours),
            max_attempts=policy.max_attempts,
        )
        if decision.retrain:
            _save(line, apply_claim(state, decision, run_id, now), home)
            records.append_drift_record_unlocked(line, {"kind": "retrain", "line": line, "event": PENDING, "episode_id": decision.episode_id,
                 "run_id": run_id, "at": _iso(now), "reason": decision.reason,
                 "stale_runs": list(decision.stale_runs)},
                home,
            )
    return decision


def mark_retrain_running(
    line: str, episode_id: str, run_id: str, *, train_run_id: str | None = None, home: Path | None = None,
    now: datetime | None = None,
) -> None:
    """A claimed retrain has started (its training DAG run ``train_run_id`` began)."""
    now = _now(now)
    with records.drift_lock(line, home):
        before = load_state(line, home)
        after = apply_running(before, episode_id, run_id, now, train_run_id)
        if after == before:
            return
        _save(line, after, home)
        records.append_drift_record_unlocked(line, {"kind": "retrain", "line": line, "event": RUNNING, "episode_id": episode_id, "run_id": run_id,
             "train_run_id": train_run_id, "at": _iso(now)},
            home,
        )


def _adopt_unlocked(line: str, state: dict[str, Any], episode: dict[str, Any], run_id: str, now: datetime,
                    by: str, home: Path | None) -> dict[str, Any]:
    state = apply_adoption(state, episode["id"], run_id, now, by)
    _save(line, state, home)
    records.append_drift_record_unlocked(
        line,
        {"kind": "retrain", "line": line, "event": RUNNING, "episode_id": episode["id"], "run_id": run_id,
         "train_run_id": run_id, "adopted_by": by, "at": _iso(now)},
        home,
    )
    return state


def _context(episode: dict[str, Any], run_id: str, reason: str) -> dict[str, Any]:
    return {"episode_id": episode["id"], "claimed_by": run_id, "drifted": dict(episode["features"]),
            "batches": list(episode["batches"]), "reason": reason}


def adopt_at_prepare(
    line: str, run_id: str, batches: list[str], *, policy: RetrainPolicy | None = None, home: Path | None = None,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """A training starting on ``batches`` becomes the retrain of the open episode whose
    drifted batch it includes (``retrain_on: new_data``); returns the drift context, or
    None. A retried ``prepare`` finds its own attempt and returns the same context."""
    policy = policy or RetrainPolicy()
    now = _now(now)
    with records.drift_lock(line, home):
        state = load_state(line, home)
        for episode in state["episodes"]:
            for a in episode["attempts"]:
                if a.get("train_run_id") == run_id:
                    return _context(episode, run_id, f"retrain of episode {episode['id']} (adopted before)")
        episode = adoptable(state, batches, now, timedelta(hours=policy.stale_after_hours))
        if episode is None:
            return None
        _adopt_unlocked(line, state, episode, run_id, now, "prepare", home)
    drifted = sorted(set(episode["drifted_batches"]) & set(batches))
    return _context(episode, run_id, f"this training includes the drifted batch(es) {drifted} of episode {episode['id']}")


def adopt_existing_training(
    line: str, runs: list[dict[str, Any]], *, policy: RetrainPolicy | None = None, home: Path | None = None,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """The monitor's side of ``retrain_on: new_data``: the open episode adopts the newest
    training in ``runs`` (``{"run_id", "batches", "outcome", "model_version"}``, newest
    first) that includes its drifted batch, and takes its outcome at once if it has ended.
    Returns ``{"episode_id", "run_id", "outcome"}``, or None (nothing open, a retrain in
    flight, or no such training yet: then the one the batch set off adopts it)."""
    policy = policy or RetrainPolicy()
    now = _now(now)
    with records.drift_lock(line, home):
        state = load_state(line, home)
        for run in runs:
            episode = adoptable(state, run["batches"], now, timedelta(hours=policy.stale_after_hours))
            if episode is None:
                continue
            if any(a.get("train_run_id") == run["run_id"] for a in episode["attempts"]):
                continue  # this one ended before; a newer training will adopt it
            state = _adopt_unlocked(line, state, episode, run["run_id"], now, "monitor", home)
            if run.get("outcome"):
                _outcome_unlocked(line, state, episode["id"], run["run_id"], run["outcome"], now,
                                  run.get("model_version"), home)
            return {"episode_id": episode["id"], "run_id": run["run_id"], "outcome": run.get("outcome")}
    return None


def record_training_outcome(
    line: str, train_run_id: str, outcome: str, *, model_version: str | None = None, home: Path | None = None,
    now: datetime | None = None,
) -> list[str]:
    """How training run ``train_run_id`` ended, recorded against every in-flight retrain
    that names it (claimed or adopted); returns their episode ids. A run that is no
    episode's retrain changes nothing."""
    now = _now(now)
    done = []
    with records.drift_lock(line, home):
        state = load_state(line, home)
        for episode in state["episodes"]:
            for a in episode["attempts"]:
                if a.get("train_run_id") == train_run_id and a["status"] in (*IN_FLIGHT, STALE):
                    state = _outcome_unlocked(line, state, episode["id"], a["run_id"], outcome, now, model_version,
                                              home)
                    done.append(episode["id"])
    return done


def _outcome_unlocked(line: str, state: dict[str, Any], episode_id: str, run_id: str, outcome: str, now: datetime,
                      model_version: str | None, home: Path | None) -> dict[str, Any]:
    state = apply_outcome(state, episode_id, run_id, outcome, now, model_version)
    _save(line, state, home)
    episode = find_episode(state, episode_id)
    records.append_drift_record_unlocked(
        line,
        {"kind": "retrain", "line": line, "event": outcome, "episode_id": episode_id, "run_id": run_id,
         "at": _iso(now), "model_version": model_version, "episode_status": episode["status"]},
        home,
    )
    return state


def record_retrain_outcome(
    line: str,
    episode_id: str,
    run_id: str,
    outcome: str,
    *,
    model_version: str | None = None,
    home: Path | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Record how a drift retrain ended (``blessed``, ``not_blessed`` or ``failed``);
    returns the episode after the change."""
    now = _now(now)
    with records.drift_lock(line, home):
        state = _outcome_unlocked(line, load_state(line, home), episode_id, run_id, outcome, now, model_version, home)
    return find_episode(state, episode_id)
