"""NeCo's linear segmentation on VOC (vpariza/NeCo experiments/linear_segmentation, docs/protocols.md §3).

A 1×1 convolution on the frozen dense features, bilinearly upsampled (align_corners=False) to 100×100, is trained
with cross-entropy (ignore 255) on VOC trainaug: SGD lr 0.01, momentum 0.9, weight decay 1e-4, batches of 128
images in file order with the last incomplete batch dropped (the reference's loader: no shuffle, drop_last), 25
epochs, lr ×0.1 from epoch 20. Images are squashed to 448; masks PIL-nearest to 448, then torch-nearest to 100.
Scored on val at 100×100 with predicted class ids taken as they are (no matching).

The head runs on the patch grid and its logits are upsampled: the 1×1 conv and the bilinear upsampling are both
linear and the upsampling weights sum to 1, so this equals the reference's conv on upsampled features, at a tenth
of the cost. The frozen method is queried once per split and its features cached (fp16 by default). Deliberate
differences: the reference trains on RandomResizedCrop(scale 0.8-1) + horizontal-flip views, re-encoded each
epoch; that is `augment: true` (variant `augmented`) — the default trains on the squashed training images;
a split smaller than one batch trains on that one batch (the reference's drop_last would train on nothing).
`miou` is the head after the last epoch on every val image. The reference validates after every epoch and keeps
the best checkpoints by val mIoU (model selection on the evaluation set), on the val images its loader keeps
(batch 128, drop_last: 1408 of 1449); that number is `miou_best_epoch`.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn
from torchvision.transforms import InterpolationMode

from harness.data.base import DatasetReader, SegmentationSplit
from harness.data.transforms import random_resized_crop_params, resize_mask_nearest
from harness.errors import DataError, UserError
from harness.protocols.base import Outcome, Protocol, ProtocolParams, RunContext, dense_geometry
from harness.protocols.common import neco_eval_sample, train_eval_splits
from harness.protocols.metrics import confusion_matrix, miou_identity

CROP_SCALE = (0.8, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CACHE_DTYPES = {"float32": np.float32, "float16": np.float16}


class LinearSegParams(ProtocolParams):
    train_split: str = "trainaug"
    eval_split: str = "val"
    input_size: PositiveInt = 448  # rounded down to a multiple of the patch size
    mask_size: PositiveInt = 100
    lr: PositiveFloat = 0.01
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: NonNegativeFloat = 1e-4
    batch_size: PositiveInt = 128  # training images per SGD step; also the reference's val loader batch
    epochs: PositiveInt = 25
    drop_at: PositiveInt = 20  # lr × decay_rate every drop_at epochs (StepLR)
    decay_rate: PositiveFloat = 0.1
    augment: bool = False  # the reference's random crop + flip, re-encoded every epoch
    cache_dtype: Literal["float32", "float16"] = "float16"


def interpolation_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of torch's 1-D linear resize (align_corners=False); bilinear = one per axis."""
    return F.interpolate(torch.eye(n_in)[None], size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


class LinearHead(nn.Module):
    """1×1 conv (torch's default init) on (B, g, g, D) features; logits (B, C, S, S) bilinearly upsampled."""

    def __init__(self, dim: int, num_classes: int, grid: int, size: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, num_classes, 1)
        self.register_buffer("up", interpolation_matrix(grid, size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = features @ self.conv.weight[:, :, 0, 0].T + self.conv.bias  # (B, g, g, C)
        return self.up @ logits.permute(0, 3, 1, 2) @ self.up.T


def batch_starts(n: int, batch_size: int) -> range:
    """Start of each training batch: full batches only (drop_last); one short batch when n < batch_size."""
    return range(0, n - batch_size + 1, batch_size) if n >= batch_size else range(0, min(n, 1))


def train_epoch(
    head: LinearHead,
    optimizer: torch.optim.Optimizer,
    features: np.ndarray,
    masks: np.ndarray,
    batch_size: int,
    ignore_index: int,
    device: str,
) -> float:
    """One pass in file order; returns the mean batch loss (NaN if no batch had a labelled pixel)."""
    losses = []
    head.train()
    for start in batch_starts(len(features), batch_size):
        x = torch.from_numpy(features[start : start + batch_size]).to(device, torch.float32)
        y = torch.from_numpy(masks[start : start + batch_size]).to(device, torch.int64)
        if not (y != ignore_index).any():
            continue  # cross-entropy of no pixel is 0/0
        loss = F.cross_entropy(head(x), y, ignore_index=ignore_index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


@torch.no_grad()
def predict(head: LinearHead, features: np.ndarray, device: str, chunk: int = 64) -> np.ndarray:
    """Predicted class maps (N, S, S) int64."""
    head.eval()
    parts = [
        head(torch.from_numpy(features[i : i + chunk]).to(device, torch.float32)).argmax(1).cpu()
        for i in range(0, len(features), chunk)
    ]
    return torch.cat(parts).numpy()


def neco_train_sample(
    split: SegmentationSplit, size: int, mask_size: int, seed: int, epoch: int, i: int
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's training view: RandomResizedCrop(size, scale 0.8-1) (image bilinear, mask PIL-nearest), a
    horizontal flip with p=0.5, mask torch-nearest to mask_size; drawn from a generator seeded by (seed, epoch, i)."""
    rng = np.random.default_rng([seed, epoch, i])
    image, mask = Image.fromarray(split.image(i)), Image.fromarray(split.mask(i))
    box = random_resized_crop_params(image.height, image.width, CROP_SCALE, CROP_RATIO, rng)
    image = np.asarray(TF.resized_crop(image, *box, [size, size], InterpolationMode.BILINEAR))
    mask = np.array(TF.resized_crop(mask, *box, [size, size], InterpolationMode.NEAREST))
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), resize_mask_nearest(mask, mask_size)


class LinearSegProtocol(Protocol):
    name = "linear_seg"
    Params = LinearSegParams
    output = "dense"
    main_metric = "miou"
    params: LinearSegParams

    def run(self, data: DatasetReader, ctx: RunContext) -> Outcome:
        p = self.params
        patch, dim, size = dense_geometry(ctx.session.info, p.input_size)
        grid = size // patch
        train, val = train_eval_splits(data, p.train_split, p.eval_split)
        if len(train) == 0 or len(val) == 0:
            raise DataError(f"split {p.train_split if len(train) == 0 else p.eval_split!r} is empty")

        val_feats, val_masks = self._encode(
            partial(neco_eval_sample, val, size, p.mask_size), len(val), grid, dim, ctx, "linear_seg eval"
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            head = LinearHead(dim, val.num_classes, grid, p.mask_size).to(ctx.device)
        optimizer = torch.optim.SGD(head.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=p.drop_at, gamma=p.decay_rate)
        n_ref = len(val) - len(val) % p.batch_size if len(val) >= p.batch_size else len(val)
        history: dict[str, list[float]] = {"loss": [], "miou": [], "miou_ref_images": []}
        train_data = (None, None)
        for epoch in range(p.epochs):
            if train_data[0] is None or p.augment:
                load = (
                    partial(neco_train_sample, train, size, p.mask_size, ctx.seed, epoch)
                    if p.augment
                    else (partial(neco_eval_sample, train, size, p.mask_size))
                )
                desc = f"linear_seg train {epoch + 1}" if p.augment else "linear_seg train"
                train_data = self._encode(load, len(train), grid, dim, ctx, desc, out=train_data)
            with ctx.evaluating():
                loss = train_epoch(head, optimizer, *train_data, p.batch_size, val.ignore_index, ctx.device)
                history["loss"].append(loss)
                scheduler.step()
                predicted = predict(head, val_feats, ctx.device)
                ref = confusion_matrix(val_masks[:n_ref], predicted[:n_ref], val.num_classes, val.ignore_index)
                rest = confusion_matrix(val_masks[n_ref:], predicted[n_ref:], val.num_classes, val.ignore_index)
                history["miou_ref_images"].append(100 * miou_identity(ref)[0])
                history["miou"].append(100 * miou_identity(ref + rest)[0])
        return self._outcome(history, ref + rest, len(train), len(val), n_ref, size, grid)

    def _encode(
        self, load, n: int, grid: int, dim: int, ctx: RunContext, desc: str, out=(None, None)
    ) -> tuple[np.ndarray, np.ndarray]:
        """Dense features (n, grid, grid, D) in cache_dtype and masks (n, S, S) uint8, into `out` when given."""
        ms = self.params.mask_size
        features, masks = out
        if features is None:
            features = np.empty((n, grid, grid, dim), dtype=CACHE_DTYPES[self.params.cache_dtype])
            masks = np.empty((n, ms, ms), dtype=np.uint8)
        filled = 0
        for images, batch_masks in ctx.batches(n, load, desc):
            out = ctx.embed_dense(images, grid, dim)
            if np.abs(out).max(initial=0) > np.finfo(features.dtype).max:
                raise UserError(f"dense features overflow cache_dtype {features.dtype}; set cache_dtype: float32")
            features[filled : filled + len(images)] = out
            masks[filled : filled + len(images)] = batch_masks
            filled += len(images)
        return features, masks

    def _outcome(
        self, history: dict, conf: np.ndarray, n_train: int, n_val: int, n_ref: int, size: int, grid: int
    ) -> Outcome:
        p = self.params
        miou, per_class = miou_identity(conf)
        best = int(np.argmax(history["miou_ref_images"]))
        used = len(batch_starts(n_train, p.batch_size)) * min(p.batch_size, n_train)
        details = {
            "input_size": size,
            "patch_grid": grid,
            "train_images": n_train,
            "train_images_used": used,
            "eval_images": n_val,
            "eval_images_reference": n_ref,
            "best_epoch": best + 1,
            "train_loss_per_epoch": [None if np.isnan(v) else round(v, 6) for v in history["loss"]],
            "miou_per_epoch": [round(v, 4) for v in history["miou"]],
            "miou_reference_images_per_epoch": [round(v, 4) for v in history["miou_ref_images"]],
            "pixels_scored": int(conf.sum()),
            "per_class_iou": (100 * per_class).round(4).tolist(),
        }
        notes = [
            "miou: head after the last epoch, all val images; miou_best_epoch: best epoch-end val mIoU on the images "
            "the reference's loader keeps (it selects checkpoints on val)",
            "trained on the reference's augmented views, re-encoded every epoch"
            if p.augment
            else "trained on cached features of the squashed training images (the reference augments: see `augment`)",
        ]
        if used < n_train:
            notes.append(f"{n_train - used} training images after the last full batch of {p.batch_size} unused")
        if n_train < p.batch_size:
            notes.append(f"the {n_train} training images are fewer than one batch of {p.batch_size}: one short batch")
        if size != p.input_size:
            notes.append(f"input_size {p.input_size} rounded down to {size}, a multiple of the patch size")
        metrics = {"miou": 100 * miou, "miou_best_epoch": history["miou_ref_images"][best]}
        return Outcome(metrics=metrics, details=details, notes=notes)
