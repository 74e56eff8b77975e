"""COCO 2017 instances: annotations/instances_{split}.json + {split}/<12-digit id>.jpg, as semantic masks."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from harness.data import synthetic
from harness.data.base import DatasetReader, SegmentationSplit
from harness.data.files import image_size, read_rgb
from harness.errors import DataError

SPLITS = ("train2017", "val2017")
NUM_CLASSES = 91  # category ids 1..90 (ten ids unused), 0 = background
IGNORE_INDEX = 255  # never produced: every pixel is background or an object
# the 80 instance categories: id -> (name, supercategory)
CATEGORIES = {
    1: ("person", "person"), 2: ("bicycle", "vehicle"), 3: ("car", "vehicle"), 4: ("motorcycle", "vehicle"),
    5: ("airplane", "vehicle"), 6: ("bus", "vehicle"), 7: ("train", "vehicle"), 8: ("truck", "vehicle"),
    9: ("boat", "vehicle"), 10: ("traffic light", "outdoor"), 11: ("fire hydrant", "outdoor"),
    13: ("stop sign", "outdoor"), 14: ("parking meter", "outdoor"), 15: ("bench", "outdoor"),
    16: ("bird", "animal"), 17: ("cat", "animal"), 18: ("dog", "animal"), 19: ("horse", "animal"),
    20: ("sheep", "animal"), 21: ("cow", "animal"), 22: ("elephant", "animal"), 23: ("bear", "animal"),
    24: ("zebra", "animal"), 25: ("giraffe", "animal"), 27: ("backpack", "accessory"), 28: ("umbrella", "accessory"),
    31: ("handbag", "accessory"), 32: ("tie", "accessory"), 33: ("suitcase", "accessory"), 34: ("frisbee", "sports"),
    35: ("skis", "sports"), 36: ("snowboard", "sports"), 37: ("sports ball", "sports"), 38: ("kite", "sports"),
    39: ("baseball bat", "sports"), 40: ("baseball glove", "sports"), 41: ("skateboard", "sports"),
    42: ("surfboard", "sports"), 43: ("tennis racket", "sports"), 44: ("bottle", "kitchen"),
    46: ("wine glass", "kitchen"), 47: ("cup", "kitchen"), 48: ("fork", "kitchen"), 49: ("knife", "kitchen"),
    50: ("spoon", "kitchen"), 51: ("bowl", "kitchen"), 52: ("banana", "food"), 53: ("apple", "food"),
    54: ("sandwich", "food"), 55: ("orange", "food"), 56: ("broccoli", "food"), 57: ("carrot", "food"),
    58: ("hot dog", "food"), 59: ("pizza", "food"), 60: ("donut", "food"), 61: ("cake", "food"),
    62: ("chair", "furniture"), 63: ("couch", "furniture"), 64: ("potted plant", "furniture"),
    65: ("bed", "furniture"), 67: ("dining table", "furniture"), 70: ("toilet", "furniture"),
    72: ("tv", "electronic"), 73: ("laptop", "electronic"), 74: ("mouse", "electronic"),
    75: ("remote", "electronic"), 76: ("keyboard", "electronic"), 77: ("cell phone", "electronic"),
    78: ("microwave", "appliance"), 79: ("oven", "appliance"), 80: ("toaster", "appliance"),
    81: ("sink", "appliance"), 82: ("refrigerator", "appliance"), 84: ("book", "indoor"), 85: ("clock", "indoor"),
    86: ("vase", "indoor"), 87: ("scissors", "indoor"), 88: ("teddy bear", "indoor"), 89: ("hair drier", "indoor"),
    90: ("toothbrush", "indoor"),
}  # fmt: skip
SCALES = {"tiny": (40, 20), "small": (400, 100)}  # scale -> (train2017, val2017) images
# categories the procedural images draw: distinct (shape, texture) styles, the highest id included
DRAWN_CATEGORIES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 90)
CROWD_RATE = 0.1  # share of procedural annotations that are crowds (iscrowd=1, uncompressed RLE)
# section -> the fields each entry needs, with their JSON types
REQUIRED_FIELDS = {
    "images": {"id": int, "file_name": str, "width": int, "height": int},
    "categories": {"id": int, "name": str},
    "annotations": {"id": int, "image_id": int, "category_id": int, "segmentation": (list, dict)},
}
_SEGMENTATION_ERRORS = (TypeError, ValueError, KeyError, IndexError)


def load_instances(path: Path) -> COCO:
    """A checked instances json as a pycocotools COCO index; DataError naming the file and the bad entry."""
    try:
        dataset = json.loads(Path(path).read_bytes())
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}", where=path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read annotation file ({err})", where=path) from None
    if not isinstance(dataset, dict):
        raise DataError("expected a JSON object with images, annotations and categories", where=path)
    for section, fields in REQUIRED_FIELDS.items():
        entries = dataset.get(section)
        if not isinstance(entries, list):
            raise DataError(f"'{section}' list missing", where=path)
        for k, entry in enumerate(entries):
            if not isinstance(entry, dict) or not all(isinstance(entry.get(f), t) for f, t in fields.items()):
                raise DataError(f"{section}[{k}] needs the fields {', '.join(fields)} of the right types", where=path)
    image_ids = {image["id"] for image in dataset["images"]}
    category_ids = {category["id"] for category in dataset["categories"]}
    if len(image_ids) != len(dataset["images"]):
        raise DataError("'images' lists an image id twice", where=path)
    if not category_ids <= set(range(1, NUM_CLASSES)):
        raise DataError(f"category id {max(category_ids - set(range(1, NUM_CLASSES)))} outside 1..90", where=path)
    for ann in dataset["annotations"]:
        if ann["image_id"] not in image_ids:
            raise DataError(f"annotation {ann['id']} refers to unknown image id {ann['image_id']}", where=path)
        if ann["category_id"] not in category_ids:
            raise DataError(f"annotation {ann['id']} has unknown category id {ann['category_id']}", where=path)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


class COCOSplit(SegmentationSplit):
    """Images in id order; mask = docs/protocols.md §5: zeros, then every annotation (crowds too) in file order paints its
    category id, later ones over earlier ones."""

    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX

    def __init__(self, name: str, coco: COCO, image_dir: Path, annotation_file: Path):
        self.name, self.coco = name, coco
        self.image_dir, self.annotation_file = image_dir, annotation_file
        self.image_ids = sorted(coco.imgs)
        self.ids = [Path(coco.imgs[x]["file_name"]).stem for x in self.image_ids]

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.coco.imgs[self.image_ids[i]]["file_name"]

    def image(self, i: int) -> np.ndarray:
        return read_rgb(self.image_path(i))

    def mask(self, i: int) -> np.ndarray:
        info = self.coco.imgs[self.image_ids[i]]
        height, width = info["height"], info["width"]
        found = image_size(self.image_path(i))
        if found != (width, height):
            raise DataError(
                f"image is {found[0]}x{found[1]} but {self.annotation_file.name} says {width}x{height}",
                where=self.image_path(i),
            )
        mask = np.zeros((height, width), np.uint8)
        for ann in self.coco.imgToAnns[self.image_ids[i]]:
            mask[self._decode(ann, height, width)] = ann["category_id"]
        return mask

    def _decode(self, ann: dict, height: int, width: int) -> np.ndarray:
        """The annotation's boolean mask via pycocotools' annToMask (polygons, RLE and uncompressed RLE)."""
        try:
            problem = _rle_problem(ann["segmentation"], height, width)
            if problem is None:
                painted = self.coco.annToMask(ann)
                if painted.shape != (height, width):
                    problem = f"segmentation decodes to {painted.shape[1]}x{painted.shape[0]}, not {width}x{height}"
        except _SEGMENTATION_ERRORS as err:
            problem = f"cannot decode segmentation ({type(err).__name__}: {err})"
        if problem:
            raise DataError(f"annotation {ann['id']}: {problem}", where=self.annotation_file)
        return painted.astype(bool)


def _rle_problem(segmentation: list | dict, height: int, width: int) -> str | None:
    """Why an RLE segmentation does not fit the image (pycocotools would misdecode it), or None."""
    if not isinstance(segmentation, dict):
        return None
    if segmentation.get("size") != [height, width]:
        return f"RLE size {segmentation.get('size')} is not the image's [{height}, {width}]"
    counts = segmentation.get("counts")
    if isinstance(counts, list) and sum(counts) != height * width:
        return f"RLE runs add up to {sum(counts)} pixels, not {height * width}"
    return None


class COCOInstances(DatasetReader):
    name = "coco"
    subdir = "coco"
    how_to_get = (
        "download train2017.zip and val2017.zip (images.cocodataset.org/zips/) and annotations_trainval2017.zip "
        "(images.cocodataset.org/annotations/) and extract them into <data root>/coco "
        "(annotations/instances_*.json, train2017/, val2017/)"
    )
    split_names = SPLITS
    official_counts = {"train2017": 118287, "val2017": 5000}

    def __init__(self, root: Path):
        self._instances: dict[str, COCO] = {}  # split -> its loaded annotation file
        super().__init__(root)

    def check_layout(self) -> None:
        if not (self.root / "annotations").is_dir():
            raise DataError(f"folder missing from the COCO layout; {self.how_to_get}", where=self.root / "annotations")

    def annotation_file(self, name: str) -> Path:
        return self.root / "annotations" / f"instances_{name}.json"

    def split(self, name: str) -> COCOSplit:
        if name not in SPLITS:
            raise DataError(f"unknown split '{name}'; COCO splits are {', '.join(SPLITS)}", where=self.root)
        annotation_file, image_dir = self.annotation_file(name), self.root / name
        for needed in (annotation_file, image_dir):
            if not needed.exists():
                raise DataError(f"needed by split '{name}' but missing; {self.how_to_get}", where=needed)
        if name not in self._instances:
            self._instances[name] = load_instances(annotation_file)
        split = COCOSplit(name, self._instances[name], image_dir, annotation_file)
        missing = [split.image_path(i) for i in range(len(split)) if not os.path.isfile(split.image_path(i))]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) listed in {annotation_file} are missing, first {missing[0].name}",
                where=missing[0],
            )
        return split

    @classmethod
    def synthesize(cls, root: Path, scale: str = "tiny", seed: int = 0) -> None:
        counts = synthetic.pick_scale(SCALES, scale)
        root = Path(root)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        image_ids = (rng.permutation(581929)[: sum(counts)] + 1).tolist()  # COCO 2017 ids lie in 1..581929
        categories = [{"supercategory": sup, "id": c, "name": name} for c, (name, sup) in CATEGORIES.items()]
        for split, n in zip(SPLITS, counts):
            (root / split).mkdir(exist_ok=True)
            images, per_image = [], []
            for image_id in image_ids[:n]:
                pixels, annotations = _scene(rng)
                file_name = f"{image_id:012d}.jpg"
                synthetic.save_jpeg(pixels, root / split / file_name)
                height, width = pixels.shape[:2]
                images.append({"file_name": file_name, "height": height, "width": width, "id": image_id})
                per_image.append([{**ann, "image_id": image_id} for ann in annotations])
            del image_ids[:n]
            dataset = {
                "info": {"description": f"vrbench procedural stand-in for COCO 2017 {split}", "year": 2017},
                "images": images,
                "annotations": _interleave(rng, per_image),
                "categories": categories,
            }
            (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset, separators=(",", ":")))
        synthetic.write_marker(root, cls.name, scale, seed)


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """A COCO-like image with 1-4 objects (some crowds), painted in annotation order, and their annotations."""
    width, height = int(rng.integers(192, 321)), int(rng.integers(144, 257))
    canvas = synthetic.background(rng, height, width)
    annotations = []
    for _ in range(rng.integers(1, 5)):
        c = int(DRAWN_CATEGORIES[rng.integers(len(DRAWN_CATEGORIES))])
        paint = _paint_crowd if rng.random() < CROWD_RATE else _paint_instance
        segmentation, mask = paint(rng, canvas, c)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append({
            "segmentation": segmentation,
            "area": float(mask_utils.area(rle)),
            "iscrowd": int(isinstance(segmentation, dict)),
            "bbox": [round(float(x), 2) for x in mask_utils.toBbox(rle)],
            "category_id": c,
        })  # fmt: skip
    return synthetic.to_uint8(canvas), annotations


def _paint_instance(rng: np.random.Generator, canvas: np.ndarray, c: int) -> tuple[list[list[float]], np.ndarray]:
    """One object as COCO polygons (2-decimal coordinates); painted exactly where pycocotools rasterises them."""
    height, width = canvas.shape[:2]
    r = rng.uniform(0.1, 0.28) * min(height, width)
    cx, cy = rng.uniform(1.25 * r, width - 1.25 * r), rng.uniform(1.25 * r, height - 1.25 * r)
    shapes = synthetic.shape_polygons(synthetic.class_style(c).shape, cx, cy, r, rng.uniform(0, 2 * np.pi))
    limits = np.array([width, height])
    polygons = [np.round(np.clip(np.array(p), 0, limits), 2).ravel().tolist() for p in shapes]
    mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)
    synthetic.paint_region(rng, canvas, c, mask, cx, cy, r)
    return polygons, mask


def _paint_crowd(rng: np.random.Generator, canvas: np.ndarray, c: int) -> tuple[dict, np.ndarray]:
    """A cluster of 3-6 small objects of one category, annotated together as uncompressed RLE (COCO's crowds)."""
    height, width = canvas.shape[:2]
    centre = rng.uniform(0.3, 0.7, size=2) * [width, height]
    mask = np.zeros((height, width), bool)
    for _ in range(rng.integers(3, 7)):
        r = rng.uniform(0.05, 0.1) * min(height, width)
        cx, cy = np.clip(centre + rng.normal(0, 0.12, size=2) * [width, height], r, [width - r, height - r])
        mask |= synthetic.paint_object(rng, canvas, c, cx, cy, r)
    return uncompressed_rle(mask), mask


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a boolean mask: run lengths in column-major order, starting with a 0-run."""
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return {"counts": [0, *runs] if flat[0] else runs, "size": list(mask.shape)}


def _interleave(rng: np.random.Generator, per_image: list[list[dict]]) -> list[dict]:
    """All annotations with sequential ids, images interleaved at random, each image's own order kept."""
    owners = rng.permutation(np.repeat(np.arange(len(per_image)), [len(a) for a in per_image]))
    queues = [iter(annotations) for annotations in per_image]
    return [{**next(queues[k]), "id": n} for n, k in enumerate(owners.tolist(), start=1)]
