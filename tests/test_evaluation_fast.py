"""The gate's FastEvaluator against TFX's own Evaluator (TFMA on Beam), on models really
trained by the Horovod worker for both tabular lines.

Per line: two small candidates (one rank; 1 and 2 epochs) on real rows; the gate runs
on the first (blessed on loose value thresholds) and then on the second, whose baseline
TFX's Resolver must find in ML Metadata. Then, on the Examples, candidate and baseline
of that second run, the stock ``tfx.components.Evaluator`` executor and
``FastEvaluatorExecutor`` run side by side under two EvalConfigs (the line's gate
config, and a strict one whose value and change thresholds fail on several slices):
every metric of every slice (candidate, baseline, diff) agrees within 1e-6, the
validation results carry the same failures, and the blessings are the same.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from serving_models import train_on_one_rank

from bench.realdata import employment_frame, lending_club_frame, make_validated_batch
from pipelines.config import REPO_ROOT, include_dir, ml_python
from pipelines.evaluation.stage import ml_environment

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (ml_python().parent / "horovodrun").exists(), reason="ML environment not set up"),
]

TOLERANCE = 1e-6
# Loose thresholds: the first candidate is blessed, so it is the second one's baseline.
SETTINGS = {
    "credit_risk": {
        "slices": ["term", "verification_status", ["term", "verification_status"]],
        "thresholds": {"auc": {"min": 0.3, "max_drop": 0.5}, "pr_auc": {"min": 0.01}},
        "slice_thresholds": {"min_examples": 100, "min_per_class": 10, "thresholds": {"auc": {"min": 0.2}}},
        "min_eval_examples": 100,
    },
    "employment": {
        "slices": ["SEX", "age_band", ["SEX", "age_band"]],
        "derived_features": {"age_band": {"from": "AGEP", "bins": [16, 25, 35, 45, 55, 65]}},
        "thresholds": {"auc": {"min": 0.3, "max_drop": 0.5}, "binary_accuracy": {"min": 0.3},
                       "calibration": {"min": 0.2, "max": 5.0}},
        "slice_thresholds": {"min_examples": 100, "min_per_class": 10, "thresholds": {"auc": {"min": 0.2}}},
        "min_eval_examples": 100,
    },
}
# Thresholds no model here meets, on the overall slice, the gated slices and vs the baseline.
STRICT = {
    "thresholds": {"auc": {"min": 0.99, "max_drop": 0.0}, "binary_accuracy": {"min": 0.99},
                   "calibration": {"min": 0.999, "max": 1.001}},
    "slice_thresholds": {"min_examples": 100, "min_per_class": 10, "thresholds": {"auc": {"min": 0.99}}},
}
ROWS = {"credit_risk": 3000, "employment": 3000}

COMPARE = r"""
import json, math, sys, tempfile
from pathlib import Path
import tensorflow_model_analysis as tfma
from tfx.components.evaluator import executor as stock
from tfx.dsl.components.base import base_beam_executor
from tfx.types import standard_artifacts
from tfx.utils import json_utils, proto_utils
from pipelines.evaluation import inputs
from pipelines.evaluation.eval_config import build_eval_config
from pipelines.evaluation.fast_evaluator import FastEvaluatorExecutor
from pipelines.evaluation.pipeline import BEAM_ARGS
from pipelines.specs import load_spec
from pipelines.specs.evaluation import load_settings, parse_settings

line, run, result, strict = sys.argv[1], Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()), json.loads(sys.argv[4])
spec = load_spec(line)
settings = load_settings(spec)
part = inputs.PARTS[spec.task]
ev = part.load(run, settings, spec)
orders = {f.name: [str(c) for c in f.categories] for f in spec.schema.fields if f.categories}
counts = part.counts(ev, settings, orders)
fields = {f.name: f.type for f in spec.schema.fields}
strict_settings = parse_settings(spec.name, {**dict(spec.evaluation), **strict}, fields, set(spec.schema.key) | {ev.label})
configs = {"line": build_eval_config(settings, ev.label, counts), "strict": build_eval_config(strict_settings, ev.label, counts)}

def artifact(kind, uri, id_):
    a = kind()
    a.uri = uri
    a.id = id_
    return a

examples = artifact(standard_artifacts.Examples, result["tfx"]["examples_uri"], 1)
examples.split_names = '["eval"]'
model = artifact(standard_artifacts.Model, result["candidate"]["model_uri"], result["candidate"]["mlmd_model_id"])
baseline = artifact(standard_artifacts.Model, result["baseline"]["model_uri"], result["baseline"]["mlmd_model_id"])

