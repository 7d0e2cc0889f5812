"""
### Labels: ground truth for logged predictions -> live ROC AUC

One DAG per product line, triggered by hand or by a system that learns the outcomes
(UI, REST API, `factory trigger labels_<line> --conf '{"file": "/data/labels.csv"}'`;
`factory labels LINE --file F` does the same without Airflow).

1. **attach**: reads the file (CSV or Parquet with the columns `request_id`, optionally
   `instance`, and `label`), checks every label against the line's label classes, and
   keeps it beside the model server's prediction log, joined later by request id (the
   `X-Request-Id` of the answer). A label attached later for the same request wins. The
   matched and unmatched counts go out on the line's `live_labels` Asset, on which the
   monitor is scheduled: a window of live traffic with enough labels gets its live ROC AUC.
   An unmatched id is kept: its prediction may not be compacted yet.

A file that cannot be used (missing columns, unknown labels) fails the run, naming why.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from pipelines.runtime.assets import live_labels
from pipelines.specs import LineSpec, load_specs

# an absolute path to a .csv or .parquet file, on one line
LABEL_FILE_PATTERN = r"^/[^\n]*\.(csv|CSV|parquet|PARQUET)$(?!\n)"


def build(spec: LineSpec) -> DAG:
    line = spec.name
    asset = live_labels(line)
    with DAG(
        dag_id=f"labels_{line}",
        description=f"Attach labels to the logged predictions of {line}",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["factory", "labels", line, *spec.tags],
        default_args={"owner": spec.owner, "retries": 1, "retry_delay": timedelta(seconds=10)},
        params={
            "file": Param(
                None, type=["null", "string"], pattern=LABEL_FILE_PATTERN, maxLength=4096, title="Label file",
                description="Absolute path of a CSV or Parquet file with request_id, optionally instance, and label.",
            ),
        },
        doc_md=f"{__doc__}\n\n**Line:** `{line}`: {spec.description}",
    ) as dag:

        @task(outlets=[asset])
        def attach(params: dict | None = None, dag_run=None, dag=None, outlet_events=None) -> dict:
            from pathlib import Path

            from airflow.sdk.exceptions import AirflowFailException

            from pipelines.runtime.params import check_conf
            from pipelines.serving.predlog import LabelError, attach_labels, read_label_file

            check_conf(dag_run, dag)  # a conf key this DAG does not take fails the run here
            path = (params or {}).get("file")
            if not path:
                raise AirflowFailException(f"labels_{line}: no label file: trigger with a conf such as "
                                           f'{{"file": "/data/labels.csv"}}')
            try:
                result = attach_labels(line, read_label_file(Path(path)))
            except LabelError as err:  # the file's fault: a retry cannot help
                raise AirflowFailException(f"{path}: {err}") from None
            outlet_events[asset].extra = result
            return result

        attach()
    return dag


for _spec in load_specs():
    globals()[f"labels_{_spec.name}"] = build(_spec)
