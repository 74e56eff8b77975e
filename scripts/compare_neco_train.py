#!/usr/bin/env python
"""Compare images/neco/neco_train.py with the code NeCo trains with, on identical inputs, and print the largest
differences.

    python scripts/compare_neco_train.py sort [--diffsort WHEEL_OR_DIR]
    python scripts/compare_neco_train.py train --neco GIT_DIR_OR_CHECKOUT [--commit 3932160] [--diffsort ...]
                                              [--batch 2] [--steps-per-epoch 2] [--epochs 2] [--seed 0]

`sort`: our `DiffSort` against PyPI diffsort 0.2.0's DiffSortNet('bitonic', n, steepness=100) (distribution
'cauchy', art_lambda 0.25), as NeCo builds it (src/neco.py on_train_epoch_start), on seeded random inputs: max |P|
and |sorted| differences for n in 2..64 (49 = NeCo's 7x7 cells, padded to 64), and of the input gradient of a
cross-entropy through log P (NeCo's loss). --diffsort: the wheel (`pip download diffsort==0.2.0 --no-deps`) or an
unpacked folder; without it the wheel is downloaded with pip into a temporary folder. The wheel is unpacked into a
temporary folder and imported from there, never installed.

`train`: vpariza/NeCo's `NeCo` module (src/neco.py, src/neco_transforms.py, src/models/, src/layers/ at --commit,
copied to a temporary folder) against our `Trainer`, step by step. --neco: a bare git directory (what the `fetch`
tool returns) or a checkout. The copy is not edited; what it imports that is not needed for training is stubbed in
the temporary folder: `pytorch_lightning` (LightningModule = nn.Module with no-op save_hyperparameters / log,
`optimizers()`, `device`, a `trainer` holding global_step; LightningOptimizer passes the optimiser through) and
`experiments.utils` (the reference's own `cosine_scheduler`, cut out of experiments/utils.py, and placeholders for
the k-means metric and attention processing, used only by validation and loss_mask 'fg'/'bg'); xFormers off
(XFORMERS_DISABLED), so its attention is the explicit one. Each step runs as Lightning does: optimizer_step (the
reference's: weight decay schedule) -> optimizer.step(closure: training_step (shared_step, teacher EMA),
zero_grad, backward) -> CosineAnnealingLR.step.

Setup: the reference's ViT-S/14 (arch_version v2, no registers, 518 grid) student and teacher with their 256-d
heads (hidden 2048), built under --seed, N(0, 0.05) added to every bias, norm, LayerScale, CLS token and position
embedding; the teacher backbone loads the student's (as both load DINOv2 in train_with_neco.py; the heads stay
different). Our Trainer loads the same weights. Crops: our NeCoCrops (2 x 56 px, 4 x 28 px: 4x4 and 2x2 token
grids) of seeded noise images, with their boxes, given to both; the boxes are also checked against the reference's
NeCoTransforms.calculate_bboxes. Recipe: neco_dinov2r_xr.yml's (lrs 1e-5 / 1e-4, wd 0.04 -> 0.5, momentum 0.9995,
steepness 100, roi 7, cosine) over epochs x steps-per-epoch steps. The torch generator is set to our trainer's state
before each reference step, so drop path (the student's 0.1, its last block on sample subsets) and the queue and
reference draws are the same. Runs: the queue off (is_queue_usable False: references = the batch's aligned teacher
patches, shuffled) and on (queue_length 128), ours with explicit attention (vit_v2.py's arithmetic), and the queue
off with timm's scaled_dot_product_attention. Printed per step: max |reference - ours| of the loss, student,
teacher, AdamW moments and queue, with the step's largest parameter change for scale. Exit status 1 when an
explicit-attention run differs by more than 1e-5 anywhere. --our-sorter diffsort puts the reference's sorting
network into our trainer, to attribute the differences.

Measured (2-core CPU, nice 19, defaults: batch 2, 4 steps; `sort` under a minute, `train` 1.5 minutes):
- sort: P and the sorted values 0.0 apart (bit-exact) for every n; the input gradients up to 5.0e-8 apart (1.4e-8 at
  n = 49, where they reach 1.1e-2): the backward of gathers sums in another order than that of diffsort's 0/1
  matrix products.
- train, explicit attention: the loss 0.0 apart at every step (bit-exact), queue off and on; the boxes 0.0; after
  the steps the student 2.0e-6 (queue off) / 1.3e-6 (queue on) apart against steps of up to 1e-4, the teacher
  7.5e-9, AdamW's exp_avg 2.1e-8 and exp_avg_sq 5.8e-11, the queue 1.6e-7. The parameter differences sit where
  gradients are near AdamW's eps (|grad| ~1e-8, e.g. projection_head.0.weight), whose updates lr·g/(|g| + eps)
  magnify the sorting network's 1e-8 gradient rounding. With --our-sorter diffsort every quantity is 0.0 apart
  in both runs (drop path with DINOv2's subset stochastic depth, queue, EMA, schedules, AdamW all bit-exact).
- train, timm's scaled_dot_product_attention: loss 4.8e-7, student 1.6e-5, teacher 1.2e-8, exp_avg 8.9e-8.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "images" / "_vit"), str(REPO / "images" / "neco")]
import neco_train  # noqa: E402

SORT_SIZES = (2, 3, 5, 8, 13, 16, 31, 49, 64)
TOLERANCE = 1e-5
NOISE = 0.05
FILES = (
    "src/neco.py",
    "src/neco_transforms.py",
    "src/models/__init__.py",
    "src/models/vit.py",
    "src/models/vit_v2.py",
    *(f"src/layers/{n}.py" for n in ("__init__", "attention", "block", "dino_head", "drop_path", "layer_scale")),
    *(f"src/layers/{n}.py" for n in ("mlp", "patch_embed", "swiglu_ffn")),
)
LIGHTNING = """import torch


