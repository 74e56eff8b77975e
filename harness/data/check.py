"""`bench data check`: every problem of a dataset folder, one line each ("file: reason")."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harness.data import DATASETS, dataset_files, is_procedural
from harness.data.base import ClassificationSplit, DatasetReader, Split
from harness.errors import DataError

DEFAULT_SAMPLE = 16


def check_folder(
    reader: type[DatasetReader], root: Path, sample: int = DEFAULT_SAMPLE, full: bool = False, progress: bool = True
) -> list[str]:
    """Open `root` with `reader` (its layout check) and return every problem found; [] = usable."""
    if not Path(root).is_dir():
        return [f"{root}: dataset folder missing; {reader.how_to_get}"]
    try:
        opened = reader(root)
    except DataError as err:
        return [str(err)]
    return problems(opened, sample, full, progress)


def problems(
    reader: DatasetReader, sample: int = DEFAULT_SAMPLE, full: bool = False, progress: bool = True
) -> list[str]:
    """Every problem of an opened dataset: layout, every file reachable (no dangling symlink or loop, as the run's
    fingerprint needs), each split opening, item counts against the official ones (real data only: procedural
    stand-ins are small by design), labels, and decoding of `sample` items per split evenly spread (every item when
    `full`), masks too where the split has them."""
    found = []
    try:
        reader.check_layout()
        dataset_files(reader.root)
    except DataError as err:
        return [str(err)]
    real = not is_procedural(reader.root)
    for name in reader.split_names:
        try:
            split = reader.split(name)
        except DataError as err:
            found.append(str(err))
            continue
        expected = reader.official_counts.get(name)
        if real and expected is not None and len(split) != expected:
            found.append(
                f"{reader.root}: {reader.name} split '{name}' has {len(split):,} items; "
                f"the official count is {expected:,}"
            )
        if isinstance(split, ClassificationSplit):
            found += _label_problems(reader.root, split)
        found += _decode_problems(
            split, _indices(len(split), sample, full), desc=f"{reader.name} {name}", bar=full and progress
        )
    return found


def _indices(n: int, sample: int, full: bool) -> list[int]:
    if full or sample >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, max(sample, 1)).round()})


def _label_problems(root: Path, split: ClassificationSplit) -> list[str]:
    labels = np.asarray(split.labels)
    if labels.shape != (len(split),):
        return [f"{root}: split '{split.name}' has {len(split)} images but labels of shape {labels.shape}"]
    bad = (labels < 0) | (labels >= split.num_classes)
    if bad.any():
        return [
            f"{root}: split '{split.name}' item {split.ids[int(np.argmax(bad))]} has label "
            f"{int(labels[bad][0])} outside 0..{split.num_classes - 1}"
        ]
    return []


def _decode_problems(split: Split, indices: list[int], desc: str, bar: bool) -> list[str]:
    """Decode the listed items on a few threads (PIL releases the GIL while decoding); problems in index order."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda i: _item_problem(split, i), indices)
        return [p for p in tqdm(results, total=len(indices), desc=desc, unit="img", disable=not bar) if p]


def _item_problem(split: Split, i: int) -> str | None:
    where = split.image_path(i) or f"{split.name}[{i}] ({split.ids[i]})"
    try:
        image = split.image(i)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            return f"{where}: decoded to {image.dtype} {image.shape}, expected uint8 (H, W, 3)"
        if hasattr(split, "mask"):
            mask = split.mask(i)
            if mask.shape != image.shape[:2]:
                return f"{where}: mask is {mask.shape} but the image is {image.shape[:2]}"
    except DataError as err:
        return str(err)
    return None


def presence(reader: type[DatasetReader], root: Path) -> str:
    """'real', 'procedural' (a stand-in, marked) or 'missing': what sits at a dataset's expected folder.

    A folder several datasets share (medmnist/ holds one npz per dataset) holds this one unless its layout check
    fails on a file that does not exist."""
    root = Path(root)
    if not root.is_dir() or (_shares_folder(reader) and _lacks_own_file(reader, root)):
        return "missing"
    return "procedural" if is_procedural(root) else "real"


def _shares_folder(reader: type[DatasetReader]) -> bool:
    return any(other is not reader and other.subdir == reader.subdir for other in DATASETS.values())


def _lacks_own_file(reader: type[DatasetReader], root: Path) -> bool:
    try:
        reader(root)
    except DataError as err:
        return err.where is not None and not Path(err.where).exists()
    return False
