"""The Airflow runtime on one machine: API server (with the UI), scheduler, DAG
processor and triggerer as separate processes, on the embedded default (SQLite,
LocalExecutor) or on PostgreSQL when ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` says so;
and the model server (:mod:`pipelines.serving.server`, TF Serving's REST API over the
serving store) in the ML environment, one more component of the runtime; and, while the
Spark master is local, a long-lived Spark Connect server (``spark-connect``) on loopback
that the ingest DAG cleans every batch through (the ``spark_default`` connection is
``sc://127.0.0.1:<FACTORY_SPARK_CONNECT_PORT>``), so no batch pays Spark's start-up.

``start`` holds the runtime's lock (``<home>/run/runtime.lock``) from its check to its
record, so of two starts at once the second is refused; it refuses a start while a
runtime runs, waits until the API answers healthy and stops everything again if it
does not (and for the model server's ``/healthz``, and a Spark Connect session's round trip). The record (``<home>/run/runtime.json``) names each component by pid *and*
start time on this boot, so a stale record (a runtime that died, a reboot) never gets
another process signalled. ``stop`` sends SIGTERM to every process the runtime started
(the components' process groups, every process whose environment carries the runtime's
tag ``FACTORY_RUNTIME_TAG``: task processes, horovodrun's ranks and other processes in
sessions of their own, orphans, and the descendants of all these), waits, sends SIGKILL
to what is left, and checks that nothing survives. Each component runs as its own
process (not ``airflow standalone``): standalone leaves its children running on SIGTERM.

Credentials come from configuration, with documented local defaults:

| variable                     | default  | role   |
|------------------------------|----------|--------|
| ``FACTORY_ADMIN_USER``       | ``admin`` | admin |
| ``FACTORY_ADMIN_PASSWORD``   | ``admin`` |       |
| ``FACTORY_VIEWER_USER``      | ``viewer``| viewer (read-only) |
| ``FACTORY_VIEWER_PASSWORD``  | ``viewer``|       |
| ``FACTORY_API_HOST`` / ``FACTORY_API_PORT`` | ``127.0.0.1`` / ``8080`` | |
| ``FACTORY_SERVING_HOST`` / ``FACTORY_SERVING_PORT`` | ``127.0.0.1`` / ``8501`` | the model server |
| ``FACTORY_SPARK_CONNECT_PORT`` | ``15002`` (on ``127.0.0.1``) | the Spark Connect server |

The default passwords are refused when ``FACTORY_API_HOST`` is not a loopback address.
The model server has no authentication of its own: a ``FACTORY_SERVING_HOST`` beyond
loopback is refused unless ``FACTORY_SERVING_ALLOW_REMOTE=1`` says that the deployment
puts its authentication in front of it.
The JWT signing secret is ``AIRFLOW__API_AUTH__JWT_SECRET`` if set, else a random
one made once and kept (mode 600) in the Airflow home, shared by all components; the
auth manager's passwords file is written there with mode 600 too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import (
    REPO_ROOT,
    airflow_environment,
    airflow_home,
    factory_home,
    ml_python,
    ml_subprocess_environment,
    spark_connect_address,
    spark_connect_memory,
    spark_connect_port,
    spark_connection,
    spark_master,
    spark_master_is_local,
)
from pipelines.runtime.tether import proc_stat
from pipelines.storage import Busy, exclusive_lock, write_json_atomic

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer", "model-server", "spark-connect")
MODEL_SERVER = "model-server"  # runs in the ML environment, not Airflow's
SPARK_CONNECT = "spark-connect"  # while the master is local; a cluster is reached by spark-submit
SPARK_CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 45
# In the environment of every component, so of every process they start: how `stop`
# finds the processes that left the components' process groups.
RUNTIME_TAG = "FACTORY_RUNTIME_TAG"
LOCK_FILE = "runtime.lock"
# The local defaults, refused when the API server listens beyond loopback.
DEFAULT_PASSWORDS = {"FACTORY_ADMIN_PASSWORD": "admin", "FACTORY_VIEWER_PASSWORD": "viewer"}


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


def serving_host() -> str:
    return os.environ.get("FACTORY_SERVING_HOST", "127.0.0.1")


def serving_port() -> int:
    return int(os.environ.get("FACTORY_SERVING_PORT", "8501"))


def serving_url() -> str:
    host = serving_host()
    return f"http://{f'[{host}]' if ':' in host and not host.startswith('[') else host}:{serving_port()}"


def admin() -> Credentials:
    return Credentials(os.environ.get("FACTORY_ADMIN_USER", "admin"), os.environ.get("FACTORY_ADMIN_PASSWORD", "admin"))


def viewer() -> Credentials:
    return Credentials(
        os.environ.get("FACTORY_VIEWER_USER", "viewer"), os.environ.get("FACTORY_VIEWER_PASSWORD", "viewer")
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_exposure() -> None:
    """Refuse the local default passwords when the API server would listen beyond loopback,
    and a model server (no authentication of its own) beyond loopback unless allowed."""
    serving = serving_host()
    if not _is_loopback(serving) and os.environ.get("FACTORY_SERVING_ALLOW_REMOTE", "") != "1":
        raise RuntimeFailure(
            f"the model server would listen on {serving} (FACTORY_SERVING_HOST), reachable from other machines, "
            "and it has no authentication of its own: put the deployment's authentication in front of it and "
            "set FACTORY_SERVING_ALLOW_REMOTE=1, or leave FACTORY_SERVING_HOST at 127.0.0.1"
        )
    host = api_host()
    if _is_loopback(host):
        return
    weak = [name for name, default in DEFAULT_PASSWORDS.items() if os.environ.get(name, default) in ("", default)]
    if weak:
        raise RuntimeFailure(
            f"the API server would listen on {host} (FACTORY_API_HOST), reachable from other machines, "
            f"with the default password of {' and '.join(weak)}: set {' and '.join(weak)} to strong "
            "passwords (e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(24))'`), "
            "or leave FACTORY_API_HOST at 127.0.0.1"
        )


def spark_connect_wanted(env: dict[str, str]) -> bool:
    """The runtime runs its Spark Connect server while the Spark master is local and the
    ``spark_default`` connection is the one the master makes (a deployment that names its
    own connection, or a ``spark://``, ``yarn`` or ``k8s://`` master, keeps it)."""
    master = env.get("FACTORY_SPARK_MASTER", spark_master())
    return spark_master_is_local(master) and env.get("AIRFLOW_CONN_SPARK_DEFAULT") == spark_connection(master)


def spark_connect_argv(port: int | None = None, master: str | None = None, memory: str | None = None) -> list[str]:
    """The Spark Connect server in the foreground (``spark-submit`` of its class, not the
    daemonising ``sbin`` script), on loopback, with the cleaning job's session settings."""
    from pipelines.ingest.cleaning.job import SESSION_CONF

    conf = {
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port or spark_connect_port()),
        **SESSION_CONF,
    }
    argv = [str(Path(sys.executable).parent / "spark-submit"), "--class", SPARK_CONNECT_CLASS,
            "--name", "factory-spark-connect", "--master", master or spark_master(),
            "--driver-memory", memory or spark_connect_memory()]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    return [*argv, "spark-internal"]


