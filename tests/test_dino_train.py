"""images/procedural_dino/dino_train.py: single-process DINO training (facebookresearch/dino main_dino.py's loop).

A tiny timm ViT (2 blocks, width 48) on 32-px global and 16-px local crops, on CPU. scripts/compare_dino_train.py
checks the same code against the reference's train_one_epoch; these tests check its parts without the reference.
"""

from __future__ import annotations

import io
import math
import sys

import numpy as np
import pytest
import torch

from harness.runners.inprocess import adapter_module
from harness.specs import MethodSpec, load_spec

from conftest import REPO

sys.path[:0] = [str(REPO / "images" / "_vit"), str(REPO / "images" / "procedural_dino")]
import dino_train  # noqa: E402

TINY = dict(
    vit_overrides=dict(depth=2, embed_dim=48, num_heads=2),
    out_dim=256,
    hidden_dim=256,
    bottleneck_dim=64,
    global_size=32,
    local_size=16,
    local_crops_number=4,
    batch_size=8,
    epochs=3,
    steps_per_epoch=10,
    warmup_epochs=0,
    lr=0.03,
    freeze_last_layer=0,
    teacher_temp=0.04,
    seed=3,
)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def images(n=8, size=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def trainer(**changes):
    return dino_train.Trainer(dict(TINY, **changes), device="cpu")


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_loss_finite_and_falls_on_a_fixed_batch():
    # Teacher and centre frozen (momentum 1): pure distillation of a fixed teacher, so the loss must fall.
    # The loss is then bounded below by the teacher's entropy (cross-entropy = entropy + KL): the KL must shrink (not to 0: the
    # student, at temperature 0.1 on unit-norm logits, cannot be as sharp as the teacher at 0.04).
    t = trainer(momentum_teacher=1.0, center_momentum=1.0)
    crops = t.crops(images())
    with torch.no_grad():
        q = torch.softmax(t.teacher(crops[:2]) / TINY["teacher_temp"], -1)
    floor = -(q * q.log()).sum(-1).mean().item()
    losses = [t.train_step(crops) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert min(losses) >= floor - 1e-4
    assert np.mean(losses[-5:]) - floor < 0.5 * (losses[0] - floor), (floor, losses)
    assert all(b < a + 0.05 for a, b in zip(losses[10:], losses[11:])), losses  # settled: no longer rising
    # The same with fresh crops each step, and the real dynamics (EMA teacher, moving centre) stay finite.
    t = trainer(momentum_teacher=1.0, center_momentum=1.0)
    augmented = [t.step(images()) for _ in range(30)]
    assert np.mean(augmented[-10:]) < augmented[0] - 0.5, augmented
    t = trainer(drop_path_rate=0.1, batch_size=4)
    assert all(math.isfinite(t.step(images(n=4))) for _ in range(30))


def test_center_is_an_ema_of_the_teacher_batch_mean():
    t = trainer()
    assert torch.equal(t.loss.center, torch.zeros(1, TINY["out_dim"]))
    center = t.loss.center.clone()
    for _ in range(2):
        crops = t.crops(images())
        with torch.no_grad():
            teacher_mean = t.teacher(crops[:2]).mean(0, keepdim=True)
        t.train_step(crops)
        center = 0.9 * center + 0.1 * teacher_mean
        torch.testing.assert_close(t.loss.center, center, rtol=0, atol=1e-6)
    assert t.loss.center.abs().max() > 1e-3


def test_loss_is_the_cross_entropy_over_pairs_of_different_views():
    torch.manual_seed(0)
    ncrops, b, k = 4, 3, 7
    loss = dino_train.DINOLoss(k, ncrops, np.array([0.05]), student_temp=0.1)
    loss.center = torch.randn(1, k)
    s, te = torch.randn(ncrops * b, k), torch.randn(2 * b, k)
    p = torch.softmax((te - loss.center) / 0.05, -1).chunk(2)
    logs = torch.log_softmax(s / 0.1, -1).chunk(ncrops)
    terms = [-(p[i] * logs[v]).sum(-1).mean() for i in range(2) for v in range(ncrops) if v != i]
    torch.testing.assert_close(loss(s, te, 0), torch.stack(terms).mean())
    assert len(terms) == 2 * (ncrops - 1)


def test_teacher_is_the_ema_of_the_student():
    t = trainer(momentum_teacher=0.9)
    m = t.momentum_schedule[0]
    assert 0.9 <= m < 1
    before = params(t.teacher)
    t.step(images())
    student, teacher = params(t.student), params(t.teacher)
    assert student.keys() == teacher.keys()
    for name in teacher:
        torch.testing.assert_close(teacher[name], m * before[name] + (1 - m) * student[name], rtol=0, atol=1e-7)
    assert any(not torch.equal(teacher[k], before[k]) for k in teacher)


def test_last_layer_gets_no_gradient_while_frozen():
    t = trainer(steps_per_epoch=2, freeze_last_layer=1)
    v0, mlp0 = t.student.head.last_layer.weight_v.detach().clone(), t.student.head.mlp[0].weight.detach().clone()
    for _ in range(2):  # epoch 0
        t.step(images())
        assert t.student.head.last_layer.weight_v.grad is None
    assert torch.equal(t.student.head.last_layer.weight_v, v0)  # neither updated nor decayed
    assert not torch.equal(t.student.head.mlp[0].weight, mlp0)
    t.step(images())  # epoch 1
    assert not torch.equal(t.student.head.last_layer.weight_v, v0)
    assert torch.equal(t.student.head.last_layer.weight_g, torch.ones_like(t.student.head.last_layer.weight_g))


def test_schedules_and_parameter_groups():
    s = dino_train.cosine_scheduler(1.0, 0.1, epochs=4, niter_per_ep=5, warmup_epochs=1)
    assert len(s) == 20 and s[0] == 0 and s[4] == 1.0 and s[5] == 1.0
    np.testing.assert_allclose(s[1:5], np.linspace(0, 1, 5)[1:])
    np.testing.assert_allclose(s[5:], 0.1 + 0.45 * (1 + np.cos(np.pi * np.arange(15) / 15)))
    assert np.all(np.diff(s[5:]) < 0) and s[-1] > 0.1
    t = trainer()
    decayed, not_decayed = t.optimizer.param_groups
    names = {id(p): n for n, p in t.student.named_parameters()}
    no_decay = {names[id(p)] for p in not_decayed["params"]}
    decay = {names[id(p)] for p in decayed["params"]}
    assert not_decayed["weight_decay"] == 0
    assert all(n.endswith(".bias") or "norm" in n for n in no_decay)
    assert {"backbone.norm.weight", "backbone.blocks.0.norm1.bias", "head.mlp.0.bias"} <= no_decay
    assert {"backbone.cls_token", "backbone.pos_embed", "head.last_layer.weight_v", "head.mlp.0.weight"} <= decay
    assert "head.last_layer.weight_g" not in decay | no_decay  # frozen (norm_last_layer)
    assert t.lr_schedule[0] == pytest.approx(TINY["lr"] * TINY["batch_size"] / 256)


def test_checkpoint_round_trip_continues_identically():
    recipe = dict(drop_path_rate=0.2)  # the drop-path draws need the RNG state back
    a = trainer(**recipe)
    for _ in range(2):
        a.step(images())
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    loss_a = a.step(images(seed=1))
    b = trainer(**recipe)
    torch.rand(100)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert b.step_index == 2
    assert b.step(images(seed=1)) == loss_a
    for (name, pa), pb in zip(a.student.state_dict().items(), b.student.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.loss.center, b.loss.center)
    assert a.step(images(seed=2)) == b.step(images(seed=2))
    with pytest.raises(ValueError, match="another recipe"):
        trainer(lr=0.5).load_state_dict(a.state_dict())


def test_nan_loss_raises_and_updates_nothing():
    t = trainer()
    t.step(images())
    with torch.no_grad():
        t.student.head.mlp[0].weight[0, 0] = float("nan")
    center, teacher = t.loss.center.clone(), params(t.teacher)
    with pytest.raises(FloatingPointError, match=r"DINO loss is nan at step 1 \(epoch 0\)"):
        t.step(images())
    assert t.step_index == 1 and torch.equal(t.loss.center, center)
    assert all(torch.equal(v, teacher[k]) for k, v in params(t.teacher).items())


def test_augmentation_is_seeded_and_shaped():
    t = trainer()
    crops = t.crops(images(n=3))
    assert [tuple(c.shape) for c in crops] == [(3, 3, 32, 32)] * 2 + [(3, 3, 16, 16)] * 4
    assert all(torch.equal(x, y) for x, y in zip(crops, t.crops(images(n=3))))
    assert not torch.equal(crops[0], t.crops(images(n=3), step=1)[0])
    assert not torch.equal(crops[0][0], crops[0][1])
    rng = np.random.default_rng(0)
    boxes = [dino_train.random_resized_crop_box(40, 60, (0.05, 0.4), rng) for _ in range(200)]
    assert all(0 <= top and top + h <= 40 and 0 <= left and left + w <= 60 for top, left, h, w in boxes)
    fractions = [h * w / 2400 for _, _, h, w in boxes]
    assert 0.04 < min(fractions) and max(fractions) < 0.42
    with pytest.raises(ValueError, match="uint8"):
        t.augment(images(n=1)[0].astype(np.float32), rng)
    with pytest.raises(ValueError, match="batch_size"):
        t.step(images(n=3))


def test_teacher_checkpoint_loads_in_the_dino_adapter(tmp_path, monkeypatch):
    """The exported teacher is main_dino.py's checkpoint layout: images/dino loads it (ViT-S/16) and embeds with
    the teacher's CLS."""
    t = dino_train.Trainer(dict(out_dim=64, hidden_dim=64, bottleneck_dim=32, batch_size=2), device="cpu")
    state = t.teacher_backbone_state()
    assert set(state) == {"teacher", "epoch", "step"}
    assert {k.split(".")[0] for k in state["teacher"]} == {"backbone", "head"}
    path = tmp_path / "checkpoint.pth"
    torch.save(state, path)
    dino = adapter_module(load_spec(MethodSpec, REPO / "images" / "dino" / "method.yaml"))
    monkeypatch.setenv("BENCH_WEIGHTS", str(path))
    monkeypatch.delenv("BENCH_VARIANT", raising=False)
    method = dino.Dino()
    method.setup(0, None)
    x = images(n=2, size=224)
    normed = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - dino_train.MEAN) / dino_train.STD
    with torch.no_grad():
        ours = dino_train.vit_cls(t.teacher.backbone.eval(), normed).numpy()
    np.testing.assert_allclose(method.embed(x), ours, rtol=0, atol=1e-5)
