"""`bench matrix --executor slurm`, `bench status`, `bench cancel` against a real single-node Slurm cluster
(scripts/slurm.sh), on procedural data with tiny methods: the same result files as the local executor, cells whose
jobs are cancelled or killed resubmitted until done, retries that run out a failed result with the reason, and one
line when Slurm is not reachable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.errors import SpecError
from harness.specs import MethodSpec, load_spec

from conftest import REPO, TEST_METHODS, bench, bench_started, cli, one_line_error, wait_for

TIMING_AND_HOST = {"timings", "provenance.host", "provenance.started_at", "provenance.finished_at"}


def _suite(tmp_path: Path, name: str, methods: list[str], tasks=("flowers102_knn", "medmnist_blood_knn")) -> dict:
    """A suite file of `methods` x `tasks` (seed 0, procedural data) and the env that finds it and the test methods."""
    folder = tmp_path / "benchmarks" / "suites"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(
        f"name: {name}\ndescription: x\ntasks: [{', '.join(tasks)}]\nmethods: [{', '.join(methods)}]\n"
        "seeds: [0]\ndata: synthetic\n"
    )
    return {
        "BENCH_BENCHMARKS": f"{tmp_path / 'benchmarks'}{os.pathsep}{REPO / 'benchmarks'}",
        "BENCH_IMAGES": f"{TEST_METHODS}{os.pathsep}{REPO / 'images'}",
        "BENCH_SLURM_POLL_S": "0.3",
    }


def _matrix(suite: str, data_root: Path, results: Path, *extra: str) -> tuple[str, ...]:
    return ("matrix", "--suite", suite, "--data-root", str(data_root), "--results", str(results), "--no-progress", *extra)  # fmt: skip


def _results(root: Path) -> dict[str, dict]:
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in root.rglob("seed*.json")}


def _without(result: dict, fields: set[str]) -> dict:
    out = json.loads(json.dumps(result))
    for dotted in fields:
        *parents, last = dotted.split(".")
        node = out
        for p in parents:
            node = node[p]
        node.pop(last)
    return out


def test_matrix_through_slurm_equals_local_and_is_never_submitted_twice(slurm_ready, tmp_path, data_root, capsys):
    env = _suite(tmp_path, "slurm2x2", ["pixels", "chatty"])
    local = bench(*_matrix("slurm2x2", data_root, tmp_path / "local"), env=env)
    assert local.returncode == 0, local.stderr
    slurm = tmp_path / "slurm"
    detached = bench(*_matrix("slurm2x2", data_root, slurm, "--executor", "slurm", "--detach"), env=env)
    assert detached.returncode == 0 and "4 submitted" in detached.stderr, detached.stderr
    attached = bench(*_matrix("slurm2x2", data_root, slurm, "--executor", "slurm"), env=env)  # waits for them
    assert attached.returncode == 0, attached.stderr
    assert "4 cells, 4 ok" in attached.stderr and "4 cells: 0 submitted" in attached.stderr
    assert attached.stderr.count("not submitted again") + attached.stderr.count("cached, skipped") == 4

    ours, theirs = _results(tmp_path / "local"), _results(slurm)
    assert sorted(ours) == sorted(theirs) and len(ours) == 4
    for path in ours:
        assert _without(ours[path], TIMING_AND_HOST) == _without(theirs[path], TIMING_AND_HOST), path

    code, _, err = cli(capsys, "status", "--suite", "slurm2x2", "--results", str(slurm))
    assert code == 0 and err.strip() == "bench: 4 done", err


def _stop(proc, gate: Path) -> None:
    """After a gated test: its bench gone, its jobs let through (whatever failed)."""
    gate.unlink(missing_ok=True)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_started(gate: Path, n: int, proc) -> list[str]:
    """The lines of `gate`.started once `n` gated methods have started (one line each)."""
    started = Path(f"{gate}.started")
    wait_for(lambda: started.exists() and len(started.read_text().split("\n")) > n, proc, timeout=60)
    return started.read_text().split("\n")


def _started(gate: Path, n: int, proc) -> list[tuple[int, str]]:
    """Once `n` gated methods have started: per start, its harness's pid and Slurm job id (array task or job)."""
    out = []
    for line in _wait_started(gate, n, proc)[:n]:
        harness_pid = int(line.split()[1])
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{harness_pid}/environ").read_text().split("\0") if "=" in kv)
        array = env.get("SLURM_ARRAY_JOB_ID")
        out.append((harness_pid, f"{array}_{env['SLURM_ARRAY_TASK_ID']}" if array else env["SLURM_JOB_ID"]))
    return out


