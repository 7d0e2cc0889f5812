"""Tuned settings applied over a line's spec.

A trial's settings and the line's tuned settings are flat mappings of :data:`TUNABLE`
names (``{"learning_rate": 0.0005, "hidden_units": [128, 64]}``). :func:`with_params`
puts them into the spec's ``training:`` and checks the result the way the spec itself is
checked; :func:`tuned_spec` is what the training stage calls: the spec with the line's
tuned settings, and their provenance for the run's manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipelines.catalog import records
from pipelines.specs import LineSpec, TrainingSpec
from pipelines.specs.tuning import TUNABLE, get_setting, set_setting


class TuningError(ValueError):
    """Settings that cannot be applied to the line (unknown names, invalid values)."""


def with_params(spec: LineSpec, params: dict[str, Any] | None) -> LineSpec:
    """The spec with ``params`` put into its ``training:`` (``None`` or empty: the spec)."""
    if not params:
        return spec
    unknown = sorted(set(params) - set(TUNABLE))
    if unknown:
        raise TuningError(f"{spec.name}: {unknown} are not tunable settings (those are {sorted(TUNABLE)})")
    kind = spec.training.model.kind
    training = spec.training.model_dump()
    for name, value in params.items():
        if kind not in TUNABLE[name][1]:
            raise TuningError(f"{spec.name}: {name} does not apply to a {kind} model")
        set_setting(training, name, value)
    try:
        checked = TrainingSpec.model_validate(training)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TuningError(f"{spec.name}: tuned settings give an invalid training.{where}: {first['msg']}") from None
    return spec.model_copy(update={"training": checked})


def current_params(spec: LineSpec, names: list[str]) -> dict[str, Any]:
    """The spec's values of the named settings (a study tries them first, as its yardstick)."""
    training = spec.training.model_dump()
    return {name: get_setting(training, name) for name in names}


def apply_tuned(spec: LineSpec, tuned: records.TunedParams) -> tuple[LineSpec, dict[str, Any]]:
    """The spec with a tuned-settings record applied, and the provenance the run's manifest
    records: ``used`` and, when the settings are not applied, ``why`` (the line has no
    ``tuning:``, ``use_tuned`` is off, or the settings no longer fit the spec: a changed
    model kind, a tightened range). The one rule for training and for the view."""
    provenance = {k: tuned.get(k) for k in ("study", "trial", "metric", "value", "batches", "space", "at",
                                             "mlflow_run_id", "spec_version")}
    provenance["params"] = dict(tuned.params)
    if spec.tuning is None:
        return spec, {**provenance, "used": False, "why": "the line's spec has no tuning section"}
    if not spec.tuning.use_tuned:
        return spec, {**provenance, "used": False, "why": "tuning.use_tuned is false"}
    try:
        applied = with_params(spec, tuned.params)
    except TuningError as err:
        return spec, {**provenance, "used": False, "why": str(err)}
    return applied, {**provenance, "used": True}


def tuned_spec(spec: LineSpec, home: Path | None = None) -> tuple[LineSpec, dict[str, Any] | None]:
    """The spec the next training uses and the provenance of its tuned settings.

    A line with ``tuning.use_tuned`` and a tuned-settings record trains with them
    (:func:`apply_tuned`); the provenance goes into the run's manifest."""
    if spec.tuning is None or not spec.tuning.use_tuned:
        return spec, None
    tuned = records.read_tuned_params(spec.name, home)
    if tuned is None:
        return spec, None
    return apply_tuned(spec, tuned)
