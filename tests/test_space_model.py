"""images/space/space.py: SPACE (Lin et al. ICLR 2020) in the ClevrTex configuration (karazijal/clevrtex fe982ab).

Small shapes on CPU (32x32 images, 2x2 or 4x4 cells, K 2-3). scripts/compare_space.py checks it against the
reference on identical weights and noise; these tests check it alone.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from conftest import REPO

sys.path[:0] = [str(REPO / "images" / "_objseg"), str(REPO / "images" / "space")]
import space  # noqa: E402
import trainer  # noqa: E402

SMALL = {"image_size": 32, "G": 4, "K": 3}
TINY = {"image_size": 32, "G": 2, "K": 2}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def discs(n: int, size: int, seed: int) -> torch.Tensor:
    """n images: a flat random background with 1-3 discs of random colour, radius and place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        out[i] = rng.uniform(0, 1, 3)[:, None, None]
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            r = rng.uniform(0.1, 0.2) * size
            out[i][:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 1, (3, 1))
    return torch.from_numpy(out)


def model(seed: int = 0, **over) -> space.SPACE:
    torch.manual_seed(seed)
    return space.build({**SMALL, **over})


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


TERMS = {"loss", "rec", "elbo", "kl", "kl_fg", "kl_bg", "kl_what", "kl_where", "kl_depth", "kl_pres", "boundary",
         "count"}  # fmt: skip


def test_shapes_masks_terms_and_gradients():
    m = model()
    x = discs(3, 32, 0)
    out = m(x, gen(0), step=0)
    assert m.masks_have_background is False
    assert out.masks.shape == (3, 16, 32, 32) and out.canvas.shape == (3, 3, 32, 32)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert (out.masks >= 0).all() and (out.masks <= 1).all()
    assert out.canvas.min() >= 0 and out.canvas.max() <= 1  # alpha-blend of weighted sigmoid means
    t = out.terms
    assert set(t) == TERMS
    assert t["loss"] == pytest.approx(out.loss.item())
    assert t["loss"] == pytest.approx(-t["elbo"] + t["boundary"], rel=1e-5)
    assert t["elbo"] == pytest.approx(t["rec"] - t["kl"], rel=1e-5)
    assert t["kl"] == pytest.approx(t["kl_fg"] + t["kl_bg"], rel=1e-5)
    assert t["kl_fg"] == pytest.approx(t["kl_what"] + t["kl_where"] + t["kl_depth"] + t["kl_pres"], rel=1e-5)
    assert 0 <= t["count"] <= 16
    out.loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_generator_decides_every_draw():
    m = model()
    x = discs(2, 32, 2)
    for mode in (True, False):  # training and evaluation both sample (the reference never rounds z_pres)
        m.train(mode)
        with torch.no_grad():
            a, b, c = m(x, gen(5), step=10), m(x, gen(5), step=10), m(x, gen(6), step=10)
            torch.manual_seed(123)  # the global RNG plays no part
            d = m(x, gen(5), step=10)
        for o in (b, d):
            assert torch.equal(a.canvas, o.canvas) and torch.equal(a.masks, o.masks) and torch.equal(a.loss, o.loss)
        assert not torch.allclose(a.canvas, c.canvas) and not torch.allclose(a.masks, c.masks)


