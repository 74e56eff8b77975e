#!/usr/bin/env python
"""Run the ClevrTex reference DTI-Sprites and images/dti_sprites/dti_sprites.py on identical weights, images, noise.

    python scripts/compare_dti_sprites.py [--reference PATH] [--kornia DIR] [--quick] [--seed 0] [--threads 2]

PATH: a checkout or a bare git directory of karazijal/clevrtex; not given, it is cloned at fe982ab into a temporary
folder (needs git and the network). Its `ool/picture/models/thirdparty/dti_sprites/{__init__,model,utils}.py` are
copied into a temporary package and imported unedited. The reference needs kornia (it pins 0.5.5): DIR, when given,
is put first on sys.path (e.g. `pip install --no-deps --target DIR kornia==0.5.5`). One shim, in this process only:
`scipy.signal.gaussian` (moved to scipy.signal.windows in scipy 1.13) is `scipy.signal.windows.gaussian`.

For each case the reference `DTISprites` is built with experiments/dtisprites.py's kwargs under a fixed seed (its
background from `mean_bg`, random here), optionally perturbed (random prototypes and masks, random last layers of the
regressors and of the occlusion MLP, otherwise all sprites are identical and every transformation the identity), and
its state dict is loaded into ours through a name map. The reference's mask noise (`torch.rand`) and its restart
noise (`torch.randn` in copy_with_noise) are replaced by draws from a generator seeded as the one passed to ours, in
ours's order (the zero-scaled draws for the regressor biases give zeros). The reference's schedules are set as in
training: `model.step()` once per epoch; evaluation as the ClevrTex notebook leaves it (a fresh model, cur_epoch 0,
every transformation forced on, eval mode). A training step at a check step (step % 250 == 0) runs LitDTI's glue:
proportions (1 - distance).mean(0), a layer drawn (same generator), `reassign_empty_clusters`. Compared: layers.mask
vs masks, canvas, loss, every parameter's gradient (relative to the largest), and after a check step the restarted
parameters. Also printed: how many times the reference's param_groups list its parameters (the shared encoder).
Once the projective warp is on, the reference's backward after a restart raises (its load_state_dict bumps the
version of saved weights): that phase's gradients are reported as nan and not compared.
Exit status 1 when a figure exceeds the tolerance.

Recorded (CPU, 2 threads; reference with kornia 0.5.5, torch 2.14), full run, 128x128, 10+1 sprites, 10 layers,
batch 2, 48,235,051 parameters on both sides:
    reference init, float32: masks 0, canvas 0, loss <= 7.3e-8 rel, gradients <= 3.7e-7 of the largest (all phases)
    perturbed, float32: masks <= 4.9e-6, canvas <= 2.8e-6, loss <= 8.5e-8 rel, gradients <= 5.5e-6, restarted
        parameters 0 (8 sprites restarted)
    perturbed, float64: masks <= 9.6e-15, canvas <= 1.1e-14, loss <= 1.4e-16 rel, gradients <= 1.8e-14, restarted 0
    reference forward 0.7-2.3 s (float32), ours 0.2-0.3 s; --quick (64x64, 4+1 sprites, 3 layers): same picture.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import objseg_reference as common
import torch

dti_sprites = common.our_module("dti_sprites")

DIR = "ool/picture/models/thirdparty/dti_sprites"
FILES = ("__init__.py", "model.py", "utils.py")
TOL, TOL_REL, TOL_GRAD = 1e-4, 1e-5, 1e-3  # masks/canvas/params absolute; loss relative; grads rel. to max |grad|
SPE = 1250  # steps per epoch (ours); the reference counts epochs itself


def ref_kwargs(sprites: int, layers: int, sprite: int) -> dict:
    """experiments/dtisprites.py's kwargs (complex=False), numbers of sprites/layers and sprite size as given."""
    return {
        "name": "dti_sprites", "n_sprites": sprites, "n_backgrounds": 1, "n_objects": layers, "freeze_sprite": 40,
        "inject_noise": 0.4, "encoder_name": "resnet18", "with_pool": [2, 2],
        "transformation_sequence": "identity_projective", "transformation_sequence_bkg": "color",
        "transformation_sequence_layer": "color_position", "curriculum_learning": [150],
        "curriculum_learning_bkg": False, "curriculum_learning_layer": False, "proto_init": "constant",
        "mask_init": "gaussian", "bkg_init": "mean", "sprite_size": [sprite, sprite], "gaussian_weights_std": 10,
        "pred_occlusion": True, "estimate_minimum": True, "greedy_algo_iter": 3, "add_empty_sprite": True,
        "lambda_empty_sprite": 1.0e-4,
    }  # fmt: skip


