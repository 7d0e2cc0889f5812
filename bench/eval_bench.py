"""Evaluation benchmark: the gate's Evaluator against the floor for the same work.

    .venv/ml/bin/python bench/eval_bench.py [--run-dir DIR] [--rows 4000,50000] [--line employment]

Without ``--run-dir`` it makes one: 20,000 real employment rows (ACS 2015) prepared by the
training stage's ``prepare_run`` (orchestration env) and trained by the Horovod worker
(one rank, 3 epochs), under ``bench/results/eval/``. ``--rows`` resamples the run's
held-out split (with replacement, fixed seed) to each size; the first size is the split
as it is when it equals ``0``.

Side by side, in one run, on the same split and model:

- **gate**: ``python -m pipelines.evaluation.gate`` as the Airflow task runs it (a fresh
  process, a fresh factory home): first run (one model, value thresholds) and a second
  candidate with the first as baseline (two models, change thresholds). Wall time of the
  process, the gate's own phases, and each TFX component's time from ML Metadata.
- **tfma**: TFMA's ``run_model_analysis`` alone (in this process, imports
  warm), the same EvalConfig and TFRecords, one model: the library's cost without TFX.
- **floor**: load the SavedModel, one ``serving_default`` call on all serialized
  examples, then the same metrics per slice with scikit-learn (ROC AUC, PR AUC,
  calibration, accuracy at 0.5, counts, means).

Results: printed, and ``bench/results/eval.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.machine import host

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RESULTS = REPO / "bench" / "results"
AIRFLOW_PY = REPO / ".venv" / "airflow" / "bin" / "python"

BENCH_EVALUATION = {
    "slices": ["SEX", "age_band", ["SEX", "age_band"]],
    "derived_features": {"age_band": {"from": "AGEP", "bins": [16, 25, 35, 45, 55, 65]}},
    "thresholds": {"auc": {"min": 0.75, "max_drop": 0.02}, "binary_accuracy": {"min": 0.65}},
    "slice_thresholds": {"min_examples": 150, "min_per_class": 30, "thresholds": {"auc": {"min": 0.6}}},
    "min_eval_examples": 200,
}

PREPARE = r"""
import sys
from pathlib import Path
from bench.realdata import employment_frame, make_validated_batch
from pipelines.training.prepare import prepare_run
home, run, rows = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
make_validated_batch(home, "employment", "y2015", employment_frame(2015).head(rows))
prepare_run("employment", run, {"workers": 1, "epochs": 3, "batch_size": 256}, home=home)
"""


def machine() -> dict[str, Any]:
    return host()


def include_dir(work: Path) -> Path:
    import yaml

    inc = work / "include"
    if not inc.exists():
        shutil.copytree(REPO / "include", inc)
        path = inc / "lines" / "employment.yaml"
        data = yaml.safe_load(path.read_text())
        data["evaluation"] = BENCH_EVALUATION
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return inc


def make_run(work: Path) -> Path:
    run = work / "run"
    if (run / "model" / "Format-Serving" / "saved_model.pb").exists():
        return run
    home = work / "train-home"
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "FACTORY_INCLUDE": str(include_dir(work))}
    subprocess.run(
        [str(AIRFLOW_PY), "-c", PREPARE, str(REPO), str(home), str(run), "20000"], check=True, env=env
    )
    # trained as the train DAG's task trains it: the launcher's command and environment, one rank
    from pipelines.training.launch import horovod_command, worker_environment

    subprocess.run(
        horovod_command(run, 1),
        check=True,
        env=worker_environment({"FACTORY_INCLUDE": env["FACTORY_INCLUDE"]}),
        stdout=subprocess.DEVNULL,
    )
    return run


def resized_run(src: Path, rows: int, dest: Path) -> Path:
    """A copy of the run (model linked) whose eval split has ``rows`` rows (0: as is)."""
    import numpy as np
    import pyarrow.parquet as pq

    shutil.rmtree(dest, ignore_errors=True)
    (dest / "data").mkdir(parents=True)
    shutil.copy(src / "manifest.json", dest / "manifest.json")
    os.symlink(src / "model", dest / "model")
    table = pq.read_table(src / "data" / "eval.parquet")
    if rows:
        idx = np.random.default_rng(7).integers(0, table.num_rows, rows)
        table = table.take(idx)
    pq.write_table(table, dest / "data" / "eval.parquet")
    return dest


def component_seconds(line: str, home: Path, pipeline_run_id: str) -> dict[str, float]:
    from pipelines.evaluation import pipeline

    store = pipeline.store(line, home)
    [ctx] = [c for c in store.get_contexts_by_type("pipeline_run") if c.name == pipeline_run_id]
    types = {t.id: t.name.rsplit(".", 1)[-1] for t in store.get_execution_types()}
    out = {}
    for e in store.get_executions_by_context(ctx.id):
        out[types[e.type_id]] = round((e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000, 2)
    return out


def run_gate(line: str, run: Path, home: Path, inc: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "FACTORY_HOME": str(home),
        "FACTORY_INCLUDE": str(inc),
        "PYTHONPATH": str(REPO),
        "PYTHONWARNINGS": "ignore",
    }
    for var in ("MLFLOW_TRACKING_URI", "FACTORY_SERVING_STORE", "FACTORY_MLMD_URI", "FACTORY_TFX_ROOT"):
        env.pop(var, None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.evaluation.gate", "--line", line, "--run-dir", str(run)],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads((run / "evaluation" / "result.json").read_text())
    return {
        "wall_s": round(wall, 2),
        "blessing": result["blessing"],
        "baseline": bool(result["baseline"]),
        "auc": result["overall"].get("auc"),
        "phases_s": result["timings"],
        "components_s": component_seconds(line, home, result["tfx"]["pipeline_run_id"]),
        "_result": result,
    }


def tfma_alone(run: Path, examples_dir: Path, eval_config) -> float:
    import tensorflow_model_analysis as tfma
    from apache_beam.options.pipeline_options import PipelineOptions

    out = Path(tempfile.mkdtemp(prefix="tfma-bench-"))
    # one model, as on a first run: the change thresholds go (what TFX's Evaluator does)
    eval_config = tfma.utils.update_eval_config_with_defaults(
        eval_config, has_baseline=False, rubber_stamp=True
    )
    shared = tfma.default_eval_shared_model(
        eval_saved_model_path=str(run / "model" / "Format-Serving"), eval_config=eval_config
    )
    started = time.perf_counter()
    tfma.run_model_analysis(
        eval_shared_model=shared,
        eval_config=eval_config,
        data_location=str(examples_dir / "eval" / "*"),
        file_format="tfrecords",
        output_path=str(out),
        pipeline_options=PipelineOptions(["--direct_running_mode=in_memory", "--direct_num_workers=1"]),
    )
    seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def floor(run: Path, frame, manifest, settings) -> dict[str, float]:
    import numpy as np
    import tensorflow as tf
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

    from pipelines.evaluation.inputs import column_kinds, serialize

    t0 = time.perf_counter()
    sig = tf.saved_model.load(str(run / "model" / "Format-Serving")).signatures["serving_default"]
    t1 = time.perf_counter()
    examples = serialize(frame, column_kinds(frame, manifest))
    t2 = time.perf_counter()
    p = sig(examples=tf.constant(examples))["probabilities"].numpy()[:, 0]
    t3 = time.perf_counter()
    y = frame[manifest.label].to_numpy()
    groups = [np.ones(len(y), bool)]
    for s in settings.slice_features:
        for _, idx in frame.groupby(list(s)).indices.items():
            mask = np.zeros(len(y), bool)
            mask[idx] = True
            groups.append(mask)
    for m in groups:
        yy, pp = y[m], p[m]
        if 0 < yy.sum() < len(yy):
            roc_auc_score(yy, pp)
            average_precision_score(yy, pp)
        accuracy_score(yy, pp >= 0.5)
        _ = (pp.sum() / max(yy.sum(), 1), yy.mean(), pp.mean(), len(yy))
    t4 = time.perf_counter()
    return {
        "load_model_s": t1 - t0,
        "serialize_s": t2 - t1,
        "predict_s": t3 - t2,
        "metrics_s": t4 - t3,
        "total_s": t4 - t0,
        "slices": len(groups),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--line", default="employment")
    ap.add_argument(
        "--rows", default="0,50000", help="eval rows per case, comma separated (0: the split as is)"
    )
    args = ap.parse_args()
    work = RESULTS / "eval"
    work.mkdir(parents=True, exist_ok=True)
    inc = include_dir(work)
    os.environ["FACTORY_INCLUDE"] = str(inc)
    src = (args.run_dir or make_run(work)).resolve()

    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    from pipelines.evaluation import eval_config as ec
    from pipelines.evaluation import inputs
    from pipelines.specs import load_spec
    from pipelines.specs.evaluation import load_settings

    settings = load_settings(load_spec(args.line))
    report: dict[str, Any] = {"machine": machine(), "cases": []}
    import sklearn
    import tensorflow as tf
    import tensorflow_model_analysis as tfma
    import tfx

    report["versions"] = {
        "tensorflow": tf.__version__,
        "tfx": tfx.__version__,
        "tfma": tfma.__version__,
        "scikit-learn": sklearn.__version__,
    }
    for rows in [int(r) for r in args.rows.split(",")]:
        case_dir = work / f"rows-{rows}"
        shutil.rmtree(case_dir, ignore_errors=True)
        run_a = resized_run(src, rows, case_dir / "a")
        run_b = resized_run(src, rows, case_dir / "b")
        home = case_dir / "home"
        first = run_gate(args.line, run_a, home, inc)
        second = run_gate(args.line, run_b, home, inc)
        manifest, frame = inputs.load_eval_frame(run_a, settings)
        n = len(frame)
        counts = inputs.slice_counts(frame, manifest.label, settings)
        config = ec.build_eval_config(settings, manifest.label, counts)
        tfma_s = tfma_alone(run_a, run_a / "evaluation" / "examples", config)
        fl = floor(run_a, frame, manifest, settings)
        first.pop("_result")
        second.pop("_result")
        case = {
            "rows": n,
            "slices": fl["slices"],
            "gate_first": first,
            "gate_with_baseline": second,
            "tfma_alone_s": round(tfma_s, 2),
            "floor": {k: round(v, 3) if isinstance(v, float) else v for k, v in fl.items()},
            "rows_per_s": {
                "gate_first_wall": round(n / first["wall_s"]),
                "evaluator_first": round(n / first["components_s"].get("Evaluator", float("nan"))),
                "evaluator_with_baseline": round(n / second["components_s"].get("Evaluator", float("nan"))),
                "tfma_alone": round(n / tfma_s),
                "floor_predict_and_metrics": round(n / (fl["predict_s"] + fl["metrics_s"])),
                "floor_with_load_and_serialize": round(n / fl["total_s"]),
            },
        }
        report["cases"].append(case)
        print(json.dumps(case, indent=1))
    print(json.dumps(report["machine"], indent=1))
    (RESULTS / "eval.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # skip TensorFlow's noisy teardown of traced functions
