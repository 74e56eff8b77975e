"""ClevrTex (Karazija et al., NeurIPS 2021 Datasets & Benchmarks): one reader per variant, procedural stand-ins.

Layout, as unpacked from the official archives (www.robots.ox.ac.uk/~vgg/data/clevrtex) and as read by the
official loader (karazijal/clevrtex `ool/clevrtex_eval.py`, class CLEVRTEX):

    clevrtex/clevrtex_<variant>/<idx // 1000>/CLEVRTEX_<variant>_<idx:06d>.png       320x240 RGBA render
                                              CLEVRTEX_<variant>_<idx:06d>_flat.png  palette PNG: object index
                                              CLEVRTEX_<variant>_<idx:06d>.json      scene; objects[k]: index k + 1

The archives also hold _depth_/_albedo_/_normal_/_shadow_ passes; they are ignored. Images are read as RGB (alpha
dropped), masks as their palette indices (at most 10 objects). Indices must run 0..N-1 without gaps, as the
official loader requires. Splits, as the official loader: test = [0, int(0.1 N)), val = [int(0.1 N), int(0.2 N)),
train = the rest, for full, pbg, vbg, grassbg and camo alike. outd has no splits there (any split name gives all
N images): here it is the single split "test". Image counts: full 50,000; camo, grassbg, pbg, vbg 20,000 each;
outd 10,000 (50, 20 and 10 folders of 1,000). Procedural stand-ins keep the same fractions.
"""

from __future__ import annotations

import json
import os
import re
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from harness.data import synthetic
from harness.data.base import DatasetReader, Split
from harness.data.files import check_same_size, read_label_png, read_rgb
from harness.errors import DataError

MAX_OBJECTS = 10
SPLIT_FRACTIONS = {"test": (0.0, 0.1), "val": (0.1, 0.2), "train": (0.2, 1.0)}
SCALES = {"tiny": (30,), "small": (300,)}  # images per variant
FLAT_PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75, 255, 225, 25, 0, 130, 200, 245, 130, 48, 145, 30, 180,
                70, 240, 240, 240, 50, 230, 210, 245, 60, 250, 190, 212]  # fmt: skip


class ObjectSplit(Split):
    """Images with per-pixel object indices: 0 = background, 1..max_objects = objects."""

    max_objects: int

    @abstractmethod
    def mask(self, i: int) -> np.ndarray:
        """Object-index mask, uint8 (H, W), same size as the image."""


def split_ranges(n: int, has_splits: bool = True) -> dict[str, range]:
    """Image numbers of each split of an n-image variant, exactly as the official loader bounds them."""
    if not has_splits:
        return {"test": range(n)}
    return {name: range(int(lo * n), int(hi * n)) for name, (lo, hi) in SPLIT_FRACTIONS.items()}


class ClevrTexSplit(ObjectSplit):
    max_objects = MAX_OBJECTS

    def __init__(self, name: str, variant: str, numbers: range, folders: list[Path]):
        self.name, self.numbers, self.folders = name, numbers, folders
        self.ids = [f"CLEVRTEX_{variant}_{k:06d}" for k in numbers]

    def _path(self, i: int, suffix: str) -> Path:
        return self.folders[self.numbers[i]] / f"{self.ids[i]}{suffix}"

    def image_path(self, i: int) -> Path:
        return self._path(i, ".png")

    def mask_path(self, i: int) -> Path:
        return self._path(i, "_flat.png")

    def metadata_path(self, i: int) -> Path:
        return self._path(i, ".json")

    def image(self, i: int) -> np.ndarray:
        return read_rgb(self.image_path(i))

    def mask(self, i: int) -> np.ndarray:
        mask = read_label_png(self.mask_path(i), ("P", "L"), MAX_OBJECTS + 1, what="object mask")
        return check_same_size(mask, self.mask_path(i), self.image_path(i), what="object mask")

    def metadata(self, i: int) -> dict:
        """The scene's json: num_objects, ground_material, objects (shape, size, material, ..., index), ..."""
        path = self.metadata_path(i)
        try:
            meta = json.loads(path.read_bytes())
        except (OSError, ValueError) as err:
            raise DataError(f"cannot parse scene metadata ({err})", where=path) from None
        if not isinstance(meta, dict) or not isinstance(meta.get("objects"), list):
            raise DataError("scene metadata is not a JSON object with an 'objects' list", where=path)
        return meta


