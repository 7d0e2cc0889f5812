"""Live-traffic monitoring on real rows, end to end: serve the employment model, send it real
2018 people and then people shifted as in the drift docs, attach their real labels, and let
the monitor name the shift and the live ROC AUC.

    .venv/airflow/bin/python -m bench.serving_demo [--rows 5000] [--epochs 4]

Everything runs in a fresh temporary ``FACTORY_HOME`` with the factory's own code:

1. the 2015 survey year (68,785 people) is landed as a validated batch, a model is trained on
   it by ``prepare_run`` and the Horovod workers (2 Gloo ranks, the spec's settings but
   ``--epochs``), its reference profile written by ``write_reference_profile``, and it is
   published to the serving store as the pusher does;
2. the model server (``python -m pipelines.serving.server``, the ML environment) serves it;
   8 clients send ``--rows`` real 2018 people (a random sample, requests of 10 instances
   through ``predict_features``, each request with its own ``X-Request-Id``) within one
   minute, then ``--rows`` 2018 people drawn with an older age mix (mean age +10 years, the
   drift docs' exponential tilt, :func:`bench.realdata.tilt_to`) within the next minute;
3. the line's live windows are one minute long here (the spec's ``serving.live.window_minutes``
   is set to 1 in this home's copy of the specs; the line's own spec says 60): the monitor's
   ``score_live_windows`` scores each closed window against the served version's profile, as
   the monitor DAG's ``live`` task runs it 2 minutes after the window's end;
4. the people's real employment status is attached by request id with ``factory labels``
   (the CLI, a CSV file), and the monitor scores the windows again with their labels: the live
   ROC AUC joins the drift history; then the monitor's retrain decision is asked.

Prints a machine line and a table; writes ``bench/results/serving_demo.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# A fresh factory home and a copy of the specs before any pipelines module reads them.
HOME = Path(tempfile.mkdtemp(prefix="factory-serving-demo-"))
os.environ["FACTORY_HOME"] = str(HOME)
for _var in ("FACTORY_SERVING_STORE", "FACTORY_PREDICTION_LOG", "MLFLOW_TRACKING_URI", "FACTORY_MLMD_URI"):
    os.environ.pop(_var, None)
# ruff: noqa: E402 - the imports below must see that home

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the clone's root first
from bench.machine import describe, host, write_results  # noqa: E402
from bench.realdata import employment_frame, make_validated_batch, tilt_to  # noqa: E402
from bench.serving_bench import Server  # noqa: E402
from pipelines.catalog import layout  # noqa: E402
from pipelines.config import REPO_ROOT, include_dir  # noqa: E402
from pipelines.evaluation import serving  # noqa: E402

LINE = "employment"
SEED = 20261130
CLIENTS = 8
PER_REQUEST = 10


def say(text: str = "") -> None:
    print(text, flush=True)


def copy_specs() -> Path:
    """This home's specs: the line's own, with one-minute live windows."""
    include = HOME / "include"
    shutil.copytree(include_dir(), include)
    path = include / "lines" / f"{LINE}.yaml"
    spec = yaml.safe_load(path.read_text())
    spec.setdefault("serving", {}).setdefault("live", {})["window_minutes"] = 1
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    os.environ["FACTORY_INCLUDE"] = str(include)
    return include


def train(epochs: int) -> Path:
    from pipelines.monitoring.stage import write_reference_profile
    from pipelines.specs import load_spec
    from pipelines.training.launch import run_workers
    from pipelines.training.prepare import prepare_run

    spec = load_spec(LINE)
    run = layout.run_dir(LINE, "base-2015")
    manifest = prepare_run(LINE, run, {"workers": spec.training.workers, "batches": ["2015"], "epochs": epochs})
    run_workers(run, manifest["params"]["workers"], timeout_s=spec.training.timeout_s,
                log_path=layout.training_log_path(run))
    write_reference_profile(run)
    return run


def publish(run: Path) -> int:
    info = {"model_uri": f"runs:/{run.name}/model", "run_dir": str(run), "training_run": run.name,
            "line": LINE, "blessing": "BLESSED"}
    version, _ = serving.publish(layout.exported_model(run), layout.serving_base(LINE), info)
    return version


def instances(frame: pd.DataFrame, features: list[str]) -> list[dict[str, Any]]:
    """The rows as a client sends them: plain JSON values of the model's raw features."""
    rows = frame[features].to_dict("records")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in rows]


def send(url: str, frame: pd.DataFrame, features: list[str], label: str, prefix: str) -> dict[str, Any]:
    """``frame``'s people through ``:predict`` from 8 clients; returns the answered ids with
    their true labels and the answers' versions."""
    import httpx

    rows = instances(frame, features)
    truth = frame[label].astype(int).tolist()
    chunks = [(start, rows[start:start + PER_REQUEST]) for start in range(0, len(rows), PER_REQUEST)]
    answered: list[tuple[str, int, int]] = []
    versions: set[str] = set()
    errors: list[str] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(timeout=30) as http:
            for start, chunk in chunks[worker::CLIENTS]:
                rid = f"{prefix}-{start:06d}"
                r = http.post(f"{url}/v1/models/{LINE}:predict", headers={"X-Request-Id": rid},
                              json={"signature_name": "predict_features", "instances": chunk})
                with lock:
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    versions.add(r.headers["X-Model-Version"])
                    answered.extend((rid, i, truth[start + i]) for i in range(len(chunk)))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"answered": answered, "versions": sorted(versions), "errors": errors,
            "seconds": round(time.perf_counter() - started, 2)}