def spark_connect_environment(env: dict[str, str]) -> dict[str, str]:
    """The Spark Connect server's environment: no Airflow settings or secrets; its Python
    workers (the image cleaning's UDFs) run this environment's interpreter, this clone's
    code importable."""
    served = {k: v for k, v in env.items() if not k.startswith("AIRFLOW")}
    pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO_ROOT)]
    served.update({
        "PYSPARK_PYTHON": env.get("PYSPARK_PYTHON", sys.executable),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *pythonpath]),
        "SPARK_LOCAL_IP": env.get("SPARK_LOCAL_IP", "127.0.0.1"),
    })
    return served


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, also when the file was there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)


def _jwt_secret(ahome: Path) -> str:
    if os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET"):
        return os.environ["AIRFLOW__API_AUTH__JWT_SECRET"]
    path = ahome / "jwt_secret"
    ahome.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(64))
    return path.read_text().strip()


def runtime_environment(home: Path | None = None) -> dict[str, str]:
    """Airflow's environment for the long-running components, with authentication on.

    Refuses (:class:`RuntimeFailure`) the default passwords beyond loopback."""
    check_exposure()
    home = home or factory_home()
    ahome = airflow_home(home)
    env = {**os.environ, **airflow_environment(home)}
    if spark_connect_wanted(env):
        env["AIRFLOW_CONN_SPARK_DEFAULT"] = spark_connection(spark_connect_address())
    a, v = admin(), viewer()
    passwords = ahome / "passwords.json"
    ahome.mkdir(parents=True, exist_ok=True)
    _write_private(passwords, json.dumps({a.username: a.password, v.username: v.password}))
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


