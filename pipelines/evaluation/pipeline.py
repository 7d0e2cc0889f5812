"""The gate's TFX pipeline (ML environment), one pipeline per line, run by LocalDagRunner::

    Importer "examples" (eval split: gzipped TFRecords of tf.Example) +
    Importer "candidate" (<run>/model, a Model artifact)  ------------+--> FastEvaluator --> ServingStorePusher
    Resolver "baseline" (LatestBlessedModelStrategy)  ----------------+

ML Metadata (:func:`pipelines.evaluation.mlmd.connection_config`) keeps every
Model, Examples, ModelEvaluation, ModelBlessing and PushedModel with their lineage; the
Resolver reads it to find the baseline: the latest model whose ``ModelBlessing`` has
``blessed=1``. The factory keeps that property true to what is being served: a
force-blessed push sets it (with ``factory_override=FORCED``), a rollback clears it on the
retired model (``factory_override=ROLLED_BACK``), so the next candidate is compared with
the model in serving.

The Evaluator is :class:`pipelines.evaluation.fast_evaluator.FastEvaluator` (TFX's
Evaluator component, batched predictions and vectorised metrics, TFMA's output format);
``FACTORY_EVALUATOR=tfma`` runs TFX's stock Evaluator instead (TFMA on Beam).

Beam (the stock Evaluator only) runs in-process (``--direct_running_mode=in_memory``, one worker): the evaluation
splits here are small, and process start-up would dominate (see bench/eval_bench.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pipelines.catalog import layout
from pipelines.evaluation import mlmd

BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
OVERRIDE_KEY = "factory_override"
# Which Evaluator the gate runs: "fast" (default: :class:`pipelines.evaluation.fast_evaluator.FastEvaluator`)
# or "tfma" (TFX's stock Evaluator, TFMA on Beam), from FACTORY_EVALUATOR
EVALUATORS = ("fast", "tfma")
EVALUATOR_ENV = "FACTORY_EVALUATOR"
EXAMPLE_SPLIT = layout.EVALUATION_SPLIT


def evaluator_kind() -> str:
    """The Evaluator the gate runs (``FACTORY_EVALUATOR``: fast, the default, or tfma)."""
    kind = os.environ.get(EVALUATOR_ENV, "").strip().lower() or "fast"
    if kind not in EVALUATORS:
        raise ValueError(f"{EVALUATOR_ENV}={kind!r}: must be one of {', '.join(EVALUATORS)}")
    return kind


def build(
    line: str,
    run_dir: Path,
    examples_dir: Path,
    eval_config: Any,
    *,
    force_bless_reason: str | None = None,
    info: dict[str, Any] | None = None,
    home: Path | None = None,
):
    # TFX's modules themselves, not ``tfx.v1``: that one also imports every extension
    # (Vertex AI's client among them), seconds of the gate's start-up for nothing
    from tfx.dsl.components.common.importer import Importer
    from tfx.dsl.components.common.resolver import Resolver
    from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
    from tfx.orchestration.pipeline import Pipeline
    from tfx.types import channel, standard_artifacts

    from pipelines.evaluation.pusher import ServingStorePusher, push_destination

    # the split the gate wrote (``<examples_dir>/Split-eval/``), imported as an Examples artifact:
    # no Beam job copies it (ImportExampleGen took seconds to rewrite the same records)
    examples = Importer(
        source_uri=str(examples_dir),
        artifact_type=standard_artifacts.Examples,
        properties={"split_names": json.dumps([EXAMPLE_SPLIT])},
        reimport=True,
    ).with_id("examples")
    candidate = Importer(
        source_uri=str(layout.model_root(run_dir)),
        artifact_type=standard_artifacts.Model,
        reimport=False,
    ).with_id("candidate")
    baseline = Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=channel.Channel(type=standard_artifacts.Model),
        model_blessing=channel.Channel(type=standard_artifacts.ModelBlessing),
    ).with_id("baseline")
    from pipelines.evaluation.fast_evaluator import FastEvaluator

    if evaluator_kind() == "fast":
        evaluator_class = FastEvaluator
    else:
        from tfx.components.evaluator.component import Evaluator as evaluator_class
    evaluator = evaluator_class(
        examples=examples.outputs["result"],
        model=candidate.outputs["result"],
        baseline_model=baseline.outputs["model"],
        eval_config=eval_config,
        example_splits=[EXAMPLE_SPLIT],
    )
    pusher = ServingStorePusher(
        model=candidate.outputs["result"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=push_destination(layout.serving_base(line, home)),
        custom_config={"force_bless_reason": force_bless_reason or "", "info": info or {}},
    )
    return Pipeline(
        pipeline_name=layout.pipeline_name(line),
        pipeline_root=str(layout.pipeline_root(line, home)),
        components=[examples, candidate, baseline, evaluator, pusher],
        metadata_connection_config=mlmd.connection_config(line, home),
        enable_cache=False,
        beam_pipeline_args=BEAM_ARGS,
    )


def store(line: str, home: Path | None = None):
    from ml_metadata.metadata_store import metadata_store

    return metadata_store.MetadataStore(mlmd.connection_config(line, home))


def _run_contexts(mlmd, line: str) -> set[int]:
    """The ids of this line's pipeline runs (a shared store, ``FACTORY_MLMD_URI``, holds
    the runs of every line: those of other lines are not this line's)."""
    try:
        pipeline_context = mlmd.get_context_by_type_and_name("pipeline", layout.pipeline_name(line))
    except Exception:  # noqa: BLE001 - a new store has no context types yet
        return set()
    if pipeline_context is None:
        return set()
    executions = mlmd.get_executions_by_context(pipeline_context.id)
    runs: set[int] = set()
    for execution in executions:
        for context in mlmd.get_contexts_by_execution(execution.id):
            if mlmd.get_context_types_by_id([context.type_id])[0].name == "pipeline_run":
                runs.add(context.id)
    return runs


