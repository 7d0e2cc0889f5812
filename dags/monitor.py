"""
### Monitor: new validated batches and live traffic -> drift scores -> drift event

One DAG per product line, generated from `include/lines/*.yaml`. Runs when the line's
`validated_data` or `live_labels` Asset gets news and every 30 minutes.

1. **wait**: a deferrable sensor. It holds no worker slot while it waits: the triggerer
   runs it until the line has validated batches not scored yet and a model in serving,
   or a closed window of the prediction log (or one with enough new labels) to score.
2. **score**: each new batch against the serving model's reference profile (PSI and KS
   for numeric features, Jensen-Shannon and L-infinity for categoricals, prediction
   drift on the serving model's scores, ROC AUC when the batch has labels). Every score
   is kept in the line's drift history; a report per batch (JSON and HTML) is written.
3. **live**: compacts the model server's prediction log and scores each closed window
   (`serving.live.window_minutes`, per model version, at least `serving.live.min_rows`
   answers) the same way, against the profile of the version that answered it, as
   `live-<YYYYmmddTHHMM>-v<version>`; once enough of its rows have labels, again as
   `...-labelled`, with the live ROC AUC. Then removes log days older than
   `serving.prediction_log.retention_days`.
4. **retrain**: links an open drift episode to its retrain. With the line's
   `training.retrain_on: new_data` the drifted batch has already set off a training that
   includes it: the episode adopts that one (no second training). With `drift`, when the
   spec's policy allows (one retrain per episode, a cooldown between retrains), it emits
   an event on the line's `drift` Asset with what drifted and by how much; the line's
   training DAG is scheduled on it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, task

from pipelines.monitoring.sensor import NewBatchesSensor
from pipelines.runtime.assets import drift_asset, live_labels, validated_data
from pipelines.specs import LineSpec, load_specs


def build(spec: LineSpec) -> DAG:
    line = spec.name
    drift = drift_asset(line)
    with DAG(
        dag_id=f"monitor_{line}",
        description=f"Score new batches of {line} for drift against the serving model",
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable("*/30 * * * *", timezone="UTC"),
            assets=validated_data(line) | live_labels(line),
        ),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["factory", "monitor", line, *spec.tags],
        default_args={"owner": spec.owner, "retries": 1, "retry_delay": timedelta(seconds=30)},
        doc_md=f"{__doc__}\n\n**Line:** `{line}`: {spec.description}",
    ) as dag:
        wait = NewBatchesSensor(
            task_id="wait",
            line=line,
            poll_seconds=5,  # reading a few records: a batch is scored seconds after a model serves
            timeout=timedelta(hours=6).total_seconds(),
            soft_fail=True,  # nothing new for six hours is not an error
        )

        @task
        def score(work: dict) -> dict:
            from pipelines.monitoring.stage import score_new_batches

            return score_new_batches(line, work.get("batches"))

        @task
        def live(work: dict) -> dict:
            from pipelines.monitoring.live import score_live_windows
            from pipelines.serving.predlog import apply_retention

            summary = score_live_windows(line)
            summary["retention_removed_days"] = apply_retention(line, spec.serving.prediction_log.retention_days)
            return summary

        @task(outlets=[drift])
        def retrain(scored: dict, live_scored: dict, run_id: str | None = None, outlet_events=None) -> dict:
            from airflow.sdk.exceptions import AirflowSkipException

            from pipelines.monitoring.stage import retrain_decision

            event = retrain_decision(line, run_id or "manual")
            if not event.get("retrain"):
                drifted = [b["batch_id"] for b in [*scored.get("batches", []), *live_scored.get("windows", [])]
                           if b.get("drifted")]
                raise AirflowSkipException(
                    f"no drift event for {line}: {event.get('reason')} (drifted batches in this run: "
                    f"{drifted or 'none'})"
                )
            outlet_events[drift].extra = event
            return event

        retrain(score(wait.output), live(wait.output))
    return dag


for _spec in load_specs():
    globals()[f"monitor_{_spec.name}"] = build(_spec)
