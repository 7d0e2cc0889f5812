"""Evaluation benchmark: the gate (FastEvaluator, the default), the gate on TFX's stock
Evaluator (TFMA on Beam) and the floor for the same work, side by side.

    .venv/ml/bin/python bench/eval_bench.py [--run-dir DIR] [--rows 4000,0,200000] [--tfma-rows 0] [--line employment]

Without ``--run-dir`` it makes one: every real employment row (ACS 2015-2018, 277,677
people) prepared by the training stage's ``prepare_run`` (orchestration env), so the
held-out split is the line's real one (55,295 rows), and trained by the Horovod worker
(one rank, 2 epochs), under ``bench/results/eval/``. ``--rows`` resamples the run's
held-out split (with replacement, fixed seed) to each size; ``0`` is the split as it is.

Side by side, in one run, on the same split and model, per size:

- **gate** (``FACTORY_EVALUATOR=fast``, the default) and **gate_tfma**
  (``FACTORY_EVALUATOR=tfma``): ``python -m pipelines.evaluation.gate`` as the Airflow
  task runs it (a fresh process, a fresh factory home): a first run (one model, value
  thresholds) and a second candidate with the first as baseline (two models, change
  thresholds). Wall time of the process, the gate's own phases, each TFX component's
  time from ML Metadata, and whether both gates agree (blessing, metric values).
  ``--tfma-rows`` says at which sizes (default: the real split only; minutes each).
- **floor**: load the SavedModel, one ``serving_default`` call on all serialized
  examples, then the same metrics per slice with scikit-learn (ROC AUC, PR AUC,
  calibration, accuracy at 0.5, counts, means).

Per-row growth: the least-squares slope of the with-baseline gate's wall time over the
sizes (``growth``). Results: printed, and ``bench/results/eval.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the clone's root first
from bench.machine import host, write_results  # noqa: E402

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
frame = employment_frame()
make_validated_batch(home, "employment", "all", frame.head(rows) if rows else frame)
prepare_run("employment", run, {"workers": 1, "epochs": 2, "batch_size": 512}, home=home)
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
        [str(AIRFLOW_PY), "-c", PREPARE, str(REPO), str(home), str(run), "0"], check=True, env=env
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


def run_gate(line: str, run: Path, home: Path, inc: Path, evaluator: str = "fast") -> dict[str, Any]:
    env = {
        **os.environ,
        "FACTORY_EVALUATOR": evaluator,
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


def agreement(fast: dict[str, Any], tfma: dict[str, Any]) -> dict[str, Any]:
    """Whether two gate results agree: blessing, failures and every metric value."""
    import math

    worst = 0.0
    keys = 0
    for where, roles in tfma["metrics"].items():
        for role, values in roles.items():
            for name, expected in (values or {}).items():
                got = ((fast["metrics"].get(where) or {}).get(role) or {}).get(name, float("nan"))
                keys += 1
                if expected is None and got is None:
                    continue
                if expected is None or got is None or math.isnan(got):
                    worst = float("inf")
                    continue
                worst = max(worst, abs(got - expected))
    return {
        "same_blessing": fast["blessing"] == tfma["blessing"],
        "same_failures": [f["message"] for f in fast["failures"]] == [f["message"] for f in tfma["failures"]],
        "metric_values": keys,
        "max_abs_difference": worst,
    }


def evaluator_seconds(gate: dict[str, Any]) -> float:
    return next((v for k, v in gate["components_s"].items() if k.endswith("Evaluator")), float("nan"))


def gate_pair(line: str, rows: int, src: Path, case_dir: Path, inc: Path, evaluator: str):
    """A first run and a second candidate with the first as baseline, in a fresh home."""
    run_a = resized_run(src, rows, case_dir / evaluator / "a")
    run_b = resized_run(src, rows, case_dir / evaluator / "b")
    home = case_dir / evaluator / "home"
    return run_a, run_gate(line, run_a, home, inc, evaluator), run_gate(line, run_b, home, inc, evaluator)


def slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


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
        "--rows", default="4000,0,200000", help="eval rows per case, comma separated (0: the split as is)"
    )
    ap.add_argument("--tfma-rows", default="0",
                    help="the sizes (of --rows) at which the gate on TFX's stock Evaluator runs too; '' for none")
    args = ap.parse_args()
    work = RESULTS / "eval"
    work.mkdir(parents=True, exist_ok=True)
    inc = include_dir(work)
    os.environ["FACTORY_INCLUDE"] = str(inc)
    src = (args.run_dir or make_run(work)).resolve()

    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    from pipelines.evaluation import inputs
    from pipelines.specs import load_spec
    from pipelines.specs.evaluation import load_settings

    settings = load_settings(load_spec(args.line))
    # the run folder is this machine's: the result names it RUN_DIR
    argv = ["RUN_DIR" if args.run_dir and a == str(args.run_dir) else a for a in sys.argv[1:]]
    command = ".venv/ml/bin/python bench/eval_bench.py " + " ".join(argv)
    started = time.perf_counter()
    report: dict[str, Any] = {"cases": []}
    host = machine()
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
        run_a, first, second = gate_pair(args.line, rows, src, case_dir, inc, "fast")
        manifest, frame = inputs.load_eval_frame(run_a, settings)
        n = len(frame)
        fl = floor(run_a, frame, manifest, settings)
        case: dict[str, Any] = {
            "rows": n,
            "slices": fl["slices"],
            "gate_first": first,
            "gate_with_baseline": second,
            "floor": {k: round(v, 3) if isinstance(v, float) else v for k, v in fl.items()},
        }
        if str(rows) in args.tfma_rows.split(","):
            _, t_first, t_second = gate_pair(args.line, rows, src, case_dir, inc, "tfma")
            case["agreement"] = {"first": agreement(first["_result"], t_first["_result"]),
                                 "with_baseline": agreement(second["_result"], t_second["_result"])}
            t_first.pop("_result")
            t_second.pop("_result")
            case["gate_tfma_first"] = t_first
            case["gate_tfma_with_baseline"] = t_second
        first.pop("_result")
        second.pop("_result")
        case["rows_per_s"] = {
            "gate_with_baseline_wall": round(n / second["wall_s"]),
            "fast_evaluator_with_baseline": round(n / evaluator_seconds(second)),
            "floor_predict_and_metrics": round(n / (fl["predict_s"] + fl["metrics_s"])),
            "floor_with_load_and_serialize": round(n / fl["total_s"]),
        }
        if "gate_tfma_with_baseline" in case:
            case["rows_per_s"]["tfma_evaluator_with_baseline"] = round(
                n / evaluator_seconds(case["gate_tfma_with_baseline"]))
        report["cases"].append(case)
        print(json.dumps(case, indent=1))
        shutil.rmtree(case_dir, ignore_errors=True)
    sizes = [c["rows"] for c in report["cases"]]
    if len(sizes) > 1:
        report["growth"] = {
            "gate_with_baseline_s_per_100k_rows": round(
                1e5 * slope(sizes, [c["gate_with_baseline"]["wall_s"] for c in report["cases"]]), 2),
            "fast_evaluator_with_baseline_s_per_100k_rows": round(
                1e5 * slope(sizes, [evaluator_seconds(c["gate_with_baseline"]) for c in report["cases"]]), 2),
        }
        print(json.dumps(report["growth"], indent=1))
    host["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(host, indent=1))
    write_results("eval", command, host, round(time.perf_counter() - started, 1), report)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # skip TensorFlow's noisy teardown of traced functions
