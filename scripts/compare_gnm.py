#!/usr/bin/env python
"""Run the ClevrTex reference GNM and images/gnm/gnm.py on identical weights, images and noise.

    python scripts/compare_gnm.py [--reference PATH] [--seed 0] [--threads 2] [--quick]

PATH: a checkout or a bare git directory of karazijal/clevrtex; not given, it is cloned at fe982ab into a temporary
folder (needs git and the network). Its `ool/picture/models/thirdparty/gnm/model.py` (GPLv3) is copied into a
temporary `ool` package at run time and imported unedited (nothing of it is kept or committed). Shim, in this process
only: the `prodict` package it imports (not installed) is a small dict with attribute access written here.

For each case the reference `GNM(args)` is built under a fixed seed from its module's `arrow_args` as
experiments/gnm.py sets them (z_what 64, z_bg 10) with the README's ClevrTex `--std 0.5`; it anneals its own schedules
from the global step passed to forward (evaluation: step 300000, a checkpoint at the end of the paper's run; ours gets
step None). Its state dict is loaded into ours through a name map (its constant buffers have no counterpart). Noise:
its `Normal.rsample` draws through `torch.distributions.normal._standard_normal` and `RelaxedBernoulli.rsample`
through `torch.rand`; both are replaced by draws from a generator seeded as the one passed to ours, which draws in
the same order (the reference's later logging-only draws come after every draw that matters). Compared:
out['steps']['mask'] (what the ClevrTex evaluator reads) vs masks, canvas, the presence count and, in training, the
loss, each of its terms and every parameter's gradient; as max |reference - ours| (loss terms relative, gradients
relative to the largest). Negative control: ours with another seed must move the masks past the tolerance.
"perturbed": every weight moved by 0.3 of its tensor's std. float64: the reference built and run under float64
default dtype. Exit status 1 when one exceeds its tolerance.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import warnings
from pathlib import Path

import objseg_reference as common
import torch

gnm = common.our_module("gnm")

FILES = ("ool/picture/models/thirdparty/gnm/model.py",)
PRODICT = '''class Prodict(dict):
    """A dict with attribute access (stands in for the prodict package in this comparison only)."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as e:
            raise AttributeError(k) from e

    def __setattr__(self, k, v):
        self[k] = v

    @classmethod
    def from_dict(cls, d):
        return cls({k: cls.from_dict(v) if isinstance(v, dict) else v for k, v in d.items()})
