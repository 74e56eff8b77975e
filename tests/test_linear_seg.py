import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import benchsdk
from harness.data.base import InMemoryDataset
from harness.errors import DataError, MethodFailure, UserError
from harness.protocols import PROTOCOLS
from harness.protocols.base import RunContext
from harness.protocols.linear_seg import (
    LinearHead,
    LinearSegParams,
    batch_starts,
    interpolation_matrix,
    neco_train_sample,
    train_epoch,
)

from colour_coded import PALETTE, PATCH, C, PaletteSplit, palette_features
from conftest import session_of

# --- the head ------------------------------------------------------------------------------------------------------


def test_interpolation_matrix_is_torch_bilinear():
    x = torch.randn(2, 3, 7, 5)
    up_h, up_w = interpolation_matrix(7, 100), interpolation_matrix(5, 100)
    ref = F.interpolate(x, size=(100, 100), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up_h @ x @ up_w.T, ref, atol=1e-5, rtol=1e-5)


def test_head_equals_the_reference_conv_on_upsampled_features():
    torch.manual_seed(0)
    head = LinearHead(6, 3, 7, 100)
    x = torch.randn(2, 7, 7, 6)
    ref = head.conv(F.interpolate(x.permute(0, 3, 1, 2), size=(100, 100), mode="bilinear"))
    torch.testing.assert_close(head(x), ref, atol=1e-5, rtol=1e-5)


def test_batch_starts_is_a_drop_last_loader_in_file_order():
    for n, batch in [(10, 3), (12, 4), (128, 128), (300, 128)]:
        loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=batch, shuffle=False, drop_last=True)
        assert [int(b[0][0]) for b in loader] == list(batch_starts(n, batch))
    assert list(batch_starts(5, 128)) == [0]  # fewer than one batch: one short batch, not none