# ----------------------------------------------------------------------------- processes
#
# A process is named by its pid and its start time (field 22 of /proc/<pid>/stat, clock
# ticks since boot) on one boot (/proc/sys/kernel/random/boot_id): a pid alone may name
# another process after the runtime died or the machine rebooted.


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None


def _same_process(pid: int, start: int | None) -> bool:
    """``pid`` is alive (not a zombie) and is the process that started at ``start``."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z" and start is not None and int(fields[19]) == start


def _alive(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def _processes() -> dict[int, list[str]]:
    procs = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            fields = proc_stat(int(proc.name))
            if fields is not None and fields[0] != "Z":
                procs[int(proc.name)] = fields
    return procs


def group_processes(pgids: Iterable[int]) -> list[int]:
    """Live (not zombie) processes in any of the process groups ``pgids``."""
    groups = set(pgids)
    return [pid for pid, fields in _processes().items() if int(fields[2]) in groups]


def _has_tag(pid: int, tag: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return tag in fh.read().split(b"\0")
    except OSError:
        return False


def _components(record: dict) -> dict[str, int]:
    """The record's components that are still the processes it started."""
    if record.get("boot_id") != _boot_id():
        return {}
    starts = record.get("starts") or {}
    return {name: pid for name, pid in record["pids"].items() if _same_process(pid, starts.get(name))}


