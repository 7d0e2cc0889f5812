"""The cleaning job's staging folders, with real processes and real locks: what a killed
attempt at a batch left is removed by the next attempt at that batch, and nothing of a
live attempt or of another batch is touched."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

from pipelines.catalog.layout import line_paths
from pipelines.ingest.cleaning import job

ROOT = Path(__file__).resolve().parents[1]

_ATTEMPT = """
import os, signal, sys
from pathlib import Path
from pipelines.catalog.layout import line_paths
from pipelines.ingest.cleaning.job import staging_area

with staging_area(line_paths("credit_risk", Path(sys.argv[1])), sys.argv[2]) as attempt:
    (attempt / "clean").mkdir()
    (attempt / "clean" / "part-00000.parquet").write_bytes(b"staged")
    print(attempt, flush=True)
    if sys.argv[3] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()  # a live attempt, until its input closes
"""


def _attempt(home: Path, batch_id: str, how: str) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _ATTEMPT, str(home), batch_id, how],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, Path(proc.stdout.readline().strip())


def test_staging_of_killed_attempts_is_removed_but_never_a_live_one(home):
    killed, left = _attempt(home, "b1", "die")
    assert killed.wait(timeout=60) == -signal.SIGKILL
    other, other_left = _attempt(home, "b10", "die")  # another batch's leftovers
    assert other.wait(timeout=60) == -signal.SIGKILL
    assert left.is_dir() and other_left.is_dir()

    live, live_folder = _attempt(home, "b1", "live")  # the next attempt at b1
    try:
        assert live_folder.is_dir() and live_folder != left
        assert not left.exists(), "the killed attempt's staging was left behind"
        assert other_left.is_dir(), "another batch's staging was removed"

        entered = threading.Event()
        seen: dict[str, bool] = {}

        def next_attempt():
            with job.staging_area(line_paths("credit_risk", home), "b1") as attempt:
                seen["live folder still there"] = live_folder.exists()
                seen["own folder"] = attempt.is_dir()
                entered.set()

        waiting = threading.Thread(target=next_attempt)
        waiting.start()
        assert not entered.wait(1.0), "a second attempt ran beside a live one"
        assert (live_folder / "clean" / "part-00000.parquet").exists()
    finally:
        live.stdin.close()
        live.wait(timeout=60)
    waiting.join(timeout=60)
    assert seen == {"live folder still there": False, "own folder": True}  # it ended and tidied up
    assert other_left.is_dir()
