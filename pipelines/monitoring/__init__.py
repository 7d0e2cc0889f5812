"""Drift monitoring: reference profiles, batch scoring, reports, history and episodes.

- :mod:`~pipelines.monitoring.profile`: ``build_profile`` / ``save_profile`` / ``load_profile``;
- :mod:`~pipelines.monitoring.detection`: ``score_batch`` (the alarm rule is documented there);
- :mod:`~pipelines.monitoring.report`: ``write_html_report``;
- :mod:`~pipelines.monitoring.history`: the per-line append-only JSONL history;
- :mod:`~pipelines.monitoring.episodes`: drift episodes, cooldown and ``should_retrain``;
- :mod:`~pipelines.monitoring.batch`: ``monitor_batch``, all of the above for one batch;
- :mod:`~pipelines.specs.drift`: the spec's ``drift:`` section (pydantic only).

Runs in the orchestration environment (pandas, numpy, scipy; matplotlib for plots).
This package imports nothing heavy itself: the names below load their module on first
use, so importing ``pipelines.specs.drift`` at DAG parse time stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_profile": "profile",
    "build_profile_from_run": "profile",
    "save_profile": "profile",
    "load_profile": "profile",
    "ProfileError": "profile",
    "features_from_spec": "profile",
    "monitor_batch": "batch",
    "score_batch": "detection",
    "DriftInputError": "detection",
    "write_html_report": "report",
    "write_json_report": "report",
    "append_history": "history",
    "read_history": "history",
    "should_retrain": "episodes",
    "record_batch": "episodes",
    "claim_retrain": "episodes",
    "record_retrain_outcome": "episodes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
