"""Training benchmark: distributed throughput and model quality, in one run.

    .venv/airflow/bin/python bench/training_bench.py [--employment-rows 0] [--trials 4] [--keep DIR]

Runs in the orchestration environment and starts everything TensorFlow in the ML environment
(``.venv/ml``) as subprocesses, the way the training stage does. Data: the real lines from
``bench/realdata.py``, written as validated batches (one per employment survey year, one per
credit slice) into a temporary ``FACTORY_HOME``; run folders are made by the training stage's
own ``prepare_run``.

1. **Throughput** (employment; ``--tp-rows`` training rows, default 60,000, drawn from the train
   split; ``--tp-epochs`` 3, batch 512; validation 6,000 rows): the same model and data trained by

   - the factory's Horovod worker under ``horovodrun --gloo`` with 1 and with 2 workers;
   - ``tf.distribute.MultiWorkerMirroredStrategy`` (RING collectives, TF_CONFIG per process,
     ``bench/mwms_worker.py``) with 1 and with 2 worker processes on localhost.

   samples/s excludes the first epoch (compile), as the worker's ``result.json`` does; wall is
   the launcher's wall time (process start, TF import, compile, training, for Horovod also
   validation each epoch, the SavedModel export and result.json). Scaling efficiency =
   samples/s(2) / (2 x samples/s(1)).

2. **Quality** (credit_risk all 9,857 rows; employment all 277,677 rows unless
   ``--employment-rows`` samples): the factory model trained with the spec's settings
   (``prepare_run`` defaults from ``include/lines/*.yaml``, 2 Horovod workers), its exported
   SavedModel scored on ``data/eval.parquet`` by ``pipelines.training.batch_predict``, against a
   logistic regression (standardised numerics + one-hot categoricals; class_weight balanced
   for credit_risk) and LightGBM (categoricals as ``category``; early stopping on the run's
   validation split) fitted on the same ``data/train/part-*.parquet`` and scored on the same
   eval rows. ROC AUC; the factory-minus-LR difference with a DeLong 95% interval (paired, same
   rows).

3. **Tuning**: on a line where the factory model's eval AUC is below the logistic
   regression's, up to ``--trials`` model settings are tried by editing a copy of the run's
   manifest (data shared); the best by *validation* AUC is reported (eval AUC shown for all),
   with the YAML change that gives it.

Prints the machine (CPU, cores, RAM, OS, Python, TF/Horovod/LightGBM versions, load average
before and after) and the tables; writes ``bench/results/training.json``.

``--line fashion`` measures only the scaling of a compute-bound model, the image line's CNN
(``--fs-images`` Fashion-MNIST training images, ``--fs-epochs``, ``--fs-rounds``): the factory's
worker under horovodrun and ``bench/mwms_worker.py`` at 1 and 2 workers, each worker held to one
core's worth of threads (``FACTORY_TRAIN_THREADS=1``, bound to core <local rank>), one
unpinned 1-worker run with 2 threads beside, and ``--fs-variants`` (Horovod's settings) at 2
workers; per-worker batch fixed at the spec's; images/s without the first epoch, median of the
rounds; efficiency = images/s(2) / (2 x images/s(1)). Writes ``bench/results/training_scaling.json``
(see docs/benchmarks-training.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the clone's root first
from bench.machine import describe, host  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

RESULTS = REPO / "bench" / "results"
ML_BIN = REPO / ".venv" / "ml" / "bin"
MWMS_WORKER = REPO / "bench" / "mwms_worker.py"
RUN_TIMEOUT_S = 900

T0 = time.perf_counter()


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.perf_counter() - T0:6.1f}s load={os.getloadavg()[0]:.2f}] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    ml_versions = subprocess.run(
        [
            str(ML_BIN / "python"),
            "-c",
            "import json, platform; from importlib.metadata import version as v; "
            "print(json.dumps({'python': platform.python_version(), 'tensorflow': v('tensorflow'), "
            "'tf_keras': v('tf_keras'), 'horovod': v('horovod'), 'pandas': v('pandas'), 'numpy': v('numpy')}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        **host(),
        "orchestration_env": {
            "python": platform.python_version(),
            "pandas": version("pandas"),
            "scikit-learn": version("scikit-learn"),
            "lightgbm": version("lightgbm"),
            "pyarrow": version("pyarrow"),
        },
        "ml_env": json.loads(ml_versions),
    }


# --------------------------------------------------------------------------- data and run folders


def write_batches(home: Path) -> dict[str, list[str]]:
    """All real rows as validated batches: one per employment year, one per credit slice."""
    from bench.realdata import (
        CREDIT_RISK_SLICES,
        EMPLOYMENT_YEARS,
        employment_frame,
        lending_club_frame,
        make_validated_batch,
    )

    out: dict[str, list[str]] = {"employment": [], "credit_risk": []}
    for year in EMPLOYMENT_YEARS:
        make_validated_batch(home, "employment", f"y{year}", employment_frame(year))
        out["employment"].append(f"y{year}")
    for i in range(1, CREDIT_RISK_SLICES + 1):
        make_validated_batch(home, "credit_risk", f"slice{i}", lending_club_frame(i))
        out["credit_risk"].append(f"slice{i}")
    return out


def write_sampled_employment(home: Path, rows: int, seed: int = 7) -> None:
    """A sample of ``rows`` employment rows (same share from each year), one batch per year."""
    from bench.realdata import EMPLOYMENT_YEARS, employment_frame, make_validated_batch

    full = employment_frame()
    sample = full.sample(n=rows, random_state=seed) if rows < len(full) else full
    for year in EMPLOYMENT_YEARS:
        make_validated_batch(
            home,
            "employment",
            f"y{year}",
            sample[sample["year"] == year].sort_values("person_id").reset_index(drop=True),
        )


def write_throughput_batches(
    home: Path, train_rows: int, val_rows: int, eval_rows: int, seed: int = 11
) -> None:
    """Employment rows picked by the stage's own split hash so that ``prepare_run`` yields
    exactly ``train_rows`` training rows; one batch per year."""
    import numpy as np

    from bench.realdata import EMPLOYMENT_YEARS, employment_frame, make_validated_batch
    from pipelines.specs import load_spec
    from pipelines.training.prepare import split_bucket

    spec = load_spec("employment")
    full = employment_frame()
    bucket = split_bucket(full[spec.schema.key]).to_numpy()
    cut_eval = spec.training.split.eval_percent
    cut_val = cut_eval + spec.training.split.validation_percent
    rng = np.random.default_rng(seed)
    pick = []
    for mask, n in (
        (bucket >= cut_val, train_rows),
        ((bucket >= cut_eval) & (bucket < cut_val), val_rows),
        (bucket < cut_eval, eval_rows),
    ):
        idx = np.flatnonzero(mask)
        pick.append(rng.choice(idx, size=n, replace=False))
    sub = full.iloc[np.sort(np.concatenate(pick))]
    for year in EMPLOYMENT_YEARS:
        make_validated_batch(home, "employment", f"y{year}", sub[sub["year"] == year].reset_index(drop=True))


# --------------------------------------------------------------------------- ML-env subprocesses


def ml_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "TF_CONFIG", "PYTHONPATH")
    }
    env.update(
        TF_USE_LEGACY_KERAS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(REPO),
        PATH=f"{ML_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra)
    return env


def _reset_run(run: Path) -> None:
    """A fresh start: no checkpoint to resume from, no earlier result."""
    for name in ("checkpoints", "model", "tensorboard"):
        shutil.rmtree(run / name, ignore_errors=True)
    (run / "result.json").unlink(missing_ok=True)


def _threads_env(threads: int | None) -> dict[str, str]:
    return {"FACTORY_TRAIN_THREADS": str(threads)} if threads else {}


def horovod(run: Path, workers: int, threads: int | None = None, pin: bool = False,
            extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The factory's worker under horovodrun (Gloo), as the training stage starts it.

    ``threads``: ``FACTORY_TRAIN_THREADS`` (each worker's intra- and inter-op pools);
    ``pin``: each rank bound to core ``HOROVOD_LOCAL_RANK`` (``taskset``), so that its
    ``tf.data`` pool, sized by the cores it may use, is one core's worth too;
    ``extra_env``: Horovod's own settings (``HOROVOD_FUSION_THRESHOLD``, ...)."""
    _reset_run(run)
    worker = [str(ML_BIN / "python"), "-m", "pipelines.training.worker", "--run-dir", str(run)]
    if pin:
        worker = ["sh", "-c", 'exec taskset -c "$HOROVOD_LOCAL_RANK" "$@"', "pinned", *worker]
    cmd = [str(ML_BIN / "horovodrun"), "-np", str(workers), "-H", f"localhost:{workers}", "--gloo", *worker]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=ml_env(**_threads_env(threads), **(extra_env or {})), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"horovodrun -np {workers} on {run} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    result = json.loads((run / "result.json").read_text())
    return {
        "launcher": "horovod",
        "workers": workers,
        "wall_s": round(wall, 2),
        "samples_per_s": result["samples_per_s"],
        "val_auc": result.get("val_auc"),
        "val_accuracy": result.get("val_accuracy"),
        "epochs_run": result["epochs_run"],
        "best_epoch": result["best_epoch"],
        "epoch_samples_per_s": [round(h["samples_per_s"]) for h in result["history"]],
        "loadavg_1m_before": round(load, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("localhost", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def mwms(run: Path, workers: int, out_dir: Path, threads: int | None = None, pin: bool = False) -> dict[str, Any]:
    """bench/mwms_worker.py, one process per worker, TF_CONFIG for each (``threads`` and ``pin``
    as for :func:`horovod`: worker ``i`` bound to core ``i``)."""
    cluster = [f"localhost:{p}" for p in _free_ports(workers)]
    out = out_dir / f"mwms-{workers}.json"
    out.unlink(missing_ok=True)
    procs = []
    load = os.getloadavg()[0]
    started = time.perf_counter()
    for i in range(workers):
        tf_config = json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": i}})
        cmd = [str(ML_BIN / "python"), str(MWMS_WORKER), "--run-dir", str(run), "--out", str(out)]
        procs.append(
            subprocess.Popen(
                ["taskset", "-c", str(i), *cmd] if pin else cmd,
                env=ml_env(TF_CONFIG=tf_config, **_threads_env(threads)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=RUN_TIMEOUT_S))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    wall = time.perf_counter() - started
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if failed or not out.exists():
        tails = "\n".join(f"--- worker {i}\n{o[0][-1500:]}\n{o[1][-3000:]}" for i, o in enumerate(outputs))
        raise RuntimeError(f"MWMS with {workers} workers failed {failed}:\n{tails}")
    result = json.loads(out.read_text())
    return {
        "launcher": "mwms",
        "workers": workers,
        "wall_s": round(wall, 2),
        "samples_per_s": result["samples_per_s"],
        "val_auc": result.get("val_auc_last_epoch"),
        "val_accuracy": result.get("val_accuracy_last_epoch"),
        "epochs_run": len(result["history"]),
        "epoch_samples_per_s": [round(h["samples_per_s"]) for h in result["history"]],
        "loadavg_1m_before": round(load, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


SCORE = r"""
import json, sys
from pathlib import Path
from pipelines.training.batch_predict import score_files
import pyarrow as pa, pyarrow.parquet as pq
for model, data, out in json.loads(sys.argv[1]):
    scores = score_files(Path(model), [Path(data)])
    pq.write_table(pa.table({"score": pa.array(scores, type=pa.float64())}), out)
"""


def score_models(jobs: list[tuple[Path, Path, Path]]) -> None:
    """Each exported model scores its eval split through ``pipelines.training.batch_predict`` (one
    process for all, so TensorFlow is imported once)."""
    spec = json.dumps([[str(m), str(d), str(o)] for m, d, o in jobs])
    done = subprocess.run(
        [str(ML_BIN / "python"), "-c", SCORE, spec],
        env=ml_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scoring failed:\n{done.stderr[-3000:]}")


# --------------------------------------------------------------------------- baselines and AUC


def read_split(run: Path) -> dict[str, Any]:
    import pandas as pd

    train = pd.concat(
        [pd.read_parquet(p) for p in sorted((run / "data" / "train").glob("part-*.parquet"))],
        ignore_index=True,
    )
    return {
        "train": train,
        "validation": pd.read_parquet(run / "data" / "validation.parquet"),
        "eval": pd.read_parquet(run / "data" / "eval.parquet"),
    }


LGBM_COMMON = {"subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8}
LGBM_GRID = {
    "large": {"learning_rate": 0.1, "num_leaves": 63, "min_child_samples": 50},
    "small": {"learning_rate": 0.02, "num_leaves": 7, "min_child_samples": 50, "reg_lambda": 5.0},
    "small_cat": {
        "learning_rate": 0.02,
        "num_leaves": 15,
        "min_child_samples": 100,
        "reg_lambda": 5.0,
        "cat_l2": 10.0,
        "cat_smooth": 50.0,
    },
}
LGBM_CV_MAX_ROWS = 50_000


def baselines(run: Path, split: dict[str, Any]) -> dict[str, Any]:
    import lightgbm as lgb
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    manifest = json.loads((run / "manifest.json").read_text())
    label = manifest["label"]["name"]
    numeric = [f["name"] for f in manifest["features"] if f["kind"] == "numeric"]
    categorical = {f["name"]: f["categories"] for f in manifest["features"] if f["kind"] == "categorical"}
    balanced = manifest["model"].get("class_weight") == "balanced"
    train, val, ev = split["train"], split["validation"], split["eval"]
    out: dict[str, Any] = {}

    def as_str(frame):
        x = frame[numeric + list(categorical)].copy()
        for c in categorical:
            x[c] = x[c].astype(str).astype(object)
        return x

    started = time.perf_counter()
    lr = make_pipeline(
        ColumnTransformer(
            [
                ("num", StandardScaler(), numeric),
                (
                    "cat",
                    OneHotEncoder(
                        categories=[list(v) for v in categorical.values()], handle_unknown="ignore"
                    ),
                    list(categorical),
                ),
            ]
        ),
        LogisticRegression(max_iter=3000, class_weight="balanced" if balanced else None),
    )
    lr.fit(as_str(train), train[label])
    p = lr.predict_proba(as_str(ev))[:, 1]
    out["logreg"] = {
        "auc": float(roc_auc_score(ev[label], p)),
        "fit_s": round(time.perf_counter() - started, 2),
        "class_weight": "balanced" if balanced else "none",
        "_scores": p,
    }

    def as_cat(frame):
        x = frame[numeric + list(categorical)].copy()
        for c, cats in categorical.items():
            x[c] = pd.Categorical(x[c].astype(str), categories=cats)
        return x

    # LightGBM: the settings picked by 5-fold CV on the train split among LGBM_GRID where that is
    # cheap (small data, where defaults overfit), else LGBM_GRID["large"]; trees by early
    # stopping on the run's validation split (what the factory model stops on).
    started = time.perf_counter()
    xtr = as_cat(train)
    if len(train) <= LGBM_CV_MAX_ROWS:
        cv_auc = {}
        for name, cfg in LGBM_GRID.items():
            params = {
                "objective": "binary",
                "metric": "auc",
                "verbose": -1,
                "num_threads": 2,
                "seed": 7,
                **LGBM_COMMON,
                **cfg,
            }
            cv = lgb.cv(
                params,
                lgb.Dataset(xtr, train[label]),
                num_boost_round=2000,
                nfold=5,
                stratified=True,
                seed=7,
                callbacks=[lgb.early_stopping(100, verbose=False)],
            )
            cv_auc[name] = float(cv[next(k for k in cv if k.endswith("auc-mean"))][-1])
        chosen = max(cv_auc, key=cv_auc.get)
    else:
        cv_auc, chosen = None, "large"
    gbm = lgb.LGBMClassifier(
        n_estimators=3000, n_jobs=2, verbose=-1, random_state=7, **LGBM_COMMON, **LGBM_GRID[chosen]
    )
    gbm.fit(
        xtr,
        train[label],
        eval_set=[(as_cat(val), val[label])],
        eval_metric="auc",
        callbacks=[lgb.early_stopping(100, verbose=False)],
    )
    p = gbm.predict_proba(as_cat(ev))[:, 1]
    out["lightgbm"] = {
        "auc": float(roc_auc_score(ev[label], p)),
        "fit_s": round(time.perf_counter() - started, 2),
        "trees": int(gbm.best_iteration_ or gbm.n_estimators),
        "settings": chosen,
        "params": {**LGBM_COMMON, **LGBM_GRID[chosen]},
        "cv_auc": cv_auc,
        "_scores": p,
    }
    return out


def _midrank(x):
    import numpy as np

    order = np.argsort(x, kind="mergesort")
    _, start, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(start + (counts + 1) / 2.0, counts)  # 1-based, ties averaged
    return ranks


def delong(y, a, b) -> dict[str, float]:
    """Paired DeLong test: AUC(a) - AUC(b) on the same rows, with its standard error."""
    import numpy as np

    y = np.asarray(y).astype(bool)
    preds = np.vstack([np.asarray(a, float), np.asarray(b, float)])
    pos, neg = preds[:, y], preds[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    tx = np.array([_midrank(r) for r in pos])
    ty = np.array([_midrank(r) for r in neg])
    tz = np.array([_midrank(r) for r in np.hstack([pos, neg])])
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    cov = np.cov(v01) / m + np.cov(v10) / n
    diff = aucs[0] - aucs[1]
    se = float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
    return {"diff": float(diff), "se": se, "ci95": [float(diff - 1.96 * se), float(diff + 1.96 * se)]}


# --------------------------------------------------------------------------- tuning


def trial_manifest(base: dict[str, Any], train, changes: dict[str, Any]) -> dict[str, Any]:
    """The manifest ``prepare_run`` would write had the spec's training.model / training
    settings been ``changes``: model settings, params, and (for log_features) the numeric
    features' log flag with their mean/std recomputed on the train split as prepare_run does."""
    import numpy as np

    m = copy.deepcopy(base)
    for key, value in changes.items():
        if key in ("epochs", "learning_rate", "batch_size", "early_stopping_patience"):
            m["params"][key] = value
        else:
            m["model"][key] = value
    if "log_features" in changes:
        for f in m["features"]:
            if f["kind"] != "numeric":
                continue
            f["log"] = f["name"] in changes["log_features"]
            x = train[f["name"]].astype("float64")
            if f["log"]:
                x = np.log1p(x.clip(lower=0))
            std = float(x.std(ddof=0))
            f["mean"], f["std"] = float(x.mean()), (std if std > 0 else 1.0)
    return m


def run_trial(
    base_run: Path, trial_dir: Path, train, changes: dict[str, Any], workers: int
) -> dict[str, Any]:
    shutil.rmtree(trial_dir, ignore_errors=True)
    trial_dir.mkdir(parents=True)
    os.symlink(base_run / "data", trial_dir / "data")
    base = json.loads((base_run / "manifest.json").read_text())
    manifest = trial_manifest(base, train, changes)
    manifest["run_id"] = trial_dir.name
    (trial_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return horovod(trial_dir, workers)


# Settings tried where the factory model is below the logistic regression; each is a change to
# the spec's `training:` / `training.model:` block. Picked after a first exploration on this data
# (see docs/benchmarks-training.md): the spec's model stops at epoch 2-5 on a validation split of
# ~50 bad loans, so the candidates are smaller / linear models and a lower learning rate.
TRIALS = {
    "credit_risk": [
        {"hidden_units": [], "one_hot_max": 64},  # a logistic regression trained by the factory
        {"hidden_units": [16], "dropout": 0.5, "one_hot_max": 64, "learning_rate": 0.0003},
        {"learning_rate": 0.0003},
        {"embedding_dim": 2, "dropout": 0.5},
        {"embedding_dim": 2, "dropout": 0.5, "learning_rate": 0.0003},
    ],
    "employment": [
        {"hidden_units": [256, 128]},
        {"learning_rate": 0.003},
        {"one_hot_max": 32},
    ],
}


def tune(
    line: str,
    run: Path,
    work: Path,
    split: dict[str, Any],
    y,
    lr_scores,
    factory: dict[str, Any],
    trials: list[dict[str, Any]],
    repeats: int,
    deadline: float,
) -> dict[str, Any]:
    """Each setting ``repeats`` times (the spec's own: the factory run plus repeats-1 more),
    round-robin so a deadline leaves every setting at least one run; then every trial model
    scores the eval split in one process. The best setting: highest mean validation AUC."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    workers = json.loads((run / "manifest.json").read_text())["params"]["workers"]
    settings = [{}] + trials
    runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(settings))}
    runs[0].append({**factory, "dir": str(run)})
    queue = [(r, i) for r in range(repeats) for i in range(len(settings)) if not (r == 0 and i == 0)]
    skipped = []
    last_wall = factory["wall_s"]
    for r, i in queue:
        if time.perf_counter() + last_wall + 15 > deadline:
            skipped.append({"changes": settings[i], "repeat": r + 1})
            continue
        tdir = work / f"trial-{line}-{i}-{r}"
        res = run_trial(run, tdir, split["train"], settings[i], workers)
        res["dir"] = str(tdir)
        runs[i].append(res)
        last_wall = res["wall_s"]
        log(
            f"{line}: trial {settings[i] or '(spec)'} #{r + 1}: val {res['val_auc']:.4f} "
            f"best epoch {res['best_epoch']}/{res['epochs_run']}, wall {res['wall_s']:.1f}s"
        )
    jobs = [
        (
            Path(t["dir"]) / "model" / "Format-Serving",
            run / "data" / "eval.parquet",
            Path(t["dir"]) / "eval_scores.parquet",
        )
        for i in runs
        for t in runs[i]
        if t["dir"] != str(run)
    ]
    if jobs:
        score_models(jobs)
    table = []
    for i, setting in enumerate(settings):
        if not runs[i]:
            continue
        evals = []
        for t in runs[i]:
            if "eval_auc" not in t:
                p = pd.read_parquet(Path(t["dir"]) / "eval_scores.parquet")["score"].to_numpy()
                t["eval_auc"] = float(roc_auc_score(y, p))
                t["eval_minus_logreg"] = delong(y, p, lr_scores)
            evals.append(t["eval_auc"])
        table.append(
            {
                "changes": setting,
                "runs": len(runs[i]),
                "val_auc_mean": float(np.mean([t["val_auc"] for t in runs[i]])),
                "eval_auc_mean": float(np.mean(evals)),
                "eval_auc_runs": [round(e, 4) for e in evals],
                "best_epochs": [t["best_epoch"] for t in runs[i]],
                "epochs_run": [t["epochs_run"] for t in runs[i]],
                "wall_s_mean": float(np.mean([t["wall_s"] for t in runs[i]])),
                "eval_minus_logreg_delong": [t.get("eval_minus_logreg") for t in runs[i]],
            }
        )
    best = max(table, key=lambda t: t["val_auc_mean"])
    return {
        "selected_by": "mean validation AUC over repeats",
        "repeats": repeats,
        "settings": table,
        "best": best,
        "best_by_eval_auc": max(table, key=lambda t: t["eval_auc_mean"]),
        "skipped": skipped,
    }


# --------------------------------------------------------------------------- report


def fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


def side_by_side(left: list[str], right: list[str], gap: int = 4) -> str:
    width = max((len(s) for s in left), default=0)
    rows = max(len(left), len(right))
    left = left + [""] * (rows - len(left))
    right = right + [""] * (rows - len(right))
    return "\n".join(f"{a.ljust(width)}{' ' * gap}{b}".rstrip() for a, b in zip(left, right, strict=True))


def yaml_change(line: str, changes: dict[str, Any]) -> str:
    """The edit to include/lines/<line>.yaml that gives ``changes`` (keys of training: or training.model:)."""
    top = {
        k: v
        for k, v in changes.items()
        if k in ("epochs", "learning_rate", "batch_size", "early_stopping_patience")
    }
    model = {k: v for k, v in changes.items() if k not in top}
    out = [f"# include/lines/{line}.yaml", "training:"]
    out += [f"  {k}: {json.dumps(v)}" for k, v in top.items()]
    if model:
        out.append("  model:")
        out += [f"    {k}: {json.dumps(v)}" for k, v in model.items()]
    return "\n".join(out)


def throughput_table(tp: dict[str, Any]) -> list[str]:
    lines = [
        f"THROUGHPUT  employment, {tp['train_rows']:,} train rows, {tp['epochs']} epochs, batch "
        f"{tp['batch_size']}/worker, {tp['rounds']} rounds",
        f"{'launcher':<9}{'workers':>8}{'samples/s':>10}{'(range)':>16}{'wall s':>7}{'eff.':>6}{'val AUC':>8}",
        "-" * 64,
    ]
    for c in tp["configs"]:
        eff = tp["efficiency"].get(c["launcher"]) if c["workers"] == 2 else None
        rng = f"{min(c['samples_per_s_runs']):,.0f}-{max(c['samples_per_s_runs']):,.0f}"
        lines.append(
            f"{c['launcher']:<9}{c['workers']:>8}{c['samples_per_s']:>10,.0f}{rng:>16}{c['wall_s']:>7.1f}"
            f"{fmt(eff, '.0%') if eff is not None else '':>6}{c['val_auc']:>8.4f}"
        )
    lines.append("median over rounds; samples/s: epochs 2.. (1 compiles)")
    lines.append("eff. = samples/s(2) / (2 x samples/s(1)); within each round:")
    lines.append(
        "  "
        + "; ".join(
            f"{k} "
            + " ".join(f"{e:.0%}" for e in v)
            + f" (median {tp['efficiency_per_round_median'][k]:.0%})"
            for k, v in tp["efficiency_per_round"].items()
        )
    )
    lines.append(f"1-min load during the runs: {tp['loadavg_min']:.1f}-{tp['loadavg_max']:.1f}")
    return lines


def quality_table(quality: dict[str, Any]) -> list[str]:
    lines = [
        "QUALITY  ROC AUC on the held-out eval split",
        f"{'line':<12}{'eval rows':>10}{'factory':>8}{'logreg':>8}{'lgbm':>8}{'factory-LR [95% CI]':>25}",
        "-" * 71,
    ]
    for line, q in quality.items():
        d = q["factory_minus_logreg"]
        ci = f"{d['diff']:+.4f} [{d['ci95'][0]:+.3f},{d['ci95'][1]:+.3f}]"
        lines.append(
            f"{line:<12}{q['rows']['eval']:>10,}{q['factory']['eval_auc']:>8.4f}"
            f"{q['logreg']['auc']:>8.4f}{q['lightgbm']['auc']:>8.4f}{ci:>25}"
        )
        if q.get("tuning"):
            t = q["tuning"]
            spec_row = next(r for r in t["settings"] if not r["changes"])
            for name, row in (
                ("  spec, mean", spec_row),
                ("  tuned(val)", t["best"]),
                ("  tuned(eval)", t["best_by_eval_auc"]),
            ):
                lines.append(
                    f"{name:<12}{'':>10}{row['eval_auc_mean']:>8.4f}{'':>16}"
                    f"{row['eval_auc_mean'] - q['logreg']['auc']:>+25.4f}"
                )
    lines.append("factory: the spec's settings, 2 Horovod workers; the")
    lines.append("  weights of the best epoch by validation AUC")
    lines.append("spec, mean / tuned: mean of the setting's runs (TUNING);")
    lines.append("  tuned(val): best by validation AUC, tuned(eval): best")
    lines.append("  by eval AUC (optimistic: picked on the test rows)")
    lines.append(
        "train rows (positive rate): "
        + "; ".join(f"{k} {q['rows']['train']:,} ({q['positive_rate']:.1%})" for k, q in quality.items())
    )
    return lines


def tuning_table(line: str, tuning: dict[str, Any]) -> list[str]:
    lines = [
        f"TUNING  {line}: manifest edits of the spec's settings, 2 workers, {tuning['repeats']} runs each "
        "(mean; eval AUC of each run in brackets)",
        f"{'changes':<72}{'val AUC':>8}{'eval AUC':>9}  {'runs':<16}{'best ep.':>9}",
        "-" * 116,
    ]
    for t in tuning["settings"]:
        label = json.dumps(t["changes"], separators=(",", ":")) if t["changes"] else "(spec settings)"
        runs = "[" + ",".join(f"{e:.3f}" for e in t["eval_auc_runs"]) + "]"
        eps = ",".join(str(e) for e in t["best_epochs"])
        lines.append(
            f"{label[:71]:<72}{t['val_auc_mean']:>8.4f}{t['eval_auc_mean']:>9.4f}  {runs:<16}{eps:>9}"
        )
    lines.append(
        f"best by mean val AUC: {json.dumps(tuning['best']['changes']) or '(spec)'}; "
        f"best by mean eval AUC: {json.dumps(tuning['best_by_eval_auc']['changes'])}"
    )
    lines.append(
        "one split, one run per repeat: read differences against the factory-LR interval in QUALITY; "
        "bench/training_cv.py repeats the comparison over rotated splits"
    )
    if tuning["skipped"]:
        lines.append(f"skipped for time: {len(tuning['skipped'])} run(s)")
    return lines


# --------------------------------------------------------------------------- main


def throughput(work: Path, args) -> dict[str, Any]:
    import numpy as np

    from pipelines.training.prepare import prepare_run

    home = work / "home-throughput"
    write_throughput_batches(home, args.tp_rows, 6000, 2000)
    runs = {}
    for w in (1, 2):
        runs[w] = work / f"tp-{w}w"
        prepare_run(
            "employment",
            runs[w],
            {"workers": w, "epochs": args.tp_epochs, "batch_size": args.tp_batch},
            home=home,
        )
    log("throughput run folders ready")
    order = [("horovod", 1), ("horovod", 2), ("mwms", 1), ("mwms", 2)]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {k: [] for k in order}
    loads = []
    for rnd in range(args.tp_rounds):
        for launcher, w in order if rnd % 2 == 0 else order[::-1]:  # alternate the order against drift
            r = horovod(runs[w], w) if launcher == "horovod" else mwms(runs[w], w, work)
            r["round"] = rnd + 1
            results[(launcher, w)].append(r)
            loads += [r["loadavg_1m_before"], r["loadavg_1m_after"]]
            log(
                f"{launcher} x{w} round {rnd + 1}: {r['samples_per_s']:.0f} samples/s, wall {r['wall_s']:.1f}s, "
                f"epochs {r['epoch_samples_per_s']}"
            )
    configs = []
    for (launcher, w), rs in results.items():
        configs.append(
            {
                "launcher": launcher,
                "workers": w,
                "samples_per_s": float(np.median([r["samples_per_s"] for r in rs])),
                "samples_per_s_runs": [r["samples_per_s"] for r in rs],
                "wall_s": float(np.median([r["wall_s"] for r in rs])),
                "val_auc": float(np.median([r["val_auc"] for r in rs])),
                "runs": rs,
            }
        )
    by = {(c["launcher"], c["workers"]): c for c in configs}
    eff = {k: by[(k, 2)]["samples_per_s"] / (2 * by[(k, 1)]["samples_per_s"]) for k in ("horovod", "mwms")}
    # the same ratio inside each round (its 1- and 2-worker runs ran back to back, under similar load)
    per_round = {
        k: [
            two["samples_per_s"] / (2 * one["samples_per_s"])
            for one, two in zip(results[(k, 1)], results[(k, 2)], strict=True)
        ]
        for k in ("horovod", "mwms")
    }
    manifest = json.loads((runs[1] / "manifest.json").read_text())
    return {
        "line": "employment",
        "train_rows": manifest["rows"]["train"],
        "validation_rows": manifest["rows"]["validation"],
        "epochs": args.tp_epochs,
        "batch_size": args.tp_batch,
        "learning_rate_per_worker": manifest["params"]["learning_rate"],
        "rounds": args.tp_rounds,
        "configs": configs,
        "efficiency": eff,
        "efficiency_per_round": per_round,
        "efficiency_per_round_median": {k: float(np.median(v)) for k, v in per_round.items()},
        "loadavg_min": min(loads),
        "loadavg_max": max(loads),
        "notes": "samples/s: each run's mean over epochs after the first, median over rounds. wall: launcher "
        "start to exit; Horovod's includes validation every epoch, the SavedModel export and "
        "result.json, MWMS's one validation pass at the end and no export.",
    }


def quality(work: Path, args, deadline: float) -> dict[str, Any]:
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from pipelines.training.prepare import prepare_run

    home = work / "home-quality"
    if args.employment_rows:
        from bench.realdata import CREDIT_RISK_SLICES, lending_club_frame, make_validated_batch

        write_sampled_employment(home, args.employment_rows)
        for i in range(1, CREDIT_RISK_SLICES + 1):
            make_validated_batch(home, "credit_risk", f"slice{i}", lending_club_frame(i))
    else:
        write_batches(home)
    out: dict[str, Any] = {}
    pending = []
    for line in ("credit_risk", "employment"):
        run = work / f"q-{line}"
        manifest = prepare_run(line, run, None, home=home)
        log(f"{line}: run folder ready, rows {manifest['rows']}")
        fac = horovod(run, manifest["params"]["workers"])
        fac["dir"] = str(run)
        log(
            f"{line}: factory model val AUC {fac['val_auc']:.4f}, best epoch {fac['best_epoch']}/{fac['epochs_run']}, "
            f"wall {fac['wall_s']:.1f}s"
        )
        split = read_split(run)
        base = baselines(run, split)
        log(
            f"{line}: logreg {base['logreg']['auc']:.4f} ({base['logreg']['fit_s']}s)  lightgbm "
            f"{base['lightgbm']['auc']:.4f} ({base['lightgbm']['fit_s']}s, {base['lightgbm']['settings']})"
        )
        pending.append((line, run, manifest, fac, split, base))
    score_models(
        [
            (run / "model" / "Format-Serving", run / "data" / "eval.parquet", run / "eval_scores.parquet")
            for _, run, *_ in pending
        ]
    )
    for line, run, manifest, fac, split, base in pending:
        y = split["eval"][manifest["label"]["name"]].to_numpy()
        p_fac = pd.read_parquet(run / "eval_scores.parquet")["score"].to_numpy()
        fac["eval_auc"] = float(roc_auc_score(y, p_fac))
        fac["eval_minus_logreg"] = delong(y, p_fac, base["logreg"]["_scores"])
        q = {
            "rows": manifest["rows"],
            "batches": manifest["batches"],
            "positive_rate": manifest["label"]["positive_rate"],
            "spec_training": {
                **{
                    k: manifest["params"][k]
                    for k in ("workers", "epochs", "batch_size", "learning_rate", "early_stopping_patience")
                },
                "model": manifest["model"],
            },
            "factory": {k: v for k, v in fac.items() if k != "dir"},
            "logreg": {k: v for k, v in base["logreg"].items() if not k.startswith("_")},
            "lightgbm": {k: v for k, v in base["lightgbm"].items() if not k.startswith("_")},
            "factory_minus_logreg": fac["eval_minus_logreg"],
            "factory_minus_lightgbm": delong(y, p_fac, base["lightgbm"]["_scores"]),
        }
        log(
            f"{line}: factory eval AUC {fac['eval_auc']:.4f}, minus LR {q['factory_minus_logreg']['diff']:+.4f}"
        )
        if args.trials and q["factory_minus_logreg"]["diff"] < 0:
            q["tuning"] = tune(
                line,
                run,
                work,
                split,
                y,
                base["logreg"]["_scores"],
                fac,
                TRIALS[line][: args.trials],
                args.trial_repeats,
                deadline,
            )
            best = q["tuning"]["best"]
            q["tuning"]["best"]["yaml"] = yaml_change(line, best["changes"]) if best["changes"] else None
        out[line] = q
    return out


# --------------------------------------------------------------------------- scaling of the image line's CNN

FASHION = "fashion"


def write_fashion_batches(home: Path, images: int, eval_images: int) -> None:
    """The first ``images`` Fashion-MNIST training images as one cleaned batch (``slice-1``) and
    ``eval_images`` official test images as the line's eval batch (``test``), written as the
    image line's cleaning writes them (``tests/image_batches.py``: PNG bytes per row)."""
    sys.path.insert(0, str(REPO / "tests"))
    from image_batches import clean_rows, write_clean_batch

    write_clean_batch(home, FASHION, "slice-1", clean_rows("train", 0, images))
    write_clean_batch(home, FASHION, "test", clean_rows("t10k", 0, eval_images))


def _parse_variants(text: str) -> dict[str, dict[str, str]]:
    """``name:VAR=value+VAR=value;name:...`` -> {name: {VAR: value}}: Horovod settings tried at 2 workers."""
    out: dict[str, dict[str, str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, settings = part.partition(":")
        pairs = [kv.split("=", 1) for kv in settings.split("+") if kv]
        if not name or not pairs or any(len(kv) != 2 or not kv[0].startswith("HOROVOD_") for kv in pairs):
            raise SystemExit(f"--fs-variants: {part!r} is not name:HOROVOD_X=value[+HOROVOD_Y=value]")
        out[name] = dict(pairs)
    return out


# (name, launcher, workers, threads per worker, pinned to a core each)
SCALING_CONFIGS = [
    ("horovod_1w", "horovod", 1, 1, True),
    ("horovod_2w", "horovod", 2, 1, True),
    ("mwms_1w", "mwms", 1, 1, True),
    ("mwms_2w", "mwms", 2, 1, True),
    ("horovod_1w_2threads", "horovod", 1, 2, False),
]


def fashion_scaling(work: Path, args) -> dict[str, Any]:
    """The image line's CNN at 1 and 2 workers, Horovod (the factory's worker) and MWMS, each
    worker held to one core's worth of threads; rounds interleaved, medians reported."""
    import numpy as np

    from pipelines.training.prepare import prepare_run

    home = work / "home-fashion"
    write_fashion_batches(home, args.fs_images, args.fs_eval_images)
    variants = _parse_variants(args.fs_variants)
    runs = {}
    for w in (1, 2):
        runs[w] = work / f"fs-{w}w"
        prepare_run(FASHION, runs[w], {"workers": w, "epochs": args.fs_epochs, "batches": ["slice-1", "test"]},
                    home=home)
    manifest = json.loads((runs[1] / "manifest.json").read_text())
    log(f"fashion scaling: {manifest['rows']} rows, per-worker batch {manifest['params']['batch_size']}")
    configs = [*SCALING_CONFIGS, *((f"horovod_2w_{n}", "horovod", 2, 1, True) for n in variants)]
    results: dict[str, list[dict[str, Any]]] = {c[0]: [] for c in configs}
    for rnd in range(args.fs_rounds):
        for name, launcher, w, threads, pin in configs if rnd % 2 == 0 else configs[::-1]:
            if launcher == "horovod":
                extra = variants.get(name.removeprefix("horovod_2w_")) if name.startswith("horovod_2w_") else None
                r = horovod(runs[w], w, threads=threads, pin=pin, extra_env=extra)
            else:
                r = mwms(runs[w], w, work, threads=threads, pin=pin)
            r["round"] = rnd + 1
            results[name].append(r)
            log(f"{name} round {rnd + 1}: {r['samples_per_s']:.0f} images/s, wall {r['wall_s']:.1f}s, "
                f"epochs {r['epoch_samples_per_s']}")
    table = {}
    for name, launcher, w, threads, pin in configs:
        rs = results[name]
        table[name] = {
            "launcher": launcher, "workers": w, "threads_per_worker": threads, "pinned_to_a_core": pin,
            "horovod_settings": variants.get(name.removeprefix("horovod_2w_"), {}) if name.startswith("horovod_2w_")
            else {},
            "images_per_s": float(np.median([r["samples_per_s"] for r in rs])),
            "images_per_s_runs": [r["samples_per_s"] for r in rs],
            "wall_s": float(np.median([r["wall_s"] for r in rs])),
            "val_accuracy": float(np.median([r["val_accuracy"] for r in rs])),
            "runs": rs,
        }

    def efficiency(two: str, one: str) -> dict[str, Any]:
        per_round = [b["samples_per_s"] / (2 * a["samples_per_s"])
                     for a, b in zip(results[one], results[two], strict=True)]
        return {"median_rates": table[two]["images_per_s"] / (2 * table[one]["images_per_s"]),
                "per_round": per_round}

    eff = {"horovod": efficiency("horovod_2w", "horovod_1w"), "mwms": efficiency("mwms_2w", "mwms_1w")}
    for n in variants:
        eff[f"horovod_{n}"] = efficiency(f"horovod_2w_{n}", "horovod_1w")
    return {
        "line": FASHION,
        "model": manifest["model"],
        "train_images": manifest["rows"]["train"],
        "validation_images": manifest["rows"]["validation"],
        "epochs": args.fs_epochs,
        "timed_epochs": f"2..{args.fs_epochs} (the first compiles and is left out)",
        "batch_size_per_worker": manifest["params"]["batch_size"],
        "global_batch": "batch_size_per_worker x workers (the factory's semantics: the learning rate x workers)",
        "threads": "FACTORY_TRAIN_THREADS=1 (intra-op 1, inter-op 1) and taskset to core <local rank> for every "
                   "worker, except horovod_1w_2threads: 2 and 2, no pinning",
        "rounds": args.fs_rounds,
        "configs": table,
        "efficiency": eff,
        "efficiency_definition": "images/s(2 workers) / (2 x images/s(1 worker)), both at one thread per worker",
    }


def scaling_table(sc: dict[str, Any]) -> list[str]:
    lines = [f"SCALING  {sc['line']} CNN {sc['model'].get('conv_filters')}, {sc['train_images']:,} train images, "
             f"{sc['epochs']} epochs (timed 2..), batch {sc['batch_size_per_worker']}/worker, "
             f"median of {sc['rounds']} rounds",
             f"{'config':<28}{'workers':>8}{'threads':>8}{'images/s':>10}{'range':>14}{'wall s':>8}{'val acc':>9}"]
    for name, c in sc["configs"].items():
        runs = c["images_per_s_runs"]
        lines.append(f"{name:<28}{c['workers']:>8}{c['threads_per_worker']:>8}{c['images_per_s']:>10,.0f}"
                     f"{f'{min(runs):,.0f}-{max(runs):,.0f}':>14}{c['wall_s']:>8.1f}{c['val_accuracy']:>9.3f}")
    for k, e in sc["efficiency"].items():
        rounds = " ".join(f"{x:.2f}" for x in e["per_round"])
        lines.append(f"efficiency {k}: {e['median_rates']:.2f} (per round {rounds})")
    return lines


def run_fashion_scaling(args, work: Path) -> int:
    from bench.machine import write_results

    mc = machine()
    print(describe(mc), flush=True)
    started = time.perf_counter()
    result = fashion_scaling(work, args)
    mc["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    argv = [a for i, a in enumerate(sys.argv[1:]) if a not in ("--keep",) and sys.argv[i] not in ("--keep",)]
    out = write_results(args.fs_out, shlex.join([".venv/airflow/bin/python", "bench/training_bench.py", *argv]), mc,
                        round(time.perf_counter() - started, 1), result)
    print("\n".join(scaling_table(result)))
    print(f"load average (1/5/15 min): start {mc['load_average_at_start']}, end {mc['loadavg_end']}")
    print(f"wrote {out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp-rows", type=int, default=60000, help="training rows for the throughput runs")
    ap.add_argument("--tp-epochs", type=int, default=3)
    ap.add_argument("--tp-batch", type=int, default=512)
    ap.add_argument("--tp-rounds", type=int, default=3, help="each throughput run this many times (median)")
    ap.add_argument(
        "--employment-rows", type=int, default=0, help="0: all 277,677; else a sample of this size"
    )
    ap.add_argument(
        "--trials", type=int, default=5, help="at most this many tuning settings per line (0: none)"
    )
    ap.add_argument("--trial-repeats", type=int, default=2, help="runs per tuning setting")
    ap.add_argument(
        "--budget-s", type=float, default=690, help="no tuning run starts that would end after this"
    )
    ap.add_argument("--skip", default="", help="comma list of parts to skip: throughput,quality")
    ap.add_argument(
        "--keep", type=Path, help="work here and keep the run folders (default: a temp dir, removed)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "training.json")
    ap.add_argument("--line", choices=("employment", FASHION), default="employment",
                    help="fashion: only the scaling of the image line's CNN (bench/results/training_scaling.json)")
    ap.add_argument("--fs-images", type=int, default=5000, help="fashion: training images (the first N)")
    ap.add_argument("--fs-eval-images", type=int, default=500, help="fashion: official test images (eval batch)")
    ap.add_argument("--fs-epochs", type=int, default=3, help="fashion: epochs per run (the first is not timed)")
    ap.add_argument("--fs-rounds", type=int, default=3, help="fashion: each configuration this many times (median)")
    ap.add_argument("--fs-variants", default="",
                    help="fashion: Horovod settings tried at 2 workers, name:HOROVOD_X=v[+HOROVOD_Y=w];...")
    ap.add_argument("--fs-out", default="training_scaling", help="fashion: bench/results/<name>.json")
    args = ap.parse_args()
    skip = {s for s in args.skip.split(",") if s}

    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="training-bench-"))
    if args.keep:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    if args.line == FASHION:
        try:
            return run_fashion_scaling(args, work)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    report: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    log(f"work dir {work}")
    try:
        if "throughput" not in skip:
            report["throughput"] = throughput(work, args)
        if "quality" not in skip:
            report["quality"] = quality(work, args, T0 + args.budget_s)
    finally:
        report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        report["total_s"] = round(time.perf_counter() - T0, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    mc = report["machine"]
    print(describe(mc))
    ml, orch = mc["ml_env"], mc["orchestration_env"]
    print(
        f"ML env: Python {ml['python']}, TensorFlow {ml['tensorflow']}, tf_keras {ml['tf_keras']}, "
        f"Horovod {ml['horovod']} (Gloo, CPU)"
    )
    print(
        f"orchestration env: Python {orch['python']}, scikit-learn {orch['scikit-learn']}, "
        f"LightGBM {orch['lightgbm']}, pandas {orch['pandas']}"
    )
    print(
        f"load average (1/5/15 min): start {mc['load_average_at_start']}, end {mc['loadavg_end']}, "
        f"{mc['cores']} cores shared with other work; benchmark total {report['total_s']:.0f} s"
    )
    print()
    left = throughput_table(report["throughput"]) if "throughput" in report else []
    right = quality_table(report["quality"]) if "quality" in report else []
    print(side_by_side(left, right))
    for line, q in report.get("quality", {}).items():
        if q.get("tuning"):
            print()
            print("\n".join(tuning_table(line, q["tuning"])))
            if q["tuning"]["best"].get("yaml"):
                print(q["tuning"]["best"]["yaml"])
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
