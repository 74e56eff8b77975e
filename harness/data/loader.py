"""Batches of preprocessed samples, loaded in worker processes, in index order; split views for methods."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from harness.errors import UserError
from harness.lifetime import die_with_parent, signals_blocked

if TYPE_CHECKING:
    from harness.data.base import Split
    from harness.protocols.base import Stopwatch

T = TypeVar("T")


class _Failed:
    """Stands in for a sample whose `load_fn` raised a UserError, so that the error crosses the worker
    boundary as itself (pickled with its message and `where`) instead of torch's multi-line re-raise."""

    def __init__(self, error: UserError):
        self.error = error


class _Samples(Dataset):
    def __init__(self, n_items: int, load_fn: Callable[[int], tuple]):
        self.n_items = n_items
        self.load_fn = load_fn

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i: int) -> tuple | _Failed:
        try:
            return self.load_fn(i)
        except UserError as err:
            return _Failed(err)


def _stack(samples: list[tuple | _Failed]) -> tuple[np.ndarray, ...] | _Failed:
    failed = next((s for s in samples if isinstance(s, _Failed)), None)
    return failed or tuple(np.stack(column) for column in zip(*samples))


def _start_worker(harness: int, worker_id: int) -> None:
    die_with_parent(harness)


def iter_batches(
    n_items: int,
    load_fn: Callable[[int], tuple],
    batch_size: int,
    num_workers: int,
    desc: str,
    progress: bool = True,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield `load_fn(i)` for i = 0..n_items-1, stacked per field into batches, in order (last batch may be short).

    `load_fn` runs in `num_workers` processes (0 = in this one), so it must be picklable: a module-level
    function, or a functools.partial of one. A UserError (e.g. DataError) it raises reaches the caller
    unchanged, whichever process raised it. The workers die with the harness, and leave Ctrl-C and SIGTERM to it:
    it stops them itself, promptly (harness/lifetime.py).
    """
    loader = DataLoader(
        _Samples(n_items, load_fn),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=_stack,
        worker_init_fn=partial(_start_worker, os.getpid()),
    )
    with signals_blocked():  # while the workers are forked
        batches = iter(loader)
    try:
        with tqdm(total=n_items, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for batch in batches:
                if isinstance(batch, _Failed):
                    raise batch.error
                yield batch
                bar.update(len(batch[0]))
    finally:
        # freeing torch's iterator shuts its workers down now; left to interpreter exit (after a UserError),
        # multiprocessing would SIGTERM them, which they block, and wait for them forever
        del batches


class ImagesOnly:
    """What a method may see of a split: its ids and decoded images, never labels or masks."""

    __slots__ = ("_split", "_ids")

    def __init__(self, split: Split):
        self._split, self._ids = split, tuple(split.ids)

    @property
    def ids(self) -> tuple[str, ...]:
        return self._ids

    def __len__(self) -> int:
        return len(self._split)

    def image(self, i: int) -> np.ndarray:
        return self._split.image(i)


def images_only(split: Split) -> ImagesOnly:
    """A method-facing view of `split` exposing only `ids`, `len()` and `image(i)`."""
    return ImagesOnly(split)


def timed(iterable: Iterable[T], stopwatch: Stopwatch, phase: str) -> Iterator[T]:
    """Re-yield `iterable`, adding the time spent waiting for each item to `phase`."""
    iterator = iter(iterable)
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        finally:
            stopwatch.add(phase, time.perf_counter() - start)
        yield item
