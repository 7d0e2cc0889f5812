"""The Airflow runtime on one machine: API server (with the UI), scheduler, DAG
processor and triggerer as separate processes, on the embedded default (SQLite,
LocalExecutor) or on PostgreSQL when ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` says so.

``start`` refuses a second start while one is running, waits until the API answers
healthy and stops everything again if it does not; ``stop`` sends SIGTERM to each
component's process group, then SIGKILL to what is left, and checks that nothing of
it survives. Each component runs as its own process (not ``airflow standalone``):
standalone leaves its children running on SIGTERM.

Credentials come from configuration, with documented local defaults:

| variable                     | default  | role   |
|------------------------------|----------|--------|
| ``FACTORY_ADMIN_USER``       | ``admin`` | admin |
| ``FACTORY_ADMIN_PASSWORD``   | ``admin`` |       |
| ``FACTORY_VIEWER_USER``      | ``viewer``| viewer (read-only) |
| ``FACTORY_VIEWER_PASSWORD``  | ``viewer``|       |
| ``FACTORY_API_HOST`` / ``FACTORY_API_PORT`` | ``127.0.0.1`` / ``8080`` | |

The JWT signing secret is ``AIRFLOW__API_AUTH__JWT_SECRET`` if set, else a random
one made once and kept (mode 600) in the Airflow home, shared by all components.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import airflow_environment, airflow_home, factory_home

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 45


class RuntimeFailure(RuntimeError):
    """The runtime cannot start or stop as asked; the message says why."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def api_host() -> str:
    return os.environ.get("FACTORY_API_HOST", "127.0.0.1")


def api_port() -> int:
    return int(os.environ.get("FACTORY_API_PORT", "8080"))


def base_url() -> str:
    return os.environ.get("FACTORY_API_URL", f"http://{api_host()}:{api_port()}")


def admin() -> Credentials:
    return Credentials(os.environ.get("FACTORY_ADMIN_USER", "admin"), os.environ.get("FACTORY_ADMIN_PASSWORD", "admin"))


def viewer() -> Credentials:
    return Credentials(
        os.environ.get("FACTORY_VIEWER_USER", "viewer"), os.environ.get("FACTORY_VIEWER_PASSWORD", "viewer")
    )


def _jwt_secret(ahome: Path) -> str:
    if os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET"):
        return os.environ["AIRFLOW__API_AUTH__JWT_SECRET"]
    path = ahome / "jwt_secret"
    if not path.exists():
        ahome.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(64))
    return path.read_text().strip()


def runtime_environment(home: Path | None = None) -> dict[str, str]:
    """Airflow's environment for the long-running components, with authentication on."""
    home = home or factory_home()
    ahome = airflow_home(home)
    env = {**os.environ, **airflow_environment(home)}
    a, v = admin(), viewer()
    passwords = ahome / "passwords.json"
    ahome.mkdir(parents=True, exist_ok=True)
    fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({a.username: a.password, v.username: v.password}, fh)
    url = base_url()
    env.update(
        {
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{a.username}:admin,{v.username}:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__API_AUTH__JWT_SECRET": _jwt_secret(ahome),
            "AIRFLOW__API__HOST": api_host(),
            "AIRFLOW__API__PORT": str(api_port()),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__API__WORKERS": env.get("AIRFLOW__API__WORKERS", "1"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            # new DAGs run as soon as they are parsed; a deployment may say otherwise
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": env.get("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False"),
            "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": env.get("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "30"),
        }
    )
    return env


def _pidfile(home: Path) -> Path:
    return home / "run" / "runtime.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def group_processes(pgids: Iterable[int]) -> list[int]:
    """Live (not zombie) processes in any of the process groups ``pgids``."""
    groups = set(pgids)
    alive = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) in groups and fields[0] != "Z":
                alive.append(int(proc.name))
    return alive


def _group_alive(pgid: int) -> bool:
    return bool(group_processes([pgid]))


def status(home: Path | None = None) -> dict[str, object] | None:
    """The running runtime's record (components and pids), or None."""
    path = _pidfile(home or factory_home())
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    alive = {name: pid for name, pid in record["pids"].items() if _alive(pid)}
    if not alive:
        path.unlink(missing_ok=True)  # a stale record of a runtime that died
        return None
    record["alive"] = alive
    return record


def start(home: Path | None = None, *, echo: Callable[[str], None] = lambda s: None) -> dict[str, object]:
    """Start every component; return the runtime record once the API is healthy."""
    home = home or factory_home()
    running = status(home)
    if running is not None:
        raise RuntimeFailure(
            f"the factory runtime is already running (pids {sorted(running['alive'].values())}, "
            f"{running['url']}); stop it first with `factory stop`"
        )
    env = runtime_environment(home)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _migrate(env, logs)
    pids = {}
    for name in COMPONENTS:
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            ["airflow", name], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        pids[name] = proc.pid
    record = {"pids": pids, "url": base_url(), "started_at": time.time(), "logs": str(logs)}
    _pidfile(home).parent.mkdir(parents=True, exist_ok=True)
    _pidfile(home).write_text(json.dumps(record))
    echo(f"starting Airflow ({', '.join(COMPONENTS)}); logs in {logs}")
    try:
        _wait_healthy(record, echo)
    except BaseException:
        stop(home)
        raise
    return record


def _migrate(env: dict[str, str], logs: Path) -> None:
    with open(logs / "airflow-db-migrate.log", "ab") as log:
        done = subprocess.run(["airflow", "db", "migrate"], env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeFailure(f"airflow db migrate failed; see {logs / 'airflow-db-migrate.log'}")


def _wait_healthy(record: dict, echo: Callable[[str], None]) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        dead = [n for n, pid in record["pids"].items() if not _alive(pid)]
        if dead:
            raise RuntimeFailure(f"Airflow component(s) {dead} exited during start; see {record['logs']}")
        try:
            r = httpx.get(f"{record['url']}/api/v2/monitor/health", timeout=5)
            if r.status_code == 200:
                health = r.json()
                states = {k: v.get("status") for k, v in health.items() if isinstance(v, dict)}
                if states.get("metadatabase") == "healthy" and states.get("scheduler") == "healthy":
                    echo(f"Airflow is up at {record['url']}")
                    return
                last = str(states)
        except httpx.HTTPError as err:
            last = type(err).__name__
        time.sleep(2)
    raise RuntimeFailure(f"Airflow did not become healthy within {START_TIMEOUT_S}s (last: {last})")


def stop(home: Path | None = None, *, echo: Callable[[str], None] = lambda s: None) -> list[str]:
    """Stop every component and its children; return what was stopped."""
    home = home or factory_home()
    path = _pidfile(home)
    if not path.exists():
        return []
    record = json.loads(path.read_text())
    pgids = list(record["pids"].items())
    for _, pid in pgids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and group_processes(pid for _, pid in pgids):
        time.sleep(0.5)
    for name, pid in pgids:
        if _group_alive(pid):
            echo(f"{name} did not stop within {STOP_TIMEOUT_S}s: killing it")
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for _name, pid in pgids:  # reap what this process started
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    time.sleep(0.5)
    left = [name for name, pid in pgids if _group_alive(pid)]
    path.unlink(missing_ok=True)
    if left:
        raise RuntimeFailure(f"processes of {left} are still running after SIGKILL")
    echo("Airflow stopped")
    return [name for name, _ in pgids]
