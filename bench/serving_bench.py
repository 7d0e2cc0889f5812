"""Online serving benchmark: the model server under load against the floor for the same model.

    .venv/airflow/bin/python -m bench.serving_bench [--seconds 8] [--clients 1,8,32] [--lines credit_risk,employment,fashion]

For each line a real small model, trained on real rows:

- ``credit_risk`` and ``employment``: real rows (all 9,857 Lending Club loans; 20,000 people of ACS 2015) as the ingest
  stage leaves them (:mod:`bench.realdata`), prepared by the training stage's ``prepare_run``
  and trained by the Horovod worker (one rank, 2 epochs) as the train DAG's task runs it;
- ``fashion``: the small CNN of ``tests/image_models.py`` on real Fashion-MNIST images.

Each model is published into a temporary serving store (:func:`pipelines.evaluation.serving.publish`,
as the pusher does) and the model server is started on it from the ML environment, with its
prediction log on a temporary factory home. The requests are the run's held-out rows, one
instance each, sent as a client of the documented API sends them:
``POST /v1/models/<line>:predict`` with ``{"signature_name": "predict_features", "instances": [row]}``
(the image as ``{"b64": ...}``), from 1, 8 and 32 concurrent clients (threads, one keep-alive
``httpx.Client`` each), each level for ``--seconds`` after a warm-up.

Per line and level: requests/s, p50/p99 latency seen by the client, errors, and from the
server's own metrics (scraped before and after the level) the mean micro-batch size and the
prediction log's cost (``factory_model_server_prediction_log_seconds``: per append, and per
request). The **floor** is the same model on the same rows in one process (the ML
environment): ``predict_features`` on tensors in batches of 512, rows/s, nothing else (no
HTTP, no JSON, no log). The ratio is throughput at 8 clients over the floor.

The clients run on the same machine as the server: on a small machine they take CPU the
server would otherwise have, which the figures include. Results, with the machine:
``bench/results/serving.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LINES = ("credit_risk", "employment", "fashion")
CLIENTS = (1, 8, 32)
FLOOR_BATCH = 512
FLOOR_ROWS = 50_000
BATCHED_INSTANCES = 512  # the batched level: 8 clients, this many instances per request
TABULAR_ROWS = {"credit_risk": None, "employment": 20_000}  # None: every row
SERVER_MODULE = "pipelines.serving.server"


# ------------------------------------------------------------------------------ models


def _train_tabular(line: str, work: Path) -> Path:
    """A run of ``line`` trained as the train DAG trains it (one rank); its exported model."""
    from bench.realdata import employment_frame, lending_club_frame, make_validated_batch
    from pipelines.catalog import layout
    from pipelines.training.launch import horovod_command, worker_environment
    from pipelines.training.prepare import prepare_run

    run = work / "runs" / line
    model = layout.exported_model(run)
    if (model / "saved_model.pb").exists():
        return run
    home = work / "train-home" / line
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    frame = lending_club_frame() if line == "credit_risk" else employment_frame(2015)
    if TABULAR_ROWS[line]:
        frame = frame.head(TABULAR_ROWS[line])
    make_validated_batch(home, line, "bench", frame)
    prepare_run(line, run, {"workers": 1, "epochs": 2, "batch_size": 256}, home=home)
    subprocess.run(horovod_command(run, 1), check=True, env=worker_environment({"FACTORY_HOME": str(home)}),
                   stdout=subprocess.DEVNULL, cwd=REPO)
    return run


def _train_image(work: Path) -> Path:
    from pipelines.catalog import layout
    from pipelines.config import ml_python, ml_subprocess_environment

    run = work / "runs" / "fashion"
    if (layout.exported_model(run) / "saved_model.pb").exists():
        return run
    shutil.rmtree(run, ignore_errors=True)
    subprocess.run([str(ml_python()), str(REPO / "tests" / "image_models.py"), str(run),
                    "--train", "6000", "--eval", "2000", "--steps", "300"],
                   check=True, env=ml_subprocess_environment(), cwd=REPO)
    return run


def instances(run: Path, model_dir: Path) -> list[dict[str, Any]]:
    """The run's held-out rows as a client sends them: named raw features, bytes as ``{"b64": ...}``."""
    import pyarrow.parquet as pq

    from pipelines.catalog import layout
    from pipelines.catalog.records import read_model_info

    info = read_model_info(model_dir)
    features = info.get("features") or [{"name": "image", "type": "image"}]
    table = pq.read_table(layout.eval_data_path(run), columns=[f["name"] for f in features]).to_pylist()
    out = []
    for row in table:
        item = {}
        for f in features:
            v = row[f["name"]]
            if f["type"] == "image":
                item[f["name"]] = {"b64": base64.b64encode(v).decode()}
            elif f["type"] == "integer":
                item[f["name"]] = int(v)
            elif f["type"] == "double":
                item[f["name"]] = float(v)
            else:
                item[f["name"]] = str(v)
        out.append(item)
    return out


