"""ADE20K and COCO 2017 instance readers on their procedural stand-ins: layout, content, determinism, failure modes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from harness.data import fingerprint, is_procedural, synthetic
from harness.data.ade20k import ADE20K, CLASS_NAMES, DRAWN_CLASSES
from harness.data.coco import CATEGORIES, DRAWN_CATEGORIES, COCOInstances, uncompressed_rle
from harness.errors import DataError

# pycocotools 2.0.11 trips a numpy 2 DeprecationWarning inside its own mask decoding (not our code)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ade") / "ADEChallengeData2016"
    ADE20K.synthesize(root, "tiny", seed=0)
    return root


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco") / "coco"
    COCOInstances.synthesize(root, "tiny", seed=0)
    return root


@pytest.fixture
def ade_copy(ade_root, tmp_path) -> Path:
    return Path(shutil.copytree(ade_root, tmp_path / "ADEChallengeData2016"))


@pytest.fixture
def coco_copy(coco_root, tmp_path) -> Path:
    return Path(shutil.copytree(coco_root, tmp_path / "coco"))


def _instances(root: Path, split: str = "val2017") -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _rewrite_instances(root: Path, dataset: dict, split: str = "val2017") -> Path:
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(dataset))
    return path


def test_ade20k_splits_and_content(ade_root):
    ade = ADE20K(ade_root)
    training, validation = ade.split("training"), ade.split("validation")
    assert (len(training), len(validation)) == (60, 20)
    assert training.ids == [f"ADE_train_{n:08d}" for n in range(1, 61)]
    assert validation.ids[-1] == "ADE_val_00000020"
    assert is_procedural(ade_root) and ADE20K.split_names == ("training", "validation")
    assert (len(CLASS_NAMES), CLASS_NAMES[1], CLASS_NAMES[3], CLASS_NAMES[13], CLASS_NAMES[150]) == (
        151,
        "wall",
        "sky",
        "person",
        "flag",
    )
    seen = set()
    for split in (training, validation):
        assert (split.num_classes, split.ignore_index) == (151, 0)
        for i in range(len(split)):
            image, mask = split.image(i), split.mask(i)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
            assert 144 <= image.shape[0] <= 256 and 192 <= image.shape[1] <= 320
            seen |= set(np.unique(mask).tolist())
    assert seen == {0, *DRAWN_CLASSES} and len(DRAWN_CLASSES) >= 20
    with Image.open(training.mask_path(0)) as png:
        assert png.mode == "L" and png.format == "PNG"
    with Image.open(training.image_path(0)) as jpg:
        assert jpg.format == "JPEG"


def test_ade20k_classes_look_different(ade_root):
    split = ADE20K(ade_root).split("training")
    sums, counts = np.zeros((151, 3)), np.zeros(151)
    for i in range(len(split)):
        mask = split.mask(i).ravel()
        np.add.at(sums, mask, split.image(i).reshape(-1, 3))
        np.add.at(counts, mask, 1)
    drawn = list(DRAWN_CLASSES)
    means = sums[drawn] / counts[drawn, None]
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(len(drawn), 1)]
    assert distances.min() > 1 and np.median(distances) > 30


def test_coco_splits_and_content(coco_root):
    coco = COCOInstances(coco_root)
    train, val = coco.split("train2017"), coco.split("val2017")
    assert (len(train), len(val)) == (40, 20)
    assert not set(train.ids) & set(val.ids) and is_procedural(coco_root)
    assert all(re.fullmatch(r"\d{12}", x) for x in train.ids + val.ids)
    assert val.image_ids == sorted(val.image_ids) and val.ids == [f"{x:012d}" for x in val.image_ids]
    dataset = _instances(coco_root, "train2017")
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    assert len(names) == 80 and max(names) == 90 and not {12, 26, 29, 30, 45, 66, 68, 69, 71, 83} & set(names)
    assert (names[1], names[2], names[3], names[18], names[62], names[90]) == (
        "person",
        "bicycle",
        "car",
        "dog",
        "chair",
        "toothbrush",
    )
    assert names == {c: name for c, (name, _) in CATEGORIES.items()}
    crowds = [a for a in dataset["annotations"] if a["iscrowd"]]
    assert crowds and all(isinstance(a["segmentation"]["counts"], list) for a in crowds)
    assert all(isinstance(a["segmentation"], list) for a in dataset["annotations"] if not a["iscrowd"])
    assert all(len(a["bbox"]) == 4 and a["area"] > 0 for a in dataset["annotations"])
    seen = set()
    for split in (train, val):
        assert (split.num_classes, split.ignore_index) == (91, 255)
        for i in range(len(split)):
            image, mask = split.image(i), split.mask(i)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
            assert 144 <= image.shape[0] <= 256 and 192 <= image.shape[1] <= 320
            seen |= set(np.unique(mask).tolist())
    assert 0 in seen and seen <= {0, *DRAWN_CATEGORIES} and len(seen) > 12


def _reference_masks(dataset: dict) -> dict[int, np.ndarray]:
    """docs/protocols.md §5 computed independently: per annotation in file order, pycocotools' own decoding, painted in turn."""
    images = {image["id"]: image for image in dataset["images"]}
    masks = {x: np.zeros((image["height"], image["width"]), np.uint8) for x, image in images.items()}
    for ann in dataset["annotations"]:
        h, w = images[ann["image_id"]]["height"], images[ann["image_id"]]["width"]
        rles = mask_utils.frPyObjects(ann["segmentation"], h, w)
        painted = mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles)
        masks[ann["image_id"]][painted > 0] = ann["category_id"]
    return masks


