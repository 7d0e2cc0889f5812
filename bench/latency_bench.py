"""Landing-to-retrain latency on the embedded default, measured as a user meets it.

    .venv/airflow/bin/python bench/latency_bench.py [--line credit_risk] [--runs 5]

Starts the factory runtime (``factory start``'s components) on a fresh factory home,
lands a first batch of the line's real rows and lets the factory take it through
(watcher -> ingest -> training -> gate -> serving); a model must serve before the
trials (a first model the gate does not bless is force-blessed through the REST API,
with a reason, as a person would). Then, ``--runs`` times, on an otherwise idle factory:

- lands a shifted batch of real rows (a slice the line has not seen, ``--shift``'s
  feature, by default income, moved up by half: drift the monitor must flag), and nothing else:
  no trigger, no API call;
- follows it: **landed** (t=0, when the landing call returned) -> **ingest queued** and
  **ingest started** (the ingest run the landing zone's watcher set off) ->
  **validated** (its validate task ended) -> **retrain started** (the training run its
  validated-data event set off: the lines train on new data, and a drift episode adopts
  that training) -> **scored** (the monitor's drift record of the batch);
- waits for that training and the monitor to finish before the next trial, so no
  trial queues behind another's training.

Trainings are capped at 2 epochs (``FACTORY_MAX_EPOCHS``): what is measured ends when
the retrain starts; the cap only shortens the wait between trials. Each trial also gets
the split of landed -> retrain started into the stages' own work and Airflow's share
(:mod:`pipelines.runtime.timing`). Prints medians and writes
``bench/results/latency.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe, host, write_results  # noqa: E402

API_PORT, SERVING_PORT, CONNECT_PORT = "18380", "18581", "18582"  # clear of the defaults and of the tests' ports


def _epoch(value: str | None) -> float | None:
    from pipelines.runtime.timing import epoch  # imported late: the factory home is set first

    return epoch(value)


def _wait(what: str, probe, timeout_s: float, poll_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _new_runs(client, dag_id: str, after: float) -> list[dict]:
    runs = [r for r in client.runs(dag_id, limit=20) if (_epoch(r.get("queued_at")) or 0) >= after - 0.5]
    return sorted(runs, key=lambda r: _epoch(r["queued_at"]))


def _idle(client, line: str) -> bool:
    """No run of the line's ingest or training is queued or running."""
    for dag_id in (f"ingest_{line}", f"train_{line}"):
        if any(r["state"] in ("queued", "running") for r in client.runs(dag_id, limit=10)):
            return False
    return True


def _settle(client, line: str, home: Path, batch_id: str | None, timeout_s: float = 1800) -> None:
    from pipelines.monitoring.stage import serving_model, unscored_batches

    _wait(f"{line}'s runs to finish", lambda: _idle(client, line), timeout_s, 2)
    if serving_model(line, home) is not None and batch_id:
        _wait(f"the monitor to score {batch_id}", lambda: batch_id not in unscored_batches(line, home), 600, 1)


def shifted_batch(source, rows: slice, feature: str):
    """Real rows, ``feature`` moved up by half (within the suites' bounds for income)."""
    frame = source.iloc[rows].copy()
    frame[feature] = frame[feature].astype(float) * 1.5
    return frame


