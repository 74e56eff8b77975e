"""The one interface every evaluation protocol implements.

A protocol owns a task's preprocessing and scoring: it reads the dataset splits it needs, sends the method
uint8 RGB batches through the session, and scores what comes back with the harness's own evaluator.
Evaluation labels stay here; only images (and, where a task allows, training labels for `fit`) reach a method.
A method with a fit stage (method.yaml `fit: true`) gets the protocol's `fit_batches` first, on the task's training
split with the task's own preprocessing (`Protocol.execute`).
"""

from __future__ import annotations

import time
import typing
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from harness.contract import FitBatch, MethodInfo, OutputKind
from harness.data.base import DatasetReader
from harness.data.loader import iter_batches, timed
from harness.errors import MethodFailure, UserError


class ProtocolParams(BaseModel):
    """Base for each protocol's parameter model (the `params:` block of a task YAML)."""

    model_config = ConfigDict(extra="forbid")


class Stopwatch:
    """Accumulates wall time per phase: `with sw.phase("evaluator"): ...`."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        self.totals[name] += seconds


class Session(typing.Protocol):
    """What a protocol may ask of a method (harness.runners.session.MethodSession and its in-process, recording
    and replaying forms): every reply already checked against the contract's table."""

    info: MethodInfo

    def embed(self, images: np.ndarray) -> np.ndarray: ...

    def embed_dense(self, images: np.ndarray) -> np.ndarray: ...

    def segment(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...

    def fit(self, batches: Iterable[FitBatch], with_labels: bool) -> None: ...


@dataclass
class RunContext:
    """What a protocol gets besides its dataset: the method session and the run's settings. `fit`: the method has
    a fit stage; `fit_labels`: the task lets it see training labels (and label-driven patch selections)."""

    session: Session | None
    seed: int
    fit: bool = False
    fit_labels: bool = False
    procedural: bool = False  # the dataset is a procedural stand-in
    device: str = "cpu"  # "cuda" when a GPU is present; evaluators may use it
    batch_size: int = 16
    num_workers: int = 2
    stopwatch: Stopwatch = field(default_factory=Stopwatch)
    progress: bool = True

    def batches(self, n: int, load: Callable[[int], tuple], desc: str) -> Iterator[tuple[np.ndarray, ...]]:
        """Stacked batches of load(0..n-1) in index order, with this run's batch size, workers and progress bar;
        the wait for each counts as the "data" phase."""
        batches = iter_batches(n, load, self.batch_size, self.num_workers, desc, self.progress)
        return timed(batches, self.stopwatch, "data")

    def embed(self, images: np.ndarray, dim: int | None = None) -> np.ndarray:
        """The method's global features of a batch, checked to be (N, dim) (any D when dim is None)."""
        return expect_shape(self.session.embed(images), (len(images), dim), "embed")

    def embed_dense(self, images: np.ndarray, grid: int, dim: int) -> np.ndarray:
        """The method's patch features of a batch, checked to be (N, grid, grid, dim)."""
        return expect_shape(self.session.embed_dense(images), (len(images), grid, grid, dim), "embed_dense")

    def segment(self, images: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The method's masks of a batch, checked to be (N, K, size, size), and its reconstructions or None."""
        masks, reconstructions = self.session.segment(images)
        return expect_shape(masks, (len(images), None, size, size), "segment"), reconstructions

    def evaluating(self) -> AbstractContextManager[None]:
        """`with ctx.evaluating():` times the block as the protocol's own work, the "evaluator" phase."""
        return self.stopwatch.phase("evaluator")


@dataclass
class Outcome:
    """A protocol's result: headline metrics (floats), JSON-able details, and notes for the reader."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def dense_geometry(info: MethodInfo, input_size: int) -> tuple[int, int, int]:
    """(patch, embed_dim, size) for a dense protocol: the method's patch size and feature width, and the input
    size rounded down to a multiple of the patch (512 -> 504 for patch 14), as the reference evaluators do."""
    patch, dim = info.patch_size, info.embed_dim
    size = input_size // patch * patch
    if size == 0:
        raise UserError(f"input_size={input_size} is smaller than the patch size {patch}")
    return patch, dim, size


def expect_shape(features: np.ndarray, shape: tuple[int | None, ...], what: str) -> np.ndarray:
    """The protocol's shape check on a method output (None = any size). Dtype, item count and finiteness
    are already checked by the session for every reply."""
    if features.ndim != len(shape) or any(w is not None and g != w for g, w in zip(features.shape, shape)):
        expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise MethodFailure(f"{what} returned shape {features.shape}, expected {expected}")
    return features


class Protocol(ABC):
    """An evaluation protocol. `main_metric` names the headline key of Outcome.metrics (the one to rank methods
    by, as MTEB's main_score); `lower_is_better` lists the metrics where lower is better (lm-eval's
    higher_is_better), all others being higher-is-better. `version` is the evaluator's: bump it whenever a change
    can change a number (it is part of every result's key, so older results are never pooled with newer ones;
    tests/test_result_keys.py asks for the bump when a protocol's code changes)."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    Params: ClassVar[type[ProtocolParams]]
    output: ClassVar[OutputKind]  # what the method must produce
    main_metric: ClassVar[str]
    lower_is_better: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: ProtocolParams):
        self.params = params

    @classmethod
    def higher_is_better(cls, metric: str) -> bool:
        """Whether a larger value of `metric` is a better result."""
        return metric not in cls.lower_is_better

    @abstractmethod
    def run(self, data: DatasetReader, ctx: RunContext) -> Outcome:
        """Stream the task's images through ctx.session, score the outputs, return the outcome."""

    def fit_batches(self, data: DatasetReader, ctx: RunContext) -> Iterator[FitBatch]:
        """The training batches a method's fit stage gets: the task's training split with the task's own
        preprocessing, in a seeded order; labels where the task's `fit_labels` allows them. A protocol without
        one leaves this undefined, and methods with a fit stage cannot run its tasks."""
        raise NotImplementedError

    @classmethod
    def has_fit_stage(cls) -> bool:
        return cls.fit_batches is not Protocol.fit_batches

    def execute(self, data: DatasetReader, ctx: RunContext) -> Outcome:
        """The method's fit stage (when it has one) on `fit_batches`, then `run`."""
        if ctx.fit:
            ctx.session.fit(self.fit_batches(data, ctx), ctx.fit_labels)
        return self.run(data, ctx)
