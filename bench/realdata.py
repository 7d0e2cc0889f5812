"""The real data sets, shaped like cleaned batches, for tests and benchmarks.

The data comes through the product's own loader (:func:`pipelines.ingest.sources.load_source`)
and is cut into the batches ``factory drop`` lands (:func:`pipelines.ingest.landing.source_batches`).

A cleaned batch has exactly the spec's fields in spec order; integer fields are
int64, doubles float64 and strings Python strings (pandas' ``str`` dtype).
Nothing is downloaded: the data ships inside installed packages.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.ingest.landing import source_batches
from pipelines.ingest.sources import load_source
from pipelines.specs import LineSpec, load_spec

DTYPES = {"integer": "int64", "double": "float64", "string": "str"}
EMPLOYMENT_YEARS = (2015, 2016, 2017, 2018)
CREDIT_RISK_SLICES = 4


def cast_like_clean(frame: pd.DataFrame, spec: LineSpec) -> pd.DataFrame:
    """The spec's columns, in spec order, with the types cleaning produces."""
    out = frame[spec.schema.names].copy()
    for f in spec.schema.fields:
        if f.type == "string":
            out[f.name] = out[f.name].astype(str).astype("str")
        else:
            out[f.name] = out[f.name].astype(DTYPES[f.type])
    return out.reset_index(drop=True)


def with_provenance(frame: pd.DataFrame, spec: LineSpec) -> pd.DataFrame:
    """``frame`` as cleaning writes a batch of a line with ``labelling:``: the label
    provenance columns after the spec's fields (``given`` where the label is present)."""
    from pipelines.labelling import GIVEN, LABEL_CONFIDENCE, LABEL_MODEL, LABEL_SOURCE

    if spec.labelling is None:
        return frame
    out = frame.copy()
    labelled = out[spec.schema.label.name].notna()
    out[LABEL_SOURCE] = pd.Series(np.where(labelled, GIVEN, None), index=out.index, dtype="str")
    out[LABEL_MODEL] = pd.Series(None, index=out.index, dtype="str")
    out[LABEL_CONFIDENCE] = pd.Series(np.nan, index=out.index, dtype="float64")
    return out


@lru_cache(maxsize=2)
def _source(line: str) -> pd.DataFrame:
    """The line's real data through the product's own loader, typed like cleaned rows."""
    spec = load_spec(line)
    return cast_like_clean(load_source(spec), spec)


def _batches(line: str) -> dict[str, pd.DataFrame]:
    """The real batches as ``factory drop`` lands them (:func:`pipelines.ingest.landing.source_batches`)."""
    return source_batches(load_spec(line), _source(line))


def lending_club_frame(slice_no: int | None = None, slices: int = CREDIT_RISK_SLICES) -> pd.DataFrame:
    """Lending Club loans (9,857 rows), or one of the line's contiguous slices (1-based)."""
    if slice_no is None:
        return _source("credit_risk").copy()
    if slices != CREDIT_RISK_SLICES or not 1 <= slice_no <= slices:
        raise ValueError(f"slice_no must be in 1..{CREDIT_RISK_SLICES}")
    return _batches("credit_risk")[f"slice-{slice_no}"].reset_index(drop=True)


def employment_frame(year: int | None = None) -> pd.DataFrame:
    """ACS employment, Massachusetts: all 277,677 people, or one survey year (2015-2018)."""
    if year is None:
        return _source("employment").copy()
    if year not in EMPLOYMENT_YEARS:
        raise ValueError(f"year must be one of {EMPLOYMENT_YEARS}")
    return _batches("employment")[str(year)].reset_index(drop=True)


def make_validated_batch(home: Path, line: str, batch_id: str, frame: pd.DataFrame) -> None:
    """A batch as the ingest stage leaves it: clean Parquet and a validated ledger record."""
    from pipelines.catalog import ledger
    from pipelines.catalog.layout import line_paths

    paths = line_paths(line, home)
    out = paths.clean_batch(batch_id)
    out.mkdir(parents=True)
    frame.to_parquet(out / "part-0.parquet", index=False)
    ledger.update(
        paths,
        batch_id,
        "validated",
        status=ledger.VALIDATED,
        landed_at=ledger.now(),
        cleaning={"clean_path": str(out), "rows_clean": len(frame)},
    )


# -- shifted samples of real rows (the drift docs' shifts) -----------------------------------


def weighted_sample(weights: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Row indices drawn WITHOUT replacement with probability proportional to ``weights``
    (Efraimidis-Spirakis: the ``size`` largest ``log(u) / w``)."""
    w = np.asarray(weights, dtype="float64")
    u = np.random.default_rng(seed).random(len(w))
    keys = np.log(u) / np.maximum(w, 1e-300)
    return np.sort(np.argpartition(-keys, size - 1)[:size])


def tilt_to(
    frame: pd.DataFrame, size: int, seed: int, weight_fn, measure, target: float
) -> tuple[pd.DataFrame, float]:
    """The sample whose ``measure`` is closest to ``target``, bisecting the tilt parameter
    (same seed throughout, so the draws differ only by the weights)."""
    lo, hi = 0.0, 1.0
    while measure(frame.iloc[weighted_sample(weight_fn(hi), size, seed)]) < target and hi < 1e3:
        lo, hi = hi, hi * 2
    for _ in range(40):
        mid = (lo + hi) / 2
        if measure(frame.iloc[weighted_sample(weight_fn(mid), size, seed)]) < target:
            lo = mid
        else:
            hi = mid
    idx = weighted_sample(weight_fn(hi), size, seed)
    return frame.iloc[idx].reset_index(drop=True), hi


def label_rate_sample(
    frame: pd.DataFrame, label: str, positive: Any, rate: float, size: int, seed: int
) -> pd.DataFrame:
    """``size`` rows without replacement, a share ``rate`` of them positive, uniform within
    each class (P(features | label) unchanged)."""
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero((frame[label].astype(str) == str(positive)).to_numpy())
    neg = np.flatnonzero((frame[label].astype(str) != str(positive)).to_numpy())
    n_pos = round(rate * size)
    if n_pos > len(pos) or size - n_pos > len(neg):
        raise ValueError(f"not enough rows for a {rate:.0%} positive batch of {size}")
    idx = np.concatenate(
        [rng.choice(pos, n_pos, replace=False), rng.choice(neg, size - n_pos, replace=False)]
    )
    return frame.iloc[np.sort(idx)].reset_index(drop=True)
