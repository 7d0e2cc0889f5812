"""The scale-out rehearsal: start every engine of docker-compose.yaml as a local process
with the compose file's own configuration, run the main job on them, say where each stage
ran, and stop everything it started.

    scripts/rehearse-scale-out.sh                      # every line, every real batch
    scripts/rehearse-scale-out.sh credit_risk --batch slice-1 --fault spark-worker --fault celery-worker

What differs from the containers is in deploy/rehearsal/rehearsal.env; the rest is
docker-compose.yaml interpolated with a .env written by deploy/make_env.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `deploy` importable
    sys.path.insert(0, str(REPO_ROOT))

from deploy.rehearsal import engines  # noqa: E402
from deploy.rehearsal.compose import load_compose, read_env_file  # noqa: E402
from deploy.rehearsal.process import Engine, EngineFailed, kill_tree, processes_with  # noqa: E402

CONFIG = Path(__file__).with_name("rehearsal.env")
POLICY = REPO_ROOT / "deploy" / "airflow" / "config" / "airflow_local_settings.py"
MARK = "FACTORY_REHEARSAL_ID"  # in every started process's environment: what `stop` must find gone
FAULTS = ("spark-worker", "celery-worker")


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def settings() -> dict[str, str]:
    """rehearsal.env, with the environment's value where a variable is set there."""
    cfg = read_env_file(CONFIG)
    return {k: os.environ.get(k, v) for k, v in cfg.items()}


def compose_env(cfg: dict[str, str], root: Path) -> dict[str, str]:
    """The .env docker-compose.yaml is interpolated with: deploy/make_env.py's (fresh
    secrets, .env.example's values), then the rehearsal's choices of the same variables."""
    env_file = root / ".env"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "deploy" / "make_env.py"), "--output", str(env_file)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineFailed(f"deploy/make_env.py failed: {done.stderr}")
    env = read_env_file(env_file)
    hosts = cfg["HOROVOD_HOST_ADDRESSES"].split(",")
    env.update({
        "FACTORY_SPARK_MASTER": f"spark://127.0.0.1:{cfg['SPARK_MASTER_PORT']}",
        "SPARK_WORKER_CORES": cfg["SPARK_WORKER_CORES"],
        "SPARK_WORKER_MEMORY": cfg["SPARK_WORKER_MEMORY"],
        "AIRFLOW_WORKER_CONCURRENCY": cfg["AIRFLOW_WORKER_CONCURRENCY"],
        "AIRFLOW_PUBLIC_URL": f"http://127.0.0.1:{cfg['AIRFLOW_PORT']}",
        "FACTORY_TRAIN_QUEUE": cfg["FACTORY_TRAIN_QUEUE"],
        "FACTORY_HOROVOD_HOSTS": ",".join(f"{h}:1" for h in hosts),
        "FACTORY_HOROVOD_NETWORK_INTERFACE": cfg["FACTORY_HOROVOD_NETWORK_INTERFACE"],
        "FACTORY_HOROVOD_SSH_PORT": cfg["SSH_PORT"],
        "FACTORY_HOROVOD_SSH_IDENTITY": str(root / "ssh" / "client_ed25519"),
    })
    return env


