"""ADE20K scene parsing (ADEChallengeData2016): images/{training,validation}/*.jpg + annotations/.../*.png."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data import synthetic
from harness.data.base import DatasetReader, SegmentationSplit
from harness.data.files import check_same_size, read_label_png, read_rgb
from harness.errors import DataError

# objectInfo150 order; label k is CLASS_NAMES[k], 0 = "other" (pixels of none of the 150 classes)
CLASS_NAMES = (
    "other", "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car",
    "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)  # 151
IGNORE_INDEX = 0
FILE_PREFIX = {"training": "ADE_train", "validation": "ADE_val"}
SCALES = {"tiny": (60, 20), "small": (400, 100)}  # scale -> (training, validation) images; tiny keeps
# HummingBird's memory of 102,400 possible: K = 102400 // (60 * 2) = 853 <= 1024 patches per image
# the procedural scenes: a top, a middle and a ground band of "stuff", then a few objects
TOP_CLASSES = (3, 6)  # sky, ceiling
MIDDLE_CLASSES = (1, 2, 5, 17)  # wall, building, tree, mountain
GROUND_CLASSES = (4, 7, 10, 12, 22)  # floor, road, grass, sidewalk, water
OBJECT_CLASSES = (8, 9, 11, 13, 15, 16, 18, 20, 21, 23)  # bed, windowpane, cabinet, person, door, table, ...
DRAWN_CLASSES = TOP_CLASSES + MIDDLE_CLASSES + GROUND_CLASSES + OBJECT_CLASSES
OTHER_STYLE = 31  # appearance of unlabelled ("other") objects: a style no drawn class has


def read_annotation(path: Path) -> np.ndarray:
    """An 8-bit grayscale ('L') PNG of labels 0..150, uint8 (H, W)."""
    return read_label_png(path, ("L",), NUM_CLASSES, what="annotation")


class ADE20KSplit(SegmentationSplit):
    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX

    def __init__(self, name: str, ids: list[str], image_dir: Path, annotation_dir: Path):
        self.name, self.ids = name, ids
        self.image_dir, self.annotation_dir = image_dir, annotation_dir

    def image_path(self, i: int) -> Path:
        return self.image_dir / f"{self.ids[i]}.jpg"

    def mask_path(self, i: int) -> Path:
        return self.annotation_dir / f"{self.ids[i]}.png"

    def image(self, i: int) -> np.ndarray:
        return read_rgb(self.image_path(i))

    def mask(self, i: int) -> np.ndarray:
        return check_same_size(
            read_annotation(self.mask_path(i)), self.mask_path(i), self.image_path(i), what="annotation"
        )


class ADE20K(DatasetReader):
    name = "ade20k"
    subdir = "ADEChallengeData2016"
    how_to_get = (
        "download ADEChallengeData2016.zip (data.csail.mit.edu/places/ADEchallenge, the MIT scene-parsing "
        "benchmark) and extract it into <data root> (ADEChallengeData2016/images/, annotations/)"
    )
    split_names = tuple(FILE_PREFIX)
    official_counts = {"training": 20210, "validation": 2000}

    def check_layout(self) -> None:
        for needed in (self.root / "images", self.root / "annotations"):
            if not needed.is_dir():
                raise DataError(f"folder missing from the ADEChallengeData2016 layout; {self.how_to_get}", where=needed)

    def split(self, name: str) -> ADE20KSplit:
        if name not in FILE_PREFIX:
            raise DataError(f"unknown split '{name}'; ADE20K splits are {', '.join(FILE_PREFIX)}", where=self.root)
        image_dir, annotation_dir = self.root / "images" / name, self.root / "annotations" / name
        stems = {}
        for folder, suffix in ((image_dir, ".jpg"), (annotation_dir, ".png")):
            if not folder.is_dir():
                raise DataError(f"needed by split '{name}' but missing; {self.how_to_get}", where=folder)
            stems[suffix] = {f[: -len(suffix)] for f in os.listdir(folder) if f.endswith(suffix)}
        if not stems[".jpg"]:
            raise DataError(f"split '{name}' has no .jpg images", where=image_dir)
        for suffix, folder, partner in ((".jpg", annotation_dir, ".png"), (".png", image_dir, ".jpg")):
            orphans = sorted(stems[suffix] - stems[partner])
            if orphans:
                raise DataError(
                    f"{len(orphans)} {suffix} file(s) of split '{name}' have no {partner} partner, "
                    f"first {orphans[0]}{suffix}",
                    where=folder / f"{orphans[0]}{partner}",
                )
        return ADE20KSplit(name, sorted(stems[".jpg"]), image_dir, annotation_dir)

    @classmethod
    def synthesize(cls, root: Path, scale: str = "tiny", seed: int = 0) -> None:
        counts = synthetic.pick_scale(SCALES, scale)
        root = Path(root)
        rng = np.random.default_rng(seed)
        for (split, prefix), n in zip(FILE_PREFIX.items(), counts):
            image_dir, annotation_dir = root / "images" / split, root / "annotations" / split
            image_dir.mkdir(parents=True, exist_ok=True)
            annotation_dir.mkdir(parents=True, exist_ok=True)
            for number in range(1, n + 1):
                image, labels = _scene(rng)
                synthetic.save_jpeg(image, image_dir / f"{prefix}_{number:08d}.jpg")
                Image.fromarray(labels).save(annotation_dir / f"{prefix}_{number:08d}.png")
        synthetic.write_marker(root, cls.name, scale, seed)


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A scene of three wavy bands of stuff (each left "other" with p=0.2), 1-3 objects and maybe an "other" object."""
    width, height = int(rng.integers(192, 321)), int(rng.integers(144, 257))
    canvas = synthetic.background(rng, height, width)
    labels = np.zeros((height, width), np.uint8)
    rows = np.arange(height)[:, None]
    top_edge, ground_edge = (_wavy_line(rng, width, height * rng.uniform(*span)) for span in ((0.2, 0.45), (0.6, 0.85)))
    bands = (rows < top_edge, (rows >= top_edge) & (rows < ground_edge), rows >= ground_edge)
    for band, classes in zip(bands, (TOP_CLASSES, MIDDLE_CLASSES, GROUND_CLASSES)):
        if rng.random() < 0.2 or not band.any():
            continue
        c = int(classes[rng.integers(len(classes))])
        ys = np.nonzero(band)[0]
        synthetic.paint_region(rng, canvas, c, band, width / 2, float(ys.mean()), 0.4 * max(height, width))
        labels[band] = c
    objects = [int(c) for c in rng.choice(OBJECT_CLASSES, size=rng.integers(1, 4))]
    if rng.random() < 0.3:
        objects.insert(int(rng.integers(len(objects) + 1)), OTHER_STYLE)
    for c in objects:
        r = rng.uniform(0.1, 0.25) * min(height, width)
        cx, cy = rng.uniform(0.6 * r, width - 0.6 * r), rng.uniform(0.6 * r, height - 0.6 * r)
        labels[synthetic.paint_object(rng, canvas, c, cx, cy, r)] = 0 if c == OTHER_STYLE else c
    return synthetic.to_uint8(canvas), labels


def _wavy_line(rng: np.random.Generator, width: int, mean_row: float) -> np.ndarray:
    """Row of a gently waving boundary at each column, shape (1, width)."""
    amplitude, period, phase = rng.uniform(2, 12), rng.uniform(0.5, 1.5) * width, rng.uniform(0, 2 * np.pi)
    return (mean_row + amplitude * np.sin(2 * np.pi * np.arange(width) / period + phase))[None, :]
