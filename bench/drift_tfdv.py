"""TFDV side of the drift benchmark; runs in the ML environment (TFDV 1.16, pandas 1.5).

    .venv/ml/bin/python bench/drift_tfdv.py --ref REF.parquet --cur A.parquet [B.parquet] --out OUT.json

Called by ``bench/drift_bench.py`` on the same Parquet files the factory scores. Per file:
read with pandas, ``tfdv.generate_statistics_from_dataframe`` (the in-process path, no
Beam), then for each current batch ``tfdv.validate_statistics`` against the reference
statistics with drift comparators on every feature: L-infinity (threshold 0.2) for the
string features, Jensen-Shannon divergence (0.1) for the numeric ones, the factory's
default thresholds. Writes timings (median of ``--repeats``) and the drift measurements.
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True)
    parser.add_argument("--cur", required=True, nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    t = time.perf_counter()
    import pandas as pd
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    import_s = time.perf_counter() - t

    out = {"tfdv": tfdv.__version__, "pandas": pd.__version__, "import_s": import_s, "batches": {}}
    t = time.perf_counter()
    reference = pd.read_parquet(args.ref)
    read_s = time.perf_counter() - t
    ref_stats, stats_s, stats_all = timed(
        lambda ref=reference: tfdv.generate_statistics_from_dataframe(ref), args.repeats
    )
    out["reference"] = {"rows": len(reference), "read_s": read_s, "statistics_s": stats_s, "statistics_all_s": stats_all,
                        "statistics_bytes": ref_stats.ByteSize()}
    schema = tfdv.infer_schema(ref_stats)
    for feature in schema.feature:
        if feature.type == schema_pb2.BYTES:
            feature.drift_comparator.infinity_norm.threshold = 0.2
        else:
            feature.drift_comparator.jensen_shannon_divergence.threshold = 0.1
    del reference
    for path in args.cur:
        cur, read_s, _ = timed(lambda path=path: pd.read_parquet(path), 1)
        cur_stats, stats_s, stats_all = timed(lambda cur=cur: tfdv.generate_statistics_from_dataframe(cur),
                                              args.repeats)
        anomalies, validate_s, _ = timed(
            lambda cur_stats=cur_stats: tfdv.validate_statistics(cur_stats, schema, previous_statistics=ref_stats),
            args.repeats,
        )
        drift = {}
        for info in anomalies.drift_skew_info:
            name = ".".join(info.path.step)
            for m in info.drift_measurements:
                kind = {"L_INFTY": "linf", "JENSEN_SHANNON_DIVERGENCE": "jsd"}.get(type(m).Type.Name(m.type), "other")
                drift[name] = {"method": kind, "value": m.value, "threshold": m.threshold,
                               "drifted": m.value >= m.threshold}
        out["batches"][os.path.basename(path)] = {
            "rows": len(cur),
            "read_s": read_s,
            "statistics_s": stats_s,
            "statistics_all_s": stats_all,
            "validate_s": validate_s,
            "drift": drift,
            "anomalies": sorted(anomalies.anomaly_info.keys()),
        }
        del cur
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