# (name, image size, sprites, layers, sprite size, batch, dtype, perturbed)
FULL = (
    ("clevrtex init", 128, 10, 10, 40, 2, torch.float32, False),
    ("clevrtex perturbed", 128, 10, 10, 40, 2, torch.float32, True),
    ("clevrtex perturbed", 128, 10, 10, 40, 2, torch.float64, True),
)
QUICK = (
    ("small init", 64, 4, 3, 16, 2, torch.float32, False),
    ("small perturbed", 64, 4, 3, 16, 3, torch.float32, True),
    ("small perturbed", 64, 4, 3, 16, 3, torch.float64, True),
)
# (label, epoch, step offset in the epoch, train mode): frozen + projective off; unfrozen + projective on at a
# non-check step and at a check step (reassignment); evaluation
PHASES = (("train ep 0", 0, 1, True), ("train ep 200", 200, 1, True), ("train ep 200 chk", 200, 0, True),
          ("eval", None, None, False))  # fmt: skip


def ours_name(k: str) -> str | None:
    """reference state-dict name -> ours (None: no counterpart: buffers of its transformation modules)."""
    p = k.split(".")
    if k in ("prototype_params", "mask_params", "bkg_params"):
        return k
    if "encoder" in p:
        i = p.index("encoder")  # ...encoder.encoder.<i>.<rest>
        idx, rest = int(p[i + 2]), p[i + 3 :]
        head = {0: "conv1", 1: "bn1", 4: "layer1", 5: "layer2", 6: "layer3", 7: "layer4"}[idx]
        return ".".join(["encoder", head, *rest])
    lin = {"0": "0", "3": "2", "5": "4"}
    if p[0] == "occ_predictor":
        return f"occ_predictor.{lin[p[1]]}.{p[2]}"
    if "regressor" not in p:
        return None  # activations, identity buffers
    r = p.index("regressor")
    tail = f"{lin[p[r + 1]]}.{p[r + 2]}"
    if p[0] == "sprite_transformers":
        return None if p[5] == "0" else f"projective.{p[1]}.{p[3]}.{tail}"  # module 0: identity (0 elements)
    if p[0] == "layer_transformer":
        return f"{('layer_color', 'layer_position')[int(p[4])]}.{p[2]}.{tail}"
    if p[0] == "bkg_transformer":
        return f"bkg_color.{p[2]}.{tail}"
    raise KeyError(k)


def perturb(sd: dict, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)

    def rnd(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=g, dtype=t.dtype) * (hi - lo) + lo

    def nrm(t: torch.Tensor, std: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=t.dtype) * std

    for k, v in sd.items():
        if k == "prototype_params":
            v.copy_(rnd(v, -0.05, 1.05))
        elif k == "mask_params":
            v.copy_(rnd(v, -0.1, 1.1))
        elif k == "bkg_params":
            v.copy_(rnd(v, 0, 1))
        elif (k.startswith("occ_predictor.5") or ".regressor.5." in k) and v.numel():
            big = k.startswith("occ_predictor")
            v.copy_(nrm(v, (0.05 if big else 0.01) if k.endswith("weight") else (1.0 if big else 0.1)))


class Noise:
    """The reference's global torch.rand / torch.randn (only the draws it makes here) from a generator."""

    def __init__(self, gen: torch.Generator, proto_shape: tuple[int, ...]):
        self.gen, self.proto_shape = gen, tuple(proto_shape)
        self.rand, self.randn = torch.rand, torch.randn

    def __enter__(self):
        gen, shape, rand, randn = self.gen, self.proto_shape, self.rand, self.randn

        def fake_rand(*size, device=None, dtype=None, **kw):
            return rand(*size, generator=gen, dtype=dtype or torch.get_default_dtype())

        def fake_randn(size, device=None, dtype=None, **kw):
            if tuple(size) == shape:
                return randn(size, generator=gen, dtype=dtype or torch.get_default_dtype())
            return torch.zeros(size, dtype=dtype or torch.get_default_dtype())  # the zero-scaled bias noise

        torch.rand, torch.randn = fake_rand, fake_randn
        return self

    def __exit__(self, *exc):
        torch.rand, torch.randn = self.rand, self.randn


