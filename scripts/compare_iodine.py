#!/usr/bin/env python
"""Run the ClevrTex reference IODINE and images/iodine/iodine.py on identical weights, images and noise.

    python scripts/compare_iodine.py [--reference PATH] [--seed 0] [--threads 2] [--quick]

PATH: a checkout or a bare git directory of karazijal/clevrtex; not given, it is cloned at fe982ab into a temporary
folder (needs git and the network). Its `ool/picture/models/iodine.py` is copied into a temporary package and
imported unedited (it needs torch and scipy, nothing to shim).

For each case the reference `IODINE(batch_size, input_size, z_size, K, inference_iters, log_scale, kl_beta, lstm_dim,
conv_channels)` is built under a fixed seed with experiments/iodine.py's ClevrTex arguments (sigma 0.1, kl_beta 1,
LSTM 256, 64 channels) and the case's slots / z / iterations / image size / batch (the reference fixes the batch),
its weights perturbed or not; its state dict is loaded into ours through a name map (its `gmm_log_scale` buffer has
no counterpart: ours holds sigma as a float). The noise is fixed identically: the reference's `Normal.rsample` draws
through `torch.distributions.normal._standard_normal`, which is replaced by `torch.randn(shape, generator=g)` on a
generator seeded as the one passed to ours (both draw one (B*K, z) tensor per iteration). In float64 the reference is
built and run with float64 as torch's default dtype, its h_0 / c_0 (plain attributes) converted and its log-scale
buffer rebuilt from math.log(0.1) (a float32 buffer converted would differ by float32's rounding of log 0.1).

Modes: `train` (train(): masks, canvas, loss / NLL / KL, every parameter's gradient of the loss), `eval` (eval(),
both called under torch.no_grad(): the reference turns grad on globally itself, ours locally), both with
`reference_image_tiling` true (the reference's x.repeat(K).view(B, K) tiling), and `per-image` (ours with
`reference_image_tiling` false on the batch vs the reference at batch 1 run image by image, each on its rows of the
same noise: masks, canvas, loss = the mean of the per-image losses, gradients = the mean of the per-image
gradients). In `per-image` every LayerNorm's eps is set to 0 in both models: the refinement's LayerNorms see the
gradients of the batch-mean loss, 1/B of one image's, and eps 1e-5 would weigh differently (~1e-4 in the masks,
float32 and float64 alike; ~1e-15 in float64 with eps 0). Exit status 1 when one exceeds the tolerance.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import objseg_reference as common
import torch

iodine = common.our_module("iodine")

FILE = "ool/picture/models/iodine.py"
# (name, image size, slots, z, iterations, batch, weights, dtype). "init": the reference's initialisation, whose decoder
# (xavier gain 0.02) makes the masks 1/K to float32 precision; "perturbed": every weight + N(0, 1/fan_in), every
# vector + N(0, 0.1^2), so that masks and canvas depend on the slots
CASES = (
    ("clevrtex 128", 128, 11, 128, 5, 2, "init", torch.float32),
    ("clevrtex 128", 128, 11, 128, 5, 2, "perturbed", torch.float32),
    ("clevrtex 128", 128, 11, 128, 5, 2, "perturbed", torch.float64),
    ("small 32", 32, 4, 16, 3, 3, "perturbed", torch.float32),
)
QUICK = (
    ("default 48", 48, 11, 128, 5, 2, "init", torch.float32),
    ("default 48", 48, 11, 128, 5, 2, "perturbed", torch.float32),
    ("default 48", 48, 11, 128, 5, 2, "perturbed", torch.float64),
    ("small 32", 32, 4, 16, 3, 3, "perturbed", torch.float32),
)
MODES = ("train", "eval", "per-image")
RENAME = (
    ("lamda_0", "lambda_0"),
    ("image_decoder.decode.", "decoder."),
    ("refine_net.conv.10.", "refine_fc."),
    ("refine_net.conv.", "refine_conv."),
    ("refine_net.lstm.", "refine_lstm."),
    ("refine_net.ref_head.", "refine_head."),
    ("layer_norms.0.", "norm_log_p."),
    ("layer_norms.1.", "norm_loo."),
    ("layer_norms.2.", "norm_d_means."),
    ("layer_norms.3.", "norm_d_masks."),
    ("layer_norms.4.", "norm_d_mu."),
    ("layer_norms.5.", "norm_d_sp."),
)


def to_ours(ref_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference-named tensors (weights or their gradients) -> ours (nn.LSTM's `_l0` suffixes dropped)."""
    out = {}
    for k, v in ref_tensors.items():
        if k == "gmm_log_scale":
            continue
        for old, new in RENAME:
            if k.startswith(old):
                out[new + k[len(old) :].removesuffix("_l0")] = v
                break
        else:
            raise KeyError(f"unmapped reference tensor {k}")
    return out


