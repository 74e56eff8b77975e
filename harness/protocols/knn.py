"""Weighted k-NN classification on global features, as DINO's eval_knn.py (docs/protocols.md §4).

Features are L2-normalised; each of the k most cosine-similar training images votes exp(sim / T) for its class;
top-1 and top-5 accuracy in percent, ties between classes broken by class index. Top-5 counts only classes that
got a vote: DINO's knn_classifier scores the first min(5, k) columns of its (unstable) descending sort of all
classes, so when fewer classes than that got votes, zero-vote classes fill the rest in an unspecified order and
can count as hits; here a class with no vote is never a hit (same as DINO whenever five or more classes vote).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from harness.contract import FitBatch
from harness.data.base import DatasetReader
from harness.errors import DataError, UserError
from harness.protocols.base import Outcome, Protocol, ProtocolParams, RunContext
from harness.protocols.common import embed_split, fit_split_batches, load_knn_image
from harness.protocols.search import ExactSearch, l2_normalize


class KnnParams(ProtocolParams):
    train_split: str = "train"
    eval_split: str = "val"
    ks: list[PositiveInt] = Field(default_factory=lambda: [10, 20, 100, 200], min_length=1)
    temperature: PositiveFloat = 0.07


def knn_neighbours(train_feats: torch.Tensor, test_feats: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and indices (Q, k) of each test feature's k nearest training features, best first."""
    return ExactSearch(l2_normalize(train_feats)).search(l2_normalize(test_feats), k)


def knn_accuracy(
    sims: torch.Tensor,
    index: torch.Tensor,
    train_labels: torch.Tensor,
    test_labels: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
) -> tuple[float, float]:
    """(top-1, top-5) in percent from the first k of the sorted neighbours; a class with no vote is never a hit."""
    neighbour_labels = train_labels[index[:, :k]]
    votes = torch.zeros(len(sims), num_classes, device=sims.device)
    votes.scatter_add_(1, neighbour_labels, (sims[:, :k] / temperature).exp())
    voted = torch.zeros_like(votes, dtype=torch.bool).scatter_(1, neighbour_labels, True)
    ranked = votes.argsort(dim=1, descending=True, stable=True)[:, :5]
    hits = (ranked == test_labels[:, None]) & voted.gather(1, ranked)
    return 100 * hits[:, 0].float().mean().item(), 100 * hits.any(1).float().mean().item()


def weighted_knn(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    k: int,
    temperature: float,
    num_classes: int,
) -> tuple[float, float]:
    """DINO's weighted k-NN: (top-1, top-5) accuracy in percent."""
    sims, index = knn_neighbours(torch.as_tensor(train_feats), torch.as_tensor(test_feats), k)
    train_labels, test_labels = (torch.as_tensor(labels, dtype=torch.int64) for labels in (train_labels, test_labels))
    return knn_accuracy(sims, index, train_labels, test_labels, k, temperature, num_classes)


class KnnProtocol(Protocol):
    name = "knn"
    Params = KnnParams
    output = "global"
    main_metric = "top1_best"
    params: KnnParams

    def fit_batches(self, data: DatasetReader, ctx: RunContext) -> Iterator[FitBatch]:
        """The training split with the kNN preprocessing, shuffled by the seed (labels where fit_labels allows)."""
        return fit_split_batches(data.split(self.params.train_split), load_knn_image, ctx, "knn fit")

    def run(self, data: DatasetReader, ctx: RunContext) -> Outcome:
        p = self.params
        train, test = data.split(p.train_split), data.split(p.eval_split)
        ks = sorted(set(p.ks))
        usable = [k for k in ks if k <= len(train)]
        if not usable:
            raise UserError(f"every k in {ks} exceeds the {len(train)} training images")
        if len(test) == 0:
            raise DataError(f"split {p.eval_split!r} is empty")
        train_feats = embed_split(train, load_knn_image, ctx, "knn train")
        test_feats = embed_split(test, load_knn_image, ctx, "knn eval", dim=train_feats.shape[1])

        with ctx.evaluating():
            tensor = partial(torch.as_tensor, device=ctx.device)
            sims, index = knn_neighbours(tensor(train_feats), tensor(test_feats), max(usable))
            train_labels = tensor(train.labels, dtype=torch.int64)
            test_labels = tensor(test.labels, dtype=torch.int64)
            per_k = {}
            for k in usable:
                top1, top5 = knn_accuracy(sims, index, train_labels, test_labels, k, p.temperature, train.num_classes)
                per_k[k] = {"top1": top1, "top5": top5}

        best_k = max(per_k, key=lambda k: per_k[k]["top1"])
        metrics = {"top1_best": per_k[best_k]["top1"]}
        if 20 in per_k:
            metrics["top1_k20"] = per_k[20]["top1"]
        notes = [f"k={k} skipped: only {len(train)} training images" for k in ks if k not in per_k]
        details = {
            "per_k": {str(k): v for k, v in per_k.items()},
            "best_k": best_k,
            "train_images": len(train),
            "eval_images": len(test),
        }
        return Outcome(metrics=metrics, details=details, notes=notes)
