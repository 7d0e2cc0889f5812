"""``factory``: what people do by hand.

    factory lines                       list the product lines (and check their specs)
    factory drop LINE [--batch ID ...]  land the line's real batches (replayed arrivals)
    factory drop LINE --file F --as ID  land a file of your own as batch ID
    factory status [LINE]               where every batch stands, with its counts
    factory run [LINE ...]              the whole line: start Airflow, land real batches,
                                        trigger ingestion through the REST API, follow the
                                        runs it sets off (training), print a summary, stop
    factory start | stop                the runtime (Airflow's API server + UI, scheduler, ...,
                                        and the model server)
    factory trigger DAG [--conf JSON]   trigger a DAG through the REST API
    factory rollback LINE               serve the previous model version again
    factory labels LINE --file F        attach labels (request_id[,instance],label) to logged
                                        predictions, by request id

One module for one command: the sub-commands share their argument parser, the output
helpers and the follow-the-runs loop of ``factory run``, which is what makes it long.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipelines import storage
from pipelines.catalog import ledger
from pipelines.catalog.layout import exported_model, line_paths, training_log_path
from pipelines.catalog.records import latest_training_run, read_drift_history
from pipelines.config import factory_home
from pipelines.ingest import landing
from pipelines.serving.predlog import LabelError
from pipelines.specs import SpecError, load_spec, load_specs


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cmd_lines(args: argparse.Namespace) -> int:
    for spec in load_specs():
        s = spec.schema
        _out(
            f"{spec.name:<14} v{spec.version}  {spec.task:<22} {len(s.features):>2} features, "
            f"label {s.label.name}, source {spec.source.kind}  - {spec.description}"
        )
    return 0


def cmd_drop(args: argparse.Namespace) -> int:
    spec = load_spec(args.line)
    if args.file:
        if not args.as_batch:
            raise landing.LandingError("--file needs --as BATCH_ID")
        results = [landing.land_file(spec, Path(args.file), args.as_batch)]
    else:
        results = landing.replay(spec, only=args.batch or None)
    for r in results:
        verb = "landed" if r.created else "already landed (same content)"
        _out(f"{r.line}/{r.batch_id}: {verb} -> {r.path}")
    return 0


def _row(r: dict) -> str:
    c = r.get("cleaning") or {}
    v = r.get("validation") or {}
    verdict = "" if not v else ("passed" if v.get("success") else f"{len(v.get('failed', []))} failed")
    counts = (
        f"{c.get('rows_in', ''):>8} {c.get('rows_clean', ''):>8} {c.get('rows_quarantined', ''):>6} "
        f"{c.get('duplicates_removed', ''):>6}"
    )
    return f"  {r['batch_id']:<12} {r.get('status', '?'):<10} {counts}  {verdict:<10} {r.get('error') or ''}"


def _table(line: str) -> list[str]:
    records = ledger.all_records(line_paths(line))
    rows = [f"{line}:", f"  {'batch':<12} {'status':<10} {'rows in':>8} {'clean':>8} {'quar.':>6} {'dups':>6}  validation"]
    rows += [_row(r) for r in records] or ["  (no batches landed)"]
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    lines = [args.line] if args.line else [s.name for s in load_specs()]
    for line in lines:
        load_spec(line)
        for row in _table(line):
            _out(row)
    return 0


def _follow_ledger(line: str, seen: dict[str, str]) -> None:
    """Print each batch's status changes."""
    for r in ledger.all_records(line_paths(line)):
        status = r.get("status", "?")
        if seen.get(r["batch_id"]) != status:
            seen[r["batch_id"]] = status
            _out(f"  {line}/{r['batch_id']}: {status}" + (f" ({r['error']})" if r.get("error") else ""))


def _client():
    from pipelines import runtime
    from pipelines.runtime import api

    creds = runtime.admin()
    return api.Client(runtime.base_url(), creds.username, creds.password)


def _task_printer(prefix: str):
    printed: set[tuple] = set()

    def on_change(run: dict, tis: list[dict]) -> None:
        for t in sorted(tis, key=lambda t: (t.get("start_date") or "", t["task_id"], t.get("map_index", -1))):
            state_ = t.get("state")
            key = (t["task_id"], t.get("map_index", -1), state_)
            if state_ in ("running", "success", "failed", "skipped", "upstream_failed") and key not in printed:
                printed.add(key)
                index = f"[{t['map_index']}]" if t.get("map_index", -1) >= 0 else ""
                _out(f"  {prefix} {t['task_id']}{index}: {state_}")

    return on_change


