"""Batches of preprocessed samples, loaded in worker processes, in index order."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

if TYPE_CHECKING:
    from harness.protocols.base import Stopwatch

T = TypeVar("T")


class _Samples(Dataset):
    def __init__(self, n_items: int, load_fn: Callable[[int], tuple]):
        self.n_items = n_items
        self.load_fn = load_fn

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i: int) -> tuple:
        return self.load_fn(i)


def _stack(samples: list[tuple]) -> tuple[np.ndarray, ...]:
    return tuple(np.stack(column) for column in zip(*samples))


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
    function, or a functools.partial of one.
    """
    loader = DataLoader(
        _Samples(n_items, load_fn), batch_size=batch_size, shuffle=False, drop_last=False,
        num_workers=num_workers, collate_fn=_stack,
    )
    with tqdm(total=n_items, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch[0]))


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
