"""Image training benchmark: the fashion CNN's accuracy on the official test set, and Horovod
throughput with 1 and 2 workers, in one run.

    .venv/airflow/bin/python bench/image_training.py [--epochs N] [--skip throughput|quality]

Runs in the orchestration environment and starts the workers in the ML environment
(``.venv/ml``) under ``horovodrun --gloo``, the way the training stage does. Data: the real
Fashion-MNIST files of the ``dataset-fashion-mnist`` package as cleaned batches (``slice-1``..
``slice-6`` of the 60,000 training images, ``test`` = the 10,000 official test images) in a
temporary ``FACTORY_HOME``; run folders are made by the training stage's own ``prepare_run``.

1. **Throughput**: the spec's model on ``slice-1`` + ``slice-2`` (about 18,000 training
   images), ``--tp-epochs`` epochs, trained by 1 and by 2 Horovod workers. images/s is the
   worker's ``samples_per_s`` (all workers together, the first epoch of a process left out:
   it includes tracing); scaling efficiency = images/s(2) / (2 x images/s(1)).
2. **Quality**: the spec's settings (``include/lines/fashion.yaml``: workers, epochs, batch
   size, learning rate, early stopping, model) on all six slices (the validation split is
   ``validation_percent`` of them by key hash, the rest trains), the exported SavedModel's
   ``serving_default`` scored on the 10,000 official test images (``data/eval.parquet``):
   accuracy and per-class accuracy; epochs run, best epoch and wall time of the launcher.

Prints the machine (bench/machine.py) and the figures; writes
``bench/results/image_training.json`` after each part.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.machine import describe, host  # noqa: E402

RESULTS = REPO / "bench" / "results"
ML_BIN = REPO / ".venv" / "ml" / "bin"
LINE = "fashion"
SLICES = 6
TRAIN_IMAGES, TEST_IMAGES = 60000, 10000
T0 = time.perf_counter()


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - T0:7.1f}s load={os.getloadavg()[0]:.2f}] {msg}\n")
    sys.stderr.flush()


def write_batches(home: Path) -> None:
    from image_batches import clean_rows, write_clean_batch

    per = TRAIN_IMAGES // SLICES
    for i in range(SLICES):
        write_clean_batch(home, LINE, f"slice-{i + 1}", clean_rows("train", i * per, (i + 1) * per))
    write_clean_batch(home, LINE, "test", clean_rows("t10k", 0, TEST_IMAGES))


def ml_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW"))}
    env["PATH"] = f"{ML_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = str(REPO)
    return env


def horovod(run: Path, workers: int, log_path: Path) -> dict[str, Any]:
    """Train a prepared run folder; the launcher's wall time and the worker's result.json."""
    cmd = [str(ML_BIN / "horovodrun"), "-np", str(workers), "-H", f"localhost:{workers}", "--gloo",
           str(ML_BIN / "python"), "-m", "pipelines.training.worker", "--run-dir", str(run)]
    started = time.perf_counter()
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ml_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        for line in proc.stdout:
            out.write(line)
            out.flush()
            if "factory-train:" in line:
                log(line.strip())
        proc.wait()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"horovodrun exited {proc.returncode}; see {log_path}")
    result = json.loads((run / "result.json").read_text())
    return {"workers": workers, "wall_s": round(wall, 1), "result": result}


SCORE = r"""
import json, sys
import numpy as np, pyarrow.parquet as pq, tensorflow as tf
frame = pq.read_table(sys.argv[2]).to_pandas()
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
def example(png):
    f = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))}
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()
ids = []
for i in range(0, len(frame), 1000):
    chunk = [example(bytes(b)) for b in frame["image"].iloc[i:i + 1000]]
    ids.append(serve(examples=tf.constant(chunk))["class_ids"].numpy())
