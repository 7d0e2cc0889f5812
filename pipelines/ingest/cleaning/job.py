"""The Spark cleaning job: one landed batch in, clean Parquet and quarantine out.

Run by the ingest DAG's clean task as the ``spark_default`` connection says: with an
``sc://`` address (the runtime's Spark Connect server on the embedded default) in the
task itself through a Connect session per batch; with a master (``local[*]``,
``spark://``, ``yarn``, ``k8s://``) submitted by ``SparkSubmitOperator``. By hand::

    spark-submit pipelines/ingest/cleaning/job.py --line employment --batch 2016
    python pipelines/ingest/cleaning/job.py --line employment --batch 2016 --remote sc://127.0.0.1:15002

One code path serves both: nothing here uses the JVM or the SparkContext directly,
except the classic session's log level and the move of an output on HDFS or S3A.

The clean rows and the quarantine are staged together in one folder and put in
place of the batch's earlier output with one atomic exchange, so re-running a
batch is idempotent and a reader finds the old output or the new, whole, never
half a batch, new rows beside an old quarantine, or no data. One attempt at a
batch runs at a time (a lock per batch); an attempt that was killed leaves its
staging folder, which the next attempt removes before it starts. The counts reconcile
(rows in = clean + quarantined + duplicates removed) or the job fails. The batch
ledger records the outcome either way: ``cleaned`` with counts, or ``failed``
with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.catalog import ledger
from pipelines.catalog.layout import CLEAN_ROWS, LOCK, QUARANTINE_ROWS, LinePaths, line_paths
from pipelines.specs import LineSpec, load_spec
from pipelines.storage import exclusive_lock, swap_directory


class CleaningError(RuntimeError):
    """The batch cannot be cleaned at all (empty, wrong columns, unreadable)."""


# The job's session settings: a classic session's builder applies them, and the runtime's
# Spark Connect server starts with them (``--conf``), so both paths plan alike.
SESSION_CONF = {
    # Small batches on few cores: Spark's default of 200 shuffle partitions is
    # pure overhead here; adaptive execution coalesces further at scale.
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "false",
    # HotSpot never JIT-compiles a method over 8,000 bytes of bytecode: Spark's
    # default limit (64 KB) lets whole-stage code generation emit such methods
    # for the wide cleaning plans, which then run in the bytecode interpreter.
    # At 8,000 Spark compiles those plans operator by operator instead.
    "spark.sql.codegen.hugeMethodLimit": "8000",
}
# Of those, the ones a Connect session sets for itself (SQL settings are per session), so
# that a Connect server started elsewhere (a cluster's) plans the job as this one does.
SESSION_SQL_CONF = {k: v for k, v in SESSION_CONF.items() if k.startswith("spark.sql.")}
CONNECT_TIMEOUT_S = 5.0


class ConnectUnreachable(RuntimeError):
    """The Spark Connect server does not answer at the address given."""


def spark_session(app_name: str):
    """A classic session (``spark-submit``, or in process) with :data:`SESSION_CONF`."""
    import os

    from pyspark.sql import SparkSession

    # Python workers (the image part decodes in them) run this interpreter, whose
    # environment has the job's libraries, unless the deployment names another.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    for key, value in SESSION_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _connect_endpoint(address: str) -> tuple[str, int]:
    """``(host, port)`` of an ``sc://host:port[/;params]`` address (port 15002 if none)."""
    from urllib.parse import urlsplit

    if not address.startswith("sc://"):
        raise ValueError(f"not a Spark Connect address (sc://host:port): {address!r}")
    parts = urlsplit(address.split(";", 1)[0])
    if not parts.hostname:
        raise ValueError(f"no host in the Spark Connect address {address!r}")
    return parts.hostname, parts.port or 15002


