"""Class-folder readers (Imagenette2, ImageNet) with torchvision ImageFolder semantics."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from harness.data import synthetic
from harness.data.base import DatasetReader
from harness.data.files import ImageFileSplit
from harness.errors import DataError

IMAGENETTE_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888605",
)  # fmt: skip
# the first 20 ImageNet-1k classes (tench ... chickadee): class folders of the procedural ImageNet stand-in
IMAGENET_FIRST_WNIDS = (
    "n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041", "n01514668",
    "n01514859", "n01518878", "n01530575", "n01531178", "n01532829", "n01534433", "n01537544", "n01558993",
    "n01560419", "n01580077", "n01582220", "n01592084",
)  # fmt: skip


class ClassFolders(DatasetReader):
    """<split>/<class>/**/<image>: classes are the sorted folder names, images the files with an image extension,
    sorted, as torchvision's ImageFolder (whose own listing functions are used). Every split must hold the same
    class folders. Opening a split only lists folders (os.scandir): no image file is opened or stat-ed."""

    split_names = ("train", "val")
    expected_classes: ClassVar[tuple[str, ...] | None] = None  # the exact class folders (any order), when fixed
    # scale -> (classes, then images per class of each split in split_names' order), for the stand-in
    SCALES: ClassVar[dict[str, tuple[int, ...]]]
    SYNTH_WNIDS: ClassVar[tuple[str, ...]]  # the stand-in's class folders (at least the largest scale's classes)

    def check_layout(self) -> None:
        listed = {}
        for name in self.split_names:
            folder = self.root / name
            if not folder.is_dir():
                raise DataError(f"split folder missing; {self.how_to_get}", where=folder)
            try:
                listed[name] = find_classes(folder)[0]
            except FileNotFoundError:
                raise DataError("no class folders inside; expected one folder per class", where=folder) from None
        first, *others = self.split_names
        for name in others:
            if listed[name] != listed[first]:
                only_here = sorted(set(listed[name]) - set(listed[first]))
                only_there = sorted(set(listed[first]) - set(listed[name]))
                raise DataError(
                    f"class folders differ from {first}/: only here {_few(only_here)}; "
                    f"only in {first}/ {_few(only_there)}",
                    where=self.root / name,
                )
        self.classes = listed[first]
        if self.expected_classes is not None and self.classes != sorted(self.expected_classes):  # labels: sorted
            missing = sorted(set(self.expected_classes) - set(self.classes))
            unexpected = sorted(set(self.classes) - set(self.expected_classes))
            raise DataError(
                f"class folders are not {self.name}'s {len(self.expected_classes)} classes: "
                f"missing {_few(missing)}; unexpected {_few(unexpected)}",
                where=self.root / first,
            )
        self.num_classes = len(self.classes)

    def split(self, name: str) -> ImageFileSplit:
        if name not in self.split_names:
            raise DataError(
                f"unknown split '{name}'; {self.name} splits are {', '.join(self.split_names)}", where=self.root
            )
        folder = self.root / name
        try:
            samples = make_dataset(str(folder), {c: i for i, c in enumerate(self.classes)}, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as err:
            raise DataError(str(err).strip(), where=folder) from None
        prefix = len(str(folder)) + 1
        files = [path[prefix:] for path, _ in samples]
        labels = np.fromiter((label for _, label in samples), np.int64, count=len(samples))
        return ImageFileSplit(name, folder, files, labels, self.num_classes)

    @classmethod
    def synthesize(cls, root: Path, scale: str = "tiny", seed: int = 0) -> None:
        num_classes, *per_class = synthetic.pick_scale(cls.SCALES, scale)
        root = Path(root)
        rng = np.random.default_rng(seed)
        for split, count in zip(cls.split_names, per_class):
            for c, wnid in enumerate(cls.SYNTH_WNIDS[:num_classes]):
                (root / split / wnid).mkdir(parents=True, exist_ok=True)
                for number in sorted(rng.choice(50_000, count, replace=False) + 1):
                    path = root / split / wnid / cls.synth_file(split, wnid, number)
                    synthetic.save_jpeg(synthetic.object_image(rng, c), path)
        synthetic.write_marker(root, cls.name, scale, seed)

    @classmethod
    def synth_file(cls, split: str, class_folder: str, number: int) -> str:
        """The stand-in's name for image `number` of a class folder (a JPEG): ImageNet's, unless overridden."""
        return f"{class_folder}_{number}.JPEG" if split == "train" else f"ILSVRC2012_val_{number:08d}.JPEG"


def _few(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" (+{len(names) - shown} more)" if len(names) > shown else "") or "none"


class Imagenette(ClassFolders):
    name = "imagenette"
    subdir = "imagenette2"
    how_to_get = (
        "download imagenette2.tgz (full size) from s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz and extract "
        "it into <data root> (imagenette2/train/<wnid>/*.JPEG, imagenette2/val/<wnid>/*.JPEG)"
    )
    official_counts = {"train": 9469, "val": 3925}
    expected_classes = IMAGENETTE_WNIDS
    SCALES = {"tiny": (10, 8, 4), "small": (10, 32, 16)}
    SYNTH_WNIDS = IMAGENETTE_WNIDS


class ImageNet(ClassFolders):
    name = "imagenet"
    subdir = "imagenet"
    how_to_get = (
        "download ILSVRC2012 train and val from image-net.org and extract them into <data root>/imagenet/train/<wnid>/ "
        "and <data root>/imagenet/val/<wnid>/ (sort val into wnid folders, e.g. with PyTorch examples' valprep.sh)"
    )
    official_counts = {"train": 1281167, "val": 50000}
    SCALES = {"tiny": (10, 8, 4), "small": (20, 16, 8)}
    SYNTH_WNIDS = IMAGENET_FIRST_WNIDS
