"""The evaluation gate: TFX evaluation, blessing, pushing to serving, and the model registry.

ML environment (TensorFlow, TFX):
    gate        ``python -m pipelines.evaluation.gate``: checks, TFX pipeline, result + report
    pipeline    the TFX pipeline (ImportExampleGen, Importer, Resolver, Evaluator, Pusher)
    pusher      the Pusher component whose executor publishes atomically into the store
    eval_config the TFMA EvalConfig from the spec (where thresholds apply: see there)
    inputs      input checks and eval.parquet -> tf.Example
    rollback    ``python -m pipelines.evaluation.rollback``: serving store + ML Metadata side of a rollback

Both environments (no TensorFlow):
    settings    the spec's ``evaluation:`` section
    mlmd        the ML Metadata connection (where: pipelines.catalog.layout.mlmd_uri)
    serving     the serving store (TF Serving layout), atomic publish and retire
    report      the HTML report
    registry    the MLflow model registry (versions, tags, the ``champion`` alias)

Orchestration environment (Airflow tasks call these):
    stage       ``evaluate_and_push`` and ``rollback``
"""

from __future__ import annotations

import os
import sys


def exit_without_teardown(code: int) -> None:
    """End an ML-environment entry point (gate, rollback) at once: with TensorFlow, Beam
    and TFMA loaded the interpreter's teardown takes seconds and prints nothing useful,
    and everything the process had to say is already on disk (fsynced) or flushed here."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
