"""The MLflow model registry side of the gate (either environment; MLflow only).

Registered model ``factory.<line>``; one model version per training run (its source is
the training run's ``model`` artifact, ``runs:/<run id>/model``), registered whatever the
verdict, with tags:

| tag | value |
|---|---|
| ``blessing`` | ``BLESSED``, ``NOT_BLESSED`` or ``FORCED`` |
| ``blessing_why`` | the thresholds that failed, or that all were met |
| ``blessed_on`` | value thresholds only (first model) or also change vs the baseline |
| ``force_bless_reason`` | the written reason of a force-bless |
| ``eval.<metric>`` / ``baseline.<metric>`` | overall metrics of the candidate / the baseline |
| ``baseline_run`` / ``baseline_version`` | the baseline's training run and model version |
| ``serving_version`` / ``serving_path`` | where the Pusher put it (TF Serving version) |
| ``serving_status`` | ``SERVING`` (the highest version: TF Serving serves it), ``STANDBY`` (an older pushed version), ``RETIRED`` (rolled back), ``NOT_PUSHED`` |
| ``evaluation_report`` / ``evaluation_result`` | the HTML report and result JSON (also MLflow run artifacts under ``evaluation/``) |

The alias ``champion`` names the version TF Serving serves. The serving store is the
source of truth: :func:`sync_serving_state` re-derives ``serving_status`` and ``champion``
from it, after a push and after a rollback (and can be re-run any time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines import tracking
from pipelines.catalog import layout, records
from pipelines.evaluation import serving

CHAMPION = "champion"
TAG_MAX = 4900  # MLflow model-version tag values: 5000 characters at most
MANAGED = {"blessing", "blessing_why", "blessed_on", "force_bless_reason", "baseline_run", "baseline_version",
           "serving_version", "serving_path", "serving_status", "evaluation_report", "evaluation_result",
           "tfx_pipeline_run"}


def _client(home: Path | None):
    return tracking.client(home)


def ensure_registered_model(client, line: str) -> str:
    from mlflow.exceptions import MlflowException

    name = layout.registered_model_name(line)
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, tags={"factory.line": line},
                description=f"Candidates of product line {line}; alias '{CHAMPION}' is the model in serving.",
            )
        except MlflowException:  # created meanwhile by another task
            client.get_registered_model(name)
    return name


def versions(client, line: str) -> list[Any]:
    name = layout.registered_model_name(line)
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name='{name}'", max_results=1000, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return sorted(out, key=lambda v: int(v.version))


def version_of_run(client, line: str, mlflow_run_id: str) -> Any | None:
    name = layout.registered_model_name(line)
    found = client.search_model_versions(f"name='{name}' and run_id='{mlflow_run_id}'")
    return sorted(found, key=lambda v: int(v.version))[-1] if found else None


def _tag(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= TAG_MAX else text[: TAG_MAX - 3] + "..."


def record(result: dict[str, Any], tags: dict[str, str] | None = None, home: Path | None = None) -> dict[str, Any]:
    """Register the evaluated candidate (or update its version), tag it, and sync
    ``champion`` with the serving store; returns {"name", "version", "champion"}."""
    line = result["line"]
    run_id = result.get("mlflow_run_id")
    if not run_id:
        raise ValueError(f"{result['run_dir']}: no mlflow_run_id: the training run was not tracked in MLflow")
    client = _client(home)
    name = ensure_registered_model(client, line)
    mv = version_of_run(client, line, run_id)

    baseline = result.get("baseline") or {}
    baseline_version = None
    if baseline.get("mlflow_run_id"):
        b = version_of_run(client, line, baseline["mlflow_run_id"])
        baseline_version = str(b.version) if b is not None else None
        result["baseline"]["registry_version"] = baseline_version
    serving_info = result.get("serving") or {}
    values = {
        "factory.line": line,
        "factory.run_dir": result["run_dir"],
        "blessing": result["blessing"],
        "blessing_why": result.get("why"),
        "blessed_on": result.get("blessed_on"),
        "force_bless_reason": result.get("force_bless_reason"),
        "baseline_run": baseline.get("training_run"),
        "baseline_version": baseline_version,
        "serving_version": serving_info.get("version"),
        "serving_path": serving_info.get("path"),
        "serving_status": None if serving_info else "NOT_PUSHED",
        "evaluation_report": (result.get("report") or {}).get("html"),
        "evaluation_result": (result.get("report") or {}).get("json"),
        "tfx_pipeline_run": (result.get("tfx") or {}).get("pipeline_run_id"),
        **{f"eval.{k}": v for k, v in (result.get("overall") or {}).items()},
        **{f"baseline.{k}": v for k, v in (((result.get("metrics") or {}).get("Overall") or {}).get("baseline") or {}).items()},
        **(tags or {}),
    }
    values = {k: _tag(v) for k, v in values.items() if v is not None and v != ""}
    if mv is None:  # one call: the version and its tags
        mv = client.create_model_version(
            name, source=f"runs:/{run_id}/model", run_id=run_id, tags=values,
            description=f"{line} training run {result['training_run']}: {result['blessing']}",
        )
    else:  # a re-evaluation (e.g. a force-bless after a rejection): update the tags
        for key, value in values.items():
            if mv.tags.get(key) != value:
                client.set_model_version_tag(name, mv.version, key, value)
        for key in mv.tags:
            if key not in values and (key in MANAGED or key.startswith(("eval.", "baseline."))):
                client.delete_model_version_tag(name, mv.version, key)
        client.update_model_version(name, mv.version,
                                    description=f"{line} training run {result['training_run']}: {result['blessing']}")
    champion = sync_serving_state(line, home)
    return {"name": name, "version": str(mv.version), "champion": champion}


def log_evaluation(result: dict[str, Any], home: Path | None = None) -> None:
    """The evaluation on the training run in MLflow: ``eval_<metric>`` metrics, the
    ``factory.blessing`` tag, and result.json, report.html (and the PNG) under ``evaluation/``."""
    import time

    from mlflow.entities import Metric

    run_id = result["mlflow_run_id"]
    client = _client(home)
    now = int(time.time() * 1000)
    metrics = [Metric(f"eval_{k}", float(v), now, 0) for k, v in (result.get("overall") or {}).items() if v is not None]
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, "factory.blessing", result["blessing"])
    for local in (result.get("report") or {}).values():
        if local and Path(local).exists():
            client.log_artifact(run_id, local, artifact_path="evaluation")


def sync_serving_state(line: str, home: Path | None = None) -> str | None:
    """Make ``serving_status`` tags and the ``champion`` alias match the serving store;
    returns the champion's model version (None when nothing is served)."""
    from mlflow.exceptions import MlflowException

    client = _client(home)
    name = ensure_registered_model(client, line)
    base = layout.serving_base(line, home)
    live = set(serving.live_versions(base))
    retired = set(serving.retired_versions(base))
    current = serving.serving_version(base)
    champion = None
    for mv in versions(client, line):
        sv = mv.tags.get("serving_version")
        if not sv:
            continue
        sv = int(sv)
        status = ("SERVING" if sv == current else "STANDBY") if sv in live else ("RETIRED" if sv in retired else "GONE")
        if mv.tags.get("serving_status") != status:
            client.set_model_version_tag(name, mv.version, "serving_status", status)
        if status == "RETIRED" and "rolled_back_at" not in mv.tags:
            info = records.read_retired_info(base, sv)
            if info is not None:
                client.set_model_version_tag(name, mv.version, "rolled_back_at", _tag(info.retired_at))
                client.set_model_version_tag(name, mv.version, "rolled_back_reason", _tag(info.reason))
        if status == "SERVING":
            champion = str(mv.version)
    if champion is not None:
        client.set_registered_model_alias(name, CHAMPION, champion)
    else:
        try:
            client.delete_registered_model_alias(name, CHAMPION)
        except MlflowException:
            pass
    return champion


def champion(line: str, home: Path | None = None) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return _client(home).get_model_version_by_alias(layout.registered_model_name(line), CHAMPION)
    except MlflowException:
        return None
