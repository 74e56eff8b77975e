"""images/slot_attention/slot_attention.py: Slot Attention in the ClevrTex configuration (karazijal/clevrtex fe982ab).

Small shapes on CPU. scripts/compare_slot_attention.py checks it against the reference on identical weights and noise;
these tests check it alone.
"""

from __future__ import annotations

import objseg_checks as checks
import pytest
import torch
from objseg_checks import one_thread  # noqa: F401 (autouse fixture)

slot_attention = checks.image_module("slot_attention")

# 32x32 input, a 2x2 broadcast (4 stride-2 deconvs -> 32: no resize), 16 channels
SMALL = {"slots": 4, "iters": 3, "width": 16, "slot_mlp": 32, "decoder_size": 2, "image_size": 32}


model = checks.builder(slot_attention, SMALL)


def test_shapes_masks_partition_and_loss():
    m = model()
    x = checks.discs(3, 32, 0)
    out = m(x, checks.gen(0), step=0)
    checks.assert_partition(out, x, 4, atol=1e-6)
    # loss = per-image summed squared error of the canvas, averaged over the batch
    torch.testing.assert_close(out.loss, ((out.canvas - x) ** 2).sum((1, 2, 3)).mean())
    assert out.terms == {"loss": pytest.approx(out.loss.item())}
    out.loss.backward()
    checks.assert_gradients(m, nonzero=True)


def test_resized_decoder_output_and_input_size_check():
    m = model(image_size=24)  # the decoder gives 32x32: resized bicubic to 24x24
    out = m(checks.discs(2, 24, 1), checks.gen(0))
    assert out.masks.shape == (2, 4, 24, 24) and out.canvas.shape == (2, 3, 24, 24)
    torch.testing.assert_close(out.masks.sum(1), torch.ones(2, 24, 24), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="24"):
        m(checks.discs(2, 32, 1), checks.gen(0))


def test_generator_decides_the_draw():
    m = model().eval()
    x = checks.discs(2, 32, 2)
    a, _, c, _ = checks.draws(m, x)  # a, b and a reseeded d agree
    # the slot noise moves masks, canvas and loss
    assert not torch.allclose(a.masks, c.masks) and not torch.allclose(a.canvas, c.canvas) and a.loss != c.loss


def test_loss_falls_when_training():
    m = model(seed=1)
    x = checks.discs(4, 32, 3)
    losses = checks.fit(m, x, lr=1e-3)
    checks.assert_falls(losses, 0.5)  # ~1140 -> ~290 here


def test_build_defaults_and_unknown_params():
    m = slot_attention.build({})
    assert (m.slots, m.iters, m.width, m.decoder_size, m.image_size) == (11, 3, 64, 8, 128)
    # the reference's SlotAttentionAutoEncoder((3, 128, 128), 11, 3): 2,987,524 parameters, 2,097,152 of them the
    # affine weights of LayerNorm([64, 128, 128])
    assert sum(p.numel() for p in m.parameters()) == 2_987_524
    assert sum(p.numel() for p in m.layer_norm.parameters()) == 2 * 64 * 128 * 128
    assert m.slot_attention.mlp[0].out_features == 128 and m.masks_have_background
    # the grids are rebuilt, not saved
    assert not any(k.endswith("grid") for k in m.state_dict())
    with pytest.raises(ValueError, match="lr.*num_slots"):
        slot_attention.build({"slots": 3, "lr": 1e-4, "num_slots": 7})
