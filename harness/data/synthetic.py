"""Procedural stand-in images: textured objects whose class fixes shape, colour and texture.

Shared by every dataset's `synthesize`. A class is recognisable only from the combination of its
shape, texture (kind, frequency, orientation) and colour; colours jitter per instance and some classes
share nearly the same hue, so colour statistics alone separate classes poorly (kNN on colour histograms
or random-init features: 15-35% on Flowers "small", 20 classes) while learned features separate them
well (a small CNN trained on another seed: 98% kNN).
Everything is drawn with numpy and PIL from a numpy Generator, so a seed fixes every byte written.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from harness.errors import DataError

GENERATOR_VERSION = 1
MARKER_FILE = "PROCEDURAL.txt"
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "ellipse", "hexagon")
TEXTURES = ("stripes", "checker", "dots", "rings")


@dataclass(frozen=True)
class ClassStyle:
    shape: str
    texture: str
    hue: float  # primary hue in [0, 1); the texture alternates it with a second hue
    hue_shift: float
    frequency: float  # texture cycles per pixel at an object radius of 50 px
    angle: float  # texture orientation, radians


def class_style(c: int) -> ClassStyle:
    """The fixed appearance of class `c` (any int >= 0); distinct (shape, texture) for c < 32."""
    rng = np.random.default_rng([7919, c])
    return ClassStyle(
        shape=SHAPES[c % len(SHAPES)],
        texture=TEXTURES[(c + c // len(SHAPES)) % len(TEXTURES)],
        hue=(c * 0.618034) % 1.0,
        hue_shift=float(rng.uniform(0.15, 0.5)),
        frequency=float(rng.uniform(0.06, 0.16)),
        angle=float(rng.uniform(0, np.pi)),
    )


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour noise plus faint stripes and pixel noise, float32 (h, w, 3) in 0..255."""
    cells = rng.integers(3, 8)
    grid = rng.uniform(40, 200, size=(cells, cells, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), np.float32)
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.02, 0.2)
    stripes = 12 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)))
    noise = 8 * rng.standard_normal((h, w, 3), dtype=np.float32)
    return smooth + stripes[..., None].astype(np.float32) + noise


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        t, rad = np.arange(4) * np.pi / 2 + np.pi / 4, np.full(4, r)
    elif shape == "triangle":
        t, rad = np.arange(3) * 2 * np.pi / 3, np.full(3, r * 1.15)
    elif shape == "hexagon":
        t, rad = np.arange(6) * np.pi / 3, np.full(6, r)
    elif shape == "star":
        t, rad = np.arange(10) * np.pi / 5, np.where(np.arange(10) % 2 == 0, r * 1.2, r * 0.5)
    elif shape == "cross":
        arm = 0.38 * r
        pts = np.array([(arm, r), (arm, arm), (r, arm), (r, -arm), (arm, -arm), (arm, -r)])
        pts = np.concatenate([pts, -pts])
        t, rad = np.arctan2(pts[:, 1], pts[:, 0]), np.hypot(pts[:, 0], pts[:, 1])
    else:  # ellipse
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        rad = r / np.sqrt((np.cos(t) / 1.25) ** 2 + (np.sin(t) / 0.6) ** 2)
    t = t + rot
    return list(zip(cx + rad * np.cos(t), cy + rad * np.sin(t)))


def shape_mask(shape: str, h: int, w: int, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """Boolean (h, w) mask of one shape centred at (cx, cy) with radius r, rotated by `rot`."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
        if shape == "ring":
            draw.ellipse((cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r), fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rot), fill=1)
    return np.asarray(canvas, bool)


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return 255 * np.array(colorsys.hsv_to_rgb(h % 1.0, np.clip(s, 0, 1), np.clip(v, 0, 1)), np.float32)


def object_fill(
    rng: np.random.Generator, style: ClassStyle, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float
) -> np.ndarray:
    """The class's coloured texture at pixels (xs, ys), float32 (n, 3), scaled to the object size r."""
    angle = style.angle + rng.normal(0, 0.15)
    freq = style.frequency * 50 / r * rng.uniform(0.9, 1.1)
    u = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
    v = -(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)
    if style.texture == "stripes":
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * freq * u)
    elif style.texture == "checker":
        pattern = (np.sin(2 * np.pi * freq * u) * np.sin(2 * np.pi * freq * v) > 0).astype(np.float32)
    elif style.texture == "dots":
        fu, fv = (freq * u) % 1.0 - 0.5, (freq * v) % 1.0 - 0.5
        pattern = (np.hypot(fu, fv) < 0.3).astype(np.float32)
    else:  # rings
        pattern = 0.5 + 0.5 * np.cos(2 * np.pi * freq * np.hypot(u, v))
    hue = style.hue + rng.normal(0, 0.03)
    first = _rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.6, 1.0))
    second = _rgb(hue + style.hue_shift, rng.uniform(0.3, 0.9), rng.uniform(0.25, 0.7))
    shading = 1 + 0.25 * (u / (2 * r))[:, None] * rng.uniform(-1, 1)
    colour = first * pattern[:, None] + second * (1 - pattern[:, None])
    return colour * shading + 6 * rng.standard_normal((len(xs), 3), dtype=np.float32)


def paint_object(
    rng: np.random.Generator, canvas: np.ndarray, c: int, cx: float, cy: float, r: float
) -> np.ndarray:
    """Paint one object of class `c` onto `canvas` (float32, in place); returns its boolean mask."""
    style = class_style(c)
    h, w = canvas.shape[:2]
    mask = shape_mask(style.shape, h, w, cx, cy, r, rng.uniform(0, 2 * np.pi))
    ys, xs = np.nonzero(mask)
    canvas[ys, xs] = object_fill(rng, style, xs.astype(np.float32), ys.astype(np.float32), cx, cy, r)
    return mask


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def save_jpeg(image: np.ndarray, path: Path) -> None:
    """Write a JPEG with fixed encoder settings and no metadata (same pixels → same bytes)."""
    Image.fromarray(image).save(path, "JPEG", quality=90, subsampling=2, optimize=False)


def save_mat(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """scipy.io.savemat with the header's creation timestamp replaced by a fixed text (deterministic bytes)."""
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, arrays)
    header = f"MATLAB 5.0 MAT-file, written by the vrbench procedural generator v{GENERATOR_VERSION}"
    Path(path).write_bytes(header.encode("ascii").ljust(116, b" ") + buffer.getvalue()[116:])


def pick_scale(table: dict[str, tuple[int, ...]], scale: str) -> tuple[int, ...]:
    if scale not in table:
        raise DataError(f"unknown synthetic scale '{scale}'; choose one of {', '.join(table)}")
    return table[scale]


def write_marker(root: Path, dataset: str, scale: str, seed: int) -> None:
    """Mark `root` as procedural, so that results on it are never mistaken for real-data results."""
    (Path(root) / MARKER_FILE).write_text(
        f"Procedural stand-in for {dataset} (scale {scale}, seed {seed}), "
        f"written by harness.data.synthetic generator v{GENERATOR_VERSION}.\n"
        "It mimics the official on-disk layout only; scores on it are not comparable to published numbers.\n"
    )
