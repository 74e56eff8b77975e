"""What the harness's processes and folders do when it stops: by a signal, or killed outright (kill -9).

- `interruptible`: SIGINT (Ctrl-C) and SIGTERM raise `Interrupted` in the main thread, so that every `finally` on
  the way out stops its method, and then nothing more interrupts that cleanup.
- `signals_blocked`: processes forked within ignore SIGINT and SIGTERM (the data-loader workers: the harness stops
  them itself; a Ctrl-C to the terminal's whole process group would kill them mid-write, and torch then waits
  seconds for each).
- `die_with_parent`: a child (a local method, a data-loader worker) is killed when the harness dies, even by kill -9.
- `owned_prefix` / `remove_orphaned`: folders named after the process that made them (pid@host), removed by a later
  start once that process is gone; `gone` is the one test of that, also for containers (runners/docker.py).
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import shutil
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1
_PRCTL = getattr(ctypes.CDLL(None), "prctl", None)  # Linux; looked up here, so a forked child loads nothing
_OWNED = re.compile(r"(\d+)@([^@/]+)\.[^.@/]+$")  # owned_prefix's mark, then mkdtemp's random suffix


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds as Ctrl-C does (anything that handles KeyboardInterrupt handles it too)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interruptible() -> Iterator[None]:
    """Within (main thread only): SIGINT and SIGTERM raise Interrupted; once one has, both are ignored, so that a
    second Ctrl-C cannot cut short the cleanup the first one started, and stay so when it leaves the block (the
    caller is on its way out)."""

    def interrupt(signum, frame):
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, interrupt) for s in SIGNALS}
    interrupted = False
    try:
        yield
    except Interrupted:
        interrupted = True
        raise
    finally:
        if not interrupted:
            for s, handler in previous.items():
                signal.signal(s, handler)


@contextmanager
def signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held back in this thread within, and blocked for good in processes forked meanwhile
    (they inherit the mask); one that arrived meanwhile is delivered here on the way out."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def die_with_parent(parent: int) -> None:
    """In a freshly forked child of `parent` (a preexec_fn, a worker_init_fn): SIGKILL it when the thread that forked
    it ends, its process killed included. The parent may have died before this was set: then exit now."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def gone(host: str, pid: int | str) -> bool:
    """Whether the owner `pid` on `host` is known to have ended: a process of this host that no longer exists.
    Another host's processes cannot be checked from here, so they never count as gone."""
    if host != socket.gethostname() or not str(pid).isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        pass
    return False


def owned_prefix(prefix: str) -> str:
    """`prefix` and this process's mark, for tempfile.mkdtemp or TemporaryDirectory: remove_orphaned(folder,
    prefix) removes such a folder once the process is gone."""
    return f"{prefix}{os.getpid()}@{socket.gethostname()}."


def remove_orphaned(folder: Path, prefix: str) -> None:
    """Remove the entries of `folder` named by owned_prefix(P) for a P starting with `prefix` whose owner is gone
    (killed before its own cleanup ran); never those of a live process or of another host (a shared data root)."""
    for entry in Path(folder).glob(glob.escape(prefix) + "*"):
        mark = _OWNED.search(entry.name[len(prefix) :])
        if mark and gone(mark[2], mark[1]):
            shutil.rmtree(entry, ignore_errors=True)
