"""images/iodine/iodine.py: IODINE (Greff et al. 2019) as the ClevrTex re-implementation (karazijal/clevrtex fe982ab).

Small shapes on CPU. scripts/compare_iodine.py checks it against the reference on identical weights and noise;
these tests check it alone.
"""

from __future__ import annotations

import math

import objseg_checks as checks
import pytest
import torch
from objseg_checks import one_thread  # noqa: F401 (autouse fixture)

iodine = checks.image_module("iodine")

SMALL = {"slots": 3, "z_dim": 8, "inference_iters": 3, "image_size": 24, "channels": 8, "lstm_dim": 16}


# checks.perturbed(): at the reference's initialisation (decoder xavier gain 0.02) the masks are 1/K to float32 precision
# whatever the slots


model = checks.builder(iodine, SMALL)


def test_shapes_masks_partition_and_gradients():
    m = checks.perturbed(model())
    x = checks.discs(2, 24, 0)
    out = m(x, checks.gen(0), step=0)
    checks.assert_partition(out, x, 3)
    assert out.canvas.min() >= 0 and out.canvas.max() <= 1  # a convex combination of sigmoid means
    assert set(out.terms) == {"loss", "nll", "kl", "nll_1", "nll_2", "nll_3"}
    assert out.terms["loss"] == pytest.approx(out.loss.item()) and out.terms["nll"] == out.terms["nll_3"]
    assert out.terms["kl"] > 0
    out.loss.backward()
    checks.assert_gradients(m, nonzero=True)  # the refinement network and its LayerNorms too


def test_one_iteration_loss_is_nll_plus_kl():
    m = checks.perturbed(model(inference_iters=1, kl_beta=0.5))
    x = checks.discs(2, 24, 1)
    out = m(x, checks.gen(0))
    assert out.loss.item() == pytest.approx(out.terms["nll"] + 0.5 * out.terms["kl"], rel=1e-6)
    # the NLL is a per-channel mixture (no log 2 pi term): above the Gaussian NLL of a perfect fit per pixel
    assert out.terms["nll"] > 3 * 24 * 24 * math.log(0.1)


def test_generator_decides_the_draw_and_eval_matches_train():
    m = checks.perturbed(model()).eval()
    x = checks.discs(2, 24, 2)
    # under no_grad (the refinement enables grad itself, and must restore it): a, b and a reseeded d agree
    a, _, c, _ = checks.draws(m, x)
    assert not a.loss.requires_grad and not a.masks.requires_grad and not a.canvas.requires_grad
    assert (a.masks - c.masks).abs().max() > 1e-3 and (a.canvas - c.canvas).abs().max() > 1e-3 and a.loss != c.loss
    # evaluation detaches its graph but computes the same numbers as a training forward
    t = m.train()(x, checks.gen(5))
    checks.assert_eval_matches_train(t, a)
    assert t.loss.requires_grad


def test_reference_image_tiling():
    x = checks.discs(3, 24, 3)
    quirk, own = checks.perturbed(model()), checks.perturbed(model(reference_image_tiling=False))
    assert torch.equal(quirk(x[:1], checks.gen(0)).masks, own(x[:1], checks.gen(0)).masks)  # the same at batch 1

    def rows_of(m, i):  # image i alone, on its rows of the batch's noise (row b * K + k)
        g = checks.gen(1)
        eps = [torch.randn((3 * 3, 8), generator=g) for _ in range(3)]
        rows = iter([e[3 * i : 3 * i + 3] for e in eps])
        m._sample = lambda mu, std, generator: mu + next(rows) * std
        try:
            return m(x[i : i + 1], checks.gen(0)).masks
        finally:
            del m._sample

    for ln in own.modules():  # eps 0: the batch-mean gradients are 1/B of one image's, LayerNorm sees no difference
        if isinstance(ln, torch.nn.LayerNorm):
            ln.eps = 0.0
    batch = own(x, checks.gen(1)).masks
    alone = torch.cat([rows_of(own, i) for i in range(3)])
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-5)
    # the reference's x.repeat(K).view(B, K): slot k of image b refines on image (b K + k) mod B, so image 0's
    # outputs change with its batch neighbours (here images 1 and 2 take the place of 2 and 3)
    y = torch.cat([x[:1], checks.discs(2, 24, 5)])
    assert (quirk(x, checks.gen(1)).masks[0] - quirk(y, checks.gen(1)).masks[0]).abs().max() > 1e-5
    assert torch.equal(own(x, checks.gen(1)).masks[0], own(y, checks.gen(1)).masks[0])


def test_loss_falls_when_training():
    m = model(seed=1, inference_iters=2)
    x = checks.discs(4, 24, 4)
    nlls = checks.fit(m, x, lr=3e-3, record=lambda out: out.terms["nll"], clip=5.0, step_index=False)
    checks.assert_falls_by(nlls, 0.3)


def test_build_defaults_and_unknown_params():
    m = iodine.build({})
    assert (m.slots, m.z_dim, m.iters, m.image_size, m.kl_beta, m.reference_tiling) == (11, 128, 5, 128, 1.0, True)
    assert m.log_var == pytest.approx(2 * math.log(0.1))
    assert m.decoder[0].out_channels == 64 and m.refine_conv[0].in_channels == 17
    assert m.refine_lstm.hidden_size == 256 and m.refine_lstm.input_size == 256 + 4 * 128
    assert sum(p.numel() for p in m.parameters()) == 1_637_060  # the reference's count at 128x128
    with pytest.raises(ValueError, match="lr.*sigma"):
        iodine.build({"slots": 3, "lr": 3e-4, "sigma": 0.1})
    with pytest.raises(ValueError, match="slots"):
        iodine.build({"slots": 1})
    with pytest.raises(ValueError, match="24"):
        model()(checks.discs(1, 32, 0), checks.gen(0))
