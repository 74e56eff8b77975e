import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import benchsdk
from harness.data.base import InMemoryDataset, SegmentationSplit
from harness.data.transforms import squash_resize_linear
from harness.errors import DataError, MethodFailure, UserError
from harness.protocols import PROTOCOLS
from harness.protocols.base import RunContext
from harness.protocols.r2 import R2Params, foreground, image_inertias, inertia, upsample_features

from conftest import session_of

# --- references written out directly ---------------------------------------------------------------------------------


def direct_inertia(points, labels, scalar_mean):
    within = sum(((points[labels == k] - points[labels == k].mean(0)) ** 2).sum() for k in set(labels.tolist()))
    centre = points.mean() if scalar_mean else points.mean(0)
    return within / ((points - centre) ** 2).sum()


def direct_pca_colours(pixels, n=3):
    """Eigenvectors of the covariance, each signed so that its largest-magnitude entry is positive (sklearn ≥ 1.5),
    projections min-max scaled per component."""
    x = pixels.astype(np.float64) - pixels.mean(0)
    _, vectors = np.linalg.eigh(x.T @ x)
    components = vectors[:, ::-1][:, :n].T
    components *= np.sign(components[np.arange(n), np.abs(components).argmax(1)])[:, None]
    projected = x @ components.T
    return (projected - projected.min(0)) / (projected.max(0) - projected.min(0))


def direct_image_inertias(features, mask):
    colours, labels = direct_pca_colours(features.reshape(-1, features.shape[-1])), mask.reshape(-1)
    ids = np.unique(labels)  # the reference's relabelling: the smallest id present is "background"
    ref_keep, keep = labels != ids[0], labels != 0
    reference = direct_inertia(colours[ref_keep], labels[ref_keep], True) if ref_keep.any() else np.nan
    corrected = direct_inertia(colours[keep], labels[keep], False) if keep.any() else np.nan
    return reference, corrected


