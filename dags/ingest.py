"""
### Ingest: landing zone -> Spark cleaning (+ quarantine) -> Great Expectations

One DAG per product line, generated from `include/lines/*.yaml`. Runs when a batch lands
(the landing zone's watcher fires an event on the line's `landed_data` Asset within
seconds), on the spec's `ingest.schedule`, or when triggered.

For every batch to process (the `batch_id` asked for, or every batch landed and
not yet cleaned), a mapped task group runs:

1. **clean**: the Spark job `pipelines/ingest/cleaning/job.py`, where the `spark_default`
   connection says: with an `sc://` address (the runtime's long-lived Spark Connect
   server on the embedded default) in the task through a Connect session of its own;
   with a master (`spark://`, `yarn`, `k8s://`) submitted by `SparkSubmitOperator`.
   Rows it cannot clean go to quarantine with a reason; counts reconcile.
2. **validate**: the line's expectation suite through a GX checkpoint. A batch that
   fails is marked `failed` and fails its task, listing the failed expectations and
   the Data Docs page; a batch that passes is marked `validated`.
3. **announce**: once every batch of the run is through, the batches that passed are
   announced in one event on the line's `validated_data` Asset, which schedules
   training (one training run per ingest run, not one per batch).
4. **verdict**: fails the run when any of its batches failed, so the run shows it.

Trigger with a conf such as `{"batch_id": "2016"}` to (re)process one batch. A conf key
the DAG does not take (a misspelt `batchid`) fails the run in **plan**, naming it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, task, task_group

from pipelines.catalog.layout import BATCH_ID_PATTERN
from pipelines.ingest.clean_operator import CleanOperator
from pipelines.ingest.stage import CLEANING_JOB
from pipelines.runtime.assets import landed_data, validated_data
from pipelines.specs import LineSpec, load_specs


def build(spec: LineSpec) -> DAG:
    line = spec.name
    asset = validated_data(line)
    landed = landed_data(line)
    with DAG(
        dag_id=f"ingest_{line}",
        description=f"Clean and validate landed batches of {line}",
        # A batch landed sets off a run within seconds (the landing zone's watcher); the
        # spec's schedule sweeps up on top of it.
        schedule=(
            AssetOrTimeSchedule(timetable=CronTriggerTimetable(spec.ingest.schedule, timezone="UTC"), assets=landed)
            if spec.ingest.schedule
            else landed
        ),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["factory", "ingest", line, *spec.tags],
        default_args={
            "owner": spec.owner,
            "retries": spec.ingest.retries,
            "retry_delay": timedelta(seconds=20),
        },
        params={
            "batch_id": Param(
                None,
                type=["null", "string"],
                pattern=BATCH_ID_PATTERN,
                title="Batch id",
                description="Process this landed batch (again); empty: every batch not yet cleaned.",
            ),
        },
        doc_md=f"{__doc__}\n\n**Line:** `{line}`: {spec.description}",
    ) as dag:

        @task
        def plan(params: dict | None = None, dag_run=None, dag=None) -> list[str]:
            from airflow.sdk.exceptions import AirflowSkipException

            from pipelines.ingest.stage import plan_batches
            from pipelines.runtime.params import check_conf

            check_conf(dag_run, dag)  # a conf key this DAG does not take fails the run here
            batches = plan_batches(line, (params or {}).get("batch_id"))
            if not batches:
                raise AirflowSkipException(f"no landed batch of {line} is waiting")
            return batches

        @task
        def spark_args(batch_id: str) -> list[str]:
            from pipelines.ingest.stage import cleaning_args

            return cleaning_args(line, batch_id)

        # Validation failing is a verdict on the data: retrying cannot change it.
        @task(retries=0)
        def validate(batch_id: str) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from pipelines.ingest.stage import ValidationFailed, validate_batch

            try:
                return validate_batch(line, batch_id)
            except ValidationFailed as err:
                raise AirflowFailException(str(err)) from None

        # Runs when every batch is through, failed or not: the ones that passed are news.
        @task(outlets=[asset], trigger_rule="all_done_min_one_success")
        def announce(batches: list[str], outlet_events=None) -> dict:
            from airflow.sdk.exceptions import AirflowSkipException

            from pipelines.ingest.stage import announcement

            news = announcement(line, batches)
            if not news["batches"]:
                raise AirflowSkipException(f"no batch of {line} passed validation in this run")
            outlet_events[asset].extra = news
            return news

        @task_group(group_id="batch")
        def process(batch_id: str) -> None:
            args = spark_args(batch_id)
            # through the connection's Spark Connect server, or spark-submit to its master
            clean = CleanOperator(
                task_id="clean",
                application=str(CLEANING_JOB),
                conn_id="spark_default",
                name=f"factory-clean-{line}",
                application_args=args,
                # the job sets its own shuffle partitions; keep the driver lean
                conf={"spark.ui.showConsoleProgress": "false"},
                verbose=False,
            )
            args >> clean >> validate(batch_id)

        # Fails when a batch of the run failed, so the run itself shows it.
        @task(trigger_rule="all_done_min_one_success", retries=0)
        def verdict(batches: list[str]) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from pipelines.ingest.stage import announcement

            news = announcement(line, batches)
            if news["failed"]:
                raise AirflowFailException(f"{len(news['failed'])} batch(es) of {line} failed: {news['failed']}")
            return news

        planned = plan()
        batches = process.expand(batch_id=planned)
        batches >> announce(planned)
        batches >> verdict(planned)
    return dag


for _spec in load_specs():
    globals()[f"ingest_{_spec.name}"] = build(_spec)