def test_scancel_and_kill9_are_resubmitted_and_nothing_is_lost_or_written_twice(slurm_ready, tmp_path, data_root):
    env = _suite(tmp_path, "gated2", ["gated"])
    gate = tmp_path / "gate"
    gate.touch()
    results = tmp_path / "results"
    proc = bench_started(*_matrix("gated2", data_root, results, "--executor", "slurm"), env={**env, "GATE_FILE": str(gate)})  # fmt: skip
    try:
        (_, cancelled), (killed, _) = _started(gate, 2, proc)
        subprocess.run(["scancel", cancelled], check=True)  # one array task
        os.kill(killed, signal.SIGKILL)  # the other's harness process, in its job
        _wait_started(gate, 4, proc)  # both resubmitted and started again
        gate.unlink()
        out, err = proc.communicate(timeout=90)
    finally:
        _stop(proc, gate)
    assert proc.returncode == 0, err
    assert "2 cells, 2 ok" in err and err.count("resubmitted (retry 1 of 2)") == 2, err
    assert "CANCELLED" in err and "FAILED" in err, err
    found = _results(results)
    assert len(found) == 2 and all(r["status"] == "ok" for r in found.values())
    logs = "".join(p.read_text() for p in (results / ".slurm" / "jobs").glob("*.err"))
    for path in found:  # each result written once, by the second job of its cell
        assert logs.count(f"-> {results / path}") == 1, path
    assert not list(results.rglob(".tmp-*")), "a half-written file left"
    cells = json.loads((results / ".slurm" / "gated2.json").read_text())["cells"]
    assert [len(c["jobs"]) for c in cells.values()] == [2, 2]


def test_a_preempted_job_is_requeued_in_place_by_submitit(slurm_ready, tmp_path, data_root):
    env = _suite(tmp_path, "gated1", ["gated"], tasks=("flowers102_knn",))
    gate = tmp_path / "gate"
    gate.touch()
    results = tmp_path / "results"
    proc = bench_started(*_matrix("gated1", data_root, results, "--executor", "slurm"), env={**env, "GATE_FILE": str(gate)})  # fmt: skip
    try:
        ((_, job),) = _started(gate, 1, proc)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what Slurm sends before preempting it
        state = ["squeue", "-h", "-j", job, "-o", "%T %r"]
        wait_for(lambda: subprocess.run(state, capture_output=True, text=True).stdout.strip() == "PENDING BeginTime", proc)  # fmt: skip
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)  # not Slurm's 2 min
        _wait_started(gate, 2, proc)
        gate.unlink()
        out, err = proc.communicate(timeout=60)
    finally:
        _stop(proc, gate)
    assert proc.returncode == 0 and "1 cells, 1 ok" in err and "resubmitted" not in err, err
    (cell,) = json.loads((results / ".slurm" / "gated1.json").read_text())["cells"].values()
    assert cell["jobs"] == [job]  # the same job, requeued
    logs = (results / ".slurm" / "jobs" / f"{job}_0_log.err").read_text()
    assert "this job is preempted" in logs and logs.count(f"-> {results}") == 1


def test_a_cell_out_of_retries_is_a_failed_result_with_the_schedulers_reason(slurm_ready, tmp_path, data_root, capsys):
    env = _suite(tmp_path, "gated1", ["gated"], tasks=("flowers102_knn",))
    gate = tmp_path / "gate"
    gate.touch()
    results = tmp_path / "results"
    args = _matrix("gated1", data_root, results, "--executor", "slurm", "--max-retries", "0")
    proc = bench_started(*args, env={**env, "GATE_FILE": str(gate)})
    try:
        ((_, job),) = _started(gate, 1, proc)
        subprocess.run(["scancel", job], check=True)
        out, err = proc.communicate(timeout=60)
    finally:
        _stop(proc, gate)
    assert proc.returncode == 1 and "1 cells, 0 ok, 1 failed" in err, err
    (result,) = _results(results).values()
    assert result["status"] == "failed"
    assert result["error"] == f"slurm job {job} ended CANCELLED; 0 retries (--max-retries) exhausted"
    _, out, _ = cli(capsys, "status", "--results", str(results))
    assert "failed" in out and "CANCELLED" in out, out


