"""One engine of the rehearsal as a local process: started in its own session (so its
whole process group can be signalled), its output in a log file, waited for until a
health check passes, stopped with SIGTERM and then SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class EngineFailed(RuntimeError):
    """An engine exited, or did not become healthy in time; the message has its log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class Engine:
    """A started process (and its process group)."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen
    info: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_healthy(self, check: Callable[[], bool], timeout: float, pause: float = 1.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise EngineFailed(f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log)}")
            try:
                if check():
                    return
            except Exception:  # noqa: BLE001 - not up yet: connection refused, bad answer
                pass
            time.sleep(pause)
        raise EngineFailed(f"{self.name} was not healthy within {timeout:.0f}s:\n{tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL the whole process group at once: the host or container is gone."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def stop(self, grace: float = 30.0) -> None:
        """As a container stops: SIGTERM, ``grace`` seconds, then SIGKILL for every process
        it had started, also those in sessions of their own (a Celery worker's task
        processes and what they run)."""
        if not self.alive():
            return
        tree = [pid for pid, _ in descendants(self.proc.pid)]
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # what the leader left in its group
        except ProcessLookupError:
            pass
        for pid in tree + [p for p, _ in descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def spawn(name: str, argv: list[str], *, env: dict[str, str], logs: Path, cwd: Path | None = None,
          info: dict | None = None) -> Engine:
    """Start ``argv`` in a new session with its output appended to ``logs/<name>.log``."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd)
    return Engine(name, argv, log, proc, info or {})


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def descendants(pid: int) -> list[tuple[int, list[str]]]:
    """Every process below ``pid`` (whatever session or group it moved to), with its argv."""
    kids, found, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            found.append((child, _argv(child)))
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it at once, as when its host or container goes."""
    tree = [pid, *(p for p, _ in descendants(pid))]
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def processes_with(name: str, value: str) -> list[int]:
    """Processes (other than this one) whose environment has ``name=value``."""
    needle, found = f"{name}={value}".encode() + b"\0", []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read() + b"\0":
                    found.append(int(entry))
        except OSError:
            continue
    return found
