"""CUB, Food-101, Imagenette2, ImageNet and MedMNIST readers on their procedural stand-ins: layout, content,
determinism, failure modes."""

from __future__ import annotations

import builtins
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from harness.data import DATASETS, fingerprint, is_procedural
from harness.data.class_folders import IMAGENETTE_WNIDS, ImageNet, Imagenette
from harness.data.cub import CUB200
from harness.data.food101 import Food101
from harness.data.medmnist import MEDMNIST_READERS
from harness.errors import DataError

FILE_READERS = (CUB200, Food101, Imagenette, ImageNet)
PathMNIST, BreastMNIST, PneumoniaMNIST = (DATASETS[f"medmnist_{f}"] for f in ("path", "breast", "pneumonia"))
GREY_FLAGS = {"octmnist", "pneumoniamnist", "breastmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist"}
MEDMNIST_CLASSES = {
    "pathmnist": 9,
    "dermamnist": 7,
    "octmnist": 4,
    "pneumoniamnist": 2,
    "breastmnist": 2,
    "bloodmnist": 8,
    "tissuemnist": 8,
    "organamnist": 11,
    "organcmnist": 11,
    "organsmnist": 11,
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    made = {}
    for reader in FILE_READERS:
        made[reader.name] = tmp_path_factory.mktemp(reader.name) / reader.subdir
        reader.synthesize(made[reader.name], "tiny", seed=0)
    return made


@pytest.fixture(scope="module")
def medmnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("medmnist") / "medmnist"  # every flag's npz side by side, as the real folder
    for reader in MEDMNIST_READERS:
        reader.synthesize(root, "tiny", seed=0)
    return root


def copy_of(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / root.name))


def test_file_readers_splits_and_content(roots):
    for reader in FILE_READERS:
        data = reader(roots[reader.name])
        assert is_procedural(data.root) and data.num_classes == 10
        assert set(reader.official_counts) == set(reader.split_names)
        for split_name, per_class in zip(reader.split_names, (8, 4)):
            split = data.split(split_name)
            assert split.labels.dtype == np.int64 and split.num_classes == 10
            assert np.bincount(split.labels, minlength=10).tolist() == [per_class] * 10
            assert len(split.ids) == len(split) == 10 * per_class
            for i in (0, len(split) - 1):
                image = split.image(i)
                assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
                assert 96 <= min(image.shape[:2]) <= max(image.shape[:2]) <= 160
                assert split.image_path(i).is_file()


def test_cub_layout(roots):
    root = roots["cub"]
    assert (root / "classes.txt").read_text().splitlines()[0] == "1 001.Black_footed_Albatross"
    images = dict(line.split() for line in (root / "images.txt").read_text().splitlines())
    labels = dict(line.split() for line in (root / "image_class_labels.txt").read_text().splitlines())
    assert list(images) == [str(i) for i in range(1, 121)] and set(labels.values()) == {str(c) for c in range(1, 11)}
    cub = CUB200(root)
    train, test = cub.split("train"), cub.split("test")
    assert not set(train.ids) & set(test.ids) and len(train.ids) + len(test.ids) == 120
    for i in range(len(test)):
        folder = images[test.ids[i]].split("/")[0]
        assert int(folder[:3]) == int(labels[test.ids[i]]) == test.labels[i] + 1
        assert test.image_path(i) == root / "images" / images[test.ids[i]]


def test_food_layout(roots):
    meta = roots["food101"] / "meta"
    classes = meta.joinpath("classes.txt").read_text().split()
    assert classes[:3] == ["apple_pie", "baby_back_ribs", "baklava"]
    assert meta.joinpath("labels.txt").read_text().splitlines()[1] == "Baby back ribs"
    test = Food101(roots["food101"]).split("test")
    assert test.ids == meta.joinpath("test.txt").read_text().split()
    assert [x for ids in json.loads(meta.joinpath("test.json").read_text()).values() for x in ids] == test.ids
    assert all(classes[label] == x.split("/")[0] for x, label in zip(test.ids, test.labels))
    assert all(re.fullmatch(r"[a-z_]+/\d{6,7}", x) for x in test.ids)


