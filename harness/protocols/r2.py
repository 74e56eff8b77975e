"""Zero-shot R² of dense features on COCO (seed 000's figures_segmentation_zeroshot notebook, docs/protocols.md §5).

Each val2017 image is squashed to 448×448 (bilinear without antialiasing, as cv2.resize) and its patch features are
upsampled bilinearly to 112×112. Per image, a 3-component PCA (sklearn, default solver, random_state=0, fitted on the
image's own pixels) is min-max scaled per component; the ground-truth classes (nearest-resized to 112×112) of the
foreground pixels then partition those colours, and inertia = within-class / total sum of squares. Score
= 100 · (1 − mean inertia) over the images that have a value.

`r2` reproduces the reference's quirks:
- the total sum of squares is taken about the scalar mean of all elements, not the per-component mean, which also
  makes it depend on each component's sign (sklearn ≥ 1.5 fixes signs from the components, older versions from the
  projections, so the reference itself changes with the sklearn version);
- "background" is the smallest class id present after np.unique relabelling: in an image with no class-0 pixel
  the smallest object class is dropped instead, and an image covered by one class is skipped;
- a NaN inertia (no foreground, a constant PCA component, 0/0) silently drops the image.
`r2_vector_mean` corrects both (per-component mean; class 0 alone is background) and likewise skips an image only
when its inertia is undefined. Differences otherwise: float64 arithmetic after the float32 PCA (the reference
stays in float32), and the image resize differs from OpenCV's fixed-point one by at most one grey level.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from sklearn.decomposition import PCA

from harness.data.base import DatasetReader, SegmentationSplit
from harness.data.transforms import resize_mask_nearest, squash_resize_linear
from harness.errors import DataError, MethodFailure, UserError
from harness.protocols.base import Outcome, Protocol, ProtocolParams, RunContext, dense_geometry


class R2Params(ProtocolParams):
    eval_split: str = "val2017"
    input_size: PositiveInt = 448  # squashed; rounded down to a multiple of the patch size
    eval_size: PositiveInt = 112  # features (bilinear) and ground truth (nearest) are resized to this
    n_components: PositiveInt = 3


def upsample_features(features: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w, D) -> (B, size, size, D), bilinear with align_corners=False (torchvision Resize on a tensor)."""
    out = F.interpolate(features.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False)
    return out.permute(0, 2, 3, 1)


def pca_colours(pixels: np.ndarray, n_components: int = 3) -> np.ndarray:
    """(P, D) -> (P, n_components): the image's own PCA (fit, then transform, as the reference), each component
    min-max scaled to [0, 1]; a constant component becomes NaN, as in the reference."""
    projected = PCA(n_components=n_components, random_state=0).fit(pixels).transform(pixels).astype(np.float64)
    low, high = projected.min(0), projected.max(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (projected - low) / (high - low)


def foreground(mask: np.ndarray, reference: bool) -> np.ndarray:
    """Boolean foreground of a class mask: class ≠ 0, or (reference) class ≠ the smallest id present."""
    return mask != (mask.min() if reference else 0)


def inertia(points: np.ndarray, labels: np.ndarray, scalar_mean: bool) -> float:
    """Σ_k Σ_{x∈k} ‖x − c_k‖² / Σ_x ‖x − x̄‖² for points (n, C) in classes `labels` (n,); x̄ is the mean point, or
    (scalar_mean, the reference) the mean of all elements. NaN when undefined (no points, 0/0, NaN points)."""
    if len(points) == 0:
        return float("nan")
    _, groups = np.unique(labels, return_inverse=True)
    centroids = np.stack([np.bincount(groups, weights=column) for column in points.T], 1) / np.bincount(groups)[:, None]
    within = ((points - centroids[groups]) ** 2).sum()
    total = ((points - (points.mean() if scalar_mean else points.mean(0))) ** 2).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(within / total)


def image_inertias(features: np.ndarray, mask: np.ndarray, n_components: int = 3) -> tuple[float, float]:
    """(reference-compatible, corrected) inertia of one image: features (S, S, D), mask (S, S)."""
    labels = mask.reshape(-1)
    if not foreground(labels, reference=False).any():
        return float("nan"), float("nan")
    colours = pca_colours(features.reshape(-1, features.shape[-1]), n_components)
    scores = []
    for reference in (True, False):
        keep = foreground(labels, reference)
        scores.append(inertia(colours[keep], labels[keep], scalar_mean=reference))
    return scores[0], scores[1]


def load_sample(split: SegmentationSplit, size: int, eval_size: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    return squash_resize_linear(split.image(i), size), resize_mask_nearest(split.mask(i), eval_size)


class R2Protocol(Protocol):
    name = "coco_r2"
    Params = R2Params
    output = "dense"
    main_metric = "r2"
    params: R2Params

    def run(self, data: DatasetReader, ctx: RunContext) -> Outcome:
        p = self.params
        patch, dim, size = dense_geometry(ctx.session.info, p.input_size)
        if p.n_components > min(dim, p.eval_size**2):
            raise UserError(f"n_components={p.n_components} exceeds the method's embed_dim {dim} or the pixel count")
        split = data.split(p.eval_split)
        if len(split) == 0:
            raise DataError(f"split {p.eval_split!r} is empty")
        reference, corrected, no_foreground = [], [], 0
        load = partial(load_sample, split, size, p.eval_size)
        for images, masks in ctx.batches(len(split), load, "coco_r2"):
            features = ctx.embed_dense(images, size // patch, dim)
            with ctx.evaluating():
                upsampled = upsample_features(torch.from_numpy(features).to(ctx.device), p.eval_size).cpu().numpy()
                for image_features, mask in zip(upsampled, masks):
                    no_foreground += not mask.any()
                    ref, cor = image_inertias(image_features, mask, p.n_components)
                    reference.append(ref)
                    corrected.append(cor)
        return r2_outcome(np.array(reference), np.array(corrected), no_foreground, size, p.eval_size)


def r2_outcome(reference: np.ndarray, corrected: np.ndarray, no_foreground: int, size: int, eval_size: int) -> Outcome:
    """`r2` and `r2_vector_mean` = 100 · (1 − mean inertia) over each metric's defined images."""
    if no_foreground == len(reference):
        raise DataError("no evaluation image has a foreground pixel: the R² is undefined")
    metrics, details = (
        {},
        {"input_size": size, "eval_size": eval_size, "images": len(reference), "skipped_no_foreground": no_foreground},
    )
    for name, values in (("r2", reference), ("r2_vector_mean", corrected)):
        defined = ~np.isnan(values)
        if not defined.any():
            raise MethodFailure(f"{name} is undefined on every image (features constant within each image?)")
        metrics[name] = 100 * (1 - float(values[defined].mean()))
        details[f"{name}_images_scored"] = int(defined.sum())
    notes = ["r2 reproduces seed 000's scalar-mean and background quirks; r2_vector_mean corrects them"]
    return Outcome(metrics=metrics, details=details, notes=notes)