def run(pipeline, line: str, home: Path | None = None) -> dict[str, Any]:
    """Run the pipeline; return what it made (artifacts by role, from ML Metadata)."""
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    mlmd = store(line, home)
    try:
        before = _run_contexts(mlmd, line)
    except Exception:  # noqa: BLE001 - a new store has no types yet
        before = set()
    started = time.monotonic()
    LocalDagRunner().run(pipeline)
    seconds = time.monotonic() - started
    mlmd = store(line, home)
    new = sorted(_run_contexts(mlmd, line) - before)
    if len(new) != 1:
        raise RuntimeError(f"expected one new pipeline run of {line} in ML Metadata, found {len(new)}")
    outputs = collect(mlmd, mlmd.get_contexts_by_id(new)[0])
    outputs["pipeline_s"] = seconds
    return outputs


def _props(artifact) -> dict[str, Any]:
    out = {}
    for k, v in artifact.custom_properties.items():
        kind = v.WhichOneof("value")
        out[k] = getattr(v, kind) if kind in ("int_value", "double_value", "string_value") else str(v)
    return out


def collect(mlmd, run_context) -> dict[str, Any]:
    """The run's artifacts by role: candidate, baseline, examples, evaluation, blessing, pushed."""
    from ml_metadata.proto import metadata_store_pb2

    executions = mlmd.get_executions_by_context(run_context.id)
    types = {t.id: t.name for t in mlmd.get_execution_types()}
    failed = [
        types.get(e.type_id, "?") for e in executions
        if e.last_known_state == metadata_store_pb2.Execution.FAILED
    ]
    if failed:
        raise RuntimeError(f"TFX execution(s) failed: {failed}")
    events = mlmd.get_events_by_execution_ids([e.id for e in executions])
    artifacts = {a.id: a for a in mlmd.get_artifacts_by_id(list({ev.artifact_id for ev in events}))}
    atypes = {t.id: t.name for t in mlmd.get_artifact_types()}
    roles: dict[str, Any] = {}
    for ev in events:
        key = ev.path.steps[0].key if ev.path.steps else ""
        a = artifacts[ev.artifact_id]
        entry = {"id": a.id, "uri": a.uri, "type": atypes.get(a.type_id), "properties": _props(a)}
        if ev.type == metadata_store_pb2.Event.INPUT:
            if key == "baseline_model":
                roles["baseline"] = entry
            elif key == "model" and "candidate" not in roles:
                roles["candidate"] = entry
        elif ev.type == metadata_store_pb2.Event.OUTPUT:
            name = {"examples": "examples", "evaluation": "evaluation", "blessing": "blessing",
                    "pushed_model": "pushed", "result": "candidate"}.get(key)
            if key == "result" and entry["type"] == "Examples":  # the examples' Importer
                name = "examples"
            if name:
                roles[name] = entry
    roles["pipeline_run_id"] = run_context.name
    return roles


def set_blessing_override(line: str, blessing_id: int, blessed: bool, override: str, reason: str,
                          home: Path | None = None) -> None:
    """Record the factory's decision on a ModelBlessing: ``blessed`` (what the baseline
    Resolver reads) and ``factory_override`` / ``factory_override_reason``."""
    mlmd = store(line, home)
    [artifact] = mlmd.get_artifacts_by_id([blessing_id])
    artifact.custom_properties["blessed"].int_value = 1 if blessed else 0
    artifact.custom_properties[OVERRIDE_KEY].string_value = override
    artifact.custom_properties[f"{OVERRIDE_KEY}_reason"].string_value = reason
    mlmd.put_artifacts([artifact])


def withdraw_blessings(line: str, model_uri: str, home: Path | None = None) -> list[int]:
    """Before a candidate is evaluated again (a retried gate), clear the blessings an
    earlier try gave it, so the baseline Resolver finds the model that was blessed before
    this candidate, not the candidate itself. Returns the blessing ids withdrawn."""
    mlmd = store(line, home)
    try:
        model_type = mlmd.get_artifact_type("Model")
    except Exception:  # noqa: BLE001 - a new store has no types yet
        return []
    models = [a for a in mlmd.get_artifacts_by_uri(model_uri) if a.type_id == model_type.id]
    withdrawn = []
    for model in models:
        for blessing_id in blessings_of_model(line, model.id, home):
            set_blessing_override(line, blessing_id, False, "RETRIED",
                                  "evaluated again by a retried gate; the new blessing replaces it", home)
            withdrawn.append(blessing_id)
    return withdrawn


def blessings_of_model(line: str, model_id: int, home: Path | None = None) -> list[int]:
    """Ids of the blessed ModelBlessing artifacts that name ``model_id``."""
    mlmd = store(line, home)
    out = []
    for a in mlmd.get_artifacts_by_type("ModelBlessing"):
        p = a.custom_properties
        if "current_model_id" in p and p["current_model_id"].int_value == model_id and p["blessed"].int_value == 1:
            out.append(a.id)
    return out
