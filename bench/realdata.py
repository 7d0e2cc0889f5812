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
