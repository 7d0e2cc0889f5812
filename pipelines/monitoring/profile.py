"""Reference profiles: what a model's training data looked like, kept next to the model.

A profile is a JSON document (no pickles), built once after training and read by every
later drift check, so the checks never need the training data again. Per feature:

numeric
    ``edges``: cut points from the reference quantiles (``bins`` equal-frequency bins,
    duplicates removed, so a discrete or spiky feature gets fewer), bins right-closed,
    the outer ones open-ended: ``(-inf, e0], (e0, e1], ..., (e_last, +inf)``; ``counts``
    and ``shares`` per bin plus a last ``__missing__`` bucket (NaN, unparseable);
    ``summary`` (n, missing, mean, std, min, max, quantiles) and ``sample``: up to
    ``sample_size`` non-missing values drawn without replacement with a fixed seed,
    sorted, for the KS test.
categorical
    ``categories`` (the spec's categories first, then other seen values by frequency, at
    most ``max_categories``), then the ``__other__`` (values beyond the cap) and
    ``__missing__`` buckets, with ``counts`` and ``shares``. Values are compared as text
    (``1``, ``1.0`` and ``"1"`` are the same category).

The model's scores on the reference data, when given, are profiled as the numeric
feature ``__score__`` (prediction drift); with labels too, the reference ROC AUC is kept
with the rows (``n``) and ``positives`` it was measured on, so a drift check can count
the reference's own sampling error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.specs.drift import SCORE_FEATURE, DriftSpec, drift_spec

if TYPE_CHECKING:
    import pandas as pd

FORMAT = "factory-drift-profile"
FORMAT_VERSION = 1
OTHER, MISSING = "__other__", "__missing__"
SEED = 20261123
SUMMARY_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


class ProfileError(ValueError):
    """A profile that cannot be built, read or used; the message says which and why."""


# -- features -----------------------------------------------------------------------------


def normalize_features(features: Any, frame: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """Feature declarations as ``[{"name", "kind", "categories"}]``.

    Accepts a training manifest's ``features`` list (dicts with ``name`` and ``kind``),
    a mapping ``name -> kind``, or plain names (the kind then follows the frame's dtype:
    numbers are numeric, everything else categorical).
    """
    import pandas as pd

    if isinstance(features, Mapping):
        features = [{"name": k, "kind": v} for k, v in features.items()]
    out = []
    for f in features:
        if isinstance(f, str):
            if frame is None or f not in frame.columns:
                raise ProfileError(f"feature {f!r}: give its kind, or a frame with that column")
            dtype = frame[f].dtype
            numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
            f = {"name": f, "kind": "numeric" if numeric else "categorical"}
        name, kind = f.get("name"), f.get("kind")
        if not isinstance(name, str) or not name:
            raise ProfileError(f"feature declaration without a name: {f!r}")
        if kind not in ("numeric", "categorical"):
            raise ProfileError(f"feature {name!r}: kind must be numeric or categorical, got {kind!r}")
        if name == SCORE_FEATURE:
            raise ProfileError(f"{SCORE_FEATURE!r} is reserved for the model's scores")
        categories = f.get("categories")
        out.append({"name": name, "kind": kind, "categories": [str(c) for c in categories] if categories else None})
    names = [f["name"] for f in out]
    if len(set(names)) != len(names):
        raise ProfileError(f"duplicate feature names: {sorted({n for n in names if names.count(n) > 1})}")
    if not out:
        raise ProfileError("no features to profile")
    return out


def features_from_spec(spec: Any) -> list[dict[str, Any]]:
    """A line spec's model features, declared the way the training manifest does
    (a string field, or any field with categories, is categorical)."""
    out = []
    for f in spec.schema.features:
        categorical = f.type == "string" or f.categories is not None
        out.append({
            "name": f.name,
            "kind": "categorical" if categorical else "numeric",
            "categories": [str(c) for c in f.categories] if categorical and f.categories else None,
        })
    return out


def numeric_values(values: Any) -> np.ndarray:
    """A column as float64; missing and unparseable values become NaN."""
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    if pd.api.types.is_bool_dtype(series.dtype):
        series = series.astype("float64")
    elif not pd.api.types.is_numeric_dtype(series.dtype):
        series = pd.to_numeric(series, errors="coerce")
    return series.to_numpy(dtype="float64", na_value=np.nan)


def category_key(value: Any) -> str | None:
    """The text a value is compared as; ``None`` for missing (None, NaN, empty text)."""
    if value is None:
        return None
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            return str(int(value))
    if isinstance(value, bytes):
        value = value.decode()
    text = str(value)
    return text if text.strip() else None


def category_counts(values: Any) -> dict[str | None, int]:
    """Counts per category key (``None``: missing)."""
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object))
    counts: dict[str | None, int] = {}
    for value, count in series.value_counts(dropna=False, sort=False).items():
        key = category_key(value)
        counts[key] = counts.get(key, 0) + int(count)
    return counts


# -- building -----------------------------------------------------------------------------


def _round(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _numeric_profile(values: np.ndarray, bins: int, sample_size: int, rng: np.random.Generator) -> dict[str, Any]:
    finite = values[~np.isnan(values)]
    n, n_missing = len(values), int(len(values) - len(finite))
    if len(finite) == 0:
        raise ProfileError("has no non-missing values in the reference data")
    cuts = np.quantile(finite, np.arange(1, bins) / bins)
    edges = np.unique(cuts)
    counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1)
    counts = np.append(counts, n_missing)
    if len(finite) > sample_size:
        sample = np.sort(rng.choice(finite, size=sample_size, replace=False))
    else:
        sample = np.sort(finite)
    quantiles = np.quantile(finite, SUMMARY_QUANTILES)
    return {
        "kind": "numeric",
        "n": n,
        "edges": [float(e) for e in edges],
        "buckets": bin_labels(edges) + [MISSING],
        "counts": [int(c) for c in counts],
        "shares": [float(s) for s in counts / n],
        "summary": {
            "n": n,
            "missing": n_missing,
            "mean": _round(float(finite.mean())),
            "std": _round(float(finite.std(ddof=1))) if len(finite) > 1 else 0.0,
            "min": float(finite.min()),
            "max": float(finite.max()),
            "quantiles": {str(q): float(v) for q, v in zip(SUMMARY_QUANTILES, quantiles, strict=True)},
        },
        "sample": [float(v) for v in sample],
    }


def _categorical_profile(values: Any, declared: Sequence[str] | None, max_categories: int) -> dict[str, Any]:
    counts = category_counts(values)
    n = sum(counts.values())
    missing = counts.pop(None, 0)
    declared = list(declared or [])
    seen = sorted((k for k in counts if k not in set(declared)), key=lambda k: (-counts[k], k))
    kept = (declared + seen)[: max(max_categories, len(declared))]
    kept_set = set(kept)
    other = sum(c for k, c in counts.items() if k not in kept_set)
    bucket_counts = [counts.get(k, 0) for k in kept] + [other, missing]
    return {
        "kind": "categorical",
        "n": n,
        "categories": kept,
        "buckets": kept + [OTHER, MISSING],
        "counts": bucket_counts,
        "shares": [c / n if n else 0.0 for c in bucket_counts],
        "summary": {
            "n": n,
            "missing": missing,
            "distinct": len(counts),
            "other_values": sum(1 for k in counts if k not in kept_set),  # distinct values in __other__
        },
    }


def bin_labels(edges: Sequence[float]) -> list[str]:
    """Readable bucket names of numeric bins: ``<= 21``, ``(21, 35]``, ``> 60``."""
    e = [f"{x:.6g}" for x in edges]
    if not e:
        return ["all"]
    return [f"<= {e[0]}"] + [f"({a}, {b}]" for a, b in zip(e[:-1], e[1:], strict=True)] + [f"> {e[-1]}"]


def build_profile(
    frame: pd.DataFrame,
    features: Any,
    scores: Any = None,
    *,
    labels: Any = None,
    config: DriftSpec | dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    seed: int = SEED,
) -> dict[str, Any]:
    """The reference profile of ``frame`` (the model's training data), JSON-serialisable.

    ``features``: see :func:`normalize_features`. ``scores``: the model's scores on the
    same rows (array-like or a column name), profiled as ``__score__``. ``labels``: 0/1
    (or boolean) labels of those rows, for the reference ROC AUC. ``config``: the line's
    ``drift:`` section (bins, sample size, category cap). ``meta``: free-form facts kept
    in the profile (line, model version, run id), copied into every report.
    """
    from pipelines.monitoring.statistics import roc_auc

    cfg = drift_spec(config)
    declared = normalize_features(features, frame)
    missing = [f["name"] for f in declared if f["name"] not in frame.columns]
    if missing:
        raise ProfileError(f"the reference frame lacks feature column(s) {missing}")
    if len(frame) == 0:
        raise ProfileError("the reference frame is empty: nothing to profile")
    rng = np.random.default_rng(seed)
    profiled: dict[str, Any] = {}
    for f in declared:
        try:
            if f["kind"] == "numeric":
                profiled[f["name"]] = _numeric_profile(
                    numeric_values(frame[f["name"]]), cfg.bins, cfg.sample_size, rng
                )
            else:
                profiled[f["name"]] = _categorical_profile(frame[f["name"]], f["categories"], cfg.max_categories)
        except ProfileError as err:
            raise ProfileError(f"feature {f['name']!r} {err}") from None
    score_values = None
    if scores is not None:
        score_values = numeric_values(frame[scores] if isinstance(scores, str) else scores)
        if len(score_values) != len(frame):
            raise ProfileError(f"scores has {len(score_values)} values for {len(frame)} rows")
        profiled[SCORE_FEATURE] = _numeric_profile(score_values, cfg.bins, cfg.sample_size, rng)
    performance = None
    if labels is not None and score_values is not None:
        y = np.asarray(frame[labels] if isinstance(labels, str) else labels)
        if len(y) != len(frame):
            raise ProfileError(f"labels has {len(y)} values for {len(frame)} rows")
        ok = ~np.isnan(score_values)
        performance = {
            "auc": roc_auc(y[ok].astype(bool), score_values[ok]),
            # the rows and positives the AUC was measured on: its own standard error
            "n": int(ok.sum()),
            "positives": int(y[ok].astype(bool).sum()),
            "positive_rate": float(y.astype(bool).mean()) if len(y) else None,
            "labelled_rows": int(len(y)),
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "n": len(frame),
        "seed": seed,
        "settings": {"bins": cfg.bins, "sample_size": cfg.sample_size, "max_categories": cfg.max_categories},
        "features": profiled,
        "performance": performance,
        "meta": dict(meta or {}),
    }


def build_profile_from_run(
    run_dir: Path,
    scores: Any = None,
    *,
    labels: Any = None,
    config: DriftSpec | dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The profile of a training run's data: ``<run>/data/train/part-*.parquet`` with the
    features (name, kind, categories) of ``<run>/manifest.json``. ``scores``/``labels``
    must follow the shards' row order (``part-00000`` first, rows in file order)."""
    import pandas as pd

    run_dir = Path(run_dir)
    from pipelines.catalog.records import RecordError, read_manifest_data

    try:
        manifest = read_manifest_data(run_dir)
    except RecordError as err:
        raise ProfileError(f"training manifest: {err}") from None
    if manifest is None:
        raise ProfileError(f"no training manifest at {run_dir / 'manifest.json'}") from None
    from pipelines.catalog.layout import train_shards

    shards = train_shards(run_dir)
    if not shards:
        raise ProfileError(f"no training shards under {run_dir / 'data' / 'train'}")
    features = manifest.get("features") or []
    columns = [f["name"] for f in features]
    frame = pd.concat([pd.read_parquet(p, columns=columns) for p in shards], ignore_index=True)
    info = {"line": manifest.get("line"), "run_id": manifest.get("run_id"), "batches": manifest.get("batches")}
    info.update(meta or {})
    return build_profile(frame, features, scores, labels=labels, config=config, meta=info)


# -- files --------------------------------------------------------------------------------


def save_profile(profile: dict[str, Any], path: Path) -> Path:
    """Write a profile as JSON, atomically (temp file and rename). ``path`` may be a
    model version's folder: the file is then ``<folder>/drift_profile.json``."""
    from pipelines.catalog.layout import drift_profile_path
    from pipelines.storage import write_json_atomic

    path = drift_profile_path(path)
    check_profile(profile, str(path))
    try:
        write_json_atomic(path, profile, indent=None)
    except ValueError as err:  # NaN or infinity somewhere: the profile would not read back
        raise ProfileError(f"profile for {path} is not strict JSON: {err}") from None
    return path


def load_profile(path: Path) -> dict[str, Any]:
    """Read and check a profile; raises :class:`ProfileError` when it is missing, not
    JSON, or not a profile this code can use. ``path`` may be the model's folder."""
    from pipelines.catalog.layout import drift_profile_path

    path = drift_profile_path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ProfileError(f"no drift profile at {path} (was it saved after training?)") from None
    try:
        profile = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProfileError(f"drift profile {path} is corrupt (not valid JSON: {err})") from None
    check_profile(profile, str(path))
    return profile


def check_profile(profile: Any, where: str = "profile") -> None:
    """Structural checks, so a damaged profile fails here and not deep in the scoring."""
    if not isinstance(profile, dict) or profile.get("format") != FORMAT:
        raise ProfileError(f"{where} is not a drift profile (format {FORMAT!r} expected)")
    if profile.get("format_version") != FORMAT_VERSION:
        raise ProfileError(
            f"{where}: profile format version {profile.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    features = profile.get("features")
    if not isinstance(features, dict) or not features:
        raise ProfileError(f"{where}: the profile has no features")
    for name, f in features.items():
        problem = _feature_problem(f)
        if problem:
            raise ProfileError(f"{where}: feature {name!r}: {problem}")
    projection = profile.get("projection")
    if projection is not None:
        rows = projection.get("components") if isinstance(projection, dict) else None
        if (not isinstance(rows, list) or not rows or any(not isinstance(r, list) or len(r) != projection.get("dim")
                                                            for r in rows)
                or len(projection.get("mean") or []) != projection.get("dim")):
            raise ProfileError(f"{where}: the embedding projection's mean and components do not fit its dimension")


def _feature_problem(f: Any) -> str | None:
    if not isinstance(f, dict):
        return "not a mapping"
    counts, buckets = f.get("counts"), f.get("buckets")
    if not isinstance(counts, list) or not isinstance(buckets, list) or len(counts) != len(buckets):
        return "counts and buckets missing or of different lengths"
    if any(not isinstance(c, int) or c < 0 for c in counts):
        return "counts must be non-negative integers"
    if f.get("kind") == "numeric":
        edges, sample = f.get("edges"), f.get("sample")
        if not isinstance(edges, list) or len(counts) != len(edges) + 2:
            return "edges do not match the bins"
        if any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
            return "edges are not increasing"
        if not isinstance(sample, list):
            return "no reference sample"
    elif f.get("kind") == "categorical":
        if not isinstance(f.get("categories"), list) or len(counts) != len(f["categories"]) + 2:
            return "categories do not match the counts"
    else:
        return f"unknown kind {f.get('kind')!r}"
    return None