class LightningModule(torch.nn.Module):
    \"\"\"Stub: the parts of pytorch_lightning.LightningModule that NeCo's training step touches.\"\"\"

    def save_hyperparameters(self, *args, **kwargs):
        pass

    def log(self, *args, **kwargs):
        pass

    def optimizers(self):
        return self.stub_optimizer

    @property
    def device(self):
        return next(self.parameters()).device
"""
LIGHTNING_OPTIMIZER = """class LightningOptimizer:
    \"\"\"Stub: wrapping returns the torch optimiser itself.\"\"\"

    @staticmethod
    def _to_lightning_optimizer(optimizer, strategy):
        return optimizer
"""
EXPERIMENTS_UTILS = """import numpy as np


class PredsmIoUKmeans:  # validation only
    def __init__(self, *args, **kwargs):
        pass


def process_attentions(*args, **kwargs):  # loss_mask 'fg' / 'bg' only
    raise NotImplementedError


"""


def import_diffsort(source: str | None, tmp: Path):
    """diffsort 0.2.0 from its wheel (downloaded with pip when `source` is None) or an unpacked folder."""
    if source and Path(source).is_dir():
        root = Path(source)
    else:
        wheel = Path(source) if source else None
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "diffsort==0.2.0", "--no-deps", "-d", str(tmp)]
            subprocess.run(cmd, check=True, capture_output=True)
            wheel = next(tmp.glob("diffsort-0.2.0-*.whl"))
        root = tmp / "diffsort_src"
        zipfile.ZipFile(wheel).extractall(root)
    sys.path.insert(0, str(root))
    import diffsort

    assert Path(diffsort.__file__).is_relative_to(root), diffsort.__file__
    return diffsort


def compare_sort(diffsort) -> float:
    worst = 0.0
    print(f"{'n':>3} {'rows':>5} {'|P diff|':>10} {'|x diff|':>10} {'|grad diff|':>11} {'|grad|':>9}  min P")
    for n in SORT_SIZES:
        g = torch.Generator().manual_seed(n)
        x = (torch.rand(294, n, generator=g) * 2 - 1).requires_grad_()  # cosine similarities: [-1, 1]
        q = torch.softmax(torch.randn(294, n, n, generator=g) * 3, 1)
        results = []
        for sorter in (diffsort.DiffSortNet("bitonic", n, steepness=100), neco_train.DiffSort(n, steepness=100)):
            x.grad = None
            sorted_x, p = sorter(x)
            (-(q * p.log()).sum(1).mean()).backward()
            results.append((sorted_x.detach(), p.detach(), x.grad.clone()))
        (xr, pr, gr), (xo, po, go) = results
        diffs = [(pr - po).abs().max().item(), (xr - xo).abs().max().item(), (gr - go).abs().max().item()]
        worst = max(worst, *diffs)
        scale, smallest = gr.abs().max().item(), pr.min().item()
        print(f"{n:>3} {len(x):>5} {diffs[0]:>10.3g} {diffs[1]:>10.3g} {diffs[2]:>11.3g} {scale:>9.3g}  {smallest:.3g}")
    return worst


def reference_source(source: str, commit: str, name: str) -> str:
    path = Path(source) / name
    if path.is_file():
        return path.read_text()
    cmd = ["git", f"--git-dir={source}", "show", f"{commit}:{name}"]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def import_reference(source: str, commit: str, dest: Path):
    """The reference's src/ copied unchanged into `dest`, with the stubs beside it; returns (src.neco,
    src.neco_transforms)."""
    for name in FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(reference_source(source, commit, name))
    utils = reference_source(source, commit, "experiments/utils.py")
    tree = ast.parse(utils)
    cosine = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "cosine_scheduler")
    for name, text in {
        "pytorch_lightning/__init__.py": LIGHTNING,
        "pytorch_lightning/core/__init__.py": "",
        "pytorch_lightning/core/optimizer.py": LIGHTNING_OPTIMIZER,
        "experiments/__init__.py": "",
        "experiments/utils.py": EXPERIMENTS_UTILS + ast.get_source_segment(utils, cosine) + "\n",
    }.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(text)
    os.environ["XFORMERS_DISABLED"] = "1"
    sys.path.insert(0, str(dest))
    neco = importlib.import_module("src.neco")
    assert Path(neco.__file__).is_relative_to(dest), neco.__file__
    return neco, importlib.import_module("src.neco_transforms")


def noisy_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """N(0, NOISE) added to every bias, norm, LayerScale, CLS token and position embedding (zeros or ones at init),
    so that each tensor shapes the output."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 or name.endswith(("cls_token", "pos_embed")):
                p.add_(torch.randn(p.shape, generator=generator) * NOISE)


