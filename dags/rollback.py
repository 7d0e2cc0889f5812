"""
### Rollback: serve the previous model of a line again

One DAG per product line, triggered by hand (UI, REST API, or `factory rollback LINE`).

1. **plan**: reads the serving store: the version TF Serving serves now and the one it
   will serve after the rollback (the previous push). Fails if there is none.
2. **rollback**: moves the served version to `<store>/<line>/.retired/` (one rename, so
   TF Serving serves the previous integer version), marks it not blessed in ML Metadata
   (the next candidate is compared with the model in serving again), and moves the MLflow
   alias `champion` back; the retired model version is tagged `serving_status=RETIRED`
   with the reason. Only the version the plan named is rolled back, so a retry cannot
   roll back twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from pipelines.specs import LineSpec, load_specs


def build(spec: LineSpec) -> DAG:
    line = spec.name
    with DAG(
        dag_id=f"rollback_{line}",
        description=f"Serve the previous model of {line} again",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["factory", "rollback", line, *spec.tags],
        default_args={"owner": spec.owner, "retries": 1, "retry_delay": timedelta(seconds=10)},
        params={
            "reason": Param(
                "", type="string", maxLength=2000, title="Reason",
                description="Why the served model is rolled back (kept with the retired model version).",
            ),
        },
        doc_md=f"{__doc__}\n\n**Line:** `{line}`: {spec.description}",
    ) as dag:

        @task
        def plan(dag_run=None, dag=None) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from pipelines.evaluation.stage import RollbackError, plan_rollback
            from pipelines.runtime.params import check_conf

            check_conf(dag_run, dag)  # a conf key this DAG does not take fails the run here
            try:
                return plan_rollback(line)
            except RollbackError as err:  # nothing to roll back to: retrying cannot help
                raise AirflowFailException(str(err)) from None

        @task(execution_timeout=timedelta(minutes=15))
        def rollback(planned: dict, params: dict | None = None, dag_run=None) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from pipelines.evaluation.stage import RollbackError
            from pipelines.evaluation.stage import rollback as do_rollback

            reason = ((params or {}).get("reason") or "").strip() or f"rollback requested ({dag_run.run_id})"
            try:
                return do_rollback(line, reason, expect_version=planned["from_version"])
            except RollbackError as err:
                raise AirflowFailException(str(err)) from None

        rollback(plan())
    return dag


for _spec in load_specs():
    globals()[f"rollback_{_spec.name}"] = build(_spec)
