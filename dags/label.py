"""
### Label: the serving model pre-labels unlabelled rows; people review the rest

One DAG per product line whose spec has a `labelling:` section, generated from
`include/lines/*.yaml`. With `labelling.trigger: on_validated` it runs on the line's
validated-data Asset (the first task finds no new unlabelled rows and skips the rest);
it can also be triggered (UI, REST API) with typed params: `batch_id` (only that
validated batch), `review_file` (the absolute path of a Label Studio JSON export to
import), `target_precision` (instead of the spec's).

1. **plan**: checks the params (a bad one fails the run and changes nothing) and finds
   the validated batches with unlabelled rows that no label batch has labelled and no
   review queue holds.
2. **prelabel**: scores those rows with the serving model. A label is accepted when its
   confidence reaches its class's threshold, chosen on the gate's held-out split so that
   accepted labels reach the target precision (a one-sided lower bound); the accepted
   rows are landed as one label batch `<batch>-labels-<n>` (`label_source: machine`),
   which the ingest DAG cleans and validates like any batch, so training picks it up.
   The rest become a review queue for Label Studio (rows in drifted regions first, then
   least confident first), with the model's labels as pre-annotations.
3. **import_reviews** (with `review_file`): the latest annotation of each reviewed task
   becomes a human label (`label_source: human`, which wins over a machine label at
   training), landed as one label batch; unknown rows and labels are skipped and counted.
4. **done**: the run's summary; **ingest_labels** triggers `ingest_<line>` when label
   batches were landed, so they are cleaned, validated and announced without waiting for
   its schedule.

A retried task does not land a second label batch for the same rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param, task

from pipelines.runtime.assets import validated_data
from pipelines.specs import LineSpec, load_specs

# an absolute path of a JSON file, on one line
REVIEW_FILE_PATTERN = r"^/[^\n]*\.(json|JSON)$(?!\n)"


def build(spec: LineSpec) -> DAG:
    from pipelines.catalog.layout import BATCH_ID_PATTERN

    line = spec.name
    labelling = spec.labelling
    assert labelling is not None
    with DAG(
        dag_id=f"label_{line}",
        description=f"Pre-label the unlabelled rows of {line}; queue the rest for review",
        schedule=[validated_data(line)] if labelling.trigger == "on_validated" else None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["factory", "label", line, *spec.tags],
        default_args={"owner": spec.owner, "retries": 1, "retry_delay": timedelta(seconds=10)},
        params={
            "batch_id": Param(None, type=["null", "string"], pattern=BATCH_ID_PATTERN, title="Batch",
                              description="Only this validated batch; empty: every batch with unlabelled rows."),
            "review_file": Param(
                None, type=["null", "string"], pattern=REVIEW_FILE_PATTERN, maxLength=4096, title="Review export",
                description="Absolute path of a Label Studio JSON export of reviewed tasks, to import.",
            ),
            "target_precision": Param(
                None, type=["null", "number"], exclusiveMinimum=0.5, exclusiveMaximum=1, title="Target precision",
                description=f"Empty: the spec's {labelling.target_precision}.",
            ),
        },
        doc_md=f"{__doc__}\n\n**Line:** `{line}`: {spec.description}",
    ) as dag:

        @task
        def plan(params: dict | None = None, dag_run=None, dag=None) -> dict:
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

            from pipelines.labelling.stage import LabellingError
            from pipelines.labelling.stage import plan as make_plan
            from pipelines.runtime.params import check_conf

            check_conf(dag_run, dag)  # a conf key this DAG does not take fails the run here
            params = params or {}
            try:
                planned = make_plan(line, {k: params.get(k) for k in ("batch_id", "review_file", "target_precision")})
            except LabellingError as err:  # bad params: a retry cannot help
                raise AirflowFailException(str(err)) from None
            if not planned["batches"] and not planned["review_file"]:
                raise AirflowSkipException(f"{line}: no unlabelled rows to label and no review file to import")
            return planned

        @task
        def prelabel(planned: dict, run_id: str | None = None) -> dict:
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

            from pipelines.labelling.stage import LabellingError
            from pipelines.labelling.stage import prelabel as run_prelabel
            from pipelines.labelling.thresholds import ThresholdError

            if not planned["batches"]:
                raise AirflowSkipException("no unlabelled rows")
            from pipelines.monitoring.stage import serving_model

            if serving_model(line) is None:  # the first batches of a new line: nothing to label with yet
                raise AirflowSkipException(f"{line} has no model in serving yet: the unlabelled rows wait for "
                                           "one (the next validated batch or a manual run labels them)")
            try:
                return run_prelabel(line, run_id or "manual", planned)
            except (LabellingError, ThresholdError) as err:
                raise AirflowFailException(str(err)) from None

        @task
        def import_reviews(planned: dict, run_id: str | None = None) -> dict:
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

            from pipelines.labelling.stage import LabellingError
            from pipelines.labelling.stage import import_reviews as run_import

            if not planned["review_file"]:
                raise AirflowSkipException("no review file")
            try:
                return run_import(line, f"{run_id or 'manual'}-import", planned["review_file"])
            except LabellingError as err:  # the file's fault: a retry cannot help
                raise AirflowFailException(str(err)) from None

        @task(trigger_rule="none_failed_min_one_success")
        def done(labelled: dict | None = None, imported: dict | None = None) -> dict:
            return {"line": line, "prelabel": labelled, "import": imported}

        @task.short_circuit
        def landed(summary: dict) -> bool:
            """Whether this run landed label batches (then the ingest DAG takes them now)."""
            return any((part or {}).get("label_batches") or (part or {}).get("label_batch")
                       for part in (summary["prelabel"], summary["import"]))

        ingest = TriggerDagRunOperator(
            task_id="ingest_labels", trigger_dag_id=f"ingest_{line}", wait_for_completion=False,
            trigger_run_id="labels__{{ run_id }}", skip_when_already_exists=True,
        )
        planned = plan()
        landed(done(prelabel(planned), import_reviews(planned))) >> ingest
    return dag


for _spec in load_specs():
    if _spec.labelling is not None:
        globals()[f"label_{_spec.name}"] = build(_spec)
