"""images/genesisv2/genesisv2.py: GENESIS-V2 (Engelcke et al. 2021) as the ClevrTex reference (karazijal/clevrtex
fe982ab).

Small shapes on CPU. scripts/compare_genesisv2.py checks it against the reference on identical weights and noise;
these tests check it alone.
"""

from __future__ import annotations

import math

import objseg_checks as checks
import pytest
import torch
from objseg_checks import one_thread  # noqa: F401 (autouse fixture)

genesisv2 = checks.image_module("genesisv2")

SMALL = {"slots": 4, "feat_dim": 16, "image_size": 32}
FLOOR = 0.5 * math.log(2 * math.pi) + math.log(0.7)  # the NLL per value of a perfect reconstruction at std 0.7


# checks.perturbed(): at initialisation the colour gate is 0, so the IC-SBP embeddings are the coordinates alone; perturbed,
# they depend on the image


model = checks.builder(genesisv2, SMALL)


def test_shapes_masks_partition_and_gradients():
    m = checks.perturbed(model())
    x = checks.discs(3, 32, 0)
    out = m(x, checks.gen(0), step=0)
    checks.assert_partition(out, x, 4)
    assert out.canvas.min() >= 0 and out.canvas.max() <= 1  # a convex combination of sigmoid means
    assert {"loss", "rec_loss", "kl", "elbo", "geco_beta", "geco_err_ema"} <= set(out.terms)
    assert out.terms["loss"] == pytest.approx(out.loss.item())
    # the first step's loss uses beta 1 (before GECO's update): loss = rec + kl = elbo
    assert out.terms["loss"] == pytest.approx(out.terms["elbo"], rel=1e-6)
    assert out.terms["elbo"] == pytest.approx(out.terms["rec_loss"] + out.terms["kl"], rel=1e-6)
    assert out.terms["rec_loss"] > FLOOR * 3 * 32 * 32  # the mixture's NLL is above a perfect fit's
    # the IC-SBP masks: K of them, partitioning every pixel (the last takes the remaining scope)
    with torch.no_grad():
        sbp = m._ic_sbp(m.encoder(x), checks.gen(0)).exp()
    assert sbp.shape == (3, 4, 1, 32, 32)
    torch.testing.assert_close(sbp.sum(1), torch.ones(3, 1, 32, 32), atol=1e-5, rtol=0)
    out.loss.backward()
    checks.assert_gradients(m, nonzero=True)


def test_generator_decides_every_draw_and_eval_matches_train():
    m = checks.perturbed(model()).eval()
    x = checks.discs(2, 32, 2)
    a, _, c, _ = checks.draws(m, x)  # a, b and a reseeded d agree
    assert (a.masks - c.masks).abs().max() > 1e-3 and (a.canvas - c.canvas).abs().max() > 1e-3
    assert a.loss != c.loss
    with torch.no_grad():  # the seed draw alone changes the IC-SBP masks; the posterior draws alone the decode
        feats = m.encoder(x)
        s5, s6 = m._ic_sbp(feats, checks.gen(5)), m._ic_sbp(feats, checks.gen(6))
    assert (s5 - s6).exp().abs().max() > 1e-3
    # no train/eval-dependent layer: a training forward with the same draw gives the same numbers
    t = m.train()(x, checks.gen(5), step=0)
    checks.assert_eval_matches_train(t, a)


def test_loss_falls_when_training():
    m = model(seed=1)
    x = checks.discs(4, 32, 3)
    # the excess NLL per value, ~ MSE / 0.98
    recs = checks.fit(m, x, lr=1e-3, record=lambda out: out.terms["rec_loss"] / (3 * 32 * 32) - FLOOR)
    # ~0.097 -> ~0.077 here: 30 steps reach the per-image colour mean (segmenting the discs takes longer)
    checks.assert_falls(recs, 0.85)
    # the ClevrTex goal 0.5 is below the floor 0.5623: the constraint is never met and beta only falls
    assert m.geco_beta.item() < 1.0