def blocky(size, block, num_classes, seed):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, num_classes, size=(size // block, size // block))
    return np.kron(coarse, np.ones((block, block), dtype=np.int64)).astype(np.uint8)


# --- pure functions -------------------------------------------------------------------------------------------------


def test_upsample_is_torchvision_resize_of_the_tensor():
    features = torch.randn(2, 7, 7, 5)
    expected = TF.resize(features.permute(0, 3, 1, 2), [28, 28]).permute(0, 2, 3, 1)
    torch.testing.assert_close(upsample_features(features, 28), expected)


def test_squash_resize_linear_is_plain_bilinear():
    """Against bilinear sampling at pixel centres written out in numpy (no antialiasing, edges clamped)."""
    img = np.random.default_rng(0).integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    size = 32

    def taps(n_in):
        src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0)
        low = np.minimum(np.floor(src).astype(int), n_in - 1)
        return low, np.minimum(low + 1, n_in - 1), src - low

    (y0, y1, wy), (x0, x1, wx) = taps(45), taps(70)
    x = img.astype(np.float64)
    rows = x[y0] * (1 - wy)[:, None, None] + x[y1] * wy[:, None, None]
    expected = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    out = squash_resize_linear(img, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert np.abs(out - expected).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("scalar_mean", [True, False])
def test_inertia_equals_direct_sums(scalar_mean):
    rng = np.random.default_rng(1)
    points, labels = rng.random((500, 3)), rng.integers(3, 9, 500)
    assert inertia(points, labels, scalar_mean) == pytest.approx(direct_inertia(points, labels, scalar_mean))
    assert np.isnan(inertia(points[:0], labels[:0], scalar_mean))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_inertias_equal_direct_numpy(seed):
    """sklearn's PCA (float32 input, as the reference) against an eigendecomposition in float64."""
    rng = np.random.default_rng(seed)
    mask = blocky(32, 8, 5, seed)
    smooth = np.eye(5)[mask] @ rng.normal(size=(5, 24))
    features = (smooth + 0.7 * rng.normal(size=(32, 32, 24))).astype(np.float32)
    ours = image_inertias(features, mask)
    np.testing.assert_allclose(ours, direct_image_inertias(features, mask), rtol=1e-4)


def test_oracle_features_have_zero_inertia():
    mask = blocky(32, 4, 6, 3)
    features = np.random.default_rng(3).normal(size=(6, 16)).astype(np.float32)[mask]  # constant within each class
    assert image_inertias(features, mask) == pytest.approx((0, 0), abs=1e-9)


def test_noise_features_explain_nothing():
    rng = np.random.default_rng(4)
    mask = blocky(112, 16, 6, 4)
    features = rng.normal(size=(112, 112, 64)).astype(np.float32)
    reference, corrected = image_inertias(features, mask)
    assert corrected == pytest.approx(1, abs=0.01)  # E[R²] = (K − 1) / (n − 1) for labels unrelated to the points
    assert reference == pytest.approx(1, abs=0.05)  # with centred noise the component means are all near 0.5


def test_scalar_mean_quirk_rewards_offsets_between_components():
    """Labels unrelated to the points, but the components' means differ: the scalar-mean total sum of squares
    counts those offsets, so the reference-compatible inertia is far below 1 while the corrected one stays at 1."""
    rng = np.random.default_rng(5)
    points = np.column_stack([rng.uniform(0.8, 1, 4000), rng.uniform(0, 0.2, 4000), rng.uniform(0.4, 0.6, 4000)])
    labels = rng.integers(1, 5, 4000)
    assert inertia(points, labels, scalar_mean=False) == pytest.approx(1, abs=0.01)
    # within ≈ 3 · 0.2²/12 per point, total ≈ that + 0.4² + 0.4² (offsets of the means from 0.5)
    assert inertia(points, labels, scalar_mean=True) == pytest.approx(0.01 / 0.33, rel=0.05)
    # and a component's sign (1 − t after min-max) changes the reference value only
    flipped = points * [1, -1, 1] + [0, 1, 0]
    assert inertia(flipped, labels, scalar_mean=False) == pytest.approx(inertia(points, labels, scalar_mean=False))
    expected = 0.01 / (0.01 + 2 * 0.4**2 / 9 + 0.8**2 / 9)  # means (0.9, 0.9, 0.5) around their mean 0.77
    assert inertia(flipped, labels, scalar_mean=True) == pytest.approx(expected, rel=0.05)


def test_background_quirk_drops_the_smallest_class_when_there_is_no_background():
    mask = np.array([[3, 3, 7], [7, 9, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(foreground(mask, reference=True), mask != 0)
    np.testing.assert_array_equal(foreground(mask, reference=False), mask != 0)
    no_background = np.where(mask == 0, 9, mask)
    np.testing.assert_array_equal(foreground(no_background, reference=True), no_background != 3)
    assert foreground(no_background, reference=False).all()


# --- the protocol end to end with an in-memory dataset and method -----------------------------------------------------

PALETTE = np.array([[0, 0, 0], [230, 30, 30], [30, 230, 30], [30, 30, 230], [200, 200, 40]], dtype=np.uint8)


class BlockSplit(SegmentationSplit):
    """128×128 images of 16-px class blocks painted PALETTE[class]; image 0 is all background."""

    num_classes, ignore_index = 5, 255

    def __init__(self, n):
        self.name, self.ids = "val2017", [f"img{i}" for i in range(n)]
        self.masks = np.stack([blocky(128, 16, 5, seed) for seed in range(n)])
        self.masks[0] = 0

    def image(self, i):
        return PALETTE[self.masks[i]]

    def mask(self, i):
        return self.masks[i]


class BlockData(InMemoryDataset):
    def __init__(self, n=7):
        super().__init__({"val2017": BlockSplit(n)})


class PatchColour(benchsdk.Method):
    """Dense features: each 16-px patch's mean colour plus a fixed random lift to 8 dims; `mode` spoils them."""

    name, version, outputs = "patchcolour", "0", ("dense",)
    patch_size, embed_dim = 16, 8
    lift = np.random.default_rng(0).normal(size=(3, 8))

    def __init__(self, mode="oracle"):
        self.mode, self.rng = mode, np.random.default_rng(1)

    def embed_dense(self, images):
        n, h, w, _ = images.shape
        means = images.reshape(n, h // 16, 16, w // 16, 16, 3).mean((2, 4)) / 255
        features = (means @ self.lift).astype(np.float32)
        if self.mode == "noise":
            features = self.rng.normal(size=features.shape).astype(np.float32)
        if self.mode == "wrong_shape":
            features = features[:, :-1]
        return features


def run_r2(session, data=None, **params):
    params = {"input_size": 128, "eval_size": 8, **params}
    ctx = RunContext(session=session_of(session), seed=0, batch_size=3, num_workers=0, progress=False)
    protocol = PROTOCOLS["coco_r2"](R2Params(**params))
    outcome = protocol.run(data or BlockData(), ctx)
    assert protocol.main_metric in outcome.metrics
    return outcome, ctx


def test_protocol_oracle_scores_100():
    outcome, ctx = run_r2(PatchColour())
    assert outcome.metrics == pytest.approx({"r2": 100, "r2_vector_mean": 100})
    assert outcome.details["skipped_no_foreground"] == 1 and outcome.details["r2_vector_mean_images_scored"] == 6
    assert set(ctx.stopwatch.totals) >= {"data", "evaluator"}


def test_protocol_equals_direct_per_image_computation():
    """Noise features upsampled 8 → 32: the protocol's means equal the direct per-image references."""
    session = PatchColour("noise")
    outcome, _ = run_r2(session, eval_size=32)
    session.rng = np.random.default_rng(1)  # replay the same noise
    split, values = BlockData().split("val2017"), []
    for i in range(len(split)):
        features = session.embed_dense(PALETTE[split.masks[i]][None])
        upsampled = upsample_features(torch.from_numpy(features), 32)[0].numpy()
        values.append(direct_image_inertias(upsampled, split.masks[i][::4, ::4]))
    reference, corrected = np.array(values).T
    assert outcome.metrics["r2"] == pytest.approx(100 * (1 - np.nanmean(reference)), abs=1e-3)
    assert outcome.metrics["r2_vector_mean"] == pytest.approx(100 * (1 - np.nanmean(corrected)), abs=1e-3)
    assert abs(outcome.metrics["r2_vector_mean"]) < 15


def test_protocol_errors():
    with pytest.raises(MethodFailure, match="shape"):
        run_r2(PatchColour("wrong_shape"))
    with pytest.raises(UserError, match="n_components"):
        run_r2(PatchColour(), n_components=9)
    empty = BlockData(1)
    with pytest.raises(DataError, match="foreground"):
        run_r2(PatchColour(), data=empty)