@contextlib.contextmanager
def noise(draw):
    """Route torch.distributions' standard-normal draws (Normal.rsample) through `draw(shape, dtype)`."""
    normal_mod = importlib.import_module("torch.distributions.normal")
    original = normal_mod._standard_normal
    normal_mod._standard_normal = lambda shape, dtype, device: draw(shape, dtype)
    try:
        yield
    finally:
        normal_mod._standard_normal = original


def reference_model(ref_mod, size, slots, z, iters, batch, weights, dtype, seed):
    with common.default_dtype(dtype):
        torch.manual_seed(seed)
        ref = ref_mod.IODINE(batch_size=batch, input_size=(3, size, size), z_size=z, K=slots, inference_iters=iters,
                             log_scale=math.log(0.1), kl_beta=1, lstm_dim=256, conv_channels=64)  # fmt: skip
    if weights == "perturbed":
        common.perturb_fan_in(ref, seed + 2)
    ref = ref.to(dtype)
    ref.h_0, ref.c_0 = ref.h_0.to(dtype), ref.c_0.to(dtype)
    ref.gmm_log_scale = (math.log(0.1) * torch.ones(slots, dtype=dtype)).view(1, slots, 1, 1, 1)
    return ref


def grads_of(module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in module.named_parameters()}


def run_reference(ref, x, draw, train):
    ref.train(train)
    with noise(draw), common.default_dtype(x.dtype), contextlib.nullcontext() if train else torch.no_grad():
        r = ref(x)
        if train:
            ref.zero_grad()
            r["loss"].backward()
    torch.set_grad_enabled(True)  # its forward calls torch.set_grad_enabled(True); no_grad's exit restores
    return r