def runtime_processes(record: dict) -> dict[int, int]:
    """``pid -> start time`` of every live process the runtime of ``record`` started: its
    components' process groups, every process that carries the runtime's tag in its
    environment (what left the groups: task processes in their own sessions, horovodrun's
    ranks, orphans), and their descendants. Never this process."""
    procs = _processes()
    leaders = set(_components(record).values())
    tag = f"{RUNTIME_TAG}={record['tag']}".encode() if record.get("tag") and record.get("boot_id") == _boot_id() else None
    found = {pid for pid, fields in procs.items()
             if int(fields[2]) in leaders or (tag is not None and _has_tag(pid, tag))}
    children: dict[int, list[int]] = {}
    for pid, fields in procs.items():
        children.setdefault(int(fields[1]), []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    found.discard(os.getpid())
    return {pid: int(procs[pid][19]) for pid in found}


def _signal(pid: int, start: int, sig: int) -> None:
    """Send ``sig`` to ``pid`` only if it is still the process that started at ``start``
    (through a pidfd where the kernel has them, so the pid cannot be reused in between)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        fd = None
    try:
        if not _same_process(pid, start):
            return
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    finally:
        if fd is not None:
            os.close(fd)


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pids"), dict) else None


def status(home: Path | None = None) -> dict[str, object] | None:
    """The running runtime's record (components and pids), or None.

    ``alive``: the components still running; ``processes``: the pids of every process of
    the runtime (tasks included). A record none of whose processes is left (the runtime
    died, the machine rebooted) is removed."""
    path = _pidfile(home or factory_home())
    if not path.exists():
        return None
    record = _read_record(path)
    procs = runtime_processes(record) if record is not None else {}
    if not procs:
        path.unlink(missing_ok=True)  # a stale record of a runtime that died
        return None
    record["alive"] = _components(record)
    record["processes"] = sorted(procs)
    return record


@contextlib.contextmanager
def _lock(home: Path, *, wait: bool) -> Iterator[None]:
    """The runtime's lock, held by ``start`` from its check to its record and by ``stop``."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(_pidfile(home).parent, LOCK_FILE, wait=wait))
        except Busy:
            raise RuntimeFailure(
                f"another `factory start` or `factory stop` is in progress for {home}; "
                "wait for it, then check with `factory start` again"
            ) from None
        yield


def start(home: Path | None = None, *, echo: Callable[[str], None] = lambda s: None) -> dict[str, object]:
    """Start every component; return the runtime record once the API is healthy."""
    home = home or factory_home()
    with _lock(home, wait=False):
        running = status(home)
        if running is not None:
            if running["alive"]:
                raise RuntimeFailure(
                    f"the factory runtime is already running (pids {sorted(running['alive'].values())}, "
                    f"{running['url']}); stop it first with `factory stop`"
                )
            raise RuntimeFailure(
                f"processes of the last factory runtime are still running (pids {running['processes']}); "
                "end them with `factory stop`"
            )
        env = runtime_environment(home)
        tag = uuid.uuid4().hex
        env[RUNTIME_TAG] = tag
        logs = home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        _migrate(env, logs)
        pids, starts = {}, {}
        record = {"pids": pids, "starts": starts, "boot_id": _boot_id(), "tag": tag,
                  "url": base_url(), "started_at": time.time(), "logs": str(logs)}
        components = list(COMPONENTS)
        if MODEL_SERVER in components:
            record["serving_url"] = serving_url()
            if not ml_python().exists():
                components.remove(MODEL_SERVER)
                echo(f"no ML environment ({ml_python()}): the model server is not started")
        if SPARK_CONNECT in components:
            # runtime_environment pointed spark_default at this runtime's server, or not
            if env.get("AIRFLOW_CONN_SPARK_DEFAULT") == spark_connection(spark_connect_address()):
                record["spark_connect"] = spark_connect_address()
            else:
                components.remove(SPARK_CONNECT)
                echo("the Spark master is a cluster's (FACTORY_SPARK_MASTER) or spark_default is set: "
                     "no Spark Connect server is started; batches are submitted with spark-submit")
        try:
            for name in components:
                with open(logs / f"{name}.log", "ab") as log:
                    proc = subprocess.Popen(
                        _component_argv(name), env=_component_env(name, env, home), stdout=log,
                        stderr=subprocess.STDOUT, start_new_session=True
                    )
                pids[name] = proc.pid
                starts[name] = _start_time(proc.pid)
        finally:
            # written even if a component failed to start, so that `stop` finds the others
            write_json_atomic(_pidfile(home), record)
        echo(f"starting the factory runtime ({', '.join(components)}); logs in {logs}")
        try:
            _wait_healthy(record, echo)
        except BaseException:
            _stop(home, echo)
            raise
        return record


def _component_argv(name: str) -> list[str]:
    """The command line of one component."""
    if name == MODEL_SERVER:
        return [str(ml_python()), "-m", "pipelines.serving.server", "--host", serving_host(),
                "--port", str(serving_port())]
    if name == SPARK_CONNECT:
        return spark_connect_argv()
    return ["airflow", name]


def _component_env(name: str, env: dict[str, str], home: Path) -> dict[str, str]:
    """A component's environment: Airflow's, or for the model server the ML environment's
    (no Airflow settings or secrets), both with the runtime's tag; the Spark Connect server's."""
    if name == SPARK_CONNECT:
        return spark_connect_environment(env)
    if name != MODEL_SERVER:
        return env
    served = ml_subprocess_environment()
    served.setdefault("TF_USE_LEGACY_KERAS", "1")
    served.update({"FACTORY_HOME": str(home), RUNTIME_TAG: env[RUNTIME_TAG]})
    return served


def _migrate(env: dict[str, str], logs: Path) -> None:
    with open(logs / "airflow-db-migrate.log", "ab") as log:
        done = subprocess.run(["airflow", "db", "migrate"], env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeFailure(f"airflow db migrate failed; see {logs / 'airflow-db-migrate.log'}")


def _wait_healthy(record: dict, echo: Callable[[str], None]) -> None:
    """Wait for the API server (and the scheduler) to be healthy, then the model server."""
    deadline = time.monotonic() + START_TIMEOUT_S
    _wait_airflow(record, echo, deadline)
    if MODEL_SERVER in record["pids"]:
        _wait_serving(record, echo, deadline)
    if SPARK_CONNECT in record["pids"]:
        _wait_spark_connect(record, echo, deadline)


def _check_alive(record: dict) -> None:
    dead = [n for n, pid in record["pids"].items() if not _alive(pid)]
    if dead:
        raise RuntimeFailure(f"runtime component(s) {dead} exited during start; see {record['logs']}")


def _poll_health(record: dict, url: str, judge: Callable, deadline: float, pause_s: float) -> tuple[bool, str]:
    """GET ``url`` until ``judge(response)`` answers ``(True, what)``, or the deadline passes;
    raises at once if a component died. ``judge`` answers ``(False, why)`` while not ready.
    Returns ``(True, what)`` when ready, else ``(False, the last reason)``."""
    import httpx

    last = "no answer"
    while time.monotonic() < deadline:
        _check_alive(record)
        try:
            ready, what = judge(httpx.get(url, timeout=5))
            if ready:
                return True, what
            last = what
        except (httpx.HTTPError, ValueError) as err:
            last = type(err).__name__
        time.sleep(pause_s)
    return False, last


def _wait_serving(record: dict, echo: Callable[[str], None], deadline: float) -> None:
    """The model server answers ``/healthz`` once it has loaded what the store holds."""

    def judge(r) -> tuple[bool, str]:
        if r.status_code != 200:
            return False, f"HTTP {r.status_code}"
        lines = r.json().get("lines") or {}
        return True, ", ".join(f"{k} v{v}" for k, v in lines.items()) or "no model in the store yet"

    ready, said = _poll_health(record, f"{record['serving_url']}/healthz", judge, deadline, 0.5)
    if not ready:
        raise RuntimeFailure(f"the model server did not answer /healthz within {START_TIMEOUT_S}s (last: {said}); "
                             f"see {record['logs']}")
    echo(f"the model server is up at {record['serving_url']} ({said})")


def _wait_spark_connect(record: dict, echo: Callable[[str], None], deadline: float) -> None:
    """The Spark Connect server runs a query in a session of its own, which is then released."""
    from pipelines.ingest.cleaning.job import ConnectUnreachable, connect_mode, connect_session

    address = record["spark_connect"]
    last = "no answer"
    while time.monotonic() < deadline:
        _check_alive(record)
        with connect_mode():
            try:
                spark = connect_session(address)
            except ConnectUnreachable as err:
                last = str(err)
                time.sleep(1.0)
                continue
            try:
                version, answer = spark.version, spark.sql("SELECT 1 AS one").collect()[0]["one"]
            finally:
                spark.stop()
        if answer == 1:
            echo(f"the Spark Connect server is up at {address} (Spark {version})")
            return
        last = f"SELECT 1 answered {answer!r}"
    raise RuntimeFailure(f"the Spark Connect server did not answer at {address} within {START_TIMEOUT_S}s "
                         f"(last: {last}); see {record['logs']}")


def _wait_airflow(record: dict, echo: Callable[[str], None], deadline: float) -> None:
    """The API server answers healthy for its metadata database and the scheduler."""

    def judge(r) -> tuple[bool, str]:
        if r.status_code != 200:
            return False, f"HTTP {r.status_code}"
        states = {k: v.get("status") for k, v in r.json().items() if isinstance(v, dict)}
        return states.get("metadatabase") == "healthy" and states.get("scheduler") == "healthy", str(states)

    ready, said = _poll_health(record, f"{record['url']}/api/v2/monitor/health", judge, deadline, 2.0)
    if not ready:
        raise RuntimeFailure(f"Airflow did not become healthy within {START_TIMEOUT_S}s (last: {said})")
    echo(f"Airflow is up at {record['url']}")


def stop(home: Path | None = None, *, echo: Callable[[str], None] = lambda s: None) -> list[str]:
    """Stop every process the runtime started (components, task processes and their
    children); return the components stopped. Waits for a start in progress."""
    home = home or factory_home()
    with _lock(home, wait=True):
        return _stop(home, echo)


def _reap(record: dict) -> None:
    """Reap the components this process started itself (`factory run`)."""
    for pid in record["pids"].values():
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _stop(home: Path, echo: Callable[[str], None]) -> list[str]:
    path = _pidfile(home)
    if not path.exists():
        return []
    record = _read_record(path)
    tracked = runtime_processes(record) if record is not None else {}
    if not tracked:
        path.unlink(missing_ok=True)
        echo(f"removed the record of a runtime that is no longer running ({path})")
        return []
    signalled: set[int] = set()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while True:
        tracked.update(runtime_processes(record))  # what started since the last look
        alive = {pid: t for pid, t in tracked.items() if _same_process(pid, t)}
        for pid in sorted(alive.keys() - signalled):
            _signal(pid, alive[pid], signal.SIGTERM)
            signalled.add(pid)
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    for _ in range(3):  # SIGKILL what is left, and what it started meanwhile
        tracked.update(runtime_processes(record))
        alive = {pid: t for pid, t in tracked.items() if _same_process(pid, t)}
        if not alive:
            break
        echo(f"{len(alive)} process(es) did not stop within {STOP_TIMEOUT_S}s: killing {sorted(alive)}")
        for pid, t in alive.items():
            _signal(pid, t, signal.SIGKILL)
        _reap(record)
        time.sleep(0.5)
    _reap(record)
    left = sorted(pid for pid, t in tracked.items() if _same_process(pid, t))
    path.unlink(missing_ok=True)
    if left:
        raise RuntimeFailure(f"processes {left} of the factory runtime are still running after SIGKILL")
    echo("the factory runtime stopped")
    return list(record["pids"])
