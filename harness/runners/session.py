"""The harness side of the contract: a session that sends image batches and checks what comes back.

Every read and write is bounded by the run's deadline, so a method that hangs, stops reading or never
answers becomes a MethodTimeout; a method that crashes, breaks the framing or returns malformed outputs
becomes a MethodFailure. Nothing the method does can crash the harness.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
import weakref
from pathlib import Path
from typing import Iterable

import numpy as np

from benchsdk.wire import PROTOCOL_VERSION, WireError, encode, read_frame
from harness.contract import OUTPUTS, FitBatch, MethodInfo
from harness.errors import HarnessBug, MethodFailure, MethodTimeout, UserError

MIN_REPLY_LIMIT = 256 << 20  # bytes; replies may be larger than requests (dense features), but not unboundedly


def reply_limit(request_bytes: int) -> int:
    """The most bytes of arrays a reply to a request of `request_bytes` may hold (live or saved for `bench score`)."""
    return max(MIN_REPLY_LIMIT, 16 * request_bytes)


def check_reply_array(op: str, name: str, shape: tuple, dtype: np.dtype, expected: tuple, info: MethodInfo) -> None:
    """A reply array's shape (None in `expected`: any size) and dtype, from the array or, before reading a saved
    one, from its header; a mismatch is a MethodFailure naming the width the method declared where that differs."""
    if len(shape) != len(expected) or any(w is not None and g != w for g, w in zip(shape, expected)):
        want = "(" + ", ".join("*" if d is None else str(d) for d in expected) + ")"
        width = ""
        if name == "features" and shape and len(shape) == len(expected) and shape[-1] != expected[-1]:
            field = "global_dim" if op == "embed" and info.global_dim else "embed_dim"
            width = f": {shape[-1]} features wide, but the method declares {field} {expected[-1]}"
        raise MethodFailure(f"{op}: {name} has shape {tuple(shape)}, expected {want}{width}")
    if not np.issubdtype(dtype, np.floating):
        raise MethodFailure(f"{op}: {name} has dtype {dtype}, expected floating point")


def _checked(op: str, name: str, arr: np.ndarray, expected: tuple, info: MethodInfo) -> np.ndarray:
    check_reply_array(op, name, arr.shape, arr.dtype, expected, info)
    if not np.isfinite(arr).all():
        raise MethodFailure(f"{op}: {name} contains NaN or Inf")
    return arr.astype(np.float32, copy=False)


class Channel:
    """A pair of file descriptors (pipes or a socket) with deadline-bounded exact reads and full writes."""

    def __init__(self, rfd: int, wfd: int, deadline: float):
        self.rfd, self.wfd, self.deadline = rfd, wfd, deadline
        os.set_blocking(wfd, False)

    def _wait(self, fd: int, event: int, what: str) -> None:
        remaining = self.deadline - time.monotonic()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, event)
            if remaining <= 0 or not sel.select(remaining):
                raise MethodTimeout(f"method did not {what} within the task's time limit")

    def read_exact(self, n: int) -> bytearray:
        """Exactly n bytes, in a writable buffer (numpy arrays built on it are writable, no copy)."""
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            self._wait(self.rfd, selectors.EVENT_READ, "answer")
            try:
                chunk = os.read(self.rfd, min(n - got, 1 << 22))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise MethodFailure("method closed its output stream (it exited or crashed)")
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        return buf

    def write_all(self, chunks: Iterable[bytes | memoryview]) -> None:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while view.nbytes:
                self._wait(self.wfd, selectors.EVENT_WRITE, "read its input")
                try:
                    sent = os.write(self.wfd, view[: 1 << 22])
                except (BrokenPipeError, ConnectionResetError):
                    raise MethodFailure("method closed its input stream (it exited or crashed)") from None
                except BlockingIOError:
                    continue
                view = view[sent:]


class ContractSocket:
    """A listening Unix socket in a folder of its own that a method may move the contract to after the `info`
    handshake (its info says `"transport": "socket"`). Much cheaper than a container's attached stdio, which
    dockerd and its shim copy twice; also used by the local backend, so both backends move bytes alike.
    At most one connection is ever accepted. `path` is None when none is offered: $BENCH_TRANSPORT=stdio (to
    debug, or to measure what the socket saves), or the socket cannot be made (e.g. too long a path)."""

    NAME = "contract.sock"
    BUFFER_BYTES = 4 << 20

    def __init__(self, folder: Path):
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.path: Path | None = None
        transport = os.environ.get("BENCH_TRANSPORT") or "socket"
        if transport not in ("socket", "stdio"):
            raise UserError(f"BENCH_TRANSPORT={transport!r}: use socket (the default) or stdio")
        if transport == "stdio":
            return
        _OPEN_SOCKETS.add(self)
        folder.mkdir(mode=0o755)
        os.chmod(folder, 0o755)  # the container's user may differ from ours (root runs methods as nobody)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path = folder / self.NAME
        try:
            self.listener.bind(str(self.path))
            os.chmod(self.path, 0o666)
            self.listener.listen(1)
        except OSError:
            self.close()
            self.path = None

    def accept(self, stdio: Channel) -> Channel:
        """The method's connection, as a channel with stdio's deadline; a method that exits instead fails."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.listener, selectors.EVENT_READ)
            sel.register(stdio.rfd, selectors.EVENT_READ)
            ready = {key.fileobj for key, _ in sel.select(max(0.0, stdio.deadline - time.monotonic()))}
        if self.listener not in ready:
            if ready:
                raise MethodFailure(
                    "method said it would connect to the contract socket, but wrote to stdout or exited instead"
                )
            raise MethodTimeout("method did not connect to the contract socket within the task's time limit")
        self.conn, _ = self.listener.accept()
        self.listener.close()
        self.listener = None
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            self.conn.setsockopt(socket.SOL_SOCKET, opt, self.BUFFER_BYTES)
        return Channel(self.conn.fileno(), self.conn.fileno(), stdio.deadline)

    def __enter__(self) -> "ContractSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        _OPEN_SOCKETS.discard(self)
        for s in (self.listener, self.conn):
            if s is not None:
                s.close()
        self.listener = self.conn = None


