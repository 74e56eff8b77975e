"""Unsupervised object segmentation, scored as ClevrTex's CLEVRTEX_Evaluator (karazijal/clevrtex fe982ab,
`ool/clevrtex_eval.py`; docs/protocols.md §6).

Each evaluation image is centre-cropped to a square of side int(0.8 · min(W, H)) and resized to 128×128 (bilinear
image, nearest mask): with PIL as the official CLEVRTEX loader (`resample: pil`), or with torch as the repository's
CentreCrop + Resize pipeline for CLEVR (`resample: tensor`; the image is then rounded to uint8, which the contract
sends, where the reference kept floats). The method returns K soft or hard masks (N, K, H, W) and optionally a
reconstruction (N, 3, H, W) in [0, 1]. A method whose info says `masks_have_background: false` gets a background
slot 1 − Σ masks prepended, as the evaluator's `masks_have_background=False` (the official notebook's setting for
GNM, SPACE and SPAIR); by default (the evaluator's default, used for Slot Attention and GENESIS) every slot is a
candidate for the background. Masks are hard-assigned by argmax (first slot on ties).

Per image, with K slots padded to max(K_pred, max_objects + 1, largest GT id + 1) and a Hungarian matching
maximising IoU between ground-truth and predicted slots; all metrics are means of per-image values, ×100 except MSE:
- `miou_fg` (the paper's mIoU): Σ_{GT i ≥ 1} IoU_i / (num_pairs − 1), num_pairs = slots whose GT or matched
  prediction is non-empty, so each non-empty predicted slot matched to an empty GT slot adds to the denominator
  (reference-compatible quirk); `miou_fg_corrected` divides by the number of non-empty foreground GT masks.
- `miou`: the same over all slots incl. background, over num_pairs (the reference's mIoU); `miou_corrected` over
  the non-empty GT masks (the reference's mIoU_gt).
- `ari_fg`: adjusted Rand index over pixels whose GT is an object; `ari`: over all pixels (sklearn's definition,
  so an image without object pixels scores ARI-FG 1, as the reference).
- `dice` (the reference's DICE), `dice_fg` (DICE_FG): as `miou` and `miou_fg` with the Dice coefficient
  2|G ∩ P| / (|G| + |P|) of each GT slot and its IoU-matched prediction (0 where both are empty) for the IoU.
- `acc` (the reference's acc): 1 where the number of non-empty predicted slots (background slot included) equals
  the number of non-empty GT masks (background included), else 0.
- `msc` (the reference's mSC, mean segmentation covering): Σ_g |G_g| · max_p IoU(G_g, P_p) / Σ_g |G_g| over GT
  segments incl. the background, as the reference computes it: its loops run to range(largest id), so the GT
  segment with the largest id is left out, and so is the prediction matched to the largest GT slot among the
  non-empty ones (predictions are relabelled by their matched GT slot first); `msc_corrected` covers every
  non-empty GT segment with every prediction.
- `mse`: per-image sum over 3·H·W of squared error between the reconstruction and the 128×128 input in [0, 1];
  omitted when the method returns no reconstructions.
Deliberate differences: the reference pads the slots to the largest GT id in its whole batch, which can change
its choice among tied matchings; we pad per image to at least max_objects + 1, which is what a batch of real
ClevrTex images almost always has. Images where a reference metric is 0/0 (NaN in the reference, e.g. no objects)
are left out of that metric's mean and counted in the details; `msc` is undefined where the image has a single GT
segment (the reference raises ZeroDivisionError there).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Literal

import numpy as np
from pydantic import Field, PositiveInt

from harness.contract import FitBatch
from harness.data.base import DatasetReader
from harness.data.clevrtex import ObjectSplit
from harness.data.transforms import center_crop_resize
from harness.errors import DataError, MethodFailure, UserError
from harness.protocols.base import Outcome, Protocol, ProtocolParams, RunContext
from harness.protocols.common import fit_split_batches
from harness.protocols.metrics import adjusted_rand_index, contingency_tables, iou_matrix, matched_ious

FIT_SPLIT = "train"  # what a method's fit stage trains on, as the reference trains every model on it
PERCENT_METRICS = (
    "miou_fg",
    "miou_fg_corrected",
    "ari_fg",
    "miou",
    "miou_corrected",
    "ari",
    "dice",
    "dice_fg",
    "acc",
    "msc",
    "msc_corrected",
)


class ObjsegParams(ProtocolParams):
    eval_split: str = "test"
    crop_fraction: float = Field(default=0.8, gt=0, le=1)
    input_size: PositiveInt = 128
    resample: Literal["pil", "tensor"] = "pil"  # harness.data.transforms.center_crop_resize


def load_objseg_sample(
    split: ObjectSplit, fraction: float, size: int, resample: str, i: int
) -> tuple[np.ndarray, np.ndarray]:
    return center_crop_resize(split.image(i), split.mask(i), fraction, size, resample)


def _load_objseg_nth(fraction: float, size: int, resample: str, split: ObjectSplit, i: int) -> tuple[np.ndarray]:
    return (load_objseg_sample(split, fraction, size, resample, i)[0],)


def hard_assign(masks: np.ndarray, have_background: bool) -> tuple[np.ndarray, int]:
    """Slot id per pixel (N, H, W) by argmax over (N, K, H, W) masks, after prepending 1 − Σ masks as slot 0 when
    the method has no background slot; returns the ids and the number of slots."""
    if not have_background:
        masks = np.concatenate([1 - masks.sum(1, keepdims=True, dtype=masks.dtype), masks], axis=1)
    return masks.argmax(1), masks.shape[1]


def object_scores(gt: np.ndarray, pred: np.ndarray, slots: int) -> dict[str, np.ndarray]:
    """Per-image metrics as fractions (N,) from GT object ids and predicted slot ids (N, H, W), both < `slots`;
    NaN where undefined (0/0), inf where the reference divides a positive IoU sum by zero."""
    tables = contingency_tables(gt, pred, slots, slots)
    ious, matches = (np.stack(column) for column in zip(*map(matched_ious, tables)))
    gt_sizes, pred_sizes = tables.sum(2), tables.sum(1)
    gt_present, pred_present = gt_sizes > 0, pred_sizes > 0
    num_pairs = (gt_present | np.take_along_axis(pred_present, matches, 1)).sum(1)
    num_gt, num_gt_fg = gt_present.sum(1), gt_present[:, 1:].sum(1)
    fg_sum = ious[:, 1:].sum(1)
    overlap = np.take_along_axis(tables, matches[..., None], 2)[..., 0]  # |G_g ∩ P_matches[g]|
    both = gt_sizes + np.take_along_axis(pred_sizes, matches, 1)
    dice = np.divide(2 * overlap, both, out=np.zeros(both.shape), where=both > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "miou_fg": fg_sum / (num_pairs - 1),
            "miou_fg_corrected": fg_sum / num_gt_fg,
            "ari_fg": adjusted_rand_index(tables[:, 1:]),
            "miou": ious.sum(1) / num_pairs,
            "miou_corrected": ious.sum(1) / num_gt,
            "ari": adjusted_rand_index(tables),
            "dice": dice.sum(1) / num_pairs,
            "dice_fg": dice[:, 1:].sum(1) / (num_pairs - 1),
            "acc": (pred_present.sum(1) == num_gt).astype(np.float64),
            **segmentation_covering(tables, matches),
            "unmatched_slots": num_pairs - num_gt,  # non-empty predictions matched to empty GT slots
        }


def segmentation_covering(tables: np.ndarray, matches: np.ndarray) -> dict[str, np.ndarray]:
    """`msc` and `msc_corrected` (N,) from contingency tables (N, K, K) and each GT slot's matched prediction (N, K):
    Σ_g |G_g| · max_p IoU(G_g, P_p) / Σ_g |G_g|, the reference's over g < its largest GT id and p < the largest
    matched slot of a non-empty prediction (see the module docstring); NaN where no GT segment is left."""
    ious, sizes = iou_matrix(tables), tables.sum(2)
    ids = np.arange(tables.shape[1])
    last_gt = np.where(sizes > 0, ids, -1).max(1, keepdims=True)
    last_pred = np.where(np.take_along_axis(tables.sum(1) > 0, matches, 1), ids, -1).max(1)[:, None, None]
    relabelled = np.take_along_axis(ious, matches[:, None, :], 2)  # [n, g, j] = IoU(G_g, P_matches[j])
    kept = np.where(ids < last_gt, sizes, 0)
    with np.errstate(invalid="ignore"):
        return {
            "msc": (kept * np.where(ids < last_pred, relabelled, 0).max(2)).sum(1) / kept.sum(1),
            "msc_corrected": (sizes * ious.max(2)).sum(1) / sizes.sum(1),
        }


def reconstruction_mse(reconstructions: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(N,) Σ over (3, H, W) of the squared error between reconstructions in [0, 1] and uint8 images (N, H, W, 3)."""
    target = images.transpose(0, 3, 1, 2).astype(np.float64) / 255
    return ((reconstructions.astype(np.float64) - target) ** 2).sum((1, 2, 3))