def airflow_env(compose: dict, cfg: dict[str, str], root: Path) -> dict[str, str]:
    """The Airflow services' environment (x-airflow-env) with the compose network's host
    names and the containers' folders replaced by this machine's."""
    svc = compose["services"]["airflow-worker"]["environment"]
    home, serving = root / "home", root / "serving"
    replace = {
        "@postgres:5432/": f"@127.0.0.1:{cfg['POSTGRES_PORT']}/",
        "@redis:6379/": f"@127.0.0.1:{cfg['REDIS_PORT']}/",
        "http://airflow-apiserver:8080": f"http://127.0.0.1:{cfg['AIRFLOW_PORT']}",
        "http://mlflow:5000": f"http://127.0.0.1:{cfg['MLFLOW_PORT']}",
        "/opt/factory/home": str(home),
        "/opt/factory/serving": str(serving),
        "/opt/venvs/ml/bin/python": str(REPO_ROOT / ".venv" / "ml" / "bin" / "python"),
    }
    env = {}
    for key, value in svc.items():
        value = str(value)
        for old, new in replace.items():
            value = value.replace(old, new)
        env[key] = value
    left = sorted(k for k, v in env.items() if any(h in v for h in ("@postgres:", "@redis:", "//mlflow:", "//airflow-", "spark-master", "/opt/")))
    if left:
        raise EngineFailed(f"settings still name a container's host or folder: {left}")
    env.update({
        "FACTORY_API_HOST": "127.0.0.1",
        "FACTORY_API_PORT": cfg["AIRFLOW_PORT"],
        "FACTORY_SERVING_HOST": "127.0.0.1",
        "FACTORY_SERVING_PORT": cfg["MODEL_SERVER_PORT"],
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": cfg["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"],
        "AIRFLOW__METRICS__STATSD_ON": cfg["AIRFLOW__METRICS__STATSD_ON"],
    })
    api = compose["services"]["airflow-apiserver"]["environment"]
    for key in ("FACTORY_ADMIN_USER", "FACTORY_ADMIN_PASSWORD", "FACTORY_VIEWER_USER", "FACTORY_VIEWER_PASSWORD"):
        env[key] = str(api[key])
    return env


@dataclass
class Stack:
    """What the rehearsal started, stopped in the reverse order."""

    engines: list[Engine] = field(default_factory=list)
    runtime_home: Path | None = None
    postgres: Engine | None = None

    def add(self, engine: Engine) -> Engine:
        self.engines.append(engine)
        out(f"  {engine.name}: pid {engine.pid} {json.dumps(engine.info, default=str)}")
        return engine

    def replace(self, old: Engine, new: Engine) -> None:
        self.engines[self.engines.index(old)] = new

    def named(self, name: str) -> Engine:
        return next(e for e in self.engines if e.name == name)

    def stop(self) -> list[str]:
        stopped = []
        workers = [e for e in self.engines if e.info.get("queues")]
        for engine in workers:  # Celery workers first: they take no new tasks
            engine.stop(grace=60)
            stopped.append(engine.name)
        if self.runtime_home is not None:
            from pipelines import runtime

            stopped += runtime.stop(self.runtime_home)
        for engine in reversed([e for e in self.engines if e not in workers]):
            engine.stop()
            stopped.append(engine.name)
        if self.postgres is not None:
            engines.remove_postgres_data(self.postgres)
        return stopped


# ----------------------------------------------------------------------------- faults


class Faults(threading.Thread):
    """Kills a Spark worker while the cleaning job's executors run on it, and the Celery
    worker that runs a training task while it trains; then starts each again, as the
    deployment's restart policy (`restart: unless-stopped`) would."""

    def __init__(self, which: list[str], stack: Stack, restart: dict, client_factory, lines: list[str]):
        super().__init__(daemon=True, name="faults")
        self.pending = list(which)
        self.stack, self.restart, self.client_factory, self.lines = stack, restart, client_factory, lines
        self.done: list[dict] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        client = None
        while self.pending and not self.stopping.is_set():
            try:
                if "spark-worker" in self.pending:
                    self._spark()
                if "celery-worker" in self.pending:
                    client = client or self.client_factory()
                    self._celery(client)
            except Exception as err:  # noqa: BLE001 - a poll that failed is tried again
                if "Connection refused" not in str(err):
                    out(f"  [fault] poll failed: {err}")
            time.sleep(0.3)

    def _spark(self) -> None:
        master = self.stack.named("spark-master")
        if not engines.spark_applications(master)["active"]:
            return
        for worker in [e for e in self.stack.engines if e.name.startswith("spark-worker")]:
            running = engines.spark_executors(worker)["running"]
            if running:
                kill_tree(worker.pid)
                worker.proc.wait()
                out(f"  [fault] killed {worker.name} (pid {worker.pid}) with the executor of {running[0]}")
                self.done.append({"fault": "spark-worker", "worker": worker.name, "worker_id": worker.info["id"],
                                  "app": running[0], "at": time.time()})
                self.pending.remove("spark-worker")
                new = self.restart[worker.name]()
                self.stack.replace(worker, new)
                out(f"  [fault] {worker.name} started again (pid {new.pid})")
                return

    def _celery(self, client) -> None:
        for line in self.lines:
            dag_id = f"train_{line}"
            for run in client.runs(dag_id, limit=5):
                if run["state"] != "running":
                    continue
                for ti in client.task_instances(dag_id, run["dag_run_id"]):
                    if ti["task_id"] != "train" or ti["state"] != "running" or (ti.get("try_number") or 1) > 1:
                        continue
                    worker = next((e for e in self.stack.engines if e.name == ti.get("hostname")), None)
                    if worker is None or not _training_started(worker):
                        continue
                    kill_tree(worker.pid)
                    worker.proc.wait()
                    out(f"  [fault] killed {worker.name} (pid {worker.pid}, its task processes and horovodrun) "
                        f"during {dag_id}.train try {ti.get('try_number')}")
                    self.done.append({"fault": "celery-worker", "worker": worker.name, "dag_id": dag_id,
                                      "run_id": run["dag_run_id"], "at": time.time()})
                    self.pending.remove("celery-worker")
                    new = self.restart[worker.name]()
                    self.stack.replace(worker, new)
                    out(f"  [fault] {worker.name} started again (pid {new.pid})")
                    return


