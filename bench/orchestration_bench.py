"""The main job's wall time: the stages' own work against Airflow around it.

    python3 bench/orchestration_bench.py [LINE ...]     # stdlib only: the main job sets itself up

Runs the main job as the README gives it (``scripts/main.sh``: set-up, then
``factory run`` for every line or the ones named) on a fresh factory home, with
``--timings``. Per line, from the ingest trigger to the line's last task, every second
is split (:mod:`pipelines.runtime.timing`, from the REST API's task instances and the
work span each task records in its own process) into:

- **work**: a task's operator is executing (Spark, Great Expectations, Horovod, the
  gate, the drift check, the registry);
- **task start-up**: a task process runs but its operator does not (process start,
  DAG parsing, imports, state reporting);
- **queued**: a task waits in the executor's queue;
- **scheduling**: nothing of the line runs or waits (the scheduler loop, asset events
  becoming runs, deferred sensors' polls).

Airflow's overhead is everything but work. The runtime's start (``factory start``'s
components until healthy) is reported apart, once per job. Writes
``bench/results/orchestration.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe, host, write_results  # noqa: E402

PARTS = ("work_s", "task_startup_s", "queued_s", "scheduling_s")


def main(argv: list[str] | None = None) -> int:
    lines = list(sys.argv[1:] if argv is None else argv)
    machine = host()
    print(describe(machine), flush=True)
    work = Path(tempfile.mkdtemp(prefix="factory-orchestration-"))
    timings = work / "timings.json"
    env = dict(os.environ, FACTORY_HOME=str(work / "home"))
    started = time.time()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "main.sh"), *lines, "--timings", str(timings)], env=env)
    wall = time.time() - started
    if not timings.exists():
        print(f"the main job wrote no timings (exit {proc.returncode})", file=sys.stderr)
        return 1
    data = json.loads(timings.read_text())
    per_line = {k: v for k, v in data["lines"].items() if v}
    print(f"\n{'line':<12} {'wall s':>7} {'work s':>7} {'start-up s':>10} {'queued s':>8} {'scheduling s':>12} {'Airflow':>8}")
    for line, t in per_line.items():
        print(f"{line:<12} {t['wall_s']:>7.0f} {t['work_s']:>7.0f} {t['task_startup_s']:>10.0f} {t['queued_s']:>8.0f}"
              f" {t['scheduling_s']:>12.0f} {t['overhead_share']:>8.0%}")
    total = {k: round(sum(t[k] for t in per_line.values()), 1) for k in ("wall_s", *PARTS)}
    total["overhead_share"] = round(1 - total["work_s"] / total["wall_s"], 3) if total["wall_s"] else 0.0
    print(f"{'all lines':<12} {total['wall_s']:>7.0f} {total['work_s']:>7.0f} {total['task_startup_s']:>10.0f}"
          f" {total['queued_s']:>8.0f} {total['scheduling_s']:>12.0f} {total['overhead_share']:>8.0%}")
    print(f"runtime start: {data.get('runtime_start_s') or 0:.0f}s; main job (set-up included): {wall:.0f}s, exit {proc.returncode}")
    command = "python3 bench/orchestration_bench.py " + " ".join(lines)
    path = write_results("orchestration", command.strip(), machine, wall, {
        "main_job_exit": proc.returncode,
        "main_job_s": round(wall, 1),
        "runtime_start_s": data.get("runtime_start_s"),
        "lines": per_line,
        "all_lines": total,
    })
    print(f"results: {path.relative_to(ROOT)}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
