"""Procedural training images for procedural_dino ("Separating Knowledge and Perception with Procedural Data",
adriarm/separating_knowledge b126018, data_generation/).

- `shader_like`: a CPU substitute for shaders21k, **shader-like (not shaders21k)**: shaders21k renders 21k GLSL
  programs with OpenGL; here each image is a seeded random numpy "program" (gratings, radial/polar terms, fBm
  value noise with domain warping, fract/abs folds, a cosine palette). `ImageFolderSource` reads real shader images.
- `kml`: Shaders KML, fast2leaves.py `Fast2LeavesDataset.__getitem__` (seed 0) with `utils_kmeans.Fast2Means`.
- `mixup`: mixup_dataset.py `MixupDataset.__getitem__`.

A source is anything with `len()` and `[i]` giving a float32 (3, H, W) image in [0, 1], as torchvision's
`ImageFolder` + `ToTensor` gives. `to_uint8` is `torchvision.utils.save_image`'s quantisation (the reference then
writes JPEG; the KML Mixup set is made from those JPEGs, here it can take the KML images before JPEG).
"""

import os

import cv2
import numpy as np
from PIL import Image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _value_noise(x, y, table):
    """Periodic value noise: smoothstep-interpolated lattice values of `table` (T, T) at points (x, y)."""
    t = table.shape[0]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    i0, j0 = x0.astype(np.int64) % t, y0.astype(np.int64) % t
    i1, j1 = (i0 + 1) % t, (j0 + 1) % t
    top = table[j0, i0] * (1 - fx) + table[j0, i1] * fx
    bottom = table[j1, i0] * (1 - fx) + table[j1, i1] * fx
    return top * (1 - fy) + bottom * fy


def _fbm(x, y, rng, octaves):
    """Fractal sum of value noise in [-1, 1]: octave k has frequency 2^k and amplitude 0.5^k."""
    out, norm = 0.0, 0.0
    for k in range(octaves):
        table = rng.random((64, 64)) * 2 - 1
        out = out + 0.5**k * _value_noise(x * 2**k, y * 2**k, table)
        norm += 0.5**k
    return out / norm


def _field(x, y, rng):
    """One random scalar term of the program, roughly in [-1, 1]."""
    kind = rng.integers(4)
    if kind == 0:  # sinusoid grating
        theta, freq = rng.uniform(0, np.pi), rng.uniform(0.3, 5)
        return np.sin(2 * np.pi * freq * (np.cos(theta) * x + np.sin(theta) * y) + rng.uniform(0, 2 * np.pi))
    cx, cy = rng.uniform(-0.5, 0.5, 2)
    r, a = np.hypot(x - cx, y - cy), np.arctan2(y - cy, x - cx)
    if kind == 1:  # radial rings
        return np.sin(2 * np.pi * rng.uniform(0.3, 5) * r + rng.uniform(0, 2 * np.pi))
    if kind == 2:  # polar: petals / spirals
        return np.sin(rng.integers(1, 9) * a + 2 * np.pi * rng.uniform(-2, 2) * r)
    freq, warp = rng.uniform(1, 4), rng.uniform(0, 3)  # fBm with domain warping
    wx, wy = _fbm(x * freq, y * freq, rng, 3), _fbm(x * freq + 5.2, y * freq + 1.3, rng, 3)
    return 2 * _fbm(freq * x + warp * wx, freq * y + warp * wy, rng, int(rng.integers(3, 6)))