def next_minute(margin_s: float = 1.0) -> None:
    """Sleep into the next minute (so a phase's traffic is one window of its own)."""
    now = datetime.now(UTC)
    start = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    time.sleep((start - now).total_seconds() + margin_s)


def attach_labels(answered: list[tuple[str, int, int]]) -> str:
    """The real labels, attached with the CLI as an operator would."""
    path = HOME / "labels.csv"
    pd.DataFrame(answered, columns=["request_id", "instance", "label"]).to_csv(path, index=False)
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "labels", LINE, "--file", str(path)],
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"factory labels failed: {done.stdout}{done.stderr}")
    return done.stdout.strip()


def window_row(w: dict[str, Any], phase: dict[str, str]) -> dict[str, Any]:
    return {"window": w["batch_id"], "phase": phase.get(w["window_start"], "?"), "kind": w["kind"],
            "rows": w["rows"], "drifted": w["drifted"], "why": w.get("why") or [],
            "auc": w.get("auc"), "episode_id": w.get("episode_id")}


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| window | traffic | scored | rows | drifted | what drifted, by how much | live ROC AUC | episode |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        auc = "-" if r["auc"] is None else f"{r['auc']:.4f}"
        why = "; ".join(r["why"]) or "-"
        out.append(f"| {r['window']} | {r['phase']} | {r['kind']} | {r['rows']} | {'yes' if r['drifted'] else 'no'} "
                   f"| {why} | {auc} | {r['episode_id'] or '-'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000, help="people per phase (default 5000)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary factory home")
    args = parser.parse_args(argv)
    machine = host()
    say(describe(machine))
    started = time.perf_counter()
    copy_specs()
    from pipelines.monitoring.live import CLOSE_GRACE, score_live_windows
    from pipelines.monitoring.stage import retrain_decision
    from pipelines.specs import load_spec

    spec = load_spec(LINE)
    features = [f.name for f in spec.schema.features]
    label = spec.schema.label.name
    say(f"land 2015 and train on it ({args.epochs} epochs, {spec.training.workers} Horovod ranks)")
    make_validated_batch(HOME, LINE, "2015", employment_frame(2015))
    run = train(args.epochs)
    version = publish(run)
    y2018 = employment_frame(2018)
    rng = np.random.default_rng(SEED)
    real = y2018.iloc[np.sort(rng.choice(len(y2018), args.rows, replace=False))].reset_index(drop=True)
    age = y2018["AGEP"].to_numpy(dtype="float64")
    mean_age = float(age.mean())
    older, _ = tilt_to(y2018, args.rows, SEED + 10, lambda a: np.exp(a * (age - mean_age) / 10.0),
                       lambda f: float(f["AGEP"].mean()), mean_age + 10)
    phases = {"2018 as it came": real, "2018, mean age +10 years": older}
    server = Server(layout.serving_store(), HOME, [LINE])
    sent: dict[str, Any] = {}
    starts: dict[str, str] = {}
    try:
        server.wait_ready()
        say(f"serving {LINE} v{version} at {server.url}")
        for name, frame in phases.items():
            next_minute()
            minute = datetime.now(UTC).replace(second=0, microsecond=0)
            starts[minute.isoformat()] = name
            sent[name] = send(server.url, frame, features, label, "real" if name.startswith("2018 as") else "older")
            s = sent[name]
            say(f"  {name}: {len(s['answered'])} people answered in {s['seconds']}s by version(s) {s['versions']}, "
                f"{len(s['errors'])} errors; mean age {frame['AGEP'].mean():.1f}, employed {frame[label].mean():.3f}")
        next_minute(0.5)  # the last window has ended
    finally:
        server.stop()
    later = datetime.now(UTC) + CLOSE_GRACE  # when the monitor DAG's live task scores it
    unlabelled = score_live_windows(LINE, now=later)
    answered = [a for s in sent.values() for a in s["answered"]]
    labels_out = attach_labels(answered)
    say(f"factory labels: {labels_out}")
    labelled = score_live_windows(LINE, now=later)
    decision = retrain_decision(LINE, "serving-demo")
    rows = [window_row(w, starts) for w in unlabelled["windows"] + labelled["windows"]]
    say("")
    say(table(rows))
    say("")
    say(f"retrain decision: retrain={decision.get('retrain')}: {decision.get('reason')}")
    seconds = round(time.perf_counter() - started, 1)
    result = {
        "line": LINE, "model_version": version, "epochs": args.epochs, "rows_per_phase": args.rows,
        "clients": CLIENTS, "instances_per_request": PER_REQUEST,
        "phases": {name: {"answered": len(s["answered"]), "errors": len(s["errors"]), "seconds": s["seconds"],
                          "versions": s["versions"], "mean_age": float(phases[name]["AGEP"].mean()),
                          "employed_rate": float(phases[name][label].mean())} for name, s in sent.items()},
        "labels": labels_out, "windows": rows,
        "notes": unlabelled.get("notes", []) + labelled.get("notes", []),
        "retrain_decision": {k: decision.get(k) for k in ("retrain", "reason", "episode_id", "drifted")},
    }
    out = write_results("serving_demo", "python -m bench.serving_demo" + (f" {' '.join(argv)}" if argv else ""),
                        machine, seconds, result)
    say(f"results: {out.relative_to(REPO_ROOT)} ({seconds:.0f}s)")
    if not args.keep:
        shutil.rmtree(HOME, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
