"""Object segmentation (ClevrTex evaluator): metrics against independent references, the protocol end to end, and
the baselines' masks. Equality with the official CLEVRTEX_Evaluator itself: scripts/compare_clevrtex.py."""

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from sklearn.metrics import adjusted_rand_score
from torchvision.transforms import InterpolationMode

import benchsdk
from harness.data.base import InMemoryDataset, SegmentationSplit
from harness.data.clevrtex import ObjectSplit
from harness.data.transforms import center_crop_resize, one_torch_thread
from harness.errors import MethodFailure, UserError
from harness.protocols import PROTOCOLS
from harness.protocols.base import RunContext
from harness.protocols.metrics import adjusted_rand_index, contingency_tables, iou_matrix, matched_ious
from harness.protocols.objseg import PERCENT_METRICS, ObjsegParams, hard_assign, object_scores, reconstruction_mse

from conftest import session_of

IMAGES = Path(__file__).resolve().parent.parent / "images"
PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ],
    np.uint8,
)


def blob_masks(n, size, objects, seed):
    """(n, size, size) object ids: 1..objects as rectangles drawn over background 0."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.int64)
    for mask in masks:
        for k in range(1, objects + 1):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(4, size // 2, 2)
            mask[y : y + h, x : x + w] = k
    return masks


def one_hot(labels, k):
    return (labels[:, None] == np.arange(k)[None, :, None, None]).astype(np.float32)


# --- metrics -----------------------------------------------------------------------------------------------------


def test_contingency_tables_count_pairs():
    rng = np.random.default_rng(0)
    gt, pred = rng.integers(0, 4, (3, 9, 7)), rng.integers(0, 5, (3, 9, 7))
    tables = contingency_tables(gt, pred, 4, 5)
    for i in range(3):
        for g, p in itertools.product(range(4), range(5)):
            assert tables[i, g, p] == np.sum((gt[i] == g) & (pred[i] == p))
    with pytest.raises(ValueError, match="outside"):
        contingency_tables(gt, pred, 3, 5)


def test_ari_equals_sklearn():
    rng = np.random.default_rng(1)
    cases = [(rng.integers(0, kt, 300), rng.integers(0, kp, 300)) for kt, kp in [(2, 2), (5, 3), (1, 4), (6, 6)]]
    truth = rng.integers(0, 4, 300)
    cases += [
        (truth, truth),
        (truth, (truth + 1) % 4),
        (truth, np.zeros(300, int)),  # perfect, relabelled, one cluster
        (np.zeros(300, int), np.zeros(300, int)),
        (truth[:1], truth[:1]),
        (truth[:0], truth[:0]),  # degenerate
        (truth, np.where(rng.random(300) < 0.1, 5, truth)),  # mostly right
    ]
    for t, p in cases:
        table = contingency_tables(t[None], p[None], 7, 7)
        assert adjusted_rand_index(table)[0] == pytest.approx(adjusted_rand_score(t, p), abs=1e-12)


def test_matched_ious_equal_brute_force_hungarian():
    rng = np.random.default_rng(2)
    for trial in range(20):
        k = 5
        gt, pred = rng.integers(0, k, (1, 12, 12)), rng.integers(0, k - trial % 3, (1, 12, 12))
        table = contingency_tables(gt, pred, k, k)[0]
        ious, matches = matched_ious(table)
        full = iou_matrix(table)
        best = max(sum(full[g, p] for g, p in enumerate(perm)) for perm in itertools.permutations(range(k)))
        assert ious.sum() == pytest.approx(best, abs=1e-6)
        np.testing.assert_allclose(ious, full[np.arange(k), matches], atol=1e-7)
        assert sorted(matches) == list(range(k))


def test_oracle_scores_100_and_one_mask_scores_0():
    gt = blob_masks(4, 32, 5, seed=3)
    oracle = object_scores(gt, gt, 11)
    for name in PERCENT_METRICS:
        np.testing.assert_allclose(oracle[name], 1.0)
    permuted = object_scores(gt, (gt * 3) % 11, 11)  # other slot ids, same segments
    np.testing.assert_allclose(permuted["miou_fg"], 1.0)
    single = object_scores(gt, np.zeros_like(gt), 11)
    np.testing.assert_allclose(single["ari_fg"], 0.0)
    np.testing.assert_allclose(single["ari"], 0.0)
    np.testing.assert_allclose(single["miou_fg"], 0.0)  # the single mask matches the background best


def test_denominator_quirk_appears_exactly_with_an_extra_nonempty_slot():
    gt = np.zeros((1, 20, 20), np.int64)
    gt[0, 2:8, 2:8], gt[0, 10:16, 2:8], gt[0, 2:8, 10:18] = 1, 2, 3  # 36, 36, 48 pixels
    exact = object_scores(gt, gt, 11)
    assert exact["miou_fg"][0] == exact["miou_fg_corrected"][0] == 1.0

    extra = gt.copy()
    extra[0, 2:8, 16:18] = 7  # 12 pixels of object 3 go to a slot no GT object needs
    scores = object_scores(gt, extra, 11)
    fg = 1 + 1 + 36 / 48
    assert scores["miou_fg"][0] == pytest.approx(fg / 4)  # num_pairs − 1 = 3 objects + the extra slot
    assert scores["miou_fg_corrected"][0] == pytest.approx(fg / 3)
    assert scores["miou"][0] == pytest.approx((1 + fg) / 5)
    assert scores["miou_corrected"][0] == pytest.approx((1 + fg) / 4)
    assert scores["unmatched_slots"][0] == 1

    merged = gt.copy()
    merged[merged == 3] = 2  # a missed object leaves a GT slot matched to an empty prediction: no extra pair
    scores = object_scores(gt, merged, 11)
    assert scores["miou_fg"][0] == pytest.approx(scores["miou_fg_corrected"][0])
    assert scores["miou_fg"][0] == pytest.approx((1 + 48 / 84) / 3)
    assert scores["unmatched_slots"][0] == 0


def test_dice_acc_and_covering_by_hand():
    gt = np.array([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 2, 2]]])  # 8 background, 4 + 4 object pixels
    pred = np.array([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 3, 2, 2]]])  # slot 1 takes 2 pixels of object 2
    scores = object_scores(gt, pred, 4)  # matching 0-0 (IoU 7/8), 1-1 (4/6), 2-2 (2/4), empty 3-3: 4 pairs
    assert scores["dice"][0] == pytest.approx((14 / 15 + 8 / 10 + 4 / 6 + 0) / 4)
    assert scores["dice_fg"][0] == pytest.approx((8 / 10 + 4 / 6 + 0) / 3)
    assert scores["acc"][0] == 0  # 4 non-empty slots, 3 GT segments
    assert scores["msc_corrected"][0] == pytest.approx((8 * 7 / 8 + 4 * 4 / 6 + 4 * 2 / 4) / 16)
    assert scores["msc"][0] == pytest.approx((8 * 7 / 8 + 4 * 4 / 6) / 12)  # the reference skips GT 2 and slot 3

    merged = np.where(gt == 2, 1, gt)  # objects 1 and 2 in one slot, matched to one of them (a tie)
    scores = object_scores(gt, merged, 4)
    assert scores["dice"][0] == pytest.approx((1 + 8 / 12) / 3) and scores["dice_fg"][0] == pytest.approx(4 / 12)
    assert scores["msc_corrected"][0] == pytest.approx((8 + 4 * 4 / 8 + 4 * 4 / 8) / 16)
    assert scores["msc"][0] == pytest.approx(8 / 12)  # the merged slot is the reference's last label: no candidate
    exact = object_scores(gt, gt, 4)
    assert exact["acc"][0] == exact["msc"][0] == exact["dice_fg"][0] == 1.0


def test_scores_without_objects_are_undefined_where_the_reference_divides_by_zero():
    gt = np.zeros((1, 8, 8), np.int64)
    scores = object_scores(gt, gt, 11)
    assert np.isnan(scores["miou_fg"][0]) and np.isnan(scores["miou_fg_corrected"][0])
    assert np.isnan(scores["dice_fg"][0]) and np.isnan(scores["msc"][0])  # the reference: NaN, ZeroDivisionError
    assert scores["ari_fg"][0] == 1.0  # sklearn's value on no pixels, as the reference gets
    assert scores["miou"][0] == scores["dice"][0] == scores["msc_corrected"][0] == scores["acc"][0] == 1.0


def test_hard_assign_prepends_background_and_breaks_ties_first():
    masks = np.zeros((1, 3, 2, 2), np.float32)
    masks[0, 0, 0, 0] = 0.9
    masks[0, 2, 0, 1] = 0.3
    masks[0, :2, 1, 1] = 0.6  # tie between slots 0 and 1
    labels, k = hard_assign(masks, have_background=True)
    assert k == 3 and labels[0].tolist() == [[0, 2], [0, 0]]
    labels, k = hard_assign(masks, have_background=False)  # background = 1 − Σ masks
    assert k == 4 and labels[0].tolist() == [[1, 0], [0, 1]]


def test_reconstruction_mse_is_a_per_image_sum():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    recon = rng.random((2, 3, 5, 6)).astype(np.float32)
    expected = [
        sum((recon[i, c, y, x] - images[i, y, x, c] / 255) ** 2 for c in range(3) for y in range(5) for x in range(6))
        for i in range(2)
    ]
    np.testing.assert_allclose(reconstruction_mse(recon, images), expected, rtol=1e-6)


def test_center_crop_resize_matches_torchvision_and_samples_mask_centres():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    mask = rng.integers(0, 11, (240, 320)).astype(np.uint8)
    image, labels = center_crop_resize(img, mask, 0.8, 128)
    expected = TF.resized_crop(Image.fromarray(img), 24, 64, 192, 192, [128, 128], InterpolationMode.BILINEAR)
    np.testing.assert_array_equal(image, np.asarray(expected))
    rows = 24 + np.floor((np.arange(128) + 0.5) * 1.5).astype(int)  # PIL nearest: pixel centres
    cols = 64 + np.floor((np.arange(128) + 0.5) * 1.5).astype(int)
    np.testing.assert_array_equal(labels, mask[rows[:, None], cols[None, :]])


def test_center_crop_resize_tensor_matches_torchvision_tensor_resize():
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    mask = rng.integers(0, 11, (240, 320)).astype(np.uint8)
    image, labels = center_crop_resize(img, mask, 0.8, 128, resample="tensor")
    crop = torch.from_numpy(img[24:216, 64:256]).permute(2, 0, 1).float() / 255
    with one_torch_thread():  # as in the reference's DataLoader workers (the result depends on the thread count)
        expected = TF.resize(crop, [128, 128], InterpolationMode.BILINEAR, antialias=False)  # torchvision 0.9's
    np.testing.assert_array_equal(image, (expected.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    rows = 24 + np.floor(np.arange(128) * 1.5).astype(int)  # torch nearest: floor(dst · scale)
    cols = 64 + np.floor(np.arange(128) * 1.5).astype(int)
    np.testing.assert_array_equal(labels, mask[rows[:, None], cols[None, :]])
    with pytest.raises(ValueError, match="resample"):
        center_crop_resize(img, mask, 0.8, 128, resample="bicubic")


# --- the protocol end to end -------------------------------------------------------------------------------------


class BlobSplit(ObjectSplit):
    """Flat-coloured objects (PALETTE[id]): a method can find them only through the colours."""

    max_objects = 10

    def __init__(self, n, size, objects, seed):
        self.name, self.ids = "test", [f"scene_{i}" for i in range(n)]
        self.masks = blob_masks(n, size, objects, seed).astype(np.uint8)

    def image(self, i):
        return PALETTE[self.masks[i]]

    def mask(self, i):
        return self.masks[i]


class PlainSplit(SegmentationSplit):
    name, ids, num_classes, ignore_index = "test", ["a"], 2, 255

    def image(self, i):
        return np.zeros((8, 8, 3), np.uint8)

    def mask(self, i):
        return np.zeros((8, 8), np.uint8)


class Palette(benchsdk.Method):
    """Oracle: slot = nearest palette colour. `mode` changes what it declares or returns."""

    name, version, outputs = "palette", "0", ("masks",)

    def __init__(self, mode="oracle"):
        self.mode = mode

    def info(self):
        background = {"foreground_slots": False, "bad_info": "yes"}.get(self.mode, True)
        return {**super().info(), "masks_have_background": background}

    def segment(self, images):
        ids = ((images[..., None, :].astype(int) - PALETTE.astype(int)) ** 2).sum(-1).argmin(-1)
        masks = one_hot(ids, len(PALETTE))
        recon = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
        if self.mode == "foreground_slots":
            masks = masks[:, 1:]
        if self.mode == "wrong_shape":
            masks = masks[..., :-1]
        return masks, None if self.mode == "no_reconstruction" else recon


def run_objseg(session, split=None, **params):
    params = {"crop_fraction": 1.0, "input_size": 32, **params}  # no resampling: the oracle stays exact
    protocol = PROTOCOLS["objseg"](ObjsegParams(**params))
    ctx = RunContext(session=session_of(session), seed=0, batch_size=3, num_workers=0, progress=False)
    outcome = protocol.run(InMemoryDataset({"test": split or BlobSplit(7, 32, 6, seed=6)}), ctx)
    assert protocol.main_metric in outcome.metrics
    return outcome, ctx


@pytest.mark.parametrize("mode", ["oracle", "foreground_slots"])
def test_protocol_scores_oracle_100(mode):
    outcome, ctx = run_objseg(Palette(mode))
    for name in PERCENT_METRICS:
        assert outcome.metrics[name] == pytest.approx(100)
    assert outcome.metrics["mse"] == pytest.approx(0, abs=1e-9)
    assert outcome.details["eval_images"] == 7 and outcome.details["mask_slots"] == [11 - (mode != "oracle")]
    assert set(ctx.stopwatch.totals) >= {"data", "evaluator"}


@pytest.mark.parametrize("resample", ["pil", "tensor"])
def test_protocol_default_crop_and_missing_reconstructions(resample):
    outcome, _ = run_objseg(Palette("no_reconstruction"), crop_fraction=0.8, input_size=24, resample=resample)
    assert "mse" not in outcome.metrics and any("mse omitted" in note for note in outcome.notes)
    assert 60 < outcome.metrics["ari_fg"] < 100  # edges blur (and torch's nearest mask is shifted a little)
    assert outcome.details["resample"] == resample


def test_protocol_leaves_out_images_without_objects():
    split = BlobSplit(4, 32, 3, seed=7)
    split.masks[1] = 0
    outcome, _ = run_objseg(Palette(), split)
    assert outcome.metrics["miou_fg"] == pytest.approx(100)
    assert outcome.details["images_left_out"] == {"miou_fg": 1, "miou_fg_corrected": 1, "dice_fg": 1, "msc": 1}


def test_protocol_errors():
    with pytest.raises(MethodFailure, match=r"masks has shape \(\d+, \d+, 32, 31\), expected \(\d+, \*, 32, 32\)"):
        run_objseg(Palette("wrong_shape"))  # caught by the session's own check, as for a live method
    with pytest.raises(MethodFailure, match="masks_have_background"):
        run_objseg(Palette("bad_info"))
    with pytest.raises(UserError, match="object masks"):
        run_objseg(Palette(), PlainSplit())
    with pytest.raises(ValueError):
        ObjsegParams(crop_fraction=1.5)


# --- the baselines' masks ----------------------------------------------------------------------------------------


def load_adapter(name):
    spec = importlib.util.spec_from_file_location(f"{name}_adapter", IMAGES / name / "adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, cls", [("pixels", "Pixels"), ("random_vit", "RandomViT")])
def test_baseline_segment_outputs(name, cls):
    method = getattr(load_adapter(name), cls)()
    method.setup(0, {})
    gt = blob_masks(2, 32, 4, seed=8)
    images = PALETTE[gt]
    masks, recon = method.segment(images)
    assert masks.shape == (2, 11, 32, 32) and recon.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(masks.sum(1), 1)  # one-hot
    assert recon.min() >= 0 and recon.max() <= 1
    again, _ = method.segment(images)
    np.testing.assert_array_equal(masks, again)  # seeded
    if name == "pixels":  # flat colours: every segment lies inside one object, so the mean colour is exact
        assert reconstruction_mse(recon, images).max() < 1e-9
        assert object_scores(gt, masks.argmax(1), 11)["ari_fg"].min() > 0.5


def test_random_vit_clusters_upsampled_tokens_in_their_span():
    """The adapter's cheaper coordinates keep every distance between upsampled token vectors."""
    span = load_adapter("random_vit")._upsampled_in_token_span
    tokens = np.random.default_rng(9).normal(size=(3, 4, 32)).astype(np.float32)
    coords = span(tokens, 12, 16)
    grid = torch.from_numpy(tokens).permute(2, 0, 1)[None].double()
    full = torch.nn.functional.interpolate(grid, size=(12, 16), mode="bilinear", align_corners=False)
    full = full[0].reshape(32, -1).T.numpy()
    assert coords.shape == (12 * 16, 12)
    distances = ((coords[:, None] - coords[None]) ** 2).sum(-1)
    np.testing.assert_allclose(distances, ((full[:, None] - full[None]) ** 2).sum(-1), rtol=1e-4, atol=1e-4)