def test_class_folders_match_torchvision_image_folder(roots, tmp_path):
    root = copy_of(roots["imagenette"], tmp_path)
    assert sorted(p.name for p in (root / "val").iterdir()) == list(IMAGENETTE_WNIDS)
    (root / "train" / IMAGENETTE_WNIDS[3] / "notes.txt").write_text("not an image")
    (root / "train" / IMAGENETTE_WNIDS[3] / "nested").mkdir()
    Image.new("RGB", (32, 32)).save(root / "train" / IMAGENETTE_WNIDS[3] / "nested" / "extra.png")
    for split_name in ("train", "val"):
        split = Imagenette(root).split(split_name)
        reference = ImageFolder(root / split_name).samples
        assert [str(split.image_path(i)) for i in range(len(split))] == [path for path, _ in reference]
        assert split.labels.tolist() == [label for _, label in reference]
    split = Imagenette(root).split("val")
    assert all(re.fullmatch(r"n\d{8}/ILSVRC2012_val_\d{8}\.JPEG", x) for x in split.ids)


def test_imagenet_split_opens_no_file(roots, monkeypatch):
    data = ImageNet(roots["imagenet"])
    assert data.classes[:2] == ["n01440764", "n01443537"]

    def refuse(*args, **kwargs):
        raise AssertionError("a file was opened while listing the split")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(Image, "open", refuse)
    train = data.split("train")
    monkeypatch.undo()
    assert len(train) == 80 and re.fullmatch(r"n01440764/n01440764_\d+\.JPEG", train.ids[0])


def test_medmnist_readers(medmnist_root):
    assert [r.name for r in MEDMNIST_READERS] == [
        "medmnist_path", "medmnist_derma", "medmnist_oct", "medmnist_pneumonia", "medmnist_breast",
        "medmnist_blood", "medmnist_tissue", "medmnist_organa", "medmnist_organc", "medmnist_organs",
    ]  # fmt: skip
    assert PathMNIST.official_counts == {"train": 89996, "val": 10004, "test": 7180}
    assert BreastMNIST.official_counts == {"train": 546, "val": 78, "test": 156}
    for reader in MEDMNIST_READERS:
        data = reader(medmnist_root)
        assert reader.subdir == "medmnist" and data.num_classes == MEDMNIST_CLASSES[reader.flag]
        with np.load(medmnist_root / f"{reader.flag}_224.npz") as npz:
            assert sorted(npz.files) == sorted(f"{s}_{k}" for s in data.split_names for k in ("images", "labels"))
            stored = npz["val_images"]
            assert stored.dtype == np.uint8 and npz["val_labels"].shape == (len(stored), 1)
        grey = reader.flag in GREY_FLAGS
        assert stored.shape[1:] == ((224, 224) if grey else (224, 224, 3))
        for split_name in ("train", "val", "test"):
            split = data.split(split_name)
            assert split.labels.dtype == np.int64
            assert np.bincount(split.labels).tolist() == [8] * data.num_classes
        image = split.image(5)
        assert image.shape == (224, 224, 3) and image.dtype == np.uint8
        assert (image == image[..., :1]).all() == grey
        if grey:
            np.testing.assert_array_equal(image[..., 0], np.load(data.path)["test_images"][5])


def test_medmnist_memory_maps_and_pickles_without_pixels(medmnist_root):
    split = PathMNIST(medmnist_root).split("train")
    first = split.image(0)
    assert isinstance(split._images, np.memmap) and type(first) is np.ndarray
    restored = pickle.loads(pickle.dumps(split))
    assert restored._images is None and len(pickle.dumps(split)) < 20_000
    np.testing.assert_array_equal(restored.image(0), first)