def compare(ref_mod, name, size, slots, z, iters, batch, weights, dtype, mode, seed) -> dict[str, float]:
    per_image = mode == "per-image"
    ref = reference_model(ref_mod, size, slots, z, iters, 1 if per_image else batch, weights, dtype, seed)
    ours = iodine.build({"slots": slots, "z_dim": z, "inference_iters": iters, "image_size": size,
                         "reference_image_tiling": not per_image}).to(dtype)  # fmt: skip
    ours.load_state_dict(to_ours(ref.state_dict()), strict=True)
    if per_image:  # the refinement's LayerNorms see gradients of the batch mean (1/B of one image's): eps 0 in both
        for m in (*ref.modules(), *ours.modules()):
            if isinstance(m, torch.nn.LayerNorm):
                m.eps = 0.0
    n_ref = sum(p.numel() for p in ref.parameters())
    assert n_ref == sum(p.numel() for p in ours.parameters())
    train = mode != "eval"
    x = common.discs(batch, size, seed).to(dtype)

    t0 = time.perf_counter()
    if per_image:  # ours' noise, replayed: one (B*K, z) draw per iteration; image i takes rows i*K .. i*K + K - 1
        g = torch.Generator().manual_seed(seed + 1)
        eps = [torch.randn((batch * slots, z), generator=g, dtype=dtype) for _ in range(iters)]
        rs, grads = [], []
        for i in range(batch):
            rows = iter([e[i * slots : (i + 1) * slots] for e in eps])
            rs.append(run_reference(ref, x[i : i + 1], lambda shape, dt, rows=rows: next(rows), train))
            grads.append(grads_of(ref))
        r = {k: torch.stack([q[k] for q in rs]).mean() for k in ("loss", "recon_loss", "kl")}
        r |= {
            "canvas": torch.cat([q["canvas"] for q in rs]),
            "layers": {"mask": torch.cat([q["layers"]["mask"] for q in rs])},
        }
        ref_grads = {k: torch.stack([gr[k] for gr in grads]).mean(0) for k in grads[0]}
    else:
        g_ref = torch.Generator().manual_seed(seed + 1)
        r = run_reference(ref, x, lambda shape, dt: torch.randn(shape, generator=g_ref, dtype=dt), train)
        ref_grads = grads_of(ref) if train else None
    t1 = time.perf_counter()
    ours.train(train)
    with contextlib.nullcontext() if train else torch.no_grad():
        o = ours(x, torch.Generator().manual_seed(seed + 1), step=None)
    if train:
        o.loss.backward()
    t2 = time.perf_counter()
    assert torch.is_grad_enabled()

    out = {
        **common.mask_canvas_gaps(r, o),
    }
    for key, ours_v in (("loss", o.loss.item()), ("recon_loss", o.terms["nll"]), ("kl", o.terms["kl"])):
        ref_v = r[key].item()
        out[f"{key} (rel)"] = common.rel(ref_v, ours_v)
        out[f"{key} (abs, {ref_v:.6g})"] = abs(ref_v - ours_v)
    if train:
        g_ref = to_ours(ref_grads)
        ours_params = dict(ours.named_parameters())
        scale = max(g.abs().max().item() for g in g_ref.values())
        worst = max(g_ref, key=lambda k: (g_ref[k] - ours_params[k].grad).abs().max().item())
        out["grad (rel to max |grad|)"] = (g_ref[worst] - ours_params[worst].grad).abs().max().item() / scale
        out[f"grad worst ({worst})"] = out["grad (rel to max |grad|)"]
    print(f"{name} {weights} {str(dtype)[6:]} {mode}: {batch}x3x{size}x{size}, {slots} slots, z {z}, {iters} iters, "
          f"{n_ref:,} params, loss {o.loss.item():.7g}, masks in [{o.masks.min().item():.3g}, "
          f"{o.masks.max().item():.3g}] ({t1 - t0:.1f} s reference, {t2 - t1:.1f} s ours)")  # fmt: skip
    for k, v in out.items():
        if not k.startswith("grad worst"):
            print(f"  {k:34s} {v:.3g}")
    print(f"  {'(largest in ' + worst + ')' if train else '':34s}", flush=True)
    return {k: v for k, v in out.items() if not k.startswith("grad worst")}


def main() -> int:
    args = common.parse_args(__doc__, quick="the default architecture at 48x48, and a small one")
    warnings.filterwarnings("ignore", message="torch.meshgrid")  # the reference's meshgrid without `indexing`
    bad = []
    with tempfile.TemporaryDirectory(prefix="compare_iodine_") as tmp:
        ref_mod = common.reference_module(args.reference, Path(tmp), {FILE: "refiodine/iodine.py"}, "refiodine.iodine")
        for case in QUICK if args.quick else CASES:
            for mode in MODES:
                res = compare(ref_mod, *case, mode=mode, seed=args.seed)
                bad += common.past_dtype_tolerance(f"{case[0]} {case[6]} {str(case[-1])[6:]} {mode}", res, case[-1])
    return common.report(bad)


if __name__ == "__main__":
    sys.exit(main())