'''
TOL = {"masks": 1e-4, "canvas": 1e-4, "grad (rel to max |grad|)": 1e-3}
TOL_REL = 1e-5
TOL64 = 1e-9


def tolerance(figure: str, dtype: torch.dtype) -> float:
    """The count exactly; in float64 TOL64; else TOL, TOL_REL for a relative figure (0 for any other)."""
    if figure == "count":
        return 0.0
    return TOL64 if dtype == torch.float64 else TOL.get(figure, TOL_REL if "(rel)" in figure else 0.0)


EVAL_STEP = 300000  # the paper run's last step: every schedule at its end value
# (name, batch, mode, step, weights, dtype); step None = evaluation
CASES = (
    ("train@0 init", 2, "train", 0, "init", torch.float32),
    ("train@250 (curriculum)", 2, "train", 250, "perturbed", torch.float32),
    ("train@2000", 2, "train", 2000, "perturbed", torch.float32),
    ("train@30000", 2, "train", 30000, "perturbed", torch.float32),
    ("train@30000", 2, "train", 30000, "perturbed", torch.float64),
    ("eval", 2, "eval", None, "perturbed", torch.float32),
    ("eval", 2, "eval", None, "perturbed", torch.float64),
)
QUICK = (
    ("train@250 (curriculum)", 1, "train", 250, "perturbed", torch.float32),
    ("eval", 1, "eval", None, "perturbed", torch.float64),
)
PREFIX = {
    "img_encoder.conv.": "encoder.",
    "global_struct_draw.p_global_decoder_net.mlp.": "draw.global_dec.",
    "global_struct_draw.rnn_enc.": "draw.rnn_enc.",
    "global_struct_draw.rnn_dec.": "draw.rnn_dec.",
    "global_struct_draw.p_global_net.mlp.": "draw.p_global.",
    "global_struct_draw.q_global_net.mlp.": "draw.q_global.",
    "global_struct_draw.hid_to_dec_net.conv.": "draw.hid_to_dec.",
    "p_z_given_x_or_g_net.pwdw_net.conv.": "local.net.",
    "p_z_given_x_or_g_net.q_depth_net.": "local.depth.",
    "p_z_given_x_or_g_net.q_where_net.": "local.where.",
    "p_z_given_x_or_g_net.q_what_net.": "local.what.",
    "p_z_given_x_or_g_net.q_pres_net.": "local.pres.",
    "local_latent_sampler.z_what_decoder_net.conv.": "what_dec.",
    "p_bg_decoder.p_bg_decoder.conv.": "bg_dec.",
    "p_bg_given_g_net.p_bg_generator.mlp.": "bg_prior.",
    "q_bg_given_x_net.p_bg_encoder.mlp.": "bg_enc.",
}
BUFFERS = {"global_struct_draw.dec_step_0", "local_latent_sampler.offset", "background"}
TERMS = {  # ours -> the reference's key
    "loss": "loss", "rec": "rec_loss", "kl": "kl", "kl_pres": "kl_pres", "kl_where": "kl_where",
    "kl_depth": "kl_depth", "kl_what": "kl_what", "kl_bg": "kl_bg", "kl_global": "kl_global",
    "kl_aux_pres": "kl_aux_pres", "kl_aux_where": "kl_aux_where", "kl_aux_depth": "kl_aux_depth",
    "kl_aux_what": "kl_aux_what", "kl_aux_bg": "kl_aux_bg",
}  # fmt: skip


def name_map(sd: dict) -> dict[str, str]:
    """reference parameter name -> ours (constant buffers left out)."""
    out = {}
    for k in sd:
        for a, b in PREFIX.items():
            if k.startswith(a):
                out[k] = b + k[len(a) :]
                break
    return out


def compare(ref_mod, name: str, batch: int, mode: str, step, weights: str, dtype: torch.dtype, seed: int) -> dict:
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(seed)
        args = copy.deepcopy(ref_mod.arrow_args)
        args = ref_mod.hyperparam_anneal(args, 0)  # as experiments/gnm.py
        args.const.likelihood_sigma = 0.5  # the README's ClevrTex --std 0.5
        args.z.z_what_dim = 64
        args.z.z_bg_dim = 10
        ref = ref_mod.GNM(args)
        ours = gnm.build({})
        if weights == "perturbed":
            common.perturb_by_std(ref, seed + 7)
        sd = ref.state_dict()
        names = name_map(sd)
        extra = {k for k in sd if k not in names and k not in BUFFERS and not k.startswith("aux_p_")}
        assert not extra, f"unmapped reference tensors: {sorted(extra)}"
        ours.load_state_dict({names[k]: v for k, v in sd.items() if k in names}, strict=True)
        ours = ours.to(dtype)
        n_ref = sum(p.numel() for p in ref.parameters())
        assert n_ref == sum(p.numel() for p in ours.parameters()), (n_ref, sum(p.numel() for p in ours.parameters()))
        ref.train(mode == "train")
        ours.train(mode == "train")

        x = common.discs(batch, 128, seed).to(dtype)
        with (
            common.reference_noise(torch.Generator().manual_seed(seed + 1), rand=True),
            torch.set_grad_enabled(mode == "train"),
        ):
            r = ref(x, EVAL_STEP if step is None else step)
        o, other = common.ours_and_control(ours, x, seed, step, mode == "train")  # other: another seed's masks
    finally:
        torch.set_default_dtype(default)

    k = r["steps"]["mask"].shape[1]
    out = {
        **common.mask_canvas_gaps(r, o, "steps"),
        "count": abs(r["counts"].mean().item() - o.terms["count"]),
    }
    out |= {f"{t} (rel)": common.rel(r[rk].item(), o.terms[t]) for t, rk in TERMS.items()}
    control = (r["steps"]["mask"][:, :, 0] - other).abs().max().item()
    if mode == "train":
        r["loss"].backward()
        o.loss.backward()
        out["grad (rel to max |grad|)"] = common.grad_gap(ref, ours, names)
    print(f"{name} {str(dtype)[6:]}: {batch}x3x128x128, {k} cells, {weights} weights, {n_ref:,} params, "
          f"step {step}, present {o.terms['count']:.2f}, loss {o.loss.item():.2f}")  # fmt: skip
    common.print_figures(out, control=control)
    if not control > TOL["masks"]:
        out["control: another seed moves the masks"] = float("inf")
    return out


def main() -> int:
    args = common.parse_args(__doc__, quick="two cases at batch 1")
    warnings.filterwarnings("ignore", message=".*(align_corners|indexing argument).*")
    with tempfile.TemporaryDirectory() as tmp:
        # quiet: it pprints its config on import
        ref_mod = common.reference_module(args.reference, Path(tmp) / "src", {f: f for f in FILES},
                                          "ool.picture.models.thirdparty.gnm.model", {"prodict.py": PRODICT}, quiet=True)  # fmt: skip
        bad = []
        for case in QUICK if args.quick else CASES:
            res = compare(ref_mod, *case, seed=args.seed)
            bad += common.past_tolerance(f"{case[0]} {str(case[-1])[6:]}", res, lambda k, dt=case[-1]: tolerance(k, dt))
    return common.report(bad)


if __name__ == "__main__":
    sys.exit(main())
