"""The runner interface: start a method, hand its session to a protocol, always clean up.

Backends differ only in how a method is started and identified (`launch`, `method_ref`); everything
else, the handshake, the contract socket, deadlines, stopping with escalation and log capture, lives here once.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Iterator, Protocol

from harness.errors import MethodFailure
from harness.provenance import hash_path
from harness.runners.session import Channel, ContractSocket, MethodSession
from harness.specs import MethodSpec

LOG_TAIL_BYTES = 8192
LOG_CAP_BYTES = 16 << 20  # per stream the harness copies into a method's log
EXIT_WAIT_S = 0.5  # how long stop() waits for a method that may be exiting by itself, before signalling it


class Launched(Protocol):
    """A started method: the byte streams of the contract and a way to stop it."""

    read_fd: int  # the method's replies
    write_fd: int  # the method's requests
    exit_reason: str | None  # set by stop() when the method had ended by itself, e.g. "exited with code 3"

    def stop(self, grace_s: float) -> None: ...


class Runner(ABC):
    name: ClassVar[str]

    @abstractmethod
    def method_ref(self, method: MethodSpec) -> str:
        """What identifies the exact code that runs: an image digest or a hash of the method folder."""

    @abstractmethod
    def launch(self, method: MethodSpec, log: Path, contract_socket: Path | None) -> Launched:
        """Start the method with its stderr going to `log`, its weights (if any) at $BENCH_WEIGHTS and the
        contract socket (when there is one) at $BENCH_CONTRACT_SOCKET."""

    def result_ref(self, method: MethodSpec) -> str:
        """method_ref, plus the sha256 of the weights when method.yaml names some: part of every result's key."""
        weights = method.weights_path
        return self.method_ref(method) + (f"+weights-sha256:{hash_path(weights)}" if weights else "")

    @contextmanager
    def start(self, method: MethodSpec, seed: int, task: dict, timeout_s: float) -> Iterator["RunningMethod"]:
        """Start, handshake, yield the running method; stop it on every path (errors, timeouts, Ctrl-C)."""
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp, ContractSocket(Path(tmp) / "contract") as contract:
            running = RunningMethod(Path(tmp) / "method.log")
            handle = self.launch(method, running.log, contract.path)
            try:
                running.session = MethodSession(Channel(handle.read_fd, handle.write_fd,
                                                        time.monotonic() + timeout_s))
                info = running.session.handshake(seed, task, contract)
                if contract.conn is not None:  # moved to the socket: stdout is only log now
                    _copy_to_log(handle.read_fd, running.log)
                missing = set(method.outputs) - set(info.get("outputs") or [])
                if missing:
                    raise MethodFailure(f"method.yaml declares outputs {sorted(missing)} that the method's info lacks")
                yield running
                running.session.channel.deadline = time.monotonic() + 10
                running.session.shutdown()
            finally:
                handle.stop(grace_s=5)  # before the socket closes: a method reading EOF there would exit "by itself"
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

    def capture_log_tail(self) -> None:
        if self.log is not None and self.log.exists():
            with open(self.log, "rb") as f:
                f.seek(max(0, self.log.stat().st_size - LOG_TAIL_BYTES))
                self.log_tail = f.read().decode("utf-8", "replace")
