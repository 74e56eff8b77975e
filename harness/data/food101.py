"""Food-101 in its official layout: images/<class>/<id>.jpg, meta/classes.txt, meta/{train,test}.txt
(lines '<class>/<id>', no extension); the label of an image is its class's line index in classes.txt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.data import synthetic
from harness.data.base import DatasetReader
from harness.data.files import ImageFileSplit, check_files_exist, read_lines
from harness.errors import DataError

SPLITS = ("train", "test")
# the first 20 Food-101 classes (classes.txt order): classes of the procedural stand-in
CLASS_NAMES = (
    "apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad", "beignets",
    "bibimbap", "bread_pudding", "breakfast_burrito", "bruschetta", "caesar_salad", "cannoli", "caprese_salad",
    "carrot_cake", "ceviche", "cheese_plate", "cheesecake", "chicken_curry", "chicken_quesadilla",
)  # fmt: skip
# scale -> (classes, train, test images per class)
SCALES = {"tiny": (10, 8, 4), "small": (20, 16, 8)}


class Food101(DatasetReader):
    name = "food101"
    subdir = "food-101"
    how_to_get = (
        "download food-101.tar.gz from data.vision.ee.ethz.ch/cvl/food-101.tar.gz and extract it into <data root> "
        "(food-101/ with images/<class>/<id>.jpg and meta/classes.txt, meta/train.txt, meta/test.txt)"
    )
    split_names = SPLITS
    official_counts = {"train": 75750, "test": 25250}

    def check_layout(self) -> None:
        meta = self.root / "meta"
        for needed in (self.root / "images", meta / "classes.txt", *(meta / f"{s}.txt" for s in SPLITS)):
            if not needed.exists():
                raise DataError(f"missing from the Food-101 layout; {self.how_to_get}", where=needed)
        self.classes = []
        for n, line in read_lines(meta / "classes.txt"):
            if "/" in line or " " in line or line in self.classes:
                raise DataError(f"not a new class name: {line!r}", where=f"{meta / 'classes.txt'}:{n}")
            self.classes.append(line)
        self.num_classes = len(self.classes)

    def split(self, name: str) -> ImageFileSplit:
        if name not in SPLITS:
            raise DataError(f"unknown split '{name}'; Food-101 splits are {', '.join(SPLITS)}", where=self.root)
        list_file = self.root / "meta" / f"{name}.txt"
        index = {c: i for i, c in enumerate(self.classes)}
        ids, labels = [], []
        for n, line in read_lines(list_file):
            class_name, slash, image_id = line.partition("/")
            if not slash or not image_id or "/" in image_id or " " in line:
                raise DataError(f"expected '<class>/<image id>', got {line!r}", where=f"{list_file}:{n}")
            if class_name not in index:
                raise DataError(f"class {class_name!r} is not in classes.txt", where=f"{list_file}:{n}")
            ids.append(line)
            labels.append(index[class_name])
        if not ids:
            raise DataError("split list is empty", where=list_file)
        files = [f"{x}.jpg" for x in ids]
        check_files_exist(self.root / "images", files, listed_in=list_file)
        return ImageFileSplit(name, self.root / "images", files, np.array(labels, np.int64), self.num_classes, ids)

    @classmethod
    def synthesize(cls, root: Path, scale: str = "tiny", seed: int = 0) -> None:
        num_classes, *per_class = synthetic.pick_scale(SCALES, scale)
        root = Path(root)
        rng = np.random.default_rng(seed)
        classes = CLASS_NAMES[:num_classes]
        lists: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
        for c, class_name in enumerate(classes):
            (root / "images" / class_name).mkdir(parents=True, exist_ok=True)
            numbers = (100_000 + rng.choice(3_900_000, sum(per_class), replace=False)).tolist()
            for split, count in zip(SPLITS, per_class):
                lists[split][class_name] = [f"{class_name}/{numbers.pop()}" for _ in range(count)]
                for image_id in lists[split][class_name]:
                    synthetic.save_jpeg(synthetic.object_image(rng, c), root / "images" / f"{image_id}.jpg")
        meta = root / "meta"
        meta.mkdir(exist_ok=True)
        (meta / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
        (meta / "labels.txt").write_text("".join(f"{c.replace('_', ' ').capitalize()}\n" for c in classes))
        for split, by_class in lists.items():
            (meta / f"{split}.txt").write_text("".join(f"{x}\n" for ids in by_class.values() for x in ids))
            (meta / f"{split}.json").write_text(json.dumps(by_class))
        synthetic.write_marker(root, cls.name, scale, seed)
