"""images/dti_sprites/dti_sprites.py: DTI-Sprites as the ClevrTex configuration (karazijal/clevrtex fe982ab).

Small shapes on CPU. scripts/compare_dti_sprites.py checks it against the reference on identical weights and noise;
these tests check it alone.
"""

from __future__ import annotations

import numpy as np
import objseg_checks as checks
import pytest
import torch
from objseg_checks import one_thread  # noqa: F401 (autouse fixture)

dti_sprites = checks.image_module("dti_sprites")

SMALL = {
    "n_sprites": 3,
    "n_layers": 2,
    "image_size": 32,
    "sprite_size": 12,
    "encoder_width": 8,
    "hidden": 16,
    "steps_per_epoch": 10,
    "freeze_epochs": 2,
    "projective_epoch": 3,
    "reassign_every": 5,
}
LATE = 40  # a step past freezing and with the projective warp on (epoch 4)


def discs(n: int, size: int, seed: int) -> torch.Tensor:
    """n images: a flat random background with 1-2 larger discs of random colour, radius and place."""
    return checks.discs(n, size, seed, count=(1, 3), place=(0.3, 0.7), radius=(0.15, 0.25))


def gen(seed: int = 1) -> torch.Generator:
    return checks.gen(seed)


def small(**kw) -> dti_sprites.DTISprites:
    torch.manual_seed(0)
    return dti_sprites.build({**SMALL, **kw})


def test_shapes_train_and_eval():
    m, x = small(), discs(3, 32, 0)
    for train, step in ((True, 0), (True, LATE + 1), (False, None)):
        m.train(train)
        out = m(x, gen(), step)
        assert out.masks.shape == (3, 3, 32, 32)  # background + 2 layers
        assert out.canvas.shape == (3, 3, 32, 32)
        assert out.loss.shape == () and torch.isfinite(out.loss)
        assert out.terms["loss"] == pytest.approx(out.loss.item())
        assert torch.allclose(out.loss, ((x - out.canvas) ** 2).mean())  # the loss is the plain MSE


def test_masks_partition():
    """Occlusion-composed masks: a partition where occlusion is decided; below 1 (never above) where soft."""
    m, x = small(), discs(2, 32, 1)
    m.eval()
    out = m(x, gen(), None)
    assert out.masks.min() >= -1e-6
    assert out.masks.sum(1).max() <= 1 + 1e-5
    with torch.no_grad():
        m.occ_predictor[4].bias.fill_(30.0)  # sigmoid -> 1: layer 2 in front of layer 1
    out = m(x, gen(), None)
    assert torch.allclose(out.masks.sum(1), torch.ones(2, 32, 32), atol=1e-5)
    # compose() itself with a random hard depth order
    torch.manual_seed(3)
    n = 5
    masks, layers = torch.rand(n, 2, 1, 4, 4), torch.rand(n, 2, 3, 4, 4)
    masks[0] = 1
    order = [0, *(torch.randperm(n - 1) + 1).tolist()]  # back to front
    rank = {k: i for i, k in enumerate(order)}
    occ = torch.tensor([[float(rank[j] > rank[k]) for k in range(n)] for j in range(n)])[..., None].expand(n, n, 2)
    canvas, vis = dti_sprites.compose(layers, masks, occ)
    assert torch.allclose(vis.sum(0), torch.ones(2, 1, 4, 4), atol=1e-6)
    assert torch.allclose(canvas, (vis * layers).sum(0))


def visible(m: dti_sprites.DTISprites, x: torch.Tensor) -> dti_sprites.DTISprites:
    """A black background and full grey sprites: the greedy choice takes sprites (not the empty one)."""
    with torch.no_grad():
        m.bkg_params.zero_()
        m.bkg_from_data.fill_(True)
        m.prototype_params.copy_(torch.rand(m.prototype_params.shape, generator=gen(5)) * 0.2 + x.mean())
        m.mask_params.fill_(1.0)
    return m


