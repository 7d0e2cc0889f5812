"""The deployment's engines as local processes, each started with its compose service's
own command line and settings, only host names, ports and folders changed:
PostgreSQL (initialised by the compose init script), Redis, the Spark standalone master
and workers, the MLflow tracking server and the Airflow Celery workers."""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from deploy.rehearsal.process import Engine, EngineFailed, port_open, spawn

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_INIT = REPO_ROOT / "deploy" / "postgres" / "init" / "10-mlflow-database.sh"


def _get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


# ----------------------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise EngineFailed("PostgreSQL is not installed (Debian package postgresql)")
    return Path(found[-1]).parent


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: as root, run them as Debian's postgres user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def start_postgres(service: dict, port: int, logs: Path) -> Engine:
    """The postgres service: a fresh cluster whose superuser and password are the
    service's POSTGRES_USER/POSTGRES_PASSWORD (password authentication over TCP, as the
    official image sets it up), its POSTGRES_DB, then the compose init script with the
    service's environment. The data folder is a temporary one outside the clone (the
    server's user must reach it), removed by :func:`remove_postgres_data`."""
    env_svc = {k: str(v) for k, v in service["environment"].items()}
    bin_dir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="factory-rehearsal-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    pwfile = root / "pw"
    pwfile.write_text(env_svc["POSTGRES_PASSWORD"] + "\n")
    if os.geteuid() == 0:
        for p in (root, sock, pwfile):
            shutil.chown(p, "postgres")
    os.chmod(pwfile, 0o600)
    init = subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", env_svc["POSTGRES_USER"], "--pwfile", str(pwfile),
                      "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8"]),
        capture_output=True, text=True)
    pwfile.unlink()
    if init.returncode != 0:
        raise EngineFailed(f"initdb failed: {init.stderr[-2000:]}")
    argv = _as_postgres([str(bin_dir / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1",
                         "-p", str(port), "-k", str(sock)])
    engine = spawn("postgres", argv, env={**os.environ}, logs=logs,
                   info={"port": port, "root": str(root), "socket": str(sock)})
    ready = [str(bin_dir / "pg_isready"), "-h", str(sock), "-p", str(port), "-U", env_svc["POSTGRES_USER"]]
    engine.wait_healthy(lambda: subprocess.run(ready, capture_output=True).returncode == 0, 60)
    # what the official image's entrypoint does on an empty volume: the database, then
    # every script of /docker-entrypoint-initdb.d
    pg = {**os.environ, **env_svc, "PGHOST": str(sock), "PGPORT": str(port)}
    steps = [["psql", "-v", "ON_ERROR_STOP=1", "-U", env_svc["POSTGRES_USER"], "-d", "postgres", "-c",
              f'CREATE DATABASE "{env_svc["POSTGRES_DB"]}"'], ["bash", str(PG_INIT)]]
    for step in steps:
        done = subprocess.run(step, env=pg, capture_output=True, text=True)
        if done.returncode != 0:
            raise EngineFailed(f"postgres initialisation ({shlex.join(step[:2])}) failed: {done.stderr[-2000:]}")
    return engine


def remove_postgres_data(engine: Engine) -> None:
    shutil.rmtree(engine.info["root"], ignore_errors=True)


# ----------------------------------------------------------------------------- Redis


def start_redis(service: dict, port: int, workdir: Path, logs: Path) -> Engine:
    """The redis service's command (its password) on loopback, no persistence to disk."""
    redis = shutil.which("redis-server")
    if not redis:
        raise EngineFailed("Redis is not installed (Debian package redis-server)")
    command = list(service["command"])
    assert command[0] == "redis-server", command
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [redis, *command[1:], "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--daemonize", "no"]
    engine = spawn("redis", argv, env={**os.environ}, logs=logs, info={"port": port})
    env = {**os.environ, **{k: str(v) for k, v in service.get("environment", {}).items()}}
    ping = ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "ping"]
    engine.wait_healthy(lambda: subprocess.run(ping, env=env, capture_output=True, text=True).stdout.strip() == "PONG", 30)
    return engine


# ----------------------------------------------------------------------------- Spark


def _spark_argv(command: list[str], spark_class: Path, replace: dict[str, str]) -> list[str]:
    text = shlex.join(command)
    for old, new in replace.items():
        text = text.replace(old, new)
    argv = shlex.split(text)
    return [str(spark_class), *argv[1:]] if argv[0] == "spark-class" else argv


def spark_env(workdir: Path, spark_class: Path) -> dict[str, str]:
    """pyspark's own Spark (its jars) run by the spark-class next to it, as the Spark image does."""
    import pyspark

    path = f"{spark_class.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "SPARK_HOME": str(Path(pyspark.__file__).parent),
            "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_WORKER_DIR": str(workdir)}


