"""L2 normalisation and inner-product top-k search over a bank of feature vectors.

Backends sit in a registry (`make_search`): "exact" here (torch), "faiss" (exact, flat) and "scann" (approximate)
in `ann.py`. Each declares its options as a pydantic model, `Options`, checked by `make_search` and by the task
specs that name a backend (`search_options`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from harness.errors import UserError
from harness.protocols.ann import FaissSearch, NoOptions, ScannSearch

MEMORY_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    """Unit-length rows (float32); an all-zero row stays zero instead of becoming NaN."""
    return F.normalize(features.float(), dim=-1)


class ExactSearch:
    """Exact top-k by inner product over `bank` (N, D), on the bank's device.

    The bank is kept in `dtype` (float16 halves its memory). On CUDA, scores are computed block by block, at most
    `max_block` query × bank entries at a time, in the bank's dtype; with a float16 bank the k winners are re-scored
    in float32, so returned scores are always float32. On CPU each bank block (the whole bank when float32; float16
    blocks are widened to float32) goes to faiss's brute-force `knn`, BLAS products with a heap that keeps the best k
    as it goes: 1.25× (k=30) to 1.6× (k=200) less CPU than torch's product + topk over the same blocks
    (scripts/bench_hummingbird.py, part b), the same scores, neighbours in the same order except among equal scores.
    """

    Options = NoOptions

    def __init__(self, bank: torch.Tensor, dtype: str = "float32", query_chunk: int = 2048, max_block: int = 2**26):
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"bank must be a non-empty (N, D) tensor, got shape {tuple(bank.shape)}")
        self.bank = bank.to(MEMORY_DTYPES[dtype])
        self.on_cuda = self.bank.device.type == "cuda"
        self.query_chunk = query_chunk if self.on_cuda else None  # None: faiss blocks the queries itself
        self.bank_chunk = max(1, max_block // query_chunk)
        if not self.on_cuda and self.bank.dtype == torch.float32:
            self.bank_chunk = len(self.bank)  # faiss blocks it itself, without a copy
        self.compute_dtype = self.bank.dtype if self.on_cuda else torch.float32

    def __len__(self) -> int:
        return self.bank.shape[0]

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores float32 (Q, k), indices int64 (Q, k)), best first, on the bank's device."""
        if not 0 < k <= len(self):
            raise ValueError(f"k={k} must be between 1 and the bank size {len(self)}")
        queries = queries.to(self.bank.device, torch.float32)
        chunks = queries.split(self.query_chunk) if self.query_chunk else (queries,)
        scores, index = zip(*(self._search_chunk(chunk, k) for chunk in chunks))
        return torch.cat(scores), torch.cat(index)

    def _block_topk(self, q: torch.Tensor, block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.on_cuda:
            return (q @ block.T).topk(k, dim=1)
        import faiss

        scores, index = faiss.knn(
            np.ascontiguousarray(q.numpy()), np.ascontiguousarray(block.numpy()), k, metric=faiss.METRIC_INNER_PRODUCT
        )
        return torch.from_numpy(scores), torch.from_numpy(index)

    def _search_chunk(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = queries.to(self.compute_dtype)
        best_scores = best_index = None
        for start in range(0, len(self), self.bank_chunk):
            block = self.bank[start : start + self.bank_chunk].to(self.compute_dtype)
            scores, index = self._block_topk(q, block, min(k, len(block)))
            index += start
            if best_scores is not None:
                scores, pick = torch.cat([best_scores, scores], 1).topk(k, dim=1)
                index = torch.cat([best_index, index], 1).gather(1, pick)
            best_scores, best_index = scores, index
        if self.compute_dtype != torch.float32:
            exact = torch.einsum("qd,qkd->qk", queries, self.bank[best_index].float())
            best_scores, order = exact.sort(dim=1, descending=True)
            best_index = best_index.gather(1, order)
        return best_scores.float(), best_index


SEARCH_BACKENDS = {"exact": ExactSearch, "faiss": FaissSearch, "scann": ScannSearch}
SearchBackend = ExactSearch | FaissSearch | ScannSearch


def search_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` for backend `name` checked and completed with the backend's defaults; ValueError if unknown or
    invalid (one line naming the option)."""
    if name not in SEARCH_BACKENDS:
        raise ValueError(f"unknown search backend {name!r}; available: {sorted(SEARCH_BACKENDS)}")
    try:
        return SEARCH_BACKENDS[name].Options(**options).model_dump()
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        allowed = ", ".join(SEARCH_BACKENDS[name].Options.model_fields) or "none"
        if first["type"] == "extra_forbidden":
            raise ValueError(f"search backend {name!r} has no option {where!r} (its options: {allowed})") from None
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"search backend {name!r}: {where + ': ' if where else ''}{message}") from None


def make_search(name: str, bank: torch.Tensor, dtype: str = "float32", **options: Any) -> SearchBackend:
    """Build the search backend `name` over `bank` (stored in `dtype`), with its `options`."""
    try:
        options = search_options(name, options)
    except ValueError as err:
        raise UserError(str(err)) from None
    return SEARCH_BACKENDS[name](bank, dtype=dtype, **options)
