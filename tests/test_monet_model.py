"""images/monet/monet.py: MONet (Burgess et al. 2019) as the ClevrTex re-implementation (karazijal/clevrtex fe982ab).

Small shapes on CPU. scripts/compare_monet.py checks it against the reference on identical weights and noise; these
tests check it alone.
"""

from __future__ import annotations

import objseg_checks as checks
import pytest
import torch
from objseg_checks import one_thread  # noqa: F401 (autouse fixture)

monet = checks.image_module("monet")

SMALL = {
    "slots": 4,
    "unet_blocks": 4,
    "base_channels": 8,
    "unet_mlp": 32,
    "encoder_channels": (8, 8, 16, 16),
    "encoder_hidden": 32,
    "decoder_channels": 8,
    "image_size": 32,
}


model = checks.builder(monet, SMALL)


def test_shapes_and_masks_partition_the_image():
    m = model()
    x = checks.discs(3, 32, 0)
    out = m(x, checks.gen(0), step=0)
    checks.assert_partition(out, x, 4)
    # the canvas is a convex combination of sigmoid means
    assert out.canvas.min() >= 0 and out.canvas.max() <= 1
    assert set(out.terms) == {"nll", "kl", "kl_mask", "loss"}
    assert out.terms["loss"] == pytest.approx(out.loss.item())
    assert out.terms["loss"] == pytest.approx(
        out.terms["nll"] + 0.5 * out.terms["kl"] + 0.5 * out.terms["kl_mask"], rel=1e-5
    )
    assert out.terms["kl"] > 0 and out.terms["kl_mask"] >= 0
    out.loss.backward()
    checks.assert_gradients(m)


def test_odd_image_size():
    m = model(image_size=36)
    out = m(checks.discs(2, 36, 1), checks.gen(0))
    assert out.masks.shape == (2, 4, 36, 36)
    torch.testing.assert_close(out.masks.sum(1), torch.ones(2, 36, 36), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="36"):
        m(checks.discs(2, 32, 1), checks.gen(0))


def test_generator_decides_the_draw():
    m = model().eval()
    x = checks.discs(2, 32, 2)
    a, _, c, _ = checks.draws(m, x)  # a, b and a reseeded d agree
    # the draw moves the reconstruction and the loss; the attention masks do not depend on it
    assert not torch.allclose(a.canvas, c.canvas) and a.loss != c.loss
    assert torch.equal(a.masks, c.masks)


def test_loss_falls_when_training():
    m = model(seed=1)
    x = checks.discs(4, 32, 3)
    losses = checks.fit(m, x, lr=3e-3)
    checks.assert_falls(losses, 0.8)  # 5468 -> ~3400 here (the NLL is positive at these sigmas)


def test_build_defaults_and_unknown_params():
    m = monet.build({})
    assert m.slots == 11 and m.z_dim == 16 and m.image_size == 128
    assert (m.beta, m.gamma, m.sigma_bg, m.sigma_fg) == (0.5, 0.5, 0.09, 0.15)
    assert len(m.attention.down) == 6 and m.attention.down[0][0].out_channels == 64
    with pytest.raises(ValueError, match="lr.*sigma"):
        monet.build({"slots": 3, "lr": 1e-4, "sigma": 0.1})
    with pytest.raises(ValueError, match="too small"):
        monet.build({**SMALL, "image_size": 4})
