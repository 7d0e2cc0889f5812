"""The Horovod training worker on real credit-risk rows: two Gloo workers under
``horovodrun`` train one model (identical weights on both ranks), only rank 0
writes, the exported SavedModel answers tf.Example requests exactly like the
in-memory model, a killed run resumes from its checkpoint, and bad input fails
with one clear line. First, without workers: what the manifest accepts and how it
names a field it refuses.

The test runs in the orchestration environment and starts the workers in the
ML environment, the way the training stage does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.realdata import lending_club_frame
from pipelines.config import REPO_ROOT
from pipelines.specs import load_spec
from pipelines.training.manifest import Feature, ManifestError, parse_manifest

ML_BIN = REPO_ROOT / ".venv" / "ml" / "bin"
HOROVODRUN = ML_BIN / "horovodrun"
WORKERS = 2
RUN_TIMEOUT_S = 420

needs_horovod = pytest.mark.skipif(not HOROVODRUN.exists(), reason=f"{HOROVODRUN} not installed")
integration = pytest.mark.integration  # the tests that start workers


# --------------------------------------------------------------------------- the manifest, without workers


def small_manifest() -> dict:
    """A valid manifest as prepare.py writes it (with keys the worker does not read)."""
    return {
        "line": "credit_risk", "spec_version": 3, "run_id": "run-1", "batches": ["b-1", "b-2"], "key": ["id"],
        "label": {"name": "bad", "positive": "1", "positive_rate": 0.05},
        "features": [
            {"name": "amount", "type": "double", "kind": "numeric", "categories": None, "log": True,
             "mean": 8.5, "std": 1.25},
            {"name": "term", "type": "integer", "kind": "numeric", "categories": None, "log": False,
             "mean": 40, "std": 0},
            {"name": "grade", "type": "string", "kind": "categorical", "categories": ["A", "B", "C"],
             "log": False, "mean": None, "std": None},
            {"name": "region", "type": "integer", "kind": "categorical", "categories": ["-1", "7"]},
        ],
        "rows": {"read": 110, "train": 80, "validation": 10, "eval": 20},
        "shards": [40, 40],
        "params": {"workers": 2, "epochs": 3, "batch_size": 8, "learning_rate": 1,
                   "early_stopping_patience": 2, "seed": 7, "window_batches": 0},
        "model": {"kind": "tabular_dnn", "hidden_units": [16, 8], "dropout": 0.1, "one_hot_max": 12,
                  "embedding_dim": 4, "log_features": ["amount"], "class_weight": "balanced"},
    }


def test_a_valid_manifest_parses():
    data = small_manifest()
    m = parse_manifest(data)
    assert m.raw is data
    assert (m.line, m.spec_version, m.run_id, m.batches, m.key) == ("credit_risk", 3, "run-1", ("b-1", "b-2"), ("id",))
    assert (m.label, m.positive_rate, m.positive_weight) == ("bad", 0.05, pytest.approx(19.0))
    assert m.rows == {"train": 80, "validation": 10, "eval": 20} and m.shards == (40, 40)
    assert [f.name for f in m.numeric] == ["amount", "term"]
    assert [f.name for f in m.categorical] == ["grade", "region"]
    amount, term, grade, region = m.features
    assert isinstance(amount, Feature) and amount.log and amount.mean == 8.5 and amount.scale == 1.25
    assert term.scale == 1.0 and term.default() == 40 and isinstance(term.mean, float)
    assert amount.default() == pytest.approx(math.expm1(8.5))
    assert grade.categories == ("A", "B", "C") and grade.mean is None and grade.default() == ""
    assert region.default() == -2  # below every code: out of vocabulary
    assert m.params.learning_rate == 1.0 and isinstance(m.params.learning_rate, float)
    assert (m.params.workers, m.params.epochs, m.params.batch_size, m.params.seed) == (2, 3, 8, 7)
    assert m.model.hidden_units == (16, 8) and m.model.log_features == ("amount",)


def test_model_settings_have_defaults():
    data = small_manifest()
    data["model"] = {}
    model = parse_manifest(data).model
    assert (model.kind, model.hidden_units, model.dropout, model.one_hot_max, model.embedding_dim,
            model.log_features, model.class_weight) == ("tabular_dnn", (64, 32), 0.0, 12, 8, (), "none")
    assert parse_manifest(data).positive_weight == 1.0


def _set(path: str, value):
    """A broken manifest: the field at the dotted ``path`` set to ``value`` (deleted when it is ``...``)."""
    def broken() -> dict:
        data = small_manifest()
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = data
        for p in parents:
            node = node[p]
        if value is ...:
            del node[last]
        else:
            node[last] = value
        return data
    return broken


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (_set("line", ...), "line: missing"),
        (_set("spec_version", True), "spec_version: must be an integer, got True"),
        (_set("batches", "b-1"), "batches: must be a list, got str"),
        (_set("label", "bad"), "label: must be a mapping, got str"),
        (_set("label.positive_rate", 1), "label.positive_rate: must be strictly between 0 and 1, got 1"),
        (_set("label.positive_rate", float("nan")), "label.positive_rate: must be strictly between 0 and 1"),
        (_set("label.name", "grade"), "label: the label 'grade' cannot also be a feature"),
        (_set("features", []), "features: must not be empty"),
        (_set("features.1.name", "amount"), "features: duplicate names ['amount']"),
        (_set("features.1.type", "float"),
         "features.1 (term).type: must be one of ['integer', 'double', 'string', 'image'], got 'float'"),
        (_set("features.1.kind", "ordinal"), "features.1 (term).kind: must be one of ['numeric', 'categorical', 'image']"),
        (_set("features.2.kind", "numeric"),
         "features.2 (grade).kind: a numeric feature must be of type integer or double"),
        (_set("features.0.mean", None), "features.0 (amount).mean: a numeric feature needs a finite mean, got None"),
        (_set("features.0.mean", float("inf")), "features.0 (amount).mean: a numeric feature needs a finite mean"),
        (_set("features.1.std", -1), "features.1 (term).std: a numeric feature needs a finite std >= 0, got -1"),
        (_set("features.2.categories", None), "features.2 (grade).categories: a categorical needs categories"),
        (_set("features.2.categories", ["A", "A"]), "features.2 (grade).categories: categories must be unique"),
        (_set("features.2.log", True), "features.2 (grade).log: only numeric features can be log-transformed"),
        (_set("features.3.categories", ["x"]),
         "features.3 (region).categories: an integer categorical's categories must be integers written as strings"),
        (_set("rows.train", -1), "rows.train: must be an integer >= 0, got -1"),
        (_set("shards", []), "shards: must list at least one shard"),
        (_set("shards", [40, 39]), "shards: add up to 79, but rows.train is 80"),
        (_set("shards", [40, 40.0]), "shards: must be row counts (integers >= 0)"),
        (_set("params.workers", 0), "params.workers: must be an integer >= 1, got 0"),
        (_set("params.learning_rate", 0), "params.learning_rate: must be > 0, got 0"),
        (_set("params.seed", "7"), "params.seed: must be an integer, got '7'"),
        (_set("model.kind", "gbm"), "model.kind: unsupported model 'gbm'"),
        (_set("model.hidden_units", [16, 0]), "model.hidden_units: must be a list of positive integers"),
        (_set("model.dropout", 1), "model.dropout: must be in [0, 1)"),
        (_set("model.embedding_dim", 0), "model.embedding_dim: must be an integer >= 1, got 0"),
        (_set("model.class_weight", "auto"), "model.class_weight: must be 'balanced' or 'none', got 'auto'"),
    ],
)
def test_a_bad_manifest_names_the_field(broken, message):
    with pytest.raises(ManifestError) as err:
        parse_manifest(broken())
    assert str(err.value).startswith(f"manifest.json: {message}"), str(err.value)


def test_every_bad_field_is_named_on_one_line():
    data = small_manifest()
    data["features"][0]["mean"] = None
    data["model"]["dropout"] = -0.5
    with pytest.raises(ManifestError) as err:
        parse_manifest(data)
    assert str(err.value) == ("manifest.json: features.0 (amount).mean: a numeric feature needs a finite mean, "
                              "got None; model.dropout: must be in [0, 1)")
    with pytest.raises(ManifestError, match=r"^manifest\.json: \(top level\): must be a JSON object$"):
        parse_manifest([data])


# --------------------------------------------------------------------------- a run folder from real rows


def _write(frame: pd.DataFrame, types: dict[str, str], path: Path) -> None:
    """Plain Parquet as the contract says: int64 / float64 / string, no pandas metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = {"integer": pa.int64(), "double": pa.float64(), "string": pa.string()}
    columns = {name: pa.array(frame[name].tolist(), type=arrow[t]) for name, t in types.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns).replace_schema_metadata(None), path)


