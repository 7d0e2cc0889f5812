"""The machine a benchmark ran on, recorded beside its figures.

Every benchmark prints and stores this description with its results, so
numbers from different machines (or a loaded one) are never compared blind.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def _first(path: str, key: str) -> str:
    """The value of the first ``key: value`` (or ``key=value``) line of a text file, or ""."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                sep = ":" if ":" in line else "="
                return line.split(sep, 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def host() -> dict[str, Any]:
    """CPU, cores, memory, OS and the load when the benchmark started."""
    mem_kb = _first("/proc/meminfo", "MemTotal").split()
    return {
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(int(mem_kb[0]) / 2**20, 1) if mem_kb else None,
        "os": _first("/etc/os-release", "PRETTY_NAME") or platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def describe(m: dict[str, Any]) -> str:
    """One line for the top of a benchmark's output."""
    return (
        f"machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['ram_gib']} GiB RAM, "
        f"{m['os']} (kernel {m['kernel']}), Python {m['python']}; load average at start {m['load_average_at_start']}"
    )


def write_results(name: str, command: str, machine: dict[str, Any], seconds: float, result: dict[str, Any]) -> Path:
    """``bench/results/<name>.json``: the command, the machine, the seconds and the figures."""
    import json

    out = Path(__file__).resolve().parent / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "machine": machine, "seconds": seconds, **result}, indent=1))
    return out


def timed(fn, repeats: int) -> tuple[Any, float, list[float]]:
    """``fn()`` run ``repeats`` times: its last result, the median seconds and every run's."""
    import statistics
    import time

    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return result, statistics.median(times), times
