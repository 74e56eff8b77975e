"""In-memory fixtures whose images encode their labels in colour, shared by the protocol tests: flat-colour
classification images, segmentation images painted from their masks, and the oracle that reads a patch's class
back from its centre colour."""

from __future__ import annotations

import numpy as np

from harness.data.base import ClassificationSplit, SegmentationSplit

PATCH, C = 16, 4
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


class PaletteSplit(SegmentationSplit):
    """Masks in memory; each image is its mask painted with PALETTE (ignored pixels black) unless given."""

    ignore_index = 255

    def __init__(self, name, masks, num_classes=C, images=None):
        self.name, self.ids, self.masks, self.num_classes = (
            name,
            [str(i) for i in range(len(masks))],
            masks,
            num_classes,
        )
        self.images = images

    def image(self, i):
        if self.images is not None:
            return self.images[i]
        return PALETTE[np.where(self.masks[i] == 255, 0, self.masks[i])]

    def mask(self, i):
        return self.masks[i]


def palette_features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> one-hot (N, H/PATCH, W/PATCH, C) of the palette colour nearest each patch's centre."""
    centre = images[:, PATCH // 2 :: PATCH, PATCH // 2 :: PATCH].astype(int)
    return np.eye(C, dtype=np.float32)[((centre[..., None, :] - PALETTE.astype(int)) ** 2).sum(-1).argmin(-1)]


class ColourClassSplit(ClassificationSplit):
    """Image i is a flat colour that encodes its class (one of 3 channels bright); sides vary up to `max_side`."""

    num_classes = 3

    def __init__(self, name, n, seed, max_side=90):
        rng = np.random.default_rng(seed)
        self.name, self.ids = name, [f"{name}_{i}" for i in range(n)]
        self.labels = rng.integers(0, 3, n)
        self.shapes = [(int(rng.integers(40, max_side)), int(rng.integers(40, max_side))) for _ in range(n)]

    def image(self, i):
        colour = np.full(3, 30, dtype=np.uint8)
        colour[self.labels[i]] = 220
        return np.broadcast_to(colour, (*self.shapes[i], 3)).copy()