def start_spark_master(service: dict, spark_class: Path, port: int, ui_port: int, workdir: Path, logs: Path) -> Engine:
    argv = _spark_argv(service["command"], spark_class, {
        "--webui-port 8080": f"--webui-port {ui_port}", "--port 7077": f"--port {port}",
        "spark-master": "127.0.0.1"})
    engine = spawn("spark-master", argv, env=spark_env(workdir, spark_class), logs=logs,
                   info={"url": f"spark://127.0.0.1:{port}", "ui": f"http://127.0.0.1:{ui_port}"})
    engine.wait_healthy(lambda: _get_json(engine.info["ui"] + "/json/").get("status") == "ALIVE", 120)
    return engine


def start_spark_worker(name: str, service: dict, spark_class: Path, master: Engine, ui_port: int, cores: int,
                       memory: str, workdir: Path, logs: Path) -> Engine:
    """A spark-worker service's command, registered with the master."""
    master_port = master.info["url"].rsplit(":", 1)[1]
    argv = _spark_argv(service["command"], spark_class, {
        "--webui-port 8081": f"--webui-port {ui_port}", ":7077": f":{master_port}", "spark-master": "127.0.0.1",
        f"--host {name}": "--host 127.0.0.1"})
    argv[argv.index("--cores") + 1] = str(cores)
    argv[argv.index("--memory") + 1] = memory
    workdir.mkdir(parents=True, exist_ok=True)
    engine = spawn(name, argv, env=spark_env(workdir, spark_class), logs=logs, info={"ui": f"http://127.0.0.1:{ui_port}"})
    engine.wait_healthy(lambda: bool(_get_json(engine.info["ui"] + "/json/").get("id")), 120)
    engine.info["id"] = _get_json(engine.info["ui"] + "/json/")["id"]
    return engine


def spark_alive_workers(master: Engine) -> int:
    return int(_get_json(master.info["ui"] + "/json/").get("aliveworkers", 0))


def spark_applications(master: Engine) -> dict[str, list[dict]]:
    """The master's active and completed applications."""
    state = _get_json(master.info["ui"] + "/json/")
    return {"active": state.get("activeapps", []), "completed": state.get("completedapps", [])}


def spark_executors(worker: Engine) -> dict[str, list[str]]:
    """Application ids with an executor on this worker: running ones and finished ones."""
    state = _get_json(worker.info["ui"] + "/json/")
    return {"running": [e["appid"] for e in state.get("executors", [])],
            "finished": [e["appid"] for e in state.get("finishedexecutors", [])]}


# ----------------------------------------------------------------------------- MLflow


def start_mlflow(service: dict, mlflow_bin: Path, port: int, postgres_port: int, artifacts: Path, logs: Path) -> Engine:
    """The mlflow service's command line: PostgreSQL backend (the init script's role and
    database), proxied artifacts, its allowed hosts; listening on loopback."""
    argv = [str(mlflow_bin)]
    for arg in service["command"][1:]:
        arg = arg.replace("@postgres:5432/", f"@127.0.0.1:{postgres_port}/")
        arg = {"--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={port}"}.get(arg, arg)
        if arg.startswith("--artifacts-destination="):
            arg = f"--artifacts-destination={artifacts}"
        argv.append(arg)
    artifacts.mkdir(parents=True, exist_ok=True)
    engine = spawn("mlflow", argv, env={**os.environ}, logs=logs, cwd=artifacts.parent,
                   info={"url": f"http://127.0.0.1:{port}"})
    engine.wait_healthy(lambda: urllib.request.urlopen(engine.info["url"] + "/health", timeout=5).status == 200, 180, 2)
    return engine


# ----------------------------------------------------------------------------- Celery workers


def start_celery_worker(name: str, service: dict, airflow_bin: Path, env: dict[str, str], log_port: int,
                        logs: Path) -> Engine:
    """An airflow-worker service's command (its queue and concurrency). Two workers share
    this machine: each gets its own log-server port, and its own host name (what the
    container's hostname is in the deployment), which Airflow records on every task it
    runs through ``[core] hostname_callable``."""
    command = list(service["command"])
    assert command[:3] == ["airflow", "celery", "worker"], command
    argv = [str(airflow_bin), *command[1:], "--celery-hostname", f"celery@{name}"]
    worker_env = {
        **env,
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "deploy.rehearsal.hostname.container_hostname",
        "HOSTNAME": name,
    }
    engine = spawn(name, argv, env=worker_env, logs=logs,
                   info={"queues": command[command.index("--queues") + 1], "log_port": log_port})
    engine.wait_healthy(lambda: port_open("127.0.0.1", log_port) and "ready." in engine.log.read_text(errors="replace"),
                        180, 2)
    return engine
