from functools import partial

import numpy as np
import pytest
import torch

import benchsdk
from harness.data.base import InMemoryDataset, SegmentationSplit
from harness.data.loader import iter_batches
from harness.errors import MethodFailure, UserError
from harness.protocols import PROTOCOLS
from harness.protocols.base import RunContext
from harness.protocols.hummingbird import (
    HummingbirdParams,
    load_train_sample,
    memory_entries,
    patch_class_counts,
    patches_per_image,
    predict_masks,
    select_patches,
    transfer_labels,
)
from harness.protocols.metrics import confusion_matrix, miou_hungarian, miou_identity
from harness.protocols.search import ExactSearch, make_search

from conftest import session_of

PATCH = 16
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


def block_masks(n, size, block, seed, stripes=False, num_classes=4):
    """Masks of block×block squares of random classes, or of vertical stripes block pixels wide.

    Only stripes give a perfect score from perfect patch labels: where four patches meet and the two diagonal ones
    share a class, the bilinear upsampling of the label map hands the corner pixels to that class.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, num_classes, size=(n, 1 if stripes else size // block, size // block))
    return np.kron(coarse, np.ones((1, size if stripes else block, block), dtype=np.int64)).astype(np.uint8)


def one_hot_patch_features(masks, num_classes=4):
    """Oracle dense features: each patch's class histogram."""
    counts = patch_class_counts(masks, PATCH, num_classes)
    grid = masks.shape[1] // PATCH
    return (counts / PATCH**2).reshape(len(masks), grid, grid, num_classes).astype(np.float32)


# --- patch labels and bounded sampling ---------------------------------------------------------------------------


def test_patch_class_counts_matches_a_loop():
    masks = np.random.default_rng(0).integers(0, 5, size=(2, 48, 32)).astype(np.uint8)
    masks[0, :3, :3] = 255
    counts = patch_class_counts(masks, PATCH, 5)
    assert counts.shape == (2, 3 * 2, 5)
    for b in range(2):
        for row in range(3):
            for col in range(2):
                patch = masks[b, row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH].astype(int)
                patch[patch == 255] = 0  # unlabelled pixels count as background in the memory
                np.testing.assert_array_equal(counts[b, row * 2 + col], np.bincount(patch.ravel(), minlength=5))


def test_patches_per_image():
    assert patches_per_image(102_400, 10_582, 2, 1024) == 4
    assert patches_per_image(10, 100, 2, 1024) == 1  # at least one
    assert patches_per_image(None, 100, 2, 1024) == 1024
    with pytest.raises(UserError, match="patches per image"):
        patches_per_image(102_400, 10, 2, 1024)


def test_sampling_picks_rare_class_patches_first():
    mask = np.zeros((1, 128, 128), dtype=np.uint8)
    mask[0, :16, :16] = 1  # class 1 fills exactly one patch
    mask[0, 16:48, 16:48] = 2  # class 2 fills four patches
    counts = patch_class_counts(mask, PATCH, 3)
    rare_first = select_patches(counts, 5, np.ones((1, 64)))[0]
    assert rare_first[0] == 0 and set(rare_first[1:]) == {9, 10, 17, 18}
    rng = np.random.default_rng(0)
    picks = [select_patches(counts, 5, rng.random((1, 64)))[0] for _ in range(200)]
    assert np.mean([0 in p for p in picks]) > 0.6  # noise only perturbs: the lone class-1 patch is usually kept
    assert np.mean([np.isin(p, [0, 9, 10, 17, 18]).mean() for p in picks]) > 0.5


def test_memory_entries_normalise_and_label():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, 4, 8)).astype(np.float32)
    counts = rng.integers(0, 5, size=(2, 4, 3))
    counts[..., 0] += 1
    keep = np.array([[3, 1], [0, 2]])
    entries, labels = memory_entries(features, counts, keep, "cpu")
    assert entries.shape == (4, 8) and labels.shape == (4, 3)
    np.testing.assert_allclose(entries.norm(dim=1).numpy(), 1, rtol=1e-6)
    np.testing.assert_allclose(entries[1].numpy(), features[0, 1] / np.linalg.norm(features[0, 1]), rtol=1e-5)
    np.testing.assert_allclose(labels[2].numpy(), counts[1, 0] / counts[1, 0].sum(), rtol=1e-6)