class ClevrTex(DatasetReader):
    """One ClevrTex variant; each subclass names its variant and official image count (CLEVRTEX_READERS below
    makes one per row of VARIANT_TABLE)."""

    variant: ClassVar[str]
    total: ClassVar[int]
    has_splits: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.name, cls.subdir = f"clevrtex_{cls.variant}", f"clevrtex/clevrtex_{cls.variant}"
        cls.how_to_get = (
            f"download clevrtex_{cls.variant} from www.robots.ox.ac.uk/~vgg/data/clevrtex and unpack it into "
            f"<data root>/clevrtex/ (giving clevrtex/clevrtex_{cls.variant}/0/CLEVRTEX_{cls.variant}_000000.png, ...)"
        )
        official = split_ranges(cls.total, cls.has_splits)
        cls.split_names = tuple(official)
        cls.official_counts = {name: len(numbers) for name, numbers in official.items()}

    def check_layout(self) -> None:
        if not self.root.is_dir():
            raise DataError(f"folder missing; {self.how_to_get}", where=self.root)
        self.folders = _index_folders(self.root, self.variant, self.how_to_get)
        self.ranges = split_ranges(len(self.folders), self.has_splits)

    def split(self, name: str) -> ClevrTexSplit:
        if name not in self.ranges:
            raise DataError(f"unknown split '{name}'; {self.name} splits are {', '.join(self.ranges)}", where=self.root)
        if not self.ranges[name]:
            raise DataError(f"split '{name}' is empty: {len(self.folders)} images are too few", where=self.root)
        return ClevrTexSplit(name, self.variant, self.ranges[name], self.folders)

    @classmethod
    def synthesize(cls, root: Path, scale: str = "tiny", seed: int = 0) -> None:
        (n_images,) = synthetic.pick_scale(SCALES, scale)
        root = Path(root)
        for idx in range(n_images):
            rng = np.random.default_rng([seed, VARIANTS.index(cls.variant), idx])
            scene = render_scene(rng, STYLES[cls.variant])
            folder = root / str(idx // 1000)
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"CLEVRTEX_{cls.variant}_{idx:06d}"
            rgba = np.dstack([scene.image, np.full(scene.mask.shape, 255, np.uint8)])
            Image.fromarray(rgba).save(folder / f"{stem}.png", compress_level=1)  # noisy renders: speed over size
            flat = Image.fromarray(scene.mask)
            flat.putpalette(FLAT_PALETTE)
            flat.save(folder / f"{stem}_flat.png")
            meta = {
                "num_objects": len(scene.objects), "split": cls.variant, "image_index": idx,
                "image_filename": f"{stem}.png", "mask_filename": f"{stem}_flat.png",
                "ground_material": scene.ground_material, "objects": scene.objects,
            }  # fmt: skip
            (folder / f"{stem}.json").write_text(json.dumps(meta, indent=2))
        synthetic.write_marker(root, cls.name, scale, seed)


def _index_folders(root: Path, variant: str, how_to_get: str) -> list[Path]:
    """The folder of each image number 0..N-1, from one listing of root and its subfolders; partners checked."""
    pattern = re.compile(rf"CLEVRTEX_{re.escape(variant)}_(\d{{6}})(\.png|_flat\.png|\.json)")
    found: dict[str, dict[int, Path]] = {".png": {}, "_flat.png": {}, ".json": {}}
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        for name in os.listdir(folder):
            match = pattern.fullmatch(name)
            if match:
                number, kind = int(match[1]), match[2]
                if number in found[kind]:
                    raise DataError(f"image number {number} also in {found[kind][number]}", where=folder / name)
                found[kind][number] = folder
    images = found[".png"]
    if not images:
        raise DataError(
            f"no CLEVRTEX_{variant}_<6 digits>.png images here or in its subfolders; {how_to_get}", where=root
        )
    stem = f"CLEVRTEX_{variant}_{{:06d}}"
    gap = next((k for k in range(max(images)) if k not in images), None)
    if gap is not None:
        raise DataError(
            f"image numbers must run 0..{max(images)} without gaps; {gap} is missing",
            where=root / str(gap // 1000) / f"{stem.format(gap)}.png",
        )
    for kind, what in (("_flat.png", "object mask"), (".json", "scene metadata")):
        lacking = next((k for k in range(len(images)) if found[kind].get(k) != images[k]), None)
        if lacking is not None:
            raise DataError(
                f"{what} of {stem.format(lacking)}.png missing", where=images[lacking] / f"{stem.format(lacking)}{kind}"
            )
    return [images[k] for k in range(len(images))]


# variant -> official image count and whether the official loader splits it; one reader per row, in this order
# (a variant's position seeds its procedural stand-in)
VARIANT_TABLE = {
    "full": (50_000, True), "camo": (20_000, True), "outd": (10_000, False),
    "pbg": (20_000, True), "vbg": (20_000, True), "grassbg": (20_000, True),
}  # fmt: skip
VARIANTS = tuple(VARIANT_TABLE)
CLEVRTEX_READERS: tuple[type[ClevrTex], ...] = tuple(
    type(
        f"ClevrTex[{variant}]",
        (ClevrTex,),
        {"variant": variant, "total": total, "has_splits": has_splits, "__module__": __name__},
    )
    for variant, (total, has_splits) in VARIANT_TABLE.items()
)

# --- Procedural scenes: a textured ground seen from above and in front, 3-10 solids on it, far ones drawn first ---

WIDTH, HEIGHT = 320, 240
FOCAL, CAMERA_HEIGHT, CAMERA_DISTANCE, HORIZON_ROW = 360.0, 6.5, 10.0, -111.0  # horizon above the frame
MIN_GAP = 0.25  # scene units between object footprints (the official generator's min_dist)
MIN_VISIBLE_PIXELS = 200  # the official generator re-draws scenes where an object shows fewer pixels
GROUND_SCALE = 140.0  # texture scale of the ground, in pixels
COLOURS = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}  # fmt: skip  (CLEVR's object colours)


@dataclass(frozen=True)
class SceneStyle:
    """What a variant's scenes are made of."""

    shapes: tuple[str, ...]  # synthetic.SOLIDS
    sizes: dict[str, float]  # size name -> half-size in scene units
    ground: str  # "textured", "plain" or "grass"
    objects: str  # "textured", "coloured" (rubber or metal) or "camouflaged" (the ground's own material)
    materials: tuple[int, ...] = tuple(range(24))  # synthetic class styles that serve as textured materials


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8 (HEIGHT, WIDTH, 3)
    mask: np.ndarray  # uint8 (HEIGHT, WIDTH), object k of `objects` has index k + 1
    objects: list[dict]
    ground_material: str


_SHAPES, _SIZES = ("cube", "sphere", "cylinder", "monkey"), {"large": 0.9, "medium": 0.6, "small": 0.4}
STYLES = {
    "full": SceneStyle(_SHAPES, _SIZES, "textured", "textured"),
    "camo": SceneStyle(_SHAPES, _SIZES, "textured", "camouflaged"),
    "outd": SceneStyle(
        ("cone", "icosahedron", "torus", "teapot"),
        {"large": 1.0, "medium": 0.8, "small": 0.6},
        "textured",
        "textured",
        materials=tuple(range(40, 52)),
    ),
    "pbg": SceneStyle(_SHAPES, _SIZES, "plain", "textured"),
    "vbg": SceneStyle(_SHAPES, _SIZES, "textured", "coloured"),
    "grassbg": SceneStyle(_SHAPES, _SIZES, "grass", "textured"),
}


def material_name(m: int) -> str:
    return f"procedural_{synthetic.class_style(m).texture}_{m:02d}"


def render_scene(rng: np.random.Generator, style: SceneStyle, n_objects: tuple[int, int] = (3, 10)) -> Scene:
    """One scene of n_objects[0]..n_objects[1] solids, each showing at least MIN_VISIBLE_PIXELS pixels."""
    ground = int(rng.choice(style.materials)) if style.ground == "textured" else None
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    for _ in range(1000):
        placed = _place(rng, style, n, ground)
        if placed is None:
            continue
        objects, textures = placed
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        for k in sorted(range(n), key=lambda k: -objects[k]["pixel_coords"][2]):  # far to near
            mask[_silhouette(objects[k])] = k + 1
        if np.bincount(mask.ravel(), minlength=n + 1)[1:].min() >= MIN_VISIBLE_PIXELS:
            break
    else:
        raise RuntimeError(f"no layout of {n} objects found where each shows {MIN_VISIBLE_PIXELS} pixels")
    canvas = _ground(rng, style, ground)
    _cast_shadows(canvas, objects)
    for k, (obj, texture) in enumerate(zip(objects, textures)):
        ys, xs = np.nonzero(mask == k + 1)
        canvas[ys, xs] = _surface(rng, style, obj, texture, xs.astype(np.float32), ys.astype(np.float32))
    ground_name = {"plain": "tabularasa", "grass": "grass"}.get(style.ground) or material_name(ground)
    return Scene(synthetic.to_uint8(canvas), mask, objects, ground_name)


def _place(
    rng: np.random.Generator, style: SceneStyle, n: int, ground: int | None
) -> tuple[list[dict], list[int | None]] | None:
    """n objects at ground positions at least MIN_GAP apart, projected to the image, and each one's texture
    class (None: plain colour); None when they did not fit."""
    objects, textures, footprints = [], [], []
    for k in range(n):
        size = str(rng.choice(list(style.sizes)))
        radius = style.sizes[size]
        for _ in range(50):
            x, y = rng.uniform(-3, 3, size=2)
            if all(np.hypot(x - ox, y - oy) - radius - orad >= MIN_GAP for ox, oy, orad in footprints):
                break
        else:
            return None
        footprints.append((x, y, radius))
        depth = CAMERA_DISTANCE + y
        px, py = WIDTH / 2 + FOCAL * x / depth, HORIZON_ROW + FOCAL * (CAMERA_HEIGHT - radius) / depth
        obj = {
            "shape": str(rng.choice(style.shapes)), "size": size, "rotation": round(float(rng.uniform(0, 360)), 3),
            "3d_coords": [round(float(x), 4), round(float(y), 4), radius],
            "pixel_coords": [round(px), round(py), round(float(depth), 4)], "index": k + 1,
        }  # fmt: skip
        if style.objects == "coloured":
            texture = None
            obj["material"], obj["color"] = str(rng.choice(["rubber", "metal"])), str(rng.choice(list(COLOURS)))
        else:
            others = [m for m in style.materials if m != ground]
            texture = ground if style.objects == "camouflaged" else int(rng.choice(others))
            obj["material"] = material_name(texture)
        objects.append(obj)
        textures.append(texture)
    return objects, textures


def _pixel_radius(obj: dict) -> float:
    return FOCAL * obj["3d_coords"][2] / obj["pixel_coords"][2]


def _silhouette(obj: dict) -> np.ndarray:
    cx, cy = obj["pixel_coords"][:2]
    return synthetic.solid_mask(obj["shape"], HEIGHT, WIDTH, cx, cy, _pixel_radius(obj), np.radians(obj["rotation"]))


def _ground(rng: np.random.Generator, style: SceneStyle, material: int | None) -> np.ndarray:
    """The ground, float32 (HEIGHT, WIDTH, 3), lit more towards the viewer (the bottom rows)."""
    light = (0.8 + 0.3 * np.arange(HEIGHT, dtype=np.float32) / HEIGHT)[:, None, None]
    if style.ground == "plain":
        tint = rng.uniform(0.9, 1.1, size=3) * rng.uniform(120, 180)
        return np.broadcast_to(tint, (HEIGHT, WIDTH, 3)) * light + 3 * rng.standard_normal((HEIGHT, WIDTH, 3))
    if style.ground == "grass":
        return synthetic.grass(rng, HEIGHT, WIDTH) * light
    ys, xs = (a.ravel().astype(np.float32) for a in np.mgrid[0:HEIGHT, 0:WIDTH])
    texture = synthetic.object_fill(rng, synthetic.class_style(material), xs, ys, WIDTH / 2, HEIGHT / 2, GROUND_SCALE)
    return texture.reshape(HEIGHT, WIDTH, 3) * light


def _cast_shadows(canvas: np.ndarray, objects: list[dict]) -> None:
    """Soft shadows on the ground, down and to the right of each object (outside every object mask)."""
    shadow = Image.new("L", (WIDTH, HEIGHT), 0)
    draw = ImageDraw.Draw(shadow)
    for obj in objects:
        r, depth = _pixel_radius(obj), obj["pixel_coords"][2]
        gx, gy = obj["pixel_coords"][0] + 0.4 * r, HORIZON_ROW + FOCAL * CAMERA_HEIGHT / depth
        draw.ellipse((gx - 1.2 * r, gy - 0.4 * r, gx + 1.2 * r, gy + 0.4 * r), fill=255)
    darkness = np.asarray(shadow.filter(ImageFilter.GaussianBlur(3)), np.float32) / 255
    canvas *= (1 - 0.45 * darkness)[..., None]


def _surface(
    rng: np.random.Generator, style: SceneStyle, obj: dict, texture: int | None, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """Lit colour of the object's visible pixels (xs, ys), float32 (n, 3)."""
    (cx, cy), r, rot = obj["pixel_coords"][:2], _pixel_radius(obj), np.radians(obj["rotation"])
    light = synthetic.solid_shading(obj["shape"], xs, ys, cx, cy, r, rot)[:, None]
    if texture is None:
        colour = np.array(COLOURS[obj["color"]], np.float32) * rng.uniform(0.9, 1.1)
        lit = colour * (light if obj["material"] == "rubber" else 0.55 + 0.7 * light**4)  # metal: dark with a glint
        return lit + 3 * rng.standard_normal((len(xs), 3), dtype=np.float32)
    scale = GROUND_SCALE if style.objects == "camouflaged" else 2 * r  # camouflage: the ground's pattern and scale
    return synthetic.object_fill(rng, synthetic.class_style(texture), xs, ys, cx, cy, scale) * light