def values(uri):
    out = {}
    for m in tfma.load_metrics(uri):
        where = tfma.slicer.stringify_slice_key(tfma.slicer.deserialize_slice_key(m.slice_key))
        for kv in m.metric_keys_and_values:
            k = kv.key
            out[f"{where}|{k.name}|{k.model_name}|{k.is_diff}"] = kv.value.double_value.value
    return out

def failures(uri):
    v = tfma.load_validation_result(uri)
    out = []
    for s in v.metric_validations_per_slice:
        where = tfma.slicer.stringify_slice_key(tfma.slicer.deserialize_slice_key(s.slice_key))
        for f in s.failures:
            out.append([where, f.metric_key.name, f.metric_key.is_diff, str(f.metric_threshold).replace("\n", " ")])
    return v.validation_ok, sorted(out), [str(m).replace("\n", " ") for m in v.missing_slices]

report = {}
tmp = Path(tempfile.mkdtemp())
for name, config in configs.items():
    for kind, cls in (("tfma", stock.Executor), ("fast", FastEvaluatorExecutor)):
        where = tmp / name / kind
        evaluation = artifact(standard_artifacts.ModelEvaluation, str(where / "evaluation"), 0)
        blessing = artifact(standard_artifacts.ModelBlessing, str(where / "blessing"), 0)
        (where / "blessing").mkdir(parents=True)
        executor = cls(base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=BEAM_ARGS, tmp_dir=str(tmp / "t")))
        executor.Do({"examples": [examples], "model": [model], "baseline_model": [baseline]},
                    {"evaluation": [evaluation], "blessing": [blessing]},
                    {"eval_config": proto_utils.proto_to_json(config), "example_splits": json_utils.dumps(["eval"])})
        ok, fails, missing = failures(evaluation.uri)
        report[f"{name}/{kind}"] = {
            "metrics": values(evaluation.uri), "validation_ok": ok, "failures": fails, "missing_slices": missing,
            "blessed": blessing.get_int_custom_property("blessed"),
            "files": sorted(p.name for p in (where / "blessing").iterdir()),
            "properties": {k: str(blessing.get_custom_property(k)) for k in
                           ("current_model", "current_model_id", "baseline_model", "baseline_model_id")},
            "fallback": getattr(executor, "fallback", None),
        }
print(json.dumps(report))
"""

MLMD = r"""
import json, sys
from pathlib import Path
from pipelines.evaluation import pipeline
home, line, run_id = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
store = pipeline.store(line, home)
[ctx] = [c for c in store.get_contexts_by_type("pipeline_run") if c.name == run_id]
etypes = {t.id: t.name for t in store.get_execution_types()}
atypes = {t.id: t.name for t in store.get_artifact_types()}
out = {}
for e in store.get_executions_by_context(ctx.id):
    events = store.get_events_by_execution_ids([e.id])
    arts = {a.id: a for a in store.get_artifacts_by_id([ev.artifact_id for ev in events])}
    out[etypes[e.type_id]] = {
        "state": e.last_known_state,
        "io": sorted([ev.type, ev.path.steps[0].key, atypes[arts[ev.artifact_id].type_id], ev.artifact_id]
                     for ev in events),
    }