def test_loss_falls_when_training():
    torch.manual_seed(1)
    m = space.build(TINY)
    x = discs(2, 32, 3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    g = gen(0)
    losses = []
    for _ in range(30):
        out = m(x, g, step=None)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.7 * first, losses


def test_schedules():
    d = space.DEFAULTS
    assert d["pres_prior"] == (4000, 10000, 0.1, 0.01) and d["scale_prior_mean"] == (10000, 20000, -1.0, -2.0)
    assert d["tau"] == (0, 10000, 2.5, 2.5)
    a = space.anneal
    assert a(d["pres_prior"], 0) == 0.1 and a(d["pres_prior"], 4000) == 0.1 and a(d["pres_prior"], 10000) == 0.01
    assert a(d["pres_prior"], 7000) == pytest.approx(0.055) and a(d["pres_prior"], None) == 0.01
    assert a(d["scale_prior_mean"], 15000) == pytest.approx(-1.5) and a(d["scale_prior_mean"], None) == -2.0
    assert a(d["tau"], 5) == 2.5 and a(0.3, 7) == 0.3
    x = discs(2, 32, 4)
    with torch.no_grad():
        # the pres prior moves only kl_pres, the scale prior mean only kl_where (same draws, same canvas)
        ref = model()(x, gen(1), step=None)
        lo = model(pres_prior=0.3)(x, gen(1), step=None)
        sm = model(scale_prior_mean=-1.0)(x, gen(1), step=None)
        assert torch.equal(ref.canvas, lo.canvas) and torch.equal(ref.canvas, sm.canvas)
        assert lo.terms["kl_pres"] != ref.terms["kl_pres"] and lo.terms["kl_where"] == ref.terms["kl_where"]
        assert sm.terms["kl_where"] != ref.terms["kl_where"] and sm.terms["kl_pres"] == ref.terms["kl_pres"]
        # tau (the relaxed Bernoulli's temperature) moves z_pres, hence the masks
        hot = model(tau=(0, 10, 2.5, 0.5))(x, gen(1), step=None)
        assert not torch.allclose(hot.masks, ref.masks)
        # the boundary loss is off past bl_off_step
        off = model(bl_off_step=5)(x, gen(1), step=6)
        on = model(bl_off_step=5)(x, gen(1), step=5)
        assert off.terms["boundary"] == 0 and on.terms["boundary"] > 0
        assert model(boundary_loss=False)(x, gen(1), step=0).terms["boundary"] == 0
        # the likelihoods' sigma: a mixture of N(x; fg, fg_sigma) and the background's, summed over pixels
        narrow = model(fg_sigma=0.05, bg_sigma=0.05)(x, gen(1), step=None)
        assert torch.equal(narrow.canvas, ref.canvas) and narrow.terms["rec"] != ref.terms["rec"]


def test_log_prob_and_kl_helpers():
    x, loc, sd = torch.tensor([0.3]), torch.tensor([0.1]), torch.tensor([0.15])
    want = torch.distributions.Normal(loc, sd).log_prob(x)
    assert torch.allclose(space.normal_log_prob(x, loc, sd), want)
    assert space.normal_log_prob(x, loc, sd).item() == pytest.approx(
        -(0.2**2) / (2 * 0.15**2) - math.log(0.15) - 0.5 * math.log(2 * math.pi), rel=1e-5
    )
    q, p = torch.distributions.Normal(0.4, 0.7), torch.distributions.Normal(-1.0, 0.1)
    got = space.kl_normal(torch.tensor(0.4), torch.tensor(0.7), -1.0, torch.tensor(0.1))
    assert got.item() == pytest.approx(torch.distributions.kl_divergence(q, p).item())


def test_build_defaults_param_groups_and_unknown_params():
    m = space.build({})
    assert m.image_size == 128 and m.G == 8 and m.K == 5 and m.params == {}
    # the reference Space() (G 8, K 5, ClevrTex arch) has 5,307,651 parameters (scripts/compare_space.py)
    assert sum(p.numel() for p in m.parameters()) == 5_307_651
    groups = m.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [pytest.approx(1e-5), 1e-3]  # RMSprop 1e-5 fg, Adam 1e-3 bg there
    assert [g["optimizer"] for g in groups] == ["rmsprop", "adam"]
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in m.fg.parameters()}
    with pytest.raises(ValueError, match="lr.*sigma"):
        space.build({"lr": 1e-4, "sigma": 0.1})
    with pytest.raises(ValueError, match="32"):
        model()(discs(1, 64, 0), gen(0))
    with pytest.raises(ValueError, match="G"):
        space.build({"image_size": 32, "G": 8})


def test_trains_under_the_house_trainer():
    recipe = trainer.Recipe.of({"model": TINY, "optimizer": "rmsprop", "lr": 1e-3, "batch_size": 2, "grad_clip": 1.0})
    images = np.random.default_rng(0).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)
    t = trainer.Trainer(space.build, recipe, images, seed=0, device=torch.device("cpu"))
    (fg,), (bg,) = (o.param_groups for o in t.optimizers)  # the reference's two optimisers
    assert isinstance(t.optimizers[0], torch.optim.RMSprop) and isinstance(t.optimizers[1], torch.optim.Adam)
    assert fg["lr"] == pytest.approx(1e-5) and bg["lr"] == 1e-3
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    for _ in range(2):
        out = t.step()
        assert math.isfinite(out.loss.item()) and out.masks.shape == (2, 4, 32, 32)
    moved = {n.split(".")[0] for n, p in t.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"fg", "bg"}
