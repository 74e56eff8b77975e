"""images/gnm/gnm.py: GNM (Jiang & Ahn 2020) as the ClevrTex benchmark's copy of the authors' code (fe982ab).

Small shapes on CPU (32x32: 2x2 cells, 8x8 glimpses, small latents and MLPs). scripts/compare_gnm.py checks the
default model against the reference on identical weights and noise; these tests check it alone.
"""

from __future__ import annotations

import math

import objseg_checks as checks
import pytest
import torch
from objseg_checks import one_thread  # noqa: F401 (autouse fixture)

gnm = checks.image_module("gnm")

SMALL = {
    "image_size": 32, "num_cell": 2, "z_what_dim": 8, "z_bg_dim": 2, "z_global_dim": 4, "draw_steps": 2,
    "enc_filters": (8, 16, 16, 16), "enc_kernels": (4, 4, 4, 4), "enc_strides": (2, 2, 2, 2),
    "what_dec_filters": (16, 8, 4), "what_dec_upscales": (2, 2, 2),
    "bg_dec_filters": (16, 8, 3), "bg_dec_kernels": (1, 1, 3), "bg_dec_upscales": (4, 8, 1),
    "global_dec_filters": (32, 64), "global_enc_filters": (32,), "bg_gen_filters": (16,), "bg_enc_filters": (32,),
}  # fmt: skip


model = checks.builder(gnm, SMALL)


KL_PARTS = (
    "pres",
    "where",
    "depth",
    "what",
    "bg",
    "global",
    "aux_pres",
    "aux_where",
    "aux_depth",
    "aux_what",
    "aux_bg",
)


def test_shapes_masks_terms_and_gradients():
    m = model()
    x = checks.discs(3, 32, 0)
    out = m(x, checks.gen(0), step=None)
    assert m.masks_have_background is False
    assert out.masks.shape == (3, 4, 32, 32) and out.canvas.shape == (3, 3, 32, 32)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert (out.masks >= 0).all() and (out.masks <= 1).all() and out.masks.amax() > 0
    assert torch.isfinite(out.canvas).all()
    t = out.terms
    assert set(t) == {"loss", "rec", "kl", "count", *(f"kl_{k}" for k in KL_PARTS)}
    assert t["loss"] == pytest.approx(out.loss.item())
    assert t["loss"] == pytest.approx(-t["rec"] + t["kl"], rel=1e-5)
    assert t["kl"] == pytest.approx(sum(t[f"kl_{k}"] for k in KL_PARTS), rel=1e-5)
    assert 0 <= t["count"] <= 4
    out.loss.backward()
    checks.assert_gradients(m, nonzero=True)


def test_generator_decides_every_draw():
    m = model()
    x = checks.discs(2, 32, 2)
    checks.assert_draws_in_both_modes(m, x, ((True, 10), (False, None)))  # training and evaluation both sample


def test_loss_falls_when_training():
    # sigma 0.2 (experiments/gnm.py's default; the ClevrTex 0.5 leaves a small image's likelihood weak) and Adam 3e-3
    m = model(seed=1, std=0.2)
    x = checks.discs(4, 32, 3)
    record = lambda out: (out.loss.item(), ((out.canvas - x) ** 2).mean().item())  # noqa: E731
    losses, mses = zip(*checks.fit(m, x, lr=3e-3, record=record, clip=1.0, step_index=False))
    checks.assert_falls(list(losses), 0.5)  # ~2000 -> ~620 here
    checks.assert_falls(list(mses), 0.8)  # ~0.10 -> ~0.072


def test_schedules_as_the_reference():
    d = gnm.DEFAULTS
    s = gnm.schedule
    # the reference's linear_schedule: start value up to start step, linear strictly between, end value from end on
    assert s(d["beta_global"], 0) == 0.0 and s(d["beta_global"], 50000) == pytest.approx(0.5)
    assert s(d["beta_global"], 100000) == 1.0 and s(d["beta_global"], None) == 1.0
    assert s(d["beta_aux_where"], 0) == 10.0 and s(d["beta_aux_where"], 250) == pytest.approx(5.5)
    assert s(d["beta_aux_where"], 500) == 1.0 and s(d["beta_aux_bg"], 25000) == pytest.approx(25.5)
    assert s(d["tau_pres"], 1000) == 1.0 and s(d["tau_pres"], 10500) == pytest.approx(0.75)
    assert s(d["tau_pres"], None) == 0.5 and s(d["p_pres"], 2000) == pytest.approx(0.0505)
    assert s(d["p_pres"], None) == 0.001
    assert s((5, 0, 2.0, 7.0), 100) == 2.0  # an end step of 0: the start value, always
    assert s(0.3, 7) == 0.3
    ca = gnm.curriculum_alpha
    assert ca(d["bg_alpha_curriculum"], 0) is None and ca(d["bg_alpha_curriculum"], 1) == 0.9
    assert ca(d["bg_alpha_curriculum"], 499) == 0.9 and ca(d["bg_alpha_curriculum"], 500) is None
    assert ca(d["bg_alpha_curriculum"], None) is None and ca(None, 10) is None


def test_step_moves_the_loss_terms_and_the_curriculum():
    m = model(seed=2)
    x = checks.discs(2, 32, 4)
    with torch.no_grad():
        early, late = m(x, checks.gen(1), step=0), m(x, checks.gen(1), step=None)
        cur = m(x, checks.gen(1), step=250)
    # beta_global 0 at step 0, 1 at the end; aux where and bg betas 10 and 50 at step 0
    assert early.terms["kl_global"] == 0.0 and late.terms["kl_global"] > 0
    # the likelihood: sum log N(x; canvas, 0.5) (the README's ClevrTex sigma)
    sq = ((x - late.canvas) ** 2).sum((1, 2, 3)).mean().item()
    rec = -sq / (2 * 0.25) - x[0].numel() * math.log(0.5 * math.sqrt(2 * math.pi))
    assert late.terms["rec"] == pytest.approx(rec, rel=1e-5)
    # the curriculum (0 < step < 500): presence capped at 0.99 in the masks, alpha = 0.9 everywhere
    assert cur.masks.amax() <= 0.99 + 1e-6
    m.bg_alpha_curriculum = None
    with torch.no_grad():
        free = m(x, checks.gen(1), step=250)
    assert not torch.allclose(free.canvas, cur.canvas)


def test_build_defaults_and_unknown_params():
    m = gnm.build({})
    assert m.image_size == 128 and m.num_cell == 4 and m.z_what_dim == 64 and m.z_bg_dim == 10 and m.glimpse == 64
    assert m.std == 0.5 and gnm.DEFAULTS["std"] == 0.5  # the README's ClevrTex run (--std 0.5)
    assert m.params == {}
    # the reference GNM(arrow_args, z_what 64, z_bg 10) has 8,636,446 parameters (compare_gnm.py)
    assert sum(p.numel() for p in m.parameters()) == 8_636_446
    with pytest.raises(ValueError, match="lr.*sigma"):
        gnm.build({"lr": 1e-4, "sigma": 0.1})
    with pytest.raises(ValueError, match="32"):
        model()(checks.discs(1, 64, 0), checks.gen(0))
    with pytest.raises(ValueError, match="bg_dec_upscales"):
        model(image_size=64)
    with pytest.raises(ValueError, match="grid"):
        model(num_cell=4)(checks.discs(1, 32, 0), checks.gen(0))