def shader_like(index, size=256, seed=0):
    """A shader-like (not shaders21k) uint8 (size, size, 3) image, deterministic per (seed, index).

    The program: f = weighted mean of 1-3 random terms (`_field`), then optionally a fold
    (fract(s f) or |f|), then per channel the cosine palette a + b cos(2 pi (c f + d)), clipped to [0, 1].
    """
    rng = np.random.default_rng([seed, index])
    y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2.0 - 1.0
    if rng.random() < 0.5:  # global rotation + zoom of the canvas
        theta, zoom = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.5)
        x, y = zoom * (np.cos(theta) * x - np.sin(theta) * y), zoom * (np.sin(theta) * x + np.cos(theta) * y)
    weights = rng.uniform(0.3, 1, int(rng.integers(1, 4)))
    f = sum(w * _field(x, y, rng) for w in weights) / weights.sum()
    fold = rng.integers(3)
    if fold == 1:
        f = np.mod(f * rng.uniform(0.5, 2), 1.0)
    elif fold == 2:
        f = np.abs(f)
    a, b = rng.uniform(0.2, 0.8, 3), rng.uniform(0.2, 0.6, 3)
    c, d = rng.uniform(0.3, 1.5, 3), rng.uniform(0, 1, 3)
    rgb = a + b * np.cos(2 * np.pi * (c * f[..., None] + d))
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def to_float(img):
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1], as torchvision `ToTensor`."""
    return np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.float32) / 255


def to_uint8(x):
    """float (3, H, W) in [0, 1] -> uint8 (H, W, 3), as `torchvision.utils.save_image` before it encodes."""
    return np.clip(np.asarray(x, np.float32) * 255 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)


class ShaderLike:
    """`n` shader-like (not shaders21k) images as a source."""

    def __init__(self, n, size=256, seed=0):
        self.n, self.size, self.seed = n, size, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return to_float(shader_like(i, self.size, self.seed))


class ImageFolderSource:
    """User-provided images (e.g. shaders21k's train folder) in torchvision `ImageFolder` order: class folders
    sorted, then each class's files (walked recursively, followlinks) sorted; RGB via PIL."""

    def __init__(self, root):
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.paths = []
        for cls in classes:
            for folder, _, names in sorted(os.walk(os.path.join(root, cls), followlinks=True)):
                self.paths += [os.path.join(folder, n) for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
        if not self.paths:
            raise FileNotFoundError(f"no images under class folders of {root}")

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            return to_float(np.asarray(im.convert("RGB")))


def resize(x, size):
    """torchvision `Resize(size)` on a float (..., 3, H, W) array (torchvision >= 0.17, the reference's 0.19.1:
    bilinear, antialias=True). An int resizes the shorter side (the longer: int(size * long / short)); the
    same size returns the input unchanged, as torchvision does, so the default 256 pipeline needs no torch."""
    h, w = x.shape[-2:]
    if isinstance(size, int):
        short, long = sorted((h, w))
        new_short, new_long = size, int(size * long / short)
        size = (new_short, new_long) if h <= w else (new_long, new_short)
    if tuple(size) == (h, w):
        return x
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).reshape(-1, *x.shape[-3:])
    out = torch.nn.functional.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*x.shape[:-2], *size).numpy()


def lexicographic_extremes(rows):
    """The first and last rows of `np.unique(rows, axis=0)` (smallest and largest row in lexicographic order),
    in O(N) instead of a sort."""
    out = []
    for pick in (np.min, np.max):
        r = rows
        for k in range(rows.shape[1]):
            r = r[r[:, k] == pick(r[:, k])]
        out.append(r[0])
    return np.array(out)


def fast2means(tokens, n_iter=3):
    """`utils_kmeans.Fast2Means`: 2-means of (N, D) float32 rows, centres initialised to the first and last rows
    of `np.unique(tokens, axis=0)`, `n_iter` Lloyd steps (labels of the last assignment, ties to cluster 0)."""
    c = lexicographic_extremes(tokens)
    for _ in range(n_iter):
        d = ((tokens[:, None, :] - c[None]) ** 2).sum(-1)
        cl = d.argmin(1)
        counts = np.bincount(cl).astype(np.float32)
        for k in range(tokens.shape[1]):
            c[:, k] = np.bincount(cl, weights=tokens[:, k]) / counts
    return cl, c


def kml_mask(x0):
    """fast2leaves `get_clusters`: the float32 soft mask (H, W) of cluster 0 of x0 (3, H, W) resized to 256x256."""
    x = resize(x0, (256, 256))
    cl, _ = fast2means(x.reshape(3, -1).T.copy(), n_iter=3)
    cl = (cl == 0).astype(np.float32).reshape(256, 256)
    cl = cv2.blur(cl, (3, 3))
    cl = cv2.resize(cl, (x0.shape[1], x0.shape[2]), interpolation=cv2.INTER_LINEAR)  # (W, H) = (H, W): square
    return cv2.blur(cl, (3, 3))


def kml(source, index, textures=None):
    """Shaders KML image `index`: fast2leaves `Fast2LeavesDataset(source, textures or source)[index][0]`."""
    textures = source if textures is None else textures
    rng = np.random.default_rng(seed=index)  # len(ds) * seed + index, seed = 0
    x0 = source[index]
    tex = resize(np.stack([textures[i] for i in rng.choice(len(textures), 2)]), x0.shape[1])
    cl = kml_mask(x0)
    return tex[0] * cl + tex[1] * (1 - cl)


def mixup(source, index, n=2):
    """mixup_dataset `MixupDataset(source, n)[index][0]`: the mean of image `index` and n-1 images drawn with
    replacement by `default_rng(index)` (they may include `index`)."""
    rng = np.random.default_rng(seed=index)
    images = [source[i] for i in [index, *rng.choice(len(source), n - 1)]]
    total = images[0].copy()
    for im in images[1:]:
        total += im
    return total / np.float32(n)


class KML:
    """Shaders KML as a source (e.g. for `mixup`: S. KML Mixup = `Mixup(KML(shaders), 2)`)."""

    def __init__(self, source, textures=None):
        self.source, self.textures = source, textures

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return kml(self.source, i, self.textures)


class Mixup:
    """Mixup of `n` images as a source."""

    def __init__(self, source, n=2):
        self.source, self.n = source, n

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return mixup(self.source, i, self.n)
