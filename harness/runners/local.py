"""Local backend: the method adapter runs as a subprocess of the harness's own Python.

For development and trusted methods: the process is not sandboxed (use the docker backend for
untrusted images). It still speaks only the contract: it gets images over stdin, never paths or labels.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

from harness.lifetime import die_with_parent
from harness.provenance import host_environment
from harness.runners.base import EXIT_WAIT_S, Runner, method_env
from harness.specs import REPO_ROOT, MethodSpec


class LocalProcess:
    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.read_fd = popen.stdout.fileno()
        self.write_fd = popen.stdin.fileno()
        self.exit_reason: str | None = None
        self.peak_memory_bytes: int | None = None

    def measure_memory(self) -> None:
        """Note the process's peak resident memory so far (VmHWM: since its exec, its child processes apart)."""
        try:
            with open(f"/proc/{self.popen.pid}/status") as f:
                kib = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), None)
        except (OSError, ValueError):  # gone, or not Linux
            return
        if kib is not None:
            self.peak_memory_bytes = max(self.peak_memory_bytes or 0, kib << 10)

    def stop(self, grace_s: float) -> None:
        """SIGTERM the method's process group, then SIGKILL after `grace_s`."""
        if self.popen.poll() is None:  # stopped while it runs (a timeout): what it had used until now
            self.measure_memory()
        try:  # a method that closed its stream may still be exiting: give it a moment to say how it ended
            code = self.popen.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            self.exit_reason = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
            if self.popen.poll() is not None:
                break
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        for stream in (self.popen.stdin, self.popen.stdout):
            try:
                stream.close()
            except OSError:
                pass


class LocalRunner(Runner):
    name = "local"
    sandboxed = False

    def prepare(self, method: MethodSpec) -> str:
        return "code-sha256:" + method.code_hash

    def cache_ref(self, method: MethodSpec) -> str:
        """The code hash covers the method's folders; the host's Python, packages and benchsdk compute too."""
        return f"{self.result_ref(method)}+host:{host_environment()}"

    def launch(self, method: MethodSpec, log: Path, contract_socket: Path | None) -> LocalProcess:
        env = dict(
            os.environ,
            # after the adapter's own folder (its cwd and sys.path[0]): the folders it includes, then benchsdk's
            PYTHONPATH=os.pathsep.join(
                filter(None, [*map(str, method.code_folders[1:]), str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
            PYTHONUNBUFFERED="1",
        )
        for name in ("BENCH_WEIGHTS", "BENCH_OUTPUT"):  # the harness's own, if set, are not the method's
            env.pop(name, None)
        weights = method.weights_path
        env.update(method_env(method, str(weights) if weights else None, str(method.output_dir or "") or None))
        if contract_socket:
            env["BENCH_CONTRACT_SOCKET"] = str(contract_socket)
        with open(log, "ab") as log_file:  # appending: the harness may add the method's stray stdout
            popen = subprocess.Popen(
                [sys.executable, str(method.folder / method.entrypoint)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                cwd=method.folder,
                env=env,
                start_new_session=True,  # not in the terminal's process group: the harness stops it, not Ctrl-C
                preexec_fn=partial(die_with_parent, os.getpid()),  # and kill -9 of the harness takes it along
            )
        return LocalProcess(popen)
