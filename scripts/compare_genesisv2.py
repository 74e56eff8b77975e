#!/usr/bin/env python
"""Run the ClevrTex reference GENESIS-V2 and images/genesisv2/genesisv2.py on identical weights, images and noise.

    python scripts/compare_genesisv2.py [--reference PATH] [--seed 0] [--threads 2] [--quick]

PATH: a checkout or a bare git directory of karazijal/clevrtex; not given, it is cloned at fe982ab into a temporary
folder (needs git and the network). Its `ool/picture/models/thirdparty/genesis2/model.py` (GPLv3) is copied at run
time into a temporary package of the same dotted path (empty `__init__.py` files above) and imported unedited; nothing
of it is kept.

For each case the reference `GenesisV2(g_goal=0.5, pixel_std=0.7, K_steps=K, img_size=S, feat_dim=F)` (the README's
ClevrTex run, experiments/genesisv2.py otherwise) is built under a fixed seed, its weights perturbed or not, and its
state dict is loaded into ours through a name map. The noise is fixed identically: during the reference's forward,
`torch.rand` (its IC-SBP seed draw) and `torch.distributions.normal._standard_normal` (its rsample) are replaced by
draws from one generator seeded as the one passed to ours (both draw in the same order: the uniform, then one normal
(B, F) per slot). In float64 the reference is built and run with float64 as torch's default dtype.

Modes: `train` (model.train(): GECO's first update, then a second forward: the EMA update; with the ClevrTex goal
0.5 the constraint is unmet, so beta falls), `train@running` (goal 1.0, GECO under way with beta 0.3 and err_ema
0.9 x 3 S^2 set in both: the EMA stays under the goal and beta grows through the speed-up branch), `eval`
(model.eval() for ours; the reference's forward is the same in both modes and updates GECO in both, ours only in
training, so only ours' buffers are checked unchanged). Compared: `layers.mask` vs masks and `layers.other_mask`
(the IC-SBP masks; ours recorded by wrapping its `_ic_sbp`), `canvas` (max |diff|), loss / rec_loss / kl / elbo
(relative and absolute), GECO's beta and err_ema after each update (relative), and in train modes every parameter's
gradient of the loss (relative to the largest |grad|). Exit status 1 when one exceeds the tolerance.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import objseg_reference as common
import torch

genesisv2 = common.our_module("genesisv2")

PKG = "ool/picture/models/thirdparty/genesis2"
# (name, image size, slots, feat_dim, batch, weights, dtype). "init": the reference's initialisation (its colour gate
# starts at 0: the IC-SBP embeddings are the coordinates alone); "perturbed": every weight + N(0, 1/fan_in), every
# vector + N(0, 0.1^2), the gate included, so that the embeddings depend on the image
CASES = (
    ("clevrtex 128", 128, 11, 64, 2, "init", torch.float32),
    ("clevrtex 128", 128, 11, 64, 2, "perturbed", torch.float32),
    ("clevrtex 128", 128, 11, 64, 2, "perturbed", torch.float64),
    ("small 32", 32, 4, 16, 3, "perturbed", torch.float32),
)
QUICK = (
    ("default 32", 32, 11, 64, 2, "init", torch.float32),
    ("default 32", 32, 11, 64, 2, "perturbed", torch.float32),
    ("default 32", 32, 11, 64, 2, "perturbed", torch.float64),
)
MODES = ("train", "train@running", "eval")
RENAME = (
    ("att_process.log_sigma", "log_sigma"),
    ("att_process.colour_head.gate", "colour_gate"),
    ("att_process.colour_head.", "colour."),
)
SKIP = ("geco.", "decoder_module.0.coords")


def to_ours(ref_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference-named tensors (weights or their gradients) -> ours. The U-Net MLP and the decoder lose the index of
    the reference's Flatten / BroadcastLayer (one less); GECO's constants are not state in ours (its beta is)."""
    out = {}
    for k, v in ref_tensors.items():
        if k == "geco.beta":
            out["geco_beta"] = v
            continue
        if k.startswith(SKIP):
            continue
        for old, new in RENAME:
            if k.startswith(old):
                k = new + k[len(old) :]
                break
        for prefix in ("encoder.mlp.", "decoder_module."):
            if k.startswith(prefix):
                i, rest = k[len(prefix) :].split(".", 1)
                k = f"{prefix.replace('_module', '')}{int(i) - 1}.{rest}"
        out[k] = v
    return out


def reference_model(ref_mod, size, slots, feat, weights, dtype, seed, goal):
    torch.manual_seed(seed)
    with common.default_dtype(dtype):
        ref = ref_mod.GenesisV2(g_goal=goal, pixel_std=0.7, K_steps=slots, img_size=size, feat_dim=feat)
    if weights == "perturbed":
        common.perturb_fan_in(ref, seed + 2)
    return ref


