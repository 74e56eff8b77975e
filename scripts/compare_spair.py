#!/usr/bin/env python
"""Run the ClevrTex reference SPAIR and images/spair/spair.py on identical weights, images and noise.

    python scripts/compare_spair.py [--reference PATH] [--seed 0] [--threads 2] [--quick]

PATH: a checkout or a bare git directory of karazijal/clevrtex; not given, it is cloned at fe982ab into a temporary
folder (needs git and the network). Its `ool/picture/models/spair.py`, `ool_base.py` and the three components they
import (`stn.py`, `mlp.py`, `broadcast_vae.py`) are copied into a temporary `ool` package with their own paths and
imported unedited. Shims, in this process only: `numpy.object` and `numpy.product` (removed from numpy) are `object`
and `numpy.prod`.

For each case the reference `SPAIR(...)` is built under a fixed seed with experiments/spair.py's ClevrTex arguments
(large backbone, patch 24, anchor 48, what 64, bg 4, passf 100, pres_kl 'original', rein False) and the values its
trainer schedules set as it would at that step (pres_dist_name 'relaxedbernoulli-bern_kl', temperature 1, betas 2.7,
z_pres_prior_p and output_hparam from the two itr_lin schedules). Its state dict is loaded into ours through a name
map (its constant buffers have no counterpart). Noise: the reference's `Normal.rsample` draws through
`torch.distributions.normal._standard_normal` and `RelaxedBernoulli.rsample` through `torch.rand`; both are replaced by
draws from a generator seeded as the one passed to ours, which draws in the same order. Compared: out['steps']['mask']
(what the ClevrTex evaluator reads) vs masks, canvas, and in training the loss, its terms and every parameter's
gradient; as max |reference - ours| (loss terms relative, gradients relative to the largest). Negative control:
ours with another seed must move the masks past the tolerance. "perturbed": every
weight moved by 0.3 of its tensor's std (the initial presence probabilities are all near 0.5). float64: the
reference built and run under float64 default dtype. Exit status 1 when one exceeds the tolerance.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import objseg_reference as common
import torch

spair = common.our_module("spair")

FILES = (
    "ool/picture/models/spair.py",
    "ool/picture/models/ool_base.py",
    "ool/picture/components/stn.py",
    "ool/picture/components/mlp.py",
    "ool/picture/components/broadcast_vae.py",
)
TOL = {  # float32; float64 is held to 1e-9 everywhere
    "masks": 1e-4,
    "canvas": 1e-4,
    "grad (rel to max |grad|)": 1e-3,
}
TOL_REL = 1e-5
TOL64 = 1e-9


def tolerance(figure: str, dtype: torch.dtype) -> float:
    """The count exactly; in float64 TOL64; else TOL, TOL_REL for a relative figure (0 for any other)."""
    if figure == "count":
        return 0.0
    return TOL64 if dtype == torch.float64 else TOL.get(figure, TOL_REL if "(rel)" in figure else 0.0)


# (name, image size, batch, mode, step, weights, dtype); step None = evaluation with the schedules' final values
CASES = (
    ("train@0 init", 128, 2, "train", 0, "init", torch.float32),
    ("train@30000", 128, 2, "train", 30000, "perturbed", torch.float32),
    ("train@30000", 128, 2, "train", 30000, "perturbed", torch.float64),
    ("eval", 128, 2, "eval", None, "perturbed", torch.float32),
    ("eval", 128, 2, "eval", None, "perturbed", torch.float64),
    ("train@60000 96", 96, 3, "train", 60000, "perturbed", torch.float32),
)
QUICK = (
    ("train@30000 64", 64, 2, "train", 30000, "perturbed", torch.float32),
    ("train@30000 64", 64, 2, "train", 30000, "perturbed", torch.float64),
    ("eval 64", 64, 2, "eval", None, "perturbed", torch.float32),
)


def name_map(sd: dict) -> dict[str, str]:
    """reference parameter name -> ours (constant buffers left out)."""
    prefix = {"box_enc.": "where_net.", "dep_enc.": "depth_net.", "pre_enc.": "pres_net.", "obj_enc.": "what_enc.",
              "_obj_dec.": "what_dec.", "bg_enc.": "bg_enc.", "bg_dec.": "bg_dec.", "backbone.": "backbone.",
              "baseline.layers.0.": "baseline."}  # fmt: skip
    out = {"empty_element": "empty"}
    for k in sd:
        for a, b in prefix.items():
            if k.startswith(a):
                out[k] = b + k[len(a) :]
                break
    return out


def compare(
    ref_mod, name: str, size: int, batch: int, mode: str, step, weights: str, dtype: torch.dtype, seed: int
) -> dict[str, float]:
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(seed)
        ref = ref_mod.SPAIR(patch_size=(3, 24, 24), anchor=48, pres_kl="original", passf=100, what_dim=64, bg_dim=4,
                            rein=False, factor_loss=False, context_grid_size=1, large=True, std=0.5)  # fmt: skip
        ours = spair.build({"image_size": size})
        if weights == "perturbed":
            common.perturb_by_std(ref, seed + 7)
        sd = ref.state_dict()
        names = name_map(sd)
        extra = {k for k in sd if k not in names and k not in ("max_zw", "min_zw") and not k.startswith("_z_")}
        assert not extra, f"unmapped reference tensors: {sorted(extra)}"
        ours.load_state_dict({names[k]: v for k, v in sd.items() if k in names}, strict=True)
        ours = ours.to(dtype)
        n_ref = sum(p.numel() for p in ref.parameters())
        assert n_ref == sum(p.numel() for p in ours.parameters())
        # what the reference trainer sets before a training step (eval: a checkpoint trained past the schedules)
        ref.pres_dist_name = "relaxedbernoulli-bern_kl"
        ref.z_pres_temperature = 1.0
        for k in ("beta_pres", "beta_where", "beta_depth", "beta_what"):
            setattr(ref, k, 2.7)
        ref.z_pres_prior_p = spair.schedule(spair.DEFAULTS["prior"], step)
        ref.output_hparam = spair.schedule(spair.DEFAULTS["std"], step)
        ref.train(mode == "train")
        ours.train(mode == "train")

        x = common.discs(batch, size, seed).to(dtype)
        with (
            common.reference_noise(torch.Generator().manual_seed(seed + 1), rand=True),
            torch.set_grad_enabled(mode == "train"),
        ):
            r = ref(x)
        o, other = common.ours_and_control(ours, x, seed, step, mode == "train")  # other: another seed's masks
    finally:
        torch.set_default_dtype(default)

    k = r["steps"]["mask"].shape[1]
    out = {
        **common.mask_canvas_gaps(r, o, "steps"),
        "count": abs(r["counts"].mean().item() - o.terms["count"]),
    }
    control = (r["steps"]["mask"][:, :, 0] - other).abs().max().item()
    if mode == "train":
        r["loss"].backward()
        o.loss.backward()
        out |= {
            "loss (rel)": common.rel(r["loss"].item(), o.terms["loss"]),
            "rec (rel)": common.rel(r["rec_loss"].item(), o.terms["rec"]),
            "kl (rel)": common.rel(r["kl"].item() * k, o.terms["kl"]),  # the reference's is a mean over cells too
            "kl_bg (rel)": common.rel(r["steps"].kl_bg.mean().item(), o.terms["kl_bg"]),
        }
        out |= {
            f"{t} (rel)": common.rel(r[t].item(), o.terms[t]) for t in ("kl_where", "kl_what", "kl_depth", "kl_pres")
        }
        out["grad (rel to max |grad|)"] = common.grad_gap(ref, ours, names)  # gradient-less: the REINFORCE baseline
    loss = f"loss {o.loss.item():.2f}" if mode == "train" else "no reference loss at eval"
    print(f"{name} {str(dtype)[6:]}: {batch}x3x{size}x{size}, {k} cells, {weights} weights, {n_ref:,} params, "
          f"p {spair.schedule(spair.DEFAULTS['prior'], step):.4g}, std {spair.schedule(spair.DEFAULTS['std'], step):.4g}, "
          f"present {o.terms['count']:.2f}, {loss}")  # fmt: skip
    common.print_figures(out, control=control)
    if not control > TOL["masks"]:
        out["control: another seed moves the masks"] = float("inf")
    return out


def main() -> int:
    args = common.parse_args(__doc__, quick="64x64 (2x2 cells) only")
    with tempfile.TemporaryDirectory() as tmp:
        common.shim_numpy()
        ref_mod = common.reference_module(
            args.reference, Path(tmp) / "src", {f: f for f in FILES}, "ool.picture.models.spair"
        )
        bad = []
        for case in QUICK if args.quick else CASES:
            res = compare(ref_mod, *case, seed=args.seed)
            bad += common.past_tolerance(f"{case[0]} {str(case[-1])[6:]}", res, lambda k, dt=case[-1]: tolerance(k, dt))
    return common.report(bad)


if __name__ == "__main__":
    sys.exit(main())
