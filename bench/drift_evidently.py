"""Evidently side of the drift benchmark; runs in the bench environment (``.venv/bench``:
Evidently 0.7, pandas 2; ``scripts/setup.sh bench``).

    .venv/bench/bin/python bench/drift_evidently.py --ref REF.parquet --cur A.parquet [B.parquet] \
        --numeric AGEP,... --categorical SCHL,... [--repeats 3] --out OUT.json

Called by ``bench/drift_bench.py`` on the same Parquet files the factory and TFDV score. The
column kinds are the spec's (``--numeric``, ``--categorical``), given to Evidently in a
``DataDefinition`` so that it does not guess them. Per configuration, on every current batch,
a ``Report`` of Evidently's ``DataDriftPreset`` is run against the reference:

- ``defaults``: the preset as it comes. Above 1,000 rows it picks the normed Wasserstein
  distance (threshold 0.1) for numeric columns and the Jensen-Shannon distance (threshold
  0.1; the square root of the divergence, natural log) for categorical ones;
- ``psi``: every column by PSI with threshold 0.2, the factory's PSI threshold (Evidently bins
  a numeric column itself; categories are the values seen).

A column drifts when its distance reaches the threshold (both methods are distances: no
p-values). Evidently keeps no reference profile: each report goes over the raw reference
rows again, so its check time includes the reference side. Timed, median of ``--repeats``:
reading the Parquet, ``Dataset.from_pandas`` of the reference and of each batch, and
``Report.run``. Writes the timings and each column's method, value, threshold and verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the clone's root first
from bench.machine import timed  # noqa: E402

warnings.filterwarnings("ignore")

CONFIGS = {
    "defaults": {},
    "psi": {"method": "psi", "threshold": 0.2},
}




def columns_of(snapshot) -> dict[str, dict]:
    """Each column's drift from a snapshot: method, value, threshold, drifted."""
    out = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        value, threshold = float(metric["value"]), float(config["threshold"])
        out[config["column"]] = {"method": config["method"], "value": value, "threshold": threshold,
                                 "drifted": value >= threshold}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True)
    parser.add_argument("--cur", required=True, nargs="+")
    parser.add_argument("--numeric", default="", help="comma list of the numeric columns")
    parser.add_argument("--categorical", default="", help="comma list of the categorical columns")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    numeric = [c for c in args.numeric.split(",") if c]
    categorical = [c for c in args.categorical.split(",") if c]
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown or not configs:
        parser.error(f"--configs: unknown {unknown}, choose from {sorted(CONFIGS)}")
    if not numeric + categorical:
        parser.error("name the columns: --numeric and/or --categorical")

    t = time.perf_counter()
    import evidently
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    import_s = time.perf_counter() - t
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    out = {"evidently": evidently.__version__, "pandas": pd.__version__, "import_s": import_s,
           "configs": {name: CONFIGS[name] for name in configs}, "batches": {}}

    t = time.perf_counter()
    reference = pd.read_parquet(args.ref, columns=numeric + categorical)
    read_s = time.perf_counter() - t
    ref_data, dataset_s, dataset_all = timed(
        lambda: Dataset.from_pandas(reference, data_definition=definition), args.repeats)
    out["reference"] = {"rows": len(reference), "read_s": read_s, "dataset_s": dataset_s,
                        "dataset_all_s": dataset_all}
    for path in args.cur:
        cur, read_s, _ = timed(lambda path=path: pd.read_parquet(path, columns=numeric + categorical), 1)
        cur_data, dataset_s, _ = timed(lambda cur=cur: Dataset.from_pandas(cur, data_definition=definition), 1)
        batch = {"rows": len(cur), "read_s": read_s, "dataset_s": dataset_s, "configs": {}}
        for name in configs:
            preset = DataDriftPreset(**CONFIGS[name])
            snapshot, run_s, run_all = timed(
                lambda preset=preset, cur_data=cur_data: Report([preset]).run(
                    current_data=cur_data, reference_data=ref_data),
                args.repeats)
            cols = columns_of(snapshot)
            missing = sorted(set(numeric + categorical) - set(cols))
            if missing:
                raise SystemExit(f"Evidently reported no drift for {missing} ({name})")
            batch["configs"][name] = {
                "run_s": run_s, "run_all_s": run_all, "rows_per_s": len(cur) / run_s,
                "columns": cols, "drifted": sorted(c for c, v in cols.items() if v["drifted"]),
            }
        out["batches"][os.path.basename(path)] = batch
        del cur, cur_data
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
