"""
### Tune: an Optuna study of the line's training settings, one Airflow task per trial

One DAG per product line whose spec has a `tuning:` section, generated from
`include/lines/*.yaml`. It runs on `tuning.schedule` (if any) or when triggered (UI or
REST API) with typed params: how many trials, how many at once, the time budget, the
search space, the epochs of a trial, whether to start from the last study's best.

1. **start**: checks the params (and refuses a conf key the DAG does not take), fixes the
   data window once for the whole study (every trial trains and validates on the same
   validated batches), creates the Optuna study (in the shared study storage), the
   study's MLflow parent run and its record, and enqueues the trials tried first: the
   settings the line trains with today, so the best trial is never worse on validation,
   and the previous study's best ones (warm start).
2. **trial** (mapped: one task instance per trial, `parallel` at once): asks Optuna for
   settings (TPE or random search over the space), prepares a training run with them in
   the study's folder and trains it with the Horovod workers; each epoch's validation
   metric is reported, and the pruner stops a trial that falls behind (workers and all).
   A trial whose slot is taken waits without holding a worker slot; past the time
   budget it is skipped. A trial that fails is recorded and shows red; the study goes on.
   A failed trial is not retried (a retry would be a new trial).
3. **finish** (runs whatever the trials did): trials left running by a task that died are
   failed; the study's record is written with every trial, the best one and the
   settings' importances; the best trial's settings become the line's tuned settings,
   which the next training applies over the spec (the `tuned_params` Asset announces
   them). When no trial completed, the run fails and the tuned settings stay as they were.

Every trial is a nested MLflow run under the study's run, with its settings, per-epoch
metrics and final metric. The evaluation gate still decides whether a model trained
with the tuned settings is served.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, CronTriggerTimetable, Param, task

from pipelines.runtime.assets import tuned_params
from pipelines.specs import LineSpec, load_specs

# how soon a trial whose slots were all taken asks again
SLOT_RETRY_S = 5


def build(spec: LineSpec) -> DAG:
    line = spec.name
    tuning = spec.tuning
    assert tuning is not None
    spaces = list(tuning.spaces)
    with DAG(
        dag_id=f"tune_{line}",
        description=f"Search the training settings of {line} with Optuna",
        schedule=CronTriggerTimetable(tuning.schedule, timezone="UTC") if tuning.schedule else None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # one study of a line at a time
        tags=["factory", "tune", line, *spec.tags],
        default_args={"owner": spec.owner, "retries": 0},
        params={
            "trials": Param(tuning.trials, type="integer", minimum=1, maximum=1000, title="Trials"),
            "parallel": Param(
                tuning.parallel, type="integer", minimum=1, maximum=tuning.parallel, title="Trials at once",
                description=f"At most the spec's {tuning.parallel}; each trial runs {tuning.workers} Horovod worker(s).",
            ),
            "timeout_minutes": Param(
                tuning.timeout_minutes, type="integer", minimum=1, maximum=10080, title="Time budget (minutes)",
                description="No trial starts after it; a running trial is stopped shortly after.",
            ),
            "space": Param(
                "default" if "default" in spaces else spaces[0], type="string", enum=spaces, title="Search space",
            ),
            "epochs": Param(
                None, type=["null", "integer"], minimum=1, maximum=1000, title="Epochs per trial",
                description=f"Empty: the spec's {tuning.epochs}.",
            ),
            "warm_start": Param(
                True, type="boolean", title="Warm start",
                description="Try the last study's best settings first.",
            ),
            "window_batches": Param(
                None, type=["null", "integer"], minimum=0, title="Data window",
                description="Tune on the latest N validated batches; 0: all of them; empty: the spec's window.",
            ),
        },
        doc_md=f"{__doc__}\n\n**Line:** `{line}`: {spec.description}",
    ) as dag:

        # The study's details go to the XCom "study"; the return value is what the trials map over.
        @task(retries=0)
        def start(params: dict | None = None, run_id: str | None = None, dag_run=None, dag=None, ti=None) -> list:
            from airflow.sdk.exceptions import AirflowFailException

            from pipelines.runtime.params import check_conf
            from pipelines.tuning.stage import StudyInputError, start_study

            check_conf(dag_run, dag)  # a conf key this DAG does not take fails the run here
            params = params or {}
            keys = ("trials", "parallel", "timeout_minutes", "space", "epochs", "warm_start", "window_batches")
            tags = {"airflow.dag_id": f"tune_{line}", "airflow.run_id": run_id or "manual"}
            try:
                info = start_study(line, run_id or "manual", {k: params.get(k) for k in keys}, tags=tags)
            except StudyInputError as err:  # bad params or no data: a retry cannot help
                raise AirflowFailException(str(err)) from None
            ti.xcom_push(key="study", value=info)
            return info["indices"]

        # One trial per task instance, never retried: a retry would ask Optuna for a new trial.
        @task(retries=0, max_active_tis_per_dagrun=tuning.parallel,
              execution_timeout=timedelta(seconds=spec.training.timeout_s + 600))
        def trial(index: int, ti=None) -> dict:
            import logging
            from datetime import UTC

            from airflow.sdk.exceptions import (
                AirflowFailException,
                AirflowRescheduleException,
                AirflowSkipException,
            )

            from pipelines.tuning.stage import BudgetSpent, NoFreeSlot, TrialFailed, run_trial

            log = logging.getLogger("airflow.task")
            info = ti.xcom_pull(task_ids="start", key="study")
            try:
                return run_trial(line, info, index, echo=log.info)
            except NoFreeSlot:  # wait for a slot without holding a worker slot
                raise AirflowRescheduleException(
                    reschedule_date=datetime.now(UTC) + timedelta(seconds=SLOT_RETRY_S)) from None
            except BudgetSpent as err:
                raise AirflowSkipException(str(err)) from None
            except TrialFailed as err:  # recorded in the study; this task shows red
                raise AirflowFailException(str(err)) from None

        @task(retries=1, retry_delay=timedelta(seconds=10), trigger_rule="all_done", outlets=[tuned_params(line)])
        def finish(ti=None) -> dict:
            import logging

            from airflow.sdk.exceptions import AirflowFailException

            from pipelines.tuning.stage import NothingCompleted, finish_study

            log = logging.getLogger("airflow.task")
            info = ti.xcom_pull(task_ids="start", key="study")
            if not info:
                raise AirflowFailException("no study was started (see the start task)")
            try:
                return finish_study(line, info, echo=log.info)
            except NothingCompleted as err:
                raise AirflowFailException(str(err)) from None

        trial.expand(index=start()) >> finish()
    return dag


for _spec in load_specs():
    if _spec.tuning is not None:
        globals()[f"tune_{_spec.name}"] = build(_spec)
