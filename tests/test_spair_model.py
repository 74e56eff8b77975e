"""images/spair/spair.py: SPAIR (Crawford & Pineau 2019) as the ClevrTex re-implementation (karazijal/clevrtex fe982ab).

Small shapes on CPU (64x64: 2x2 cells, 8x8 patches, small latents). scripts/compare_spair.py checks it against the
reference on identical weights and noise; these tests check it alone.
"""

from __future__ import annotations

import math

import numpy as np
import objseg_checks as checks
import pytest
import torch
from objseg_checks import one_thread  # noqa: F401 (autouse fixture)

spair = checks.image_module("spair")

SMALL = {"image_size": 64, "what_dim": 8, "bg_dim": 2, "patch_size": 8, "passthrough": 8}


model = checks.builder(spair, SMALL)


def test_shapes_masks_and_gradients():
    m = model()
    x = checks.discs(3, 64, 0)
    out = m(x, checks.gen(0), step=0)
    assert m.masks_have_background is False
    assert out.masks.shape == (3, 4, 64, 64) and out.canvas.shape == (3, 3, 64, 64)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert (out.masks >= 0).all() and (out.masks <= 1).all()
    assert out.canvas.min() >= 0 and out.canvas.max() <= 1  # a weighted mean of sigmoid patches and background
    assert set(out.terms) == {"loss", "rec", "kl", "kl_bg", "kl_where", "kl_what", "kl_depth", "kl_pres", "count"}
    t = out.terms
    assert t["loss"] == pytest.approx(out.loss.item())
    assert t["loss"] == pytest.approx(-t["rec"] + t["kl"] + t["kl_bg"], rel=1e-5)
    assert t["kl"] == pytest.approx(t["kl_where"] + t["kl_what"] + t["kl_depth"] + t["kl_pres"], rel=1e-5)
    out.loss.backward()
    # the reference's REINFORCE baseline, unused without REINFORCE, gets no gradient
    checks.assert_gradients(m, nonzero=True, skip=lambda name: name.startswith("baseline."))


def test_masks_cover_objects_only_and_eval_presence_is_hard():
    m = model(seed=3).eval()
    x = checks.discs(4, 64, 1)
    with torch.no_grad():
        out = m(x, checks.gen(2))
    # objects only: the evaluator's background 1 - sum is not part of them; masks are not renormalised
    assert out.masks.shape[1] == 4 and (out.masks >= 0).all() and (out.masks <= 1).all()
    # eval: z_pres is rounded, so a cell's mask is either exactly 0 or its placed alpha; count = cells with a mask
    present = out.masks.flatten(2).amax(2) > 0
    assert out.terms["count"] == pytest.approx(present.sum(1).float().mean().item())
    # training: relaxed z_pres in (0, 1), every cell contributes
    m.train()
    with torch.no_grad():
        tr = m(x, checks.gen(2), step=0)
    assert (tr.masks.flatten(2).amax(2) > 0).all()


def test_generator_decides_every_draw():
    m = model()
    x = checks.discs(2, 64, 2)
    checks.assert_draws_in_both_modes(m, x, ((True, 10), (False, 10)))  # training and evaluation both sample


def test_loss_falls_when_training():
    m = model(seed=1)
    x = checks.discs(4, 64, 3)
    losses = checks.fit(m, x, lr=1e-3, clip=1.0, step_index=False)
    checks.assert_falls(losses, 0.8)  # ~12200 -> ~5400 here (std 0.15, the final value)


def test_schedules():
    s = spair.DEFAULTS["prior"]
    assert s == (50000, 1e-4, 0.99) and spair.DEFAULTS["std"] == (50000, 0.5, 0.15)
    assert spair.schedule(s, 0) == 1e-4 and spair.schedule(s, 49999) == 0.99 and spair.schedule(s, 10**6) == 0.99
    assert spair.schedule(s, None) == 0.99 and spair.schedule(spair.DEFAULTS["std"], None) == 0.15
    assert spair.schedule(s, 12345) == np.linspace(1e-4, 0.99, 50000)[12345]  # the reference's itr_lin
    assert spair.schedule(s, 12345) == pytest.approx(1e-4 + (0.99 - 1e-4) * 12345 / 49999)
    assert spair.schedule(0.3, 7) == 0.3 and spair.schedule((0, 0.4, 0.1), 7) == 0.4
    # the likelihood's sigma follows `std` at `step`: rec = sum log N(x; canvas, std(step))
    m = model(std=(10, 0.5, 0.15))
    x = checks.discs(2, 64, 4)
    with torch.no_grad():
        for step, sd in ((0, 0.5), (5, 0.5 + (0.15 - 0.5) * 5 / 9), (None, 0.15)):
            out = m(x, checks.gen(1), step=step)
            sq = ((x - out.canvas) ** 2).sum((1, 2, 3)).mean().item()
            rec = -sq / (2 * sd**2) - x[0].numel() * math.log(sd * math.sqrt(2 * math.pi))
            assert out.terms["rec"] == pytest.approx(rec, rel=1e-5), step
        # the count prior's p only moves kl_pres (same draw, same canvas)
        lo = model(prior=1e-4)(x, checks.gen(1), step=0)
        hi = model(prior=0.99)(x, checks.gen(1), step=0)
    assert torch.equal(lo.canvas, hi.canvas) and lo.terms["kl_pres"] != hi.terms["kl_pres"]
    assert lo.terms["kl_where"] == hi.terms["kl_where"]


def test_count_prior():
    # p(count = n) prop. to (1 - p) p^n on 0..4; with no cells seen the first is present w.p. E[count] / 4
    like = torch.zeros(1)
    pr = spair.CountPrior(2, 4, 0.5, like)
    w = 0.5 ** np.arange(5)
    w /= w.sum()
    assert pr.probs(0)[0, 0].item() == pytest.approx(float((w * np.arange(5)).sum() / 4))
    pr.update(torch.tensor([[0.9], [0.2]]), 0)  # rounded: present, absent
    assert pr.counts[:, 0].tolist() == [1.0, 0.0]
    p1 = pr.probs(1)[:, 0]
    assert p1[0] != p1[1] and ((p1 > 0) & (p1 < 1)).all()


def test_build_defaults_param_groups_and_unknown_params():
    m = spair.build({})
    assert m.image_size == 128 and m.grid == 4 and m.what_dim == 64 and m.bg_dim == 4 and m.patch_size == 24
    assert m.params == {}
    # the reference SPAIR(large, patch 24, what 64, bg 4, passf 100) has 1,310,727 parameters (compare_spair.py)
    assert sum(p.numel() for p in m.parameters()) == 1_310_727
    groups = m.param_groups(1e-4)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    with pytest.raises(ValueError, match="lr.*sigma"):
        spair.build({"lr": 1e-4, "sigma": 0.1})
    with pytest.raises(ValueError, match="64"):
        model()(checks.discs(1, 32, 0), checks.gen(0))
