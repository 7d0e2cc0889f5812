"""The evaluation gate end to end, on models really trained by the Horovod worker.

Two candidates of the employment line are trained on real ACS rows (one worker,
a few epochs): a good one, and one trained on shuffled labels. Then, in order, as
the factory would see it:

1. the good one is the first model: BLESSED on the value thresholds alone, pushed as
   version 1 of the serving store, registered, ``champion``; a retry pushes nothing;
2. the shuffled one is NOT_BLESSED (the change threshold against the good one fails):
   the store and ``champion`` do not move;
3. force-blessing it without a reason is refused; with a reason it is pushed as
   version 2, FORCED, the reason on its model version;
4. rollback: version 2 leaves TF Serving's sight, ``champion`` and the next baseline
   are the good model again;
5. the served model, loaded from the store the way TF Serving does, answers serialized
   tf.Example exactly like the trained one.

Bad input (no label column, a model without the serving signature) fails with a clear
message and pushes and registers nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from serving_models import train_on_one_rank

from bench.realdata import employment_frame, make_validated_batch
from pipelines import tracking
from pipelines.catalog import layout
from pipelines.config import REPO_ROOT, include_dir, ml_python
from pipelines.evaluation import registry, serving
from pipelines.evaluation.stage import (
    ForceBlessError,
    GateInputError,
    RollbackError,
    evaluate_and_push,
    ml_environment,
    rollback,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (ml_python().parent / "horovodrun").exists(), reason="ML environment not set up"),
]

LINE = "employment"
ROWS = 6000
EPOCHS = 3
REASON = "INC-4711: shuffled-label canary, approved by the risk committee for a shadow test"
# The gate's settings in these tests (the line's YAML may hold stricter production ones).
EVALUATION = {
    "slices": ["SEX", "age_band", ["SEX", "age_band"]],
    "derived_features": {"age_band": {"from": "AGEP", "bins": [16, 25, 35, 45, 55, 65]}},
    "thresholds": {"auc": {"min": 0.75, "max_drop": 0.02}, "binary_accuracy": {"min": 0.65}},
    "slice_thresholds": {"min_examples": 150, "min_per_class": 30, "thresholds": {"auc": {"min": 0.6}}},
    "min_eval_examples": 200,
}


@dataclass
class World:
    home: Path
    good: Path
    shuffled: Path

    @property
    def base(self) -> Path:
        return layout.serving_base(LINE, self.home)


def _train(home: Path, name: str, shuffle_labels: bool = False) -> Path:
    """A training run as the training stage makes it: prepared data, an MLflow run, the
    Horovod worker (one rank), the model logged as the run's ``model`` artifact."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.training.prepare import prepare_run

    run = home / "training" / LINE / name
    prepare_run(LINE, run, {"workers": 1, "epochs": EPOCHS, "batch_size": 128}, home=home)
    if shuffle_labels:
        for shard in (run / "data" / "train").glob("part-*.parquet"):
            table = pq.read_table(shard)
            i = table.schema.get_field_index("employed")
            labels = np.random.default_rng(3).permutation(table.column(i).to_numpy())
            pq.write_table(table.set_column(i, "employed", pa.array(labels, pa.int64())), shard)
    train_on_one_rank(home, run, name, log_model=True)
    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("evaluation") / "factory"
    include = home / "include"
    shutil.copytree(include_dir(), include)
    spec_path = include / "lines" / f"{LINE}.yaml"
    data = yaml.safe_load(spec_path.read_text())
    data["evaluation"] = EVALUATION
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    mp = pytest.MonkeyPatch()
    mp.setenv("FACTORY_INCLUDE", str(include))
    mp.setenv("FACTORY_HOME", str(home))  # what the DAG's tasks use
    for var in ("MLFLOW_TRACKING_URI", "FACTORY_SERVING_STORE", "FACTORY_MLMD_URI", "FACTORY_TFX_ROOT"):
        mp.delenv(var, raising=False)
    try:
        make_validated_batch(home, LINE, "y2015", employment_frame(2015).head(ROWS))
        started = time.monotonic()
        w = World(home, _train(home, "good"), _train(home, "shuffled", shuffle_labels=True))
        print(f"\ntrained two candidates in {time.monotonic() - started:.0f}s")
        yield w
    finally:
        mp.undo()


