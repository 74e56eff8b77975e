from functools import partial

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import ks_2samp

from harness.data.loader import iter_batches
from harness.data.transforms import (
    HBIRD_CROP_RATIO,
    HBIRD_CROP_SCALE,
    dino_eval_transform,
    hbird_train_augment,
    random_resized_crop_params,
    resize_mask_nearest,
    squash_resize,
)

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


def blocky_mask(height, width, seed=0, block=40):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, len(PALETTE), size=(height // block + 1, width // block + 1))
    return np.kron(coarse, np.ones((block, block), dtype=np.int64))[:height, :width].astype(np.uint8)


def test_squash_resize_is_pil_bilinear():
    img = np.random.default_rng(0).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    out = squash_resize(img, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR)))


@pytest.mark.parametrize("shape", [(37, 53), (500, 375), (16, 16), (7, 300)])
def test_mask_resize_matches_reference_tensor_path(shape):
    """The reference turns the mask into a float tensor (ToTensor, /255), resizes it with torchvision's nearest and
    multiplies by 255 again."""
    mask = np.random.default_rng(1).integers(0, 21, size=shape, dtype=np.uint8)
    mask[0, 0] = 255
    reference = TF.resize(TF.to_tensor(Image.fromarray(mask)), [64, 64], T.InterpolationMode.NEAREST)
    expected = (reference[0] * 255).long().numpy()
    out = resize_mask_nearest(mask, 64)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("height,width", [(375, 500), (500, 375), (64, 64), (100, 1000), (1000, 90)])
def test_crop_params_stay_in_bounds(height, width):
    rng = np.random.default_rng(2)
    for _ in range(500):
        top, left, h, w = random_resized_crop_params(height, width, HBIRD_CROP_SCALE, HBIRD_CROP_RATIO, rng)
        assert 0 < h <= height and 0 < w <= width
        assert 0 <= top <= height - h and 0 <= left <= width - w


@pytest.mark.parametrize("height,width", [(100, 1000), (1000, 90)])
def test_crop_fallback_equals_torchvision(height, width):
    """Every try fails for such extreme shapes, so both samplers return the same centred crop."""
    ours = random_resized_crop_params(height, width, HBIRD_CROP_SCALE, HBIRD_CROP_RATIO, np.random.default_rng(0))
    theirs = T.RandomResizedCrop.get_params(torch.zeros(1, height, width), HBIRD_CROP_SCALE, HBIRD_CROP_RATIO)
    assert ours == tuple(theirs)


@pytest.mark.parametrize("height,width", [(375, 500), (333, 333)])
def test_crop_params_match_torchvision_statistically(height, width):
    n = 3000
    rng = np.random.default_rng(3)
    sample = partial(random_resized_crop_params, height, width, HBIRD_CROP_SCALE, HBIRD_CROP_RATIO)
    ours = np.array([sample(rng) for _ in range(n)])
    torch.manual_seed(3)
    image = torch.zeros(1, height, width)
    theirs = np.array([T.RandomResizedCrop.get_params(image, HBIRD_CROP_SCALE, HBIRD_CROP_RATIO) for _ in range(n)])
    for column in range(4):  # top, left, h, w
        assert ks_2samp(ours[:, column], theirs[:, column]).pvalue > 1e-3
    whole = lambda p: np.mean((p[:, 2] == height) & (p[:, 3] == width))  # noqa: E731
    assert abs(whole(ours) - whole(theirs)) < 0.05
    area = ours[:, 2] * ours[:, 3] / (height * width)
    assert area.min() >= 0.49 and area.max() <= 1.0  # areas > 1 never fit: effectively scale (0.5, 1)


def test_train_augment_keeps_image_and_mask_aligned():
    mask = blocky_mask(300, 400, block=80)
    image = PALETTE[mask]
    for seed in range(5):
        out_img, out_mask = hbird_train_augment(image, mask, 128, np.random.default_rng(seed))
        assert out_img.shape == (128, 128, 3) and out_img.dtype == np.uint8
        assert out_mask.shape == (128, 128) and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= set(np.unique(mask))
        decoded = np.argmin(((out_img[:, :, None, :].astype(int) - PALETTE[None, None].astype(int)) ** 2).sum(-1), -1)
        assert np.mean(decoded == out_mask) > 0.95  # only blurred class borders disagree


def test_train_augment_depends_only_on_the_generator_seed():
    mask = blocky_mask(120, 160)
    image = PALETTE[mask]
    a = hbird_train_augment(image, mask, 64, np.random.default_rng([7, 0, 3]))
    b = hbird_train_augment(image, mask, 64, np.random.default_rng([7, 0, 3]))
    c = hbird_train_augment(image, mask, 64, np.random.default_rng([7, 1, 3]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_dino_eval_transform_matches_torchvision():
    img = np.random.default_rng(4).integers(0, 256, size=(300, 451, 3), dtype=np.uint8)
    reference = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
    out = dino_eval_transform(img)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(reference(Image.fromarray(img))))


def _augmented(seed, i):
    mask = blocky_mask(90 + 7 * i, 120, seed=i)
    return hbird_train_augment(PALETTE[mask], mask, 48, np.random.default_rng([seed, 0, i]))


def test_iter_batches_keeps_order_and_is_independent_of_workers_and_batch_size():
    load = partial(_augmented, 11)
    runs = []
    for batch_size, workers in [(3, 0), (4, 2)]:
        batches = list(iter_batches(10, load, batch_size, workers, "test", progress=False))
        assert [len(b[0]) for b in batches] == [min(batch_size, 10 - s) for s in range(0, 10, batch_size)]
        runs.append([np.concatenate(field) for field in zip(*batches)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(runs[0][1][4], load(4)[1])


def test_tensor_resize_does_not_depend_on_torch_threads():
    """A sample must be the same whether a data-loader worker (one thread) or the main process loads it."""
    import torch

    from harness.data.transforms import center_crop_resize

    image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    mask = np.zeros((240, 320), np.uint8)
    threads, out = torch.get_num_threads(), []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append(center_crop_resize(image, mask, 1.0, 128, "tensor")[0])
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(out[0], out[1]) and out[0].flags["C_CONTIGUOUS"]
