"""The runner interface: prepare a method, start it, hand its session to a protocol, always clean up.

Backends differ only in how a method is made ready and identified (`prepare`) and started (`launch`); everything
else, the handshake, the contract socket, deadlines, stopping with escalation and log capture, lives here once.
What a sandboxing backend must enforce is described once, neutrally, by `Sandbox` (built by `sandbox_for`): a
container backend translates it into its own runtime's options (docker.py: `container_config`).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Protocol

from harness.contract import MethodInfo
from harness.errors import MethodFailure
from harness.lifetime import owned_prefix, remove_orphaned
from harness.runners.session import Channel, ContractSocket, MethodSession
from harness.specs import MethodSpec
from harness.weights import RANDOM_INIT

LOG_TAIL_BYTES = 8192
LOG_CAP_BYTES = 16 << 20  # per stream the harness copies into a method's log
RUN_FOLDER = "bench-"  # a run's temporary folder: its contract socket and the method's log
EXIT_WAIT_S = 0.5  # how long stop() waits for a method that may be exiting by itself, before signalling it


class Launched(Protocol):
    """A started method: the byte streams of the contract and a way to stop it."""

    read_fd: int  # the method's replies
    write_fd: int  # the method's requests
    exit_reason: str | None  # set by stop() when the method had ended by itself, e.g. "exited with code 3"
    peak_memory_bytes: int | None  # set by measure_memory() where the backend measures it; else None

    def measure_memory(self) -> None: ...  # note the method's peak memory so far, while it runs

    def stop(self, grace_s: float) -> None: ...


PIDS_LIMIT = 512
CONTRACT_DIR = "/run/vrbench"  # where a container sees the folder holding the contract socket
WEIGHTS_DIR = "/weights"
OUTPUT_DIR = "/output"  # bench train: the one writable folder (checkpoints, exported weights)


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class Sandbox:
    """What an untrusted method may use, independent of the container runtime that enforces it."""

    user: str  # uid:gid; never root
    memory_bytes: int  # swap included: none beyond it
    shm_bytes: int
    tmpfs_bytes: int  # a writable, exec-able /tmp (JIT compilers load code they write there), counted in memory
    pids: int = PIDS_LIMIT
    cpus: float | None = None
    gpus: int = 0  # requested only where the host has GPUs
    network: bool = False
    read_only_root: bool = True
    capabilities: tuple[str, ...] = ()  # every other capability dropped; no new privileges either
    mounts: tuple[Mount, ...] = ()  # the only host paths visible: the weights and the contract socket's folder
    env: dict[str, str] = field(default_factory=dict)


def sandbox_user() -> str:
    """The invoking user's uid:gid, or nobody's when the harness runs as root: a method never runs as root."""
    uid, gid = os.getuid(), os.getgid()
    return "65534:65534" if uid == 0 else f"{uid}:{gid}"


def host_has_gpus() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def sandbox_for(method: MethodSpec, contract_socket: Path | None = None) -> Sandbox:
    """The sandbox every method image runs in: limits from method.yaml's `resources`, the weights and the contract
    socket's folder mounted read-only (connecting to a socket needs no write access), nothing else."""
    r = method.resources
    memory = int(r.memory_gb * (1 << 30))
    env = {"HOME": "/tmp", "XDG_CACHE_HOME": "/tmp/.cache", "PYTHONDONTWRITEBYTECODE": "1"}
    mounts, target = [], None
    if weights := method.weights_path:  # a file keeps its name under /weights
        target = WEIGHTS_DIR if weights.is_dir() else f"{WEIGHTS_DIR}/{weights.name}"
        mounts.append(Mount(weights, target))
    env.update(method_env(method, target, OUTPUT_DIR if method.output_dir else None))
    if method.output_dir:
        mounts.append(Mount(method.output_dir, OUTPUT_DIR, read_only=False))
    if contract_socket:
        mounts.append(Mount(contract_socket.parent, CONTRACT_DIR))
        env["BENCH_CONTRACT_SOCKET"] = f"{CONTRACT_DIR}/{contract_socket.name}"
    return Sandbox(
        user=sandbox_user(),
        memory_bytes=memory,
        shm_bytes=int(r.shm_gb * (1 << 30)),
        tmpfs_bytes=max(64 << 20, min(1 << 30, memory // 4)),
        cpus=r.cpus,
        gpus=r.gpus if host_has_gpus() else 0,
        mounts=tuple(mounts),
        env=env,
    )


def check_outputs(method: MethodSpec, info: MethodInfo) -> None:
    """The method must produce what its method.yaml (its variant's entry, for a variant) promises."""
    missing = set(method.outputs) - set(info.outputs)
    if missing:
        raise MethodFailure(f"method.yaml declares outputs {sorted(missing)} that the method's info lacks")
    if method.fit and not info.fit:
        raise MethodFailure(
            "method.yaml declares fit: true but the method's info has no fit stage (benchsdk: fit_stage = True)"
        )
    for name in ("patch_size", "embed_dim"):
        declared, told = getattr(method, name), getattr(info, name)
        if declared is not None and told is not None and declared != told:
            hint = f" (BENCH_VARIANT={method.variant_name}: does the adapter read it?)" if method.variant_name else ""
            raise MethodFailure(
                f"method.yaml declares {name} {declared} for {method.name} but the method's info says {told}{hint}"
            )


def method_env(method: MethodSpec, weights: str | None, output: str | None = None) -> dict[str, str]:
    """What every backend tells a method in its environment: the variant that runs ("" for the base form), when
    it has weights, where they are, and when it trains, its output folder. A method without weights gets no
    BENCH_WEIGHTS at all (the caller removes one inherited from the harness's own environment)."""
    return {
        "BENCH_VARIANT": method.variant_name,
        **({"BENCH_WEIGHTS": weights} if weights else {}),
        **({"BENCH_OUTPUT": output} if output else {}),
    }


class Runner(ABC):
    name: ClassVar[str]
    sandboxed: ClassVar[bool]  # recorded in every result: only a sandboxed backend hides data and network

    @abstractmethod
    def prepare(self, method: MethodSpec) -> str:
        """Make the method ready to start (resolve, pull or build it; at most once per runner) and return what
        identifies the exact code that runs: an image digest or MethodSpec.code_hash (the method folder and the
        folders it includes)."""

    @abstractmethod
    def launch(self, method: MethodSpec, log: Path, contract_socket: Path | None) -> Launched:
        """Start the prepared method with its stderr going to `log`, its weights (if any) at $BENCH_WEIGHTS and
        the contract socket (when there is one) at $BENCH_CONTRACT_SOCKET."""

    def result_ref(self, method: MethodSpec) -> str:
        """prepare()'s reference, plus the sha256 of the weights when method.yaml names some (or `+weights:random-init`
        when declared weights were absent on procedural data): part of every result's key."""
        if method.random_init:
            return self.prepare(method) + f"+weights:{RANDOM_INIT}"
        digest = method.weights_digest
        return self.prepare(method) + (f"+weights-sha256:{digest}" if digest else "")

    def cache_ref(self, method: MethodSpec) -> str | None:
        """What the feature cache keys this backend's replies by (harness.cache): result_ref, where that names all
        the code that computes them; None where nothing stable does (replies are then never cached)."""
        return self.result_ref(method)

    @contextmanager
    def start(self, method: MethodSpec, seed: int, task: dict, timeout_s: float) -> Iterator["RunningMethod"]:
        """Start, handshake, yield the running method; stop it on every path (errors, timeouts, Ctrl-C)."""
        self.prepare(method)
        remove_orphaned(Path(tempfile.gettempdir()), RUN_FOLDER)
        with (
            tempfile.TemporaryDirectory(prefix=owned_prefix(RUN_FOLDER)) as tmp,
            ContractSocket(Path(tmp) / "contract") as contract,
        ):
            running = RunningMethod(Path(tmp) / "method.log")
            handle = self.launch(method, running.log, contract.path)
            try:
                running.session = MethodSession(Channel(handle.read_fd, handle.write_fd, time.monotonic() + timeout_s))
                info = running.session.handshake(seed, task, contract, method.fit_recipe_payload)
                if contract.conn is not None:  # moved to the socket: stdout is only log now
                    _copy_to_log(handle.read_fd, running.log)
                check_outputs(method, info)
                yield running
                handle.measure_memory()  # before it is told to exit
                running.session.channel.deadline = time.monotonic() + 10
                running.session.shutdown()
            finally:
                handle.stop(grace_s=5)  # before the socket closes: a method reading EOF there would exit "by itself"
                running.peak_memory_bytes = handle.peak_memory_bytes
                running.capture_log_tail()
                if isinstance(failure := sys.exc_info()[1], MethodFailure):  # also when it died before the handshake
                    failure.log_tail = running.log_tail
                    if handle.exit_reason:
                        failure.args = (f"{failure} ({handle.exit_reason})",)


class CappedLog:
    """Appends one stream to a method's log, up to LOG_CAP_BYTES, then notes the truncation once."""

    def __init__(self, path: Path):
        self.file, self.logged = open(path, "ab", buffering=0), 0

    def write(self, data: bytes) -> None:
        if self.logged < LOG_CAP_BYTES:
            data = data[: LOG_CAP_BYTES - self.logged]
            self.file.write(data)
            self.logged += len(data)
            if self.logged >= LOG_CAP_BYTES:
                self.file.write(b"\n[vrbench] log truncated at %d bytes\n" % LOG_CAP_BYTES)

    def close(self) -> None:
        self.file.close()


def _copy_to_log(fd: int, log: Path) -> None:
    """In a thread, copy what a method still writes to its stdout into its log, so a method printing there after
    the move to the contract socket never blocks on a full pipe. Reads its own duplicate of `fd` until EOF."""
    fd = os.dup(fd)

    def copy():
        out = CappedLog(log)
        try:
            while chunk := os.read(fd, 1 << 16):
                out.write(chunk)
        except OSError:
            pass
        finally:
            os.close(fd)
            out.close()

    threading.Thread(target=copy, daemon=True).start()


class RunningMethod:
    def __init__(self, log: Path | None, session: MethodSession | None = None):
        self.log = log  # None: no process, so no log (outputs replayed from files)
        self.session = session
        self.log_tail = ""
        self.peak_memory_bytes: int | None = None  # the method's, where its backend measures it

    def capture_log_tail(self) -> None:
        if self.log is not None and self.log.exists():
            with open(self.log, "rb") as f:
                f.seek(max(0, self.log.stat().st_size - LOG_TAIL_BYTES))
                self.log_tail = f.read().decode("utf-8", "replace")
