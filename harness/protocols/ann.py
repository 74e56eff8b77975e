"""Inner-product top-k search with the field's libraries: Faiss (exact, flat) and ScaNN (approximate).

Both take the bank (N, D) the protocol built and answer `search(queries, k)` like `ExactSearch`:
(scores float32 (Q, k), indices int64 (Q, k)), best first, on the bank's device. Each declares its options as
a pydantic model (`Options`), so that a task's `search_options` is checked when the spec is loaded.

ScaNN as open-hummingbird-eval HEAD 5e79da2 builds it (`hbird/nn/search_scann.py`): a tree of 512 leaves
(k-means trained on the whole memory) with 32 searched, asymmetric hashing with anisotropic threshold 0.2 and
exact re-scoring of the best 120 candidates. The reference passes `dimensions_per_block` twice,
`score_ah(2, ..., dimensions_per_block=4)`, and ScaNN's builder lets the positional value overwrite the keyword
(it zips positional arguments over the parameter names and updates the keyword dict with them), so HEAD really
quantises 2 dimensions per block. Our option is applied as written; its default, 2, is what HEAD runs. FUNGI's
fork (no-train-all-gain, `fungi-hummingbird/src/hbird_eval.py`) passes it by keyword only: 4.

Deliberate differences, for numbers that are the same run to run: the reference leaves the tree's k-means seed at
ScaNN's default, 0, which draws a new seed per build; its minimum leaf size at the builder's 50, below which ScaNN
re-seeds a leaf from an unseeded random source; and the builder's random centre initialisation, whose centres
ScaNN collects in an absl hash set, so their order follows that process's hash seed (on memories above ~100,000
rows, two processes then build different trees from the same seed). Its mIoU changes between runs on identical
inputs (92.4712 and 92.4774 at memory 1,024,000). Ours sets `clustering_seed` 1, `min_partition_size` 1 and
k-means++ initialisation (ScaNN's own, its proto default): builds in different processes on identical inputs give
identical answers (tests/test_determinism.py); the k-means++ pass costs the build about 2.4x its time (1,015,872 x
384 rows, 512 leaves, 2 threads: 252 s against 104 s). `min_partition_size: 50` and `center_init: random` restore
the reference's tree, and its run-to-run variation, which the result then notes.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt, model_validator

from harness.errors import UserError

FLOAT_DTYPES = ("float32", "float16")


class NoOptions(BaseModel):
    """A backend without options: any key is an error."""

    model_config = ConfigDict(extra="forbid")


class FaissOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu: bool = True  # a GPU index when torch sees CUDA and faiss was built with GPU support


class ScannOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_leaves: PositiveInt = 512
    num_leaves_to_search: PositiveInt = 32
    anisotropic_quantization_threshold: float = 0.2
    dimensions_per_block: PositiveInt = 2  # what the reference effectively runs; FUNGI's fork runs 4
    num_reordering_candidates: PositiveInt = 120
    training_sample_size: PositiveInt | None = None  # tree k-means sample; None = the whole memory, as the reference
    # the tree k-means' seed: ScaNN's default, 0, draws a new one per build (two runs on identical inputs differed by
    # 0.004 mIoU at memory 1,024,000); any other value makes the tree, and so every number, reproducible
    clustering_seed: PositiveInt = 1
    # ScaNN re-seeds a leaf smaller than this from an unseeded random source, so any value above 1 makes builds differ
    # whenever a leaf is that small (often on small memories); the reference runs ScaNN's builder default, 50
    min_partition_size: PositiveInt = 1
    # the tree's initial centres: random (the reference, through the builder) orders them by a per-process hash seed
    center_init: Literal["kmeans++", "random"] = "kmeans++"
    threads: NonNegativeInt = 0  # for training and search; 0 = every core

    @model_validator(mode="after")
    def _leaves(self) -> "ScannOptions":
        if self.num_leaves_to_search > self.num_leaves:
            raise ValueError(f"num_leaves_to_search={self.num_leaves_to_search} exceeds num_leaves={self.num_leaves}")
        return self


def _float32_rows(bank: torch.Tensor, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the bank as a C-contiguous float32 numpy array (a view when already so on CPU)."""
    return np.ascontiguousarray(bank[start:stop].detach().to("cpu", torch.float32).numpy())


def _check_dtype(dtype: str) -> None:
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")


def _check_k(k: int, n: int) -> None:
    if not 0 < k <= n:
        raise ValueError(f"k={k} must be between 1 and the bank size {n}")


class FaissSearch:
    """Exact inner-product search with Faiss: IndexFlatIP (float32) or IndexScalarQuantizer QT_fp16 (float16
    storage, exact search over the stored values) on CPU; GpuIndexFlatIP (useFloat16 for float16) on a GPU.

    The index holds its own copy of the bank, added in chunks so that a float16 bank is never expanded whole.
    """

    Options = FaissOptions
    add_chunk = 1 << 18

    def __init__(self, bank: torch.Tensor, dtype: str = "float32", gpu: bool = True):
        import faiss

        _check_dtype(dtype)
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"bank must be a non-empty (N, D) tensor, got shape {tuple(bank.shape)}")
        self.device, self.n, dim = bank.device, bank.shape[0], bank.shape[1]
        half = dtype == "float16"
        self.on_gpu = gpu and torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources")
        if self.on_gpu:
            self._resources = faiss.StandardGpuResources()
            config = faiss.GpuIndexFlatConfig()
            config.useFloat16 = half
            config.device = bank.device.index or 0  # a CPU bank has no index: GPU 0
            self.index = faiss.GpuIndexFlatIP(self._resources, dim, config)
        elif half:
            self.index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        else:
            self.index = faiss.IndexFlatIP(dim)
        for start in range(0, self.n, self.add_chunk):
            self.index.add(_float32_rows(bank, start, start + self.add_chunk))

    def __len__(self) -> int:
        return self.n

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        _check_k(k, self.n)
        scores, index = self.index.search(_float32_rows(queries, 0, len(queries)), k)
        return torch.from_numpy(scores).to(self.device), torch.from_numpy(index).to(self.device, torch.int64)


