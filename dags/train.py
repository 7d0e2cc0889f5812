"""
### Train: validated batches -> Horovod data-parallel TensorFlow -> SavedModel + MLflow run

One DAG per product line, generated from `include/lines/*.yaml`. It runs when the
line's `validated_data` Asset gets a new batch, on the line's cron retrain schedule
(`training.schedule`), or when triggered (UI or REST API) with typed params.

1. **prepare**: checks the params and the data window (the line's validated batches),
   checks each batch against the spec's schema, splits by a stable hash of the key
   (train / validation / held-out eval) and writes one training shard per worker.
   Bad input fails here, before any worker starts, and so does a conf key the DAG
   does not take (a misspelt `wrokers`), which Airflow itself lets through.
2. **train**: `horovodrun` starts the workers in the ML environment (N processes on this
   machine over Gloo; a host list or GPU hosts at scale, by configuration). Rank 0 writes
   checkpoints each epoch; a retried task resumes from the last one. The SavedModel
   (`serving_default` over serialized `tf.Example`) and TensorBoard logs go to the run
   folder and the run's MLflow run, with the reference profile the drift monitor uses.
3. **evaluate**: the TFX evaluation gate (Evaluator against the last blessed model,
   thresholds and slices from the spec) and the Pusher to the versioned serving store; the
   candidate is registered in MLflow, and `champion` follows the version in serving. A
   rejected candidate is pushed only with `force_bless` and a written reason.

4. **finish** (a teardown: it runs whatever happened before it, and the run's state
   stays that of the work): records how the run ended (`blessed`, `not_blessed`, or
   `failed` when prepare, train or the gate failed) in the run folder and against the
   drift episode whose retrain this run is.

What starts it besides the cron and a person is the spec's `training.retrain_on`:
`new_data` (every validated batch; a drift episode adopts the training that includes its
drifted batch, so a drifted batch trains once) or `drift` (only a drift episode's
retrain, through the line's `drift` Asset).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, task

from pipelines.runtime.assets import drift_asset, validated_data
from pipelines.specs import LineSpec, load_specs


def build(spec: LineSpec) -> DAG:
    line = spec.name
    t = spec.training
    # new validated data or a drift episode's retrain (never both: one training per
    # drifted batch), and the periodic retrain
    assets = validated_data(line) if t.retrain_on == "new_data" else drift_asset(line)
    schedule = (
        AssetOrTimeSchedule(timetable=CronTriggerTimetable(t.schedule, timezone="UTC"), assets=assets)
        if t.schedule
        else assets
    )
    with DAG(
        dag_id=f"train_{line}",
        description=f"Train a candidate model of {line} with Horovod",
        schedule=schedule,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # a retrain already running is not started twice
        tags=["factory", "train", line, *spec.tags],
        default_args={"owner": spec.owner, "retries": 0},
        params={
            "workers": Param(t.workers, type="integer", minimum=1, maximum=64, title="Horovod workers"),
            "epochs": Param(t.epochs, type="integer", minimum=1, maximum=1000, title="Epochs (upper bound)"),
            "batch_size": Param(t.batch_size, type="integer", minimum=1, maximum=65536, title="Batch size per worker"),
            "learning_rate": Param(
                t.learning_rate, type="number", exclusiveMinimum=0, maximum=10,
                title="Learning rate of one worker", description="Scaled by the number of workers.",
            ),
            "window_batches": Param(
                t.window.batches, type="integer", minimum=0, title="Data window",
                description="Train on the latest N validated batches; 0: all of them.",
            ),
            "batches": Param(
                None, type=["null", "array"], items={"type": "string"}, title="Batches",
                description="Train on exactly these validated batches (overrides the window).",
            ),
            "force_bless": Param(
                False, type="boolean", title="Force-bless",
                description="Push the candidate even if the evaluation gate rejects it (needs a reason).",
            ),
            "force_bless_reason": Param(
                None, type=["null", "string"], maxLength=2000, title="Force-bless reason",
                description="Why the candidate is pushed against the gate; recorded with the model version.",
            ),
        },
        doc_md=f"{__doc__}\n\n**Line:** `{line}`: {spec.description}",
    ) as dag:

        @task(retries=0)
        def prepare(
            params: dict | None = None, run_id: str | None = None, triggering_asset_events=None, dag_run=None,
            dag=None,
        ) -> dict:
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

            from pipelines.evaluation.gate import ForceBlessError, check_force_reason
            from pipelines.runtime.params import check_conf
            from pipelines.training.prepare import EmptyWindow, TrainingInputError
            from pipelines.training.stage import drift_context
            from pipelines.training.stage import prepare as prepare_run

            # a drift event's claimed retrain is running from here on, whatever happens next
            drift = drift_context(line, run_id or "manual", triggering_asset_events)
            check_conf(dag_run, dag)  # a conf key this DAG does not take fails the run here
            params = params or {}
            keys = ("workers", "epochs", "batch_size", "learning_rate", "window_batches", "batches")
            overrides = {k: params.get(k) for k in keys}
            try:
                if params.get("force_bless") or params.get("force_bless_reason") is not None:
                    check_force_reason(params.get("force_bless_reason") or "")  # before any training
                prepared = prepare_run(line, run_id or "manual", overrides)
            except EmptyWindow as err:
                if dag_run is not None and getattr(dag_run.run_type, "value", dag_run.run_type) == "scheduled":
                    raise AirflowSkipException(f"periodic retrain skipped: {err}") from None
                raise AirflowFailException(str(err)) from None
            except (TrainingInputError, ForceBlessError) as err:  # bad data or params: a retry cannot help
                raise AirflowFailException(str(err)) from None
            # retrain_on: new_data: this training includes a drifted batch -> the episode's retrain
            prepared["drift"] = drift or drift_context(line, run_id or "manual", None, batches=prepared["batches"])
            return prepared

        # One retry: the workers resume from the last epoch's checkpoint.
        @task(retries=1, retry_delay=timedelta(seconds=10), execution_timeout=timedelta(seconds=t.timeout_s + 300))
        def train(prepared: dict, dag_run=None) -> dict:
            import logging

            from pipelines.training.stage import train as train_run

            log = logging.getLogger("airflow.task")
            tags = {"airflow.dag_id": dag_run.dag_id, "airflow.run_id": dag_run.run_id}
            return train_run(line, prepared["run_dir"], tags=tags, echo=log.info)

        @task(retries=1, retry_delay=timedelta(seconds=10))
        def evaluate(prepared: dict, trained: dict, params: dict | None = None, dag_run=None) -> dict:
            import logging

            from airflow.sdk.exceptions import AirflowFailException

            from pipelines.evaluation.stage import GateInputError, evaluate_and_push

            log = logging.getLogger("airflow.task")
            params = params or {}
            force = bool(params.get("force_bless")) or params.get("force_bless_reason") is not None
            tags = {"airflow.dag_id": dag_run.dag_id, "airflow.run_id": dag_run.run_id}
            try:
                result = evaluate_and_push(
                    line, trained["run_dir"], params.get("force_bless_reason"), force_bless=force,
                    tags=tags, echo=log.info,
                )
            except GateInputError as err:  # the candidate cannot be judged: nothing pushed
                raise AirflowFailException(str(err)) from None
            log.info("evaluation report: %s", result.get("report_html"))
            return result

        @task(retries=2, retry_delay=timedelta(seconds=5))
        def finish(run_id: str | None = None, ti=None) -> dict:
            from pipelines.training.stage import record_outcome, run_folder

            prepared = ti.xcom_pull(task_ids="prepare") or {}
            evaluation = ti.xcom_pull(task_ids="evaluate")
            run_dir = prepared.get("run_dir") or run_folder(line, run_id or "manual")
            return record_outcome(line, run_id or "manual", run_dir, evaluation)

        prepared = prepare()
        evaluate(prepared, train(prepared)) >> finish().as_teardown()
    return dag


for _spec in load_specs():
    globals()[f"train_{_spec.name}"] = build(_spec)
