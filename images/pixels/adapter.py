"""pixels: raw-pixel features, the floor every learned representation must beat.

global: the image average-pooled to a 4x4 RGB thumbnail (48 values), centred at 0.
dense:  each 16x16 patch average-pooled to 4x4 RGB (48 values per patch).
masks:  k-means (scikit-learn, seeded in setup) of each image's pixels on (RGB in [0, 1], POSITION_WEIGHT * x/y
        in [0, 1]) into 11 segments, as one-hot masks; reconstruction = each segment's mean colour.
"""

import numpy as np

from benchsdk import Method, serve

PATCH, POOL = 16, 4
SEGMENTS, POSITION_WEIGHT = 11, 0.5


def _pool(images: np.ndarray, cells: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, cells, cells, 3, ...) block means; H, W must divide into cells."""
    n, h, w, c = images.shape
    x = images.astype(np.float32) / 127.5 - 1.0
    return x.reshape(n, cells, h // cells, cells, w // cells, c).mean(axis=(2, 4))


def segments_to_outputs(labels: np.ndarray, image: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids (H, W) -> one-hot masks (k, H, W) and the mean-colour reconstruction (3, H, W) in [0, 1]."""
    flat = labels.ravel()
    counts = np.maximum(np.bincount(flat, minlength=k), 1)
    colours = np.stack([np.bincount(flat, image[..., c].ravel() / 255, k) / counts for c in range(3)])
    masks = (labels[None] == np.arange(k)[:, None, None]).astype(np.float32)
    return masks, colours[:, labels].astype(np.float32)


class Pixels(Method):
    name, version = "pixels", "1.1"
    outputs = ("global", "dense", "masks")
    patch_size, embed_dim = PATCH, POOL * POOL * 3

    def setup(self, seed, task):
        self.seed = seed

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

    def segment(self, images):
        from sklearn.cluster import KMeans  # only this output needs scikit-learn

        n, h, w, _ = images.shape
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w, 1)
        position = POSITION_WEIGHT * np.stack([yy.ravel(), xx.ravel()], 1)
        outputs = []
        for image in images:
            features = np.concatenate([image.reshape(-1, 3) / 255, position], 1).astype(np.float32)
            labels = KMeans(SEGMENTS, n_init=1, random_state=self.seed).fit_predict(features)
            outputs.append(segments_to_outputs(labels.reshape(h, w), image, SEGMENTS))
        masks, recon = zip(*outputs)
        return np.stack(masks), np.stack(recon)


if __name__ == "__main__":
    serve(Pixels())
