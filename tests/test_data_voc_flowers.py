"""VOC 2012 and Flowers102 readers on their procedural stand-ins: layout, content, determinism, failure modes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat, savemat

from harness.data import DATASETS, fingerprint, is_procedural, open_dataset
from harness.data.clevrtex import CLEVRTEX_READERS
from harness.data.flowers102 import Flowers102
from harness.data.medmnist import MEDMNIST_READERS
from harness.data.voc import IGNORE_INDEX, VOCSegmentation, voc_palette
from harness.errors import DataError


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc") / "VOCdevkit/VOC2012"
    VOCSegmentation.synthesize(root, "tiny", seed=0)
    return root


@pytest.fixture(scope="module")
def flowers_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flowers") / "flowers-102"
    Flowers102.synthesize(root, "tiny", seed=0)
    return root


@pytest.fixture
def voc_copy(voc_root, tmp_path) -> Path:
    return Path(shutil.copytree(voc_root, tmp_path / "VOC2012"))


def test_registry_entries_are_complete():
    assert {"voc", "flowers102"} <= set(DATASETS)
    assert list(DATASETS) == sorted(DATASETS) and "in-memory" not in DATASETS
    assert set(MEDMNIST_READERS) | set(CLEVRTEX_READERS) <= set(DATASETS.values())  # made from their tables
    for name, reader in DATASETS.items():
        assert reader.name == name and reader.subdir and reader.how_to_get
        assert reader.split_names and set(reader.official_counts) <= set(reader.split_names)


def test_voc_splits_and_content(voc_root):
    voc = VOCSegmentation(voc_root)
    train, val, trainaug = voc.split("train"), voc.split("val"), voc.split("trainaug")
    assert (len(train), len(val), len(trainaug)) == (40, 20, 60)
    assert train.ids == trainaug.ids[:40] and not set(val.ids) & set(trainaug.ids)
    assert all(re.fullmatch(r"20(0[7-9]|1[0-2])_\d{6}", x) for x in trainaug.ids + val.ids)
    assert not any((voc_root / "SegmentationClassAug" / f"{x}.png").exists() for x in val.ids)
    assert is_procedural(voc_root)
    for split in (train, val, trainaug):
        assert (split.num_classes, split.ignore_index) == (21, 255)
        for i in range(0, len(split), 7):
            image, mask = split.image(i), split.mask(i)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
            assert 160 <= image.shape[0] <= 280 and 200 <= image.shape[1] <= 320
            assert set(np.unique(mask)) <= set(range(21)) | {255}
            assert (IGNORE_INDEX in mask) == (split.name != "trainaug")  # VOC's boundary band
    covered = set().union(*(np.unique(val.mask(i)).tolist() for i in range(len(val))))
    assert covered == set(range(21)) | {255}
    with Image.open(val.mask_path(0)) as png:
        assert png.mode == "P" and png.getpalette()[:9] == voc_palette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    with Image.open(trainaug.mask_path(0)) as png:
        assert png.mode == "L"


def test_voc_class_colours_differ(voc_root):
    split = VOCSegmentation(voc_root).split("trainaug")
    sums, counts = np.zeros((21, 3)), np.zeros(21)
    for i in range(len(split)):
        mask = split.mask(i).ravel()
        np.add.at(sums, mask, split.image(i).reshape(-1, 3))
        np.add.at(counts, mask, 1)
    assert counts.min() > 0
    means = sums / counts[:, None]
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(21, 1)]
    assert distances.min() > 1 and np.median(distances) > 30


def test_voc_hummingbird_layout(voc_root, voc_copy):
    (voc_copy / "JPEGImages").rename(voc_copy / "images")
    (voc_copy / "ImageSets/Segmentation").rename(voc_copy / "sets")
    (voc_copy / "sets/train.txt").unlink()
    voc = VOCSegmentation(voc_copy)
    assert voc.layout == "hummingbird"
    assert (len(voc.split("trainaug")), len(voc.split("val"))) == (60, 20)
    devkit = VOCSegmentation(voc_root).split("val")
    np.testing.assert_array_equal(voc.split("val").image(3), devkit.image(3))
    with pytest.raises(DataError, match="train.txt"):
        voc.split("train")


def test_flowers_splits_and_files(flowers_root):
    flowers = Flowers102(flowers_root)
    splits = {name: flowers.split(name) for name in ("train", "val", "test")}
    assert [len(s) for s in splits.values()] == [100, 50, 50]
    assert flowers.num_classes == 10
    for split, per_class in zip(splits.values(), (10, 5, 5)):
        assert split.labels.dtype == np.int64 and split.num_classes == 10
        assert np.bincount(split.labels, minlength=10).tolist() == [per_class] * 10
        image = split.image(0)
        assert image.dtype == np.uint8 and image.shape[2] == 3
        assert 96 <= min(image.shape[:2]) <= max(image.shape[:2]) <= 160
    assert sorted(sum((s.ids for s in splits.values()), [])) == [f"image_{n:05d}" for n in range(1, 201)]
    labels, setid = loadmat(flowers_root / "imagelabels.mat"), loadmat(flowers_root / "setid.mat")
    assert labels["labels"].shape == (1, 200) and labels["labels"].dtype == np.uint8
    assert setid["trnid"].shape == (1, 100) and setid["tstid"].dtype == np.uint16


def test_flowers_colour_histograms_beat_chance(flowers_root):
    flowers = Flowers102(flowers_root)
    train, val = flowers.split("train"), flowers.split("val")

    def histograms(split):
        codes = [(split.image(i) // 64).reshape(-1, 3) @ [16, 4, 1] for i in range(len(split))]
        h = np.stack([np.bincount(c, minlength=64) for c in codes]).astype(float)
        return h / np.linalg.norm(h, axis=1, keepdims=True)

    nearest = (histograms(val) @ histograms(train).T).argmax(1)
    assert (train.labels[nearest] == val.labels).mean() > 0.2  # chance 0.1


def test_synthesize_is_deterministic(tmp_path, voc_root, flowers_root):
    for reader, reference in ((VOCSegmentation, voc_root), (Flowers102, flowers_root)):
        reader.synthesize(tmp_path / reader.name / "s0", "tiny", seed=0)
        reader.synthesize(tmp_path / reader.name / "s1", "tiny", seed=1)
        assert fingerprint(tmp_path / reader.name / "s0", full=True) == fingerprint(reference, full=True)
        assert fingerprint(tmp_path / reader.name / "s0") == fingerprint(reference)
        assert fingerprint(tmp_path / reader.name / "s1") != fingerprint(reference)


def test_fingerprint_format_and_sensitivity(voc_copy):
    fast = fingerprint(voc_copy)
    assert re.fullmatch(r"fp1:[0-9a-f]{16}", fast) and fingerprint(voc_copy, full=True).startswith("fp1full:")
    with open(voc_copy / "ImageSets/Segmentation/val.txt", "a") as f:
        f.write("\n")
    assert fingerprint(voc_copy) != fast


def test_open_dataset_synthetic_generates_once(tmp_path):
    reader = open_dataset("flowers102", tmp_path, synthetic=True, seed=3, scale="tiny")
    assert reader.root == tmp_path / "_synthetic/flowers102-tiny-s3/flowers-102"
    assert [p.name for p in (tmp_path / "_synthetic").iterdir()] == ["flowers102-tiny-s3"]  # no staging left
    stamp = (reader.root / "setid.mat").stat().st_mtime_ns
    again = open_dataset("flowers102", tmp_path, synthetic=True, seed=3, scale="tiny")
    assert (again.root / "setid.mat").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="scale"):
        open_dataset("voc", tmp_path, synthetic=True, scale="huge")
    assert [p.name for p in (tmp_path / "_synthetic").iterdir()] == ["flowers102-tiny-s3"]
    with pytest.raises(DataError, match="unknown dataset"):
        open_dataset("imagenet-9000", tmp_path, synthetic=True)
    marker = reader.root / "PROCEDURAL.txt"
    marker.write_text("Procedural stand-in written by an older generator v0.\n")
    with pytest.raises(DataError, match="delete"):
        open_dataset("flowers102", tmp_path, synthetic=True, seed=3, scale="tiny")


def test_missing_dataset_folder_says_how_to_proceed(tmp_path):
    with pytest.raises(DataError) as err:
        open_dataset("voc", tmp_path, synthetic=False)
    message = str(err.value)
    assert str(tmp_path / "VOCdevkit/VOC2012") in message and "--data synthetic" in message
    assert "\n" not in message


def test_truncated_jpeg(voc_copy):
    split = VOCSegmentation(voc_copy).split("val")
    path = split.image_path(0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=re.escape(path.name)):
        split.image(0)


def test_rgb_mask(voc_copy):
    split = VOCSegmentation(voc_copy).split("val")
    path = split.mask_path(1)
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DataError, match=re.escape(path.name) + ".*mode RGB"):
        split.mask(1)


def test_mask_size_mismatch(voc_copy):
    split = VOCSegmentation(voc_copy).split("trainaug")
    path = split.mask_path(2)
    Image.open(path).resize((50, 40), Image.NEAREST).save(path)
    with pytest.raises(DataError, match=re.escape(path.name) + ".*50x40"):
        split.mask(2)


def test_id_listed_but_missing(voc_copy):
    voc = VOCSegmentation(voc_copy)
    missing = voc.split("val").image_path(5)
    missing.unlink()
    with pytest.raises(DataError, match=re.escape(missing.name)):
        voc.split("val")


def test_missing_folder_in_layout(voc_copy):
    shutil.rmtree(voc_copy / "SegmentationClass")
    with pytest.raises(DataError, match="SegmentationClass"):
        VOCSegmentation(voc_copy)


def test_mat_missing_key(flowers_root, tmp_path):
    root = Path(shutil.copytree(flowers_root, tmp_path / "flowers-102"))
    setid = loadmat(root / "setid.mat")
    savemat(root / "setid.mat", {"trnid": setid["trnid"], "tstid": setid["tstid"]})
    with pytest.raises(DataError, match=r"setid\.mat.*'valid'"):
        Flowers102(root)
