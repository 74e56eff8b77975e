"""benchsdk: the method side of the vrbench contract (images/CONTRACT.md).

A method adapter subclasses `Method`, implements the outputs it declares, and calls `serve(...)`:

    class MyMethod(Method):
        name, version, outputs, patch_size, embed_dim = "mine", "1.0", ("global",), 16, 384
        def setup(self, seed, task): ...            # load weights, seed RNGs
        def embed(self, images): ...                # uint8 (N, H, W, 3) RGB -> float (N, D)

    if __name__ == "__main__":
        serve(MyMethod())

Only numpy and the standard library are needed; copy this folder into an image as is.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from typing import Iterator, NamedTuple

import numpy as np

from benchsdk.wire import PROTOCOL_VERSION, WireError, encode, read_frame

__all__ = ["FitBatch", "Method", "serve", "PROTOCOL_VERSION"]
__version__ = "1.0.0"


class FitBatch(NamedTuple):
    """One batch of a fit stage (images/CONTRACT.md, "Fit stages"). `labels`: int64 (N,) class labels, only where
    the task allows them (`fit_labels: true`) and the protocol has them; `patches`: int64 (N, K) row-major indices of
    the patches a protocol itself keeps from each image (HummingBird: its memory's label-driven sampling), or None."""

    images: np.ndarray
    labels: np.ndarray | None = None
    patches: np.ndarray | None = None


class Method:
    """Base class of a method adapter. Override what you declare in `outputs`; a method with a fit stage sets
    `fit_stage = True` (as its method.yaml says `fit: true`) and overrides `fit`."""

    name: str = "unnamed"
    version: str = "0"
    outputs: tuple[str, ...] = ()  # subset of ("global", "dense", "masks")
    patch_size: int | None = None  # for dense outputs: pixels per patch side
    embed_dim: int | None = None
    global_dim: int | None = None  # the width of global outputs where it differs from embed_dim (the dense one)
    fit_stage: bool = False  # the harness runs `fit` on the task's training split before any work
    # set before `setup`: the recipe the fit stage trains, {name, steps, params, hash} (method.yaml `fit_recipe`), or None
    fit_recipe: dict | None = None

    def info(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "outputs": list(self.outputs),
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            **({"global_dim": self.global_dim} if self.global_dim is not None else {}),
            "fit": self.fit_stage,
        }

    def setup(self, seed: int, task: dict) -> None:
        """Called once before any work: seed RNGs, load weights. `task` has no labels."""

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB -> global embeddings (N, D)."""
        raise NotImplementedError("this method does not produce global embeddings")

    def embed_dense(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB -> dense patch features (N, H/p, W/p, D)."""
        raise NotImplementedError("this method does not produce dense features")

    def segment(self, images: np.ndarray):
        """uint8 (N, H, W, 3) RGB -> masks (N, K, H, W), or (masks, reconstructions (N, 3, H, W))."""
        raise NotImplementedError("this method does not produce object masks")

    def fit(self, batches: Iterator[FitBatch]) -> None:
        """Optional training stage: iterate FitBatch (images, labels, patches) batches of the training split, in
        the protocol's order. Returning before the end stops the stream: the harness sends no more."""

    # --- training (`bench train`, images/CONTRACT.md "Training"): a method with recipes overrides all four -----

    def train_start(self, recipe: str, params: dict, seed: int, checkpoint: str | None) -> int:
        """Build the training state of `recipe` (its method.yaml hyper-parameters `params`), seeded; restored from
        `checkpoint` (a file save_checkpoint wrote) when given. Returns the number of steps already done."""
        raise NotImplementedError("this method has no training recipes")

    def train_step(self, images: np.ndarray | None) -> float:
        """One optimisation step, on `images` (uint8 (N, H, W, 3)) where the recipe streams a dataset, else on data
        the method makes itself; returns the step's loss."""
        raise NotImplementedError("this method has no training recipes")

    def save_checkpoint(self, path: str) -> None:
        """Write everything a resumed run needs (model, optimiser, schedules' step, RNG states) to `path`."""
        raise NotImplementedError("this method has no training recipes")

    def export_weights(self, path: str) -> None:
        """Write the trained weights to `path` in the format the method's evaluation loads (its $BENCH_WEIGHTS)."""
        raise NotImplementedError("this method has no training recipes")


class _Server:
    def __init__(self, method: Method, rfile, wfile, contract_socket: str | None = None):
        self.method, self.rfile, self.wfile = method, rfile, wfile
        self.contract_socket = contract_socket  # where to move the contract after `info`, if the harness offers it
        self.socket: socket.socket | None = None  # connected while answering `info`

    def connect(self) -> str:
        """Connect to the harness's socket if it offers one: the transport to announce in `info`. Connecting
        before announcing means a socket that cannot be reached (e.g. a bind mount that does not carry sockets)
        leaves the session on stdio instead of failing it."""
        if not self.contract_socket:
            return "stdio"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        try:
            sock.connect(self.contract_socket)
        except OSError as e:
            print(f"benchsdk: cannot connect to {self.contract_socket} ({e}); staying on stdin/stdout", file=sys.stderr)
            sock.close()
            return "stdio"
        self.socket = sock
        return "socket"

    def move_to_socket(self) -> None:
        """Go on over the connected socket: the same frames, without a container runtime copying them."""
        self.rfile.close()
        self.wfile.close()
        self.rfile = self.socket.makefile("rb", buffering=1 << 20)
        self.wfile = self.socket.makefile("wb", buffering=1 << 20)
        self.socket.close()  # the files hold their own reference
        self.socket = self.contract_socket = None

    def read_exact(self, n: int) -> bytes:
        buf = self.rfile.read(n)
        if len(buf) != n:
            raise EOFError("the harness closed the stream")
        return buf

    def send(self, header: dict, arrays: dict | None = None) -> None:
        for chunk in encode(header, arrays):
            self.wfile.write(chunk)
        self.wfile.flush()

    def send_error(self, exc: BaseException) -> None:
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        self.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": "".join(tb)[-4000:]})

    def loop(self) -> None:
        while True:
            try:
                header, arrays = read_frame(self.read_exact)
            except EOFError:
                return
            op = header.get("op")
            if op == "shutdown":
                self.send({"ok": True})
                return
            if op == "fit_start":
                self.fit()
                continue
            try:
                fields, out = self.dispatch(op, header, arrays)
                self.send({"ok": True, **fields}, out)
            except Exception as exc:  # the method's own error goes back to the harness, the server goes on
                self.send_error(exc)
                continue
            if self.socket:  # connected while answering info
                self.move_to_socket()

    def dispatch(self, op: str, header: dict, arrays: dict) -> tuple[dict, dict | None]:
        """Run one request; returns extra header fields and the arrays of the reply."""
        m = self.method
        if op == "info":
            if header.get("protocol") != PROTOCOL_VERSION:
                raise WireError(f"harness speaks protocol {header.get('protocol')}, method {PROTOCOL_VERSION}")
            info = dict(m.info(), protocol=PROTOCOL_VERSION, sdk=__version__)
            return {"info": dict(info, transport=self.connect())}, None
        if op == "setup":
            m.fit_recipe = header.get("fit_recipe")
            m.setup(int(header["seed"]), dict(header.get("task", {})))
            return {}, None
        if op in ("embed", "embed_dense"):
            return {}, {"features": np.asarray(getattr(m, op)(arrays["images"]))}
        if op == "train_start":  # file names are in the output folder, $BENCH_OUTPUT
            checkpoint = header.get("checkpoint")
            checkpoint = _output_path(checkpoint) if checkpoint else None
            recipe, params = str(header["recipe"]), dict(header.get("params") or {})
            return {"step": int(m.train_start(recipe, params, int(header["seed"]), checkpoint))}, None
        if op == "train_step":
            return {"loss": float(m.train_step(arrays.get("images")))}, None
        if op in ("save_checkpoint", "export_weights"):
            getattr(m, op)(_output_path(header["path"]))
            return {}, None
        if op == "segment":
            out = m.segment(arrays["images"])
            masks, recon = out if isinstance(out, tuple) else (out, None)
            replies = {"masks": np.asarray(masks)}
            if recon is not None:
                replies["reconstructions"] = np.asarray(recon)
            return {}, replies
        raise WireError(f"unknown op {op!r}")

    def fit(self) -> None:
        """fit_start, fit_batch*, fit_end: every frame gets a reply; the method pulls batches lazily.

        A batch is acknowledged when the method asks for the next one, so an error raised while the
        method works on a batch becomes the reply to that batch. When the method returns before the stream ends,
        the batch it last took (or the next one) is answered `done: true`, and the harness sends fit_end."""
        state = {"pending": False, "ended": False}

        def read_batch():
            header, arrays = read_frame(self.read_exact)
            if header.get("op") == "fit_end":
                state["ended"] = True
                return None
            if header.get("op") != "fit_batch":
                raise WireError(f"expected fit_batch or fit_end, got {header.get('op')!r}")
            return FitBatch(arrays["images"], arrays.get("labels"), arrays.get("patches"))

        def batches():
            while not state["ended"]:
                if state["pending"]:
                    self.send({"ok": True})
                    state["pending"] = False
                batch = read_batch()
                if batch is None:
                    return
                state["pending"] = True
                yield batch

        self.send({"ok": True})
        try:
            self.method.fit(batches())
            while not state["ended"]:  # the method has had enough: every further batch is answered done
                if state["pending"] or read_batch() is not None:
                    self.send({"ok": True, "done": True})
                    state["pending"] = False
            self.send({"ok": True})
        except Exception as exc:
            if not (state["pending"] or state["ended"]):
                read_frame(self.read_exact)  # the frame this error answers
            self.send_error(exc)


def _output_path(name: str) -> str:
    """A file the harness names in the method's output folder ($BENCH_OUTPUT, given only to a training run)."""
    folder = os.environ.get("BENCH_OUTPUT")
    if not folder or os.sep in str(name):
        raise WireError(f"a training file {name!r} outside the output folder ($BENCH_OUTPUT={folder!r})")
    return os.path.join(folder, str(name))


def serve(method: Method) -> None:
    """Serve `method` over stdin/stdout, moving to the harness's socket after `info` when $BENCH_CONTRACT_SOCKET
    names one. Anything the method prints goes to stderr, never into the stream."""
    rfile = os.fdopen(os.dup(0), "rb", buffering=1 << 20)
    wfile = os.fdopen(os.dup(1), "wb", buffering=1 << 20)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # stray prints (Python or C libraries) land in the log, not in the protocol stream
    sys.stdout = sys.stderr
    _Server(method, rfile, wfile, os.environ.get("BENCH_CONTRACT_SOCKET") or None).loop()
