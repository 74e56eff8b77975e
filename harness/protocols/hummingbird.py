"""HummingBird in-context semantic segmentation (open-hummingbird-eval HEAD 5e79da2, docs/protocols.md §1).

A memory of L2-normalised patch features with soft labels (class histogram of each patch) is built from augmented
training images; each query patch of a squashed S×S evaluation image takes the softmax(cos/T)-weighted mean label
of its k nearest memory patches; the label map is upsampled bilinearly to S×S and scored by one dataset-level
confusion matrix against the nearest-resized ground truth.

Differences from the reference, all deliberate: per-sample random generators (augmentation and sampling noise
depend on (seed, epoch, image) only, not on batch size, workers or torch's global RNG); the crop is resized from the
uint8 image with PIL (the reference resizes the normalised float tensor; the two differ by under one grey level);
an all-zero feature is normalised to zero rather than NaN; a memory_size asking for more patches per image than an
image has, or k above the memory size, is a clear error instead of a crash. Masks are resized with torch's
"nearest", exactly as the reference. Like HEAD (unlike older versions with drop_last) every evaluation image counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator

from harness.contract import FitBatch
from harness.data.base import DatasetReader, SegmentationSplit
from harness.data.transforms import hbird_train_augment, resize_mask_nearest, squash_resize
from harness.errors import DataError, UserError
from harness.protocols.base import Outcome, Protocol, ProtocolParams, RunContext, dense_geometry
from harness.protocols.common import train_eval_splits
from harness.protocols.metrics import confusion_matrix, hungarian_mapping, miou_hungarian, miou_identity
from harness.protocols.search import (
    MEMORY_DTYPES,
    SEARCH_BACKENDS,
    ExactSearch,
    l2_normalize,
    make_search,
    search_options,
)

UNLABELLED = 255  # mapped to class 0 in the memory's soft labels, as the reference does


class HummingbirdParams(ProtocolParams):
    train_split: str = "trainaug"
    eval_split: str = "val"
    input_size: PositiveInt = 512  # rounded down to a multiple of the patch size: 512 for /16, 504 for /14
    memory_size: PositiveInt | None = 102_400  # None = every patch of every augmented image
    aug_epochs: PositiveInt = 2
    k: PositiveInt = 30
    temperature: PositiveFloat = 0.02
    num_train_samples: PositiveInt | None = None  # FUNGI data-efficient: a seeded random subset of this size
    search: str = "exact"
    search_options: dict[str, Any] = Field(default_factory=dict, validate_default=True)  # checked, defaults filled
    memory_dtype: Literal["float32", "float16"] = "float32"

    @field_validator("search")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        if name not in SEARCH_BACKENDS:
            raise ValueError(f"unknown search backend {name!r}; available: {sorted(SEARCH_BACKENDS)}")
        return name

    @field_validator("search_options")
    @classmethod
    def _backend_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return search_options(info.data["search"], options) if "search" in info.data else options


def train_subset(n_train: int, num_samples: int | None, seed: int) -> np.ndarray:
    """Indices of the training images used: all, or (FUNGI's data-efficient setting, which draws
    torch.randperm(n)[:N]) a random subset of `num_samples` drawn from `seed`, sorted."""
    if num_samples is None:
        return np.arange(n_train)
    if num_samples > n_train:
        raise UserError(f"num_train_samples={num_samples} exceeds the {n_train} training images")
    return np.sort(np.random.default_rng(seed).permutation(n_train)[:num_samples])


def patches_per_image(memory_size: int | None, n_train: int, aug_epochs: int, n_patches: int) -> int:
    """K = max(1, M // (N_train · aug_epochs)) patches kept per augmented image (all patches when unbounded)."""
    if memory_size is None:
        return n_patches
    k = max(1, memory_size // (n_train * aug_epochs))
    if k > n_patches:
        raise UserError(
            f"memory_size={memory_size} asks for {k} patches per image ({n_train} training images × {aug_epochs} "
            f"augmentation epochs), but an image has only {n_patches}; use memory_size ≤ "
            f"{n_patches * n_train * aug_epochs} or null (unbounded)"
        )
    return k


def patch_class_counts(masks: np.ndarray, patch: int, num_classes: int) -> np.ndarray:
    """int64 (B, h·w, C): pixels of each class in each patch (row-major); 255 counts as class 0, as the reference."""
    masks = np.asarray(masks)
    b, height, width = masks.shape
    gh, gw = height // patch, width // patch
    classes = np.where(masks == UNLABELLED, 0, masks).astype(np.intp).reshape(b, gh, patch, gw, patch)
    if classes.max(initial=0) >= num_classes:
        raise DataError(f"a training mask holds class id {classes.max()}, but the dataset has {num_classes} classes")
    classes += np.arange(b * gh * gw, dtype=np.intp).reshape(b, gh, 1, gw, 1) * num_classes  # one bin per patch
    counts = np.bincount(classes.ravel(), minlength=b * gh * gw * num_classes)
    return counts.reshape(b, gh * gw, num_classes)


def select_patches(counts: np.ndarray, k: int, noise: np.ndarray) -> np.ndarray:
    """HummingBird's bounded-memory sampling: (B, k) indices of the k lowest-scoring patches of each image.

    Score = Σ over the classes present in the patch of the number of the image's patches containing that class,
    times `noise` (U(0,1), shape (B, n)), so patches of rare classes come first. Every patch has pixels, hence a
    class, so every patch is "non-empty" and gets noise (the reference's 1e6 for empty patches never applies).
    """
    present = (counts > 0).astype(np.float64)
    scores = np.einsum("bnc,bc->bn", present, present.sum(1)) * noise
    return np.argsort(scores, axis=1, kind="stable")[:, :k]


def memory_entries(
    features: np.ndarray, counts: np.ndarray, keep: np.ndarray | None, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows for the memory from (B, h, w, D) features and (B, h·w, C) counts, restricted to `keep` (B, K) when
    given: L2-normalised features (B·K, D) and soft labels (B·K, C), float32 on `device`."""
    features = features.reshape(len(features), -1, features.shape[-1])
    if keep is not None:
        features = np.take_along_axis(features, keep[..., None], 1)
        counts = np.take_along_axis(counts, keep[..., None], 1)
    soft_labels = counts / counts.sum(-1, keepdims=True)
    features = l2_normalize(torch.from_numpy(np.ascontiguousarray(features)).to(device))
    soft_labels = torch.from_numpy(soft_labels.astype(np.float32)).to(device)
    return features.reshape(-1, features.shape[-1]), soft_labels.reshape(-1, soft_labels.shape[-1])


def transfer_labels(
    scores: torch.Tensor, index: torch.Tensor, label_bank: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(Q, C) softmax(scores / T)-weighted mean of the neighbours' soft labels (scores, index: (Q, k))."""
    weights = torch.softmax(scores / temperature, dim=1)
    return torch.einsum("qk,qkc->qc", weights, label_bank[index])


def predict_masks(
    features: torch.Tensor, search: ExactSearch, label_bank: torch.Tensor, k: int, temperature: float, size: int
) -> np.ndarray:
    """Class map (B, size, size) for dense query features (B, h, w, D): label transfer from the k nearest memory
    patches, bilinear upsampling (align_corners=False) of the label map, argmax."""
    b, h, w, dim = features.shape
    scores, index = search.search(l2_normalize(features.reshape(-1, dim)), k)
    predictions = []
    for image_scores, image_index in zip(scores.reshape(b, h * w, k), index.reshape(b, h * w, k)):
        label_map = transfer_labels(image_scores, image_index, label_bank, temperature).T.reshape(1, -1, h, w)
        upsampled = F.interpolate(label_map, size=(size, size), mode="bilinear", align_corners=False)
        predictions.append(upsampled[0].max(0).indices)  # as argmax (first maximum), four times faster on CPU
    return torch.stack(predictions).cpu().numpy()


def load_train_sample(
    split: SegmentationSplit, ids: np.ndarray, size: int, seed: int, epoch: int, n_patches: int, i: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented image and mask of training image ids[i], and its sampling noise, all from one generator
    seeded by (seed, epoch, image index)."""
    index = int(ids[i])
    rng = np.random.default_rng([seed, epoch, index])
    image, mask = hbird_train_augment(split.image(index), split.mask(index), size, rng)
    return image, mask, rng.random(n_patches)


def load_eval_sample(split: SegmentationSplit, size: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    return squash_resize(split.image(i), size), resize_mask_nearest(split.mask(i), size)


class MemoryPlan(NamedTuple):
    """What a run builds its memory from: the splits, the training images used (indices), the input size, the
    method's patch size and width, patches kept per augmented image and the memory's rows. On procedural data a
    memory_size larger than its few training images can fill keeps every patch, and a num_train_samples above them
    takes them all, each with a note (real data: an error)."""

    train: SegmentationSplit
    val: SegmentationSplit
    ids: np.ndarray
    size: int
    patch: int
    dim: int
    per_image: int
    rows: int
    every_patch: bool  # the memory keeps every patch (unbounded, or on procedural data too few images)
    notes: list[str]  # where procedural data cannot give what the task asks


class HummingbirdProtocol(Protocol):
    name = "hummingbird"
    version = 2  # 2: ScaNN's tree initialised by k-means++ (ann.py), so its numbers no longer vary by process
    Params = HummingbirdParams
    output = "dense"
    main_metric = "miou"
    params: HummingbirdParams

    def plan(self, data: DatasetReader, ctx: RunContext) -> MemoryPlan:
        p = self.params
        patch, dim, size = dense_geometry(ctx.session.info, p.input_size)
        train, val = train_eval_splits(data, p.train_split, p.eval_split)
        n_patches, samples, notes = (size // patch) ** 2, p.num_train_samples, []
        if ctx.procedural and samples is not None and samples > len(train):
            samples = None
            notes.append(f"num_train_samples={p.num_train_samples}: the procedural stand-in has {len(train)}, all used")
        ids = train_subset(len(train), samples, ctx.seed)
        every_patch = p.memory_size is None
        try:
            per_image = patches_per_image(p.memory_size, len(ids), p.aug_epochs, n_patches)
        except UserError:
            if not ctx.procedural:
                raise
            per_image, every_patch = n_patches, True
            notes.append(
                f"memory_size={p.memory_size} needs more training images than the procedural stand-in has "
                f"({len(ids)}): every patch of every augmented image is kept"
            )
        rows = per_image * len(ids) * p.aug_epochs
        if p.k > rows:
            raise UserError(f"k={p.k} neighbours exceeds the {rows} patches of the memory")
        return MemoryPlan(train, val, ids, size, patch, dim, per_image, rows, every_patch, notes)

    def memory_batches(
        self, m: MemoryPlan, ctx: RunContext, stage: str = "memory"
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(images, patch class counts (B, h·w, C), kept patch indices (B, K) or None for all) of every augmentation
        epoch, in order: the memory's training batches, which a method's fit stage gets too. Counting and selecting
        patches is timed as the evaluator's work."""
        p, grid = self.params, m.size // m.patch
        for epoch in range(p.aug_epochs):
            load = partial(load_train_sample, m.train, m.ids, m.size, ctx.seed, epoch, grid * grid)
            desc = f"hummingbird {stage} {epoch + 1}/{p.aug_epochs}"
            for images, masks, noise in ctx.batches(len(m.ids), load, desc):
                with ctx.evaluating():
                    counts = patch_class_counts(masks, m.patch, m.train.num_classes)
                    keep = None if m.every_patch else select_patches(counts, m.per_image, noise)
                yield images, counts, keep

    def fit_batches(self, data: DatasetReader, ctx: RunContext) -> Iterator[FitBatch]:
        """The memory's augmented training images, every epoch, with the patches the memory keeps of each (when the
        task's fit_labels allows them: the selection is label-driven); masks never leave the harness."""
        for images, counts, keep in self.memory_batches(self.plan(data, ctx), ctx, stage="fit"):
            keep = np.tile(np.arange(counts.shape[1]), (len(images), 1)) if keep is None else keep
            yield FitBatch(images, None, keep.astype(np.int64))

    def run(self, data: DatasetReader, ctx: RunContext) -> Outcome:
        p = self.params
        m = self.plan(data, ctx)
        train, val, ids, size, patch, dim, per_image, rows = m[:8]
        bank, label_bank = self._build_memory(m, ctx)
        with ctx.evaluating():  # building an index (faiss, ScaNN) is the evaluator's work
            search = make_search(p.search, bank, dtype=p.memory_dtype, **p.search_options)
        del bank  # what the backend needs, it holds
        conf = self._confusion(val, search, label_bank, size, patch, dim, ctx)

        details = {
            "input_size": size,
            "patch_grid": size // patch,
            "memory_rows": rows,
            "patches_per_image": per_image,
            "train_images": len(ids),
            "eval_images": len(val),
        }
        if len(ids) < len(train):
            details["train_ids"] = [train.ids[i] for i in ids]
        notes = [f"search '{p.search}' (the published HummingBird numbers use approximate ScaNN)", *m.notes]
        if not getattr(search, "reproducible", True):
            notes.append(f"{p.search} with {p.search_options}: not reproducible, this number may vary run to run")
        if size != p.input_size:
            notes.append(f"input_size {p.input_size} rounded down to {size}, a multiple of the patch size {patch}")
        return segmentation_outcome(conf, details, notes)

    def _build_memory(self, m: MemoryPlan, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (rows, D) in memory_dtype, soft labels (rows, C) float32) on ctx.device."""
        bank = torch.empty((m.rows, m.dim), dtype=MEMORY_DTYPES[self.params.memory_dtype], device=ctx.device)
        label_bank = torch.empty((m.rows, m.train.num_classes), dtype=torch.float32, device=ctx.device)
        filled = 0
        for images, counts, keep in self.memory_batches(m, ctx):
            features = ctx.embed_dense(images, m.size // m.patch, m.dim)
            with ctx.evaluating():
                entries, labels = memory_entries(features, counts, keep, ctx.device)
                bank[filled : filled + len(entries)] = entries.to(bank.dtype)
                label_bank[filled : filled + len(entries)] = labels
                filled += len(entries)
        return bank, label_bank

    def _confusion(
        self,
        val: SegmentationSplit,
        search: ExactSearch,
        label_bank: torch.Tensor,
        size: int,
        patch: int,
        dim: int,
        ctx: RunContext,
    ) -> np.ndarray:
        """Dataset-level confusion matrix of the transferred labels against the S×S ground truth."""
        p = self.params
        conf = np.zeros((val.num_classes, val.num_classes), dtype=np.int64)
        load = partial(load_eval_sample, val, size)
        for images, masks in ctx.batches(len(val), load, "hummingbird eval"):
            features = ctx.embed_dense(images, size // patch, dim)
            with ctx.evaluating():
                query = torch.from_numpy(features).to(ctx.device)
                predicted = predict_masks(query, search, label_bank, p.k, p.temperature, size)
                conf += confusion_matrix(masks, predicted, val.num_classes, val.ignore_index)
        return conf


def segmentation_outcome(conf: np.ndarray, details: dict, notes: list[str]) -> Outcome:
    """`miou` (Hungarian-matched, reference-compatible) and `miou_identity`, ×100, with per-class IoUs."""
    miou, per_class = miou_hungarian(conf)
    miou_id, per_class_id = miou_identity(conf)
    remapped = {str(pred): int(gt) for pred, gt in enumerate(hungarian_mapping(conf)) if pred != gt}
    if remapped:
        notes.append(f"Hungarian matching remapped {len(remapped)} predicted class ids (see miou vs miou_identity)")
    details = {
        **details,
        "pixels_scored": int(conf.sum()),
        "per_class_iou": (100 * per_class).round(4).tolist(),
        "per_class_iou_identity": (100 * per_class_id).round(4).tolist(),
        "hungarian_remapped": remapped,
    }
    return Outcome(metrics={"miou": 100 * miou, "miou_identity": 100 * miou_id}, details=details, notes=notes)