def test_medmnist_compressed_npz_falls_back_to_loading(medmnist_root, tmp_path):
    with np.load(medmnist_root / "pneumoniamnist_224.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez_compressed(tmp_path / "pneumoniamnist_224.npz", **arrays)
    data = PneumoniaMNIST(tmp_path)
    assert data.members["val_images"].data_offset is None
    split = data.split("val")
    np.testing.assert_array_equal(split.image(3)[..., 2], arrays["val_images"][3])
    np.testing.assert_array_equal(split.labels, arrays["val_labels"].ravel())


def test_cub_colour_histograms_beat_chance(roots):
    cub = CUB200(roots["cub"])
    train, test = cub.split("train"), cub.split("test")

    def histograms(split):
        codes = [(split.image(i) // 64).reshape(-1, 3) @ [16, 4, 1] for i in range(len(split))]
        h = np.stack([np.bincount(c, minlength=64) for c in codes]).astype(float)
        return h / np.linalg.norm(h, axis=1, keepdims=True)

    nearest = (histograms(test) @ histograms(train).T).argmax(1)
    assert (train.labels[nearest] == test.labels).mean() > 0.2  # chance 0.1


def test_grey_medmnist_classes_differ_in_texture(medmnist_root):
    data = MEDMNIST_READERS[7](medmnist_root)  # organamnist: 11 classes, grey

    def spectra(split):
        out = []
        for i in range(len(split)):
            centre = split.image(i)[56:168, 56:168, 0].astype(float)
            power = np.abs(np.fft.fft2(centre - centre.mean()))
            feature = np.log1p(np.fft.fftshift(power).reshape(28, 4, 28, 4).sum((1, 3))).ravel()
            out.append((feature - feature.mean()) / np.linalg.norm(feature - feature.mean()))
        return np.stack(out)

    train, val = data.split("train"), data.split("val")
    nearest = (spectra(val) @ spectra(train).T).argmax(1)
    assert (train.labels[nearest] == val.labels).mean() > 0.25  # chance 1/11


def test_synthesize_is_deterministic(tmp_path, roots, medmnist_root):
    for reader in FILE_READERS:
        reader.synthesize(tmp_path / reader.name / "s0", "tiny", seed=0)
        reader.synthesize(tmp_path / reader.name / "s1", "tiny", seed=1)
        assert fingerprint(tmp_path / reader.name / "s0", full=True) == fingerprint(roots[reader.name], full=True)
        assert fingerprint(tmp_path / reader.name / "s1") != fingerprint(roots[reader.name])
    for seed in (0, 1):
        BreastMNIST.synthesize(tmp_path / f"breast{seed}", "tiny", seed=seed)
    reference = (medmnist_root / "breastmnist_224.npz").read_bytes()
    assert (tmp_path / "breast0/breastmnist_224.npz").read_bytes() == reference
    assert (tmp_path / "breast1/breastmnist_224.npz").read_bytes() != reference


def test_unknown_scale_and_split(roots, tmp_path):
    with pytest.raises(DataError, match="scale"):
        Food101.synthesize(tmp_path / "food", "huge")
    for reader in FILE_READERS:
        with pytest.raises(DataError, match="unknown split 'validation'"):
            reader(roots[reader.name]).split("validation")


def test_truncated_jpeg(roots, tmp_path):
    split = CUB200(copy_of(roots["cub"], tmp_path)).split("test")
    path = split.image_path(2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=re.escape(path.name)):
        split.image(2)


@pytest.mark.parametrize("reader", [CUB200, Food101])
def test_id_listed_but_missing(reader, roots, tmp_path):
    data = reader(copy_of(roots[reader.name], tmp_path))
    missing = data.split("train").image_path(7)
    missing.unlink()
    with pytest.raises(DataError, match=re.escape(missing.name)) as err:
        data.split("train")
    assert str(missing) in str(err.value)
    assert len(data.split("test")) == 40  # the other split is intact


def test_malformed_text_lines(roots, tmp_path):
    cub_root = copy_of(roots["cub"], tmp_path)
    lines = (cub_root / "images.txt").read_text().splitlines()
    lines[4] = "5"
    (cub_root / "images.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{cub_root / 'images.txt'}:5:") + ".*'5'"):
        CUB200(cub_root)
    (cub_root / "images.txt").write_text(roots["cub"].joinpath("images.txt").read_text())
    with open(cub_root / "image_class_labels.txt", "a") as f:
        f.write("\n121 201\n")
    with pytest.raises(DataError, match=re.escape("image_class_labels.txt:122:") + ".*'201'.*1..10"):
        CUB200(cub_root)
    food_root = copy_of(roots["food101"], tmp_path)
    with open(food_root / "meta/train.txt", "a") as f:
        f.write("pizza/12345\n")
    with pytest.raises(DataError, match=re.escape("train.txt:81:") + ".*'pizza'"):
        Food101(food_root).split("train")


def test_cub_label_file_lacking_ids(roots, tmp_path):
    root = copy_of(roots["cub"], tmp_path)
    lines = (root / "train_test_split.txt").read_text().splitlines()
    (root / "train_test_split.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"train_test_split\.txt.*first 120"):
        CUB200(root)


def test_mismatched_class_folders(roots, tmp_path):
    root = copy_of(roots["imagenet"], tmp_path)
    shutil.rmtree(root / "val" / "n01443537")
    with pytest.raises(DataError, match=re.escape(str(root / "val")) + ".*n01443537"):
        ImageNet(root)
    shutil.rmtree(root / "train" / "n01443537")
    assert ImageNet(root).num_classes == 9
    with pytest.raises(DataError, match=r"imagenette's 10 classes: missing n02102040, .*; unexpected n01484850"):
        Imagenette(root)  # the same folders are not Imagenette's classes


def test_expected_classes_may_be_declared_in_any_order(roots):
    class Shuffled(Imagenette):  # labels stay the sorted folder names, as ImageFolder's
        expected_classes = tuple(reversed(IMAGENETTE_WNIDS))

    assert Shuffled(roots["imagenette"]).classes == list(IMAGENETTE_WNIDS)


def test_empty_class_folder(roots, tmp_path):
    root = copy_of(roots["imagenette"], tmp_path)
    for image in (root / "val" / IMAGENETTE_WNIDS[0]).iterdir():
        image.unlink()
    data = Imagenette(root)
    assert len(data.split("train")) == 80
    with pytest.raises(DataError, match=re.escape(str(root / "val")) + f".*{IMAGENETTE_WNIDS[0]}"):
        data.split("val")


def _rewrite_npz(root: Path, tmp_path: Path, flag: str, change) -> Path:
    with np.load(root / f"{flag}_224.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    np.savez(tmp_path / f"{flag}_224.npz", **arrays)
    return tmp_path / f"{flag}_224.npz"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(validation_images=a.pop("val_images")), r"key 'val_images' missing \(found: .*validation"),
        (lambda a: a.update(train_images=a["train_images"][:, :64]), r"key 'train_images' is uint8 \(16, 64, 224\)"),
        (lambda a: a.update(test_images=np.stack([a["test_images"]] * 3, -1)), r"key 'test_images'.*\(N, 224, 224\)"),
        (lambda a: a.update(val_images=a["val_images"].astype(np.float32)), r"key 'val_images' is float32"),
        (lambda a: a.update(val_labels=a["val_labels"][:-1]), r"key 'val_labels'.*\(16, 1\), one per image"),
        (lambda a: a.update(train_labels=a["train_labels"].astype(np.float64)), r"key 'train_labels' is float64"),
    ],
)
def test_malformed_npz(change, message, medmnist_root, tmp_path):
    path = _rewrite_npz(medmnist_root, tmp_path, "pneumoniamnist", change)
    with pytest.raises(DataError, match=re.escape(str(path)) + ": " + message):
        PneumoniaMNIST(tmp_path)


def test_npz_label_out_of_range_and_broken_file(medmnist_root, tmp_path):
    path = _rewrite_npz(medmnist_root, tmp_path, "pneumoniamnist", lambda a: a["test_labels"].__setitem__(3, 2))
    data = PneumoniaMNIST(tmp_path)
    with pytest.raises(DataError, match=re.escape(str(path)) + r": key 'test_labels' holds 2; .*0\.\.1"):
        data.split("test")
    assert len(data.split("val")) == 16
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=re.escape(str(path)) + ": not a readable .npz"):
        PneumoniaMNIST(tmp_path)
    path.unlink()
    with pytest.raises(DataError, match="zenodo"):
        PneumoniaMNIST(tmp_path)