print(json.dumps(out))
"""


def _ml(code_or_args: list[str], home: Path, include: Path) -> str:
    env = {**ml_environment(home), "FACTORY_INCLUDE": str(include)}
    done = subprocess.run([str(ml_python()), *code_or_args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    return done.stdout.strip().splitlines()[-1]


def _gate(line: str, run: Path, home: Path, include: Path) -> dict:
    _ml(["-m", "pipelines.evaluation.gate", "--line", line, "--run-dir", str(run)], home, include)
    return json.loads((run / "evaluation" / "result.json").read_text())


@pytest.fixture(scope="module", params=["credit_risk", "employment"])
def line_world(request, tmp_path_factory):
    from pipelines.training.prepare import prepare_run

    line = request.param
    home = tmp_path_factory.mktemp(f"fast-{line}") / "factory"
    include = home / "include"
    shutil.copytree(include_dir(), include)
    spec_path = include / "lines" / f"{line}.yaml"
    data = yaml.safe_load(spec_path.read_text())
    data["evaluation"] = SETTINGS[line]
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    mp = pytest.MonkeyPatch()
    mp.setenv("FACTORY_INCLUDE", str(include))
    mp.setenv("FACTORY_HOME", str(home))
    for var in ("MLFLOW_TRACKING_URI", "FACTORY_SERVING_STORE", "FACTORY_MLMD_URI", "FACTORY_TFX_ROOT",
                "FACTORY_EVALUATOR"):
        mp.delenv(var, raising=False)
    try:
        frame = (employment_frame(2015) if line == "employment" else lending_club_frame()).head(ROWS[line])
        make_validated_batch(home, line, "b1", frame)
        runs = []
        for name, epochs in (("first", 1), ("second", 2)):
            run = home / "training" / line / name
            prepare_run(line, run, {"workers": 1, "epochs": epochs, "batch_size": 128}, home=home)
            train_on_one_rank(home, run, name, line=line)
            runs.append(run)
        first = _gate(line, runs[0], home, include)
        second = _gate(line, runs[1], home, include)
        compared = json.loads(_ml(["-c", COMPARE, line, str(runs[1]), str(runs[1] / "evaluation" / "result.json"),
                                   json.dumps(STRICT)], home, include))
        lineage = json.loads(_ml(["-c", MLMD, str(home), line, second["tfx"]["pipeline_run_id"]], home, include))
        yield {"line": line, "first": first, "second": second, "compared": compared, "lineage": lineage}
    finally:
        mp.undo()


def test_the_gate_runs_the_fast_evaluator_and_the_resolver_finds_the_blessed_baseline(line_world):
    first, second = line_world["first"], line_world["second"]
    assert first["tfx"]["evaluator"] == "fast" and second["tfx"]["evaluator"] == "fast"
    assert first["blessing"] == "BLESSED" and first["baseline"] is None
    # the next run's baseline is the blessed first model, found by LatestBlessedModelStrategy
    assert second["baseline"]["model_uri"] == first["candidate"]["model_uri"]
    assert second["baseline"]["mlmd_model_id"] == first["candidate"]["mlmd_model_id"]
    assert second["metrics"]["Overall"]["diff"]["auc"] == pytest.approx(
        second["metrics"]["Overall"]["candidate"]["auc"] - second["metrics"]["Overall"]["baseline"]["auc"])


def test_ml_metadata_holds_the_evaluation_and_blessing_with_their_lineage(line_world):
    lineage = line_world["lineage"]
    [evaluator] = [name for name in lineage if name.endswith("FastEvaluator")]
    io = lineage[evaluator]["io"]
    kinds = {(t, key, atype) for t, key, atype, _ in io}
    INPUT, OUTPUT = 3, 4  # ml_metadata Event.INPUT / Event.OUTPUT
    assert {(INPUT, "examples", "Examples"), (INPUT, "model", "Model"), (INPUT, "baseline_model", "Model"),
            (OUTPUT, "evaluation", "ModelEvaluation"), (OUTPUT, "blessing", "ModelBlessing")} <= kinds
    [blessing_id] = [i for t, key, _, i in io if key == "blessing"]
    assert blessing_id == line_world["second"]["tfx"]["mlmd_blessing_id"]
    # the Pusher read that blessing
    [pusher] = [name for name in lineage if name.endswith("ServingStorePusher")]
    assert [3, "model_blessing", "ModelBlessing", blessing_id] in lineage[pusher]["io"]


@pytest.mark.parametrize("config", ["line", "strict"])
def test_metrics_validation_and_blessing_agree_with_tfx_evaluator(line_world, config):
    tfma_run, fast = line_world["compared"][f"{config}/tfma"], line_world["compared"][f"{config}/fast"]
    assert fast["fallback"] is None
    assert set(fast["metrics"]) == set(tfma_run["metrics"])
    assert any("|auc|baseline|" in k for k in fast["metrics"]) and any("|True" in k for k in fast["metrics"])
    assert any("_X_" in k for k in fast["metrics"])  # a crossed slice
    for key, expected in tfma_run["metrics"].items():
        got = fast["metrics"][key]
        assert (math.isnan(got) and math.isnan(expected)) or abs(got - expected) <= TOLERANCE, (key, got, expected)
    assert fast["validation_ok"] == tfma_run["validation_ok"]
    assert fast["failures"] == tfma_run["failures"]
    assert fast["missing_slices"] == tfma_run["missing_slices"]
    assert fast["blessed"] == tfma_run["blessed"] and fast["files"] == tfma_run["files"]
    assert fast["properties"] == tfma_run["properties"]
    if config == "strict":
        assert not fast["validation_ok"] and fast["files"] == ["NOT_BLESSED"]
        if line_world["compared"]["line/fast"]["metrics"]["Overall|auc|candidate|True"] < 0:
            assert any(f[2] for f in fast["failures"]), "the change threshold failed"
        assert len({f[0] for f in fast["failures"]}) > 1, "failures on several slices"
    else:
        assert fast["validation_ok"] and fast["files"] == ["BLESSED"]
