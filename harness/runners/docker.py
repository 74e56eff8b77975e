"""Docker backend: the method runs as an untrusted image in a locked-down container, speaking the contract
over its attached stdin/stdout, then (methods built on benchsdk) over the contract socket.

The sandbox: no network, read-only root, a size-capped /tmp, a non-root user, no capabilities, no new
privileges, pid / memory / CPU / shm limits from method.yaml, GPUs only when the host has them, nothing
mounted but the method's own weights and the folder holding the contract's socket, both read-only (no data,
no labels: images, and training labels for a fit stage that asks for them, arrive over the contract).
Docker multiplexes the container's stdout and stderr on one socket: a thread splits it, stdout into a pipe
the harness reads, stderr into the log (size-capped); another thread forwards the harness's requests from a
pipe to the socket. Pipes on the harness side mean the session sees the same plain file descriptors, EOFs and
broken pipes as with a local process. The attach stream costs dockerd and its shim two copies of every byte,
hence the contract socket for the bulk of the traffic (runners/session.py, ContractSocket).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import sys
import threading
import weakref
from pathlib import Path

from harness.errors import MethodFailure
from harness.runners.images import ResolvedImage, client, resolve_method
from harness.runners.base import EXIT_WAIT_S, CappedLog, Runner
from harness.specs import MethodSpec

PIDS_LIMIT = 512
CHUNK = 1 << 20
LABEL = "vrbench.harness"
CONTRACT_DIR = "/run/vrbench"  # where the folder holding the contract socket is mounted
F_SETPIPE_SZ = 1031


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, CHUNK)
    except OSError:
        pass  # larger pipes are an optimisation only
    return r, w


def _close(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _user() -> str:
    """The invoking user's uid:gid, or nobody's when the harness runs as root: a method never runs as root."""
    uid, gid = os.getuid(), os.getgid()
    return "65534:65534" if uid == 0 else f"{uid}:{gid}"


def _host_has_gpus() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def container_config(method: MethodSpec, contract_socket: Path | None = None) -> dict:
    """Keyword arguments of containers.create: the sandbox every method image runs in."""
    import docker

    r = method.resources
    memory = int(r.memory_gb * (1 << 30))
    tmp_bytes = max(64 << 20, min(1 << 30, memory // 4))  # counts against the memory limit
    # /tmp is exec-able (Docker's default is noexec): JIT compilers (triton, torch inductor) load code they write there
    config = dict(
        stdin_open=True, tty=False, network_mode="none", read_only=True, user=_user(), init=True,
        tmpfs={"/tmp": f"rw,exec,nosuid,nodev,size={tmp_bytes},mode=1777"},
        cap_drop=["ALL"], security_opt=["no-new-privileges"], pids_limit=PIDS_LIMIT,
        mem_limit=memory, memswap_limit=memory, shm_size=int(r.shm_gb * (1 << 30)),
        environment={"HOME": "/tmp", "XDG_CACHE_HOME": "/tmp/.cache", "PYTHONDONTWRITEBYTECODE": "1"},
        log_config=docker.types.LogConfig(type="none"),  # stderr is read through the attach stream
        labels={LABEL: "1", f"{LABEL}.method": method.name, f"{LABEL}.owner": f"{socket.gethostname()}:{os.getpid()}"},
    )
    if r.cpus:
        config["nano_cpus"] = int(r.cpus * 1e9)
    config["volumes"] = {}
    if weights := method.weights_path:  # read-only; a file keeps its name under /weights
        target = "/weights" if weights.is_dir() else f"/weights/{weights.name}"
        config["volumes"][str(weights)] = {"bind": target, "mode": "ro"}
        config["environment"]["BENCH_WEIGHTS"] = target
    if contract_socket:  # read-only: connecting to a socket is allowed, creating files is not
        config["volumes"][str(contract_socket.parent)] = {"bind": CONTRACT_DIR, "mode": "ro"}
        config["environment"]["BENCH_CONTRACT_SOCKET"] = f"{CONTRACT_DIR}/{contract_socket.name}"
    if r.gpus and _host_has_gpus():
        config["device_requests"] = [docker.types.DeviceRequest(count=r.gpus, capabilities=[["gpu"]])]
    return config


_LIVE: "weakref.WeakSet[Container]" = weakref.WeakSet()


def _forget_in_forked_child() -> None:
    """A process forked from the harness (data loader workers) must not hold the streams' ends: a copy of a
    pipe's write end would hide the method's EOF, a copy of the read end would keep a flood blocking."""
    for c in list(_LIVE):
        _close(*(getattr(c, name) for name in c.FDS), c.sock.detach())


os.register_at_fork(after_in_child=_forget_in_forked_child)


class Container:
    """A started container, seen by the harness as two plain file descriptors."""

    FDS = ("read_fd", "write_fd", "_out_w", "_in_r")

    def __init__(self, container, log: Path):
        self.container, self.log = container, log
        self.exit_reason: str | None = None
        self.sock_io = container.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        self.sock = getattr(self.sock_io, "_sock", self.sock_io)
        self.sock.setblocking(True)
        self.read_fd, self._out_w = _pipe()  # method stdout -> harness
        self._in_r, self.write_fd = _pipe()  # harness -> method stdin
        _LIVE.add(self)
        self._threads = [threading.Thread(target=self._demux, daemon=True),
                         threading.Thread(target=self._forward, daemon=True)]
        for t in self._threads:
            t.start()

    def _release(self, *names: str) -> None:
        """Close our fds by attribute name, marking them closed first (a forked child then leaves the number be)."""
        for name in names:
            fd = getattr(self, name)
            setattr(self, name, -1)
            _close(fd)

    def _forward(self) -> None:
        """Requests from the harness's pipe to the container's stdin until either side closes."""
        try:
            while chunk := os.read(self._in_r, CHUNK):
                self.sock.sendall(chunk)
        except OSError:
            pass  # the container went away: closing the pipe makes the harness's next write a broken pipe
        finally:
            self._release("_in_r")

    def _demux(self) -> None:
        """Split Docker's stream frames (8-byte header: stream id, size): stdout to the pipe, stderr to the log."""
        log = CappedLog(self.log)
        try:
            while header := self._recv_exact(8):
                kind, size = struct.unpack(">BxxxI", header)
                while size:
                    data = self.sock.recv(min(size, CHUNK))
                    if not data:
                        return
                    size -= len(data)
                    if kind == 1 and self._out_w >= 0:
                        try:
                            _write_all(self._out_w, data)
                        except OSError:  # the harness stopped reading: discard the rest
                            self._release("_out_w")
                    elif kind == 2:
                        log.write(data)
        except OSError:
            pass
        finally:
            log.close()
            self._release("_out_w")

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            data = self.sock.recv(n - len(buf))
            if not data:
                return b""
            buf += data
        return buf

    def stop(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after grace_s; note how it ended in the log; remove the container on every path."""
        import docker

        _LIVE.discard(self)
        try:
            self._release("read_fd", "write_fd")  # unblocks both threads
            try:  # a method that closed its stream may still be exiting: give it a moment to say how it ended
                self.container.wait(timeout=EXIT_WAIT_S)
            except Exception:  # requests' ReadTimeout / ConnectionError: still running
                pass
            self.container.reload()
            running = self.container.attrs["State"]["Running"]
            if running:
                self.container.stop(timeout=max(1, int(round(grace_s))))
            for t in self._threads:
                t.join(timeout=10)
            self.container.reload()
            self._note_exit(self.container.attrs["State"], stopped=running)
        except Exception:  # docker or HTTP errors, timeouts included: removal below is what matters
            pass
        finally:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread still blocked on the socket
            except OSError:
                pass
            for t in self._threads:
                t.join(timeout=2)
            self.sock_io.close()
            self.sock.close()
            try:
                self.container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except Exception as e:
                print(f"bench: warning: could not remove container {self.container.short_id}: {e}", file=sys.stderr)

    def _note_exit(self, state: dict, stopped: bool) -> None:
        if state.get("OOMKilled"):
            why = f"OOM-killed: it exceeded its memory limit of {self.container.attrs['HostConfig']['Memory'] >> 20} MiB"
        elif stopped:
            why = "stopped by the harness"
        else:
            why = "exited by itself"
        if state.get("OOMKilled") or not stopped:
            self.exit_reason = f"container exited with code {state.get('ExitCode')}" + (
                f", {why}" if state.get("OOMKilled") else "")
        with open(self.log, "ab") as log:
            log.write(f"\n[vrbench] container exited with code {state.get('ExitCode')} ({why})\n".encode())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def reap_orphans() -> None:
    """Remove containers left by a harness process on this host that no longer exists (one killed with SIGKILL)."""
    import docker

    host = socket.gethostname()
    for c in client().containers.list(all=True, filters={"label": LABEL}):
        owner_host, _, pid = c.labels.get(f"{LABEL}.owner", "").partition(":")
        if owner_host == host and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            try:
                c.remove(force=True)
            except docker.errors.APIError:
                pass  # already going


class DockerRunner(Runner):
    name = "docker"

    def __init__(self):
        self._images: dict[Path | None, ResolvedImage] = {}

    def image(self, method: MethodSpec) -> ResolvedImage:
        """Resolve (pull or build) once per runner: method_ref and launch use the very same image."""
        if method.path not in self._images:
            self._images[method.path] = resolve_method(method)
        return self._images[method.path]

    def method_ref(self, method: MethodSpec) -> str:
        return self.image(method).ref

    def launch(self, method: MethodSpec, log: Path, contract_socket: Path | None) -> Container:
        import docker

        image = self.image(method)
        reap_orphans()
        try:
            container = client().containers.create(image.id, **container_config(method, contract_socket))
        except docker.errors.APIError as e:
            raise MethodFailure(f"the method's container could not be created: {e.explanation}") from None
        handle = None
        try:
            handle = Container(container, log)
            container.start()
            return handle
        except BaseException as e:
            handle.stop(0) if handle else container.remove(force=True)
            if isinstance(e, docker.errors.APIError):
                raise MethodFailure(f"the method's container did not start: {e.explanation}") from None
            raise