_OPEN_SOCKETS: "weakref.WeakSet[ContractSocket]" = weakref.WeakSet()
# a process forked from the harness (data loader workers) must not keep the method's connection open
os.register_at_fork(after_in_child=lambda: [s.close() for s in list(_OPEN_SOCKETS)])


class MethodSession:
    """One started method. Protocols call embed / embed_dense / segment / fit; all outputs are validated."""

    def __init__(self, channel: Channel | None, info: MethodInfo | None = None):
        self.channel = channel
        self.info = info  # set by the handshake
        self.method_seconds = 0.0  # wall time spent waiting on the method, transport included (fit stage apart)
        self.fit_seconds = 0.0  # the same for the fit stage
        self.images_sent = 0
        self.bytes_sent = 0

    def request(self, op: str, fields: dict | None = None, arrays: dict | None = None) -> tuple[dict, dict]:
        t0 = time.monotonic()
        frames = encode({"op": op, **(fields or {})}, arrays)
        request_bytes = sum(memoryview(f).nbytes for f in frames)
        try:
            self.channel.write_all(frames)
            header, out = read_frame(self.channel.read_exact, max_payload=reply_limit(request_bytes))
        except WireError as e:
            raise MethodFailure(f"contract violation in reply to {op!r}: {e}") from None
        finally:
            self.method_seconds += time.monotonic() - t0
        self.bytes_sent += request_bytes
        if header.get("ok") is not True:
            raise MethodFailure(f"method failed in {op!r}: {str(header.get('error', 'no error message'))[:2000]}")
        return header, out

    def handshake(
        self, seed: int, task: dict, contract_socket: ContractSocket | None, fit_recipe: dict | None = None
    ) -> MethodInfo:
        """info (over stdio), then the move to the contract socket if the method asks for it, then setup (with the
        recipe its fit stage trains, MethodSpec.fit_recipe_payload, where the method names one)."""
        header, _ = self.request("info", {"protocol": PROTOCOL_VERSION})
        raw = header.get("info")
        if not isinstance(raw, dict) or raw.get("protocol") != PROTOCOL_VERSION:
            raise MethodFailure(
                f"handshake: method speaks protocol {isinstance(raw, dict) and raw.get('protocol')}, "
                f"harness {PROTOCOL_VERSION}"
            )
        info, problem = MethodInfo.parse(raw)
        if problem:
            raise MethodFailure(f"handshake: the method's info is incomplete: {problem}")
        self.info = info
        if info.transport != "stdio":
            if info.transport != "socket" or contract_socket is None or contract_socket.listener is None:
                raise MethodFailure(
                    f"handshake: method asks for transport {info.transport!r}; the harness "
                    "offers 'stdio' and, where $BENCH_CONTRACT_SOCKET is set, 'socket'"
                )
            self.channel = contract_socket.accept(self.channel)
        self.request("setup", {"seed": seed, "task": task, **({"fit_recipe": fit_recipe} if fit_recipe else {})})
        return info

    def _images_request(self, kind: str, images: np.ndarray) -> dict:
        op, key = OUTPUTS[kind].op, OUTPUTS[kind].reply
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise HarnessBug(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        _, out = self.request(op, arrays={"images": images})
        self.images_sent += len(images)
        if key not in out:
            raise MethodFailure(f"{op}: reply has no {key!r} array (got {sorted(out)})")
        return out

    def _output(self, kind: str, images: np.ndarray) -> tuple[np.ndarray | None, ...]:
        """The reply's arrays for output `kind`, checked against the contract's table, as float32: the main one, then
        the optional ones (None where absent)."""
        spec = OUTPUTS[kind]
        out = self._images_request(kind, images)
        shapes = spec.reply_shapes(self.info, images.shape)
        return tuple(
            None if name not in out else _checked(spec.op, name, out[name], shape, self.info)
            for name, shape in shapes.items()
        )

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, D)."""
        return self._output("global", images)[0]

    def embed_dense(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, h, w, D)."""
        return self._output("dense", images)[0]

    def segment(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (N, H, W, 3) -> masks float32 (N, K, H, W) and optional reconstructions (N, 3, H, W)."""
        return self._output("masks", images)

    def fit(self, batches: Iterable[FitBatch], with_labels: bool) -> None:
        """Stream the training split to the method's fit stage: images, and labels and patch indices only when the
        task allows them; stops early when the method answers a batch `done`. Its wait counts as fit_seconds."""
        waited = self.method_seconds
        try:
            self.request("fit_start", {"with_labels": with_labels})
            for batch in batches:
                arrays = {"images": batch.images}
                if with_labels:
                    arrays |= {k: v for k, v in (("labels", batch.labels), ("patches", batch.patches)) if v is not None}
                header, _ = self.request("fit_batch", arrays=arrays)
                self.images_sent += len(batch.images)
                if header.get("done") is True:
                    break
            self.request("fit_end")
        finally:
            self.fit_seconds += self.method_seconds - waited
            self.method_seconds = waited

    def shutdown(self) -> None:
        self.request("shutdown")