def test_coco_mask_is_protocol_d(coco_root):
    split = COCOInstances(coco_root).split("val2017")
    reference = _reference_masks(_instances(coco_root))
    for i, image_id in enumerate(split.image_ids):
        np.testing.assert_array_equal(split.mask(i), reference[image_id])
    dataset = _instances(coco_root)
    overlapping = 0
    for image_id in split.image_ids:
        anns = [a for a in dataset["annotations"] if a["image_id"] == image_id]
        decoded = _reference_masks({**dataset, "annotations": anns[:-1]})[image_id]
        last = _reference_masks({**dataset, "annotations": anns[-1:]})[image_id] > 0
        overlapping += bool((decoded[last] > 0).any())
    assert overlapping  # the stand-in exercises overwriting


def test_coco_later_annotations_overwrite_earlier(coco_copy):
    dataset = _instances(coco_copy)
    image = dataset["images"][0]
    h, w = image["height"], image["width"]
    square = [[10.0, 10.0, 60.0, 10.0, 60.0, 60.0, 10.0, 60.0]]
    band = np.zeros((h, w), bool)
    band[30:40, :] = True
    extra = [
        {"id": 10**6, "image_id": image["id"], "category_id": 5, "segmentation": square, "iscrowd": 0},
        {"id": 10**6 + 1, "image_id": image["id"], "category_id": 90, "segmentation": uncompressed_rle(band),
         "iscrowd": 1},
    ]  # fmt: skip
    for order, expected in ((extra, 90), (extra[::-1], 5)):
        _rewrite_instances(coco_copy, {**dataset, "annotations": dataset["annotations"] + order})
        split = COCOInstances(coco_copy).split("val2017")
        mask = split.mask(split.image_ids.index(image["id"]))
        assert mask[35, 35] == expected and mask[20, 20] == 5 and mask[35, w - 1] == 90


def test_uncompressed_rle_round_trips():
    rng = np.random.default_rng(0)
    for first in (False, True):
        mask = rng.random((13, 17)) < 0.4
        mask[0, 0] = first
        rle = uncompressed_rle(mask)
        assert sum(rle["counts"]) == mask.size and (rle["counts"][0] == 0) == first
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 13, 17))
        np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_shape_polygons_trace_shape_masks():
    for shape in synthetic.SHAPES:
        polygons = [np.ravel(p).tolist() for p in synthetic.shape_polygons(shape, 50, 45, 30, 0.4)]
        traced = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 100, 100))).astype(bool)
        drawn = synthetic.shape_mask(shape, 100, 100, 50, 45, 30, 0.4)
        assert (traced & drawn).sum() / (traced | drawn).sum() > 0.9, shape


def test_synthesize_is_deterministic(tmp_path, ade_root, coco_root):
    for reader, reference in ((ADE20K, ade_root), (COCOInstances, coco_root)):
        reader.synthesize(tmp_path / reader.name / "s0", "tiny", seed=0)
        reader.synthesize(tmp_path / reader.name / "s1", "tiny", seed=1)
        assert fingerprint(tmp_path / reader.name / "s0", full=True) == fingerprint(reference, full=True)
        assert fingerprint(tmp_path / reader.name / "s1") != fingerprint(reference)


def test_coco_annotation_file_is_read_once(coco_root):
    coco = COCOInstances(coco_root)
    assert coco.split("val2017").coco is coco.split("val2017").coco


