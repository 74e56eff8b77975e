"""The runner interface: start a method, hand its session to a protocol, always clean up.

Backends differ only in how a method is started and identified (`launch`, `method_ref`); everything
else, the handshake, deadlines, stopping with escalation and log capture, lives here once.
"""

from __future__ import annotations

import tempfile
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Iterator, Protocol

from harness.errors import MethodFailure
from harness.runners.session import Channel, MethodSession
from harness.specs import MethodSpec

LOG_TAIL_BYTES = 8192


class Launched(Protocol):
    """A started method: the byte streams of the contract and a way to stop it."""

    read_fd: int  # the method's replies
    write_fd: int  # the method's requests

    def stop(self, grace_s: float) -> None: ...


class Runner(ABC):
    name: ClassVar[str]

    @abstractmethod
    def method_ref(self, method: MethodSpec) -> str:
        """What identifies the exact code that runs: an image digest or a hash of the method folder."""

    @abstractmethod
    def launch(self, method: MethodSpec, log: Path) -> Launched:
        """Start the method with its stderr going to `log`."""

    @contextmanager
    def start(self, method: MethodSpec, seed: int, task: dict, timeout_s: float) -> Iterator["RunningMethod"]:
        """Start, handshake, yield the running method; stop it on every path (errors, timeouts, Ctrl-C)."""
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            running = RunningMethod(Path(tmp) / "method.log")
            handle = self.launch(method, running.log)
            try:
                running.session = MethodSession(Channel(handle.read_fd, handle.write_fd,
                                                        time.monotonic() + timeout_s))
                info = running.session.handshake(seed, task)
                missing = set(method.outputs) - set(info.get("outputs") or [])
                if missing:
                    raise MethodFailure(f"method.yaml declares outputs {sorted(missing)} that the method's info lacks")
                yield running
                running.session.channel.deadline = time.monotonic() + 10
                running.session.shutdown()
            finally:
                handle.stop(grace_s=5)
                running.capture_log_tail()


class RunningMethod:
    def __init__(self, log: Path):
        self.log = log
        self.session: MethodSession | None = None
        self.log_tail = ""

    def capture_log_tail(self) -> None:
        if self.log.exists():
            with open(self.log, "rb") as f:
                f.seek(max(0, self.log.stat().st_size - LOG_TAIL_BYTES))
                self.log_tail = f.read().decode("utf-8", "replace")