def test_generator_decides_every_draw():
    x = discs(2, 32, 2)
    outs = []
    for scramble in (0, 123):
        m = visible(small(), x)
        m.train()
        torch.manual_seed(scramble)  # the global RNG plays no part
        # step LATE is a check step (LATE % 5 == 0): the layer draw and the restart noise come from the generator
        outs.append((m(x, gen(7), LATE), m.prototype_params.detach().clone()))
    (a, pa), (b, pb) = outs
    assert torch.equal(a.masks, b.masks) and torch.equal(a.canvas, b.canvas) and torch.equal(pa, pb)
    m = visible(small(), x)
    m.train()
    c = m(x, gen(8), LATE)
    assert not torch.equal(a.canvas, c.canvas)  # the mask noise differs with the seed
    m.eval()
    e1, e2 = m(x, gen(1), None), m(x, gen(2), None)
    assert torch.equal(e1.canvas, e2.canvas)  # evaluation draws nothing


def test_finite_gradients_and_schedules():
    x = discs(2, 32, 3)
    m = visible(small(), x)
    with torch.no_grad():  # the regressors' last layers start at zero: no gradient reaches the encoder before
        for name, p in m.named_parameters():
            if name.endswith("4.weight"):
                p.copy_(torch.randn(p.shape, generator=gen(6)) * 0.01)
    m.train()
    m(x, gen(), LATE + 1).loss.backward()
    named = dict(m.named_parameters())
    for name, p in named.items():
        if p.numel():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
    for name in ("prototype_params", "mask_params", "bkg_params", "layer_color.1.4.weight", "layer_position.0.4.bias",
                 "occ_predictor.4.weight", "encoder.conv1.weight"):  # fmt: skip
        assert named[name].grad.abs().sum() > 0, name
    assert sum(p.grad.abs().sum() for p in m.projective.parameters()) > 0  # the chosen sprites' homographies
    # epoch 0: sprites frozen (detached), projective warp off
    m = small()
    m.train()
    m(x, gen(), 1).loss.backward()
    assert m.prototype_params.grad is None and m.mask_params.grad is None
    assert all(p.grad is None for p in m.projective.parameters())
    assert m.layer_color[0][4].weight.grad is not None
    assert m.lr_factors(0) == (0.0, 0.0) and m.lr_factors(500) == (0.5, 0.5)
    big = dti_sprites.build({"n_layers": 2, "n_sprites": 1, "image_size": 32, "sprite_size": 8, "encoder_width": 8})
    assert big.lr_factors(1000) == (1.0, 1.0)
    assert big.lr_factors(250 * 1250) == (1.0, pytest.approx(0.1))
    assert big.lr_factors(400 * 1250) == (1.0, pytest.approx(0.01))
    groups = big.param_groups(1e-4)
    assert [len(g["params"]) for g in groups][0] == 3 and groups[1]["weight_decay"] == 1e-6
    assert sum(len(g["params"]) for g in groups) == len(list(big.parameters()))


def test_reassignment_and_buffers_resume():
    x = discs(2, 32, 4)
    m = visible(small(), x)
    m.train()
    with torch.no_grad():  # distinct warps so the greedy choice is not a tie
        for row in m.projective:
            for k, r in enumerate(row):
                r[4].bias.fill_(0.01 * k)
    for step in range(LATE + 1, LATE + 4):
        m(x, gen(step), step)
    assert int(m.prop_count) == 3 and m.prop_sum.sum().item() == pytest.approx(3 * 2)  # 2 layers, one-hot each
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    fresh = small()
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.prop_sum, m.prop_sum) and bool(fresh.bkg_from_data)
    fresh.train()
    a, b = m(x, gen(9), LATE + 4), fresh(x, gen(9), LATE + 4)
    assert torch.equal(a.canvas, b.canvas)
    # a check step: sprites under 0.02 of the most used one (in the drawn layer) restart from it
    choice = torch.zeros(2, 4, 2)
    choice[:, 0] = 1  # sprite 0 chosen everywhere: 1 and 2 unused
    with torch.no_grad():
        m.mask_params[1:].fill_(0.3)
        m.prop_sum.zero_()
        m.prop_count.zero_()
    terms = m.track_and_reassign(choice, LATE + 5, gen(10), frozen=False)
    assert int(m.prop_count) == 0 and m.prop_sum.abs().sum() == 0 and terms["reassigned"] == 2
    proto, mask = m.prototype_params.detach(), m.mask_params.detach()
    for i in (1, 2):
        assert 0 < (proto[i] - proto[0]).abs().max() < 1e-3  # the most used one + 1e-4 noise (it got its own too)
        assert torch.equal(mask[i], mask[0])
        for row in m.projective:
            assert all(torch.equal(a, b) for a, b in zip(row[i].parameters(), row[0].parameters()))
    # frozen epochs: counted and reset, never restarted
    f = small()
    f.train()
    before = f.prototype_params.detach().clone()
    out = f(x, gen(), 0)
    assert out.terms["reassigned"] == 0 and torch.equal(before, f.prototype_params.detach())


