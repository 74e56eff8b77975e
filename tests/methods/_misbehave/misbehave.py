"""A test method whose behaviour is chosen by the name of the folder it runs from (its method.yaml's folder), whose
adapter.py subclasses Misbehave and serves it with main(); the folder includes this one (`include: [../_misbehave]`), so its code hash covers it.

weighted: its 4th feature is the first byte of its $BENCH_WEIGHTS file, -1 without one (a random init).
Any behaviour: the variant `dimN` ($BENCH_VARIANT) makes its features N wide (the extra ones zero), else 4.
crasher: exits abruptly on the first batch.  dies_at_start: exits before the handshake, saying why on stderr.  hanger: never answers.  nan_out: NaN features.
wrong_count: one row too few.  raiser: raises inside embed.  chatty: prints to stdout (must still work).
fitter: learns the mean training image in `fit` and returns it (plus the label sum) as every embedding.
no_connect: says it moves to the contract socket and stays on stdio.  exits_instead: says so and exits.
pigeon: asks for a transport nobody offers.  unreachable: cannot reach the harness's socket (stays on stdio).
loud: writes megabytes to its real stdout after moving to the socket.
hoarder: touches HOARD_MIB (256) MiB once in setup, then frees them (its peak memory is known).
gated: in setup, appends "<its pid> <its harness's pid>" to $GATE_FILE.started, then waits while $GATE_FILE exists.
"""

import os
import sys
import time
from pathlib import Path

import numpy as np

import benchsdk
from benchsdk import Method, serve

BEHAVIOUR = Path.cwd().name
VARIANT = os.environ.get("BENCH_VARIANT", "")

FAKE_TRANSPORT = {"no_connect": "socket", "exits_instead": "socket", "pigeon": "pigeon"}.get(BEHAVIOUR)
if FAKE_TRANSPORT:  # announce a transport without connecting to anything
    benchsdk._Server.connect = lambda self: FAKE_TRANSPORT
STDOUT = os.dup(1)  # the real stdout, before serve() points fd 1 at stderr
if BEHAVIOUR == "unreachable":  # as where a bind mount does not carry sockets (Docker Desktop's VM)
    os.environ["BENCH_CONTRACT_SOCKET"] = "/nonexistent/contract.sock"
if BEHAVIOUR == "exits_instead":
    _send = benchsdk._Server.send

    def _send_then_exit(self, header, arrays=None):
        _send(self, header, arrays)
        if "info" in header:
            os._exit(0)

    benchsdk._Server.send = _send_then_exit


class Misbehave(Method):
    name, version = BEHAVIOUR, "0"
    outputs = ("global", "dense")
    patch_size, embed_dim = 16, int(VARIANT[3:]) if VARIANT.startswith("dim") else 4
    fit_stage = BEHAVIOUR == "fitter"

    def setup(self, seed, task):
        if BEHAVIOUR == "gated" and (gate := os.environ.get("GATE_FILE")):
            with open(f"{gate}.started", "a") as f:
                f.write(f"{os.getpid()} {os.getppid()}\n")
            while os.path.exists(gate):
                time.sleep(0.05)
        if BEHAVIOUR == "hoarder":
            np.ones(int(os.environ.get("HOARD_MIB", "256")) << 20, np.uint8).sum()
        self.mean, self.label_sum, self.batches = np.zeros(3, np.float32), -1.0, 0
        if BEHAVIOUR == "weighted" and "BENCH_WEIGHTS" in os.environ:
            self.label_sum = float(Path(os.environ["BENCH_WEIGHTS"]).read_bytes()[0])

    def fit(self, batches):
        total, count = np.zeros(3, np.float64), 0
        for images, labels, _ in batches:
            self.batches += 1
            if os.environ.get("FITTER_FAIL_AT") == str(self.batches):
                raise RuntimeError(f"fit failed at batch {self.batches}")
            total += images.reshape(-1, 3).sum(0)
            count += images.shape[0] * images.shape[1] * images.shape[2]
            if labels is not None:
                self.label_sum = max(self.label_sum, 0) + float(labels.sum())
            if os.environ.get("FITTER_STOP_AFTER") == str(self.batches):
                break  # had enough: the harness stops sending
        self.mean = (total / max(count, 1)).astype(np.float32)

    def embed(self, images):
        n = len(images)
        if BEHAVIOUR == "crasher":
            os._exit(3)
        if BEHAVIOUR == "hanger":
            time.sleep(3600)
        if BEHAVIOUR == "raiser":
            raise ValueError("boom from the method")
        if BEHAVIOUR == "loud":
            os.write(STDOUT, b"stray stdout\n" * 200_000)
        if BEHAVIOUR == "chatty":
            print("hello on stdout", flush=True)
            os.write(1, b"raw bytes on fd 1\n")
        out = np.tile(np.r_[self.mean, self.label_sum, self.batches][None, :4], (n, 1)).astype(np.float32)
        out[:, :3] += images.reshape(n, -1, 3).mean(1)
        out = np.pad(out, ((0, 0), (0, self.embed_dim - 4)))
        if BEHAVIOUR == "nan_out":
            out[0, 0] = np.nan
        if BEHAVIOUR == "wrong_count":
            out = out[:-1]
        return out

    def embed_dense(self, images):
        n, h, w, _ = images.shape
        return np.repeat(self.embed(images)[:, None, None, :], h // 16 * (w // 16), 1).reshape(
            -1 if BEHAVIOUR != "wrong_count" else n - 1, h // 16, w // 16, self.embed_dim
        )


def main(method: Misbehave) -> None:
    print("adapter starting (stderr is the method's log)", file=sys.stderr)
    if BEHAVIOUR == "dies_at_start":
        sys.exit("cannot load weights: /weights/model.pt not found")
    serve(method)
