#!/usr/bin/env python
"""Run the ClevrTex reference MONet and images/monet/monet.py on identical weights, images and noise.

    python scripts/compare_monet.py [--reference PATH] [--seed 0] [--threads 2]

PATH: a checkout or a bare git directory of karazijal/clevrtex; not given, it is cloned at fe982ab into a temporary
folder (needs git and the network). Its `ool/picture/models/monet.py` and `ool_base.py` are copied into a temporary
package and imported unedited. Two shims, in this process only: `ipdb` (imported at the top of monet.py, unused) is
an empty module, and `numpy.product` and `numpy.object` (removed in numpy 2) are `numpy.prod` and `object`.

For each case the reference `MONet(n_slots, numb, shape, z_dim, bg_scl, fg_scl)` is built under a fixed seed, its
state dict is loaded into ours through a name map (its prior buffers have no counterpart), and both run on the same
disc images. The noise is fixed identically: the reference's `Normal.rsample` draws through
`torch.distributions.normal._standard_normal`, which is replaced by `torch.randn(shape, generator=g)` on a generator
seeded as the one passed to ours (ours draws one (B, z) tensor per slot in slot order, as the reference). Compared:
`layers.mask` vs masks, `canvas`, the loss and its three terms, and every parameter's gradient of the loss, as max
|reference - ours| (the loss terms relative). Exit status 1 when one exceeds the tolerance.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import objseg_reference as common
import torch

monet = common.our_module("monet")

FILES = ("ool/picture/models/monet.py", "ool/picture/models/ool_base.py")
TOL, TOL_REL, TOL_GRAD = 1e-4, 1e-5, 1e-3  # masks/canvas absolute; loss terms relative; gradients rel. to max |grad|
# (name, image size, slots, U-Net blocks, batch, dtype): the ClevrTex settings, and a small odd size (padding in the
# U-Net); float64 shows that the float32 gradient differences are rounding (sums over 11 x 128^2 pixels, loss ~1e5)
CASES = (
    ("clevrtex 128", 128, 11, 6, 2, torch.float32),
    ("clevrtex 128", 128, 11, 6, 2, torch.float64),
    ("odd 36", 36, 5, 5, 3, torch.float32),
)


def name_map(ref_model, ours: monet.MONet) -> dict[str, str]:
    """reference parameter name -> ours."""
    out = {}
    for i in range(len(ref_model.att.downblocks)):
        out |= {f"att.downblocks.{i}.conv.weight": f"attention.down.{i}.0.weight"}
        out |= {f"att.downblocks.{i}.norm.{p}": f"attention.down.{i}.1.{p}" for p in ("weight", "bias")}
    for i in range(len(ref_model.att.upblocks)):
        out |= {f"att.upblocks.{i}.conv.weight": f"attention.up.{i}.0.weight"}
        out |= {f"att.upblocks.{i}.norm.{p}": f"attention.up.{i}.1.{p}" for p in ("weight", "bias")}
    for p in ("weight", "bias"):
        out |= {f"att.mlp.{r}.{p}": f"attention.mlp.{o}.{p}" for r, o in ((1, 0), (3, 2), (5, 4))}
        out[f"att.output.{p}"] = f"attention.head.{p}"
        out |= {f"enc.{r}.{p}": f"encoder.conv.{r}.{p}" for r in (0, 2, 4, 6)}
        out |= {f"enc.{r}.{p}": f"encoder.mlp.{o}.{p}" for r, o in ((9, 0), (11, 2))}
        out |= {f"dec.{r}.{p}": f"decoder.net.{r}.{p}" for r in (0, 2, 4, 6, 8)}
    return out


def compare(
    ref_mod, name: str, size: int, slots: int, blocks: int, batch: int, dtype: torch.dtype, seed: int
) -> dict[str, float]:
    torch.manual_seed(seed)
    ref = ref_mod.MONet(n_slots=slots, numb=blocks, shape=(3, size, size), z_dim=16, bg_scl=0.09, fg_scl=0.15)
    ours = monet.build({"slots": slots, "unet_blocks": blocks, "image_size": size})
    sd = ref.state_dict()
    names = name_map(ref, ours)
    extra = {k for k in sd if k not in names and not k.startswith("_z_")}
    assert not extra, f"unmapped reference tensors: {sorted(extra)}"
    ours.load_state_dict({names[k]: v for k, v in sd.items() if k in names}, strict=True)
    ref, ours = ref.to(dtype), ours.to(dtype)
    n_ref = sum(p.numel() for p in ref.parameters())
    assert n_ref == sum(p.numel() for p in ours.parameters())

    x = common.discs(batch, size, seed).to(dtype)
    with common.reference_noise(torch.Generator().manual_seed(seed + 1)):
        r = ref(x)
    o = ours(x, torch.Generator().manual_seed(seed + 1), step=0)
    r["loss"].backward()
    o.loss.backward()
    ours_params = dict(ours.named_parameters())
    grad = max((p.grad - ours_params[names[k]].grad).abs().max().item() for k, p in ref.named_parameters())
    grad_scale = max(p.grad.abs().max().item() for p in ref.parameters())

    out = {
        **common.mask_canvas_gaps(r, o),
        "loss (rel)": common.rel(r["loss"].item(), o.loss.item()),
        "nll (rel)": common.rel(r["rec_loss"].item(), o.terms["nll"]),
        "kl (rel)": common.rel(r["kl"].item() / 0.5, o.terms["kl"]),  # the reference logs beta * KL
        "kl_mask (rel)": common.rel(r["kl_mask"].item() / 0.5, o.terms["kl_mask"]),  # and gamma * mask KL
        "grad (rel to max |grad|)": grad / grad_scale,
    }
    print(f"{name} {str(dtype)[6:]}: {batch}x3x{size}x{size}, {slots} slots, {blocks} blocks, {n_ref:,} params, "
          f"loss {o.loss.item():.2f}")  # fmt: skip
    common.print_figures(out)
    return out


def main() -> int:
    args = common.parse_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        common.stub_module("ipdb")
        common.shim_numpy()
        files = {f: f"refmonet/{Path(f).name}" for f in FILES}
        ref_mod = common.reference_module(args.reference, Path(tmp), files, "refmonet.monet")
        bad = []
        for case in CASES:
            res = compare(ref_mod, *case, seed=args.seed)
            tol = {"masks": TOL, "canvas": TOL, "grad (rel to max |grad|)": TOL_GRAD}
            bad += [f"{case[0]}: {k}" for k, v in res.items() if v > tol.get(k, TOL_REL)]
    return common.report(bad, f"OK: masks/canvas <= {TOL}, loss terms <= {TOL_REL}, gradients <= {TOL_GRAD}")


if __name__ == "__main__":
    sys.exit(main())
