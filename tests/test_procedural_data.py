"""images/procedural_dino/procedural.py: shader-like images, the image-folder source, Shaders KML and Mixup
(fast2leaves.py / mixup_dataset.py semantics; the side-by-side run against the reference is
scripts/compare_procedural.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO / "images" / "procedural_dino"))
import procedural as P  # noqa: E402


def random_source(n=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((3, size, size), dtype=np.float32) for _ in range(n)]


def test_shader_like_is_deterministic_uint8_and_varied():
    a = P.shader_like(3, size=64, seed=1)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, P.shader_like(3, size=64, seed=1))
    assert not np.array_equal(a, P.shader_like(4, size=64, seed=1))
    assert not np.array_equal(a, P.shader_like(3, size=64, seed=2))
    images = np.stack([P.shader_like(i, size=64) for i in range(16)])
    assert all(len(np.unique(im.reshape(-1, 3), axis=0)) > 50 for im in images)  # not flat
    assert images.std(axis=(1, 2)).mean() > 20  # contrast within an image
    assert np.ptp(images.mean(axis=(1, 2)), axis=0).min() > 40  # palettes differ between images


def test_shader_like_source_is_to_tensor_of_the_image():
    src = P.ShaderLike(5, size=48, seed=7)
    assert len(src) == 5
    x = src[2]
    assert x.shape == (3, 48, 48) and x.dtype == np.float32
    expected = torchvision.transforms.functional.to_tensor(P.shader_like(2, size=48, seed=7)).numpy()
    np.testing.assert_array_equal(x, expected)
    with pytest.raises(IndexError):
        src[5]


def test_image_folder_source_follows_image_folder_order(tmp_path):
    rng = np.random.default_rng(0)
    files = ["b/z.png", "b/a.PNG", "a/sub/c.png", "a/b.png", "a/x.txt", "c/q.bmp"]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        if f.endswith(".txt"):
            (tmp_path / f).write_text("not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(tmp_path / f)
    (tmp_path / "stray.png").write_bytes(b"")  # not in a class folder: ImageFolder ignores it
    ours = P.ImageFolderSource(tmp_path)
    ref = torchvision.datasets.ImageFolder(str(tmp_path), transform=torchvision.transforms.ToTensor())
    assert ours.paths == [p for p, _ in ref.samples]
    assert [p.split(str(tmp_path))[1] for p in ours.paths] == ["/a/b.png", "/a/sub/c.png", "/b/a.PNG", "/b/z.png",
                                                               "/c/q.bmp"]  # fmt: skip
    for i in range(len(ours)):
        np.testing.assert_array_equal(ours[i], ref[i][0].numpy())


def test_resize_is_torchvision_resize_on_tensors():
    x = np.random.default_rng(0).random((2, 3, 40, 60), dtype=np.float32)
    for size in (20, 57, (25, 31), 40):
        expected = torchvision.transforms.Resize(size)(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(P.resize(x, size), expected)
    assert P.resize(x, 40) is x  # the shorter side already is 40
    assert P.resize(x[0].transpose(0, 2, 1), 20).shape == (3, 30, 20)


def test_fast2means_initialises_at_the_lexicographic_extremes():
    rng = np.random.default_rng(0)
    low = rng.normal([0.1, 0.9, 0.5], 0.05, (300, 3))
    high = rng.normal([0.9, 0.1, 0.5], 0.05, (200, 3))
    tokens = rng.permutation(np.concatenate([high, low])).astype(np.float32)
    cl, c = P.fast2means(tokens, n_iter=3)
    is_low = tokens[:, 0] < 0.5
    np.testing.assert_array_equal(cl == 0, is_low)  # cluster 0 holds the lexicographically smallest row
    np.testing.assert_allclose(c[0], tokens[is_low].mean(0), atol=1e-6)
    # one Lloyd step from the two extreme rows, by hand
    order = np.lexsort(tokens.T[::-1])
    c0 = tokens[[order[0], order[-1]]]
    d = ((tokens[:, None] - c0[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(P.fast2means(tokens, n_iter=1)[0], d.argmin(1))


def test_lexicographic_extremes_are_np_unique_first_and_last():
    rng = np.random.default_rng(1)
    for levels in (2, 3, 256):  # few levels: many ties in the leading columns
        rows = (rng.integers(0, levels, (5000, 3)) / (levels - 1)).astype(np.float32)
        u = np.unique(rows, axis=0)
        np.testing.assert_array_equal(P.lexicographic_extremes(rows), u[[0, -1]])
    one = np.full((10, 3), 0.5, np.float32)
    np.testing.assert_array_equal(P.lexicographic_extremes(one), one[:2])


def test_kml_mask_of_a_two_colour_image():
    x0 = np.zeros((3, 256, 256), np.float32)
    x0[:, :, :100] = [[[0.2]], [[0.5]], [[0.1]]]  # lexicographically smaller colour: cluster 0, mask 1
    x0[:, :, 100:] = [[[0.7]], [[0.1]], [[0.3]]]
    m = P.kml_mask(x0)
    assert m.shape == (256, 256) and m.dtype == np.float32
    np.testing.assert_array_equal(m[:, :98], 1)
    np.testing.assert_array_equal(m[:, 102:], 0)
    np.testing.assert_allclose(m[0, 97:103], [1, 8 / 9, 2 / 3, 1 / 3, 1 / 9, 0], atol=1e-6)  # two 3x3 box blurs
    np.testing.assert_array_equal(P.kml_mask(np.full((3, 64, 64), 0.3, np.float32)), 1)  # one colour: cluster 0


def test_kml_blends_two_textures_drawn_by_default_rng_of_the_index():
    src = random_source(7, size=32)
    out = P.kml(src, 4)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(out, P.kml(src, 4))
    i, j = np.random.default_rng(4).choice(7, 2)
    m = P.kml_mask(src[4])
    assert 0 < m.mean() < 1 and m.min() >= 0 and m.max() <= 1
    np.testing.assert_array_equal(out, src[i] * m + src[j] * (1 - m))
    assert not np.array_equal(out, P.kml(src, 5))
    assert np.array_equal(P.KML(src)[4], out) and len(P.KML(src)) == 7


def test_kml_textures_from_another_source_are_resized_to_the_shape():
    shapes, textures = random_source(3, size=24), random_source(5, size=40, seed=1)
    out = P.kml(shapes, 1, textures)
    i, j = np.random.default_rng(1).choice(5, 2)
    tex = P.resize(np.stack([textures[i], textures[j]]), 24)
    m = P.kml_mask(shapes[1])
    np.testing.assert_array_equal(out, tex[0] * m + tex[1] * (1 - m))


def test_mixup_is_the_mean_with_default_rng_draws():
    src = random_source(9)
    for index in (0, 5, 8):
        (j,) = np.random.default_rng(index).choice(9, 1)
        np.testing.assert_array_equal(P.mixup(src, index), (src[index] + src[j]) / 2)
        j, k = np.random.default_rng(index).choice(9, 2)
        np.testing.assert_allclose(P.mixup(src, index, n=3), (src[index] + src[j] + src[k]) / 3, rtol=1e-6)
    np.testing.assert_array_equal(P.mixup(src, 3, n=1), src[3])
    expected = torch.stack([torch.from_numpy(src[2]), torch.from_numpy(src[np.random.default_rng(2).choice(9)])])
    np.testing.assert_array_equal(P.Mixup(src)[2], expected.mean(0).numpy())
    assert P.mixup(src, 2).dtype == np.float32


def test_to_uint8_is_save_image_quantisation(tmp_path):
    x = np.random.default_rng(0).random((3, 17, 19), dtype=np.float32)
    x[0, 0, :4] = [-0.1, 1.2, 0.5 / 255, 1.5 / 255]
    torchvision.utils.save_image(torch.from_numpy(x), tmp_path / "x.png")
    np.testing.assert_array_equal(P.to_uint8(x), np.asarray(Image.open(tmp_path / "x.png")))