def run_train(neco, transforms, args, queue_length: int, fused: bool) -> float:
    """One comparison run; returns the largest difference."""
    b, spe, epochs = args.batch, args.steps_per_epoch, args.epochs
    torch.manual_seed(args.seed)
    ref = neco.NeCo(
        gpus=1,
        num_samples=b * spe,
        batch_size=b,
        max_epochs=epochs,
        lr_heads=1e-4,
        lr_backbone=1e-5,
        final_lr=0.0,
        weight_decay_end=0.5,
        weight_decay=0.04,
        projection_hidden_dim=2048,
        projection_feat_dim=256,
        n_layers_projection_head=3,
        crops_for_assign=[0, 1],
        nmb_crops=[2, 4],
        num_classes=21,
        val_iters=1,
        num_clusters_kmeans=[21],
        use_teacher=True,
        loss_mask="all",
        queue_length=queue_length,
        momentum_teacher=0.9995,
        momentum_teacher_end=1.0,
        exclude_norm_bias=True,
        optimizer="adamw",
        patch_size=14,
        roi_align_kernel_size=7,
        arch="vit-small",
        student_steepness=100,
        teacher_steepness=100,
        arch_version="v2",
        sort_net="bitonic",
        is_queue_usable=queue_length > 0,
        sim_dist="cosine",
        num_register_tokens=0,
    )
    noise = torch.Generator().manual_seed(args.seed + 1)
    noisy_(ref.model, noise)
    noisy_(ref.teacher, noise)
    backbone = {k: v for k, v in ref.model.state_dict().items() if not k.startswith("projection_head.")}
    ref.teacher.load_state_dict(backbone, strict=False)  # as both load DINOv2; the heads stay different
    ref.train()
    if queue_length:  # on_train_epoch_start would put it on CUDA (gpus=1); the same zeros on the CPU
        ref.queue = torch.zeros(2, queue_length, 256)
    ref.on_train_epoch_start()
    [optimizer], [scheduler] = ref.configure_optimizers()
    sched = scheduler["scheduler"]  # interval 'step': stepped after every optimiser step
    ref.stub_optimizer = optimizer

    recipe = dict(
        global_size=56,
        local_size=28,
        batch_size=b,
        epochs=epochs,
        steps_per_epoch=spe,
        queue_length=queue_length,
        fused_attn=fused,
        seed=args.seed,
    )
    ours = neco_train.Trainer(recipe, device="cpu")
    if args.our_sorter == "diffsort":  # attribution: the reference's sorting network inside our trainer
        ours.sorters = [ref.student_sorter, ref.teacher_sorter]
        for sorter in ours.sorters:
            sorter.n = sorter.size
    for mine, theirs in ((ours.student, ref.model), (ours.teacher, ref.teacher)):
        state = theirs.state_dict()
        backbone = {k: v for k, v in state.items() if not k.startswith("projection_head.")}
        mine.backbone.load_state_dict(checkpoint_filter_fn(backbone, mine.backbone), strict=True)
        head = {k.removeprefix("projection_head."): v for k, v in state.items() if k.startswith("projection_head.")}
        mine.projection_head.load_state_dict(head, strict=True)

    def by_our_name(net):  # reference parameters under our NeCoNet's names (mask_token is not trained: left out)
        return {
            (k if k.startswith("projection_head.") else "backbone." + k): p
            for k, p in net.named_parameters()
            if k != "mask_token"
        }

    names, teacher_ref = by_our_name(ref.model), by_our_name(ref.teacher)

    ref_transforms = transforms.NeCoTransforms([56, 28], [2, 4], [0.25, 0.05], [1.0, 0.25], jitter_strength=1.0)
    rng = np.random.default_rng(args.seed)
    worst = 0.0
    label = f"queue {queue_length or 'off'}, {'sdpa' if fused else 'explicit'} attention"
    print(f"\n{label}")
    print(
        f"{'step':>4} {'loss':>10} {'|loss diff|':>11} {'student':>9} {'teacher':>9} {'exp_avg':>9} {'exp_avg_sq':>10}"
        f" {'queue':>9} {'max step':>9} {'boxes':>6}"
    )
    for t in range(epochs * spe):
        images = rng.integers(0, 256, (b, 80, 96, 3), dtype=np.uint8)
        crops, gc, other = ours.crops(images)
        box_diff = 0.0
        for i, image in enumerate(images):
            _, boxes = ours.augment(image, np.random.default_rng((args.seed, t, i)))
            ref_gc, ref_all = ref_transforms.calculate_bboxes(boxes)
            box_diff = max(box_diff, (ref_gc - gc[i]).abs().max().item(), (ref_all - other[i]).abs().max().item())
        before = {k: p.detach().clone() for k, p in ref.model.named_parameters()}
        torch.set_rng_state(ours.rng["torch"])
        ref.trainer = SimpleNamespace(global_step=t, strategy=None)
        losses = []

        def closure():
            loss = ref.training_step(([c.clone() for c in crops], {"gc": gc.clone(), "all": other.clone()}), t)
            optimizer.zero_grad()
            loss.backward()
            losses.append(loss.item())
            return loss

        ref.optimizer_step(t // spe, t % spe, optimizer, closure)
        sched.step()
        loss = ours.train_step(crops, gc, other)
        student = dict(ours.student.named_parameters())
        teacher = dict(ours.teacher.named_parameters())
        d_student, worst_name = max(((student[k] - p).abs().max().item(), k) for k, p in names.items())
        d_teacher = max((teacher[k] - p).abs().max().item() for k, p in teacher_ref.items())
        moments = [0.0, 0.0]
        for k, p in names.items():
            mine, theirs = ours.optimizer.state.get(student[k], {}), optimizer.state.get(p, {})
            assert mine.keys() == theirs.keys(), k
            for j, key in enumerate(("exp_avg", "exp_avg_sq")):
                if key in mine:
                    moments[j] = max(moments[j], (mine[key] - theirs[key]).abs().max().item())
        d_queue = 0.0
        if queue_length:
            assert ours.queue_entries == ref.entries_in_queue, (ours.queue_entries, ref.entries_in_queue)
            d_queue = (ours.queue - ref.queue).abs().max().item()
        moved = max((p.detach() - before[k]).abs().max().item() for k, p in ref.model.named_parameters())
        d_loss = abs(loss - losses[0])
        print(
            f"{t:>4} {losses[0]:>10.6f} {d_loss:>11.3g} {d_student:>9.3g} {d_teacher:>9.3g} {moments[0]:>9.3g}"
            f" {moments[1]:>10.3g} {d_queue:>9.3g} {moved:>9.3g} {box_diff:>6.3g}"
        )
        if d_student:
            grad = names[worst_name].grad.abs()
            print(f"     student's largest difference in {worst_name} (|grad| {grad.min():.2g} .. {grad.max():.2g})")
        worst = max(worst, d_loss, d_student, d_teacher, *moments, d_queue, box_diff)
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    sort = sub.add_parser("sort", help="DiffSort against diffsort 0.2.0")
    sort.add_argument("--diffsort", help="diffsort-0.2.0 wheel or unpacked folder (default: pip download)")
    train = sub.add_parser("train", help="Trainer against NeCo's training step")
    train.add_argument("--neco", required=True, help="vpariza/NeCo git directory or checkout")
    train.add_argument("--commit", default="3932160")
    train.add_argument("--diffsort", help="diffsort-0.2.0 wheel or unpacked folder (default: pip download)")
    train.add_argument("--batch", type=int, default=2)
    train.add_argument("--steps-per-epoch", type=int, default=2)
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--our-sorter",
        choices=("ours", "diffsort"),
        default="ours",
        help="diffsort: our trainer sorts with diffsort's DiffSortNet (to attribute differences)",
    )
    train.add_argument("--runs", default="off,queue,sdpa", help="comma-separated subset of off,queue,sdpa")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.part == "sort":
            worst = compare_sort(import_diffsort(args.diffsort, Path(tmp)))
            print(f"largest difference: {worst:.3g}")
            return int(worst > 1e-6)
        import_diffsort(args.diffsort, Path(tmp))
        neco, transforms = import_reference(args.neco, args.commit, Path(tmp) / "neco")
        runs = {"off": (0, False), "queue": (128, False), "sdpa": (0, True)}
        failed = False
        for name in args.runs.split(","):
            queue_length, fused = runs[name]
            worst = run_train(neco, transforms, args, queue_length, fused)
            print(f"largest difference: {worst:.3g}")
            failed |= not fused and worst > TOLERANCE
        return int(failed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