def test_restart_copies_adam_moments():
    x = discs(2, 32, 7)
    m = visible(small(), x)
    m.train()
    opt = torch.optim.Adam(m.param_groups(1e-3))
    m.set_optimizer(opt)
    m(x, gen(), LATE + 1).loss.backward()
    opt.step()
    st = opt.state[m.mask_params]
    with torch.no_grad():
        st["exp_avg"][1].fill_(0.5)
    m.restart_sprite(2, 1, gen(3))
    assert torch.equal(st["exp_avg"][2], st["exp_avg"][1]) and torch.equal(st["exp_avg_sq"][2], st["exp_avg_sq"][1])
    for row in m.projective:
        for pi, pj in zip(row[2].parameters(), row[1].parameters()):
            if pj in opt.state and pi in opt.state:
                assert torch.equal(opt.state[pi]["exp_avg"], opt.state[pj]["exp_avg"])
                assert opt.state[pi]["exp_avg"] is not opt.state[pj]["exp_avg"]  # copies, not aliases


def test_evaluation_empty_sprite_switch():
    """Evaluation (step None) excludes the empty sprite as the reference's notebook run; eval_empty_sprite allows it."""
    x = discs(1, 32, 8)
    for allow, expect_empty in ((False, False), (True, True)):
        m = small(eval_empty_sprite=allow)
        m.init_backgrounds(x)  # the background alone is the image: the empty sprite is the best choice
        m.eval()
        out = m(x, gen(), None)
        fg = out.masks[:, 1:].abs().amax().item()
        assert (fg == 0) == expect_empty, (allow, fg)


def test_background_from_data():
    x = discs(4, 32, 5)
    m = small()
    assert not bool(m.bkg_from_data)
    m.eval()
    m(x, gen(), None)
    assert not bool(m.bkg_from_data)  # evaluation leaves it
    m.train()
    m(x, gen(), 1)
    assert bool(m.bkg_from_data)
    assert torch.allclose(m.bkg_params.detach()[0], x.mean(0))
    m.init_backgrounds(x[:2])
    assert torch.allclose(m.bkg_params.detach()[0], x[:2].mean(0))
    with pytest.raises(ValueError, match="n_backgrounds == 1"):
        small(n_backgrounds=2)


def test_loss_falls_on_discs():
    torch.manual_seed(0)
    m = dti_sprites.build({**SMALL, "freeze_epochs": 0, "projective_epoch": 0, "steps_per_epoch": 1000})
    x = discs(8, 32, 6)
    opt = torch.optim.Adam([{**g, "lr": 3e-3} for g in m.param_groups(3e-3)])
    m.train()
    losses = []
    for step in range(30):
        out = m(x, gen(step), step + 1)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


def test_build_defaults_and_unknown_keys():
    m = dti_sprites.build({})
    assert sum(p.numel() for p in m.parameters()) == 48_235_051  # the reference's count (compare_dti_sprites.py)
    assert m.image_size == 128 and m.params == {}
    out_k = m.n_layers + 1
    assert out_k == 11
    with pytest.raises(ValueError, match="unknown DTISprites params: spritez"):
        dti_sprites.build({"spritez": 3})
    with pytest.raises(ValueError, match="expected"):
        small()(torch.rand(1, 3, 16, 16), gen(), None)
