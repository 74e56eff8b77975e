"""Caltech-UCSD Birds-200-2011 in its official layout: images/, images.txt, image_class_labels.txt,
train_test_split.txt, classes.txt (all keyed by 1-based image or class id)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data import synthetic
from harness.data.base import DatasetReader
from harness.data.files import ImageFileSplit, check_files_exist, read_lines
from harness.errors import DataError

LIST_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
SPLIT_FLAGS = {"train": "1", "test": "0"}  # value in train_test_split.txt
# the first 20 CUB classes: class folders of the procedural stand-in
CLASS_NAMES = (
    "Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani", "Crested_Auklet",
    "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet", "Brewer_Blackbird", "Red_winged_Blackbird",
    "Rusty_Blackbird", "Yellow_headed_Blackbird", "Bobolink", "Indigo_Bunting", "Lazuli_Bunting",
    "Painted_Bunting", "Cardinal", "Spotted_Catbird", "Gray_Catbird", "Yellow_breasted_Chat",
)  # fmt: skip
# scale -> (classes, train, test images per class)
SCALES = {"tiny": (10, 8, 4), "small": (20, 16, 8)}


def read_id_table(path: Path, value_name: str, allowed: set[str] | None = None) -> dict[int, str]:
    """Lines '<positive int id> <value>' of a CUB list file, as {id: value}; DataError names file:line."""
    table: dict[int, str] = {}
    for n, line in read_lines(path):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) < 1:
            raise DataError(f"expected '<id> <{value_name}>', got {line!r}", where=f"{path}:{n}")
        if int(fields[0]) in table:
            raise DataError(f"id {fields[0]} listed twice", where=f"{path}:{n}")
        if allowed is not None and fields[1] not in allowed:
            raise DataError(f"{value_name} {fields[1]!r} is not one of {_span(allowed)}", where=f"{path}:{n}")
        table[int(fields[0])] = fields[1]
    if not table:
        raise DataError("list file is empty", where=path)
    return table


class CUB200(DatasetReader):
    name = "cub"
    subdir = "CUB_200_2011"
    how_to_get = (
        "download CUB_200_2011.tgz from data.caltech.edu/records/65de6-vzc20 and extract it into <data root> "
        "(CUB_200_2011/ with images/, images.txt, image_class_labels.txt, train_test_split.txt, classes.txt)"
    )
    split_names = tuple(SPLIT_FLAGS)
    official_counts = {"train": 5994, "test": 5794}

    def check_layout(self) -> None:
        for needed in (self.root / "images", *(self.root / f for f in LIST_FILES)):
            if not needed.exists():
                raise DataError(f"missing from the CUB-200-2011 layout; {self.how_to_get}", where=needed)
        classes = read_id_table(self.root / "classes.txt", "class_name")
        if sorted(classes) != list(range(1, len(classes) + 1)):
            raise DataError(f"class ids must be 1..{len(classes)}", where=self.root / "classes.txt")
        self.num_classes = len(classes)
        self.images = read_id_table(self.root / "images.txt", "class_folder/file.jpg")
        labels = read_id_table(self.root / "image_class_labels.txt", "class_id", {str(c) for c in classes})
        self.is_train = read_id_table(self.root / "train_test_split.txt", "is_train", set(SPLIT_FLAGS.values()))
        for file, table in (("image_class_labels.txt", labels), ("train_test_split.txt", self.is_train)):
            _check_same_ids(self.root / file, table, self.images)
        self.labels = {image_id: int(c) - 1 for image_id, c in labels.items()}

    def split(self, name: str) -> ImageFileSplit:
        if name not in SPLIT_FLAGS:
            raise DataError(f"unknown split '{name}'; CUB splits are {', '.join(SPLIT_FLAGS)}", where=self.root)
        ids = [i for i in self.images if self.is_train[i] == SPLIT_FLAGS[name]]
        files = [self.images[i] for i in ids]
        check_files_exist(self.root / "images", files, listed_in=self.root / "images.txt")
        labels = np.array([self.labels[i] for i in ids], np.int64)
        return ImageFileSplit(name, self.root / "images", files, labels, self.num_classes, ids=[str(i) for i in ids])

    @classmethod
    def synthesize(cls, root: Path, scale: str = "tiny", seed: int = 0) -> None:
        num_classes, n_train, n_test = synthetic.pick_scale(SCALES, scale)
        root = Path(root)
        rng = np.random.default_rng(seed)
        folders = [f"{c + 1:03d}.{CLASS_NAMES[c]}" for c in range(num_classes)]
        images, labels, is_train = [], [], []
        for c, folder in enumerate(folders):
            (root / "images" / folder).mkdir(parents=True, exist_ok=True)
            flags = rng.permutation([1] * n_train + [0] * n_test)
            for k, number in enumerate(rng.choice(100_000, n_train + n_test, replace=False)):
                file = f"{folder}/{CLASS_NAMES[c]}_{k + 1:04d}_{number}.jpg"
                synthetic.save_jpeg(synthetic.object_image(rng, c), root / "images" / file)
                images.append(file)
                labels.append(c + 1)
                is_train.append(int(flags[k]))
        rows = {
            "classes.txt": folders,
            "images.txt": images,
            "image_class_labels.txt": labels,
            "train_test_split.txt": is_train,
        }
        for file, values in rows.items():
            (root / file).write_text("".join(f"{i} {v}\n" for i, v in enumerate(values, start=1)))
        synthetic.write_marker(root, cls.name, scale, seed)


def _check_same_ids(path: Path, table: dict[int, str], images: dict[int, str]) -> None:
    """`table` has exactly the image ids of images.txt."""
    missing = [i for i in images if i not in table]
    if missing:
        raise DataError(f"{len(missing)} image id(s) of images.txt have no line, first {missing[0]}", where=path)
    extra = [i for i in table if i not in images]
    if extra:
        raise DataError(f"{len(extra)} image id(s) are not in images.txt, first {extra[0]}", where=path)


def _span(values: set[str]) -> str:
    ints = sorted(int(v) for v in values)
    return f"{ints[0]}..{ints[-1]}" if len(ints) > 2 else "/".join(map(str, ints))
