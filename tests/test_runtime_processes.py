"""The runtime's supervisor without Airflow: ``start`` and ``stop`` as they run, with the
components' command lines replaced by small processes (``_component_argv``), the
database migration and the health wait left out. What is real: the start lock, the
runtime record written by ``start``, the environment the components get, the process
groups and sessions, the signals, ``stop``'s search for what the runtime started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pgserver import free_port

from pipelines import runtime
from pipelines.config import airflow_home
from pipelines.runtime import supervisor


class Reached(Exception):
    """``start`` got as far as the database migration."""


@pytest.fixture
def loopback(monkeypatch):
    for name in ("FACTORY_API_HOST", "FACTORY_ADMIN_PASSWORD", "FACTORY_VIEWER_PASSWORD",
                 "FACTORY_ADMIN_USER", "FACTORY_VIEWER_USER", "AIRFLOW__API_AUTH__JWT_SECRET",
                 "FACTORY_SERVING_HOST", "FACTORY_SERVING_PORT", "FACTORY_SERVING_ALLOW_REMOTE",
                 "FACTORY_SPARK_CONNECT_PORT"):
        monkeypatch.delenv(name, raising=False)


def _live(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def _wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- start lock


def test_two_starts_at_once_one_is_refused(home, monkeypatch, loopback):
    """Both starts pass the status check before either writes its record: the second
    must be refused, not go on to start a second scheduler on the same database."""
    entered, release = threading.Event(), threading.Event()
    reached: list[str] = []

    def migrate(env, logs):
        reached.append(threading.current_thread().name)
        if len(reached) == 1:
            entered.set()
            release.wait(30)
        raise Reached

    monkeypatch.setattr(supervisor, "_migrate", migrate)
    first: list[BaseException] = []

    def run_first():
        try:
            runtime.start(home)
        except BaseException as err:  # noqa: BLE001 - looked at below
            first.append(err)

    thread = threading.Thread(target=run_first, name="first")
    thread.start()
    try:
        assert entered.wait(30)
        with pytest.raises(runtime.RuntimeFailure, match="in progress"):
            runtime.start(home)
    finally:
        release.set()
        thread.join(30)
    assert reached == ["first"]
    assert len(first) == 1 and isinstance(first[0], Reached)
    # the lock went with the first start: a later start gets as far as the migration
    with pytest.raises(Reached):
        runtime.start(home)


# ----------------------------------------------------------------------------- stop

# A component that starts what Airflow's task processes do: a child in its own session
# (horovodrun starts its ranks so) with a grandchild that ignores SIGTERM, and a
# process whose parent exits at once (reparented: no longer anyone's descendant).
TREE = r"""
import os, signal, subprocess, sys, time
role, out, code = sys.argv[1], sys.argv[2], sys.argv[3]
def spawn(child, **kw):
    subprocess.Popen([sys.executable, "-c", code, child, out, code], **kw)
if role == "component":
    spawn("session", start_new_session=True)
    spawn("parent")
elif role == "session":
    spawn("stubborn")
elif role == "parent":
    spawn("orphan", start_new_session=True)
    sys.exit(0)
elif role == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(out, "a") as fh:
    fh.write(f"{role} {os.getpid()}\n")
