"""Segmentation scores from one dataset-level confusion matrix (rows = ground truth, columns = prediction)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """int64 (C, C) counts of (gt, pred) pixel pairs; pixels whose gt is `ignore_index` are dropped."""
    return contingency(gt, pred, num_classes, num_classes, ignore_index)


def iou_matrix(conf: np.ndarray) -> np.ndarray:
    """IoU of every (gt class, pred class) pair of a (..., C_gt, C_pred) confusion; 0 where both are empty."""
    conf = conf.astype(np.float64)
    union = conf.sum(-1, keepdims=True) + conf.sum(-2, keepdims=True) - conf
    return np.divide(conf, union, out=np.zeros_like(conf), where=union > 0)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU of each class taking predicted ids at face value; 0 for a class absent from gt and pred."""
    return np.diag(iou_matrix(conf)).copy()


def miou_identity(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean IoU over all classes (absent ones count 0), no matching; returns (mean, per-class), as fractions."""
    per_class = iou_per_class(conf)
    return float(per_class.mean()), per_class


def hungarian_mapping(conf: np.ndarray) -> np.ndarray:
    """pred id -> gt id maximising total IoU (scipy on 1 − IoU, as the reference); unmatched pred ids map to 0."""
    gt_ids, pred_ids = linear_sum_assignment(1.0 - iou_matrix(conf))
    mapping = np.zeros(conf.shape[1], dtype=np.int64)
    mapping[pred_ids] = gt_ids
    return mapping


def miou_hungarian(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """Reference-compatible mIoU: remap predictions by `hungarian_mapping`, then `miou_identity`."""
    folded = np.zeros((conf.shape[0], conf.shape[0]), dtype=np.int64)
    np.add.at(folded.T, hungarian_mapping(conf), conf.T)
    return miou_identity(folded)


# --- Per-image scores of object masks (id maps; rows = ground truth, columns = prediction) ----------------------


def contingency_tables(gt: np.ndarray, pred: np.ndarray, num_gt: int, num_pred: int) -> np.ndarray:
    """int64 (N, num_gt, num_pred): each image's `contingency` table, from (N, ...) id maps."""
    n = len(gt)
    gt = np.asarray(gt, np.int64).reshape(n, -1)
    if gt.size and (gt.min() < 0 or gt.max() >= num_gt):
        raise ValueError(f"gt has ids outside [0, {num_gt}): {np.unique(gt)[:10]}")
    per_image = gt + np.arange(n)[:, None] * num_gt  # image i's ids become rows i·num_gt ...
    return contingency(per_image, pred, n * num_gt, num_pred).reshape(n, num_gt, num_pred)


def adjusted_rand_index(tables: np.ndarray) -> np.ndarray:
    """(N,) adjusted Rand index of each contingency table (N, true, predicted), as sklearn's adjusted_rand_score:
    2(tp·tn − fn·fp) / ((tp + fn)(fn + tn) + (tp + fp)(fp + tn)) over ordered pixel pairs, and 1 where no pair is
    split or merged (this includes no pixels, one pixel, or a single cluster on both sides)."""
    tables = np.asarray(tables, np.int64)
    n = tables.sum((1, 2))
    same_both = (tables**2).sum((1, 2))
    same_true, same_pred = (tables.sum(2) ** 2).sum(1), (tables.sum(1) ** 2).sum(1)
    tp, fn, fp = same_both - n, same_true - same_both, same_pred - same_both
    tn = n**2 - same_true - same_pred + same_both
    tp, fn, fp, tn = (x.astype(np.float64) for x in (tp, fn, fp, tn))
    denominator = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    perfect = (fn == 0) & (fp == 0)
    return np.where(perfect, 1.0, 2 * (tp * tn - fn * fp) / np.where(perfect, 1.0, denominator))


def matched_ious(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of predicted to ground-truth masks maximising the total IoU, as ClevrTex's evaluator,
    on a square (K, K) table: scipy's linear_sum_assignment(maximize=True) on float32 IoUs, the reference's
    precision, which fixes its choice among tied matchings. Returns the IoU of each ground-truth slot with its
    match (K,) and the matched predicted slot (K,)."""
    if table.ndim != 2 or table.shape[0] != table.shape[1]:
        raise ValueError(f"matched_ious needs a square table, got shape {table.shape}")
    ious = iou_matrix(table).astype(np.float32)
    rows, cols = linear_sum_assignment(ious, maximize=True)
    return ious[rows, cols].astype(np.float64), cols


def contingency(
    gt: np.ndarray, pred: np.ndarray, num_gt: int, num_pred: int, ignore_index: int | None = None
) -> np.ndarray:
    """int64 (num_gt, num_pred) counts of (gt, pred) pixel pairs, e.g. classes × clusters; ignore_index gt dropped."""
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"gt has {gt.size} pixels but pred has {pred.size}")
    if ignore_index is not None:
        keep = gt != ignore_index
        gt, pred = gt[keep], pred[keep]
    for name, values, n in (("gt", gt, num_gt), ("pred", pred, num_pred)):
        if values.size and (values.min() < 0 or values.max() >= n):
            raise ValueError(f"{name} has ids outside [0, {n}): {np.unique(values)[:10]}")
    return np.bincount(gt * num_pred + pred, minlength=num_gt * num_pred).reshape(num_gt, num_pred)


def many_to_one_mapping(conf: np.ndarray) -> np.ndarray:
    """pred id -> the gt class holding most of its pixels (highest precision; ties and empty ids -> lowest gt id).

    This is NeCo/Leopart's `PredsmIoU` many-to-one matching with `precision_based=True`.
    """
    return conf.argmax(0)


def remap_confusion(conf: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """(C, C) confusion after relabelling each pred id p (a column of the (C, P) `conf`) as gt class mapping[p]."""
    folded = np.zeros((conf.shape[0], conf.shape[0]), dtype=np.int64)
    np.add.at(folded.T, np.asarray(mapping), conf.T)
    return folded


def miou_many_to_one(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """Overclustering mIoU: each pred id -> its majority gt class, then `miou_identity`."""
    return miou_identity(remap_confusion(conf, many_to_one_mapping(conf)))


def miou_crossfit(conf_a: np.ndarray, conf_b: np.ndarray, matcher) -> tuple[float, np.ndarray]:
    """mIoU with the pred -> gt mapping of each half fitted on the other half (`matcher`: conf -> mapping), so no
    pixel's label decides its own prediction's class. `conf_a`, `conf_b`: (C, P) confusions of two disjoint halves."""
    folded = remap_confusion(conf_a, matcher(conf_b)) + remap_confusion(conf_b, matcher(conf_a))
    return miou_identity(folded)
