"""pixels: raw-pixel features, the floor every learned representation must beat.

global: the image average-pooled to a 4x4 RGB thumbnail (48 values), centred at 0.
dense:  each 16x16 patch average-pooled to 4x4 RGB (48 values per patch).
"""

import numpy as np

from benchsdk import Method, serve

PATCH, POOL = 16, 4


def _pool(images: np.ndarray, cells: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, cells, cells, 3, ...) block means; H, W must divide into cells."""
    n, h, w, c = images.shape
    x = images.astype(np.float32) / 127.5 - 1.0
    return x.reshape(n, cells, h // cells, cells, w // cells, c).mean(axis=(2, 4))


class Pixels(Method):
    name, version = "pixels", "1.0"
    outputs = ("global", "dense")
    patch_size, embed_dim = PATCH, POOL * POOL * 3

    def embed(self, images):
        n, h, w, _ = images.shape
        crop = images[:, : h - h % POOL, : w - w % POOL]
        return _pool(crop, POOL).reshape(n, -1)

    def embed_dense(self, images):
        n, h, w, _ = images.shape
        gh, gw = h // PATCH, w // PATCH
        x = images[:, : gh * PATCH, : gw * PATCH].astype(np.float32) / 127.5 - 1.0
        x = x.reshape(n, gh, POOL, PATCH // POOL, gw, POOL, PATCH // POOL, 3).mean(axis=(3, 6))
        return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, gh, gw, -1)


if __name__ == "__main__":
    serve(Pixels())