time.sleep(600)
"""


def test_stop_ends_every_process_the_runtime_started(home, tmp_path, monkeypatch, loopback):
    pids_file = tmp_path / "pids"
    monkeypatch.setattr(supervisor, "COMPONENTS", ("api-server", "scheduler"))
    monkeypatch.setattr(supervisor, "STOP_TIMEOUT_S", 3)
    monkeypatch.setattr(supervisor, "_migrate", lambda env, logs: None)
    monkeypatch.setattr(
        supervisor, "_component_argv",
        lambda name: [sys.executable, "-c", TREE, "component" if name == "scheduler" else name, str(pids_file), TREE],
    )

    def seen() -> dict[str, int]:
        if not pids_file.exists():
            return {}
        return {role: int(pid) for role, pid in (ln.split() for ln in pids_file.read_text().splitlines())}

    monkeypatch.setattr(supervisor, "_wait_healthy", lambda record, echo: _wait_for(lambda: len(seen()) == 5))
    record = runtime.start(home)
    procs = seen()
    assert set(procs) == {"api-server", "component", "session", "stubborn", "orphan"}
    assert procs["component"] == record["pids"]["scheduler"]
    # the child in its own session and the orphan are outside every component's group
    assert procs["session"] not in runtime.group_processes(record["pids"].values())
    try:
        assert sorted(runtime.stop(home)) == ["api-server", "scheduler"]
        left = {role: pid for role, pid in procs.items() if _live(pid)}
        assert left == {}
        assert runtime.status(home) is None
    finally:
        for pid in procs.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_stale_record_does_not_signal_an_unrelated_process(home, monkeypatch, loopback):
    """After a reboot the record's pids may name other processes: one that holds such a
    pid (a group leader, as the components were) must survive ``status`` and ``stop``."""
    monkeypatch.setattr(supervisor, "COMPONENTS", ("api-server", "scheduler"))
    monkeypatch.setattr(supervisor, "_migrate", lambda env, logs: None)
    monkeypatch.setattr(supervisor, "_wait_healthy", lambda record, echo: None)
    monkeypatch.setattr(supervisor, "_component_argv", lambda name: ["sleep", "600"])
    record = runtime.start(home)
    # the runtime dies without `stop` (a power cut): its record stays
    for pid in record["pids"].values():
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    path = home / "run" / "runtime.json"
    assert path.exists()
    # start times are in clock ticks: let at least one pass, or the stand-in for a process
    # of the next boot could share its tick with the killed component
    time.sleep(0.1)
    unrelated = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        # ... and after the reboot the scheduler's pid is someone else's
        stale = json.loads(path.read_text())
        stale["pids"]["scheduler"] = unrelated.pid
        path.write_text(json.dumps(stale))
        assert runtime.status(home) is None
        assert not path.exists()
        path.write_text(json.dumps(stale))
        assert runtime.stop(home) == []
        time.sleep(0.3)
        assert unrelated.poll() is None, "stop signalled a process it did not start"
        assert not path.exists()
    finally:
        unrelated.kill()
        unrelated.wait()


# ----------------------------------------------------------------------------- credentials


def test_default_passwords_are_refused_beyond_loopback(home, monkeypatch, loopback):
    def migrate(env, logs):
        raise Reached

    monkeypatch.setattr(supervisor, "_migrate", migrate)
    monkeypatch.setenv("FACTORY_API_HOST", "0.0.0.0")
    with pytest.raises(runtime.RuntimeFailure) as info:
        runtime.start(home)
    message = str(info.value)
    assert "FACTORY_ADMIN_PASSWORD" in message and "FACTORY_VIEWER_PASSWORD" in message
    assert "0.0.0.0" in message
    assert not (airflow_home(home) / "passwords.json").exists()
    # a default one is enough to refuse
    monkeypatch.setenv("FACTORY_ADMIN_PASSWORD", "a-long-password-nobody-guesses-7f3a")
    monkeypatch.setenv("FACTORY_VIEWER_PASSWORD", "viewer")
    with pytest.raises(runtime.RuntimeFailure, match="FACTORY_VIEWER_PASSWORD"):
        runtime.start(home)
    # both set: it goes on
    monkeypatch.setenv("FACTORY_VIEWER_PASSWORD", "another-long-one-9c1e")
    with pytest.raises(Reached):
        runtime.start(home)
    # on loopback the local defaults still work
    for host in ("127.0.0.1", "::1", "localhost"):
        monkeypatch.setenv("FACTORY_API_HOST", host)
        monkeypatch.delenv("FACTORY_ADMIN_PASSWORD", raising=False)
        monkeypatch.delenv("FACTORY_VIEWER_PASSWORD", raising=False)
        with pytest.raises(Reached):
            runtime.start(home)


def test_model_server_beyond_loopback_is_refused_unless_allowed(home, monkeypatch, loopback):
    def migrate(env, logs):
        raise Reached

    monkeypatch.setattr(supervisor, "_migrate", migrate)
    monkeypatch.setenv("FACTORY_SERVING_HOST", "0.0.0.0")
    with pytest.raises(runtime.RuntimeFailure, match="FACTORY_SERVING_ALLOW_REMOTE=1") as info:
        runtime.start(home)
    assert "0.0.0.0" in str(info.value) and "FACTORY_SERVING_HOST" in str(info.value)
    monkeypatch.setenv("FACTORY_SERVING_ALLOW_REMOTE", "1")
    with pytest.raises(Reached):
        runtime.start(home)


def _one_real_component(monkeypatch, name: str) -> None:
    """`start` runs the real ``name`` beside an API server that only sleeps (no Airflow)."""
    monkeypatch.setattr(supervisor, "COMPONENTS", ("api-server", name))
    monkeypatch.setattr(supervisor, "_migrate", lambda env, logs: None)
    monkeypatch.setattr(supervisor, "_wait_airflow", lambda record, echo, deadline: None)
    argv = supervisor._component_argv
    monkeypatch.setattr(supervisor, "_component_argv",
                        lambda component: ["sleep", "600"] if component == "api-server" else argv(component))


def _assert_tagged_without_airflow(pid: int, record: dict) -> None:
    """The process carries the runtime's tag and no Airflow settings or secrets."""
    with open(f"/proc/{pid}/environ", "rb") as fh:
        environ = fh.read().split(b"\0")
    assert f"{supervisor.RUNTIME_TAG}={record['tag']}".encode() in environ
    assert not [v for v in environ if v.startswith(b"AIRFLOW")]