# ------------------------------------------------------------------------------ floor (ML env)


def floor(model_dir: Path, rows_path: Path, batch: int = FLOOR_BATCH, total: int = FLOOR_ROWS) -> dict[str, Any]:
    """Rows/s of ``predict_features`` in one process on tensors made beforehand (ML env): in
    batches of ``batch``, and one row per call (what a server without batching pays per request)."""
    import numpy as np
    import tensorflow as tf

    rows = json.loads(rows_path.read_text())
    rows = rows * -(-4 * batch // len(rows)) if len(rows) < 4 * batch else rows  # at least 4 full batches
    sig = tf.saved_model.load(str(model_dir)).signatures["predict_features"]
    specs = sig.structured_input_signature[1]
    columns = {}
    for name, spec in specs.items():
        values = [r[name] for r in rows]
        if spec.dtype == tf.string:
            values = [base64.b64decode(v["b64"]) if isinstance(v, dict) else str(v).encode() for v in values]
            columns[name] = np.asarray(values, dtype=object)
        else:
            columns[name] = np.asarray(values, dtype=spec.dtype.as_numpy_dtype)

    def rate(size: int, total: int) -> float:
        n = len(rows)
        batches = [{k: tf.constant(v[i:i + size]) for k, v in columns.items()} for i in range(0, n - n % size, size)]
        sig(**batches[0])  # warm: the first call traces
        done, started = 0, time.perf_counter()
        while done < total:
            for b in batches:
                sig(**b)
                done += size
                if done >= total:
                    break
        return done / (time.perf_counter() - started)

    return {"batch": batch, "rows": total, "rows_per_s": round(rate(batch, total), 1),
            "rows_per_s_one_per_call": round(rate(1, 2000), 1)}


def run_floor(model_dir: Path, rows: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    from pipelines.config import ml_python, ml_subprocess_environment

    rows_path = work / f"floor-rows-{model_dir.parent.name}.json"
    rows_path.write_text(json.dumps(rows))
    done = subprocess.run([str(ml_python()), "-m", "bench.serving_bench", "--floor", str(model_dir), str(rows_path)],
                          capture_output=True, text=True, env=ml_subprocess_environment(), cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"floor failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The model server from the ML environment on a store and a factory home of its own."""

    def __init__(self, store: Path, home: Path, lines: list[str]) -> None:
        from pipelines.config import ml_python, ml_subprocess_environment

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**ml_subprocess_environment(), "FACTORY_HOME": str(home), "FACTORY_SERVING_STORE": str(store),
               "FACTORY_SERVING_HOST": "127.0.0.1", "FACTORY_SERVING_PORT": str(self.port),
               "PYTHONPATH": str(REPO)}
        env.pop("FACTORY_PREDICTION_LOG", None)
        self.log = open(home / "model-server.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([str(ml_python()), "-m", SERVER_MODULE], env=env, cwd=REPO,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.lines = lines

    def wait_ready(self, timeout: float = 300.0) -> dict[str, Any]:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"model server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                health = httpx.get(f"{self.url}/healthz", timeout=2).json()
                if all(line in health.get("lines", {}) for line in self.lines):
                    return health
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"model server not ready in {timeout:.0f}s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The server's metrics: (sample name, sorted labels) -> value."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/monitoring/prometheus/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (all its threads): ``pid``, else this one."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _total(metrics: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in metrics.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


def _delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return _total(after, name, **labels) - _total(before, name, **labels)


# ------------------------------------------------------------------------------ load


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def load(url: str, line: str, rows: list[dict[str, Any]], clients: int, seconds: float,
         warmup: float = 1.0, per_request: int = 1) -> dict[str, Any]:
    """``clients`` threads, each with its own keep-alive connection, sending requests of
    ``per_request`` instances in a loop for ``warmup + seconds``; only requests that start
    after the warm-up count."""
    import httpx

    groups = [rows[i:i + per_request] for i in range(0, len(rows) - per_request + 1, per_request)]
    bodies = [json.dumps({"signature_name": "predict_features", "instances": g}).encode() for g in groups]
    endpoint = f"{url}/v1/models/{line}:predict"
    start_at = time.perf_counter() + warmup
    stop_at = start_at + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[dict[str, int]] = [{} for _ in range(clients)]
    versions: set[str] = set()
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        with httpx.Client(timeout=60, headers={"Content-Type": "application/json"}) as http:
            barrier.wait()
            k = i
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    r = http.post(endpoint, content=bodies[k % len(bodies)])
                    code = r.status_code
                    if code == 200 and len(versions) < 4:
                        versions.add(r.headers.get("X-Model-Version", ""))
                except httpx.HTTPError as err:
                    code = type(err).__name__
                t1 = time.perf_counter()
                k += clients
                if t0 >= start_at:
                    if code == 200:
                        latencies[i].append(t1 - t0)
                    else:
                        errors[i][str(code)] = errors[i].get(str(code), 0) + 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for xs in latencies for x in xs]
    errs: dict[str, int] = {}
    for e in errors:
        for k, v in e.items():
            errs[k] = errs.get(k, 0) + v
    return {
        "clients": clients,
        "instances_per_request": per_request,
        "requests": len(flat),
        "errors": errs,
        "requests_per_s": round(len(flat) / seconds, 1),
        "rows_per_s": round(len(flat) * per_request / seconds, 1),
        "p50_ms": round(percentile(flat, 50) * 1000, 2),
        "p99_ms": round(percentile(flat, 99) * 1000, 2),
        "model_versions": sorted(versions),
    }


def bench_line(url: str, line: str, rows: list[dict[str, Any]], levels: list[tuple[int, int]],
               seconds: float, server_pid: int) -> list[dict]:
    """Each level is (clients, instances per request)."""
    out = []
    for clients, per_request in levels:
        before = scrape(url)
        cpu0 = (cpu_seconds(server_pid), cpu_seconds(), time.perf_counter())
        result = load(url, line, rows, clients, seconds, per_request=per_request)
        cpu1 = (cpu_seconds(server_pid), cpu_seconds(), time.perf_counter())
        after = scrape(url)
        appends = _delta(before, after, "factory_model_server_prediction_log_seconds_count", line=line)
        log_s = _delta(before, after, "factory_model_server_prediction_log_seconds_sum", line=line)
        batches = _delta(before, after, "factory_model_server_batch_size_count", line=line)
        batched = _delta(before, after, "factory_model_server_batch_size_sum", line=line)
        answered = _delta(before, after, "factory_model_server_requests_total", line=line, code="200")
        server_s = _delta(before, after, "factory_model_server_request_seconds_sum", line=line)
        result["server"] = {
            "requests_ok": int(answered),
            "mean_request_ms": round(1000 * server_s / answered, 2) if answered else None,
            "mean_batch_size": round(batched / batches, 2) if batches else None,
            "log_appends": int(appends),
            "log_ms_per_append": round(1000 * log_s / appends, 3) if appends else None,
            "log_ms_per_request": round(1000 * log_s / answered, 3) if answered else None,
            "log_us_per_instance": round(1e6 * log_s / batched, 2) if batched else None,
        }
        # CPU over the whole level (warm-up included), server process and load client apart:
        # on a small machine the clients' share is CPU the server did not get.
        wall = cpu1[2] - cpu0[2]
        result["cpu_cores_used"] = {"server": round((cpu1[0] - cpu0[0]) / wall, 2),
                                    "clients": round((cpu1[1] - cpu0[1]) / wall, 2)}
        print(f"  {line:12s} {clients:3d} clients x {per_request:3d} rows: {result['requests_per_s']:8.1f} req/s  "
              f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  errors {result['errors'] or 0}  "
              f"batch {result['server']['mean_batch_size']}  log {result['server']['log_ms_per_request']} ms/req  "
              f"cores: server {result['cpu_cores_used']['server']}, clients {result['cpu_cores_used']['clients']}",
              flush=True)
        out.append(result)
    return out


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floor", nargs=2, metavar=("MODEL_DIR", "ROWS_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--lines", default=",".join(LINES))
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)))
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per line and level")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "serving-work",
                        help="trained models are kept here and reused by the next run")
    parser.add_argument("--floor-only", action="store_true", help="train, publish and measure the floor; no server")
    args = parser.parse_args(argv)
    if args.floor:  # the ML environment's half
        print(json.dumps(floor(Path(args.floor[0]), Path(args.floor[1]))))
        return 0

    from bench.machine import describe, host, write_results
    from pipelines.evaluation import serving

    machine = host()
    print(describe(machine), flush=True)
    lines = [x for x in args.lines.split(",") if x]
    levels = [int(x) for x in args.clients.split(",")]
    started = time.monotonic()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = {}
    for line in lines:
        t0 = time.monotonic()
        runs[line] = _train_image(args.work) if line == "fashion" else _train_tabular(line, args.work)
        print(f"{line}: model ready in {time.monotonic() - t0:.0f}s", flush=True)

    from pipelines.catalog import layout

    tmp = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    results: dict[str, Any] = {}
    server = None
    try:
        store, home = tmp / "serving", tmp / "home"
        home.mkdir()
        rows = {}
        for line, run in runs.items():
            version, vdir = serving.publish(layout.exported_model(run), store / line,
                                            {"model_uri": f"bench:{line}", "line": line})
            rows[line] = instances(run, vdir)
            results[line] = {"version": version, "rows": len(rows[line]), "floor": run_floor(vdir, rows[line], tmp)}
            print(f"{line}: floor {results[line]['floor']['rows_per_s']} rows/s "
                  f"(predict_features, batches of {FLOOR_BATCH}); one row per call "
                  f"{results[line]['floor']['rows_per_s_one_per_call']} rows/s", flush=True)
        if args.floor_only:
            return 0
        server = Server(store, home, lines)
        t0 = time.monotonic()
        server.wait_ready()
        print(f"model server ready in {time.monotonic() - t0:.1f}s", flush=True)
        for line in lines:
            plan = [(c, 1) for c in levels] + [(8, min(BATCHED_INSTANCES, len(rows[line])))]
            results[line]["levels"] = bench_line(server.url, line, rows[line], plan, args.seconds, server.proc.pid)
            fl = results[line]["floor"]["rows_per_s"]
            for lv in results[line]["levels"]:
                lv["ratio_to_floor"] = round(lv["rows_per_s"] / fl, 4)
            at8 = next((lv for lv in results[line]["levels"] if lv["clients"] == 8 and lv["instances_per_request"] == 1),
                       None)
            if at8:
                results[line]["ratio_8_clients_to_floor"] = at8["ratio_to_floor"]
        results["_prediction_log_bytes"] = sum(
            p.stat().st_size for line in lines for p in layout.prediction_wal_dir(line, home).glob("*"))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = round(time.monotonic() - started, 1)
    log_bytes = results.pop("_prediction_log_bytes", None)
    print("\nline          floor rows/s   req/s @1   @8    @32   ratio@8   p50/p99 ms @8")
    for line in lines:
        r = results[line]
        by = {lv["clients"]: lv for lv in r.get("levels", []) if lv["instances_per_request"] == 1}
        print(f"{line:12s} {r['floor']['rows_per_s']:12.1f} " + " ".join(
            f"{by[c]['requests_per_s']:7.1f}" if c in by else "      -" for c in (1, 8, 32))
            + f"  {r.get('ratio_8_clients_to_floor', float('nan')):7.3f}"
            + (f"   {by[8]['p50_ms']}/{by[8]['p99_ms']}" if 8 in by else ""))
    command = "python -m bench.serving_bench" + (f" {' '.join(argv)}" if argv else "")
    out = write_results("serving", command, machine, seconds, {
        "settings": {"seconds_per_level": args.seconds, "clients": levels, "floor_batch": FLOOR_BATCH,
                     "batched_level": {"clients": 8, "instances_per_request": BATCHED_INSTANCES},
                     "floor_rows": FLOOR_ROWS, "signature": "predict_features", "instances_per_request": 1,
                     "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "prediction_log_bytes": log_bytes,
        "lines": results,
    })
    print(f"results: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