pred, y = np.concatenate(ids), frame["label"].to_numpy()
per_class = [float((pred[y == c] == c).mean()) for c in range(int(y.max()) + 1)]
print(json.dumps({"examples": len(y), "accuracy": float((pred == y).mean()), "per_class_accuracy": per_class}))
"""


def score(run: Path) -> dict[str, Any]:
    done = subprocess.run([str(ML_BIN / "python"), "-c", SCORE, str(run / "model" / "Format-Serving"),
                           str(run / "data" / "eval.parquet")], cwd=REPO, env=ml_env(), capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def save(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="override the spec's epochs (quality run)")
    ap.add_argument("--tp-epochs", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: throughput,quality")
    ap.add_argument("--work", type=Path, default=None, help="keep the factory home and runs here")
    ap.add_argument("--out", type=Path, default=RESULTS / "image_training.json")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    work = args.work or Path(tempfile.mkdtemp(prefix="image-bench-"))
    home = work / "home"
    os.environ["FACTORY_HOME"] = str(home)
    from pipelines.specs import load_spec
    from pipelines.training.prepare import prepare_run

    machine = host()
    print(describe(machine), flush=True)
    spec = load_spec(LINE)
    # the command without where it kept its files (paths of this machine)
    argv = [a for i, a in enumerate(sys.argv[1:]) if a not in ("--work", "--out") and sys.argv[i] not in ("--work", "--out")]
    report: dict[str, Any] = {"machine": machine, "command": " ".join(["bench/image_training.py", *argv]),
                              "spec_training": spec.training.model_dump()}
    log("writing the cleaned batches (PNG-encoding 70,000 images)")
    write_batches(home)

    if "throughput" not in skip:
        rows = []
        for workers in (1, 2):
            run = work / f"throughput-{workers}"
            m = prepare_run(LINE, run, {"workers": workers, "epochs": args.tp_epochs,
                                        "batches": ["slice-1", "slice-2", "test"]}, home=home)
            log(f"throughput: {workers} worker(s), {m['rows']['train']} training images, {args.tp_epochs} epochs")
            r = horovod(run, workers, work / f"throughput-{workers}.log")
            rows.append({"workers": workers, "train_images": m["rows"]["train"], "epochs": args.tp_epochs,
                         "images_per_s": round(r["result"]["samples_per_s"], 1), "wall_s": r["wall_s"],
                         "per_epoch": [{k: h[k] for k in ("epoch", "samples_per_s", "seconds")}
                                       for h in r["result"]["history"]]})
        one, two = rows[0]["images_per_s"], rows[1]["images_per_s"]
        report["throughput"] = {"runs": rows, "speedup": round(two / one, 2),
                                "scaling_efficiency": round(two / (2 * one), 2)}
        print(f"\nHorovod throughput (images/s, all workers, epoch 1 left out): "
              f"1 worker {one:.0f} | 2 workers {two:.0f} | speedup {two / one:.2f} "
              f"(efficiency {two / (2 * one):.0%})", flush=True)
        save(args.out, report)

    if "quality" not in skip:
        run = work / "quality"
        overrides = {"epochs": args.epochs} if args.epochs else {}
        m = prepare_run(LINE, run, overrides, home=home)
        log(f"quality: {m['rows']} with {m['params']}")
        r = horovod(run, m["params"]["workers"], work / "quality.log")
        scored = score(run)
        res = r["result"]
        report["quality"] = {
            "rows": m["rows"], "params": m["params"], "model": m["model"],
            "epochs_run": res["epochs_run"], "best_epoch": res["best_epoch"], "stopped_early": res["stopped_early"],
            "val_accuracy": res["val_accuracy"], "test": scored, "wall_s": r["wall_s"],
            "images_per_s": res["samples_per_s"],
            "per_epoch": [{k: round(h[k], 4) for k in ("epoch", "loss", "val_loss", "val_accuracy", "seconds")}
                          for h in res["history"]],
        }
        print(f"\nquality: test accuracy {scored['accuracy']:.4f} on {scored['examples']} official test images; "
              f"{res['epochs_run']} epochs (best {res['best_epoch']}), wall {r['wall_s']:.0f} s", flush=True)
        for h in report["quality"]["per_epoch"]:
            print(f"  epoch {h['epoch']:2d} loss {h['loss']:.4f} val_loss {h['val_loss']:.4f} "
                  f"val_accuracy {h['val_accuracy']:.4f} {h['seconds']:.0f} s", flush=True)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    save(args.out, report)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