def compare(ref_mod, name, size, slots, feat, batch, weights, dtype, mode, seed) -> dict[str, float]:
    running = mode == "train@running"
    goal = 1.0 if running else 0.5
    ref = reference_model(ref_mod, size, slots, feat, weights, dtype, seed, goal)
    ours = genesisv2.build({"slots": slots, "feat_dim": feat, "image_size": size, "geco_goal": goal}).to(dtype)
    if running:  # GECO under way, its EMA below the goal: beta grows by the speed-up branch
        ref.geco.beta.fill_(0.3)
        ref.geco.err_ema = torch.tensor(0.9 * 3 * size**2, dtype=dtype)
    missing, unexpected = ours.load_state_dict(to_ours(ref.state_dict()), strict=False)
    assert sorted(missing) == ["geco_err_ema", "geco_started"] and not unexpected, (missing, unexpected)
    if running:
        ours.geco_err_ema.fill_(0.9 * 3 * size**2)
        ours.geco_started.fill_(True)
    n_ref = sum(p.numel() for p in ref.parameters())
    assert n_ref == sum(p.numel() for p in ours.parameters())
    train = mode.startswith("train")
    ref.train(train)
    ours.train(train)
    sbp = []  # ours' IC-SBP log masks, recorded by wrapping the method on this instance
    original_sbp = ours._ic_sbp

    def recording_sbp(*a):
        out = original_sbp(*a)
        sbp.append(out.detach())
        return out

    ours._ic_sbp = recording_sbp
    x = common.discs(batch, size, seed).to(dtype)
    out: dict[str, float] = {}
    times = [0.0, 0.0]
    buffers = {n: t.clone() for n, t in ours.named_buffers()}
    g_ref, g_ours = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    for call in (1, 2) if train else (1,):
        t0 = time.perf_counter()
        with common.default_dtype(dtype), common.reference_noise(g_ref, rand=True):
            r = ref(x)
        t1 = time.perf_counter()
        o = ours(x, g_ours, step=call - 1)
        times[0] += t1 - t0
        times[1] += time.perf_counter() - t1
        sfx = f" #{call}" if train else ""
        out[f"masks{sfx}"] = (r["layers"]["mask"][:, :, 0] - o.masks).abs().max().item()
        out[f"IC-SBP masks{sfx}"] = (r["layers"]["other_mask"][:, :, 0] - sbp[-1][:, :, 0].exp()).abs().max().item()
        out[f"canvas{sfx}"] = (r["canvas"] - o.canvas).abs().max().item()
        for key, ours_key in (("loss", "loss"), ("rec_loss", "rec_loss"), ("kl", "kl"), ("elbo", "elbo")):
            ref_v = r[key].item()
            out[f"{key}{sfx} (rel)"] = common.rel(ref_v, o.terms[ours_key])
            out[f"{key}{sfx} (abs, {ref_v:.6g})"] = abs(ref_v - o.terms[ours_key])
        if train:
            out[f"geco beta{sfx} (rel)"] = common.rel(ref.geco.beta.item(), ours.geco_beta.item())
            out[f"geco err_ema{sfx} (rel)"] = common.rel(ref.geco.err_ema.item(), ours.geco_err_ema.item())
            if call == 1:
                r["loss"].backward()
                o.loss.backward()
                grads = to_ours({k: p.grad for k, p in ref.named_parameters()})
                ours_params = dict(ours.named_parameters())
                scale = max(g.abs().max().item() for g in grads.values())
                worst = max((g.to(dtype) - ours_params[k].grad).abs().max().item() for k, g in grads.items())
                out["grad (rel to max |grad|)"] = worst / scale
    if mode == "eval":  # ours: evaluation leaves GECO alone
        out["buffers changed at eval"] = float(any(not torch.equal(t, dict(ours.named_buffers())[n])
                                                   for n, t in buffers.items()))  # fmt: skip
    print(f"{name} {weights} {str(dtype)[6:]} {mode}: {batch}x3x{size}x{size}, {slots} slots, feat {feat}, "
          f"{n_ref:,} params, loss {o.loss.item():.6g}, beta {ours.geco_beta.item():.6g} "
          f"({times[0]:.1f} s reference, {times[1]:.1f} s ours)")  # fmt: skip
    common.print_figures(out, width=36)
    return out


def main() -> int:
    args = common.parse_args(__doc__, quick="the default architecture (11 slots, 64 features) at 32x32 only")
    bad = []
    with tempfile.TemporaryDirectory(prefix="compare_genesisv2_") as tmp:
        files = {f"{PKG}/model.py": f"{PKG}/model.py"}
        ref_mod = common.reference_module(args.reference, Path(tmp), files, PKG.replace("/", ".") + ".model")
        for case in QUICK if args.quick else CASES:
            for mode in MODES:
                res = compare(ref_mod, *case, mode=mode, seed=args.seed)
                bad += common.past_dtype_tolerance(f"{case[0]} {case[5]} {str(case[-1])[6:]} {mode}", res, case[-1])
    return common.report(bad)


if __name__ == "__main__":
    sys.exit(main())
