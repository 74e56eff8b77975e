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
import zipfile
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


def shape_polygons(shape: str, cx: float, cy: float, r: float, rot: float) -> list[list[tuple[float, float]]]:
    """Simple polygons whose union is the shape `shape_mask` draws (a circle as a 48-gon, a ring as two halves)."""
    if shape not in ("circle", "ring"):
        return [_polygon(shape, cx, cy, r, rot)]
    if shape == "circle":
        t = rot + np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return [list(zip(cx + r * np.cos(t), cy + r * np.sin(t)))]
    halves = []
    for start in (rot, rot + np.pi):
        t = start + np.linspace(0, np.pi, 25)
        outer = list(zip(cx + r * np.cos(t), cy + r * np.sin(t)))
        inner = list(zip(cx + 0.5 * r * np.cos(t[::-1]), cy + 0.5 * r * np.sin(t[::-1])))
        halves.append(outer + inner)
    return halves


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


def paint_object(rng: np.random.Generator, canvas: np.ndarray, c: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Paint one object of class `c` onto `canvas` (float32, in place); returns its boolean mask."""
    h, w = canvas.shape[:2]
    mask = shape_mask(class_style(c).shape, h, w, cx, cy, r, rng.uniform(0, 2 * np.pi))
    paint_region(rng, canvas, c, mask, cx, cy, r)
    return mask


def paint_region(
    rng: np.random.Generator, canvas: np.ndarray, c: int, mask: np.ndarray, cx: float, cy: float, r: float
) -> None:
    """Fill the pixels of boolean `mask` with class `c`'s texture (float32 canvas, in place), scaled to size r."""
    ys, xs = np.nonzero(mask)
    canvas[ys, xs] = object_fill(rng, class_style(c), xs.astype(np.float32), ys.astype(np.float32), cx, cy, r)


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


def object_image(rng: np.random.Generator, c: int, sides: tuple[int, int] = (96, 160)) -> np.ndarray:
    """One roughly centred object of class c on a textured background; width and height drawn in `sides` (inclusive)."""
    width, height = (int(rng.integers(sides[0], sides[1] + 1)) for _ in range(2))
    canvas = background(rng, height, width)
    r = rng.uniform(0.28, 0.42) * min(height, width)
    cx, cy = width / 2 + rng.normal(0, 0.08 * width), height / 2 + rng.normal(0, 0.08 * height)
    paint_object(rng, canvas, c, cx, cy, r)
    return to_uint8(canvas)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez (uncompressed, so members can be memory-mapped) with fixed zip timestamps: same arrays, same bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


# --- Object-centric scenes (ClevrTex, CLEVR): silhouettes and lighting of 3D solids, grass ground ---------------

SOLIDS = ("sphere", "cube", "cylinder", "monkey", "cone", "icosahedron", "torus", "teapot")
_FLAT_SOLIDS = {"sphere": "circle", "cube": "square", "icosahedron": "hexagon", "torus": "ring"}
_LIGHT = np.array([-0.45, -0.55, 0.7]) / np.linalg.norm([-0.45, -0.55, 0.7])  # from the upper left, towards the viewer


def solid_mask(solid: str, h: int, w: int, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """Boolean (h, w) side-view silhouette of a 3D solid of half-size r centred at (cx, cy), turned by `rot` radians."""
    if solid in _FLAT_SOLIDS:
        return shape_mask(_FLAT_SOLIDS[solid], h, w, cx, cy, r, rot)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if solid == "cylinder":
        cap = 0.3 * r
        draw.rectangle((cx - r, cy - r + cap, cx + r, cy + r - cap), fill=1)
        for y in (cy - r + cap, cy + r - cap):
            draw.ellipse((cx - r, y - cap, cx + r, y + cap), fill=1)
    elif solid == "cone":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.75 * r), (cx - r, cy + 0.75 * r)], fill=1)
        draw.ellipse((cx - r, cy + 0.5 * r, cx + r, cy + r), fill=1)
    elif solid == "monkey":
        draw.ellipse((cx - 0.8 * r, cy - 0.7 * r, cx + 0.8 * r, cy + r), fill=1)
        for side in (-1, 1):
            ear_x = cx + side * 0.78 * r
            draw.ellipse((ear_x - 0.32 * r, cy - 0.55 * r, ear_x + 0.32 * r, cy + 0.05 * r), fill=1)
    elif solid == "teapot":
        side = 1 if np.cos(rot) >= 0 else -1  # spout to the right or to the left
        draw.ellipse((cx - 0.75 * r, cy - 0.5 * r, cx + 0.75 * r, cy + 0.6 * r), fill=1)
        draw.ellipse((cx - 0.25 * r, cy - 0.75 * r, cx + 0.25 * r, cy - 0.35 * r), fill=1)
        draw.polygon(
            [
                (cx + side * 0.5 * r, cy),
                (cx + side * 1.05 * r, cy - 0.5 * r),
                (cx + side * 1.1 * r, cy - 0.35 * r),
                (cx + side * 0.6 * r, cy + 0.3 * r),
            ],
            fill=1,
        )
        handle = (cx - side * 1.0 * r, cy - 0.35 * r, cx - side * 0.5 * r, cy + 0.35 * r)
        draw.ellipse(
            (min(handle[0], handle[2]), handle[1], max(handle[0], handle[2]), handle[3]),
            outline=1,
            width=max(1, round(0.12 * r)),
        )
    else:
        raise ValueError(f"unknown solid '{solid}'; known: {', '.join(SOLIDS)}")
    return np.asarray(canvas, bool)


def solid_shading(solid: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """Diffuse light factor (about 0.35-1) at pixels (xs, ys) of `solid_mask(solid, ...)`, float32 (n,)."""
    u, v = (xs - cx) / r, (ys - cy) / r
    if solid == "cube":  # two vertical faces, split along the turned diagonal
        return np.where(u * np.cos(rot) + v * np.sin(rot) < 0, 1.0, 0.68).astype(np.float32)
    if solid in ("cylinder", "cone"):  # curved about the vertical axis only
        v = np.zeros_like(v)
    u, v = np.clip(u, -1, 1), np.clip(v, -1, 1)
    nz = np.sqrt(np.clip(1 - u**2 - v**2, 0, 1))
    return (0.35 + 0.65 * np.clip(u * _LIGHT[0] + v * _LIGHT[1] + nz * _LIGHT[2], 0, 1)).astype(np.float32)


def grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A lawn: short blades of varying green on a green base, float32 (h, w, 3) in 0..255."""
    base = _rgb(rng.uniform(0.22, 0.32), rng.uniform(0.55, 0.8), rng.uniform(0.35, 0.5))
    canvas = Image.new("RGB", (w, h), tuple(int(c) for c in base))
    draw = ImageDraw.Draw(canvas)
    n = h * w // 24
    xs, ys = rng.uniform(0, w, n), rng.uniform(0, h, n)
    lengths, leans, tones = rng.uniform(3, 9, n), rng.normal(0, 1.5, n), rng.uniform(0.55, 1.45, n)
    for x, y, length, lean, tone in zip(xs, ys, lengths, leans, tones):
        draw.line([(x, y), (x + lean, y - length)], fill=tuple(int(c) for c in np.clip(base * tone, 0, 255)))
    return np.asarray(canvas, np.float32) + 4 * rng.standard_normal((h, w, 3), dtype=np.float32)