def test_training_matches_the_reference_loop():
    """Our head (logits upsampled) and the reference's recipe (conv on upsampled features, DataLoader without
    shuffle and with drop_last, SGD + StepLR, cross-entropy ignoring 255) end with the same weights."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(11, 4, 4, 5)).astype(np.float32)
    masks = rng.integers(0, 3, size=(11, 20, 20)).astype(np.uint8)
    masks[:, :2] = 255
    torch.manual_seed(0)
    head = LinearHead(5, 3, 4, 20)
    ref = torch.nn.Conv2d(5, 3, 1)
    ref.load_state_dict(head.conv.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2) for m in (head, ref)]
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.1) for o in opts]
    loader = DataLoader(TensorDataset(torch.from_numpy(feats), torch.from_numpy(masks)), 4, drop_last=True)
    for _ in range(3):
        train_epoch(head, opts[0], feats, masks, 4, 255, "cpu")
        for x, y in loader:
            up = F.interpolate(x.permute(0, 3, 1, 2), size=(20, 20), mode="bilinear")
            loss = torch.nn.CrossEntropyLoss(ignore_index=255)(ref(up), y.long())
            opts[1].zero_grad()
            loss.backward()
            opts[1].step()
        for s in scheds:
            s.step()
    torch.testing.assert_close(head.conv.weight, ref.weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(head.conv.bias, ref.bias, atol=1e-5, rtol=1e-4)
    assert opts[0].param_groups[0]["lr"] == pytest.approx(0.005)  # dropped once, after epoch 2


# --- the protocol end to end ---------------------------------------------------------------------------------------


def stripe_masks(n, seed, size=64):
    """Vertical stripes one patch wide, of random classes (every class in every image), a few ignored pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, C, size=(n, 1, size // PATCH))
    coarse[:, 0, :C] = rng.permuted(np.tile(np.arange(C), (n, 1)), axis=1)
    masks = np.kron(coarse, np.ones((size, PATCH), dtype=np.int64)).astype(np.uint8)
    masks[:, :3, :5] = 255
    return masks


class FakeData(InMemoryDataset):
    def __init__(self, n_train=8, n_val=5, val_classes=C):
        super().__init__(
            {
                "trainaug": PaletteSplit("trainaug", stripe_masks(n_train, 1)),
                "val": PaletteSplit("val", stripe_masks(n_val, 2), val_classes),
            }
        )


class Palette(benchsdk.Method):
    """oracle: one-hot class of each patch's centre colour; random: noise; huge: beyond fp16; wrong_shape: breaks."""

    name, version, outputs = "palette", "0", ("dense",)
    patch_size, embed_dim = PATCH, C

    def __init__(self, mode="oracle"):
        self.mode, self.calls = mode, 0

    def embed_dense(self, images):
        self.calls += len(images)
        features = palette_features(images)
        if self.mode == "random":
            features = np.random.default_rng(int(images.sum()) % 2**32).normal(size=features.shape).astype(np.float32)
        if self.mode == "huge":
            features = features * 1e6
        return features[:, :-1] if self.mode == "wrong_shape" else features


FAST = {"input_size": 64, "mask_size": 8, "lr": 0.5, "batch_size": 4, "epochs": 12, "drop_at": 10}


def run(session=None, seed=0, data=None, **params):
    ctx = RunContext(session=session_of(session or Palette()), seed=seed, batch_size=3, num_workers=0, progress=False)
    protocol = PROTOCOLS["linear_seg"](LinearSegParams(**{**FAST, **params}))
    outcome = protocol.run(data or FakeData(), ctx)
    assert protocol.main_metric in outcome.metrics
    return outcome


def test_linear_head_learns_separable_features_to_100():
    outcome = run()
    assert outcome.metrics["miou"] == pytest.approx(100)
    assert outcome.metrics["miou_best_epoch"] == pytest.approx(100)
    d = outcome.details
    assert d["train_images_used"] == 8 and d["eval_images_reference"] == 4  # val: 5 images, batches of 4
    assert outcome.metrics["miou_best_epoch"] == max(d["miou_reference_images_per_epoch"])
    assert len(d["miou_per_epoch"]) == 12 and d["train_loss_per_epoch"][-1] < d["train_loss_per_epoch"][0]


def test_random_features_score_low():
    assert run(Palette("random")).metrics["miou"] < 40


def test_deterministic_given_the_seed():
    a, b, c = run(seed=1, lr=0.01), run(seed=1, lr=0.01), run(seed=2, lr=0.01)
    assert a.details == b.details and a.metrics == b.metrics
    assert a.details["train_loss_per_epoch"] != c.details["train_loss_per_epoch"]


def test_small_training_split_and_dropped_images_are_noted():
    outcome = run(batch_size=5)  # 8 training images: one batch of 5, 3 unused
    assert outcome.details["train_images_used"] == 5 and any("3 training images" in n for n in outcome.notes)
    outcome = run(batch_size=128)
    assert outcome.details["train_images_used"] == 8 and any("fewer than one batch" in n for n in outcome.notes)


def test_augmented_views_are_paired_and_reencoded_every_epoch():
    split = FakeData().split("trainaug")
    image, mask = neco_train_sample(split, 64, 64, 0, 3, 1)
    again = neco_train_sample(split, 64, 64, 0, 3, 1)
    np.testing.assert_array_equal(image, again[0])
    interior = np.ones_like(mask, dtype=bool)  # pixels whose 5×5 neighbourhood has one class
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            interior &= np.roll(mask, (dy, dx), (0, 1)) == mask
    interior &= mask != 255
    np.testing.assert_array_equal(image[interior], PALETTE[mask[interior]])
    session = Palette()
    outcome = run(session, augment=True, epochs=6, drop_at=5)
    assert session.calls == 5 + 6 * 8
    assert outcome.metrics["miou"] == pytest.approx(100)


def test_errors():
    with pytest.raises(MethodFailure, match="shape"):
        run(Palette("wrong_shape"))
    with pytest.raises(DataError, match="classes"):
        run(data=FakeData(val_classes=5))
    with pytest.raises(UserError, match="cache_dtype: float32"):
        run(Palette("huge"))
    assert run(Palette("huge"), cache_dtype="float32").metrics["miou"] == pytest.approx(100)