def summarise(per_image: dict[str, np.ndarray], notes: list[str]) -> tuple[dict[str, float], dict]:
    """Means over images (×100 for the ratio metrics), leaving out and counting images where a metric is undefined."""
    metrics, left_out = {}, {}
    for name, values in per_image.items():
        if name == "unmatched_slots":
            continue
        finite = np.isfinite(values)
        if not finite.any():
            notes.append(f"{name} omitted: undefined on every image")
            continue
        metrics[name] = float(values[finite].mean()) * (100 if name in PERCENT_METRICS else 1)
        if not finite.all():
            left_out[name] = int((~finite).sum())
            notes.append(f"{name}: {left_out[name]} images where it is undefined (e.g. no objects) left out")
    unmatched = int((per_image["unmatched_slots"] > 0).sum())
    if unmatched:
        notes.append(
            f"miou_fg and miou (reference) count non-empty predicted slots matched to no object in their "
            f"denominators, on {unmatched} of {len(values)} images; the _corrected metrics do not"
        )
    return metrics, {"images_left_out": left_out, "images_with_unmatched_slots": unmatched}


class ObjsegProtocol(Protocol):
    name = "objseg"
    Params = ObjsegParams
    output = "masks"
    main_metric = "miou_fg"
    lower_is_better = frozenset({"mse"})
    params: ObjsegParams

    def _split(self, data: DatasetReader, name: str) -> ObjectSplit:
        split = data.split(name)
        if not isinstance(split, ObjectSplit):
            raise UserError(f"objseg needs a dataset with object masks; {data.name} has none")
        if len(split) == 0:
            raise DataError(f"split {name!r} of {data.name} is empty")
        return split

    def fit_batches(self, data: DatasetReader, ctx: RunContext) -> Iterator[FitBatch]:
        """The training split's images (never its masks: these models are unsupervised), each preprocessed as the
        evaluation images (the 0.8 centre crop, 128x128), in an order shuffled by the seed (common.fit_split_batches).
        As the reference trains each model on its dataset's training split; a dataset with no training split (ClevrTex
        OOD) cannot fit a model: evaluate one trained elsewhere with `bench run --weights`."""
        p = self.params
        try:
            split = self._split(data, FIT_SPLIT)
        except DataError as e:
            raise DataError(
                f"{e}: no images to fit on (evaluate weights trained elsewhere: bench run --weights)"
            ) from None
        load = partial(_load_objseg_nth, p.crop_fraction, p.input_size, p.resample)
        return fit_split_batches(split, load, ctx, "objseg fit")

    def run(self, data: DatasetReader, ctx: RunContext) -> Outcome:
        p = self.params
        split = self._split(data, p.eval_split)
        have_background = ctx.session.info.masks_have_background
        load = partial(load_objseg_sample, split, p.crop_fraction, p.input_size, p.resample)
        chunks, mses, slot_counts = [], [], set()
        for images, gt in ctx.batches(len(split), load, "objseg eval"):
            masks, reconstructions = ctx.segment(images, p.input_size)
            if mses and (reconstructions is None) != (mses[-1] is None):
                raise MethodFailure("segment returned reconstructions for some batches but not for others")
            with ctx.evaluating():
                labels, k = hard_assign(masks, have_background)
                slot_counts.add(masks.shape[1])
                chunks.append(object_scores(gt, labels, max(k, split.max_objects + 1, int(gt.max()) + 1)))
                mses.append(None if reconstructions is None else reconstruction_mse(reconstructions, images))

        per_image = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
        notes = []
        if mses[0] is None:
            notes.append("mse omitted: the method returned no reconstructions")
        else:
            per_image["mse"] = np.concatenate(mses)
        metrics, details = summarise(per_image, notes)
        details |= {
            "eval_images": len(split),
            "input_size": p.input_size,
            "crop_fraction": p.crop_fraction,
            "resample": p.resample,
            "mask_slots": sorted(slot_counts),
            "masks_have_background": have_background,
        }
        return Outcome(metrics=metrics, details=details, notes=notes)