def test_bench_cancel_stops_a_detached_matrix(slurm_ready, tmp_path, data_root, capsys):
    env = _suite(tmp_path, "gated1", ["gated"], tasks=("flowers102_knn",))
    gate = tmp_path / "gate"
    gate.touch()
    results = tmp_path / "results"
    args = _matrix("gated1", data_root, results, "--executor", "slurm", "--detach")
    assert bench(*args, env={**env, "GATE_FILE": str(gate)}).returncode == 0
    code, _, err = cli(capsys, "cancel", "--suite", "gated1", "--results", str(results))
    assert code == 0 and "cancelled 1 slurm job(s) of suite gated1" in err, err
    deadline = time.monotonic() + 30
    while "cancelled" not in (out := cli(capsys, "status", "--results", str(results))[1]):
        assert time.monotonic() < deadline, out
        time.sleep(0.3)
    assert not _results(results)


@pytest.mark.parametrize(
    "env, said",
    [
        ({"PATH": "/nonexistent"}, "bench: error: slurm: sbatch, squeue, scancel, srun not found on PATH"),
        ({"SLURM_CONF": "DOWN"}, "bench: error: slurm: the controller does not answer (squeue: "),
    ],
    ids=["no-sbatch", "controller-down"],
)
def test_slurm_not_reachable_is_one_line(slurm_ready, tmp_path, data_root, env, said):
    if env.get("SLURM_CONF") == "DOWN":  # this cluster's config, its controller on a port nothing listens on
        conf = Path("/etc/slurm/slurm.conf").read_text()
        (tmp_path / "down.conf").write_text(conf + "SlurmctldPort=6999\nMessageTimeout=1\n")
        env = {"SLURM_CONF": str(tmp_path / "down.conf")}
    full = {**_suite(tmp_path, "slurm2x2", ["pixels"]), **env}
    proc = bench(*_matrix("slurm2x2", data_root, tmp_path / "r", "--executor", "slurm"), env=full, timeout=60)
    assert one_line_error(proc).startswith(said)
    assert not (tmp_path / "r").exists()


def test_resources_out_of_range_are_one_line(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "method.yaml").write_text(
        "name: m\nversion: '0'\ndescription: x\noutputs: [global]\nresources: {gpus: -1}\n"
    )
    with pytest.raises(SpecError) as e:
        load_spec(MethodSpec, tmp_path / "m" / "method.yaml")
    assert str(e.value).startswith(f"{tmp_path}/m/method.yaml:5: resources.gpus: Input should be greater than")


def test_job_parameters_come_from_the_method_and_the_task():
    from harness import specs
    from harness.run import RunOptions
    from harness.slurm import SlurmOptions, job_parameters

    method = specs.get("method", "pixels").model_copy(update={"resources": specs.Resources(cpus=1.5, memory_gb=3, gpus=2)})  # fmt: skip
    task = specs.get("task", "flowers102_knn")
    got = job_parameters((method, task, 0), RunOptions(timeout_s=90), SlurmOptions(partition="gpu", max_parallel=4), "s")  # fmt: skip
    assert got == {
        "job_name": "bench-s",
        "time": 2 + 10,  # 90 s -> 2 minutes, plus the margin
        "cpus_per_task": 2,
        "mem": "3072M",
        "gres": "gpu:2",
        "partition": "gpu",
        "array_parallelism": 4,
    }


def test_detach_without_slurm_is_one_line(capsys, data_root):
    line = one_line_error(cli(capsys, "matrix", "--suite", "smoke", "--data-root", str(data_root), "--detach"))
    assert line == "bench: error: --detach needs --executor slurm (a local matrix runs here, attached)"
