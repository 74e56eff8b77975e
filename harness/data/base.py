"""What every dataset reader provides: splits of images, with labels kept on the evaluator's side."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np


class Split(ABC):
    """One split of a dataset. Indexable by position; images are uint8 RGB arrays (H, W, 3)."""

    name: str
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @abstractmethod
    def image(self, i: int) -> np.ndarray:
        """Decoded RGB image, uint8 (H, W, 3)."""

    def image_path(self, i: int) -> Path | None:  # for error messages
        return None


class SegmentationSplit(Split):
    num_classes: int
    ignore_index: int

    @abstractmethod
    def mask(self, i: int) -> np.ndarray:
        """Class-index mask, uint8 (H, W), same size as the image; ignore_index marks unlabeled pixels."""


class ClassificationSplit(Split):
    num_classes: int
    labels: np.ndarray  # int64 (N,), 0-based


class DatasetReader(ABC):
    """A dataset in its official on-disk layout under `root` (= data_root / subdir)."""

    name: ClassVar[str]
    subdir: ClassVar[str]  # where it is expected under the data root
    how_to_get: ClassVar[str]  # one line: where to download it / how to lay it out
    split_names: ClassVar[tuple[str, ...]] = ()  # every split `split()` accepts
    official_counts: ClassVar[dict[str, int]] = {}  # split -> item count of the real dataset (checked by `data check`)
    on_disk: ClassVar[bool] = True  # False: not a dataset of the data root (not registered in harness.data.DATASETS)

    def __init__(self, root: Path):
        self.root = Path(root)
        self.check_layout()

    @abstractmethod
    def check_layout(self) -> None:
        """Raise DataError (naming the file) when the layout is not usable."""

    @abstractmethod
    def split(self, name: str) -> Split:
        """Open one split; raise DataError for an unknown split or a broken file."""

    @classmethod
    @abstractmethod
    def synthesize(cls, root: Path, scale: str = "tiny", seed: int = 0) -> None:
        """Write a procedural stand-in in the exact official layout under `root`."""


class InMemoryDataset(DatasetReader):
    """Ready-made splits with no files behind them: protocols fed directly (tests, benchmark scripts)."""

    name = subdir = how_to_get = "in-memory"
    on_disk = False

    def __init__(self, splits: dict[str, Split]):
        self.root, self.splits = Path("<in memory>"), splits

    def check_layout(self) -> None:
        pass

    def split(self, name: str) -> Split:
        return self.splits[name]

    @classmethod
    def synthesize(cls, root: Path, scale: str = "tiny", seed: int = 0) -> None:
        raise NotImplementedError("an in-memory dataset has no on-disk form")
