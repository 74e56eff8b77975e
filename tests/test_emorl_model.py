"""images/emorl/emorl.py: EfficientMORL (Emami et al. 2021) as the ClevrTex reference (karazijal/clevrtex fe982ab).

Small shapes on CPU. scripts/compare_emorl.py checks it against the reference on identical weights and noise; these
tests check it alone.
"""

from __future__ import annotations

import math

import objseg_checks as checks
import pytest
import torch
from objseg_checks import one_thread  # noqa: F401 (autouse fixture)

emorl = checks.image_module("emorl")

SMALL = {"slots": 4, "z_dim": 16, "image_size": 32, "encoder_channels": 16, "decoder_channels": 16, "hidden": 32}


# checks.perturbed(): at the reference's initialisation (decoder xavier gain 0.02) the masks are 1/K to float32 precision
# whatever the slots


model = checks.builder(emorl, SMALL)


def test_shapes_masks_partition_and_gradients():
    m = model()
    x = checks.discs(3, 32, 0)
    out = m(x, checks.gen(0), step=0)
    checks.assert_partition(out, x, 4)
    assert out.canvas.min() >= 0 and out.canvas.max() <= 1  # a convex combination of sigmoid means
    assert {"loss", "nll", "kl", "geco_beta", "geco_c_ema", "refinement_iters"} <= set(out.terms)
    assert out.terms["refinement_iters"] == 3 and {"delta_1", "delta_2", "delta_3"} <= set(out.terms)
    assert out.terms["loss"] == pytest.approx(out.loss.item())
    # the final pass's NLL: Gaussian (sigma 0.1, no 2 pi term) of the canvas, summed per image, batch mean
    nll = (0.5 * (x - out.canvas) ** 2 / 0.01 + math.log(0.1)).sum((1, 2, 3)).mean()
    assert out.terms["nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert out.terms["kl"] > 0
    out.loss.backward()
    checks.assert_gradients(m)


def test_generator_decides_the_draw_and_eval_matches_train():
    m = checks.perturbed(model()).eval()
    x = checks.discs(2, 32, 2)
    a, _, c, _ = checks.draws(m, x)  # under no_grad (the refinement enables grad itself): a, b and a reseeded d agree
    assert not a.loss.requires_grad and not a.masks.requires_grad and not a.canvas.requires_grad
    assert (a.masks - c.masks).abs().max() > 1e-3 and (a.canvas - c.canvas).abs().max() > 1e-3
    assert not torch.equal(a.masks, c.masks) and not torch.equal(a.canvas, c.canvas) and a.loss != c.loss
    # evaluation detaches its graph but computes the same numbers as a warm-up training step (3 passes, no GECO)
    t = m.train()(x, checks.gen(5), step=0)
    checks.assert_eval_matches_train(t, a)


def test_loss_falls_when_training():
    m = model(seed=1, refinement_curriculum=((-1, 1),))  # one refinement pass: half the time of three
    x = checks.discs(4, 32, 3)
    nlls = checks.fit(m, x, lr=3e-3, record=lambda out: out.terms["nll"], clip=5.0)
    checks.assert_falls_by(nlls, 0.2)  # ~5800 -> ~200 here (the floor is -3072 log 10 = -7074)


def test_refinement_curriculum_and_evaluation_passes():
    m = model()
    x = checks.discs(2, 32, 4)
    assert m(x, checks.gen(0), step=99_999).terms["refinement_iters"] == 3
    out = m(x, checks.gen(0), step=100_000)
    assert out.terms["refinement_iters"] == 1 and "delta_2" not in out.terms
    assert m(x, checks.gen(0), step=None).terms["refinement_iters"] == 3
    assert m.eval()(x, checks.gen(0), step=300_000).terms["refinement_iters"] == 3  # evaluation: refinement_iters
    assert model(refinement_iters=0).eval()(x, checks.gen(0)).terms["refinement_iters"] == 0


def test_geco_updates_and_state_dict_round_trip():
    warm, target, alpha, lr = 2, -3000.0, 0.9, 1e-3
    m = model(geco_warm_start=warm, geco_target=target, geco_ema_alpha=alpha, geco_beta_stepsize=lr)
    assert {"geco_beta", "geco_c_ema", "geco_started"} <= set(m.state_dict())
    assert all(not n.startswith("geco") for n, _ in m.named_parameters())
    x = checks.discs(2, 32, 5)
    g = checks.gen(0)
    for step in range(warm):  # warm-up: no change
        out = m(x, g, step=step)
    assert m.geco_c_ema.item() == 0 and not m.geco_started and m.geco_beta.item() == pytest.approx(0.55)
    out = m(x, g, step=warm)  # first GECO step: the EMA starts at target - NLL, beta unchanged
    c = target - out.terms["nll"]
    assert m.geco_started and m.geco_c_ema.item() == pytest.approx(c, rel=1e-6)
    assert m.geco_beta.item() == pytest.approx(0.55)
    out = m(x, g, step=warm + 1)
    c = alpha * c + (1 - alpha) * (target - out.terms["nll"])
    assert m.geco_c_ema.item() == pytest.approx(c, rel=1e-5)
    assert c < 0 and m.geco_beta.item() == pytest.approx(0.55 - lr * c, rel=1e-5)  # constraint unmet: beta grows
    resumed = model(seed=7, geco_warm_start=warm, geco_target=target, geco_ema_alpha=alpha, geco_beta_stepsize=lr)
    resumed.load_state_dict(m.state_dict())
    for name, buf in m.named_buffers():
        assert torch.equal(buf, dict(resumed.named_buffers())[name]), name
    a, b = m(x, checks.gen(3), step=warm + 2), resumed(x, checks.gen(3), step=warm + 2)
    assert torch.equal(a.loss, b.loss) and a.terms == b.terms
    assert torch.equal(m.geco_beta, resumed.geco_beta) and torch.equal(m.geco_c_ema, resumed.geco_c_ema)
    before = {n: t.clone() for n, t in m.named_buffers()}
    with torch.no_grad():  # evaluation changes no buffer
        m.eval()(x, checks.gen(1))
    assert all(torch.equal(t, dict(m.named_buffers())[n]) for n, t in before.items())


def test_geco_loss_form_after_warm_up():
    m = model(geco_warm_start=0, refinement_iters=0, refinement_curriculum=())
    m.geco_c_ema.fill_(-500.0)
    m.geco_beta.fill_(2.0)
    m.geco_started.fill_(True)
    x = checks.discs(2, 32, 6)
    out = m.eval()(x, checks.gen(0))
    # one pass, weight (0 + 3) / (0 + 1) = 3
    expected = 3 * (out.terms["kl"] - math.log1p(math.exp(2.0)) * -500.0)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    plain = model(geco_warm_start=0, refinement_iters=0, refinement_curriculum=(), use_geco=False).eval()
    out = plain(x, checks.gen(0))
    assert out.loss.item() == pytest.approx(3 * (out.terms["nll"] + out.terms["kl"]), rel=1e-6)


def test_build_defaults_and_unknown_params():
    m = emorl.build({})
    assert (m.slots, m.z_dim, m.layers, m.refinement_iters, m.image_size) == (11, 64, 3, 3, 128)
    assert m.curriculum == [(-1, 3), (100000, 1), (200000, 1)]
    assert (m.geco_target, m.geco_alpha, m.geco_step, m.geco_warm_start) == (-108000.0, 0.99, 1e-6, 1000)
    assert m.geco_beta.item() == pytest.approx(0.55) and m.log_var == pytest.approx(2 * math.log(0.1))
    assert m.encoder[0].out_channels == 64 and m.decoder[0].out_channels == 64 and m.prior[0].out_features == 128
    assert sum(p.numel() for p in m.parameters()) == 666_500  # the reference's count at z 64 (any image size)
    with pytest.raises(ValueError, match="lr.*sigma"):
        emorl.build({"slots": 3, "lr": 1e-4, "sigma": 0.1})
    with pytest.raises(ValueError, match="stochastic_layers"):
        emorl.build({"stochastic_layers": 0})
    with pytest.raises(ValueError, match="32"):
        model()(checks.discs(1, 24, 0), checks.gen(0))