def _registry_state(home: Path) -> dict:
    client = tracking.client(home)
    champion = registry.champion(LINE, home)
    return {
        "champion": str(champion.version) if champion else None,
        "versions": {str(v.version): dict(v.tags) for v in registry.versions(client, LINE)}
        if _has_model(client) else {},
    }


def _has_model(client) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(layout.registered_model_name(LINE))
        return True
    except MlflowException:
        return False


def _state(world: World) -> dict:
    return {"live": serving.live_versions(world.base), "retired": serving.retired_versions(world.base),
            **_registry_state(world.home)}


PROBE = r"""
import json, sys
from pathlib import Path
import numpy as np
import pyarrow.parquet as pq
import tensorflow as tf
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.types import artifact_utils
from pipelines.evaluation import pipeline
from pipelines.catalog import layout
from pipelines.training.manifest import load_manifest
from pipelines.training.model import roc_auc, serialize_examples

home, line, run = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
# 1. the baseline the next evaluation would get (TFX's own strategy on the MLMD store)
store = pipeline.store(line, home)
[ctx] = [c for c in store.get_contexts_by_type("pipeline") if c.name == layout.pipeline_name(line)]
types = {t.id: t for t in store.get_artifact_types()}
found = {"Model": [], "ModelBlessing": []}
for a in store.get_artifacts_by_context(ctx.id):
    t = types[a.type_id]
    if t.name in found:
        found[t.name].append(artifact_utils.deserialize_artifact(t, a))
resolved = LatestBlessedModelStrategy()._resolve({"model": found["Model"], "model_blessing": found["ModelBlessing"]},
                                                 "model", "model_blessing")
# 2. the served model, loaded as TF Serving loads it: the highest integer directory
base = layout.serving_base(line, home)
version = max(int(p.name) for p in base.iterdir() if p.name.isdigit())
served = tf.saved_model.load(str(base / str(version)))
sig = served.signatures["serving_default"]
manifest = load_manifest(run)
frame = pq.read_table(run / "data" / "eval.parquet").to_pandas()
examples = tf.constant(serialize_examples(frame, manifest))
out = sig(examples=examples)
trained = tf.saved_model.load(str(run / "model" / "Format-Serving")).signatures["serving_default"](examples=examples)
probs = out["probabilities"].numpy()
print(json.dumps({
    "baseline_uri": resolved["model"][0].uri if resolved["model"] else None,
    "version": version,
    "has_saved_model_pb": (base / str(version) / "saved_model.pb").is_file(),
    "inputs": sorted(sig.structured_input_signature[1]),
    "outputs": sorted(out),
    "shape": list(probs.shape),
    "dtype": out["probabilities"].dtype.name,
    "max_abs_diff": float(np.abs(probs - trained["probabilities"].numpy()).max()),
    "auc": roc_auc(frame[manifest.label].to_numpy(), probs[:, 0]),
}))
"""


