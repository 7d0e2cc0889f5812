"""Drift benchmark: the factory's drift scoring against TFDV's drift comparators and Evidently's
data-drift preset, in one run.

    .venv/airflow/bin/python bench/drift_bench.py [--rows 1000000] [--repeats 3] [--no-tfdv] [--no-evidently]

Data: the employment line's real rows (ACS Massachusetts), all 16 model features,
resampled with replacement to ``--rows`` rows with a fixed seed:

- ``reference``: the 2015 survey year (the "training data");
- ``2018``: the 2018 survey year (real change over three years; no alarm expected);
- ``2018_older``: 2018 drawn with probability proportional to age + 10, so the mean
  age rises about 10 years (real rows, shifted mix; an alarm on AGEP expected).

Each set is written once as plain Parquet under ``bench/results/data/`` and both sides
read the same files. Timed, median of ``--repeats``:

- factory (orchestration env, pandas 3): read the Parquet; ``build_profile`` of the
  reference; ``score_batch`` of each batch (PSI, JSD, L-inf and chi-square on every
  feature, KS on the numeric one, the decision);
- TFDV 1.16 (ML env, pandas 1.5, a subprocess running ``bench/drift_tfdv.py``):
  read; ``generate_statistics_from_dataframe`` of the reference and of each batch;
  ``validate_statistics`` with drift comparators (L-inf 0.2 on strings, JSD 0.1 on
  numbers);
- Evidently 0.7 (bench env ``.venv/bench``, ``scripts/setup.sh bench``; a subprocess running
  ``bench/drift_evidently.py``): read; ``Dataset.from_pandas`` with the spec's column kinds;
  ``Report([DataDriftPreset()]).run`` of each batch against the reference, twice: the
  preset's defaults (normed Wasserstein 0.1 on numbers, Jensen-Shannon distance 0.1 on
  categories) and PSI 0.2 on every column. Evidently keeps no profile: every check goes over
  the raw reference rows again.

Agreement: for each batch, the features each side calls drifted (factory: its decision,
effect AND test; TFDV: a comparator over its threshold; Evidently: a distance over its
threshold), and on how many of the features all of them give the same verdict.

The sides do different amounts of work: TFDV's statistics are a full descriptive
profile (quantiles, top-k, histograms, per-feature counts) computed on every batch,
the factory's scoring only what drift needs against a profile built once. The script
also checks that the two agree where they measure the same thing (the L-inf distance
of every categorical feature) and prints both JSD figures for AGEP (TFDV: its own
equal-width histogram; factory: the reference's quantile bins). Results:
``bench/results/drift.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys  # noqa: E402
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the clone's root first
from bench.machine import describe, host, timed  # noqa: E402
from bench.realdata import employment_frame  # noqa: E402
from pipelines.config import REPO_ROOT, ml_python  # noqa: E402
from pipelines.monitoring.detection import score_batch  # noqa: E402
from pipelines.monitoring.profile import build_profile, features_from_spec  # noqa: E402
from pipelines.specs import load_spec  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results"
DATA = RESULTS / "data"
SEED = 20261123
DATA_VERSION = 1
BATCHES = ("2018", "2018_older")


def machine() -> dict[str, Any]:
    import scipy

    return {
        **host(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scipy": scipy.__version__,
        "pyarrow": pa.__version__,
    }


def _write_plain(frame: pd.DataFrame, path: Path) -> None:
    """Parquet that pandas 1.5 / pyarrow 10 on the ML side reads: plain strings, no pandas metadata."""
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    fields = [pa.field(f.name, pa.string() if pa.types.is_large_string(f.type) else f.type) for f in table.schema]
    table = table.cast(pa.schema(fields)).replace_schema_metadata(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def datasets(rows: int, features: list[str], where: Path = DATA) -> dict[str, Path]:
    """The three Parquet files (built once per size and data version)."""
    paths = {name: where / f"drift_v{DATA_VERSION}_{name}_{rows}.parquet" for name in ("reference", *BATCHES)}
    if all(p.exists() for p in paths.values()):
        return paths
    frame = employment_frame()
    rng = np.random.default_rng(SEED)
    y2015 = frame[frame["year"] == 2015].reset_index(drop=True)
    y2018 = frame[frame["year"] == 2018].reset_index(drop=True)
    older = (y2018["AGEP"].to_numpy() + 10).astype("float64")
    draws = {
        "reference": y2015.iloc[rng.integers(0, len(y2015), rows)],
        "2018": y2018.iloc[rng.integers(0, len(y2018), rows)],
        "2018_older": y2018.iloc[rng.choice(len(y2018), size=rows, p=older / older.sum())],
    }
    for name, data in draws.items():
        _write_plain(data[features], paths[name])
    return paths




def run_factory(paths: dict[str, Path], declared: list[dict], repeats: int) -> dict[str, Any]:
    t = time.perf_counter()
    reference = pd.read_parquet(paths["reference"])
    read_s = time.perf_counter() - t
    profile, build_s, build_all = timed(lambda ref=reference: build_profile(ref, declared), repeats)
    out: dict[str, Any] = {
        "reference": {
            "rows": len(reference),
            "read_s": read_s,
            "profile_s": build_s,
            "profile_all_s": build_all,
            "profile_json_bytes": len(json.dumps(profile)),
        },
        "batches": {},
    }
    del reference
    for name in BATCHES:
        cur, read_s, _ = timed(lambda name=name: pd.read_parquet(paths[name]), 1)
        report, score_s, score_all = timed(lambda cur=cur: score_batch(profile, cur), repeats)
        out["batches"][name] = {
            "rows": len(cur),
            "read_s": read_s,
            "score_s": score_s,
            "score_all_s": score_all,
            "rows_per_s": len(cur) / score_s,
            "drifted": report["drifted_features"],
            "features": {
                n: {
                    "psi": f["metrics"]["psi"]["value"],
                    "jsd": f["metrics"]["jsd"]["value"],
                    "linf": f["metrics"]["linf"]["value"],
                    "pvalue": f["pvalue"],
                    "drifted": f["drifted"],
                }
                for n, f in report["features"].items()
            },
        }
        del cur
    return out


def run_peer(python: Path, script: str, paths: dict[str, Path], args: list[str],
             batches: tuple[str, ...] = BATCHES) -> dict[str, Any]:
    """``bench/<script>`` in another environment on the same files; its JSON with the wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        cmd = [str(python), str(REPO_ROOT / "bench" / script), "--ref", str(paths["reference"]),
               "--cur", *[str(paths[b]) for b in batches], *args, "--out", str(out)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            return {"failed": proc.stderr[-3000:]}
        result = json.loads(out.read_text())
    result["subprocess_wall_s"] = wall
    result["batches"] = {name: result["batches"][paths[name].name] for name in batches}
    return result


def run_tfdv(paths: dict[str, Path], repeats: int) -> dict[str, Any]:
    python = ml_python()
    if not Path(python).exists():
        return {"skipped": f"no ML environment at {python}"}
    return run_peer(Path(python), "drift_tfdv.py", paths, ["--repeats", str(repeats)])


def bench_python() -> Path:
    return REPO_ROOT / ".venv" / "bench" / "bin" / "python"


def run_evidently(paths: dict[str, Path], declared: list[dict], repeats: int,
                  batches: tuple[str, ...] = BATCHES) -> dict[str, Any]:
    """``bench/drift_evidently.py`` in the bench environment, on the same files."""
    python = bench_python()
    if not python.exists():
        return {"skipped": "no bench environment (.venv/bench): run scripts/setup.sh bench"}
    kinds = {k: ",".join(f["name"] for f in declared if f["kind"] == k) for k in ("numeric", "categorical")}
    return run_peer(python, "drift_evidently.py", paths, ["--numeric", kinds["numeric"],
                    "--categorical", kinds["categorical"], "--repeats", str(repeats)], batches)


def verdicts(factory: dict[str, Any], tfdv: dict[str, Any], evidently: dict[str, Any]) -> dict[str, Any]:
    """Per batch: the features each side calls drifted, and the features where all sides agree."""
    out = {}
    for name in BATCHES:
        features = sorted(factory["batches"][name]["features"])
        sides = {"factory": {f for f, v in factory["batches"][name]["features"].items() if v["drifted"]}}
        if "batches" in tfdv:
            sides["tfdv"] = {f for f, t in tfdv["batches"][name]["drift"].items() if t["drifted"]}
        if "batches" in evidently:
            for config, r in evidently["batches"][name]["configs"].items():
                sides[f"evidently_{config}"] = set(r["drifted"])
        agree = [f for f in features if len({f in drifted for drifted in sides.values()}) == 1]
        out[name] = {
            "drifted": {side: sorted(d) for side, d in sides.items()},
            "features": len(features),
            "all_agree_on": len(agree),
            "disagree_on": sorted(set(features) - set(agree)),
        }
    return out


def agreement(factory: dict[str, Any], tfdv: dict[str, Any]) -> dict[str, Any]:
    """Where both measure the same thing: L-inf of each categorical feature."""
    out = {}
    for name in BATCHES:
        ours, theirs = factory["batches"][name]["features"], tfdv["batches"][name]["drift"]
        diffs = {f: abs(ours[f]["linf"] - t["value"]) for f, t in theirs.items() if t["method"] == "linf"}
        out[name] = {
            "linf_features_compared": len(diffs),
            "linf_max_abs_diff": max(diffs.values()) if diffs else None,
            "agep_jsd": {"factory_quantile_bins": ours["AGEP"]["jsd"], "tfdv_histogram": theirs["AGEP"]["value"]},
            "drifted_factory": [d["feature"] for d in factory["batches"][name]["drifted"]],
            "drifted_tfdv": sorted(f for f, t in theirs.items() if t["drifted"]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-tfdv", action="store_true", help="leave TFDV out")
    parser.add_argument("--no-evidently", action="store_true", help="leave Evidently out")
    args = parser.parse_args()

    spec = load_spec("employment")
    declared = features_from_spec(spec)
    names = [f["name"] for f in declared]
    info = machine()
    print(describe(info))
    t = time.perf_counter()
    paths = datasets(args.rows, names)
    print(f"data: {args.rows:,} rows x {len(names)} features per set ({time.perf_counter() - t:.1f} s to prepare)")

    factory = run_factory(paths, declared, args.repeats)
    tfdv = {"skipped": "--no-tfdv"} if args.no_tfdv else run_tfdv(paths, args.repeats)
    have_tfdv = "batches" in tfdv
    evidently = {"skipped": "--no-evidently"} if args.no_evidently else run_evidently(paths, declared, args.repeats)
    have_ev = "batches" in evidently

    ref_f, ref_t = factory["reference"], tfdv.get("reference", {})

    def cell(x: float | None) -> str:
        return f"{x:10.2f}" if isinstance(x, float) else f"{'-':>10}"

    def best(values: list[float] | None) -> float | None:
        return min(values) if values else None

    print()
    print(f"{'step (' + format(args.rows, ',') + f' rows; median and best of {args.repeats})':<58}"
          f"{'factory':>10}{'best':>10}  {'TFDV':>10}{'best':>10}")
    print(f"{'read Parquet: reference':<58}{cell(ref_f['read_s'])}{'':>10}  {cell(ref_t.get('read_s'))}")
    print(f"{'reference profile / statistics, s':<58}{cell(ref_f['profile_s'])}{cell(best(ref_f['profile_all_s']))}  "
          f"{cell(ref_t.get('statistics_s'))}{cell(best(ref_t.get('statistics_all_s')))}")
    for name in BATCHES:
        b_f = factory["batches"][name]
        b_t = tfdv["batches"][name] if have_tfdv else {}
        check = (b_t["statistics_s"] + b_t["validate_s"]) if have_tfdv else None
        check_best = (min(b_t["statistics_all_s"]) + b_t["validate_s"]) if have_tfdv else None
        print(f"{'batch ' + name + ': read Parquet, s':<58}{cell(b_f['read_s'])}{'':>10}  {cell(b_t.get('read_s'))}")
        print(f"{'batch ' + name + ': drift check (score / stats+validate), s':<58}{cell(b_f['score_s'])}"
              f"{cell(best(b_f['score_all_s']))}  {cell(check)}{cell(check_best)}")
        rate_t = f"{b_t['rows'] / check:>10,.0f}{b_t['rows'] / check_best:>10,.0f}" if have_tfdv else f"{'-':>10}"
        print(f"{'batch ' + name + ': rows/s of the drift check':<58}{b_f['rows_per_s']:>10,.0f}"
              f"{b_f['rows'] / best(b_f['score_all_s']):>10,.0f}  {rate_t}")
    if have_tfdv:
        print(f"{'TFDV import (once per process), s':<58}{'':>20}  {cell(tfdv['import_s'])}")
        agree = agreement(factory, tfdv)
        print()
        for name, a in agree.items():
            print(f"batch {name}: drifted (factory) {a['drifted_factory'] or 'none'}; "
                  f"over threshold (TFDV) {a['drifted_tfdv'] or 'none'}")
            print(f"  L-inf of {a['linf_features_compared']} categorical features: max |factory - TFDV| = "
                  f"{a['linf_max_abs_diff']:.2e}")
            print(f"  AGEP JSD: factory {a['agep_jsd']['factory_quantile_bins']:.4f} (quantile bins), "
                  f"TFDV {a['agep_jsd']['tfdv_histogram']:.4f} (its histogram)")
    else:
        agree = None
        print(f"TFDV: {tfdv}")
    if have_ev:
        print()
        ref_e = evidently["reference"]
        print(f"Evidently {evidently['evidently']} (pandas {evidently['pandas']}): import {evidently['import_s']:.1f} s, "
              f"reference read {ref_e['read_s']:.2f} s, Dataset.from_pandas {ref_e['dataset_s']:.2f} s "
              "(no profile: every check reads the reference rows again)")
        for name in BATCHES:
            b = evidently["batches"][name]
            for config, r in b["configs"].items():
                print(f"  batch {name}, {config}: Report.run {r['run_s']:.2f} s (best {min(r['run_all_s']):.2f}), "
                      f"{r['rows_per_s']:,.0f} rows/s; Dataset.from_pandas {b['dataset_s']:.2f} s; "
                      f"drifted {r['drifted'] or 'none'}")
    else:
        print(f"Evidently: {evidently}")
    agree_all = verdicts(factory, tfdv, evidently)
    print()
    for name, v in agree_all.items():
        sides = "; ".join(f"{side} {d or 'none'}" for side, d in v["drifted"].items())
        print(f"batch {name}: drifted: {sides}")
        print(f"  all {len(v['drifted'])} sides agree on {v['all_agree_on']} of {v['features']} features"
              + (f"; differ on {v['disagree_on']}" if v["disagree_on"] else ""))

    result = {
        "machine": info,
        "rows": args.rows,
        "features": names,
        "repeats": args.repeats,
        "data_version": DATA_VERSION,
        "factory": factory,
        "tfdv": tfdv,
        "agreement": agree,
        "evidently": evidently,
        "verdicts": agree_all,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "drift.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"load average at end {result['load_average_at_end']}")
    print(f"results: {RESULTS / 'drift.json'}")


if __name__ == "__main__":
    main()
