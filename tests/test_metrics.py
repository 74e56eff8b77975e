import itertools

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from harness.protocols.metrics import (
    confusion_matrix,
    hungarian_mapping,
    iou_per_class,
    miou_hungarian,
    miou_identity,
)


def direct_iou(gt, pred, num_classes, ignore_index):
    keep = gt != ignore_index
    gt, pred = gt[keep], pred[keep]
    ious = []
    for c in range(num_classes):
        inter = np.sum((gt == c) & (pred == c))
        union = np.sum((gt == c) | (pred == c))
        ious.append(inter / union if union else 0.0)
    return np.array(ious)


@pytest.fixture
def labelled_pair():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, size=(3, 40, 50))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = np.where(rng.random(gt.shape) < 0.6, np.minimum(gt, 4), rng.integers(0, 5, size=gt.shape))
    return gt, pred


def test_confusion_matrix_matches_sklearn(labelled_pair):
    gt, pred = labelled_pair
    conf = confusion_matrix(gt, pred, 5, ignore_index=255)
    keep = gt.ravel() != 255
    expected = sk_confusion_matrix(gt.ravel()[keep], pred.ravel()[keep], labels=range(5))
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, expected)


def test_confusion_matrix_accumulates_over_batches(labelled_pair):
    gt, pred = labelled_pair
    total = sum(confusion_matrix(g, p, 5, 255) for g, p in zip(gt, pred))
    np.testing.assert_array_equal(total, confusion_matrix(gt, pred, 5, 255))


def test_identity_iou_matches_direct_and_sklearn(labelled_pair):
    gt, pred = labelled_pair
    conf = confusion_matrix(gt, pred, 5, ignore_index=255)
    keep = gt.ravel() != 255
    expected = direct_iou(gt.ravel(), pred.ravel(), 5, 255)
    np.testing.assert_allclose(iou_per_class(conf), expected)
    sk = jaccard_score(gt.ravel()[keep], pred.ravel()[keep], labels=range(5), average=None, zero_division=0)
    np.testing.assert_allclose(iou_per_class(conf), sk)
    mean, per_class = miou_identity(conf)
    assert mean == pytest.approx(expected.mean())


def test_absent_class_counts_zero_in_mean():
    gt = np.array([0, 0, 1, 1])
    conf = confusion_matrix(gt, gt, 3)
    mean, per_class = miou_identity(conf)
    np.testing.assert_allclose(per_class, [1, 1, 0])
    assert mean == pytest.approx(2 / 3)


def test_out_of_range_ids_are_rejected():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 7]), np.array([0, 1]), 3)


def test_hungarian_equals_brute_force_over_permutations():
    rng = np.random.default_rng(1)
    for _ in range(20):
        gt = rng.integers(0, 4, size=300)
        pred = (gt + rng.integers(0, 3, size=300)) % 4  # a scrambled, partly shifted labelling
        conf = confusion_matrix(gt, pred, 4)
        best = max(
            miou_identity(conf[:, np.argsort(perm)])[0]  # column c of the permuted matrix = pred class perm⁻¹(c)
            for perm in itertools.permutations(range(4))
        )
        assert miou_hungarian(conf)[0] == pytest.approx(best)
        assert miou_identity(conf)[0] <= miou_hungarian(conf)[0] + 1e-12


def test_hungarian_undoes_a_relabelling():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 4, size=500)
    relabel = np.array([2, 0, 3, 1])
    conf = confusion_matrix(gt, relabel[gt], 4)
    assert miou_identity(conf)[0] == 0
    assert miou_hungarian(conf)[0] == pytest.approx(1.0)
    np.testing.assert_array_equal(hungarian_mapping(conf)[relabel], np.arange(4))


def test_unmatched_pred_classes_fold_into_background():
    conf = np.array([[5, 0, 0], [0, 4, 1]])  # 2 gt classes, 3 pred classes: pred 2 is left unmatched
    mean, per_class = miou_hungarian(conf)
    np.testing.assert_allclose(per_class, [5 / 6, 4 / 5])  # its pixel counts as a (wrong) background prediction