def make_run_dir(
    run_dir: Path,
    frame: pd.DataFrame,
    line: str = "credit_risk",
    *,
    workers: int = WORKERS,
    epochs: int = 4,
    batch_size: int = 64,
    learning_rate: float = 0.002,
    patience: int = 100,
    seed: int = 7,
) -> dict:
    """A training run folder (data shards + manifest) from a cleaned-shaped frame,
    split by a hash of the key the way the training stage splits."""
    spec = load_spec(line)
    schema, split = spec.schema, spec.training.split
    model = spec.training.model
    data = frame.copy()
    data[schema.label.name] = (data[schema.label.name].astype(str) == str(schema.label.positive)).astype("int64")
    text = data[schema.key].astype(str).agg("|".join, axis=1)
    bucket = text.map(lambda s: int(hashlib.md5(s.encode()).hexdigest()[:8], 16) % 100)
    cut_eval, cut_val = split.eval_percent, split.eval_percent + split.validation_percent
    parts = {
        "eval": data[bucket < cut_eval],
        "validation": data[(bucket >= cut_eval) & (bucket < cut_val)],
        "train": data[bucket >= cut_val],
    }
    train = parts["train"].iloc[np.random.default_rng(seed).permutation(len(parts["train"]))]
    shards = [train.iloc[i::workers] for i in range(workers)]

    features, types = [], {k: "integer" for k in schema.key}
    for f in schema.features:
        if f.type == "integer" and f.categories is not None:
            continue  # integer categoricals are not features
        entry = {"name": f.name, "type": f.type, "log": f.name in model.log_features,
                 "kind": "categorical" if f.type == "string" else "numeric",
                 "categories": [str(c) for c in f.categories] if f.categories else None,
                 "mean": None, "std": None}
        if entry["kind"] == "numeric":
            x = train[f.name].astype("float64")
            x = np.log1p(x.clip(lower=0)) if entry["log"] else x
            entry["mean"], entry["std"] = float(x.mean()), float(x.std(ddof=0)) or 1.0
        features.append(entry)
        types[f.name] = f.type
    types[schema.label.name] = "integer"

    for i, shard in enumerate(shards):
        _write(shard, types, run_dir / "data" / "train" / f"part-{i:05d}.parquet")
    _write(parts["validation"], types, run_dir / "data" / "validation.parquet")
    _write(parts["eval"], types, run_dir / "data" / "eval.parquet")
    manifest = {
        "line": line,
        "spec_version": spec.version,
        "run_id": run_dir.name,
        "batches": ["test"],
        "key": list(schema.key),
        "label": {"name": schema.label.name, "positive_rate": float(train[schema.label.name].mean())},
        "features": features,
        "rows": {k: len(v) for k, v in parts.items()},
        "shards": [len(s) for s in shards],
        "params": {"workers": workers, "epochs": epochs, "batch_size": batch_size,
                   "learning_rate": learning_rate, "early_stopping_patience": patience, "seed": seed},
        "model": model.model_dump(),
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


# --------------------------------------------------------------------------- running the workers


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW"))}
    env["PATH"] = f"{ML_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["HOROVOD_GLOO_TIMEOUT_SECONDS"] = "60"
    env.update(extra or {})
    return env


def _command(run_dir: Path, np_: int = WORKERS) -> list[str]:
    return [str(HOROVODRUN), "-np", str(np_), "-H", f"localhost:{np_}", "--gloo",
            str(ML_BIN / "python"), "-m", "pipelines.training.worker", "--run-dir", str(run_dir)]


def run_workers(run_dir: Path, np_: int = WORKERS, env: dict[str, str] | None = None,
                timeout: int = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """horovodrun in its own process group (stopped whole on a timeout); stdout+stderr in one."""
    proc = subprocess.Popen(_command(run_dir, np_), cwd=REPO_ROOT, env=_env(env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"horovodrun did not finish in {timeout}s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def _hashes(out: str) -> dict[int, str]:
    return {int(r): h for r, h in re.findall(r"factory-train: rank=(\d+) weights_sha256=([0-9a-f]{64})", out)}


def _ml_python(code: str, *args: str) -> str:
    done = subprocess.run([str(ML_BIN / "python"), "-c", code, *args], cwd=REPO_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


# --------------------------------------------------------------------------- one trained run, checked


@pytest.fixture(scope="module")
def credit_rows() -> pd.DataFrame:
    return lending_club_frame().head(2000)


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory) -> tuple[str, str]:
    """An MLflow run opened by 'the launcher' (a SQLite store), as the worker finds it."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("training-worker-test"))
    return uri, run.info.run_id


@pytest.fixture(scope="module")
def trained(tmp_path_factory, credit_rows, mlflow_run):
    if not HOROVODRUN.exists():
        pytest.skip(f"{HOROVODRUN} not installed")
    run_dir = tmp_path_factory.mktemp("train") / "run-1"
    manifest = make_run_dir(run_dir, credit_rows, epochs=4)
    uri, run_id = mlflow_run
    done = run_workers(run_dir, env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id})
    assert done.returncode == 0, done.stdout[-6000:]
    return run_dir, manifest, done.stdout


@integration
def test_training_runs_and_loss_goes_down(trained):
    run_dir, manifest, out = trained
    result = json.loads((run_dir / "result.json").read_text())
    assert result["workers"] == WORKERS
    # where each rank ran: horovodrun's HOROVOD_HOSTNAME, the -H name (localhost here)
    assert result["hosts"] == [{"rank": r, "host": "localhost"} for r in range(WORKERS)]
    assert "ranks on hosts: 0=localhost, 1=localhost" in out
    assert result["resumed_from_epoch"] == 0
    assert result["epochs_run"] == 4 and not result["stopped_early"]
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    assert 0.5 < result["val_auc"] <= 1 and result["samples_per_s"] > 0
    assert result["val_auc"] == max(h["val_auc"] for h in history)
    assert len(re.findall(r"factory-train: epoch \d+ loss=\S+ val_loss=\S+ val_auc=\S+ samples/s=\S+", out)) == 4


@integration
def test_both_ranks_hold_identical_weights(trained):
    run_dir, _, out = trained
    hashes = _hashes(out)
    assert set(hashes) == {0, 1}
    assert hashes[0] == hashes[1] == json.loads((run_dir / "result.json").read_text())["weights_sha256"]


@integration
def test_only_rank_zero_writes(trained):
    run_dir, _, _ = trained
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints", "data", "manifest.json", "model", "result.json", "tensorboard"]
    assert sorted(p.name for p in (run_dir / "data").iterdir()) == ["eval.parquet", "train", "validation.parquet"]
    # one writer: one TensorBoard event file, one checkpoint series
    assert len(list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))) == 1
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*.index"))
    assert ckpts and all(re.fullmatch(r"ckpt-\d+\.index", c) for c in ckpts)
    model = run_dir / "model" / "Format-Serving"
    assert sorted(p.name for p in (run_dir / "model").iterdir()) == ["Format-Serving"]
    assert (model / "saved_model.pb").exists()
    info = json.loads((model / "assets.extra" / "factory_model.json").read_text())
    assert info["line"] == "credit_risk" and info["run_id"] == "run-1"
    assert {"val_auc", "best_epoch"} <= set(info["metrics"])
    rate = info["label"]["positive_rate"]
    assert info["prior_correction"] == pytest.approx(math.log((1 - rate) / rate))  # balanced weights


@pytest.fixture(scope="module")
def export_report(trained) -> dict:
    """One ML-environment process reads the export: parity with the trained model
    (``check_export``) and what ``serving_default`` looks like from outside."""
    run_dir, _, _ = trained
    code = """
import json, sys
import pyarrow.parquet as pq
import tensorflow as tf
from pipelines.training.manifest import load_manifest
from pipelines.training.model import check_export, serialize_examples
run = sys.argv[1]
diff = check_export(run)
frame = pq.read_table(run + "/data/eval.parquet").to_pandas().head(5)
sig = tf.saved_model.load(run + "/model/Format-Serving").signatures["serving_default"]
out = sig(examples=tf.constant(serialize_examples(frame, load_manifest(run))))
empty = sig(examples=tf.constant([tf.train.Example().SerializeToString()]))
full = pq.read_table(run + "/data/eval.parquet").to_pandas()
manifest = load_manifest(run)
probs = sig(examples=tf.constant(serialize_examples(full, manifest)))["probabilities"].numpy()
print(json.dumps({"max_abs_diff": diff, "inputs": list(sig.structured_input_signature[1]),
                  "mean_probability": float(probs.mean()), "positive_rate": float(full[manifest.label].mean()),
                  "outputs": sorted(out), "shape": out["probabilities"].shape.as_list(),
                  "dtype": out["probabilities"].dtype.name, "empty": float(empty["probabilities"][0, 0])}))
"""
    return json.loads(_ml_python(code, str(run_dir)).strip().splitlines()[-1])


@integration
def test_export_answers_tf_examples_like_the_trained_model(export_report):
    assert export_report["max_abs_diff"] < 1e-5


@integration
def test_serving_signature(export_report):
    assert export_report["inputs"] == ["examples"]
    assert export_report["outputs"] == ["logits", "probabilities"]
    assert export_report["shape"] == [5, 1] and export_report["dtype"] == "float32"
    assert 0 <= export_report["empty"] <= 1  # an empty example reads as the train means / out-of-vocabulary


@integration
def test_served_probabilities_are_calibrated_to_the_label_rate(export_report):
    """Balanced class weights train the network on 50/50 odds; the export's prior
    correction brings its probabilities back to the data's rate (about 5% bad loans),
    where without it they average several times that."""
    rate, mean = export_report["positive_rate"], export_report["mean_probability"]
    assert 0 < rate < 0.2
    assert rate / 2 < mean < rate * 2, (mean, rate)


@integration
def test_epoch_metrics_reach_the_open_mlflow_run(trained, mlflow_run):
    from mlflow import MlflowClient

    uri, run_id = mlflow_run
    client = MlflowClient(tracking_uri=uri)
    for key in ("loss", "val_loss", "val_auc", "samples_per_s"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3, 4], key
    assert client.get_run(run_id).info.status == "RUNNING"  # the launcher ends it, not the worker


# --------------------------------------------------------------------------- resume after a kill


@integration
@needs_horovod
def test_killed_run_resumes_from_its_checkpoint(tmp_path, credit_rows):
    run_dir = tmp_path / "run-resume"
    epochs = 20
    make_run_dir(run_dir, credit_rows.head(1200), epochs=epochs)
    proc = subprocess.Popen(_command(run_dir), cwd=REPO_ROOT, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while not (run_dir / "checkpoints" / "checkpoint").exists():
            assert proc.poll() is None, f"the run ended before its first checkpoint:\n{proc.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert not (run_dir / "result.json").exists()

    done = run_workers(run_dir)
    assert done.returncode == 0, done.stdout[-6000:]
    resumed = re.findall(r"factory-train: resumed from epoch (\d+)", done.stdout)
    assert len(resumed) == 1 and 1 <= int(resumed[0]) < epochs
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from_epoch"] == int(resumed[0])
    assert result["epochs_run"] == epochs
    assert [h["epoch"] for h in result["history"]] == list(range(1, epochs + 1))
    hashes = _hashes(done.stdout)
    assert set(hashes) == {0, 1} and hashes[0] == hashes[1] == result["weights_sha256"]


# --------------------------------------------------------------------------- bad input: one clear line


def _break_missing_dir(run_dir: Path) -> None:
    import shutil

    shutil.rmtree(run_dir)


def _break_manifest(run_dir: Path) -> None:
    m = json.loads((run_dir / "manifest.json").read_text())
    m["features"][0]["mean"] = None
    (run_dir / "manifest.json").write_text(json.dumps(m))


def _break_shard_count(run_dir: Path) -> None:
    """Three shards for two workers."""
    import pyarrow.parquet as pq

    train = run_dir / "data" / "train"
    table = pq.read_table(train / "part-00001.parquet")
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), train / "part-00001.parquet")
    pq.write_table(table.slice(half), train / "part-00002.parquet")
    m = json.loads((run_dir / "manifest.json").read_text())
    m["shards"] = [m["shards"][0], half, table.num_rows - half]
    (run_dir / "manifest.json").write_text(json.dumps(m))


def _break_empty_shard(run_dir: Path) -> None:
    import pyarrow.parquet as pq

    path = run_dir / "data" / "train" / "part-00001.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)


@integration
@needs_horovod
@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (_break_missing_dir, r"run dir .* does not exist"),
        (_break_manifest, r"manifest\.json: features\.0 \(funded_amnt\)\.mean: a numeric feature needs a finite mean"),
        (_break_shard_count, r"3 training shards but 2 workers"),
        (_break_empty_shard, r"shard part-00001\.parquet is empty"),
    ],
    ids=["missing-run-dir", "bad-manifest", "shard-count", "empty-shard"],
)
def test_bad_input_fails_with_one_clear_line(tmp_path, credit_rows, breaker, message):
    run_dir = tmp_path / "run-bad"
    make_run_dir(run_dir, credit_rows.head(600))
    breaker(run_dir)
    done = run_workers(run_dir, timeout=120)
    assert done.returncode != 0
    # each rank that stops says why in one line, the same line on every rank
    errors = re.findall(r"^\[(\d+)\]<stderr>:factory-train: error: (.*)$", done.stdout, re.M)
    assert errors, done.stdout[-4000:]
    assert len({rank for rank, _ in errors}) == len(errors)
    assert len({text for _, text in errors}) == 1
    assert re.search(message, errors[0][1]), errors[0][1]
    # no worker traceback (horovodrun reports the failed process with one of its own)
    assert not re.search(r"^\[\d+\]<std(?:out|err)>:.*Traceback", done.stdout, re.M), done.stdout[-4000:]


def test_row_weights_in_the_shards_weigh_each_rows_loss(tmp_path, credit_rows):
    """A downweighted (machine-labelled) row's ``_weight`` scales its loss: a shard with
    ``_weight`` 1 everywhere trains like one without the column, with 0.5 everywhere its
    training loss is about halved (validation stays unweighted)."""
    losses = {}
    for name, weight in (("none", None), ("one", 1.0), ("half", 0.5)):
        run_dir = tmp_path / name
        make_run_dir(run_dir, credit_rows, workers=1, epochs=1)
        shard = run_dir / "data" / "train" / "part-00000.parquet"
        frame = pd.read_parquet(shard)
        if weight is not None:
            frame["_weight"] = weight
        frame.to_parquet(shard, index=False)
        done = run_workers(run_dir, np_=1)
        assert done.returncode == 0, done.stdout[-4000:]
        (epoch,) = re.findall(r"epoch 1 loss=([0-9.]+) val_loss=([0-9.]+)", done.stdout)
        losses[name] = tuple(float(x) for x in epoch)
    # (a run's first-epoch loss varies by some 10% from run to run: threads sum in any order)
    assert losses["one"][0] == pytest.approx(losses["none"][0], rel=0.2)
    assert losses["half"][0] < 0.7 * min(losses["none"][0], losses["one"][0])
    assert losses["half"][1] > 0.7 * losses["none"][1]  # validation loss is not weighted