def _await_asset_run(client, dag_id: str, after: str, timeout_s: float = 120) -> dict | None:
    """The run of ``dag_id`` that an asset event created after ``after`` (ISO time)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for run in client.runs(dag_id):
            if run.get("run_type") == "asset_triggered" and (run.get("run_after") or "") >= after:
                return run
        time.sleep(2)
    return None


def _print_training_progress(line: str, started: float, printed: list[int]) -> None:
    """Print the workers' per-epoch progress lines not printed yet."""
    run = latest_training_run(line, since=started)
    log = training_log_path(Path(run.path)) if run else None
    if log and log.exists():
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "factory-train:" in ln]
        for ln in lines[printed[0] :]:
            _out("    " + ln.split("factory-train:", 1)[1].strip())
        printed[0] = len(lines)


def _model_rows(line: str, home: Path) -> list[str]:
    run = latest_training_run(line, home)
    if run is None or run.result is None:
        return ["  model: none trained"]
    result, manifest = run.result, run.manifest
    # the early-stopping metric of the run's task: ROC AUC (binary) or accuracy (multiclass)
    name, value = next(
        ((n, result.get(k)) for k, n in (("val_auc", "val ROC AUC"), ("val_accuracy", "val accuracy"))
         if result.get(k) is not None),
        ("val metric", float("nan")),
    )
    rows = [
        f"  model: {name} {value:.4f}, {result.get('epochs_run')} epochs "
        f"(best {result.get('best_epoch')}), {result.get('workers')} Horovod workers, "
        f"{result.get('samples_per_s', 0):.0f} samples/s, trained on {manifest['rows']['train']} rows "
        f"of batches {', '.join(manifest['batches'])}",
        f"  SavedModel: {exported_model(Path(run.path))}  (MLflow run {run.mlflow_run_id or '?'})",
    ]
    ev = run.evaluation
    if ev is not None:
        overall = ((ev.get("metrics") or {}).get("Overall") or {}).get("candidate") or {}
        # (per-class metrics, named class/slice, are in the report)
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in overall.items() if isinstance(v, float) and "/" not in k)
        serving = ev.get("serving") or {}
        registry = ev.get("registry") or {}
        rows.append(f"  evaluation: {ev.get('blessing')} ({ev.get('why') or ev.get('blessed_on') or ''}); {metrics}")
        rows.append(
            f"  serving: version {serving.get('version', '-')} at {serving.get('path', '-')}; registry "
            f"{registry.get('name', '-')} v{registry.get('version', '-')}"
            + (" = champion" if registry.get("champion") else "")
        )
    else:
        rows.append("  evaluation: not run")
    scored = read_drift_history(line, home, kind="batch")
    if scored:
        drifted = [r["batch_id"] for r in scored if r.get("drifted")]
        rows.append(
            f"  drift: {len(scored)} batch(es) scored against the serving model, "
            + (f"drift in {drifted}" if drifted else "no drift alarm")
        )
    else:
        rows.append("  drift: no batch scored yet")
    return rows


def _follow_runs(client, dag_id: str, after: str, *, quiet_s: float, timeout_s: float, on_change=None) -> list[dict]:
    """Follow every run of ``dag_id`` that starts after ``after`` (ISO time) until none is
    left queued or running and none new appeared for ``quiet_s``; returns them, oldest first."""
    deadline = time.time() + timeout_s
    followed: dict[str, dict] = {}
    idle_since = time.time()
    while time.time() < deadline:
        # a run counts if it was still going when the job began: a scheduled run's
        # run_after is its slot, which can be earlier than the moment it took the work
        runs = [r for r in client.runs(dag_id, limit=50) if (r.get("end_date") or "9999") >= after]
        fresh = [r for r in runs if r["dag_run_id"] not in followed]
        for run in sorted(fresh, key=lambda r: r.get("run_after") or ""):
            _out(f"  {dag_id}: run {run['dag_run_id']} ({run.get('run_type')})")
            final = client.wait(dag_id, run["dag_run_id"], timeout_s=max(60.0, deadline - time.time()), poll_s=5,
                                on_change=on_change)
            _out(f"  {dag_id}: {final['state']}")
            followed[run["dag_run_id"]] = final
            idle_since = time.time()
        if not fresh and time.time() - idle_since > quiet_s:
            break
        time.sleep(3)
    return sorted(followed.values(), key=lambda r: r.get("run_after") or "")


