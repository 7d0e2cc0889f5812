"""The ingest DAG's clean task: the cleaning job, where the ``spark_default`` connection says.

The connection is read when the task runs, so a deployment changes engines by
configuration alone:

- ``sc://host:port`` (the runtime's Spark Connect server on the embedded default, or a
  Connect server on a cluster): the job runs in the task itself through a fresh Connect
  session per batch; no ``spark-submit``, no JVM started per batch. A server that does not
  answer fails the task, naming the address, and Airflow retries it.
- a master (``local[*]``, ``spark://``, ``yarn``, ``k8s://``): ``SparkSubmitOperator``
  submits ``pipelines/ingest/cleaning/job.py`` to it, as before.

(Not beside ``job.py``: ``spark-submit`` puts the job's folder first on ``sys.path``,
where a module named ``operator`` would hide the standard library's.)
"""

from __future__ import annotations

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator


def connect_address(host: str | None, port: int | None = None) -> str | None:
    """The ``sc://`` address a ``spark_default`` connection names, or None for a master."""
    host = (host or "").strip()
    if not host.startswith("sc://"):
        return None
    if port and ":" not in host.removeprefix("sc://").split("/", 1)[0]:
        host = f"{host.rstrip('/')}:{port}"
    return host


class CleanOperator(SparkSubmitOperator):
    """``SparkSubmitOperator``, or the job through Spark Connect when the connection is ``sc://``."""

    def execute(self, context):
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowException

        conn = BaseHook.get_connection(self._conn_id)
        address = connect_address(conn.host, conn.port)
        if address is None:
            return super().execute(context)
        from pipelines.ingest.cleaning import job

        args = job.parser().parse_args([str(a) for a in self.application_args])
        self.log.info("cleaning %s batch(es) %s through Spark Connect at %s", args.line, args.batch, address)
        try:
            reports = job.run(args.line, args.batch, args.home, remote=address)
        except (job.CleaningError, job.ConnectUnreachable) as err:
            raise AirflowException(f"cleaning failed: {err}") from None
        for batch_id, report in reports.items():
            self.log.info("batch %s: %s", batch_id, {k: report[k] for k in
                                                     ("rows_in", "rows_clean", "rows_quarantined",
                                                      "duplicates_removed", "seconds")})
        return None