def trial(client, spec, home: Path, frame, batch_id: str) -> dict[str, Any]:
    from pipelines.catalog.records import read_drift_history
    from pipelines.ingest import landing
    from pipelines.runtime import timing

    line = spec.name
    landing.land_frame(spec, frame, batch_id, home)
    t0 = time.time()
    ingest = _wait("the ingest run the watcher sets off", lambda: _new_runs(client, f"ingest_{line}", t0 - 5), 300)[0]

    def validated():
        for run in _new_runs(client, f"ingest_{line}", t0 - 5):
            for ti in client.task_instances(f"ingest_{line}", run["dag_run_id"]):
                if ti["task_id"] == "batch.validate" and ti["state"] == "success":
                    return ti
        return None

    validate = _wait(f"{batch_id} validated", validated, 900)
    ingest = client.run(f"ingest_{line}", ingest["dag_run_id"])  # first seen queued: now with its start
    train = _wait("the retrain its event sets off", lambda: [
        r for r in _new_runs(client, f"train_{line}", t0) if r.get("start_date")
    ], 900)[0]

    def scored():
        rec = {r["batch_id"]: r for r in read_drift_history(line, home, kind="batch")}.get(batch_id)
        return (rec, time.time()) if rec else None

    record, scored_at = _wait(f"{batch_id} scored", scored, 900)
    retrain_started = _epoch(train["start_date"])
    split = timing.line_overhead(client, line, t0, home, until=retrain_started)
    out = {
        "batch_id": batch_id,
        "rows": len(frame),
        "ingest_run_type": ingest["run_type"],
        "train_run_type": train["run_type"],
        "drifted": bool(record.get("drifted")),
        "drifted_features": [d["feature"] for d in record.get("drifted_features", [])],
        "seconds_after_landing": {
            "ingest_queued": round(_epoch(ingest["queued_at"]) - t0, 1),
            "ingest_started": round(_epoch(ingest["start_date"]) - t0, 1),
            "validated": round(_epoch(validate["end_date"]) - t0, 1),
            "retrain_started": round(retrain_started - t0, 1),
            "scored": round(scored_at - t0, 1),  # polled every 0.5 s
        },
        "to_retrain_started": split,
    }
    _settle(client, line, home, batch_id)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--line", default="credit_risk")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--rows", type=int, default=600, help="rows per shifted batch")
    p.add_argument("--base-rows", type=int, default=5000, help="rows of the first batch (the served model)")
    p.add_argument("--shift", default="annual_inc", help="the numeric feature the trials move up by half")
    p.add_argument("--home", help="factory home (default: a fresh temporary one)")
    args = p.parse_args(argv)
    machine = host()
    print(describe(machine), flush=True)
    home = Path(args.home or tempfile.mkdtemp(prefix="factory-latency-"))
    os.environ.update({
        "FACTORY_HOME": str(home),
        "FACTORY_API_PORT": API_PORT,
        "FACTORY_SERVING_PORT": SERVING_PORT,
        "FACTORY_SPARK_CONNECT_PORT": CONNECT_PORT,
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "FACTORY_MAX_EPOCHS": f"{args.line}=2",
    })
    from pipelines import runtime
    from pipelines.ingest.sources import load_source
    from pipelines.monitoring.stage import serving_model
    from pipelines.runtime import api
    from pipelines.specs import load_spec

    spec = load_spec(args.line)
    source = load_source(spec)
    numeric = [f.name for f in spec.schema_.fields if f.type in ("integer", "double")]
    if args.shift not in numeric:
        p.error(f"--shift {args.shift!r} is not a numeric field of {args.line}: {numeric}")
    need = args.base_rows + args.runs * args.rows
    if len(source) < need:
        p.error(f"{args.line} has {len(source)} rows; {need} needed")
    started = time.time()
    t = time.time()
    record = runtime.start(home, echo=lambda s: print(f"== {s}", flush=True))
    runtime_start_s = round(time.time() - t, 1)
    trials: list[dict[str, Any]] = []
    try:
        creds = runtime.admin()
        client = api.Client(record["url"], creds.username, creds.password)
        for dag in ("ingest", "train", "monitor"):
            client.unpause(f"{dag}_{args.line}")
        from pipelines.ingest import landing

        print(f"== {args.line}: the first batch ({args.base_rows} rows) -> a served model", flush=True)
        landing.land_frame(spec, source.iloc[: args.base_rows], "bench-base", home)
        _wait("the first batch's training", lambda: _new_runs(client, f"train_{args.line}", started), 900, 2)
        _settle(client, args.line, home, None)
        if serving_model(args.line, home) is None:
            print("   the gate blessed no first model: force-blessing one through the REST API", flush=True)
            run = client.trigger(f"train_{args.line}", {
                "force_bless": True, "force_bless_reason": "the latency benchmark's first served model",
            })
            client.wait(f"train_{args.line}", run["dag_run_id"], timeout_s=1800)
        if serving_model(args.line, home) is None:
            raise SystemExit("no model serves: cannot measure a retrain")
        _settle(client, args.line, home, "bench-base")
        for i in range(args.runs):
            lo = args.base_rows + i * args.rows
            frame = shifted_batch(source, slice(lo, lo + args.rows), args.shift)
            result = trial(client, spec, home, frame, f"bench-shift-{i + 1}")
            result["shifted_feature"] = args.shift
            trials.append(result)
            s = result["seconds_after_landing"]
            print(
                f"   trial {i + 1}: ingest started {s['ingest_started']:5.1f}s  validated {s['validated']:5.1f}s"
                f"  retrain started {s['retrain_started']:5.1f}s  scored {s['scored']:5.1f}s"
                f"  (Airflow {result['to_retrain_started']['overhead_share']:.0%} of it)",
                flush=True,
            )
    finally:
        runtime.stop(home, echo=lambda s: print(f"== {s}", flush=True))
    keys = trials[0]["seconds_after_landing"].keys() if trials else []
    medians = {k: round(statistics.median(t["seconds_after_landing"][k] for t in trials), 1) for k in keys}
    split_keys = ("wall_s", "work_s", "task_startup_s", "queued_s", "scheduling_s", "overhead_s")
    split = {k: round(statistics.median(t["to_retrain_started"][k] for t in trials), 1) for k in split_keys} if trials else {}
    print(f"\nmedian of {len(trials)} trials, seconds after landing: {medians}")
    print(f"landed -> retrain started, median split: {split}")
    command = ".venv/airflow/bin/python bench/latency_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_results("latency", command.strip(), machine, time.time() - started, {
        "line": args.line,
        "runtime_start_s": runtime_start_s,
        "median_seconds_after_landing": medians,
        "median_split_to_retrain_started": split,
        "trials": trials,
    })
    print(f"results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
