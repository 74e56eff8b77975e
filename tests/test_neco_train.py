"""images/neco/neco_train.py: NeCo fine-tuning (vpariza/NeCo 3932160 src/neco.py) in one process.

Small shapes on CPU. scripts/compare_neco_train.py checks the same code against PyPI diffsort and the reference's
NeCo.knn_loss; these tests check its parts without either.
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

sys.path[:0] = [str(REPO / "images" / "_vit"), str(REPO / "images" / "neco")]
import neco_train  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("n", [2, 5, 16, 49])
def test_sorting_network_is_doubly_stochastic_and_sorts(n):
    x = torch.randn(64, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    soft, p = neco_train.DiffSort(n, steepness=100)(x)
    assert p.shape == (64, n, n) and soft.shape == (64, n)
    assert p.min() >= 0
    torch.testing.assert_close(p.sum(1), torch.ones(64, n, dtype=x.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(p.sum(2), torch.ones(64, n, dtype=x.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(soft, (x.unsqueeze(1) @ p).squeeze(1), rtol=0, atol=1e-12)
    ordered, order = x.sort(1)
    # relaxed: near the sort, not on it (a comparator of values 0.01 apart mixes 25/75 at steepness 100)
    assert (soft - ordered).abs().mean() < 0.05
    assert not torch.allclose(soft, ordered, atol=1e-6)
    hard_soft, hard = neco_train.DiffSort(n, steepness=1e9)(x)
    torch.testing.assert_close(hard_soft, ordered, rtol=0, atol=1e-7)
    assert torch.equal(hard.argmax(1), order)  # sorted position j holds element order[j]
    assert hard.max(1).values.min() > 1 - 1e-4  # the Cauchy tails: 1/(pi steepness |a - b|) per comparator


def test_sorting_network_gradient():
    x = torch.randn(4, 49, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    sorter = neco_train.DiffSort(49, steepness=100)
    target = torch.softmax(torch.randn(4, 49, 49, dtype=torch.float64), -1)
    torch.autograd.gradcheck(lambda v: (target * sorter(v)[1].log()).sum(), (x[:1].detach().requires_grad_(),))
    (target * sorter(x)[1].log()).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    with pytest.raises(ValueError, match=r"expected \(B, 49\)"):
        sorter(torch.zeros(2, 48))


TINY = dict(
    patch_size=8,
    vit_overrides=dict(depth=2, embed_dim=32, num_heads=2, img_size=32),
    hidden_dim=64,
    out_dim=32,
    global_size=32,
    local_size=16,
    roi_size=3,
    batch_size=2,
    queue_length=64,
    epochs=2,
    steps_per_epoch=5,
    seed=3,
)


def images(n=2, size=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def trainer(**changes):
    return neco_train.Trainer(dict(TINY, **changes), device="cpu")


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_crops_boxes_and_overlaps():
    augment = neco_train.NeCoCrops(32, 16, n_local=4, min_intersection=0.1)
    image = images(n=1, size=60)[0][:, :50]  # 60 high, 50 wide
    crops, boxes = augment(image, np.random.default_rng(0))
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 4
    again, boxes_again = augment(image, np.random.default_rng(0))
    assert torch.equal(boxes, boxes_again) and all(torch.equal(a, b) for a, b in zip(crops, again))
    assert boxes.dtype == torch.float32 and boxes.shape == (6, 4)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 50).all() and (boxes[:, 3] <= 60).all()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 3000
    assert (area[:2] >= 0.25 - 0.05).all() and (area[2:] <= 0.25 + 0.05).all()
    least = int(3000 * 0.1)
    assert neco_train.overlap(boxes[0].tolist(), boxes[1].tolist()) > 2 * least
    assert all(neco_train.overlap(boxes[v].tolist(), boxes[g].tolist()) > least for v in range(2, 6) for g in (0, 1))
    gc, other = augment.pair_boxes(boxes)
    assert gc.shape == (2, 6, 4) and other.shape == (6, 2, 4)
    torch.testing.assert_close(gc[0, 0], torch.tensor([0.0, 0, 32, 32]))  # a global crop with itself: all of it
    sizes = torch.tensor([32.0] * 2 + [16.0] * 4)
    for g in range(2):
        for v in range(6):
            inter = torch.cat((torch.max(boxes[g, :2], boxes[v, :2]), torch.min(boxes[g, 2:], boxes[v, 2:])))
            for frame, box in ((g, gc[g, v]), (v, other[v, g])):  # back to image pixels from either frame
                extent = boxes[frame, 2:] - boxes[frame, :2]
                back = boxes[frame, :2].repeat(2) + box / sizes[frame] * extent.repeat(2)
                torch.testing.assert_close(back, inter)
    with pytest.raises(ValueError, match="uint8"):
        augment(image.astype(np.float32), np.random.default_rng(0))


def test_trainer_crops_are_seeded_per_step_and_image():
    t = trainer()
    crops, gc, other = t.crops(images())
    assert [tuple(c.shape) for c in crops] == [(2, 3, 32, 32)] * 2 + [(2, 3, 16, 16)] * 4
    assert gc.shape == (2, 2, 6, 4) and other.shape == (2, 6, 2, 4)
    crops2, gc2, _ = t.crops(images())
    assert torch.equal(gc, gc2) and all(torch.equal(a, b) for a, b in zip(crops, crops2))
    assert not torch.equal(gc, t.crops(images(), step=1)[1])
    assert not torch.equal(gc[0], gc[1])
    with pytest.raises(ValueError, match="batch_size"):
        t.step(images(n=3))


def test_network_outputs_and_parameter_groups():
    t = trainer()
    assert isinstance(t.student.backbone.blocks[0].drop_path1, torch.nn.Identity)  # linspace(0, 0.1, depth)
    assert t.student.backbone.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)
    assert isinstance(t.teacher.backbone.blocks[1].drop_path1, torch.nn.Identity)
    # the last block's rate is float32 0.1 > 0.1: DINOv2's stochastic depth on a subset of int(B (1 - p)) samples,
    # int(10 x 0.89999999851) = 8 here, drawn per branch (attention, MLP): 8 to 10 samples change
    block, x = t.student.backbone.blocks[1], torch.randn(10, 5, 32)
    assert "forward" in vars(block) and "forward" not in vars(t.student.backbone.blocks[0])
    with torch.no_grad():
        attn = x + block.ls1(block.attn(block.norm1(x)))
        full = attn + block.ls2(block.mlp(block.norm2(attn)))
        torch.testing.assert_close(block.eval()(x), full)
        out = block.train()(x)
    changed = (out - x).flatten(1).abs().amax(1) > 0
    assert 8 <= changed.sum() <= 10
    head = t.student.projection_head
    assert [type(m).__name__ for m in head] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert [tuple(head[i].weight.shape) for i in (0, 2, 4)] == [(64, 32), (64, 64), (32, 64)]
    crops, _, _ = t.crops(images())
    with torch.no_grad():
        out = t.student.eval()(crops)
    assert out.shape == (2 * 2 * 16 + 4 * 2 * 4, 32)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(len(out)))
    # different random heads in student and teacher, as NeCo builds each network with its own
    assert not torch.equal(t.teacher.projection_head[0].weight, head[0].weight)
    names = {id(p): n for n, p in t.student.named_parameters()}
    groups = [{names[id(p)] for p in g["params"]} for g in t.optimizer.param_groups]
    assert [g["lr"] for g in t.optimizer.param_groups] == [1e-5, 1e-5, 1e-4, 1e-4]
    assert [g["weight_decay"] for g in t.optimizer.param_groups] == [0.04, 0.0, 0.04, 0.0]
    assert {"backbone.cls_token", "backbone.pos_embed", "backbone.blocks.0.attn.qkv.weight"} <= groups[0]
    assert {"backbone.norm.weight", "backbone.blocks.0.ls1.gamma", "backbone.patch_embed.proj.bias"} <= groups[1]
    assert groups[2] == {f"projection_head.{i}.weight" for i in (0, 2, 4)}
    assert groups[3] == {f"projection_head.{i}.bias" for i in (0, 2, 4)}
    assert set().union(*groups) == set(names.values())


def test_loss_is_the_cross_entropy_of_rank_distributions():
    """Two identical global crops and identical networks: the student's rank distributions equal the teacher's, so
    the loss is their entropy; any other student has a larger loss (cross-entropy = entropy + KL)."""
    t = trainer(drop_path_rate=0.0, local_crops_number=0)
    t.student.load_state_dict(t.teacher.state_dict())
    x = t.crops(images())[0][0]
    crops, full = [x, x], torch.tensor([0.0, 0, 32, 32]).expand(2, 2, 2, 4)
    sorter = t.sorters[0]
    draw = torch.Generator().manual_seed(0)
    refs = {i: torch.randn(2, 32, 3, 3, generator=draw) for i in range(2)}
    with torch.no_grad():
        teacher, student = t.teacher(crops), t.student(crops)
        args = (full, full, 2, 2, 8, lambda i, cells: refs[i], sorter, sorter)
        loss = neco_train.knn_loss(teacher, student, *args)
        entropies = []
        for i in range(2):
            maps = teacher[32 * i : 32 * (i + 1)].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
            cells = neco_train.roi_align(maps, list(full[:, 0, :1] / 8), 3, aligned=True)
            q = neco_train.rank_distributions(cells, refs[i], sorter)
            entropies.append(-(q * q.log()).sum(1).mean())
        torch.testing.assert_close(loss, torch.stack(entropies).mean(), rtol=1e-6, atol=0)
        t.student.projection_head[0].weight.mul_(1.5)
        assert neco_train.knn_loss(teacher, t.student(crops), *args) > loss + 1e-4


def test_step_updates_student_and_teacher_ema():
    t = trainer(queue_length=0)
    m = t.momentum_schedule[0]
    assert m == 0.9995 and t.momentum_schedule[-1] < 1
    student0, teacher0 = params(t.student), params(t.teacher)
    loss = t.step(images())
    assert math.isfinite(loss) and loss > 0
    student1, teacher1 = params(t.student), params(t.teacher)
    assert all(not torch.equal(student1[k], student0[k]) for k in student0 if "gamma" not in k)
    for name in teacher0:  # the EMA runs in training_step, before the optimiser moves the student
        expected = teacher0[name] * m + (1 - m) * student0[name]
        torch.testing.assert_close(teacher1[name], expected, rtol=0, atol=1e-7)
    assert all(not p.requires_grad for p in t.teacher.parameters())
    # the schedules: lr cosine to 0 over the 10 steps; weight decay cosine 0.04 -> 0.5 on groups 0 and 2
    groups = t.optimizer.param_groups
    factor = (1 + math.cos(math.pi / 10)) / 2
    assert groups[0]["lr"] == pytest.approx(1e-5 * factor) and groups[2]["lr"] == pytest.approx(1e-4 * factor)
    t.step(images(seed=1))
    assert [g["weight_decay"] for g in groups] == [t.wd_schedule[1], 0.0, t.wd_schedule[1], 0.0]
    assert 0.04 < t.wd_schedule[1] < t.wd_schedule[-1] < 0.5
    for _ in range(8):
        t.step(images(seed=2))
    assert groups[0]["lr"] == pytest.approx(0, abs=1e-20)
    with pytest.raises(RuntimeError, match="schedules end after 10 steps"):
        t.step(images())


def test_queue_update_and_draws():
    t = trainer(queue_length=64)
    crops, gc, other = t.crops(images())
    with torch.no_grad():
        teacher = t.teacher(crops[:2])
    t.step(images())
    assert t.queue_entries == 40  # min(2 x 10, 64), counted once per global crop
    for i in range(2):
        rows = t.queue[i, :20]
        torch.testing.assert_close(rows.norm(dim=1), torch.ones(20))
        tokens = teacher[32 * i : 32 * (i + 1)]  # this crop's 32 teacher tokens, before the EMA moved the teacher
        assert all(torch.isclose(tokens, r, atol=1e-6).all(1).any() for r in rows)
        assert torch.equal(t.queue[i, 20:], torch.zeros(44, 32))
    first = t.queue.clone()
    t.step(images(seed=1))
    assert t.queue_entries == 64
    assert torch.equal(t.queue[:, 20:40], first[:, :20]) and t.queue[:, 40:].abs().sum() == 0
    t.step(images(seed=2))
    assert torch.equal(t.queue[:, 40:], first[:, : 20 + 4][:, :24])
    with pytest.raises(ValueError, match="queue_length 16 is below"):
        trainer(queue_length=16)
    with pytest.raises(ValueError, match="tokens of a global crop"):
        trainer(global_size=8, queue_length=64)


def test_checkpoint_round_trip_continues_identically():
    recipe = dict(drop_path_rate=0.2)  # the drop-path and queue draws need the RNG state back
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
    assert b.step_index == 2 and b.queue_entries == 64
    assert b.step(images(seed=1)) == loss_a
    for (name, pa), pb in zip(a.student.state_dict().items(), b.student.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.queue, b.queue)
    assert a.step(images(seed=2)) == b.step(images(seed=2))
    with pytest.raises(ValueError, match="another recipe"):
        trainer(lr_heads=0.5).load_state_dict(a.state_dict())


def test_nan_loss_raises_and_updates_nothing():
    t = trainer()
    t.step(images())
    with torch.no_grad():
        t.student.projection_head[0].weight[0, 0] = float("nan")
    queue, teacher = t.queue.clone(), params(t.teacher)
    with pytest.raises(FloatingPointError, match=r"NeCo loss is nan at step 1 \(epoch 0\)"):
        t.step(images())
    assert t.step_index == 1 and t.queue_entries == 40 and torch.equal(t.queue, queue)
    assert all(torch.equal(v, teacher[k]) for k, v in params(t.teacher).items())


def test_loss_falls_against_a_fixed_teacher():
    t = trainer(queue_length=0, momentum_teacher=1.0, lr_backbone=1e-3, lr_heads=1e-3, epochs=6)
    crops = t.crops(images())
    losses = [t.train_step(*crops) for _ in range(12)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < losses[0] - 0.3, losses


def test_init_weights_load_into_both_backbones():
    source = trainer(seed=9).backbone_state()
    dinov2 = {k: v for k, v in source.items() if not k.startswith("projection_head.")}
    dinov2["mask_token"] = torch.randn(1, 32)
    dinov2["register_tokens"] = torch.randn(1, 4, 32)  # a reg4 file: its registers are dropped (DINOv2R-XR)
    t = neco_train.Trainer(TINY, device="cpu", init=dinov2)
    for net in (t.student, t.teacher):
        for k, v in net.backbone.state_dict().items():
            assert torch.equal(v, dinov2[k]), k
    assert not torch.equal(t.student.projection_head[0].weight, t.teacher.projection_head[0].weight)
    assert torch.equal(t.backbone_state()["mask_token"], dinov2["mask_token"])
    with pytest.raises(ValueError, match=r"1 expected keys missing \(norm.weight\)"):
        neco_train.Trainer(TINY, device="cpu", init={k: v for k, v in dinov2.items() if k != "norm.weight"})


def test_exported_student_loads_in_the_neco_adapter(tmp_path, monkeypatch):
    """The export is a NeCo backbone state dict (DINOv2 keys, mask_token, projection_head.*): images/neco loads it
    (ViT-S/14) and its dense features are the student's patch tokens."""
    t = neco_train.Trainer(dict(hidden_dim=64, out_dim=32, batch_size=2, global_size=224), device="cpu")
    state = t.backbone_state()
    assert {k for k in state if k.startswith("projection_head.")} == {
        f"projection_head.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")
    }
    path = tmp_path / "neco.ckpt"
    torch.save(state, path)
    neco = adapter_module(load_spec(MethodSpec, REPO / "images" / "neco" / "method.yaml"))
    monkeypatch.setenv("BENCH_WEIGHTS", str(path))
    monkeypatch.delenv("BENCH_VARIANT", raising=False)
    method = neco.Neco()
    method.setup(0, None)
    x = images(n=1, size=224)
    normed = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - neco_train.MEAN) / neco_train.STD
    with torch.no_grad():
        ours = neco_train.patch_tokens(t.student.backbone.eval(), normed).reshape(1, 16, 16, -1).numpy()
    np.testing.assert_allclose(method.embed_dense(x), ours, rtol=0, atol=1e-5)