def _run_line(client, spec, home: Path, batches: list[str] | None = None, timings: dict | None = None) -> bool:
    """Land (every real batch, or the ones named), ingest (triggered through the REST API) and follow what it sets off: training
    (scheduled by the validated-data Asset) and the drift monitor. True if all succeeded."""
    from datetime import UTC, datetime

    line = spec.name
    started_at = datetime.now(UTC).isoformat()
    _out(f"== {line}: landing real batches")
    # The landing zone's watcher sets off an ingest run per batch it sees: paused, the
    # ingest DAG takes every batch landed here in one run (one training, not one per batch).
    client.pause(f"ingest_{line}")
    for r in landing.replay(spec, home, batches):
        _out(f"  {r.batch_id}: {'landed' if r.created else 'already landed'}")
    for dag_id in (f"ingest_{line}", f"train_{line}", f"monitor_{line}"):
        client.unpause(dag_id)
    started = time.time()
    try:
        return _follow_line(client, spec, home, started, started_at)
    finally:
        if timings is not None:
            timings[line] = _line_timing(client, line, home, started)


def _line_timing(client, line: str, home: Path, started: float) -> dict:
    from pipelines.runtime import timing

    try:
        t = timing.line_overhead(client, line, started, home)
    except Exception as err:  # the figures are a report: never fail the run for them
        _out(f"  {line}: no timing breakdown ({err})")
        return {}
    _out(
        f"  {line}: {t['wall_s']:.0f}s from trigger to the last task, the stages' own work {t['work_s']:.0f}s;"
        f" Airflow {t['overhead_s']:.0f}s ({t['overhead_share']:.0%}: scheduling {t['scheduling_s']:.0f}s,"
        f" queued {t['queued_s']:.0f}s, task start-up {t['task_startup_s']:.0f}s)"
    )
    return t


def _follow_line(client, spec, home: Path, started: float, started_at: str) -> bool:
    line = spec.name
    run = client.trigger(f"ingest_{line}", {}, note="factory run")
    _out(f"== {line}: triggered ingest_{line} through the REST API (run {run['dag_run_id']})")
    seen = {r["batch_id"]: r.get("status", "") for r in ledger.all_records(line_paths(line, home))}
    printer = _task_printer(f"ingest_{line}")

    def on_ingest(run: dict, tis: list[dict]) -> None:
        printer(run, tis)
        _follow_ledger(line, seen)

    # Unpausing also starts the DAG's latest scheduled run, which may take the batches
    # first: follow every ingest run since the start, not only the triggered one.
    ingests = _follow_runs(client, f"ingest_{line}", started_at, quiet_s=5, timeout_s=3600, on_change=on_ingest)
    _follow_ledger(line, seen)
    ok = all(r["state"] == "success" for r in ingests)
    _out(f"  ingest: {len(ingests)} run(s) in {time.time() - started:.0f}s")
    announced = [
        t for r in ingests for t in client.task_instances(f"ingest_{line}", r["dag_run_id"])
        if t["task_id"] == "announce" and t["state"] == "success"
    ]
    if not announced:
        _out(f"== {line}: no batch passed validation: nothing to train")
        return False
    _out(f"== {line}: the validated-data Asset schedules train_{line} ...")
    t0, printed = time.time(), [0]
    tprinter = _task_printer(f"train_{line}")

    def on_train(run: dict, tis: list[dict]) -> None:
        tprinter(run, tis)
        _print_training_progress(line, t0 - 5, printed)

    trains = _follow_runs(client, f"train_{line}", started_at, quiet_s=20, timeout_s=7200, on_change=on_train)
    _print_training_progress(line, t0 - 5, printed)
    trained = [r for r in trains if r["state"] == "success"]
    _out(f"  training: {len(trains)} run(s), {len(trained)} succeeded, in {time.time() - t0:.0f}s")
    ok = ok and bool(trained) and trains[-1]["state"] == "success"
    if ok:
        # The monitor was set off by the same Asset (and its schedule); its deferred sensor
        # fires once a model serves and scores the new batches against it. Wait for the
        # scores, not for the sensor: once they are in, it goes back to waiting.
        from pipelines.monitoring.stage import serving_model, unscored_batches

        if serving_model(line, home) is None:
            # the gate blessed no model: the monitor's sensor waits for one to serve
            _out(f"== {line}: no model serves (the gate blessed none): the monitor scores the batches once one does")
            return ok
        _out(f"== {line}: drift monitor (scores the batches against the serving model)")
        deadline = time.time() + 600
        while unscored_batches(line, home) and time.time() < deadline:
            time.sleep(5)
        left = unscored_batches(line, home)
        _out(f"  monitor_{line}: " + (f"{len(left)} batch(es) not scored yet" if left else "every batch scored"))
        _ask_served_model(line, home)
    return ok


