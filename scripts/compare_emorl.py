#!/usr/bin/env python
"""Run the ClevrTex reference EfficientMORL and images/emorl/emorl.py on identical weights, images and noise.

    python scripts/compare_emorl.py [--reference PATH] [--seed 0] [--threads 2] [--quick]

PATH: a checkout or a bare git directory of karazijal/clevrtex; not given, it is cloned at fe982ab into a temporary
folder (needs git and the network). Its `ool/picture/models/thirdparty/emorl/{model,utils}.py` are copied into a
temporary package of the same dotted path (empty `__init__.py` files above) and imported unedited.

For each case the reference `EfficientMORL(...)` is built under a fixed seed with experiments/effmorl.py's ClevrTex
arguments (Gaussian likelihood, std 0.1, reversed prior++, GECO target -108000, curriculum [(-1,3), (100000,1),
(200000,1)]) and the case's slots / z / image size / batch (the reference fixes the batch), its weights perturbed or not; its state dict is loaded
into ours through a name map (its DualGRU's block weights become two GRUCells). The noise is fixed identically: the
reference's `Normal.rsample` draws through `torch.distributions.normal._standard_normal`, which is replaced by
`torch.randn(shape, generator=g)` on a generator seeded as the one passed to ours (both draw in the same order).
In float64 the reference is built and run with float64 as torch's default dtype (it makes tensors with torch.zeros:
h_0, its first pass's KL accumulator, its position grids) and its log-scale (a float32 FloatTensor) is rebuilt.

Modes: `train@0` (model.train(), step 0: warm-up loss, 3 refinement passes), `train@1000` (the first GECO step:
GECO loss with C_ema 0, then GECO's EMA initialised), `train@150000` (GECO started with
C_ema -5000 and beta 1.3 set in both: GECO loss, 1 refinement pass by the curriculum, then the reference's
`update_geco` vs our in-forward update), `eval` (model.eval(), step None for ours / global step 150000 for the
reference: 3 passes, GECO form). Compared: `layers.mask` vs masks, `canvas` (max |diff|), loss / NLL / KL (relative
and absolute), the refinement deltas, GECO's buffers after the step, and in train modes every parameter's gradient
of the loss (relative to the largest |grad|). Exit status 1 when one exceeds the tolerance.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import objseg_reference as common
import torch

emorl = common.our_module("emorl")

PKG = "ool/picture/models/thirdparty/emorl"
# (name, image size, slots, z, batch, weights, dtype). "init": the reference's initialisation, whose decoder (xavier
# gain 0.02) makes the masks 1/K to float32 precision; "perturbed": every weight + N(0, 1/fan_in), every vector +
# N(0, 0.1^2), so that masks and canvas depend on the slots
CASES = (
    ("clevrtex 128", 128, 11, 64, 2, "init", torch.float32),
    ("clevrtex 128", 128, 11, 64, 2, "perturbed", torch.float32),
    ("clevrtex 128", 128, 11, 64, 2, "perturbed", torch.float64),
    ("small 32", 32, 4, 16, 3, "perturbed", torch.float32),
)
QUICK = (
    ("default 64", 64, 11, 64, 2, "init", torch.float32),
    ("default 64", 64, 11, 64, 2, "perturbed", torch.float32),
    ("default 64", 64, 11, 64, 2, "perturbed", torch.float64),
)
MODES = ("train@0", "train@1000", "train@150000", "eval")
RENAME = (
    ("hvae_networks.init_posterior", "init_posterior"),
    ("hvae_networks.pos_embed_projection.", "encoder_pos."),
    ("hvae_networks.encoder_pt_1.", "encoder."),
    ("hvae_networks.encoder_pt_2.", "encoder_mlp."),
    ("hvae_networks.norm_slots.", "norm_slots."),
    ("hvae_networks.norm_mu_pre_ff.", "norm_mu."),
    ("hvae_networks.norm_softplus_pre_ff.", "norm_sp."),
    ("hvae_networks.to_q.", "to_q."),
    ("hvae_networks.to_k.", "to_k."),
    ("hvae_networks.to_v.", "to_v."),
    ("hvae_networks.mlp_mu.", "mlp_mu."),
    ("hvae_networks.mlp_softplus.", "mlp_sp."),
    ("hvae_networks.image_decoder.decode.", "decoder."),
    ("hvae_networks.image_decoder.pos_embed_projection.", "decoder_pos."),
    ("hvae_networks.indep_prior.z_linear.", "prior."),
    ("hvae_networks.indep_prior.z_mu.", "prior_mu."),
    ("hvae_networks.indep_prior.z_softplus.", "prior_sp."),
    ("refinenet.recurrence.", "refine_gru."),
    ("refinenet.encoding.", "refine_mlp."),
    ("refinenet.loc.", "refine_mu."),
    ("refinenet.softplus.", "refine_sp."),
    ("geco_C_ema", "geco_c_ema"),
    ("geco_beta", "geco_beta"),
)
CELL = "hvae_networks.gru.cell."


def to_ours(ref_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference-named tensors (weights or their gradients) -> ours: renames, and the DualGRU's GRUCell (reset and
    update blocks of both GRUs in weight_ih_1/2, bias_ih; the new-gate blocks in weight_in_1/2, bias_in) -> two
    nn.GRUCell (rows r, z, n)."""
    out = {}
    for k, v in ref_tensors.items():
        if k.startswith(CELL):
            continue
        for old, new in RENAME:
            if k.startswith(old):
                out[new + k[len(old) :].removesuffix("_l0")] = v
                break
        else:
            raise KeyError(f"unmapped reference tensor {k}")
    c = {k[len(CELL) :]: v for k, v in ref_tensors.items() if k.startswith(CELL)}
    h = c["weight_in_1"].shape[0]
    for name, j in (("gru_mu", 1), ("gru_sp", 2)):
        gates, new = slice(2 * h * (j - 1), 2 * h * j), slice(h * (j - 1), h * j)
        out[f"{name}.weight_ih"] = torch.cat([c[f"weight_ih_{j}"], c[f"weight_in_{j}"]])
        out[f"{name}.weight_hh"] = torch.cat([c[f"weight_hh_{j}"], c[f"weight_hn_{j}"]])
        out[f"{name}.bias_ih"] = torch.cat([c["bias_ih"][gates], c["bias_in"][new]])
        out[f"{name}.bias_hh"] = torch.cat([c["bias_hh"][gates], c["bias_hn"][new]])
    return out


