"""Segmentation scores from one dataset-level confusion matrix (rows = ground truth, columns = prediction)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def confusion_matrix(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """int64 (C, C) counts of (gt, pred) pixel pairs; pixels whose gt is `ignore_index` are dropped."""
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"gt has {gt.size} pixels but pred has {pred.size}")
    if ignore_index is not None:
        keep = gt != ignore_index
        gt, pred = gt[keep], pred[keep]
    for name, values in (("gt", gt), ("pred", pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} has class ids outside [0, {num_classes}): {np.unique(values)[:10]}")
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_matrix(conf: np.ndarray) -> np.ndarray:
    """IoU of every (gt class, pred class) pair; 0 where both are empty."""
    conf = conf.astype(np.float64)
    union = conf.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - conf
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