def _ask_served_model(line: str, home: Path) -> None:
    """Ask the model server for predictions on a few rows of the line's last validated
    batch, through TF Serving's REST API, as a client would."""
    from pipelines import runtime
    from pipelines.catalog.records import read_model_info
    from pipelines.monitoring.stage import serving_model
    from pipelines.serving.client import ServingError, example_instances, predict, wait_for_version

    served = serving_model(line, home)
    record = runtime.status(home) or {}
    url = record.get("serving_url")
    if served is None or not url:
        _out(f"== {line}: no model in serving" if served is None else f"== {line}: the model server is not running")
        return
    version, model_dir = served
    validated = [r for r in ledger.all_records(line_paths(line, home)) if r.get("status") == ledger.VALIDATED]
    info = read_model_info(model_dir) or {}
    features = [f["name"] for f in info.get("features") or []]
    if not validated or not features:
        return
    _out(f"== {line}: asking the model server ({url}) for predictions on 3 rows of batch {validated[-1]['batch_id']}")
    if not wait_for_version(url, line, version):
        _out(f"  version {version} is not served yet")
        return
    try:
        answer = predict(url, line, example_instances(features, Path(validated[-1]["cleaning"]["clean_path"])))
    except (ServingError, OSError, KeyError, ValueError) as err:
        _out(f"  the model server did not answer: {err}")
        return
    for i, p in enumerate(answer.predictions):
        shown = {k: (round(v[0], 4) if isinstance(v, list) and len(v) == 1 else v) for k, v in p.items()
                 if k != "embedding" and not (isinstance(v, list) and len(v) > 10)}
        _out(f"  v{answer.version} row {i}: {shown}")
    _out(f"  (POST {url}/v1/models/{line}:predict; request {answer.request_id} is in the prediction log)")


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines import runtime

    specs = [load_spec(n) for n in args.lines] if args.lines else load_specs()
    home = factory_home()
    owned = runtime.status(home) is None
    runtime_s = None
    if owned:
        t0 = time.time()
        runtime.start(home, echo=lambda s: _out(f"== {s}"))
        runtime_s = time.time() - t0
    else:
        _out(f"== using the running factory runtime at {runtime.base_url()}")
    failed, timings = [], {}
    try:
        client = _client()
        for spec in specs:
            if not _run_line(client, spec, home, args.batch, timings):
                failed.append(spec.name)
    finally:
        if owned and not args.keep_running:
            runtime.stop(home, echo=lambda s: _out(f"== {s}"))
    _out("\n== summary")
    for spec in specs:
        for row in _table(spec.name):
            _out(row)
        docs = [r["validation"]["data_docs"] for r in ledger.all_records(line_paths(spec.name, home)) if r.get("validation")]
        if docs:
            _out(f"  Data Docs: {docs[-1]}")
        for row in _model_rows(spec.name, home):
            _out(row)
    _out("\n== where the time went (the stages' own work against Airflow around it)")
    if runtime_s is not None:
        _out(f"  runtime start: {runtime_s:.0f}s")
    for line, t in timings.items():
        if t:
            _out(
                f"  {line}: wall {t['wall_s']:.0f}s, work {t['work_s']:.0f}s, Airflow {t['overhead_s']:.0f}s"
                f" ({t['overhead_share']:.0%})"
            )
    if args.timings:
        storage.write_json_atomic(args.timings, {"runtime_start_s": runtime_s, "lines": timings})
    if failed:
        _out(f"\nlines with failures: {', '.join(failed)} (see the logs under {home / 'logs'} and the Airflow UI)")
        return 1
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from pipelines import runtime

    record = runtime.start(echo=_out)
    creds = runtime.admin()
    _out(f"UI and REST API: {record['url']}  (user {creds.username}; FACTORY_ADMIN_PASSWORD sets the password)")
    if "model-server" in record["pids"]:
        _out(f"model server (TF Serving's REST API): {record['serving_url']}/v1/models/<line>:predict")
    _out("stop it with: factory stop")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from pipelines import runtime

    stopped = runtime.stop(echo=_out)
    if not stopped:
        _out("the factory runtime is not running")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from pipelines.evaluation.stage import RollbackError, plan_rollback, rollback

    load_spec(args.line)
    try:
        plan = plan_rollback(args.line)
        _out(f"{args.line}: serving v{plan['from_version']}; rolling back to v{plan['to_version']}")
        done = rollback(args.line, args.reason, expect_version=plan["from_version"])
    except RollbackError as err:
        sys.stderr.write(f"factory: {err}\n")
        return 1
    _out(f"{args.line}: now serving v{done.get('serving_version', plan['to_version'])}; champion moved")
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from pipelines.serving.predlog import attach_labels, read_label_file

    load_spec(args.line)
    done = attach_labels(args.line, read_label_file(Path(args.file)))
    _out(f"{args.line}: {done['rows']} label(s) attached: {done['matched']} matched a logged prediction, "
         f"{done['unmatched']} unmatched (kept: their predictions may not be compacted yet)")
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    import json

    conf = json.loads(args.conf) if args.conf else {}
    if not isinstance(conf, dict):
        raise SystemExit("factory: --conf must be a JSON object")
    client = _client()
    run = client.trigger(args.dag_id, conf)
    _out(f"{args.dag_id}: triggered run {run['dag_run_id']} ({run['state']})")
    if args.wait:
        final = client.wait(args.dag_id, run["dag_run_id"], timeout_s=args.timeout, on_change=_task_printer(args.dag_id))
        _out(f"{args.dag_id}: {final['state']}")
        return 0 if final["state"] == "success" else 1
    return 0