@pytest.mark.integration
@pytest.mark.skipif(not supervisor.ml_python().exists(), reason="ML environment not set up")
def test_model_server_starts_and_stops_with_the_runtime(home, monkeypatch, loopback):
    """The real model server (ML environment) is a component: `start` waits for its
    /healthz, `stop` leaves nothing of it."""
    import httpx

    port = free_port()
    monkeypatch.setenv("FACTORY_SERVING_PORT", str(port))
    _one_real_component(monkeypatch, "model-server")
    said: list[str] = []
    record = runtime.start(home, echo=said.append)
    try:
        server = record["pids"]["model-server"]
        assert record["serving_url"] == f"http://127.0.0.1:{port}"
        assert any("model server is up" in s for s in said), said
        assert httpx.get(f"{record['serving_url']}/healthz").json() == {"status": "ok", "lines": {}}
        _assert_tagged_without_airflow(server, record)
    finally:
        assert sorted(runtime.stop(home)) == ["api-server", "model-server"]
    assert not _live(server)
    assert runtime.status(home) is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{record['serving_url']}/healthz")


@pytest.mark.integration
def test_spark_connect_server_starts_and_stops_with_the_runtime(home, monkeypatch, loopback):
    """The real Spark Connect server is a component while the master is local: `start`
    waits for a session's round trip and points spark_default at it; `stop` leaves
    nothing of it (the JVM and the Python workers it started). A cluster's master keeps
    spark-submit and starts no server."""
    from pipelines.ingest.cleaning import job

    port = free_port()
    monkeypatch.setenv("FACTORY_SPARK_CONNECT_PORT", str(port))
    monkeypatch.setenv("FACTORY_SPARK_CONNECT_MEMORY", "1g")
    _one_real_component(monkeypatch, "spark-connect")
    env = runtime.runtime_environment(home)
    assert json.loads(env["AIRFLOW_CONN_SPARK_DEFAULT"]) == {"conn_type": "spark", "host": f"sc://127.0.0.1:{port}"}
    said: list[str] = []
    record = runtime.start(home, echo=said.append)
    try:
        server = record["pids"]["spark-connect"]
        assert record["spark_connect"] == f"sc://127.0.0.1:{port}"
        assert any("Spark Connect server is up" in s for s in said), said
        assert (Path(record["logs"]) / "spark-connect.log").exists()
        _assert_tagged_without_airflow(server, record)
        tree = runtime.runtime_processes(record)
        assert server in tree
    finally:
        assert sorted(runtime.stop(home)) == ["api-server", "spark-connect"]
    assert not _live(server) and not [p for p in tree if _live(p)]
    assert runtime.status(home) is None
    with pytest.raises(job.ConnectUnreachable, match=str(port)), job.connect_mode():
        job.connect_session(record["spark_connect"])
    # a standalone master: spark-submit's path, no server
    monkeypatch.setenv("FACTORY_SPARK_MASTER", "spark://127.0.0.1:7077")
    monkeypatch.delenv("AIRFLOW_CONN_SPARK_DEFAULT")
    env = runtime.runtime_environment(home)
    assert json.loads(env["AIRFLOW_CONN_SPARK_DEFAULT"])["host"] == "spark://127.0.0.1:7077"


def test_runtime_secrets_are_private(home, loopback):
    runtime.runtime_environment(home)
    ahome = airflow_home(home)
    for name in ("passwords.json", "jwt_secret"):
        assert (ahome / name).stat().st_mode & 0o777 == 0o600, name
    # kept files made readable to others (a restored backup) are made private again
    for name in ("passwords.json", "jwt_secret"):
        os.chmod(ahome / name, 0o644)
    secret = (ahome / "jwt_secret").read_text()
    env = runtime.runtime_environment(home)
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == secret
    for name in ("passwords.json", "jwt_secret"):
        assert (ahome / name).stat().st_mode & 0o777 == 0o600, name
    assert Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]) == ahome / "passwords.json"