def reference_model(ref_mod, size: int, slots: int, z: int, batch: int, weights: str, dtype: torch.dtype, seed: int):
    hp = {"refinement_curriculum": [(-1, 3), (100000, 1), (200000, 1)], "geco_ema_alpha": 0.99,
          "geco_beta_stepsize": 1e-6, "kl_beta_init": 1, "geco_reconstruction_target": -108000, "use_geco": True}  # fmt: skip
    torch.manual_seed(seed)
    ref = ref_mod.EfficientMORL(K=slots, z_size=z, input_size=(3, size, size), batch_size=batch, stochastic_layers=3,
                                log_scale=math.log(0.1), image_likelihood="Gaussian", geco_warm_start=1000,
                                refinement_iters=3, bottom_up_prior=False, reverse_prior_plusplus=True,
                                use_geco=True, training=hp)  # fmt: skip
    if weights == "perturbed":
        common.perturb_fan_in(ref, seed + 2, trainable_only=True)
    ref = ref.to(dtype)
    hv = ref.hvae_networks
    hv.positional_embedding = hv.positional_embedding.to(dtype)
    hv.image_decoder.positional_embedding = hv.image_decoder.positional_embedding.to(dtype)
    # its log-scale is a float32 FloatTensor: rebuilt in `dtype` (else float64 runs differ by float32's log(0.1))
    ref.h_0, ref.gmm_log_scale = ref.h_0.to(dtype), torch.tensor([math.log(0.1)], dtype=dtype)
    return ref


