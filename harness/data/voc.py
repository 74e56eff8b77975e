"""PASCAL VOC 2012 semantic segmentation: the devkit layout or the HummingBird evaluator's layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from harness.data import synthetic
from harness.data.base import DatasetReader, SegmentationSplit
from harness.data.files import check_same_size, read_label_png, read_rgb
from harness.errors import DataError

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_INDEX = 255
# layout name -> (image folder, split-list folder); both keep masks in SegmentationClass[Aug]/
LAYOUTS = {"devkit": ("JPEGImages", "ImageSets/Segmentation"), "hummingbird": ("images", "sets")}
MASK_DIRS = {"train": "SegmentationClass", "val": "SegmentationClass", "trainaug": "SegmentationClassAug"}
# scale -> (trainaug ids, of which the first are train ids, val ids)
SCALES = {"tiny": (60, 40, 20), "small": (600, 400, 200)}


def voc_palette() -> list[int]:
    """The official VOC colour map (bit-interleaved class index), flat [r0, g0, b0, r1, ...] for 256 entries."""
    palette = []
    for index in range(256):
        rgb, c = [0, 0, 0], index
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << bit
            c >>= 3
        palette += rgb
    return palette


def read_mask(path: Path) -> np.ndarray:
    """Class indices of a palette ('P') or grayscale ('L') PNG, uint8 (H, W)."""
    return read_label_png(path, ("P", "L"), NUM_CLASSES, also_allowed=(IGNORE_INDEX,))


class VOCSplit(SegmentationSplit):
    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX

    def __init__(self, name: str, ids: list[str], image_dir: Path, mask_dir: Path):
        self.name, self.ids = name, ids
        self.image_dir, self.mask_dir = image_dir, mask_dir

    def image_path(self, i: int) -> Path:
        return self.image_dir / f"{self.ids[i]}.jpg"

    def mask_path(self, i: int) -> Path:
        return self.mask_dir / f"{self.ids[i]}.png"

    def image(self, i: int) -> np.ndarray:
        return read_rgb(self.image_path(i))

    def mask(self, i: int) -> np.ndarray:
        return check_same_size(read_mask(self.mask_path(i)), self.mask_path(i), self.image_path(i))


class VOCSegmentation(DatasetReader):
    name = "voc"
    subdir = "VOCdevkit/VOC2012"
    how_to_get = (
        "extract VOCtrainval_11-May-2012.tar (host.robots.ox.ac.uk/pascal/VOC/voc2012) and the SBD-augmented "
        "SegmentationClassAug/ with ImageSets/Segmentation/trainaug.txt into <data root>/VOCdevkit/VOC2012 "
        "(the HummingBird zip's images/ sets/ layout is accepted too)"
    )
    split_names = ("train", "val", "trainaug")
    official_counts = {"train": 1464, "val": 1449, "trainaug": 10582}

    def check_layout(self) -> None:
        present = [name for name, (images, _) in LAYOUTS.items() if (self.root / images).is_dir()]
        if not present:
            raise DataError(
                "not a VOC 2012 folder: expected JPEGImages/ + ImageSets/Segmentation/ (devkit) "
                "or images/ + sets/ (HummingBird layout)",
                where=self.root,
            )
        self.layout = present[0]
        images, sets = LAYOUTS[self.layout]
        self.image_dir, self.sets_dir = self.root / images, self.root / sets
        for needed in (self.sets_dir, self.root / MASK_DIRS["val"]):
            if not needed.is_dir():
                raise DataError(f"folder missing ({self.layout} layout)", where=needed)
        if not (self.sets_dir / "val.txt").is_file():
            raise DataError("split list missing", where=self.sets_dir / "val.txt")

    def split(self, name: str) -> VOCSplit:
        if name not in MASK_DIRS:
            raise DataError(f"unknown split '{name}'; VOC splits are {', '.join(MASK_DIRS)}", where=self.root)
        list_file = self.sets_dir / f"{name}.txt"
        mask_dir = self.root / MASK_DIRS[name]
        for needed in (list_file, mask_dir):
            if not needed.exists():
                raise DataError(f"needed by split '{name}' but missing; {self.how_to_get}", where=needed)
        ids = list_file.read_text().split()
        if not ids:
            raise DataError("split list is empty", where=list_file)
        split = VOCSplit(name, ids, self.image_dir, mask_dir)
        for path_of in (split.image_path, split.mask_path):
            missing = [path_of(i) for i in range(len(ids)) if not os.path.isfile(path_of(i))]
            if missing:
                raise DataError(
                    f"{len(missing)} id(s) listed in {list_file} have no file, first {missing[0].name}",
                    where=missing[0],
                )
        return split

    @classmethod
    def synthesize(cls, root: Path, scale: str = "tiny", seed: int = 0) -> None:
        n_trainaug, n_train, n_val = synthetic.pick_scale(SCALES, scale)
        root = Path(root)
        rng = np.random.default_rng(seed)
        ids = _image_ids(rng, n_trainaug + n_val)
        chosen = set(rng.choice(len(ids), n_val, replace=False).tolist())
        val = [x for k, x in enumerate(ids) if k in chosen]
        trainaug = [x for k, x in enumerate(ids) if k not in chosen]
        splits = {"train": trainaug[:n_train], "val": val, "trainaug": trainaug}
        for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        palette = voc_palette()
        for split_ids in (trainaug, val):
            for k, image_id in enumerate(split_ids):
                image, labels = _scene(rng, main_class=1 + k % (NUM_CLASSES - 1))
                synthetic.save_jpeg(image, root / "JPEGImages" / f"{image_id}.jpg")
                if split_ids is trainaug:
                    Image.fromarray(labels).save(root / "SegmentationClassAug" / f"{image_id}.png")
                if k < n_train or split_ids is val:
                    boundary = Image.fromarray(_with_boundary(labels))
                    boundary.putpalette(palette)
                    boundary.save(root / "SegmentationClass" / f"{image_id}.png")
        for name, split_ids in splits.items():
            (root / "ImageSets/Segmentation" / f"{name}.txt").write_text("".join(f"{x}\n" for x in split_ids))
        synthetic.write_marker(root, cls.name, scale, seed)


def _image_ids(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct sorted ids in VOC's '2007_000032' style."""
    years = rng.integers(2007, 2013, size=4 * n)
    numbers = rng.integers(0, 9000, size=4 * n)
    ids = sorted({f"{y}_{x:06d}" for y, x in zip(years, numbers)})
    return sorted(rng.choice(ids, n, replace=False).tolist())