def _training_started(worker: Engine) -> bool:
    """horovodrun runs under this worker (its ranks have been launched)."""
    from deploy.rehearsal.process import descendants

    return any("horovodrun" in " ".join(argv) for _, argv in descendants(worker.pid))


# ----------------------------------------------------------------------------- report


def where_it_ran(stack: Stack, lines: list[str], client, faults: Faults | None) -> dict:
    """Which Celery worker and queue ran each task, which Spark workers ran the cleaning
    jobs, which Horovod hosts trained, what the MLflow server holds, what Prometheus scrapes."""
    report: dict = {"tasks": [], "spark": {}, "mlflow": [], "faults": faults.done if faults else []}
    for line in lines:
        for dag_id in (f"ingest_{line}", f"train_{line}", f"monitor_{line}"):
            for run in client.runs(dag_id, limit=20):
                for ti in client.task_instances(dag_id, run["dag_run_id"]):
                    if ti.get("state") in (None, "skipped", "removed"):
                        continue
                    report["tasks"].append({"dag_id": dag_id, "run_id": run["dag_run_id"], "task_id": ti["task_id"],
                                            "map_index": ti.get("map_index"), "state": ti["state"],
                                            "queue": ti.get("queue"), "hostname": ti.get("hostname"),
                                            "try_number": ti.get("try_number")})
    master = stack.named("spark-master")
    apps = engines.spark_applications(master)
    on = {}
    for worker in [e for e in stack.engines if e.name.startswith("spark-worker")]:
        for app in engines.spark_executors(worker)["finished"]:
            on.setdefault(app, set()).add(f"{worker.name} ({worker.info['id']})")
    report["spark"] = {"master": master.info["url"], "applications": [
        {"id": a["id"], "name": a["name"], "state": a.get("state"), "duration_s": round(a.get("duration", 0) / 1000, 1),
         "workers": sorted(on.get(a["id"], ()))} for a in apps["completed"] + apps["active"]]}
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import experiment_name

    mlflow = MlflowClient(stack.named("mlflow").info["url"])
    for line in lines:
        exp = mlflow.get_experiment_by_name(experiment_name(line))
        if exp is None:
            continue
        for r in mlflow.search_runs([exp.experiment_id], max_results=50):
            report["mlflow"].append({"experiment": line, "run_id": r.info.run_id, "name": r.info.run_name,
                                     "status": r.info.status, "horovod_hosts": r.data.params.get("horovod_hosts")
                                     or r.data.tags.get("horovod_hosts")})
    from deploy.rehearsal import prometheus, sshd

    report["ssh_logins"] = sorted(set(sshd.logins(stack.named("sshd"))))
    report["prometheus"] = prometheus.targets_health(stack.named("prometheus").info["url"])
    return report


