"""Shared by the hostile test images: an honest little method that each image subverts in one way.

Copied into every image beside its adapter. PROTOCOL is a duplicate of the real stdout taken before `serve`
hides it, so an adapter can write raw bytes into the protocol stream the way a malicious one would.
"""

import os

import numpy as np

from benchsdk import Method, serve  # noqa: F401  (re-exported for the adapters)

PROTOCOL = os.dup(1)


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