def _scene(rng: np.random.Generator, main_class: int) -> tuple[np.ndarray, np.ndarray]:
    """A VOC-sized image with 1-3 objects (main_class painted last, so on top) and its label map."""
    width, height = int(rng.integers(200, 321)), int(rng.integers(160, 281))
    canvas = synthetic.background(rng, height, width)
    labels = np.zeros((height, width), np.uint8)
    classes = [*rng.integers(1, NUM_CLASSES, size=rng.integers(0, 3)).tolist(), main_class]
    for c in classes:
        r = rng.uniform(0.16, 0.3) * min(height, width)
        cx, cy = rng.uniform(0.6 * r, width - 0.6 * r), rng.uniform(0.6 * r, height - 0.6 * r)
        labels[synthetic.paint_object(rng, canvas, c, cx, cy, r)] = c
    return synthetic.to_uint8(canvas), labels


def _with_boundary(labels: np.ndarray, width: int = 5) -> np.ndarray:
    """VOC-style: pixels within width//2 of a class boundary become IGNORE_INDEX."""
    img = Image.fromarray(labels)
    edge = np.asarray(img.filter(ImageFilter.MaxFilter(width))) != np.asarray(img.filter(ImageFilter.MinFilter(width)))
    return np.where(edge, IGNORE_INDEX, labels).astype(np.uint8)
