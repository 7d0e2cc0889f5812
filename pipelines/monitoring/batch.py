"""One call for the Airflow side: score a batch, write its reports, record it.

A monitor task reads the cleaned batch and the serving model's profile, then calls
:func:`monitor_batch`, which scores the batch (:mod:`~pipelines.monitoring.detection`), writes
``<FACTORY_HOME>/drift/<line>/reports/<batch>.json`` and ``.html``, and records the batch in
the line's history and episodes (:mod:`~pipelines.monitoring.episodes`). It returns a small,
plain summary (fit for an XCom). Whether to retrain is a separate step
(:func:`pipelines.monitoring.episodes.claim_retrain`), so a sensor can ask it on its own
schedule.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.catalog.layout import drift_report_paths
from pipelines.monitoring.detection import score_batch
from pipelines.monitoring.episodes import record_batch
from pipelines.monitoring.profile import load_profile
from pipelines.monitoring.report import write_html_report, write_json_report
from pipelines.specs.drift import DriftSpec, drift_spec

if TYPE_CHECKING:
    import pandas as pd


def line_drift_spec(line: str) -> DriftSpec:
    """The line's ``drift:`` section, validated (defaults when the spec has none)."""
    from pipelines.specs import load_spec

    section = load_spec(line).drift
    return drift_spec(section.model_dump() if hasattr(section, "model_dump") else section)


def monitor_batch(
    line: str,
    frame: pd.DataFrame,
    profile_path: Path,
    *,
    batch_id: str,
    model_version: str | None = None,
    scores: Any = None,
    labels: Any = None,
    positive: Any = None,
    embeddings: Any = None,
    predicted: Any = None,
    config: DriftSpec | dict[str, Any] | None = None,
    home: Path | None = None,
    now: datetime | None = None,
    record_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score, report and record one batch; returns a summary dict (plain values only).
    ``record_extra``: fields kept on the batch's history record (a live window's).

    A tabular profile scores the batch's features and the model's ``scores``; an image
    profile (``modality: image``) scores the batch's pixel statistics (``frame``), the
    model's ``embeddings`` on its images and the ``predicted`` classes."""
    cfg = drift_spec(config) if config is not None else line_drift_spec(line)
    profile = load_profile(profile_path)
    version = model_version if model_version is not None else profile.get("meta", {}).get("model_version")
    if profile.get("modality", "tabular") == "image":
        from pipelines.monitoring.images import score_image_batch

        report = score_image_batch(profile, frame, embeddings, predicted, labels=labels, config=cfg, batch_id=batch_id)
    else:
        report = score_batch(
            profile, frame, scores=scores, labels=labels, positive=positive, config=cfg, batch_id=batch_id
        )
    report["profile"]["meta"].setdefault("line", line)
    report["profile"]["meta"]["model_version"] = version
    json_path, html_path = drift_report_paths(line, batch_id, home)
    write_json_report(report, json_path)
    write_html_report(report, html_path)
    record = record_batch(
        line,
        report,
        model_version=None if version is None else str(version),
        batch_id=batch_id,
        report_path=str(json_path),
        html_path=str(html_path),
        policy=cfg.retrain,
        home=home,
        now=now,
        extra=record_extra,
    )
    return {
        "line": line,
        "batch_id": batch_id,
        "status": report["status"],
        "drifted": report["drifted"],
        "drifted_features": [d["feature"] for d in report["drifted_features"]],
        "why": [f"{d['feature']}: {d['by']}" for d in report["drifted_features"]],
        "episode_id": record["episode_id"],
        "model_version": record["model_version"],
        "auc": record.get("auc"),
        "report_path": str(json_path),
        "html_path": str(html_path),
    }
