"""The live processes of this machine whose command line matches, read from ``/proc``
(what the tests that kill a task use to see what it left running)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def processes(match: Callable[[list[bytes]], bool]) -> set[int]:
    """Pids of the processes whose argv (as bytes) ``match`` accepts."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if match(cmdline):
                found.add(int(proc.name))
    return found
