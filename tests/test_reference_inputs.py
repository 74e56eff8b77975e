"""What scripts/compare_reference.py relies on, checked without the reference checkouts: the inputs it builds
are exactly what our HummingBird protocol sends a method, and the tensors it hands the reference decode back to
the same images, masks and features."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import open_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_reference.py"


@pytest.fixture(scope="module")
def cmp():
    spec = importlib.util.spec_from_file_location("compare_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return open_dataset("voc", tmp_path_factory.mktemp("data"), synthetic=True, scale="tiny")


@pytest.fixture(scope="module")
def inputs(cmp, voc):
    return cmp.build_hbird_inputs(voc, 64, seed=0, batch_size=7, aug_epochs=2)


def test_features_are_a_fixed_non_trivial_function(cmp):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    features = cmp.PatchFeatures(0)(images)
    assert features.shape == (3, 4, 4, cmp.FEATURE_DIM) and features.dtype == np.float32
    np.testing.assert_array_equal(features, cmp.PatchFeatures(0)(images))
    assert not np.allclose(features, cmp.PatchFeatures(1)(images))
    rows = features.reshape(-1, cmp.FEATURE_DIM)
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    assert (rows @ rows.T)[np.triu_indices(len(rows), 1)].max() < 0.99  # patches are told apart


def test_protocol_sees_exactly_the_built_inputs(cmp, voc, inputs):
    assert len(inputs.train) == 2 and sum(len(b[0]) for b in inputs.train[0]) == len(voc.split("trainaug"))
    for memory_size in (None, 200):
        inputs.table.served.clear()
        ours = cmp.run_ours_hbird(voc, inputs, memory_size)  # a look-up miss would raise
        assert inputs.table.served["ours"] == set(inputs.table.features)
        assert 0 < ours.metrics["miou_identity"] <= ours.metrics["miou"] < 100
        assert ours.predictions.shape == (len(voc.split("val")), 64, 64)
        assert len(ours.neighbours) == len(voc.split("val")) * 16


def test_reference_tensors_decode_to_the_same_inputs(cmp, inputs):
    images, masks, _ = inputs.train[1][0]
    x, y = cmp.to_tensor_images(images), cmp.to_tensor_masks(masks)
    assert x.shape == (len(images), 3, 64, 64) and y.shape == (len(images), 1, 64, 64)
    np.testing.assert_array_equal((y * 255).long()[:, 0].numpy(), masks)  # the reference's own decoding
    extractor = cmp.TableExtractor(inputs.table, grid=4)
    features, _ = extractor.forward_features(x)
    expected = np.stack([inputs.table.features[cmp.image_key(image)] for image in images])
    np.testing.assert_array_equal(features.numpy(), expected.reshape(len(images), 16, -1))


def test_train_loader_serves_one_augmentation_epoch_per_pass(cmp, inputs):
    slot = []
    loader = cmp.Loader(inputs.train, slot)
    for epoch in range(2):
        batches = list(loader)
        assert len(batches) == len(inputs.train[epoch])
        np.testing.assert_array_equal(slot[0], inputs.train[epoch][-1][2])  # noise of the batch just served
        first = (batches[0][0] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(first, inputs.train[epoch][0][0])
    assert not np.array_equal(inputs.train[0][0][0], inputs.train[1][0][0])  # epochs are augmented differently


def test_knn_inputs_are_structured_and_fixed(cmp):
    train, train_labels, test, test_labels, num_classes = cmp.knn_inputs(0)
    assert (len(train), len(test), num_classes) == (1020, 1020, 102)
    assert len(test) // 100 >= 1  # DINO's imgs_per_chunk = N // 100 must not be 0
    np.testing.assert_array_equal(train, cmp.knn_inputs(0)[0])
    assert np.bincount(train_labels).tolist() == [10] * 102
