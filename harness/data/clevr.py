"""CLEVR with masks (DeepMind multi_object_datasets), read from an npz export; procedural stand-in.

The official data is one TFRecords file of 100,000 scenes (320x240 RGB, 11 binary masks: background first, then up
to 10 objects). We read an export of it, `<data root>/clevr_with_masks/`:

    manifest.json   {"format": "vrbench-clevr-npz", "version": 1, "num_images": 100000,
                     "shards": [{"file": "shard_00000.npz", "start": 0, "count": 10000}, ...], "source": "..."}
    shard_*.npz     uncompressed (np.savez) with `images` uint8 (count, 240, 320, 3) and
                    `masks` uint8 (count, 240, 320): object index per pixel, argmax of the 11 masks (0 = background)

Shards follow the TFRecords order, contiguous from 0 (start = sum of the earlier counts). Members are memory-mapped,
so reading an item touches only its bytes. Splits as the ClevrTex evaluator's: test = the first 15,000 scenes,
val = the next 15,000, train = the rest. A procedural stand-in (PROCEDURAL.txt marker) is scaled instead:
test = first 15%, val = next 15%, train = the rest.

Export (TensorFlow and DeepMind's loader, in any environment; not a dependency of the harness):

    import json, numpy as np
    from multi_object_datasets import clevr_with_masks  # github.com/deepmind/multi_object_datasets
    # gsutil cp gs://multi-object-datasets/clevr_with_masks/clevr_with_masks_train.tfrecords .
    SHARD, shards, images, masks = 10_000, [], [], []
    def flush():
        name = f"shard_{len(shards):05d}.npz"
        np.savez(name, images=np.stack(images), masks=np.stack(masks))
        shards.append({"file": name, "start": SHARD * len(shards), "count": len(images)})
        images.clear(); masks.clear()
    for scene in clevr_with_masks.dataset("clevr_with_masks_train.tfrecords").as_numpy_iterator():
        images.append(scene["image"])
        masks.append(scene["mask"][..., 0].argmax(0).astype(np.uint8))  # (11, 240, 320, 1) -> (240, 320)
        if len(images) == SHARD:
            flush()
    if images:
        flush()
    json.dump({"format": "vrbench-clevr-npz", "version": 1, "num_images": sum(s["count"] for s in shards),
               "shards": shards, "source": "clevr_with_masks_train.tfrecords"}, open("manifest.json", "w"))
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data import synthetic
from harness.data.base import DatasetReader
from harness.data.clevrtex import HEIGHT, WIDTH, ObjectSplit, SceneStyle, render_scene
from harness.data.files import NpyMember, load_member, npz_members
from harness.errors import DataError

FORMAT, VERSION = "vrbench-clevr-npz", 1
MANIFEST = "manifest.json"
MAX_OBJECTS = 10
OFFICIAL_TEST, OFFICIAL_VAL = 15_000, 15_000
SCALES = {"tiny": (20, 20), "small": (200, 200)}  # images per shard
CLEVR_STYLE = SceneStyle(("cube", "sphere", "cylinder"), {"large": 0.7, "small": 0.35}, "plain", "coloured")


@dataclass(frozen=True)
class Shard:
    path: Path
    start: int
    count: int
    images: NpyMember
    masks: NpyMember


def split_ranges(n: int, procedural: bool) -> dict[str, range]:
    """Scene indices of each split: the official absolute bounds, or 15% / 15% / rest for a procedural stand-in."""
    test, val = (n * 15 // 100, n * 15 // 100) if procedural else (OFFICIAL_TEST, OFFICIAL_VAL)
    return {"test": range(0, test), "val": range(test, test + val), "train": range(test + val, n)}


class ClevrSplit(ObjectSplit):
    max_objects = MAX_OBJECTS

    def __init__(self, name: str, indices: range, shards: list[Shard]):
        self.name, self.indices, self.shards = name, indices, shards
        self.ids = [f"{k:06d}" for k in indices]
        self._starts = [shard.start for shard in shards]
        self._open: tuple[int, np.memmap, np.memmap] | None = None  # the one shard kept mapped

    def __getstate__(self) -> dict:  # worker processes map shards themselves
        return {**self.__dict__, "_open": None}

    def _locate(self, i: int) -> tuple[Shard, int, np.memmap, np.memmap]:
        """Item i's shard, its position there, and that shard's mapped images and masks (mapped on first use)."""
        index = self.indices[i]
        s = bisect.bisect_right(self._starts, index) - 1
        shard, opened = self.shards[s], self._open
        if opened is None or opened[0] != s:
            try:
                opened = (s, load_member(shard.path, shard.images), load_member(shard.path, shard.masks))
            except (OSError, ValueError) as err:
                raise DataError(f"cannot map shard arrays ({err})", where=shard.path) from None
            self._open = opened  # replaced whole, so concurrent readers never see a half-updated pair
        return shard, index - shard.start, opened[1], opened[2]

    def image(self, i: int) -> np.ndarray:
        _, j, images, _ = self._locate(i)
        return np.array(images[j])

    def mask(self, i: int) -> np.ndarray:
        shard, j, _, masks = self._locate(i)
        mask = np.array(masks[j])
        if mask.max(initial=0) > MAX_OBJECTS:
            raise DataError(
                f"masks[{j}] (scene {self.ids[i]}) holds object index {int(mask.max())}; at most {MAX_OBJECTS} objects",
                where=shard.path,
            )
        return mask


class ClevrWithMasks(DatasetReader):
    name = "clevr"
    subdir = "clevr_with_masks"
    how_to_get = (
        "export DeepMind's multi_object_datasets clevr_with_masks TFRecords to <data root>/clevr_with_masks/ "
        "(manifest.json + npz shards) with the script in harness/data/clevr.py's docstring"
    )
    split_names = ("test", "val", "train")
    official_counts = {"test": 15_000, "val": 15_000, "train": 70_000}

    def check_layout(self) -> None:
        manifest = self.root / MANIFEST
        entries, n_images = _read_manifest(manifest)
        self.shards = [_shard(self.root, entry, manifest) for entry in entries]
        procedural = (self.root / synthetic.MARKER_FILE).is_file()
        if not procedural and n_images <= OFFICIAL_TEST + OFFICIAL_VAL:
            needed = OFFICIAL_TEST + OFFICIAL_VAL
            raise DataError(
                f"holds {n_images:,} scenes; the official splits need more than {needed:,} "
                "(test = first 15,000, val = next 15,000)",
                where=manifest,
            )
        self.ranges = split_ranges(n_images, procedural)

    def split(self, name: str) -> ClevrSplit:
        if name not in self.ranges:
            raise DataError(f"unknown split '{name}'; CLEVR splits are {', '.join(self.ranges)}", where=self.root)
        return ClevrSplit(name, self.ranges[name], self.shards)

    @classmethod
    def synthesize(cls, root: Path, scale: str = "tiny", seed: int = 0) -> None:
        counts = synthetic.pick_scale(SCALES, scale)
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        shards, start = [], 0
        for number, count in enumerate(counts):
            scenes = [render_scene(np.random.default_rng([seed, 7, start + k]), CLEVR_STYLE) for k in range(count)]
            name = f"shard_{number:05d}.npz"
            synthetic.save_npz(
                root / name,
                {"images": np.stack([s.image for s in scenes]), "masks": np.stack([s.mask for s in scenes])},
            )
            shards.append({"file": name, "start": start, "count": count})
            start += count
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "num_images": start,
            "shards": shards,
            "source": f"procedural stand-in (harness.data.clevr, scale {scale}, seed {seed})",
        }
        (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
        synthetic.write_marker(root, cls.name, scale, seed)
        with open(root / synthetic.MARKER_FILE, "a") as marker:
            marker.write(
                "Splits are scaled to its size: test = first 15%, val = next 15%, train = the rest "
                "(the real export: first 15,000, next 15,000, rest).\n"
            )


def _read_manifest(path: Path) -> tuple[list[dict], int]:
    """The shard entries and scene count of manifest.json, checked for format and contiguity."""
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DataError(f"missing; {ClevrWithMasks.how_to_get}", where=path) from None
    except (OSError, ValueError) as err:
        raise DataError(f"cannot parse manifest ({err})", where=path) from None
    if not isinstance(manifest, dict) or (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
        raise DataError(f"not a {FORMAT} version {VERSION} manifest (keys 'format' and 'version')", where=path)
    n_images, entries = manifest.get("num_images"), manifest.get("shards")
    if not isinstance(n_images, int) or n_images < 1 or not isinstance(entries, list) or not entries:
        raise DataError("needs 'num_images' (a positive integer) and a non-empty 'shards' list", where=path)
    expected_start = 0
    for k, entry in enumerate(entries):
        fields = entry if isinstance(entry, dict) else {}
        integers = all(isinstance(fields.get(key), int) for key in ("start", "count"))
        if not isinstance(fields.get("file"), str) or not integers:
            raise DataError(f"shards[{k}] needs 'file' (a name), 'start' and 'count' (integers)", where=path)
        if fields["start"] != expected_start or fields["count"] < 1:
            raise DataError(
                f"shards[{k}] ({fields['file']}) starts at {fields['start']} with count "
                f"{fields['count']}; shards must be contiguous from 0, so it should start at "
                f"{expected_start}",
                where=path,
            )
        expected_start += fields["count"]
    if expected_start != n_images:
        raise DataError(f"num_images is {n_images:,} but the shards' counts add up to {expected_start:,}", where=path)
    return entries, n_images


def _shard(root: Path, entry: dict, manifest: Path) -> Shard:
    """One shard, its arrays' headers checked against the manifest entry and the format."""
    path = root / entry["file"]
    if Path(entry["file"]).name != entry["file"] or not path.is_file():
        raise DataError(f"shard file listed in {manifest.name} is missing (shards lie beside the manifest)", where=path)
    members = npz_members(path)
    count = entry["count"]
    expected = {"images": (count, HEIGHT, WIDTH, 3), "masks": (count, HEIGHT, WIDTH)}
    for key, shape in expected.items():
        if key not in members:
            raise DataError(f"array '{key}' missing (found: {', '.join(members) or 'none'})", where=path)
        member = members[key]
        if member.data_offset is None:
            raise DataError(
                f"'{key}' is compressed; write shards with np.savez, not np.savez_compressed, so that "
                "they can be memory-mapped",
                where=path,
            )
        if member.dtype != np.uint8 or member.shape != shape:
            found = member.shape[0] if member.shape else None
            miscounted = found != count and member.shape[1:] == shape[1:]
            count_note = f"; {manifest.name} says {count} scenes" if miscounted else ""
            raise DataError(f"'{key}' is {member.dtype} {member.shape}, expected uint8 {shape}{count_note}", where=path)
    return Shard(path, entry["start"], count, members["images"], members["masks"])