def compare(ref_mod, name, size, slots, z, batch, weights, dtype, mode, seed) -> dict[str, float]:
    with common.default_dtype(dtype):
        ref = reference_model(ref_mod, size, slots, z, batch, weights, dtype, seed)
    ours = emorl.build({"slots": slots, "z_dim": z, "image_size": size}).to(dtype)
    step = None if mode == "eval" else int(mode.split("@")[1])
    running = mode in ("train@150000", "eval")
    if running:  # GECO already running
        ref.geco_C_ema.data.fill_(-5000.0)
        ref.geco_beta.data.fill_(1.3)
    missing, unexpected = ours.load_state_dict(to_ours(ref.state_dict()), strict=False)
    assert missing == ["geco_started"] and not unexpected, (missing, unexpected)
    ours.geco_started.fill_(running)
    n_ref = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert n_ref == sum(p.numel() for p in ours.parameters())
    ref.train(mode != "eval")
    ours.train(mode != "eval")

    x = common.discs(batch, size, seed).to(dtype)
    t0 = time.perf_counter()
    with common.reference_noise(torch.Generator().manual_seed(seed + 1)), common.default_dtype(dtype):
        r = ref(x, 150000 if step is None else step)
    t1 = time.perf_counter()
    o = ours(x, torch.Generator().manual_seed(seed + 1), step=step)
    t2 = time.perf_counter()
    out = {
        **common.mask_canvas_gaps(r, o),
    }
    for key, ours_v in (("loss", o.loss.item()), ("rec_loss", o.terms["nll"]), ("kl", o.terms["kl"])):
        ref_v = r[key].item()
        out[f"{key} (rel)"] = abs(ref_v - ours_v) / max(abs(ref_v), 1e-12)
        out[f"{key} (abs, {ref_v:.4g})"] = abs(ref_v - ours_v)
    deltas = [o.terms[f"delta_{i + 1}"] for i in range(int(o.terms["refinement_iters"]))]
    out["deltas (rel)"] = max(abs(a - b) / abs(a) for a, b in zip(r["deltas"].tolist(), deltas, strict=True))
    if mode != "eval":
        ref.update_geco(step, r)  # ours updated in its forward
        out["geco beta"] = abs(ref.geco_beta.item() - ours.geco_beta.item())
        c_ref = ref.geco_C_ema.item()
        out["geco C_ema (rel)"] = abs(c_ref - ours.geco_c_ema.item()) / max(abs(c_ref), 1e-12)
        r["loss"].backward()
        o.loss.backward()
        grads = to_ours({k: p.grad for k, p in ref.named_parameters() if p.requires_grad})
        ours_params = dict(ours.named_parameters())
        scale = max(g.abs().max().item() for g in grads.values())
        out["grad (rel to max |grad|)"] = max((g - ours_params[k].grad).abs().max().item() for k, g in grads.items())
        out["grad (rel to max |grad|)"] /= scale
    print(f"{name} {weights} {str(dtype)[6:]} {mode}: {batch}x3x{size}x{size}, {slots} slots, z {z}, {n_ref:,} params, "
          f"loss {o.loss.item():.6g} ({t1 - t0:.1f} s reference, {t2 - t1:.1f} s ours forward)")  # fmt: skip
    common.print_figures(out, width=32)
    return out


def main() -> int:
    args = common.parse_args(__doc__, quick="the default architecture at 64x64 only")
    bad = []
    with tempfile.TemporaryDirectory(prefix="compare_emorl_") as tmp:
        files = {f"{PKG}/{f}": f"{PKG}/{f}" for f in ("model.py", "utils.py")}
        ref_mod = common.reference_module(args.reference, Path(tmp), files, PKG.replace("/", ".") + ".model")
        for case in QUICK if args.quick else CASES:
            for mode in MODES:
                res = compare(ref_mod, *case, mode=mode, seed=args.seed)
                bad += common.past_dtype_tolerance(f"{case[0]} {case[5]} {mode}", res, case[-1])
    return common.report(bad)


if __name__ == "__main__":
    sys.exit(main())
