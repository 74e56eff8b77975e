"""Frozen-backbone classification head on the patch grid (seed 001's Imagenette protocol, docs/protocols.md §7).

Images are squashed to 224×224 (PIL bilinear, no crop, no augmentation) and embedded once. Each patch vector is
L2-normalised, the grid is flattened row-major to one vector of h·w·D values, and a head LayerNorm(h·w·D) → dropout
0.5 → linear is trained with cross-entropy; top-1 on the evaluation split after the last epoch. Normalising the
flattened vector as a whole instead would be a no-op, since LayerNorm is invariant to rescaling its input, so the
normalisation is read as per patch. The reference gives no optimiser: AdamW (lr 1e-3, weight decay 0.01, torch's
default), batch 64, 20 epochs, cosine decay of the lr per step, all parameters. Initialisation, shuffling and
dropout draw from the run's seed only. The evaluation-split accuracy is also recorded after every epoch, for the
curve only: the headline is the last epoch's, never the best one.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from harness.data.base import ClassificationSplit, DatasetReader
from harness.errors import DataError
from harness.protocols.base import Outcome, Protocol, ProtocolParams, RunContext, dense_geometry
from harness.protocols.common import squashed_image, train_eval_splits
from harness.protocols.search import MEMORY_DTYPES, l2_normalize


class FrozenHeadParams(ProtocolParams):
    train_split: str = "train"
    eval_split: str = "val"
    input_size: PositiveInt = 224  # squashed; rounded down to a multiple of the patch size
    epochs: PositiveInt = 20
    train_batch_size: PositiveInt = 64
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.01
    dropout: float = Field(default=0.5, ge=0, lt=1)
    feature_dtype: Literal["float32", "float16"] = "float32"  # how the extracted features are kept


def flatten_patch_grid(features: torch.Tensor) -> torch.Tensor:
    """(N, h, w, D) -> (N, h·w·D) float32: each patch vector L2-normalised, the grid flattened row-major."""
    return l2_normalize(features).flatten(1)


def make_head(in_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """LayerNorm (elementwise affine, eps 1e-5) → dropout → linear, torch's default initialisation."""
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, num_classes))


@torch.no_grad()
def predict(head: nn.Module, features: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted class of each row (eval mode: no dropout)."""
    head.eval()
    return torch.cat([head(chunk.float()).argmax(1) for chunk in features.split(batch_size)])


def train_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    p: FrozenHeadParams,
    seed: int,
    eval_set: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train the head on (N, F) features; returns it and per-epoch {loss (mean over samples), eval_top1}."""
    device = features.device
    cuda = [device.index or 0] if device.type == "cuda" else []
    history = []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        head = make_head(features.shape[1], num_classes, p.dropout).to(device)
        optimiser = torch.optim.AdamW(head.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        steps = p.epochs * math.ceil(len(features) / p.train_batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        shuffle = torch.Generator().manual_seed(seed)
        for _ in range(p.epochs):
            head.train()
            total = 0.0
            for batch in torch.randperm(len(features), generator=shuffle).to(device).split(p.train_batch_size):
                loss = F.cross_entropy(head(features[batch].float()), labels[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                total += loss.item() * len(batch)
            epoch = {"loss": total / len(features)}
            if eval_set is not None:
                epoch["eval_top1"] = top1(predict(head, eval_set[0]), eval_set[1])
            history.append(epoch)
    return head, history


def top1(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return 100 * (predicted == labels).float().mean().item()


class FrozenHeadProtocol(Protocol):
    name = "frozen_head"
    Params = FrozenHeadParams
    output = "dense"
    main_metric = "top1"
    params: FrozenHeadParams

    def run(self, data: DatasetReader, ctx: RunContext) -> Outcome:
        p = self.params
        patch, dim, size = dense_geometry(ctx.session.info, p.input_size)
        train, test = train_eval_splits(data, p.train_split, p.eval_split)
        if len(train) == 0 or len(test) == 0:
            raise DataError(f"split {p.train_split if len(train) == 0 else p.eval_split!r} is empty")
        train_x = self._features(train, size, patch, dim, ctx, "frozen_head train")
        test_x = self._features(test, size, patch, dim, ctx, "frozen_head eval")
        with ctx.evaluating():
            labels = {s: torch.as_tensor(s.labels, dtype=torch.int64, device=ctx.device) for s in (train, test)}
            head, history = train_head(train_x, labels[train], train.num_classes, p, ctx.seed, (test_x, labels[test]))
            accuracy = top1(predict(head, test_x), labels[test])
        details = {
            "input_size": size,
            "patch_grid": size // patch,
            "head_inputs": train_x.shape[1],
            "train_images": len(train),
            "eval_images": len(test),
            "epochs": history,
        }
        notes = ["optimiser not given by the reference: AdamW, cosine lr, see the task's params"]
        return Outcome(metrics={"top1": accuracy}, details=details, notes=notes)

    def _features(
        self, split: ClassificationSplit, size: int, patch: int, dim: int, ctx: RunContext, desc: str
    ) -> torch.Tensor:
        """(N, h·w·D) flattened, per-patch L2-normalised dense features of a split, on ctx.device."""
        grid = size // patch
        out = torch.empty(
            (len(split), grid * grid * dim), dtype=MEMORY_DTYPES[self.params.feature_dtype], device=ctx.device
        )
        filled = 0
        for (images,) in ctx.batches(len(split), partial(squashed_image, split, size=size), desc):
            features = ctx.embed_dense(images, grid, dim)
            with ctx.evaluating():
                out[filled : filled + len(images)] = flatten_patch_grid(torch.from_numpy(features).to(ctx.device))
            filled += len(images)
        return out
