"""A factory home's later records, written by the stages' own writers, for the view's tests.

The training run is what ``prepare.py`` (manifest), the Horovod workers (result) and the
training stage (MLflow run id) leave, with an exported model that is only a
``saved_model.pb`` (what the serving store checks); the push goes through the serving
store's ``publish``; the gate's result and report through the catalog and the report
writer; drift through the monitor itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.catalog import layout, records
from pipelines.evaluation import serving
from pipelines.evaluation.report import write_report
from pipelines.monitoring.profile import build_profile

LINE = "credit_risk"


def write_training_run(home: Path, run_id: str, batches: list[str], auc: float, line: str = LINE,
                       mlflow_run_id: str | None = None) -> Path:
    """A run folder as prepare.py (manifest), the workers (result) and the stage (MLflow run id) leave it,
    with an exported model (a SavedModel's saved_model.pb is all the serving store checks)."""
    run = layout.run_dir(line, run_id, home)
    records.write_manifest(run, {
        "line": line, "spec_version": 1, "run_id": run_id, "batches": batches, "key": ["id"],
        "label": {"name": "bad_loan", "positive": "1", "positive_rate": 0.05},
        "features": [{"name": "int_rate", "type": "double", "kind": "numeric", "categories": None, "log": False,
                      "mean": 13.1, "std": 4.5},
                     {"name": "term", "type": "string", "kind": "categorical", "categories": ["term_36", "term_60"],
                      "log": False, "mean": None, "std": None}],
        "rows": {"read": 2100, "train": 1500, "validation": 300, "eval": 300}, "shards": [750, 750],
        "params": {"workers": 2, "epochs": 12, "batch_size": 256, "learning_rate": 0.001, "early_stopping_patience": 3,
                   "window_batches": 4, "batches": None, "seed": 42},
        "model": {"hidden_units": [64, 32], "dropout": 0.1, "class_weight": "balanced"},
    })
    records.write_training_result(run, {
        "epochs_run": 12, "resumed_from_epoch": None, "best_epoch": 10, "stopped_early": False,
        "history": [{"epoch": 10, "loss": 0.41, "val_loss": 0.44, "val_auc": auc, "samples_per_s": 4100.0}],
        "val_auc": auc, "val_loss": 0.44, "samples_per_s": 4100.0, "workers": 2, "weights_sha256": "ab" * 32,
    })
    records.write_mlflow_run_id(run, mlflow_run_id or f"mlflow-{run.name[:6]}")
    model = layout.exported_model(run)
    model.mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"")
    return run


def push(home: Path, run: Path, blessing: str, line: str = LINE) -> tuple[int, Path]:
    """What the gate's Pusher publishes (pipelines.evaluation.pusher)."""
    info = {"blessing": blessing, "force_bless_reason": None if blessing == "BLESSED" else "hotfix",
            "model_uri": str(run / layout.TRAINING_MODEL), "mlmd_model_id": 1, "mlmd_blessing_id": 2,
            "line": line, "run_dir": str(run), "training_run": run.name, "mlflow_run_id": f"mlflow-{run.name[:6]}"}
    return serving.publish(layout.exported_model(run), layout.serving_base(line, home), info)


def write_gate_result(home: Path, run: Path, blessing: str, why: str, overall: dict, pushed: tuple[int, Path] | None = None,
          line: str = LINE) -> dict:
    """The gate's result.json and report.html (pipelines.evaluation.gate.evaluate)."""
    serving_info = None if pushed is None else {
        "version": pushed[0], "path": str(pushed[1]), "base": str(layout.serving_base(line, home))}
    result = {
        "line": line, "spec_version": 1, "run_dir": str(run), "training_run": run.name,
        "mlflow_run_id": f"mlflow-{run.name[:6]}", "blessing": blessing, "evaluator_blessed": blessing == "BLESSED",
        "blessed_on": "value thresholds only (no blessed model yet)", "why": why,
        "force_bless_reason": "hotfix" if blessing == "FORCED" else None,
        "failures": [] if blessing == "BLESSED" else [{"slice": "Overall", "metric": "auc", "message": "auc below 0.7"}],
        "candidate": {"model_uri": str(run / layout.TRAINING_MODEL), "mlmd_model_id": 1}, "baseline": None,
        "pushed": pushed is not None, "serving": serving_info, "overall": overall,
        "metrics": {"Overall": {"candidate": overall, "baseline": None, "diff": None},
                    "term:term_36": {"candidate": {"auc": overall["auc"] - 0.01}, "baseline": None, "diff": None}},
        "slices": [{"slice": "Overall", "gated": True, "examples": 300, "positives": 15},
                   {"slice": "term:term_36", "gated": False, "examples": 200, "positives": 9}],
        "settings": {"thresholds": {"auc": {"min": 0.7}}, "slice_thresholds": {"thresholds": {}}},
        "rows": 300, "tfx": {"pipeline_run_id": "2026-11-20T10:20:00.000000"}, "timings": {"total_s": 61.0},
        "report": {"json": str(layout.evaluation_result_path(run)), "html": str(layout.evaluation_report_path(run))},
    }
    write_report(result, layout.evaluation_report_path(run))
    records.write_evaluation_result(run, result)
    return result


def batch_frame(n: int, share_60: float, feature: str = "int_rate") -> pd.DataFrame:
    """Rows whose only difference between batches is the share of 60-month loans."""
    return pd.DataFrame({feature: np.tile(np.linspace(5, 25, 50), n // 50),
                         "term": np.where(np.arange(n) % 100 < share_60 * 100, "60 months", "36 months"),
                         "score": np.tile(np.linspace(0.05, 0.95, 50), n // 50)})


def reference_profile(feature: str = "int_rate") -> dict:
    """The reference profile of the served model (pipelines.monitoring.profile)."""
    return build_profile(batch_frame(2000, 0.3, feature), [{"name": feature, "kind": "numeric"}, {"name": "term", "kind": "categorical"}],
                         "score", meta={"line": LINE, "model_version": "1"})
