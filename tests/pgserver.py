"""A throw-away PostgreSQL server for tests: Debian's binaries, a fresh cluster in a
temporary folder, listening on loopback only, stopped and removed afterwards."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*cmd: str) -> None:
    """initdb and postgres refuse to run as root: run them as Debian's postgres user."""
    if os.geteuid() == 0:
        cmd = ("runuser", "-u", "postgres", "--", *cmd)
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@contextmanager
def postgres_server(superuser: str = "postgres") -> Iterator[int]:
    """Start a server whose superuser is ``superuser`` (trust auth on loopback); yield its port."""
    if not PG_BIN:
        pytest.skip("Debian's postgresql is not installed (scripts/test.sh installs it)")
    bin_dir = Path(PG_BIN[-1])
    # not under pytest's tmp root: that is private to root, and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="factory-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    _as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-U", superuser, "--auth=trust", "-E", "UTF8")
    _as_postgres(
        str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w", "start",
        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {sock}",
    )
    try:
        yield port
    finally:
        _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
