"""ClevrTex (every variant) and CLEVR-with-masks readers on their procedural stand-ins: layout, content, failures."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from harness.data import fingerprint, is_procedural
from harness.data.clevr import ClevrWithMasks
from harness.data.clevr import split_ranges as clevr_split_ranges
from harness.data.clevrtex import CLEVRTEX_READERS, split_ranges
from harness.errors import DataError

READERS = {reader.variant: reader for reader in CLEVRTEX_READERS}
ClevrTexFull, ClevrTexOutd = READERS["full"], READERS["outd"]


@pytest.fixture(scope="module")
def clevrtex_roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("clevrtex")
    for reader in CLEVRTEX_READERS:
        reader.synthesize(base / reader.subdir, "tiny", seed=0)
    return {variant: base / reader.subdir for variant, reader in READERS.items()}


@pytest.fixture(scope="module")
def clevr_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clevr") / "clevr_with_masks"
    ClevrWithMasks.synthesize(root, "tiny", seed=0)
    return root


@pytest.fixture
def full_copy(clevrtex_roots, tmp_path) -> Path:
    return Path(shutil.copytree(clevrtex_roots["full"], tmp_path / "clevrtex_full"))


@pytest.fixture
def clevr_copy(clevr_root, tmp_path) -> Path:
    return Path(shutil.copytree(clevr_root, tmp_path / "clevr_with_masks"))


def all_items(reader):
    for name in reader.split_names:
        split = reader.split(name)
        for i in range(len(split)):
            yield split, i


def test_clevrtex_reader_declarations():
    variants = ("full", "camo", "outd", "pbg", "vbg", "grassbg")
    assert [r.name for r in CLEVRTEX_READERS] == [f"clevrtex_{v}" for v in variants]
    assert ClevrTexFull.subdir == "clevrtex/clevrtex_full" and ClevrTexFull.split_names == ("test", "val", "train")
    assert ClevrTexFull.official_counts == {"test": 5000, "val": 5000, "train": 40000}
    for variant in ("camo", "pbg", "vbg", "grassbg"):
        assert READERS[variant].official_counts == {"test": 2000, "val": 2000, "train": 16000}
    assert ClevrTexOutd.split_names == ("test",) and ClevrTexOutd.official_counts == {"test": 10000}
    assert split_ranges(30) == {"test": range(0, 3), "val": range(3, 6), "train": range(6, 30)}
    assert split_ranges(25) == {"test": range(0, 2), "val": range(2, 5), "train": range(5, 25)}  # int(0.1 n) ...


@pytest.mark.parametrize("variant", list(READERS))
def test_clevrtex_splits_and_content(clevrtex_roots, variant):
    root = clevrtex_roots[variant]
    reader = READERS[variant](root)
    assert is_procedural(root)
    splits = {name: reader.split(name) for name in reader.split_names}
    expected = {"test": 30} if variant == "outd" else {"test": 3, "val": 3, "train": 24}
    assert {name: len(split) for name, split in splits.items()} == expected
    assert sum((s.ids for s in splits.values()), []) == [f"CLEVRTEX_{variant}_{k:06d}" for k in range(30)]
    split = splits["test"]
    assert split.image_path(1) == root / "0" / f"CLEVRTEX_{variant}_000001.png" and split.max_objects == 10
    with Image.open(split.image_path(1)) as png, Image.open(split.mask_path(1)) as flat:
        assert (png.mode, png.size, flat.mode) == ("RGBA", (320, 240), "P")
        rgba = np.asarray(png)
    assert (rgba[..., 3] == 255).all()
    np.testing.assert_array_equal(split.image(1), rgba[..., :3])
    for split, i in all_items(reader):
        image, mask, meta = split.image(i), split.mask(i), split.metadata(i)
        assert image.dtype == mask.dtype == np.uint8 and image.shape == (240, 320, 3) and mask.shape == (240, 320)
        n = meta["num_objects"]
        assert 3 <= n <= 10 and [o["index"] for o in meta["objects"]] == list(range(1, n + 1))
        assert meta["image_filename"] == split.image_path(i).name and meta["split"] == variant
        counts = np.bincount(mask.ravel(), minlength=n + 1)
        assert len(counts) == n + 1 and counts[1:].min() >= 200  # every listed object visible, none other


@pytest.mark.parametrize("variant", list(READERS))
def test_clevrtex_objects_are_separable(clevrtex_roots, variant):
    distances = []
    for split, i in all_items(READERS[variant](clevrtex_roots[variant])):
        image, mask = split.image(i).astype(np.float64), split.mask(i)
        ground = image[mask == 0].mean(0)
        for k in range(1, mask.max() + 1):
            labels, _ = ndimage.label(mask == k)
            assert np.bincount(labels.ravel())[1:].max() >= 0.8 * (mask == k).sum()  # one main connected region
            distances.append(np.linalg.norm(image[mask == k].mean(0) - ground))
    distances = np.array(distances)
    if variant == "camo":  # same material as the ground: told apart by shading and tone only
        assert np.median(distances) > 20 and np.mean(distances > 10) > 0.8
    else:
        assert np.median(distances) > 40 and np.mean(distances > 20) > 0.9


def test_clevrtex_variant_styles(clevrtex_roots):
    def items(variant):
        return list(all_items(READERS[variant](clevrtex_roots[variant])))

    def ground_pixels(split, i):
        return split.image(i)[split.mask(i) == 0].astype(np.float64)

    plain = [ground_pixels(s, i).std(0).max() for s, i in items("pbg")]
    textured = [ground_pixels(s, i).std(0).max() for s, i in items("full")]
    assert max(plain) < 30 < min(textured)  # plain grounds vary by lighting and shadows only
    assert all(np.argmax(ground_pixels(s, i).mean(0)) == 1 for s, i in items("grassbg"))  # green
    for split, i in items("camo"):
        meta = split.metadata(i)
        assert {o["material"] for o in meta["objects"]} == {meta["ground_material"]}
    for split, i in items("full"):
        meta = split.metadata(i)
        assert meta["ground_material"] not in {o["material"] for o in meta["objects"]}
    vbg = [o for s, i in items("vbg") for o in s.metadata(i)["objects"]]
    assert {o["material"] for o in vbg} == {"rubber", "metal"} and all("color" in o for o in vbg)
    outd = [o for s, i in items("outd") for o in s.metadata(i)["objects"]]
    full = [o for s, i in items("full") for o in s.metadata(i)["objects"]]
    assert {o["shape"] for o in outd} == {"cone", "icosahedron", "torus", "teapot"}
    assert {o["shape"] for o in full} == {"cube", "sphere", "cylinder", "monkey"}
    assert not {o["material"] for o in outd} & {o["material"] for o in full}


def test_synthesize_is_deterministic(tmp_path, clevrtex_roots, clevr_root):
    for reader, reference in ((ClevrTexFull, clevrtex_roots["full"]), (ClevrWithMasks, clevr_root)):
        reader.synthesize(tmp_path / reader.name / "s0", "tiny", seed=0)
        reader.synthesize(tmp_path / reader.name / "s1", "tiny", seed=1)
        assert fingerprint(tmp_path / reader.name / "s0", full=True) == fingerprint(reference, full=True)
        assert fingerprint(tmp_path / reader.name / "s1") != fingerprint(reference)
    assert fingerprint(clevrtex_roots["pbg"]) != fingerprint(clevrtex_roots["grassbg"])


def test_clevrtex_ignores_other_files(full_copy):
    (full_copy / "0/CLEVRTEX_full_000000_depth_0001.png").write_bytes(b"not read")
    (full_copy / "0/CLEVRTEX_camo_000031.png").write_bytes(b"another variant")
    (full_copy / "notes.txt").write_text("hello")
    assert len(ClevrTexFull(full_copy).split("train")) == 24


def test_clevrtex_missing_flat_partner(full_copy):
    (full_copy / "0/CLEVRTEX_full_000007_flat.png").unlink()
    with pytest.raises(DataError, match=r"CLEVRTEX_full_000007_flat\.png.*object mask"):
        ClevrTexFull(full_copy)


def test_clevrtex_missing_json_partner(full_copy):
    (full_copy / "0/CLEVRTEX_full_000012.json").unlink()
    with pytest.raises(DataError, match=r"CLEVRTEX_full_000012\.json.*scene metadata"):
        ClevrTexFull(full_copy)


def test_clevrtex_gap_in_numbers(full_copy):
    for suffix in (".png", "_flat.png", ".json"):
        (full_copy / f"0/CLEVRTEX_full_000005{suffix}").unlink()
    with pytest.raises(DataError, match=r"CLEVRTEX_full_000005\.png.*without gaps"):
        ClevrTexFull(full_copy)


def test_clevrtex_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no CLEVRTEX_full_"):
        ClevrTexFull(tmp_path)
    with pytest.raises(DataError, match="folder missing"):
        ClevrTexFull(tmp_path / "nowhere")


def test_clevrtex_unknown_split(clevrtex_roots):
    with pytest.raises(DataError, match="clevrtex_outd splits are test"):
        ClevrTexOutd(clevrtex_roots["outd"]).split("train")


def test_clevrtex_rgb_flat_mask(full_copy):
    split = ClevrTexFull(full_copy).split("test")
    path = split.mask_path(0)
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DataError, match=re.escape(path.name) + ".*mode RGB"):
        split.mask(0)


def test_clevrtex_object_index_too_large(full_copy):
    split = ClevrTexFull(full_copy).split("val")
    path = split.mask_path(1)
    mask = split.mask(1)
    mask[:5, :5] = 11  # masks come back writable
    flat = Image.fromarray(mask)
    flat.putpalette([0, 0, 0] * 12)
    flat.save(path)
    with pytest.raises(DataError, match=re.escape(path.name) + ".*value 11; labels are 0..10"):
        split.mask(1)


def test_clevrtex_mask_size_mismatch(full_copy):
    split = ClevrTexFull(full_copy).split("train")
    path = split.mask_path(2)
    Image.open(path).resize((160, 120), Image.NEAREST).save(path)
    with pytest.raises(DataError, match=re.escape(path.name) + ".*160x120"):
        split.mask(2)


def test_clevrtex_truncated_png(full_copy):
    split = ClevrTexFull(full_copy).split("train")
    path = split.image_path(3)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match=re.escape(path.name)):
        split.image(3)


def test_clevrtex_bad_json(full_copy):
    split = ClevrTexFull(full_copy).split("train")
    path = split.metadata_path(4)
    path.write_text('{"objects": [')
    with pytest.raises(DataError, match=re.escape(path.name) + ".*cannot parse"):
        split.metadata(4)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match=re.escape(path.name) + ".*'objects'"):
        split.metadata(4)


def test_clevr_splits_and_content(clevr_root):
    reader = ClevrWithMasks(clevr_root)
    assert (reader.name, reader.subdir, reader.split_names) == ("clevr", "clevr_with_masks", ("test", "val", "train"))
    splits = {name: reader.split(name) for name in reader.split_names}
    assert {name: len(s) for name, s in splits.items()} == {"test": 6, "val": 6, "train": 28}  # 15% / 15% / rest
    assert sum((s.ids for s in splits.values()), []) == [f"{k:06d}" for k in range(40)]
    assert "15%" in (clevr_root / "PROCEDURAL.txt").read_text()
    manifest = json.loads((clevr_root / "manifest.json").read_text())
    assert manifest["format"] == "vrbench-clevr-npz" and manifest["version"] == 1 and manifest["num_images"] == 40
    assert [(s["file"], s["start"], s["count"]) for s in manifest["shards"]] == [
        ("shard_00000.npz", 0, 20),
        ("shard_00001.npz", 20, 20),
    ]
    with np.load(clevr_root / "shard_00001.npz") as shard:
        images, masks = shard["images"], shard["masks"]
    assert images.shape == (20, 240, 320, 3) and masks.shape == (20, 240, 320)
    train = splits["train"]
    for i in (27, 0, 8, 7, 27):  # scenes 39, 12, 20, 19, 39: across both shards and back
        scene = 12 + i
        image, mask = train.image(i), train.mask(i)
        assert image.dtype == mask.dtype == np.uint8 and image.shape == (240, 320, 3) and mask.shape == (240, 320)
        if scene >= 20:
            np.testing.assert_array_equal(image, images[scene - 20])
            np.testing.assert_array_equal(mask, masks[scene - 20])
    for split, i in all_items(reader):
        counts = np.bincount(split.mask(i).ravel())
        assert 4 <= len(counts) <= 11 and counts[1:].min() >= 200


def test_clevr_split_survives_pickling(clevr_root):
    split = ClevrWithMasks(clevr_root).split("train")
    first = split.image(10)
    data = pickle.dumps(split)
    assert len(data) < 10_000  # the mapped shard stays behind
    np.testing.assert_array_equal(pickle.loads(data).image(10), first)


def test_clevr_official_split_bounds(clevr_copy):
    ranges = clevr_split_ranges(100_000, procedural=False)
    assert {name: len(r) for name, r in ranges.items()} == ClevrWithMasks.official_counts
    assert ranges["val"] == range(15_000, 30_000)
    (clevr_copy / "PROCEDURAL.txt").unlink()
    with pytest.raises(DataError, match=r"manifest\.json.*more than 30,000"):
        ClevrWithMasks(clevr_copy)


def _rewrite_shard(root: Path, name: str, **arrays) -> Path:
    path = root / name
    with np.load(path) as shard:
        content = {key: shard[key] for key in shard.files}
    content.update(arrays)
    np.savez(path, **{k: v for k, v in content.items() if v is not None})
    return path


def test_clevr_reads_numpy_savez_shards(clevr_copy, clevr_root):
    path = _rewrite_shard(clevr_copy, "shard_00000.npz")  # numpy's own writer (zip64 local headers)
    split = ClevrWithMasks(clevr_copy).split("test")
    with np.load(path) as shard:
        np.testing.assert_array_equal(split.image(3), shard["images"][3])
    np.testing.assert_array_equal(split.mask(3), ClevrWithMasks(clevr_root).split("test").mask(3))


def test_clevr_missing_key(clevr_copy):
    path = _rewrite_shard(clevr_copy, "shard_00001.npz", masks=None)
    with pytest.raises(DataError, match=re.escape(path.name) + ".*'masks' missing"):
        ClevrWithMasks(clevr_copy)


def test_clevr_wrong_shape(clevr_copy):
    with np.load(clevr_copy / "shard_00000.npz") as shard:
        masks = shard["masks"]
    path = _rewrite_shard(clevr_copy, "shard_00000.npz", masks=masks[..., None])
    with pytest.raises(DataError, match=re.escape(path.name) + r".*'masks' is uint8 \(20, 240, 320, 1\)"):
        ClevrWithMasks(clevr_copy)


def test_clevr_shard_shorter_than_manifest(clevr_copy):
    with np.load(clevr_copy / "shard_00001.npz") as shard:
        images, masks = shard["images"], shard["masks"]
    path = _rewrite_shard(clevr_copy, "shard_00001.npz", images=images[:15], masks=masks[:15])
    with pytest.raises(DataError, match=re.escape(path.name) + ".*manifest.json says 20 scenes"):
        ClevrWithMasks(clevr_copy)


def test_clevr_manifest_count_mismatch(clevr_copy):
    manifest_path = clevr_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["num_images"] = 41
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest\.json.*num_images is 41.*add up to 40"):
        ClevrWithMasks(clevr_copy)
    manifest["num_images"], manifest["shards"][1]["start"] = 40, 19
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest\.json.*shard_00001\.npz.*should start at 20"):
        ClevrWithMasks(clevr_copy)


def test_clevr_bad_manifest(clevr_copy):
    manifest_path = clevr_copy / "manifest.json"
    manifest_path.write_text("{")
    with pytest.raises(DataError, match=r"manifest\.json.*cannot parse"):
        ClevrWithMasks(clevr_copy)
    manifest_path.write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(DataError, match=r"manifest\.json.*vrbench-clevr-npz"):
        ClevrWithMasks(clevr_copy)
    manifest_path.unlink()
    with pytest.raises(DataError, match=r"manifest\.json: missing"):
        ClevrWithMasks(clevr_copy)


def test_clevr_missing_or_compressed_shard(clevr_copy):
    with np.load(clevr_copy / "shard_00000.npz") as shard:
        content = {key: shard[key] for key in shard.files}
    np.savez_compressed(clevr_copy / "shard_00000.npz", **content)
    with pytest.raises(DataError, match=r"shard_00000\.npz.*np\.savez_compressed"):
        ClevrWithMasks(clevr_copy)
    (clevr_copy / "shard_00000.npz").unlink()
    with pytest.raises(DataError, match=r"shard_00000\.npz.*missing"):
        ClevrWithMasks(clevr_copy)


def test_clevr_mask_index_too_large(clevr_copy):
    with np.load(clevr_copy / "shard_00001.npz") as shard:
        masks = shard["masks"].copy()
    masks[4, 0, 0] = 12
    path = _rewrite_shard(clevr_copy, "shard_00001.npz", masks=masks)
    split = ClevrWithMasks(clevr_copy).split("train")  # scene 24 is train item 12
    split.mask(11)
    with pytest.raises(DataError, match=re.escape(path.name) + r".*masks\[4\] \(scene 000024\).*index 12"):
        split.mask(12)
