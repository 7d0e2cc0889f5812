"""Child process trees that die with the task that started them.

A task starts ``horovodrun`` (and its workers) or the evaluation gate as a subprocess.
When the task process is stopped politely (Airflow's SIGTERM, a timeout) it stops them
itself; when it dies at once (SIGKILL after the grace period, the out-of-memory killer,
a lost heartbeat) nothing in it runs any more, and a tree started in its own session
would train or push on, beside the retry. So the tree is started under a *tether*:

    python -I tether.py --watch FD -- CMD ...

The tether is a small stdlib-only process, leader of the tree's session, that

* runs CMD as its child and exits with CMD's status (a signal death is passed on as one);
* holds the read end of a pipe whose write end only the task holds: when the task dies,
  for whatever reason, the read returns end-of-file and the tether stops the whole tree
  (SIGTERM, then SIGKILL after a grace period) and exits;
* is a child subreaper (Linux), so processes orphaned inside the tree (workers whose
  ``horovodrun`` died) are re-parented to it and still found and stopped;
* on SIGTERM (the task stopping it) stops the tree the same way;
* keeps any file descriptors it was handed (``--keep FD``, e.g. a lock on the run folder)
  open until the tree is gone, so a lock held for the tree is released only when nothing
  of it is left.

The task side is :func:`popen`: a ``subprocess.Popen`` of the tethered command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

GRACE_S = 5.0
_PR_SET_CHILD_SUBREAPER = 36


def popen(cmd: list[str], *, keep_fds: tuple[int, ...] = (), **kwargs: Any) -> subprocess.Popen:
    """Start ``cmd`` under a tether (in its own session); see the module docstring.

    ``keep_fds``: descriptors the tether keeps open for as long as the tree lives. The
    returned Popen's ``tether_fd`` is the pipe's write end; :func:`release` closes it
    after the process has been waited for."""
    read_end, write_end = os.pipe()  # both non-inheritable: only the tether gets the read end
    args = [sys.executable, "-I", str(Path(__file__).resolve()), "--watch", str(read_end)]
    for fd in keep_fds:
        args += ["--keep", str(fd)]
    try:
        proc = subprocess.Popen(
            [*args, "--", *cmd],
            pass_fds=(read_end, *keep_fds),
            start_new_session=True,
            **kwargs,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    proc.tether_fd = write_end  # type: ignore[attr-defined]
    return proc


def release(proc: subprocess.Popen) -> None:
    """Close the task's end of the tether (after ``proc`` has exited)."""
    fd = getattr(proc, "tether_fd", None)
    if fd is not None:
        proc.tether_fd = None  # type: ignore[attr-defined]
        os.close(fd)


# --------------------------------------------------------------------------- the tether


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (index 0 is field 3,
    the state; 1 the parent; 2 the process group; 19 the start time), or None when the
    process is gone. The command name is in parentheses and may hold spaces and ``)``."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := proc_stat(int(entry))) is not None:
            kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def _descendants(root: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop_tree(why: str) -> None:
    me = os.getpid()
    tree = _descendants(me)
    if tree:
        try:  # the task that read this output may be gone: a broken pipe must not stop the stop
            sys.stderr.write(f"tether: {why}: stopping {len(tree)} process(es)\n")
            sys.stderr.flush()
        except OSError:
            pass
    _signal_all(tree, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        _reap()
        tree = [p for p in _descendants(me) if not _is_zombie(p)]
        if not tree:
            break
        time.sleep(0.1)
    # SIGKILL until nothing is left (a tree may still fork while being stopped)
    for _ in range(50):
        tree = [p for p in _descendants(me) if not _is_zombie(p)]
        if not tree:
            break
        _signal_all(tree, signal.SIGKILL)
        time.sleep(0.05)
        _reap()
    _reap()


def _is_zombie(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is None or fields[0] == "Z"


def main(argv: list[str]) -> int:
    if "--" not in argv:
        sys.stderr.write("usage: tether.py --watch FD [--keep FD ...] -- CMD ...\n")
        return 2
    split = argv.index("--")
    opts, cmd = argv[:split], argv[split + 1:]
    watch = int(opts[opts.index("--watch") + 1])
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans of the tree go to init instead
        pass

    stopping = threading.Event()

    def stop(why: str) -> None:
        if not stopping.is_set():
            stopping.set()
            _stop_tree(why)

    def on_term(signum, _frame) -> None:
        stop(f"{signal.Signals(signum).name} received")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    child = subprocess.Popen(cmd)

    def watch_task() -> None:
        try:
            while os.read(watch, 1):
                pass
        except OSError:
            pass
        try:
            stop("the task that started this process tree is gone")
        finally:
            os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch_task, daemon=True).start()
    rc = child.wait()
    if _descendants(os.getpid()):  # stragglers of a finished command
        stop("the command finished with processes left over")
    if rc < 0:  # died by a signal: say so the same way
        signal.signal(-rc, signal.SIG_DFL)
        sys.stdout.flush()
        os.kill(os.getpid(), -rc)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