def connect_session(address: str):
    """A fresh Spark Connect session of its own at ``address`` (``sc://host:port``).

    Each call makes a new server-side session (its own SQL settings, temporary views and
    observations), so batches cleaned at once do not share state; stop it to release
    it. Raises :class:`ConnectUnreachable`, naming the address, when nothing answers there
    (rather than the client's long retrying)."""
    import socket

    from pyspark.sql import SparkSession

    host, port = _connect_endpoint(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConnectUnreachable(
            f"the Spark Connect server at {address} does not answer ({err.strerror or err}); "
            "on the embedded default `factory start` runs it"
        ) from None
    builder = SparkSession.builder.remote(address)
    for key, value in SESSION_SQL_CONF.items():
        builder = builder.config(key, value)
    spark = builder.create()
    try:
        spark.version  # noqa: B018 - one round trip: the server answers as Spark Connect
    except Exception as err:
        spark.stop()
        raise ConnectUnreachable(f"the server at {address} does not answer as Spark Connect: "
                                 f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    return spark


@contextlib.contextmanager
def connect_mode() -> Iterator[None]:
    """Spark Connect sessions made within, and this process's classic Spark after it.

    Making a Connect session marks the whole process as a Connect client
    (``SPARK_CONNECT_MODE_ENABLED``: PySpark's functions build Connect columns from then
    on); the mark is taken back at the end, so a process that cleaned through a server (a
    benchmark, ``factory start``'s check) can still use a classic session afterwards. Not
    for classic and Connect sessions in two threads at once."""
    import os

    before = os.environ.get("SPARK_CONNECT_MODE_ENABLED")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
        else:
            os.environ["SPARK_CONNECT_MODE_ENABLED"] = before


def is_connect(spark) -> bool:
    """Whether ``spark`` is a Spark Connect session (no JVM or SparkContext in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def _csv_header(spark, path: str) -> list[str]:
    import csv

    first = spark.read.text(path).limit(1).collect()
    if not first:
        raise CleaningError("the batch file is empty: no header, no rows")
    return next(csv.reader([first[0][0]]))


def read_batch(spark, path: str, fmt: str, spec: LineSpec):
    """Every column as a string, plus ``_row`` (file order) and ``_corrupt_record``."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pipelines.ingest.cleaning.rules import CORRUPT, ROW, check_columns

    if fmt == "csv":
        header = _csv_header(spark, path)
        check_columns(header, spec)
        schema = T.StructType(
            [T.StructField(c, T.StringType()) for c in header] + [T.StructField(CORRUPT, T.StringType())]
        )
        df = (
            spark.read.schema(schema)
            .option("header", True)
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .option("multiLine", False)
            .csv(path)
        )
    else:
        df = spark.read.parquet(path)
        header = df.columns
        check_columns(header, spec)
        df = df.select(*[F.col(f"`{c}`").cast("string").alias(c) for c in header]).withColumn(
            CORRUPT, F.lit(None).cast("string")
        )
    # Position in the file: monotonically increasing in file order within a
    # read, which is what "the last row wins" needs.
    return df.withColumn(ROW, F.monotonically_increasing_id()), header


def _replace_dir(spark, staging: str, final: str) -> None:
    """Swap a staged output into place: on a local filesystem in one atomic exchange
    (:func:`pipelines.storage.swap_directory`: a reader finds the old output or the new,
    never none); elsewhere (HDFS, S3A) through Hadoop's FileSystem, delete then rename."""
    if "://" not in final or final.startswith("file:"):
        swap_directory(Path(staging.removeprefix("file:")), Path(final.removeprefix("file:")))
        return
    if is_connect(spark):
        raise CleaningError(
            f"the output {final} is on a remote filesystem, which a Spark Connect client cannot move into "
            "place: clean such batches through spark-submit (a spark://, yarn or k8s:// FACTORY_SPARK_MASTER)"
        )
    jvm = spark._jvm
    conf = spark._jsc.hadoopConfiguration()
    final_path = jvm.org.apache.hadoop.fs.Path(final)
    fs = final_path.getFileSystem(conf)
    if fs.exists(final_path):
        fs.delete(final_path, True)
    fs.mkdirs(final_path.getParent())
    if not fs.rename(jvm.org.apache.hadoop.fs.Path(staging), final_path):
        raise CleaningError(f"could not move {staging} to {final}")


@contextlib.contextmanager
def staging_area(paths: LinePaths, batch_id: str) -> Iterator[Path]:
    """A fresh folder for one attempt at cleaning ``batch_id``, removed when it ends.

    The batch's cleaning lock is held throughout, so two attempts at one batch take
    turns. Anything else in the batch's staging folder was therefore left by an attempt
    that was killed (its lock died with it) and is removed first; other batches'
    folders, and a live attempt's, are never touched.
    """
    root = paths.cleaning_staging(batch_id)
    with exclusive_lock(root):
        for stale in root.iterdir():
            if stale.name == LOCK:
                continue
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        attempt = root / uuid.uuid4().hex[:8]
        attempt.mkdir()
        try:
            yield attempt
        finally:
            shutil.rmtree(attempt, ignore_errors=True)


def clean_one(spark, spec: LineSpec, paths: LinePaths, batch_id: str) -> dict[str, Any]:
    """Clean one landed batch; return the run report (counts, repairs, outputs)."""
    with staging_area(paths, batch_id) as staging:
        return _clean_staged(spark, spec, paths, batch_id, staging)


def quarantine_reasons(spark, path: str) -> dict[str, int]:
    """How many quarantined rows of the written quarantine give each reason."""
    from pyspark.sql import functions as F

    from pipelines.ingest.cleaning.rules import REASONS

    return {
        r["reason"]: r["count"]
        for r in spark.read.parquet(path).select(F.explode(REASONS).alias("reason")).groupBy("reason").count().collect()
    }


def _clean_staged(spark, spec: LineSpec, paths: LinePaths, batch_id: str, staging: Path) -> dict[str, Any]:
    record = ledger.read(paths, batch_id)
    assert record is not None
    started = time.time()
    # The modality's part writes both outputs into the staging folder and returns the
    # counts (reconciled, or it raised); the exchange and the report are common.
    counts = MODALITY_PARTS[spec.modality](spark, spec, record, staging)
    _replace_dir(spark, str(staging), str(paths.cleaned_batch(batch_id)))
    return {
        **counts,
        "clean_path": str(paths.clean_batch(batch_id)),
        "quarantine_path": str(paths.quarantine_batch(batch_id)),
        "seconds": round(time.time() - started, 2),
        "spark_version": spark.version,
        "spec_version": spec.version,
    }


def _clean_tabular(spark, spec: LineSpec, record: dict, staging: Path) -> dict[str, Any]:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from pipelines.ingest.cleaning.rules import REASONS, clean_batch, output_columns

    batch, header = read_batch(spark, record["file"], record["format"], spec)
    result = clean_batch(batch, spec, header)
    # Three outputs read the checked rows: check once, to local disk (the page
    # cache keeps it in memory when there is room; a large batch cached on the
    # JVM heap does not fit the 1 GiB default driver and fails).
    result.checked.persist(StorageLevel.DISK_ONLY)
    # One pass fills the cache and counts the input and the repairs.
    ok = F.size(REASONS) == 0
    totals = (
        result.checked.agg(
            F.count(F.lit(1)).alias("_rows_in"),
            F.count_if(ok).alias("_rows_ok"),
            *[F.count_if(ok & F.col(f"`{n}`")).alias(n) for n in result.repair_names],
        )
        .first()
        .asDict()
    )
    rows_in, rows_ok = totals.pop("_rows_in"), totals.pop("_rows_ok")
    if rows_in == 0:
        result.checked.unpersist()
        raise CleaningError("the batch has a header but no rows")
    repairs = {name: n for name, n in totals.items() if n}

    # Both outputs are staged in one folder laid out as the batch's output folder. Spark
    # skips inputs whose own name starts with "." or "_", so the hidden part is an
    # ancestor (cleaned/<line>/.staging/); readers of cleaned/<line>/ skip it too.
    staging_clean = str(staging / CLEAN_ROWS)
    staging_quarantine = str(staging / QUARANTINE_ROWS)
    clean = result.clean(output_columns(spec))
    clean.sortWithinPartitions(*spec.schema.key).write.mode("overwrite").parquet(staging_clean)
    result.quarantine.write.mode("overwrite").parquet(staging_quarantine)

    # (With no row to de-duplicate, adaptive execution may drop the empty part
    # of the plan and its observed counts with it; they are all zero then.)
    dup_counts = {kind: n for kind, n in result.duplicates().items() if n} if rows_ok else {}
    quarantined = spark.read.parquet(staging_quarantine).count()
    reasons = quarantine_reasons(spark, staging_quarantine)
    # Rows of a conflicting key (key_duplicates: quarantine) leave the clean
    # output but are in the quarantine: counted there, not as duplicates.
    conflicts = dup_counts.pop("key_conflict", 0)
    duplicates = sum(dup_counts.values())
    written = spark.read.parquet(staging_clean).count()
    clean_rows = rows_ok - duplicates - conflicts
    if written != clean_rows or rows_in != clean_rows + quarantined + duplicates:
        raise CleaningError(
            f"counts do not reconcile: in={rows_in} clean={clean_rows} (written {written}) "
            f"quarantined={quarantined} duplicates={duplicates}"
        )
    result.checked.unpersist()
    labels = _label_counts(spark, spec, staging_clean, clean_rows) if spec.labelling is not None else {}
    return {
        **labels,
        "rows_in": rows_in,
        "rows_clean": clean_rows,
        "rows_quarantined": quarantined,
        "duplicates_removed": duplicates,
        "duplicates": dup_counts,
        "quarantine_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "repairs": repairs,
    }


def _label_counts(spark, spec: LineSpec, path: str, clean_rows: int) -> dict[str, Any]:
    """A labelling line's clean rows, labelled and unlabelled, and the labels by source;
    they reconcile with the clean rows and every label has a source, or the job fails."""
    from pyspark.sql import functions as F

    from pipelines.labelling import LABEL_SOURCE, SOURCES

    label = spec.schema.label.name
    rows = (
        spark.read.parquet(path)
        .groupBy(F.col(f"`{label}`").isNotNull().alias("labelled"), F.col(LABEL_SOURCE).alias("source"))
        .count()
        .collect()
    )
    by_source = {s: 0 for s in SOURCES}
    labelled = unlabelled = 0
    for r in rows:
        if r["labelled"] != (r["source"] is not None):
            raise CleaningError(f"{r['count']} clean row(s) have a label_source {r['source']!r} that does not "
                                f"fit whether they have a label ({r['labelled']})")
        if r["labelled"]:
            labelled += r["count"]
            by_source[r["source"]] += r["count"]
        else:
            unlabelled += r["count"]
    if labelled + unlabelled != clean_rows:
        raise CleaningError(f"label counts do not reconcile: clean={clean_rows} labelled={labelled} "
                            f"unlabelled={unlabelled}")
    return {"rows_labelled": labelled, "rows_unlabelled": unlabelled, "labels_by_source": by_source}


def _clean_images(spark, spec: LineSpec, record: dict, staging: Path) -> dict[str, Any]:
    from pipelines.ingest.cleaning.images import clean_images

    return clean_images(spark, spec, record, staging)


# Each modality's part of the job, looked up by the spec's ``modality``.
MODALITY_PARTS = {"tabular": _clean_tabular, "image": _clean_images}


@contextlib.contextmanager
def _sessions(app_name: str, remote: str | None) -> Iterator:
    """Yields ``session_for()``: the session to clean the next batch in. Classic: one
    session for all the batches (this process's application). Connect (``remote``): a fresh
    server-side session per batch, the previous one released first, the last at the end."""
    if remote is None:
        spark = spark_session(app_name)
        yield lambda: spark
        return
    with connect_mode():
        held = connect_session(remote)  # the server is checked before any batch is marked started
        fresh = True

        def session_for():
            nonlocal held, fresh
            if not fresh:  # the last batch's session is released, the next batch gets its own
                spent, held = held, None
                spent.stop()
                held = connect_session(remote)
            fresh = False
            return held

        try:
            yield session_for
        finally:
            if held is not None:
                held.stop()


def run(line: str, batch_ids: list[str], home: Path | None = None, *, remote: str | None = None
        ) -> dict[str, dict[str, Any]]:
    """Clean batches of one line; fail if any batch fails. In this process's Spark
    application, or with ``remote`` (``sc://host:port``) through a Spark Connect server,
    one fresh session per batch: the same code, outputs, ledger records and counts."""
    from pipelines.ingest.cleaning.rules import BatchSchemaError

    spec = load_spec(line)
    paths = line_paths(line, home)
    reports: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    with _sessions(f"factory-clean-{line}", remote) as session_for:
        for batch_id in batch_ids:
            if ledger.read(paths, batch_id) is None:
                failures[batch_id] = f"batch {batch_id!r} of {line} was never landed (no ledger record)"
                continue
            spark = session_for()
            ledger.update(paths, batch_id, "cleaning started")
            try:
                report = clean_one(spark, spec, paths, batch_id)
            except (CleaningError, BatchSchemaError) as err:
                failures[batch_id] = str(err)
                ledger.update(paths, batch_id, "cleaning failed", status=ledger.FAILED, failed_stage="cleaning",
                              error=str(err))
                continue
            except Exception as err:  # an engine error: record it, and let the task retry
                failures[batch_id] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                ledger.update(paths, batch_id, "cleaning error", error=failures[batch_id])
                continue
            reports[batch_id] = report
            ledger.update(paths, batch_id, "cleaned", status=ledger.CLEANED, cleaning=report, error=None,
                          failed_stage=None)
    if failures:
        lines = "\n".join(f"  batch {b}: {msg}" for b, msg in failures.items())
        raise CleaningError(f"{len(failures)} of {len(batch_ids)} batch(es) of {line} could not be cleaned:\n{lines}")
    return reports


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--line", required=True, help="product line name")
    parser.add_argument("--batch", action="append", required=True, help="batch id (repeatable)")
    parser.add_argument("--home", type=Path, default=None, help="factory home (default: $FACTORY_HOME)")
    parser.add_argument("--remote", default=None,
                        help="a Spark Connect server (sc://host:port) to clean through, one session per batch")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        reports = run(args.line, args.batch, args.home, remote=args.remote)
    except (CleaningError, ConnectUnreachable) as err:
        print(f"CLEANING FAILED: {err}", file=sys.stderr)  # noqa: T201 - the task log shows it
        return 1
    print(json.dumps(reports, indent=2))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