# --- search ------------------------------------------------------------------------------------------------------


def test_exact_search_equals_brute_force():
    rng = np.random.default_rng(2)
    bank, queries = rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(50, 16)).astype(np.float32)
    search = ExactSearch(torch.from_numpy(bank), query_chunk=7, max_block=7 * 13)  # many chunks and merges
    scores, index = search.search(torch.from_numpy(queries), 10)
    brute = queries @ bank.T
    expected = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_array_equal(index.numpy(), expected)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(brute, expected, 1), rtol=1e-5, atol=1e-5)


def test_float16_bank_finds_the_same_neighbours_when_separated():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(20, 32))
    bank = np.repeat(centres, 5, axis=0) + 0.01 * rng.normal(size=(100, 32))
    queries = centres + 0.01 * rng.normal(size=(20, 32))
    bank, queries = torch.tensor(bank, dtype=torch.float32), torch.tensor(queries, dtype=torch.float32)
    exact = ExactSearch(bank, query_chunk=8, max_block=8 * 30).search(queries, 5)
    np.testing.assert_array_equal(np.sort(exact[1].numpy(), 1) // 5, np.arange(20)[:, None].repeat(5, 1))
    half = ExactSearch(bank, dtype="float16", query_chunk=8, max_block=8 * 30)
    assert half.bank.dtype == torch.float16
    for compute_dtype in (torch.float32, torch.float16):  # float16 is what CUDA uses: scores re-ranked in float32
        half.compute_dtype = compute_dtype
        scores, index = half.search(queries, 5)
        assert scores.dtype == torch.float32
        np.testing.assert_array_equal(np.sort(index.numpy(), 1), np.sort(exact[1].numpy(), 1))
        np.testing.assert_allclose(scores.numpy(), exact[0].numpy(), rtol=1e-3)  # float16 storage error


def test_unknown_search_backend():
    with pytest.raises(UserError, match="unknown search backend"):
        make_search("annoy", torch.zeros(3, 2))
    with pytest.raises(ValueError):
        HummingbirdParams(search="annoy")


# --- label transfer and scoring ----------------------------------------------------------------------------------


def test_transfer_labels_is_softmax_weighted_mean():
    rng = np.random.default_rng(4)
    scores = rng.uniform(0.5, 1, size=(6, 4)).astype(np.float32)
    index = rng.integers(0, 10, size=(6, 4))
    labels = rng.dirichlet(np.ones(3), size=10).astype(np.float32)
    out = transfer_labels(torch.from_numpy(scores), torch.from_numpy(index), torch.from_numpy(labels), 0.02).numpy()
    for q in range(6):
        w = np.exp((scores[q] - scores[q].max()) / 0.02)
        np.testing.assert_allclose(out[q], (w / w.sum()) @ labels[index[q]], rtol=1e-5, atol=1e-6)


def build_memory(masks, features, keep=None):
    entries, labels = memory_entries(
        features.reshape(len(masks), -1, features.shape[-1]), patch_class_counts(masks, PATCH, 4), keep, "cpu"
    )
    return ExactSearch(entries), labels


def test_oracle_features_score_100():
    train = block_masks(6, 64, PATCH, seed=5)
    search, labels = build_memory(train, one_hot_patch_features(train))
    val = block_masks(4, 64, 32, seed=6, stripes=True)
    val[:, :, :32] = np.arange(4)[:, None, None]  # every class present
    val[:, 5:9, 20:40] = 255  # ignored
    predicted = predict_masks(torch.from_numpy(one_hot_patch_features(val)), search, labels, 5, 0.02, 64)
    assert predicted.shape == (4, 64, 64)
    conf = confusion_matrix(val, predicted, 4, ignore_index=255)
    assert miou_hungarian(conf)[0] == pytest.approx(1.0)
    assert miou_identity(conf)[0] == pytest.approx(1.0)


def test_constant_features_give_the_trivial_score():
    """All neighbours tie, so with k = the whole memory every pixel gets the memory's majority class c*.
    Identity IoU is then n(c*)/N for c* and 0 elsewhere; Hungarian pairs the one used column with the most
    frequent ground-truth class g*: n(g*)/N."""
    train = block_masks(6, 64, PATCH, seed=7)
    train[:3, :32] = 2  # class 2 dominates the memory
    search, labels = build_memory(train, np.ones((6, 4, 4, 3), dtype=np.float32))
    val = block_masks(5, 64, PATCH, seed=8)
    val[:, 40:] = 3  # class 3 dominates the evaluation masks
    predicted = predict_masks(torch.ones(5, 4, 4, 3), search, labels, len(labels), 0.02, 64)
    assert np.all(predicted == 2)
    counts = np.bincount(val.ravel(), minlength=4)
    conf = confusion_matrix(val, predicted, 4)
    assert miou_identity(conf)[0] == pytest.approx(counts[2] / counts.sum() / 4)
    assert miou_hungarian(conf)[0] == pytest.approx(counts.max() / counts.sum() / 4)


# --- the protocol end to end with a fake dataset and method ------------------------------------------------------


class ColourSplit(SegmentationSplit):
    """Images painted with PALETTE[mask]: a method can see the classes only through the colours."""

    num_classes = 4
    ignore_index = 255

    def __init__(self, name, n, size, block, seed):
        self.name, self.ids = name, [f"{name}_{i}" for i in range(n)]
        self.masks = block_masks(n, size, block, seed, stripes=name == "val")
        if name == "val":
            self.masks[:, :, :block] = (np.arange(n) % self.num_classes)[:, None, None]  # every class present
            self.masks[:, : size // 8, : size // 4] = 255

    def image(self, i):
        return PALETTE[np.where(self.masks[i] == 255, 0, self.masks[i])]

    def mask(self, i):
        return self.masks[i]


class ColourData(InMemoryDataset):
    def __init__(self):
        super().__init__({"trainaug": ColourSplit("trainaug", 8, 96, 32, 9), "val": ColourSplit("val", 5, 96, 48, 10)})


class Colour(benchsdk.Method):
    """Dense features = per-patch histogram of the nearest palette colour; `mode` breaks it on purpose."""

    name, version, outputs = "colour", "0", ("dense",)
    patch_size, embed_dim = PATCH, 4

    def __init__(self, mode="oracle"):
        self.mode = mode

    def embed_dense(self, images):
        distances = ((images[..., None, :].astype(int) - PALETTE.astype(int)) ** 2).sum(-1)
        features = one_hot_patch_features(distances.argmin(-1).astype(np.uint8))
        if self.mode == "wrong_shape":
            features = features[:, :-1]
        return features


def run_protocol(session, **params):
    params = {"input_size": 70, "k": 5, "memory_size": None, **params}
    protocol = PROTOCOLS["hummingbird"](HummingbirdParams(**params))
    ctx = RunContext(session=session_of(session), seed=0, batch_size=3, num_workers=0, progress=False)
    outcome = protocol.run(ColourData(), ctx)
    assert protocol.main_metric in outcome.metrics
    return outcome, ctx


def test_protocol_scores_oracle_method_100():
    outcome, ctx = run_protocol(Colour(), memory_size=96)
    assert outcome.metrics["miou"] == pytest.approx(100)
    assert outcome.metrics["miou_identity"] == pytest.approx(100)
    assert outcome.details["input_size"] == 64 and outcome.details["patches_per_image"] == 6
    assert outcome.details["memory_rows"] == 6 * 8 * 2
    assert len(outcome.details["per_class_iou"]) == 4
    assert any("rounded down" in note for note in outcome.notes)
    assert set(ctx.stopwatch.totals) >= {"data", "evaluator"}


def test_protocol_data_efficient_subset():
    outcome, _ = run_protocol(Colour(), num_train_samples=3, aug_epochs=1)
    assert len(outcome.details["train_ids"]) == 3 and outcome.details["memory_rows"] == 3 * 16


def test_protocol_errors():
    with pytest.raises(UserError, match="patches per image"):
        run_protocol(Colour(), memory_size=102_400)
    with pytest.raises(MethodFailure, match="shape"):
        run_protocol(Colour("wrong_shape"))


def test_memory_samples_do_not_depend_on_workers_or_batch_size():
    split = ColourData().split("trainaug")
    load = partial(load_train_sample, split, np.arange(8), 64, 3, 1, 16)
    runs = [
        [np.concatenate(f) for f in zip(*iter_batches(8, load, batch_size, workers, "t", progress=False))]
        for batch_size, workers in [(8, 0), (3, 2)]
    ]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
