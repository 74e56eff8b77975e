"""Shared by the hostile test images: an honest little method that each image subverts in one way.

Copied into every image beside its adapter. STDOUT is a duplicate of the real stdout taken before `serve`
hides it, the stream of the handshake; `protocol_fd()` is the stream the SDK sends frames on right now (the
contract socket after the handshake), so an adapter can write raw bytes into it the way a malicious one would.
"""

import os

import numpy as np

import benchsdk
from benchsdk import Method, serve  # noqa: F401  (re-exported for the adapters)

STDOUT = os.dup(1)


class _Server(benchsdk._Server):
    current = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _Server.current = self


benchsdk._Server = _Server


def protocol_fd() -> int:
    _Server.current.wfile.flush()
    return _Server.current.wfile.fileno()


class Honest(Method):
    name, version = "hostile", "0"
    outputs = ("global", "dense")
    patch_size, embed_dim = 16, 4

    def embed(self, images):
        """Mean RGB and brightness spread per image: (N, 4) float32."""
        x = images.reshape(len(images), -1, 3).astype(np.float32) / 255
        return np.concatenate([x.mean(1), x.std(1).mean(1, keepdims=True)], axis=1)

    def embed_dense(self, images):
        n, h, w, _ = images.shape
        return np.repeat(self.embed(images)[:, None, None, :], (h // 16) * (w // 16), 1).reshape(n, h // 16, w // 16, 4)
