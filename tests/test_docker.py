"""The docker backend against a real dockerd: the sandbox, the transport, and hostile images (tests/hostile/).
The sandbox and hostile-image tests run over every container backend registered (conftest's `backend` fixture).

Needs dockerd, the local registry and vrbench/base:bookworm (`make services base-image`; the fixture runs the
same idempotent scripts). Outside CI a missing service skips these tests with the reason; under CI=true it fails.
Every test checks that no container of the harness is left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from harness.errors import MethodFailure, MethodTimeout
from harness.provenance import hash_path
from harness.results import RunResult

from conftest import (
    HOSTILE,
    LABEL,
    REGISTRY,
    REPO,
    bench,
    bench_started,
    cli,
    hostile_spec,
    images,
    method_spec,
    wait_for,
)


def start(name: str, timeout_s: float = 60, backend: str = "docker"):
    from harness.runners import get_runner

    return get_runner(backend).start(hostile_spec(name), 0, {"name": "test", "output": "global"}, timeout_s)


# --- the sandbox -------------------------------------------------------------------------------------------------


def test_every_container_runs_locked_down_with_only_the_contract_socket_mounted(built, docker_ready):
    with start("pixels") as running:
        [c] = docker_ready.containers.list(filters={"label": f"{LABEL}.owner={socket.gethostname()}:{os.getpid()}"})
        host = c.attrs["HostConfig"]
        config = c.attrs["Config"]
        assert running.session.embed(images()).shape == (3, 48)
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 512 and host["Memory"] == host["MemorySwap"] == 2 << 30
    assert host["ShmSize"] == 1 << 29 and host["Init"] is True and host["LogConfig"]["Type"] == "none"
    [bind] = host["Binds"]  # no data, no labels, no host path: only the folder holding the contract socket
    assert bind.endswith(":/run/vrbench:ro") and Path(bind.split(":")[0]).name == "contract"
    assert config["Env"].count("BENCH_CONTRACT_SOCKET=/run/vrbench/contract.sock") == 1
    assert running.session.info.transport == "socket"
    assert list(host["Tmpfs"]) == ["/tmp"] and "size=" in host["Tmpfs"]["/tmp"]
    assert config["User"] not in ("", "0", "root", "0:0")
    assert not host.get("DeviceRequests")  # no GPU on this host, none asked for


def test_the_sandbox_holds_against_writes_host_paths_and_privileges(backend, built):
    with pytest.raises(MethodFailure, match="probe:") as err:
        with start("escape", backend=backend):
            pass
    found = dict(token.split("=", 1) for token in str(err.value).split("probe: ", 1)[1].split())
    assert found["uid"] != "0" and found["cap_eff"] == "0000000000000000" and found["no_new_privs"] == "1"
    assert {found[k] for k in ("write_root", "write_etc", "write_method")} == {"OSError"}  # read-only root
    assert found["write_tmp"] == "written" and found["exec_tmp"] == "ran"  # /tmp: a tmpfs, exec-able for JITs
    assert found["shadow"] == "PermissionError"
    assert {found[k] for k in ("work", "docker_sock", "host_docker", "host_root")} == {"absent"}
    assert found["weights_env"] == "/weights/weights.bin" and found["read_weights"] == "read"
    assert found["write_weights"] in ("OSError", "PermissionError")  # its weights are mounted read-only
    assert found["contract_env"] == "/run/vrbench/contract.sock" and found["write_contract_dir"] == "OSError"
    assert found["connect_again"] == "ConnectionRefusedError"
    assert set(found["extra_mounts"].split(",")) == {"/usr/sbin/docker-init", "/weights/weights.bin", "/run/vrbench"}


def test_a_method_that_tries_the_network_has_none(backend, built):
    urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=5).read()  # the registry is up on the host...
    with start("netprobe", backend=backend) as running:
        out = running.session.embed(images())
    assert (out[:, 3] == 0).all()  # ...and the method reached nothing
    log = running.log_tail
    assert "REACHED" not in log
    assert f"tcp {REGISTRY}: ConnectionRefusedError" in log  # its loopback is its own, not the host's
    assert "tcp 8.8.8.8:53: OSError: [Errno 101] Network is unreachable" in log
    assert "dns pypi.org: gaierror" in log


@pytest.mark.parametrize("transport", ["socket", "stdio"])
def test_transport_is_byte_exact_for_large_batches_and_detach_key_bytes(built, transport, monkeypatch):
    from harness.runners.local import LocalRunner

    with LocalRunner().start(hostile_spec("pixels"), 0, {}, 60) as running:
        x = images(48, 512, 512, seed=3)
        x[:, ::2, :, 0], x[:, ::2, :, 1] = 16, 17  # ctrl-p ctrl-q, Docker's detach keys, all over the stream
        local_out = running.session.embed_dense(x)
    if transport == "stdio":  # a harness that cannot offer the socket: the attach stream carries everything
        monkeypatch.setenv("BENCH_TRANSPORT", "stdio")
    with start("pixels") as running:
        docker_out = running.session.embed_dense(x)
        sent = running.session.bytes_sent
    assert running.session.info.transport == transport
    assert docker_out.shape == (48, 32, 32, 48) and sent > x.nbytes
    np.testing.assert_array_equal(docker_out, local_out)


def test_a_hanging_method_times_out_and_its_container_is_removed(backend, built, docker_ready):
    t0 = time.monotonic()
    with pytest.raises(MethodTimeout):
        with start("sleeper", timeout_s=3, backend=backend) as running:
            running.session.embed(images())
    assert time.monotonic() - t0 < 20
    assert "stopped by the harness" in running.log_tail


@pytest.fixture
def sleeping(backend, built, docker_ready, data_root, tmp_path):
    """`bench run` of the sleeper (which never answers) on procedural flowers102_knn, once its container runs:
    (proc, container). The results go to tmp_path."""
    proc = bench_started(
        *("run", "--method", "sleeper", "--task", "flowers102_knn", "--backend", backend, "--data", "synthetic"),
        *("--data-root", str(data_root), "--results", str(tmp_path), "--no-progress"),
        env={"BENCH_IMAGES": f"{HOSTILE}{os.pathsep}{REPO / 'images'}"},
    )
    owned = {"label": f"{LABEL}.owner={socket.gethostname()}:{proc.pid}"}
    try:
        [container] = wait_for(lambda: docker_ready.containers.list(filters=owned), proc)
        time.sleep(1)
        yield proc, container
    finally:
        proc.kill()
        proc.wait()  # not communicate(): a data-loader worker it left would keep its pipes open


def removed_within(container, docker_ready, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    # sparse: ids from one list call (a full list inspects each container, and one removed meanwhile raises NotFound)
    while container.id in [c.id for c in docker_ready.containers.list(all=True, sparse=True)]:
        if time.monotonic() > deadline:
            container.remove(force=True)  # a stuck sleeper would wait an hour
            return False
        time.sleep(0.2)
    return True


@pytest.mark.parametrize(
    "signum, to_group, code, said",
    [(signal.SIGINT, True, 130, "bench: interrupted"), (signal.SIGTERM, False, 143, "bench: terminated")],
    ids=["ctrl-c", "kill PID"],
)
def test_ctrl_c_or_sigterm_stops_the_run_and_removes_the_container(
    sleeping, docker_ready, tmp_path, signum, to_group, code, said
):
    proc, container = sleeping
    (os.killpg if to_group else os.kill)(proc.pid, signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code and err.splitlines()[1:] == [said], err
    assert removed_within(container, docker_ready, 0)
    assert not list(tmp_path.rglob("*.json"))  # an interrupted run writes no result


@pytest.mark.parametrize("to_group", [False, True], ids=["kill -9 PID", "kill -9 -PGID"])
def test_kill_9_of_the_harness_removes_its_container_within_seconds(sleeping, docker_ready, tmp_path, to_group):
    proc, container = sleeping
    (os.killpg if to_group else os.kill)(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert removed_within(container, docker_ready, 10)
    assert not list(tmp_path.rglob("*.json"))


def test_containers_of_a_killed_harness_are_reaped_by_the_next_launch(built, docker_ready):
    from harness.runners.base import sandbox_for
    from harness.runners.docker import container_config

    dead = 1 << 23  # above the kernel's largest pid_max: no such process can exist
    config = container_config(sandbox_for(hostile_spec("sleeper")), "sleeper")
    config["labels"][f"{LABEL}.owner"] = f"{socket.gethostname()}:{dead}"
    orphan = docker_ready.containers.create(built["sleeper"].id, **config)
    orphan.start()
    with start("pixels") as running:
        running.session.embed(images())
    assert orphan.id not in [c.id for c in docker_ready.containers.list(all=True)]


# --- whole cells through the CLI ----------------------------------------------------------------------------------


def test_pixels_in_docker_scores_exactly_as_locally_and_is_keyed_by_image(built, data_root, tmp_path, capsys):
    results = {}
    for backend in ("local", "docker"):
        code, _, err = cli(
            capsys,
            "run",
            "--method",
            "pixels",
            "--task",
            "flowers102_knn",
            "--backend",
            backend,
            "--data",
            "synthetic",
            "--data-root",
            str(data_root),
            "--results",
            str(tmp_path / backend),
            "--no-progress",
        )
        assert code == 0, err
        [path] = (tmp_path / backend).rglob("seed0.json")
        results[backend] = RunResult.model_validate_json(path.read_text())
    local, docker = results["local"], results["docker"]
    assert docker.metrics == local.metrics and docker.status == "ok"
    assert docker.key.method_ref == built["pixels"].ref and docker.key.method_ref.startswith("sha256:")
    assert docker.provenance.backend == "docker" and docker.provenance.method_info["name"] == "pixels"
    assert docker.timings.images_sent == local.timings.images_sent > 0
    # the container's cgroup peak (page cache included) is at least the process's own peak resident memory
    assert docker.timings.method_peak_bytes >= 20 << 20 and local.timings.method_peak_bytes >= 20 << 20


HOSTILE_OUTCOMES = {  # method -> (status, what the error must say); None: ok
    "escape": ("failed", "probe: uid=65534"),
    "forkbomb": ("failed", "fork failed (Resource temporarily unavailable)"),
    "memhog": ("failed", "OOM-killed: it exceeded its memory limit of"),
    "sleeper": ("timeout", "did not answer within the task's time limit"),
    "nan_out": ("failed", "NaN or Inf"),
    "wrong_shape": ("failed", "features has shape (32, 4, 1), expected (32, 4)"),
    "wrong_count": ("failed", "features has shape (31, 4), expected (32, 4)"),
    "flood": ("failed", "payload of 17179869184 bytes exceeds the limit"),
    "dies_midstream": ("failed", "closed its output stream"),
    "forged_stdout": ("failed", "bad frame magic"),
    "crash_on_start": ("failed", "closed its output stream (it exited or crashed) (container exited with code 1)"),
    "forged_stderr": ("ok", None),
    "netprobe": ("ok", None),
    "needs_pypi": ("ok", None),
    "pixels": ("ok", None),
}


def test_a_matrix_of_hostile_images_records_each_failure_and_carries_on(backend, built, data_root, tmp_path):
    (tmp_path / "bench" / "suites").mkdir(parents=True)
    (tmp_path / "bench" / "suites" / "hostile.yaml").write_text(
        f"name: hostile\ndescription: test\ntasks: [flowers102_knn]\nmethods: [{', '.join(HOSTILE_OUTCOMES)}]\n"
        "data: synthetic\n"
    )
    env = {
        "BENCH_IMAGES": f"{HOSTILE}{os.pathsep}{REPO / 'images'}",
        "BENCH_BENCHMARKS": f"{tmp_path / 'bench'}{os.pathsep}{REPO / 'benchmarks'}",
    }
    results = tmp_path / "results"
    proc = bench(
        "matrix",
        "--suite",
        "hostile",
        "--backend",
        backend,
        "--data-root",
        str(data_root),
        "--results",
        str(results),
        "--timeout",
        "15",
        "--no-progress",
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    files = sorted(p for p in results.rglob("*") if p.is_file())
    assert len(files) == len(HOSTILE_OUTCOMES) and all(p.name == "seed0.json" for p in files)  # nothing else written
    got = {r.key.method: r for r in (RunResult.model_validate_json(p.read_text()) for p in files)}
    for method, (status, error) in HOSTILE_OUTCOMES.items():
        assert got[method].status == status, (method, got[method].error)
        if error:
            assert error in got[method].error, (method, got[method].error)
        weights = hostile_spec(method).weights_path  # keyed by the image, and the weights when it has some
        assert got[method].key.method_ref == built[method].ref + (
            f"+weights-sha256:{hash_path(weights)}" if weights else ""
        )
    assert "OOM-killed" in got["memhog"].log_tail
    # forged metrics on stderr are only log lines: the harness's own metric stands, equal to the honest pixels one
    assert got["forged_stderr"].metrics == got["pixels"].metrics and got["forged_stderr"].metrics["top1_best"] < 100
    assert proc.stderr.count(f"{backend} backend") == len(HOSTILE_OUTCOMES)


def test_the_variant_and_only_its_weights_file_reach_the_container(docker_ready, tmp_path):
    from harness.runners.docker import DockerRunner
    from harness.weights import resolve

    root = tmp_path / "weights"
    (root / "weighted").mkdir(parents=True)
    (root / "weighted" / "weighted.bin").write_bytes(b"\x07weights")  # the sha256 tests/methods/weighted publishes
    spec, runner = method_spec("weighted"), DockerRunner()
    cases = (
        (resolve(spec, root, synthetic=False), 4, 7, "BENCH_VARIANT=", "BENCH_WEIGHTS=/weights/weighted.bin"),
        (resolve(spec.variant("dim6"), root, synthetic=True), 6, -1, "BENCH_VARIANT=dim6", None),  # random init
    )
    for method, width, fourth, variant, weights in cases:
        with runner.start(method, 0, {"name": "test"}, 120) as running:
            [c] = docker_ready.containers.list(filters={"label": f"{LABEL}.owner={socket.gethostname()}:{os.getpid()}"})
            env, binds = c.attrs["Config"]["Env"], c.attrs["HostConfig"]["Binds"]
            out = running.session.embed(images())
        assert out.shape == (3, width) and (out[:, 3] == fourth).all()  # 4th feature: the weights' first byte
        assert variant in env and [e for e in env if e.startswith("BENCH_WEIGHTS")] == ([weights] if weights else [])
        mounted = [b for b in binds if not b.endswith(":/run/vrbench:ro")]
        expected = f"{(root / 'weighted' / 'weighted.bin').resolve()}:/weights/weighted.bin:ro"
        assert mounted == ([expected] if weights else [])