CENTER_INIT = {"kmeans++": "DEFAULT_KMEANS_PLUS_PLUS", "random": "RANDOM_INITIALIZATION"}


def _configured(config: str, seed: int, center_init: str) -> str:
    """ScaNN's text config with the tree's `clustering_seed` and centre initialisation set (its builder has no setter
    for either, and writes RANDOM_INITIALIZATION)."""
    init = "single_machine_center_initialization: RANDOM_INITIALIZATION"
    if config.count("partitioning {") != 1 or "clustering_seed" in config or config.count(init) != 1:
        raise RuntimeError(f"unexpected ScaNN config layout, cannot set clustering_seed:\n{config}")
    config = config.replace(init, f"single_machine_center_initialization: {CENTER_INIT[center_init]}")
    return config.replace("partitioning {", f"partitioning {{\n        clustering_seed: {seed}", 1)


class ScannSearch:
    """Approximate inner-product search with ScaNN (tree + asymmetric hashing + exact re-ordering), configured
    from `ScannOptions`. ScaNN keeps its own float32 copy of the bank for the re-ordering.

    When the searched leaves hold fewer than k candidates for a query, ScaNN pads with index 0 and a NaN score
    (the reference then silently uses memory row 0 as a neighbour); here the padding gets score -inf, so it has
    no weight in the label transfer, and `padded` counts such entries. A query with no candidate at all is an error.
    """

    Options = ScannOptions
    search_batch = 256

    def __init__(self, bank: torch.Tensor, dtype: str = "float32", **options):
        import scann

        _check_dtype(dtype)  # ScaNN stores its own quantised codes and float32 rows whatever the bank's dtype
        self.options = opts = ScannOptions(**options)
        if bank.ndim != 2:
            raise ValueError(f"bank must be a (N, D) tensor, got shape {tuple(bank.shape)}")
        self.device, self.n = bank.device, bank.shape[0]
        if self.n < opts.num_leaves:
            raise UserError(
                f"ScaNN's tree has num_leaves={opts.num_leaves} but the memory has only {self.n} rows; use a larger "
                f"memory or set search_options.num_leaves (and num_leaves_to_search) lower"
            )
        threads = opts.threads or os.cpu_count() or 1
        builder = (
            scann.scann_ops_pybind.builder(_float32_rows(bank, 0, self.n), 1, "dot_product")
            .set_n_training_threads(threads)
            .tree(
                num_leaves=opts.num_leaves,
                num_leaves_to_search=opts.num_leaves_to_search,
                training_sample_size=opts.training_sample_size or self.n,
                min_partition_size=opts.min_partition_size,
            )
            .score_ah(
                dimensions_per_block=opts.dimensions_per_block,
                anisotropic_quantization_threshold=opts.anisotropic_quantization_threshold,
            )
            .reorder(opts.num_reordering_candidates)
        )
        self.config = _configured(builder.create_config(), opts.clustering_seed, opts.center_init)
        self.searcher = scann.scann_ops_pybind.create_searcher(_float32_rows(bank, 0, self.n), self.config, threads)
        self.searcher.set_num_threads(threads)
        self.padded = 0

    def __len__(self) -> int:
        return self.n

    @property
    def reproducible(self) -> bool:
        """Whether two builds on identical inputs are sure to answer identically (see ScannOptions)."""
        return self.options.min_partition_size == 1 and self.options.center_init == "kmeans++"

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        _check_k(k, self.n)
        if k > self.options.num_reordering_candidates:
            raise UserError(
                f"k={k} exceeds ScaNN's num_reordering_candidates={self.options.num_reordering_candidates}; "
                f"set search_options.num_reordering_candidates to at least k"
            )
        q = _float32_rows(queries, 0, len(queries))
        index, scores = self.searcher.search_batched_parallel(q, final_num_neighbors=k, batch_size=self.search_batch)
        index, scores = index.astype(np.int64), np.asarray(scores, dtype=np.float32)
        if index.shape != (len(q), k):
            raise RuntimeError(f"ScaNN returned shape {index.shape}, expected {(len(q), k)}")
        missing = np.isnan(scores)
        if missing.any():
            if missing[:, 0].any():
                raise UserError(
                    f"ScaNN found no candidate for {int(missing[:, 0].sum())} queries; "
                    f"raise search_options.num_leaves_to_search"
                )
            scores[missing], index[missing] = -math.inf, 0
            self.padded += int(missing.sum())
        return torch.from_numpy(scores).to(self.device), torch.from_numpy(index).to(self.device)
