"""Oxford Flowers 102 in torchvision's layout: jpg/image_%05d.jpg, imagelabels.mat, setid.mat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import loadmat
from scipy.io.matlab import MatReadError

from harness.data import synthetic
from harness.data.base import DatasetReader
from harness.data.files import ImageFileSplit, check_files_exist
from harness.errors import DataError

SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}
# scale -> (classes, train, val, test images per class)
SCALES = {"tiny": (10, 10, 5, 5), "small": (20, 20, 10, 10)}


def load_mat_ints(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of a .mat file, flattened to int64; each must hold positive integers."""
    try:
        content = loadmat(path)
    except (OSError, EOFError, ValueError, TypeError, MatReadError) as err:
        raise DataError(f"cannot read .mat file ({type(err).__name__}: {err})", where=path) from None
    arrays = {}
    for key in keys:
        if key not in content:
            found = ", ".join(k for k in content if not k.startswith("__"))
            raise DataError(f"key '{key}' missing (found: {found or 'none'})", where=path)
        values = np.asarray(content[key]).ravel()
        if values.size == 0 or not np.issubdtype(values.dtype, np.number) or np.any(values < 1) or np.any(values % 1):
            raise DataError(f"key '{key}' must hold positive integers (1-based)", where=path)
        arrays[key] = values.astype(np.int64)
    return arrays


class Flowers102(DatasetReader):
    name = "flowers102"
    subdir = "flowers-102"
    how_to_get = (
        "download 102flowers.tgz, imagelabels.mat and setid.mat from www.robots.ox.ac.uk/~vgg/data/flowers/102 "
        "into <data root>/flowers-102 (torchvision's Flowers102 layout: jpg/, imagelabels.mat, setid.mat)"
    )
    split_names = tuple(SPLIT_KEYS)
    official_counts = {"train": 1020, "val": 1020, "test": 6149}

    def check_layout(self) -> None:
        for needed in (self.root / "jpg", self.root / "imagelabels.mat", self.root / "setid.mat"):
            if not needed.exists():
                raise DataError(f"missing from the Flowers102 layout; {self.how_to_get}", where=needed)
        labels = load_mat_ints(self.root / "imagelabels.mat", ("labels",))["labels"]
        self.labels = labels - 1
        self.num_classes = int(labels.max())
        self.set_ids = load_mat_ints(self.root / "setid.mat", tuple(SPLIT_KEYS.values()))
        for key, numbers in self.set_ids.items():
            if numbers.max() > len(labels):
                raise DataError(
                    f"key '{key}' lists image {numbers.max()} but imagelabels.mat has {len(labels)} labels",
                    where=self.root / "setid.mat",
                )

    def split(self, name: str) -> ImageFileSplit:
        if name not in SPLIT_KEYS:
            raise DataError(f"unknown split '{name}'; Flowers102 splits are {', '.join(SPLIT_KEYS)}", where=self.root)
        numbers = self.set_ids[SPLIT_KEYS[name]]
        ids = [f"image_{n:05d}" for n in numbers]
        files = [f"{x}.jpg" for x in ids]
        check_files_exist(self.root / "jpg", files, listed_in=self.root / "setid.mat")
        return ImageFileSplit(name, self.root / "jpg", files, self.labels[numbers - 1], self.num_classes, ids=ids)

    @classmethod
    def synthesize(cls, root: Path, scale: str = "tiny", seed: int = 0) -> None:
        num_classes, *per_class = synthetic.pick_scale(SCALES, scale)
        root = Path(root)
        (root / "jpg").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        counts = dict(zip(SPLIT_KEYS.values(), per_class))
        entries = [(c, key) for c in range(num_classes) for key, n in counts.items() for _ in range(n)]
        entries = [entries[k] for k in rng.permutation(len(entries))]  # classes interleaved, as in the real set
        for number, (c, _) in enumerate(entries, start=1):
            synthetic.save_jpeg(synthetic.object_image(rng, c), root / "jpg" / f"image_{number:05d}.jpg")
        labels = np.array([[c + 1 for c, _ in entries]], np.uint8)
        synthetic.save_mat(root / "imagelabels.mat", {"labels": labels})
        set_ids = {
            key: np.array([[n for n, (_, k) in enumerate(entries, start=1) if k == key]], np.uint16)
            for key in SPLIT_KEYS.values()
        }
        synthetic.save_mat(root / "setid.mat", set_ids)
        synthetic.write_marker(root, cls.name, scale, seed)
