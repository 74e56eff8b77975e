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
import socket
import struct
import subprocess
import sys
import threading
import weakref
from pathlib import Path

from harness.errors import MethodFailure
from harness.lifetime import gone
from harness.runners.base import EXIT_WAIT_S, CappedLog, Runner, Sandbox, sandbox_for
from harness.runners.images import ResolvedImage, client, resolve_method
from harness.specs import REPO_ROOT, MethodSpec

CHUNK = 1 << 20
LABEL = "vrbench.harness"
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


def container_config(sandbox: Sandbox, method_name: str) -> dict:
    """Keyword arguments of containers.create: `sandbox` in Docker's terms."""
    import docker

    config = dict(
        stdin_open=True,
        tty=False,
        network_mode=None if sandbox.network else "none",
        read_only=sandbox.read_only_root,
        user=sandbox.user,
        init=True,
        tmpfs={"/tmp": f"rw,exec,nosuid,nodev,size={sandbox.tmpfs_bytes},mode=1777"},
        cap_drop=["ALL"],
        cap_add=list(sandbox.capabilities) or None,
        security_opt=["no-new-privileges"],
        pids_limit=sandbox.pids,
        mem_limit=sandbox.memory_bytes,
        memswap_limit=sandbox.memory_bytes,
        shm_size=sandbox.shm_bytes,
        environment=dict(sandbox.env),
        volumes={str(m.source): {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in sandbox.mounts},
        log_config=docker.types.LogConfig(type="none"),  # stderr is read through the attach stream
        labels={LABEL: "1", f"{LABEL}.method": method_name, f"{LABEL}.owner": f"{socket.gethostname()}:{os.getpid()}"},
    )
    if sandbox.cpus:
        config["nano_cpus"] = int(sandbox.cpus * 1e9)
    if sandbox.gpus:
        config["device_requests"] = [docker.types.DeviceRequest(count=sandbox.gpus, capabilities=[["gpu"]])]
    return config


_LIVE: "weakref.WeakSet[Container]" = weakref.WeakSet()
# Docker host -> its watchdog, and the write end of the pipe it waits on
_WATCHDOGS: dict[str | None, tuple[subprocess.Popen, int]] = {}


def _forget_in_forked_child() -> None:
    """A process forked from the harness (data loader workers) must not hold the streams' ends: a copy of a
    pipe's write end would hide the method's EOF, a copy of the read end would keep a flood blocking; nor a
    watchdog's pipe, whose EOF says that the harness has ended."""
    for c in list(_LIVE):
        _close(*(getattr(c, name) for name in c.FDS), c.sock.detach())
    _close(*(fd for _, fd in _WATCHDOGS.values()))
    _WATCHDOGS.clear()


os.register_at_fork(after_in_child=_forget_in_forked_child)


class Container:
    """A started container, seen by the harness as two plain file descriptors."""

    FDS = ("read_fd", "write_fd", "_out_w", "_in_r")

    def __init__(self, container, log: Path):
        self.container, self.log = container, log
        self.exit_reason: str | None = None
        self.peak_memory_bytes: int | None = None  # set by measure_memory where the daemon reports it
        self.sock_io = container.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        self.sock = getattr(self.sock_io, "_sock", self.sock_io)
        self.sock.setblocking(True)
        self.read_fd, self._out_w = _pipe()  # method stdout -> harness
        self._in_r, self.write_fd = _pipe()  # harness -> method stdin
        _LIVE.add(self)
        self._threads = [
            threading.Thread(target=self._demux, daemon=True),
            threading.Thread(target=self._forward, daemon=True),
        ]
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

    def measure_memory(self) -> None:
        """Note the container's peak memory so far: its cgroup's max_usage, as `docker stats` reads it (cgroup v1:
        memory.max_usage_in_bytes, page cache included). A daemon on cgroup v2 reports no peak: left None."""
        try:
            stats = self.container.stats(stream=False, one_shot=True)
        except Exception:  # docker or HTTP errors, an API older than 1.41: not measured
            return
        peak = (stats.get("memory_stats") or {}).get("max_usage")
        if isinstance(peak, int) and peak > 0:
            self.peak_memory_bytes = max(self.peak_memory_bytes or 0, peak)

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
            if running:  # stopped while it runs (a timeout): what it had used until now
                self.measure_memory()
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
            why = (
                f"OOM-killed: it exceeded its memory limit of {self.container.attrs['HostConfig']['Memory'] >> 20} MiB"
            )
        elif stopped:
            why = "stopped by the harness"
        else:
            why = "exited by itself"
        if state.get("OOMKilled") or not stopped:
            self.exit_reason = f"container exited with code {state.get('ExitCode')}" + (
                f", {why}" if state.get("OOMKilled") else ""
            )
        with open(self.log, "ab") as log:
            log.write(f"\n[vrbench] container exited with code {state.get('ExitCode')} ({why})\n".encode())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def reap_orphans(dc, owner: str | None = None) -> None:
    """Remove the containers of `owner` (host:pid), by default those of every harness process on this host that no
    longer exists (one killed with SIGKILL)."""
    import docker

    for c in dc.containers.list(all=True, filters={"label": LABEL}):
        label = c.labels.get(f"{LABEL}.owner", "")
        host, _, pid = label.partition(":")
        if (label == owner) if owner else gone(host, pid):
            try:
                c.remove(force=True)
            except docker.errors.APIError:
                pass  # already going


def watch_over_containers(host: str | None) -> None:
    """Start, once per harness process and Docker host, a watchdog that removes this process's containers as soon
    as it ends, however it ends (kill -9 included): a process in a session of its own (a kill of the harness's
    process group spares it) that waits for EOF on a pipe only the harness holds. The watchdog also leaves with
    the harness; what it misses, the next launch reaps (reap_orphans)."""
    if host in _WATCHDOGS:
        return
    owner = f"{socket.gethostname()}:{os.getpid()}"
    read, write = os.pipe()
    code = "import sys; from harness.runners.docker import watchdog; watchdog(*sys.argv[1:])"
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    popen = subprocess.Popen(
        [sys.executable, "-c", code, owner, host or ""],
        stdin=read,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # not the harness's: whoever reads that would wait for the watchdog too
        env=dict(os.environ, PYTHONPATH=path),
        start_new_session=True,
    )
    os.close(read)
    _WATCHDOGS[host] = popen, write


def watchdog(owner: str, host: str) -> None:
    """The watchdog's program: wait for the harness to end (EOF on stdin), then remove what it left running."""
    dc = client(host or None)
    sys.stdin.buffer.read()
    reap_orphans(dc, owner)


class DockerRunner(Runner):
    name = "docker"
    sandboxed = True

    def __init__(self, host: str | None = None):
        """`host`: the Docker-API daemon to use (another runtime speaking the Docker API, e.g. rootless Podman's
        socket); default DOCKER_HOST, else the local dockerd."""
        self.host = host
        self._images: dict[tuple, ResolvedImage] = {}

    @property
    def client(self):
        return client(self.host)

    def image(self, method: MethodSpec) -> ResolvedImage:
        """Resolve (pull or build) once per runner: the result key and launch use the very same image."""
        key = (method.path, method.image)
        if key not in self._images:
            self._images[key] = resolve_method(method, dc=self.client)
        return self._images[key]

    def prepare(self, method: MethodSpec) -> str:
        return self.image(method).ref

    def launch(self, method: MethodSpec, log: Path, contract_socket: Path | None) -> Container:
        import docker

        image = self.image(method)
        reap_orphans(self.client)
        watch_over_containers(self.host)
        try:
            container = self.client.containers.create(
                image.id, **container_config(sandbox_for(method, contract_socket), method.name)
            )
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
