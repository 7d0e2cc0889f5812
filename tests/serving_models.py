"""Real models in a serving store, for the tests of what serves them.

``train_and_publish(home)`` trains a small employment model as the training stage does
(prepared data from a validated batch of real ACS rows, the Horovod worker on one rank)
and publishes it into ``home``'s serving store; ``publish_again`` publishes that same
SavedModel under another ``model_uri``, which makes a new version (the store dedupes
pushes by ``model_uri``). ``publish_image_model`` does the same for a small fashion CNN
(:mod:`image_models`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipelines import tracking
from pipelines.catalog import layout
from pipelines.config import REPO_ROOT, ml_python
from pipelines.evaluation import serving

LINE = "employment"
IMAGE_LINE = "fashion"


def _publish(home: Path, line: str, run: Path, tag: str) -> int:
    info = {"model_uri": f"runs:/{run.name}/{tag}", "run_dir": str(run), "training_run": run.name}
    version, _ = serving.publish(layout.exported_model(run), layout.serving_base(line, home), info)
    return version


def train_and_publish(home: Path, *, rows: int = 4000, epochs: int = 3, name: str = "serving") -> tuple[int, Path]:
    """Train one employment model on ``rows`` real rows for ``epochs`` epochs (one
    Horovod rank); publish it; return (its version, the run folder)."""
    from bench.realdata import employment_frame, make_validated_batch
    from pipelines.training.prepare import prepare_run

    make_validated_batch(home, LINE, "y2015", employment_frame(2015).head(rows))
    run = layout.run_dir(LINE, name, home)
    prepare_run(LINE, run, {"workers": 1, "epochs": epochs, "batch_size": 128}, home=home)
    train_on_one_rank(home, run, name)
    return _publish(home, LINE, run, "model"), run


def train_on_one_rank(home: Path, run: Path, name: str, *, log_model: bool = False, line: str = LINE) -> None:
    """Train a prepared run folder as the training stage does: an MLflow run, the Horovod
    worker on one rank (Gloo), the run finished (with the model as its ``model`` artifact
    when ``log_model``)."""
    from pipelines.training.launch import worker_environment

    mlflow_run = tracking.start_run(line, name, {"factory.run_dir": str(run)}, {}, home=home)
    layout.mlflow_run_file(run).write_text(mlflow_run)
    horovodrun = ml_python().parent / "horovodrun"
    cmd = [str(horovodrun), "-np", "1", "-H", "localhost:1", "--gloo",
           str(ml_python()), "-m", "pipelines.training.worker", "--run-dir", str(run)]
    env = worker_environment({**tracking.worker_env(mlflow_run, home), "FACTORY_HOME": str(home)})
    done = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    artifacts = [("model", layout.exported_model(run))] if log_model else None
    tracking.finish_run(mlflow_run, status="FINISHED", artifacts=artifacts, home=home)


def publish_again(home: Path, run_dir: Path, tag: str, line: str = LINE) -> int:
    """Publish ``run_dir``'s SavedModel again as a new version (another ``model_uri``)."""
    return _publish(home, line, Path(run_dir), tag)


def publish_image_model(home: Path, *, steps: int = 50) -> tuple[int, Path]:
    """A small real fashion CNN (:mod:`image_models`), published under line ``fashion``."""
    from pipelines.training.launch import worker_environment

    run = layout.run_dir(IMAGE_LINE, "serving", home)
    helper = str(Path(__file__).with_name("image_models.py"))
    done = subprocess.run([str(ml_python()), helper, str(run), "--train", "1000", "--eval", "10",
                           "--steps", str(steps)], env=worker_environment({"FACTORY_HOME": str(home)}),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return _publish(home, IMAGE_LINE, run, "model"), run
