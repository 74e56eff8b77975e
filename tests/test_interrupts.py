"""Stopping the harness: Ctrl-C and SIGTERM stop the method and exit promptly with one line; kill -9 takes the
method and the data-loader workers along; folders a killed harness leaves are removed by the next start, those of
live processes never. Real `bench` subprocesses, a real hanging method (tests/methods/hanger), real kills.
The docker backend's counterparts are in test_docker.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness.data import DATASETS, synthetic_root
from harness.lifetime import owned_prefix
from harness.runners.local import LocalRunner

from conftest import REPO, TEST_METHODS, bench_started, method_spec, wait_for


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, pgrp, ...; [] once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    return _stat(pid)[:1] not in ([], ["Z"], ["X"])  # a zombie has exited: it only waits for a reaper


def children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _stat(int(p.name))[1:2] == [str(pid)]]


def method_of(harness: int) -> int | None:
    """The harness's child running the hanger's adapter (in a session of its own), once it exists."""
    for pid in children(harness):
        try:
            if os.readlink(f"/proc/{pid}/cwd").endswith("/hanger"):
                return pid
        except OSError:
            pass
    return None


def workers_of(harness: int, method: int) -> list[int] | None:
    """The harness's other children, its two data-loader workers, once both exist."""
    workers = [pid for pid in children(harness) if pid != method]
    return workers if len(workers) >= 2 else None


@pytest.fixture
def hanging(tmp_path, data_root):
    """`bench run` of the hanger on procedural flowers102_knn with 2 data-loader workers, once the method and the
    workers run: (proc, method pid, worker pids, its TMPDIR, its results folder). Whatever is left is killed after."""
    tmp, results = tmp_path / "tmp", tmp_path / "results"
    tmp.mkdir()
    proc = bench_started(
        *("run", "--method", "hanger", "--task", "flowers102_knn", "--data", "synthetic", "--workers", "2"),
        *("--data-root", str(data_root), "--results", str(results), "--no-progress"),
        env={"BENCH_IMAGES": f"{TEST_METHODS}{os.pathsep}{REPO / 'images'}", "TMPDIR": str(tmp)},
    )
    method = wait_for(lambda: method_of(proc.pid), proc)
    workers = wait_for(lambda: workers_of(proc.pid, method), proc)
    time.sleep(2)  # the workers have loaded the first batches, the method sleeps in embed
    try:
        yield proc, method, workers, tmp, results
    finally:
        for pid in [proc.pid, method, *workers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(map(alive, pids))


@pytest.mark.parametrize(
    "signum, to_group, times, code, said",
    [
        (signal.SIGINT, True, 1, 130, "bench: interrupted"),  # the terminal signals the whole group
        (signal.SIGINT, True, 2, 130, "bench: interrupted"),
        (signal.SIGTERM, False, 1, 143, "bench: terminated"),
        (signal.SIGTERM, True, 2, 143, "bench: terminated"),  # a supervisor stopping the group, insisting
    ],
    ids=["ctrl-c", "ctrl-c twice", "kill PID", "kill -TERM -PGID twice"],
)
def test_ctrl_c_or_sigterm_stops_the_method_and_exits_promptly_with_one_line(
    hanging, signum, to_group, times, code, said
):
    proc, method, workers, tmp, results = hanging
    start = time.monotonic()
    for _ in range(times):
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        time.sleep(0.1)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - start
    lines = err.splitlines()
    assert proc.returncode == code and lines[0].startswith("bench: hanger x flowers102_knn"), err
    assert lines[1:] == [said], err
    assert took < 2, f"{took:.1f} s to exit"
    assert gone_within([method, *workers], 0)
    assert not list(results.rglob("*.json"))  # an interrupted run writes no result
    assert not list(tmp.glob("bench-*"))  # nor leaves its folder


@pytest.mark.parametrize("to_group", [False, True], ids=["kill -9 PID", "kill -9 -PGID"])
def test_kill_9_of_the_harness_takes_its_method_and_workers_along(hanging, to_group, monkeypatch):
    proc, method, workers, tmp, results = hanging
    (os.killpg if to_group else os.kill)(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert gone_within([method, *workers], 5), [p for p in (method, *workers) if alive(p)]
    assert not list(results.rglob("*.json"))

    # its folder (contract socket, method log) is left; the next start removes it, and never a live process's
    [left] = tmp.glob("bench-*")
    live = Path(tempfile.mkdtemp(prefix=owned_prefix("bench-"), dir=tmp))  # this test process's: alive
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    with LocalRunner().start(method_spec("pixels"), 0, {"name": "test", "output": "global"}, 60):
        pass
    assert not left.exists() and live.exists()


GENERATE = "import sys; from pathlib import Path; from harness.data import open_dataset; "
GENERATE += "open_dataset('voc', Path(sys.argv[1]), synthetic=True, scale='small')"  # about 10 s


def test_a_killed_generation_leaves_its_staging_folder_to_the_next_start_once_its_owner_is_gone(tmp_path):
    """A procedural stand-in is generated in a staging folder, renamed into place when complete."""
    generator = subprocess.Popen([sys.executable, "-c", GENERATE, str(tmp_path)], cwd=REPO, stderr=subprocess.PIPE)
    try:
        [staging] = wait_for(lambda: list((tmp_path / "_synthetic").glob(".voc-small-s0-*")), generator)
        synthetic_root(DATASETS["flowers102"], tmp_path, "tiny", 0)  # another start meanwhile
        assert staging.exists() and generator.poll() is None  # a live generator's folder is left alone
    finally:
        generator.kill()
        generator.communicate()
    assert staging.exists()
    synthetic_root(DATASETS["flowers102"], tmp_path, "tiny", 0)
    assert not staging.exists()
    assert sorted(p.name for p in (tmp_path / "_synthetic").iterdir()) == ["flowers102-tiny-s0"]
