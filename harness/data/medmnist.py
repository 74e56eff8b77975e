"""The ten 2D multi-class MedMNIST+ datasets at 224 px, read straight from <root>/<flag>_224.npz (docs/protocols.md §4).

The `medmnist` package is not used at run time: its dataset class asserts the official sample counts, which small
fixtures do not have. numpy's np.load ignores mmap_mode for .npz members (it reads them whole), so the image arrays
are memory-mapped here from their offsets inside the zip. That works for members stored uncompressed (np.savez);
a member of a compressed archive (np.savez_compressed) cannot be mapped and is instead decompressed whole into
memory on the first image access, in each process that reads the split.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from harness.data import synthetic
from harness.data.base import ClassificationSplit, DatasetReader
from harness.data.files import NpyMember, load_member, npz_members
from harness.errors import DataError

SIZE = 224
SPLITS = ("train", "val", "test")
# flag -> (image channels, classes, official split sizes), from medmnist 3.0.2's INFO dict
# (INFO[flag]["n_channels"], len(INFO[flag]["label"]), INFO[flag]["n_samples"])
FLAGS = {
    "pathmnist": (3, 9, {"train": 89996, "val": 10004, "test": 7180}),
    "dermamnist": (3, 7, {"train": 7007, "val": 1003, "test": 2005}),
    "octmnist": (1, 4, {"train": 97477, "val": 10832, "test": 1000}),
    "pneumoniamnist": (1, 2, {"train": 4708, "val": 524, "test": 624}),
    "breastmnist": (1, 2, {"train": 546, "val": 78, "test": 156}),
    "bloodmnist": (3, 8, {"train": 11959, "val": 1712, "test": 3421}),
    "tissuemnist": (1, 8, {"train": 165466, "val": 23640, "test": 47280}),
    "organamnist": (1, 11, {"train": 34561, "val": 6491, "test": 17778}),
    "organcmnist": (1, 11, {"train": 12975, "val": 2392, "test": 8216}),
    "organsmnist": (1, 11, {"train": 13932, "val": 2452, "test": 8827}),
}
SCALES = {"tiny": (8,), "small": (32,)}  # scale -> images per class in each split


class MedMNISTSplit(ClassificationSplit):
    """One split's images, opened in each process on first access (a pickled split carries no pixels).
    Grey images are returned as RGB by repeating the channel."""

    def __init__(self, name: str, path: Path, member: NpyMember, labels: np.ndarray, num_classes: int):
        self.name, self.path, self.member = name, path, member
        self.labels, self.num_classes = labels, num_classes
        self.ids = [f"{name}_{i}" for i in range(len(labels))]
        self._images: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def image_path(self, i: int) -> Path:
        return self.path

    def image(self, i: int) -> np.ndarray:
        if self._images is None:
            self._images = load_member(self.path, self.member)
        pixels = np.array(self._images[i])
        return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels


class MedMNIST(DatasetReader):
    """One 2D MedMNIST+ flag at 224 px. A subclass names its `flag`; everything else follows from FLAGS
    (MEDMNIST_READERS below makes one per row)."""

    subdir = "medmnist"
    split_names = SPLITS
    flag: ClassVar[str]
    channels: ClassVar[int]
    num_classes: ClassVar[int]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.channels, cls.num_classes, cls.official_counts = FLAGS[cls.flag]
        cls.name = f"medmnist_{cls.flag.removesuffix('mnist')}"
        cls.how_to_get = (
            f"download {cls.flag}_{SIZE}.npz from zenodo.org/records/10519652 (MedMNIST+) into <data root>/medmnist"
        )

    @property
    def path(self) -> Path:
        return self.root / f"{self.flag}_{SIZE}.npz"

    def check_layout(self) -> None:
        if not self.path.is_file():
            raise DataError(f"file missing; {self.how_to_get}", where=self.path)
        self.members = npz_members(self.path)
        image_shape = (SIZE, SIZE) if self.channels == 1 else (SIZE, SIZE, self.channels)
        for split in SPLITS:
            images, labels = (self._require(f"{split}_{kind}") for kind in ("images", "labels"))
            if images.dtype != np.uint8 or images.shape[1:] != image_shape or images.shape[0] == 0:
                raise DataError(
                    f"key '{images.key}' is {images.dtype} {images.shape}; {self.flag} images are uint8 "
                    f"(N, {', '.join(map(str, image_shape))}) with N > 0",
                    where=self.path,
                )
            if labels.dtype.kind not in "iu" or labels.shape != (images.shape[0], 1):
                raise DataError(
                    f"key '{labels.key}' is {labels.dtype} {labels.shape}; expected integer labels "
                    f"({images.shape[0]}, 1), one per image of '{images.key}'",
                    where=self.path,
                )

    def _require(self, key: str) -> NpyMember:
        if key not in self.members:
            raise DataError(f"key '{key}' missing (found: {', '.join(self.members) or 'none'})", where=self.path)
        return self.members[key]

    def split(self, name: str) -> MedMNISTSplit:
        if name not in SPLITS:
            raise DataError(f"unknown split '{name}'; MedMNIST splits are {', '.join(SPLITS)}", where=self.root)
        labels = np.asarray(load_member(self.path, self.members[f"{name}_labels"])).reshape(-1).astype(np.int64)
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            raise DataError(
                f"key '{name}_labels' holds {labels[bad][0]}; {self.flag} labels are 0..{self.num_classes - 1}",
                where=self.path,
            )
        return MedMNISTSplit(name, self.path, self.members[f"{name}_images"], labels, self.num_classes)

    @classmethod
    def synthesize(cls, root: Path, scale: str = "tiny", seed: int = 0) -> None:
        (per_class,) = synthetic.pick_scale(SCALES, scale)
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        arrays = {}
        for split in SPLITS:
            labels = rng.permutation(np.repeat(np.arange(cls.num_classes, dtype=np.uint8), per_class))
            images = [synthetic.object_image(rng, int(c), (SIZE, SIZE)) for c in labels]
            if cls.channels == 1:
                images = [np.asarray(Image.fromarray(image).convert("L")) for image in images]
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = np.stack(images), labels[:, None]
        synthetic.save_npz(root / f"{cls.flag}_{SIZE}.npz", arrays)
        synthetic.write_marker(root, cls.name, scale, seed)


# one reader per flag, named medmnist_<flag without "mnist">, in FLAGS' order
MEDMNIST_READERS: tuple[type[MedMNIST], ...] = tuple(
    type(f"MedMNIST[{flag}]", (MedMNIST,), {"flag": flag, "__module__": __name__}) for flag in FLAGS
)