def _new_file_in_a_folder(value: str) -> Path:
    """A file to write at the end of a run: its folder must be there before the run starts."""
    path = Path(value)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no folder {str(path.parent)!r} to write {path.name!r} in")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a folder, not a file")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factory", description="AI Factory: the ML production line on Airflow.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lines", help="list the product lines").set_defaults(func=cmd_lines)
    p = sub.add_parser("drop", help="land batches in a line's landing zone")
    p.add_argument("line")
    p.add_argument("--batch", action="append", help="a real source batch to land (default: all)")
    p.add_argument("--file", help="land this CSV or Parquet file instead")
    p.add_argument("--as", dest="as_batch", help="batch id for --file")
    p.set_defaults(func=cmd_drop)
    p = sub.add_parser("status", help="where each batch stands")
    p.add_argument("line", nargs="?")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("run", help="run the line end to end on the embedded default")
    p.add_argument("lines", nargs="*", help="product lines (default: all)")
    p.add_argument("--batch", action="append", help="land only this real source batch (repeatable; default: all)")
    p.add_argument("--keep-running", action="store_true", help="leave the runtime up afterwards")
    p.add_argument("--timings", metavar="FILE", type=_new_file_in_a_folder, help="write each line's wall time split into work and Airflow's share (JSON)")
    p.set_defaults(func=cmd_run)
    sub.add_parser("start", help="start Airflow (API server + UI, scheduler, DAG processor, triggerer) and the model server").set_defaults(
        func=cmd_start
    )
    sub.add_parser("stop", help="stop the runtime, leaving no process behind").set_defaults(func=cmd_stop)
    p = sub.add_parser("rollback", help="serve the previous model of a line again (store and champion)")
    p.add_argument("line")
    p.add_argument("--reason", help="why (recorded with the retired version)")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("labels", help="attach labels to a line's logged predictions (by request id)")
    p.add_argument("line")
    p.add_argument("--file", required=True, help="a CSV or Parquet file: request_id, instance (optional), label")
    p.set_defaults(func=cmd_labels)
    p = sub.add_parser("trigger", help="trigger a DAG through the REST API")
    p.add_argument("dag_id")
    p.add_argument("--conf", help="the run's conf, a JSON object (checked against the DAG's params)")
    p.add_argument("--wait", action="store_true", help="follow the run until it ends")
    p.add_argument("--timeout", type=float, default=3600)
    p.set_defaults(func=cmd_trigger)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, landing.LandingError, LabelError) as err:
        sys.stderr.write(f"factory: {err}\n")
        return 2
    except Exception as err:
        from pipelines.runtime.api import ApiError
        from pipelines.runtime.supervisor import RuntimeFailure

        if isinstance(err, ApiError | RuntimeFailure):
            sys.stderr.write(f"factory: {err}\n")
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