def compare(rm, case: tuple, phase: tuple, seed: int) -> dict[str, float]:
    """One case and phase; the reference is built and run with `dtype` as torch's default (it makes tensors)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(case[6])
    try:
        return _compare(rm, case, phase, seed)
    finally:
        torch.set_default_dtype(default)


def _compare(rm, case: tuple, phase: tuple, seed: int) -> dict[str, float]:
    name, size, sprites, layers, ssize, batch, dtype, perturbed = case
    label, epoch, offset, train = phase
    torch.manual_seed(seed)
    ref = rm.DTISprites(
        img_size=(size, size), n_ch=3, mean_bg=torch.rand(1, 3, size, size), **ref_kwargs(sprites, layers, ssize)
    ).to(dtype)  # its prototypes are made float32 whatever the default dtype
    groups = ref.param_groups()
    listed = sum(len(list(g["params"])) for g in groups)
    unique = len({id(p) for g in groups for p in g["params"]})
    sd = ref.state_dict()
    if perturbed:
        perturb(sd, seed + 7)
        ref.load_state_dict(sd)
    torch.set_default_dtype(torch.float32)  # ours is built in float32 then cast (its constants follow the input)
    ours = dti_sprites.build({"n_sprites": sprites, "n_layers": layers, "image_size": size, "sprite_size": ssize,
                              "steps_per_epoch": SPE})  # fmt: skip
    ours = ours.to(dtype)  # before loading: the reference's float64 weights must not round through float32
    mapped = {}
    for k, v in sd.items():
        o = ours_name(k)
        if o is not None:
            if o in mapped:
                assert torch.equal(mapped[o], v), k  # the shared encoder appears under several names
            mapped[o] = v
    for b in ("prop_sum", "prop_count"):
        mapped[b] = ours.state_dict()[b]
    mapped["bkg_from_data"] = torch.tensor(True)
    ours.load_state_dict(mapped, strict=True)
    torch.set_default_dtype(dtype)
    n_ref = sum(p.numel() for p in ref.parameters())
    assert n_ref == sum(p.numel() for p in ours.parameters())
    # the reference's schedules: one model.step() per epoch (eval: a fresh model, transformations forced on)
    if epoch is None:
        for t in [*ref.sprite_transformers, ref.layer_transformer, ref.bkg_transformer]:
            t.activate_all()
        step = None
    else:
        for _ in range(epoch):
            ref.step()
        step = epoch * SPE + offset
    ref.train(train)
    ours.train(train)

    x = common.discs(batch, size, seed).to(dtype)
    g_ours = torch.Generator().manual_seed(seed + 1)
    g_ref = torch.Generator().manual_seed(seed + 1)
    check = train and step % 250 == 0
    with Noise(g_ref, ref.prototype_params.shape[1:]):
        t0 = time.perf_counter()
        r = ref(x)
        t_ref = time.perf_counter() - t0
        if check:  # LitDTI.training_step + check_cluster (meters fresh: their average is this step's value)
            prop = (1 - r["distance"]).mean(0).detach()
            k = int(torch.randint(0, layers, (1,), generator=g_ref))
            ref.reassign_empty_clusters(prop.float().view(layers, sprites + 1)[k])
    t0 = time.perf_counter()
    o = ours(x, g_ours, step)
    t_ours = time.perf_counter() - t0

    out = {
        **common.mask_canvas_gaps(r, o),
        "loss (rel)": common.rel(r["loss"].item(), o.loss.item()),
    }
    ours_params = dict(ours.named_parameters())
    if check:
        out["restarted params"] = max(
            (p.detach() - ours_params[ours_name(k)].detach()).abs().max().item()
            for k, p in ref.named_parameters() if ours_name(k) and p.numel()
        )  # fmt: skip
        out["reassigned (count)"] = o.terms.get("reassigned", 0.0)
    if train:
        ref_err = None
        try:
            r["loss"].backward()
        except RuntimeError as e:  # report, compare what can be compared
            ref_err = str(e).split("\n")[0][:110]
        o.loss.backward()
        if ref_err:
            print(f"    reference backward raised: {ref_err}")
            out["grad (rel to max |grad|)"] = float("nan")
        else:
            pairs = []
            for k, p in ref.named_parameters():
                if ours_name(k) and p.numel():
                    q = ours_params[ours_name(k)]
                    pairs.append((torch.zeros_like(p) if p.grad is None else p.grad,
                                  torch.zeros_like(q) if q.grad is None else q.grad))  # fmt: skip
            scale = max(a.abs().max().item() for a, _ in pairs)
            out["grad (rel to max |grad|)"] = max((a - b).abs().max().item() for a, b in pairs) / max(scale, 1e-30)
    print(f"{name} {str(dtype)[6:]} {label}: {batch}x3x{size}x{size}, {sprites}+1 sprites, {layers} layers, "
          f"{n_ref:,} params (reference param_groups list {listed} tensors, {unique} distinct), loss "
          f"{o.loss.item():.5f}, reference {t_ref:.1f} s, ours {t_ours:.1f} s")  # fmt: skip
    common.print_figures(out)
    return out


def main() -> int:
    args = common.parse_args(
        __doc__,
        extra=((("--kornia",), {"default": None, "help": "folder with kornia (0.5.5) to put first on sys.path"}),),
        quick="small sizes (64x64, 4 sprites, 3 layers)",
    )
    if args.kornia:
        sys.path.insert(0, args.kornia)
    import scipy.signal
    import scipy.signal.windows

    if not hasattr(scipy.signal, "gaussian"):
        scipy.signal.gaussian = scipy.signal.windows.gaussian
    bad = []
    with tempfile.TemporaryDirectory() as tmp:
        rm = common.reference_module(
            args.reference, Path(tmp), {f"{DIR}/{f}": f"refdti/{f}" for f in FILES}, "refdti.model"
        )
        for case in QUICK if args.quick else FULL:
            for phase in PHASES:
                res = compare(rm, case, phase, seed=args.seed)
                tol = {"masks": TOL, "canvas": TOL, "restarted params": TOL, "grad (rel to max |grad|)": TOL_GRAD}
                bad += [f"{case[0]} {str(case[6])[6:]} {phase[0]}: {k}" for k, v in res.items()
                        if k != "reassigned (count)" and not v <= tol.get(k, TOL_REL) and not np.isnan(v)]  # fmt: skip
    return common.report(bad, f"OK: masks/canvas/params <= {TOL}, loss <= {TOL_REL} relative, gradients <= {TOL_GRAD}")


if __name__ == "__main__":
    sys.exit(main())