def _ml(code: str, *args: str, home: Path) -> str:
    done = subprocess.run([str(ml_python()), "-c", code, *args], env=ml_environment(home), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dagbag(airflow_db, world):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


@pytest.fixture(scope="module")
def story(world, dagbag):
    h, s, clock = world.home, {"seconds": {}}, time.monotonic()

    def step(name: str, value):
        nonlocal clock
        s[name] = value
        s["seconds"][name] = round(time.monotonic() - clock, 1)
        s[f"after_{name}"] = _state(world)
        clock = time.monotonic()

    s["before"] = _state(world)
    step("good", evaluate_and_push(LINE, world.good, home=h, tags={"airflow.dag_id": "evaluate_employment"}))
    step("good_again", evaluate_and_push(LINE, world.good, home=h))
    step("bad", evaluate_and_push(LINE, world.shuffled, home=h))
    refusals = []
    for kwargs in ({"force_bless": True}, {"force_bless_reason": "   "}):
        with pytest.raises(ForceBlessError) as err:
            evaluate_and_push(LINE, world.shuffled, home=h, **kwargs)
        refusals.append(str(err.value))
    step("refusals", refusals)
    step("forced", evaluate_and_push(LINE, world.shuffled, force_bless_reason=REASON, home=h))
    # the rollback DAG, as an operator would trigger it
    run = dagbag.dags[f"rollback_{LINE}"].test(run_conf={"reason": "the forced model misbehaves"})
    step("rollback", {ti.task_id: ti.state for ti in run.get_task_instances()})
    # a retried rollback task (same planned version) changes nothing; a new one has nothing left
    step("rollback_retry", rollback(LINE, expect_version=2, home=h))
    with pytest.raises(RollbackError, match="nothing to roll back to"):
        rollback(LINE, home=h)
    step("probe", json.loads(_ml(PROBE, str(h), LINE, str(world.good), home=h)))
    print(f"\nevaluation story, seconds per step: {s['seconds']}")
    return s


# --------------------------------------------------------------------------- 1. the first model


def test_first_candidate_is_blessed_on_value_thresholds_and_pushed(world, story):
    good = story["good"]
    assert good["blessing"] == "BLESSED", good
    assert good["blessed_on"] == "value thresholds only (no blessed model yet)"
    assert good["baseline_run"] is None and good["baseline_metrics"] is None
    assert good["metrics"]["auc"] > 0.75 and good["metrics"]["example_count"] > 1000
    assert "accuracy" not in good["metrics"]  # top-1 accuracy is a multi-class metric: a binary gate computes binary metrics
    assert good["pushed"] and good["serving_version"] == 1
    assert Path(good["serving_path"]) == world.base / "1"
    assert (world.base / "1" / "saved_model.pb").is_file()
    result = json.loads(Path(good["result_json"]).read_text())
    assert result["baseline"] is None and result["failures"] == []
    assert story["before"]["live"] == [] and story["after_good"]["live"] == [1]
    assert story["after_good"]["champion"] == good["model_version"]
    tags = story["after_good"]["versions"][good["model_version"]]
    assert tags["blessing"] == "BLESSED" and tags["serving_version"] == "1"
    assert tags["serving_status"] == "SERVING" and tags["airflow.dag_id"] == "evaluate_employment"
    assert abs(float(tags["eval.auc"]) - good["metrics"]["auc"]) < 1e-9
    mv = tracking.client(world.home).get_model_version(good["registered_model"], good["model_version"])
    assert mv.source == f"runs:/{good['mlflow_run_id']}/model" and mv.run_id == good["mlflow_run_id"]


def test_evaluation_is_kept_with_the_run_readable_by_people(world, story):
    good = story["good"]
    page = Path(good["report_html"]).read_text()
    assert "BLESSED" in page and "<h2>SEX:1</h2>" in page and "<h2>age_band:[25,35)</h2>" in page
    client = tracking.client(world.home)
    logged = {Path(a.path).name for a in client.list_artifacts(good["mlflow_run_id"], "evaluation")}
    assert logged == {"result.json", "report.html", "slices_auc.png"}
    assert "slices_auc.png" in page
    assert client.get_run(good["mlflow_run_id"]).data.metrics["eval_auc"] == pytest.approx(good["metrics"]["auc"])


def test_small_slices_are_reported_but_do_not_block(story):
    result = json.loads(Path(story["good"]["result_json"]).read_text())
    slices = {s["slice"]: s for s in result["slices"]}
    young = slices["age_band:<16"]  # children: nobody employed, AUC meaningless
    assert young["positives"] == 0 and young["gated"] is False
    assert "age_band:<16" in result["metrics"]
    assert slices["SEX:1"]["gated"] and slices["SEX:2"]["gated"]
    crosses = [s for n, s in slices.items() if n.startswith("SEX_X_age_band:")]
    assert len(crosses) == 14 and all(s["slice"] in result["metrics"] for s in crosses)
    assert any(not s["gated"] for s in crosses)
    assert result["blessing"] == "BLESSED"


def test_a_retry_pushes_nothing_twice(story):
    again = story["good_again"]
    assert again["reused"] and again["serving_version"] == 1
    assert again["model_version"] == story["good"]["model_version"]
    assert story["after_good_again"] == story["after_good"]


# --------------------------------------------------------------------------- 2. a worse candidate


def test_worse_candidate_is_not_blessed_and_nothing_moves(story):
    bad = story["bad"]
    assert bad["blessing"] == "NOT_BLESSED", bad
    assert not bad["pushed"] and bad["serving_version"] is None
    assert bad["baseline_run"] == "good"
    assert bad["metrics"]["auc"] < bad["baseline_metrics"]["auc"] - 0.02
    result = json.loads(Path(bad["result_json"]).read_text())
    assert {"slice": "Overall", "metric": "auc", "kind": "change"}.items() <= next(
        f for f in result["failures"] if f["kind"] == "change" and f["slice"] == "Overall").items()
    after = story["after_bad"]
    assert after["live"] == story["after_good"]["live"] == [1]
    assert after["champion"] == story["after_good"]["champion"]
    tags = after["versions"][bad["model_version"]]
    assert tags["blessing"] == "NOT_BLESSED" and tags["serving_status"] == "NOT_PUSHED"
    assert tags["baseline_run"] == "good" and "auc" in tags["blessing_why"]


# --------------------------------------------------------------------------- 3. force-bless


def test_force_bless_without_a_reason_is_refused(story):
    assert len(story["refusals"]) == 2
    assert all("a written reason is required" in r for r in story["refusals"])
    assert story["after_refusals"] == story["after_bad"]


def test_force_bless_with_a_reason_pushes_and_records_it(world, story):
    forced = story["forced"]
    assert forced["blessing"] == "FORCED" and forced["force_bless_reason"] == REASON
    assert forced["pushed"] and forced["serving_version"] == 2
    assert forced["model_version"] == story["bad"]["model_version"]  # the same candidate, re-evaluated
    after = story["after_forced"]
    assert after["live"] == [1, 2] and after["champion"] == forced["model_version"]
    tags = after["versions"][forced["model_version"]]
    assert tags["blessing"] == "FORCED" and tags["force_bless_reason"] == REASON
    assert tags["serving_version"] == "2" and tags["serving_status"] == "SERVING"
    assert after["versions"][story["good"]["model_version"]]["serving_status"] == "STANDBY"
    result = json.loads(Path(forced["result_json"]).read_text())
    assert result["force_bless_reason"] == REASON and "force-blessed despite" in result["why"]
    # rolled back since: the version's files (and their push record) are under .retired/
    assert serving.push_info(world.base / ".retired" / "2")["force_bless_reason"] == REASON


# --------------------------------------------------------------------------- 4. rollback


def test_rollback_restores_the_previous_version_everywhere(world, story):
    assert story["rollback"] == {"plan": "success", "rollback": "success"}
    after = story["after_rollback"]
    assert after["live"] == [1] and after["retired"] == [2]
    assert (world.base / ".retired" / "2" / "saved_model.pb").is_file()
    good_v, bad_v = story["good"]["model_version"], story["forced"]["model_version"]
    assert after["champion"] == good_v
    assert after["versions"][good_v]["serving_status"] == "SERVING"
    assert after["versions"][bad_v]["serving_status"] == "RETIRED"
    assert after["versions"][bad_v]["rolled_back_reason"] == "the forced model misbehaves"
    # the next candidate is compared with the model in serving again
    assert story["probe"]["baseline_uri"] == str(world.good / "model")
    retry = story["rollback_retry"]
    assert retry["already_rolled_back"] and retry["serving_version"] == 1 and retry["champion"] == good_v
    assert story["after_rollback_retry"] == after


# --------------------------------------------------------------------------- 5. serving


def test_served_model_answers_tf_examples_as_tf_serving_loads_it(story):
    p = story["probe"]
    assert p["version"] == 1 and p["has_saved_model_pb"]
    assert p["inputs"] == ["examples"] and p["outputs"] == ["logits", "probabilities"]
    assert p["shape"][1] == 1 and p["shape"][0] > 1000 and p["dtype"] == "float32"
    assert p["max_abs_diff"] == 0.0
    assert p["auc"] > 0.75


def test_nothing_half_written_is_left_in_the_store(world, story):
    names = sorted(p.name for p in world.base.iterdir())
    assert names == [".lock", ".retired", "1"]


# --------------------------------------------------------------------------- bad input


def _copy_run(world: World, tmp_path: Path) -> Path:
    run = tmp_path / "training" / "bad-input"
    shutil.copytree(world.good, run, ignore=shutil.ignore_patterns("evaluation", "checkpoints", "tensorboard"))
    return run


def _drop_label(run: Path) -> None:
    import pyarrow.parquet as pq

    path = run / "data" / "eval.parquet"
    pq.write_table(pq.read_table(path).drop(["employed"]), path)


WRONG_SIGNATURE = r"""
import sys
import tensorflow as tf

class Model(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="AGEP")])
    def serve(self, AGEP):
        p = tf.sigmoid(AGEP[:, None] / 100.0)
        return {"probabilities": p, "logits": p}

m = Model()
tf.saved_model.save(m, sys.argv[1], signatures={"serving_default": m.serve})
print("ok")
"""


def _wrong_signature(run: Path) -> None:
    target = run / "model" / "Format-Serving"
    shutil.rmtree(target)
    _ml(WRONG_SIGNATURE, str(target), home=run)


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (_drop_label, r"eval\.parquet: the label column 'employed' is missing"),
        (_wrong_signature, r"signature 'serving_default' must take exactly one input 'examples' "
                           r"\(serialized tf\.Example\), it takes \['AGEP'\]"),
    ],
    ids=["missing-label-column", "wrong-signature"],
)
def test_bad_input_fails_clearly_and_pushes_nothing(world, story, tmp_path, breaker, message):
    run = _copy_run(world, tmp_path)
    breaker(run)
    before = _state(world)
    with pytest.raises(GateInputError, match=message):
        evaluate_and_push(LINE, run, home=world.home)
    assert _state(world) == before
    assert not (run / "evaluation" / "result.json").exists()