@pytest.mark.parametrize("reader, split", [(ADE20K, "test"), (COCOInstances, "test2017")])
def test_unknown_split(reader, split, ade_root, coco_root):
    with pytest.raises(DataError, match=f"unknown split '{split}'"):
        reader(ade_root if reader is ADE20K else coco_root).split(split)


def test_missing_layout_folders(tmp_path):
    with pytest.raises(DataError, match="annotations"):
        ADE20K(tmp_path)
    with pytest.raises(DataError, match="annotations"):
        COCOInstances(tmp_path)


def test_ade20k_truncated_jpeg(ade_copy):
    split = ADE20K(ade_copy).split("validation")
    path = split.image_path(0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=re.escape(path.name)):
        split.image(0)


def test_ade20k_missing_annotation(ade_copy):
    missing = ade_copy / "annotations/training/ADE_train_00000007.png"
    missing.unlink()
    with pytest.raises(DataError, match=re.escape(missing.name)) as err:
        ADE20K(ade_copy).split("training")
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_ade20k_annotation_without_image(ade_copy):
    (ade_copy / "images/validation/ADE_val_00000003.jpg").unlink()
    with pytest.raises(DataError, match=r"ADE_val_00000003\.jpg"):
        ADE20K(ade_copy).split("validation")


@pytest.mark.parametrize("mode", ["RGB", "P", "I;16"])
def test_ade20k_wrong_png_mode(ade_copy, mode):
    split = ADE20K(ade_copy).split("training")
    path = split.mask_path(1)
    Image.open(path).convert(mode).save(path)
    with pytest.raises(DataError, match=re.escape(path.name) + f".*mode {re.escape(mode)}"):
        split.mask(1)


def test_ade20k_value_above_150(ade_copy):
    split = ADE20K(ade_copy).split("training")
    labels = split.mask(2)
    labels[0, 0] = 151
    Image.fromarray(labels).save(split.mask_path(2))
    with pytest.raises(DataError, match=re.escape(split.mask_path(2).name) + ".*151"):
        split.mask(2)


def test_ade20k_size_mismatch(ade_copy):
    split = ADE20K(ade_copy).split("validation")
    path = split.mask_path(3)
    Image.open(path).resize((50, 40), Image.NEAREST).save(path)
    with pytest.raises(DataError, match=re.escape(path.name) + ".*50x40"):
        split.mask(3)


def test_coco_json_syntax_error(coco_copy):
    path = coco_copy / "annotations/instances_val2017.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*line 2 column 12"):
        COCOInstances(coco_copy).split("val2017")


def test_coco_image_listed_but_missing(coco_copy):
    split = COCOInstances(coco_copy).split("train2017")
    missing = split.image_path(4)
    missing.unlink()
    with pytest.raises(DataError, match=re.escape(missing.name)):
        COCOInstances(coco_copy).split("train2017")


def test_coco_truncated_jpeg(coco_copy):
    split = COCOInstances(coco_copy).split("val2017")
    path = split.image_path(0)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=re.escape(path.name)):
        split.image(0)


def test_coco_unknown_image_id(coco_copy):
    dataset = _instances(coco_copy)
    dataset["annotations"][3]["image_id"] = 999_999_999
    path = _rewrite_instances(coco_copy, dataset)
    with pytest.raises(DataError, match=re.escape(path.name) + ".*unknown image id 999999999"):
        COCOInstances(coco_copy).split("val2017")


def test_coco_malformed_entries(coco_copy):
    dataset = _instances(coco_copy)
    path = _rewrite_instances(coco_copy, {**dataset, "categories": dataset["categories"] + [{"id": 91, "name": "x"}]})
    with pytest.raises(DataError, match=re.escape(path.name) + ".*category id 91"):
        COCOInstances(coco_copy).split("val2017")
    del dataset["images"][2]["height"]
    _rewrite_instances(coco_copy, dataset)
    with pytest.raises(DataError, match=re.escape(path.name) + r".*images\[2\]"):
        COCOInstances(coco_copy).split("val2017")


def test_coco_rle_of_wrong_size(coco_copy):
    dataset = _instances(coco_copy)
    image = dataset["images"][0]
    crowd = uncompressed_rle(np.ones((image["height"] + 1, image["width"]), bool))
    dataset["annotations"].append(
        {"id": 777, "image_id": image["id"], "category_id": 1, "segmentation": crowd, "iscrowd": 1}
    )
    path = _rewrite_instances(coco_copy, dataset)
    split = COCOInstances(coco_copy).split("val2017")
    with pytest.raises(DataError, match=re.escape(path.name) + ".*annotation 777.*RLE size"):
        split.mask(split.image_ids.index(image["id"]))