def print_report(report: dict) -> None:
    out("\n== where each stage ran")
    seen: dict[tuple, dict] = {}
    for t in report["tasks"]:
        key = (t["dag_id"], t["task_id"])
        seen.setdefault(key, {"queues": set(), "hosts": set(), "tries": 0, "states": set()})
        seen[key]["queues"].add(t["queue"] or "?")
        seen[key]["hosts"].add(t["hostname"] or "?")
        seen[key]["tries"] = max(seen[key]["tries"], t["try_number"] or 0)
        seen[key]["states"].add(t["state"])
    for (dag_id, task_id), s in sorted(seen.items()):
        out(f"  {dag_id}.{task_id}: queue {','.join(sorted(s['queues']))} on {','.join(sorted(s['hosts']))}"
            f" ({','.join(sorted(s['states']))}; up to try {s['tries']})")
    out(f"  Spark master {report['spark']['master']}:")
    for a in report["spark"]["applications"]:
        out(f"    {a['id']} {a['name']!r} {a['state']} {a['duration_s']}s on {', '.join(a['workers']) or '?'}")
    out("  MLflow server runs:")
    for r in report["mlflow"]:
        hosts = f"; Horovod hosts {r['horovod_hosts']}" if r["horovod_hosts"] else ""
        out(f"    {r['experiment']}/{r['name']} {r['status']}{hosts}")
    out(f"  SSH logins on the Horovod hosts: {report['ssh_logins']}")
    out(f"  Prometheus targets: {report['prometheus']}")
    for f in report["faults"]:
        out(f"  fault: {json.dumps(f)}")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rehearse-scale-out", description=__doc__.splitlines()[0])
    parser.add_argument("lines", nargs="*", help="product lines (default: all)")
    parser.add_argument("--batch", action="append", help="land only these real batches (default: all)")
    parser.add_argument("--fault", action="append", choices=FAULTS, default=[],
                        help="kill a Spark worker during cleaning / the Celery worker during training")
    parser.add_argument("--report", type=Path, help="write where each stage ran as JSON here")
    args = parser.parse_args(argv)

    cfg = settings()
    root = (REPO_ROOT / cfg["REHEARSAL_DIR"]).resolve()
    shutil.rmtree(root, ignore_errors=True)
    logs = root / "logs"
    logs.mkdir(parents=True)
    marker = f"{os.getpid()}-{time.time_ns()}"
    os.environ[MARK] = marker
    t0 = time.time()
    timings: dict[str, float] = {}
    compose = load_compose(compose_env(cfg, root))
    svc = compose["services"]
    env = airflow_env(compose, cfg, root)
    os.environ.update(env)  # the runtime, `factory run` and every engine started below
    os.environ["FACTORY_HOME"] = str(root / "home")
    from pipelines.specs import load_specs

    lines = args.lines or [s.name for s in load_specs()]
    bindir = Path(sys.executable).parent
    stack = Stack()
    faults = None
    rc = 1
    report: dict = {}
    try:
        out(f"== starting the deployment's engines as local processes (state and logs in {root})")
        stack.postgres = stack.add(engines.start_postgres(svc["postgres"], int(cfg["POSTGRES_PORT"]), logs))
        stack.add(engines.start_redis(svc["redis"], int(cfg["REDIS_PORT"]), root / "redis", logs))
        master = stack.add(engines.start_spark_master(svc["spark-master"], bindir / "spark-class",
                                                      int(cfg["SPARK_MASTER_PORT"]), int(cfg["SPARK_MASTER_UI_PORT"]),
                                                      root / "spark" / "master", logs))
        restart = {}
        for i, ui in enumerate(cfg["SPARK_WORKER_UI_PORTS"].split(","), start=1):
            name = f"spark-worker-{i}"

            def start_worker(name=name, ui=ui):
                return engines.start_spark_worker(name, svc[name], bindir / "spark-class", master, int(ui),
                                                  int(cfg["SPARK_WORKER_CORES"]), cfg["SPARK_WORKER_MEMORY"],
                                                  root / "spark" / name, logs)

            restart[name] = start_worker
            stack.add(start_worker())
        stack.add(engines.start_mlflow(svc["mlflow"], bindir / "mlflow", int(cfg["MLFLOW_PORT"]),
                                       int(cfg["POSTGRES_PORT"]), root / "mlflow-artifacts", logs))
        from deploy.rehearsal import prometheus, sshd

        stack.add(sshd.start_sshd(root / "ssh", cfg["HOROVOD_HOST_ADDRESSES"].split(","), int(cfg["SSH_PORT"]), logs))
        timings["engines_s"] = round(time.time() - t0, 1)

        out("== Airflow (CeleryExecutor) on PostgreSQL and Redis")
        config_dir = Path(env["AIRFLOW_HOME"]) / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(POLICY, config_dir / POLICY.name)  # the images' cluster policy: FACTORY_TRAIN_QUEUE
        from pipelines import runtime

        stack.runtime_home = root / "home"
        runtime.start(stack.runtime_home, echo=lambda s: out(f"  {s}"))
        from pipelines.runtime.supervisor import runtime_environment

        worker_env = runtime_environment(stack.runtime_home)
        for name, log_port in zip(cfg["WORKER_NAMES"].split(","), cfg["WORKER_LOG_PORTS"].split(","), strict=True):

            def start_celery(name=name, log_port=log_port):
                return engines.start_celery_worker(name, svc[name], bindir / "airflow", worker_env, int(log_port), logs)

            restart[name] = start_celery
            stack.add(start_celery())

        out("== the factory's metrics exporter and Prometheus")
        stack.add(prometheus.start_exporter(Path(sys.executable), int(cfg["METRICS_PORT"]), {**os.environ}, logs))
        config = prometheus.prometheus_config({
            "factory-metrics:9108": f"127.0.0.1:{cfg['METRICS_PORT']}",
            "tf-serving:8501": f"127.0.0.1:{cfg['MODEL_SERVER_PORT']}",
            "localhost:9090": f"127.0.0.1:{cfg['PROMETHEUS_PORT']}",
        })
        prom = stack.add(prometheus.start_prometheus(root / "prometheus", config, int(cfg["PROMETHEUS_PORT"]), logs))
        prometheus.wait_targets_up(prom.info["url"], ["factory", "tf-serving", "prometheus"], 120)
        timings["stack_up_s"] = round(time.time() - t0, 1)
        out(f"== every engine is up ({timings['stack_up_s']:.0f}s)")

        from pipelines.cli import _client
        from pipelines.cli import main as factory

        if args.fault:
            faults = Faults(args.fault, stack, restart, _client, lines)
            faults.start()
        t_run = time.time()
        rc = factory(["run", *lines, *[a for b in (args.batch or []) for a in ("--batch", b)]])
        timings["main_job_s"] = round(time.time() - t_run, 1)
        if faults is not None:
            faults.stopping.set()
            if faults.pending:
                out(f"== faults not injected (the stage ended first): {faults.pending}")
                rc = rc or 1
        report = where_it_ran(stack, lines, _client(), faults)
        report["timings"] = timings
        print_report(report)
    except Exception:  # noqa: BLE001 - said, then everything is stopped
        traceback.print_exc()
        out(f"== the rehearsal failed; logs in {logs}")
        rc = 1
    finally:
        if faults is not None:
            faults.stopping.set()
        out("== stopping everything the rehearsal started")
        stopped = stack.stop()
        out(f"  stopped: {', '.join(stopped)}")
        time.sleep(1)
        left = processes_with(MARK, marker)
        if left:
            out(f"  still running after the stop: {left}; killing them")
            for pid in left:
                kill_tree(pid)
            rc = rc or 1
        else:
            out("  nothing left running")
        timings["total_s"] = round(time.time() - t0, 1)
        report["timings"] = timings
        report["left_running"] = left
        if args.report:
            from bench.machine import host

            report["command"] = " ".join(["scripts/rehearse-scale-out.sh", *(argv if argv is not None else sys.argv[1:])])
            report["machine"] = host()
            args.report.write_text(json.dumps(report, indent=1, default=str))
        out(f"== rehearsal {'passed' if rc == 0 else 'FAILED'} in {timings['total_s']:.0f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