def test_geco_arithmetic_and_buffers():
    goal, lr, alpha = 0.6, 1e-4, 0.9
    m = checks.perturbed(model(geco_goal=goal, geco_lr=lr, geco_alpha=alpha, geco_speedup=10.0))
    assert {"geco_beta", "geco_err_ema", "geco_started"} <= set(m.state_dict())
    assert all(not n.startswith("geco") for n, _ in m.named_parameters())
    assert m.geco_goal == pytest.approx(goal * 3 * 32 * 32) and m.geco_step == pytest.approx(lr * 4.0)
    x = checks.discs(2, 32, 5)
    before = {n: t.clone() for n, t in m.named_buffers()}
    with torch.no_grad():  # evaluation changes no buffer
        m.eval()(x, checks.gen(1))
    assert all(torch.equal(t, dict(m.named_buffers())[n]) for n, t in before.items())
    m.train()
    out = m(x, checks.gen(0), step=0)  # first update: the EMA starts at rec
    rec, goal_abs, step = out.terms["rec_loss"], m.geco_goal, m.geco_step
    assert out.loss.item() == pytest.approx(rec + out.terms["kl"], rel=1e-6)  # beta 1 before the update
    assert m.geco_started and m.geco_err_ema.item() == pytest.approx(rec, rel=1e-6)
    beta = math.exp(step * (goal_abs - rec) * (10.0 if goal_abs > rec else 1.0))
    assert m.geco_beta.item() == pytest.approx(beta, rel=1e-5)
    out = m(x, checks.gen(1), step=1)  # the loss uses the beta of the previous update, then the EMA moves
    assert out.loss.item() == pytest.approx(out.terms["rec_loss"] + beta * out.terms["kl"], rel=1e-5)
    ema = alpha * rec + (1 - alpha) * out.terms["rec_loss"]
    assert m.geco_err_ema.item() == pytest.approx(ema, rel=1e-6)
    beta *= math.exp(step * (goal_abs - ema) * (10.0 if goal_abs > ema else 1.0))
    assert m.geco_beta.item() == pytest.approx(beta, rel=1e-5)
    # both branches: goal above the EMA (beta grows ten times faster), below (beta falls), and the clamps
    for goal_per_value, grows in ((2.0, True), (0.3, False)):
        g = model(geco_goal=goal_per_value)
        g.geco_err_ema.fill_(0.7 * 3 * 32 * 32)
        g.geco_started.fill_(True)
        g.geco_beta.fill_(0.5)
        out = g(x, checks.gen(0), step=10)
        ema = 0.99 * 0.7 * 3 * 32 * 32 + 0.01 * out.terms["rec_loss"]
        c = g.geco_goal - ema
        assert (c > 0) == grows
        expected = 0.5 * math.exp((10.0 if grows else 1.0) * g.geco_step * c)
        assert g.geco_beta.item() == pytest.approx(expected, rel=1e-5)
    g.geco_beta.fill_(1e-10)
    g(x, checks.gen(0), step=11)
    assert g.geco_beta.item() == pytest.approx(1e-10)  # beta_min
    # a checkpoint resumes GECO exactly
    resumed = model(seed=7, geco_goal=goal, geco_lr=lr, geco_alpha=alpha)
    resumed.load_state_dict(m.state_dict())
    a, b = m(x, checks.gen(3), step=2), resumed(x, checks.gen(3), step=2)
    assert torch.equal(a.loss, b.loss) and a.terms == b.terms
    assert torch.equal(m.geco_beta, resumed.geco_beta) and torch.equal(m.geco_err_ema, resumed.geco_err_ema)


def test_build_defaults_and_unknown_params():
    m = genesisv2.build({})
    assert (m.slots, m.feat_dim, m.image_size, m.std) == (11, 64, 128, 0.7)
    assert m.geco_goal == pytest.approx(0.5 * 3 * 128 * 128) and m.geco_step == pytest.approx(2.5e-6)
    assert (m.geco_alpha, m.geco_speedup, m.geco_beta_min) == (0.99, 10.0, 1e-10)
    assert m.geco_beta.item() == 1.0 and not m.geco_started
    assert m.log_sigma.exp().item() == pytest.approx(1 / (11 * math.log(2)))
    assert m.colour.out_channels == 8 and m.colour_gate.item() == 0
    assert len(m.encoder.down) == 6 and m.prior_lstm.hidden_size == 256
    assert sum(p.numel() for p in m.parameters()) == 2_840_270  # the reference's count at 128, 11 slots, 64 features
    with pytest.raises(ValueError, match="lr.*sigma"):
        genesisv2.build({"slots": 3, "lr": 1e-4, "sigma": 0.1})
    with pytest.raises(ValueError, match="power of two"):
        genesisv2.build({"image_size": 96})
    with pytest.raises(ValueError, match="multiple of 8"):
        genesisv2.build({"feat_dim": 12})
    with pytest.raises(ValueError, match="32"):
        model()(checks.discs(1, 16, 0), checks.gen(0))
