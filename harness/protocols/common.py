"""Split checks, preprocessing and feature extraction that more than one protocol uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from harness.contract import FitBatch
from harness.data.base import ClassificationSplit, DatasetReader, SegmentationSplit, Split
from harness.data.transforms import dino_eval_transform, resize_mask_nearest, squash_resize
from harness.errors import DataError
from harness.protocols.base import RunContext


def train_eval_splits(data: DatasetReader, train_split: str, eval_split: str) -> tuple[Split, Split]:
    """The training and evaluation splits of a protocol that transfers labels from one to the other: both must
    have the same classes."""
    train, val = data.split(train_split), data.split(eval_split)
    if train.num_classes != val.num_classes:
        raise DataError(f"{train_split} has {train.num_classes} classes, {eval_split} {val.num_classes}")
    return train, val


def embed_split(
    split: ClassificationSplit,
    load: Callable[[ClassificationSplit, int], tuple],
    ctx: RunContext,
    desc: str,
    dim: int | None = None,
) -> np.ndarray:
    """(N, D) global features of a split, its images loaded by `load(split, i)`; every batch must have the same D
    (`dim` when given)."""
    chunks: list[np.ndarray] = []
    for (images,) in ctx.batches(len(split), partial(load, split), desc):
        chunks.append(ctx.embed(images, dim))
        dim = chunks[0].shape[1]
    return np.concatenate(chunks)


def _load_nth(split: Split, load: Callable, order: np.ndarray, i: int) -> tuple:
    return load(split, int(order[i]))


def fit_split_batches(
    split: Split, load: Callable[[Split, int], tuple], ctx: RunContext, desc: str
) -> Iterator[FitBatch]:
    """A split for a method's fit stage: its images (the first item of `load(split, i)`) in an order shuffled by the
    run's seed (a method that takes only the first few gets a random sample), with a classification split's labels,
    which the session passes on only where the task's fit_labels allows (other splits send images only)."""
    order = np.random.default_rng([ctx.seed, 0xF17]).permutation(len(split))
    labels = np.asarray(split.labels, dtype=np.int64) if isinstance(split, ClassificationSplit) else None
    start = 0
    for images, *_ in ctx.batches(len(split), partial(_load_nth, split, load, order), desc):
        yield FitBatch(images, None if labels is None else labels[order[start : start + len(images)]])
        start += len(images)


def load_knn_image(split: ClassificationSplit, i: int) -> tuple[np.ndarray]:
    """DINO's kNN preprocessing (eval_knn.py; harness.data.transforms.dino_eval_transform)."""
    return (dino_eval_transform(split.image(i)),)


def squashed_image(split: ClassificationSplit, i: int, size: int) -> tuple[np.ndarray]:
    """The image squashed to size×size (PIL bilinear, no crop)."""
    return (squash_resize(split.image(i), size),)


def neco_eval_sample(split: SegmentationSplit, size: int, mask_size: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    """NeCo's evaluation preprocessing (vpariza/NeCo): image squashed to size×size (PIL bilinear); mask PIL-nearest
    to size×size (torchvision Resize on the PIL mask), then torch-nearest to mask_size×mask_size."""
    mask = TF.resize(Image.fromarray(split.mask(i)), [size, size], InterpolationMode.NEAREST)
    return squash_resize(split.image(i), size), resize_mask_nearest(np.array(mask), mask_size)