# --------------------------------------------------------------------------- faults


GATE_TASK = """
import sys
from pathlib import Path
from pipelines.evaluation.stage import evaluate_and_push
evaluate_and_push(sys.argv[1], Path(sys.argv[2]), home=Path(sys.argv[3]))
"""


def _fresh_copy(world: World, tmp_path: Path) -> tuple[Path, Path]:
    """The good candidate in a factory home of its own (empty store, new ML Metadata)."""
    home = tmp_path / "factory"
    run = home / "training" / LINE / "good"
    shutil.copytree(world.good, run, ignore=shutil.ignore_patterns("evaluation", "checkpoints", "tensorboard"))
    return home, run


def _gate(run: Path, home: Path) -> tuple[int, str, str]:
    from pipelines.evaluation import stage

    return stage._run_ml([stage.GATE_MODULE, "--line", LINE, "--run-dir", str(run)],
                         layout.gate_log_path(run), 900, home, run_dir=run)


def _gates_of(run: Path) -> set[int]:
    from processes import processes

    return processes(lambda argv: b"pipelines.evaluation.gate" in argv and str(run).encode() in argv)


def test_a_gate_that_died_after_its_push_is_retried_into_the_same_single_version(world, tmp_path):
    home, run = _fresh_copy(world, tmp_path)
    base = layout.serving_base(LINE, home)
    record = layout.evaluation_result_path(run)
    record.mkdir(parents=True)  # the record cannot be written: the gate dies between push and record
    rc, _, err = _gate(run, home)
    assert rc == 1, err[-3000:]
    assert serving.live_versions(base) == [1]
    assert serving.push_info(base / "1")["run_dir"] == str(run)
    record.rmdir()

    rc, _, err = _gate(run, home)  # the retry
    assert rc == 0, err[-3000:]
    result = json.loads(record.read_text())
    assert serving.live_versions(base) == [1] and serving.retired_versions(base) == []
    assert result["blessing"] == "BLESSED" and result["serving"]["version"] == 1
    # compared with what was blessed before it (nothing), not with itself
    assert result["baseline"] is None and result["blessed_on"] == "value thresholds only (no blessed model yet)"
    assert len(result["withdrawn_blessings"]) == 1

    # a shared ML Metadata store: this line's runs are not another line's
    counts = json.loads(_ml(
        "import json, sys\nfrom pathlib import Path\nfrom pipelines.evaluation import pipeline\n"
        "s = pipeline.store(sys.argv[1], Path(sys.argv[3]))\n"
        "print(json.dumps([len(pipeline._run_contexts(s, sys.argv[1])), len(pipeline._run_contexts(s, sys.argv[2]))]))",
        LINE, "credit_risk", str(home), home=home,
    ))
    assert counts == [2, 0]


def test_a_task_killed_outright_takes_its_gate_with_it(world, tmp_path):
    import os
    import signal
    import sys

    home, run = _fresh_copy(world, tmp_path)
    task = subprocess.Popen([sys.executable, "-c", GATE_TASK, LINE, str(run), str(home)], cwd=REPO_ROOT,
                            env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not _gates_of(run) and time.monotonic() < deadline:
        time.sleep(0.1)
    gates = _gates_of(run)
    assert gates, "the gate did not start"
    time.sleep(2)
    task.send_signal(signal.SIGKILL)
    task.wait()
    killed_at = time.monotonic()
    while _gates_of(run) & gates and time.monotonic() - killed_at < 15:
        time.sleep(0.1)
    assert not _gates_of(run) & gates, "the gate lived on after its task was killed"
    time.sleep(2)
    assert serving.live_versions(layout.serving_base(LINE, home)) == []  # and it pushed nothing
