"""``factory``: what people do by hand.

    factory lines                       list the product lines (and check their specs)
    factory drop LINE [--batch ID ...]  land the line's real batches (replayed arrivals)
    factory drop LINE --file F --as ID  land a file of your own as batch ID
    factory status [LINE]               where every batch stands, with its counts
    factory run [LINE ...]              the whole line: land real batches, ingest them
                                        through Airflow, print a summary
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pipelines import landing, state
from pipelines.config import airflow_environment, factory_home, line_paths
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
    records = state.all_records(line_paths(line))
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


def _airflow(env: dict[str, str], *argv: str, log: Path) -> subprocess.Popen:
    exe = shutil.which("airflow", path=env["PATH"])
    if exe is None:
        raise SystemExit("airflow is not installed in this environment: run scripts/setup.sh")
    fh = open(log, "ab")
    return subprocess.Popen([exe, *argv], env=env, stdout=fh, stderr=subprocess.STDOUT)


def _ensure_db(env: dict[str, str], logs: Path) -> None:
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    if env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite") and db.exists():
        return
    _out("preparing the Airflow metadata database ...")
    proc = _airflow(env, "db", "migrate", log=logs / "airflow-db-migrate.log")
    if proc.wait() != 0:
        raise SystemExit(f"airflow db migrate failed; see {logs / 'airflow-db-migrate.log'}")


def _follow(line: str, proc: subprocess.Popen, seen: dict[str, str]) -> None:
    """Print each batch's status changes while the DAG runs."""
    while True:
        done = proc.poll() is not None
        for r in state.all_records(line_paths(line)):
            status = r.get("status", "?")
            if seen.get(r["batch_id"]) != status:
                seen[r["batch_id"]] = status
                _out(f"  {line}/{r['batch_id']}: {status}" + (f" ({r['error']})" if r.get("error") else ""))
        if done:
            return
        time.sleep(1.0)


def cmd_run(args: argparse.Namespace) -> int:
    specs = [load_spec(n) for n in args.lines] if args.lines else load_specs()
    home = factory_home()
    env = {**os.environ, **airflow_environment(home)}
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    _ensure_db(env, logs)
    failed = []
    for spec in specs:
        _out(f"== {spec.name}: landing real batches")
        for r in landing.replay(spec, home):
            _out(f"  {r.batch_id}: {'landed' if r.created else 'already landed'}")
        _out(f"== {spec.name}: running DAG ingest_{spec.name} (log: {logs / f'ingest_{spec.name}.log'})")
        started = time.time()
        seen = {r["batch_id"]: r.get("status", "") for r in state.all_records(line_paths(spec.name, home))}
        proc = _airflow(env, "dags", "test", f"ingest_{spec.name}", log=logs / f"ingest_{spec.name}.log")
        _follow(spec.name, proc, seen)
        ok = proc.returncode == 0 and not any(
            r.get("status") == state.FAILED for r in state.all_records(line_paths(spec.name, home))
        )
        _out(f"  DAG run {'succeeded' if ok else 'FAILED'} in {time.time() - started:.0f}s")
        if not ok:
            failed.append(spec.name)
    _out("\n== summary")
    for spec in specs:
        for row in _table(spec.name):
            _out(row)
        docs = [r["validation"]["data_docs"] for r in state.all_records(line_paths(spec.name, home)) if r.get("validation")]
        if docs:
            _out(f"  Data Docs: {docs[-1]}")
    if failed:
        _out(f"\nlines with failures: {', '.join(failed)} (see the logs under {logs})")
        return 1
    return 0


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
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, landing.LandingError) as err:
        sys.stderr.write(f"factory: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
