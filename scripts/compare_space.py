#!/usr/bin/env python
"""Run the ClevrTex reference SPACE and images/space/space.py on identical weights, images and noise.

    python scripts/compare_space.py [--reference PATH] [--seed 0] [--threads 2] [--quick]

PATH: a checkout or a bare git directory of karazijal/clevrtex; not given, it is cloned at fe982ab into a temporary
folder (needs git and the network). Its `ool/picture/models/thirdparty/space/model.py` (GPLv3; it imports only torch)
is written into a temporary folder at run time and imported unedited; nothing of it enters this repository.

For each case the reference `Space()` is built under a fixed seed with experiments/space.py's ClevrTex settings
(`arch.fg_sigma = arch.bg_sigma = 0.15`; `arch.G` set for the G=4 case and restored) and the default dtype of the
case. Its state dict (BatchNorm running statistics included) is loaded into ours through a name map (its constant
buffers: tau, the priors and the cell offsets, have no counterpart). Noise: the reference's `Normal.rsample` draws
through `torch.distributions.normal._standard_normal` and the relaxed Bernoulli through `torch.rand`; both are replaced
by draws from a generator seeded as the one passed to ours, which draws in the same order. The reference is called
with `global_step` = the case's step (evaluation: 160000, the checkpoint's step that evaluation.ipynb passes; ours gets
step None). Compared: out['steps']['mask'] (what the ClevrTex evaluator reads, bg=False) vs masks, canvas, the
presence count, in training the loss, its terms, every parameter's gradient (relative to the largest) and the
BatchNorm running statistics after the step. Negative control: ours with another seed must move the masks past the
tolerance. "perturbed": every weight moved by 0.3 of its tensor's std and the BatchNorm statistics moved. Exit status 1
when a figure exceeds its tolerance.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "images" / "_objseg"), str(REPO / "images" / "space")]
import space  # noqa: E402

URL, COMMIT = "https://github.com/karazijal/clevrtex", "fe982ab"
FILE = "ool/picture/models/thirdparty/space/model.py"
TOL = {"masks": 1e-4, "canvas": 1e-4, "grad (rel to max |grad|)": 1e-3, "bn stats": 1e-4}
TOL_REL = 1e-5
TOL64 = 1e-9
# (name, G, batch, mode, step, weights, dtype); step None = evaluation (reference: global_step 160000)
CASES = (
    ("train@0 init", 8, 2, "train", 0, "init", torch.float32),
    ("train@7000", 8, 2, "train", 7000, "perturbed", torch.float32),
    ("train@15000", 8, 2, "train", 15000, "perturbed", torch.float32),
    ("train@15000", 8, 2, "train", 15000, "perturbed", torch.float64),
    ("eval", 8, 2, "eval", None, "perturbed", torch.float32),
    ("eval", 8, 2, "eval", None, "perturbed", torch.float64),
    ("train@12000 G=4", 4, 2, "train", 12000, "perturbed", torch.float32),
)
QUICK = (CASES[2], CASES[4])
NAMES = (  # reference prefix -> ours (exact names before prefixes)
    ("bg_module.rnn_mask_h_prior", "bg.prior_h0"), ("bg_module.rnn_mask_c_prior", "bg.prior_c0"),
    ("bg_module.rnn_mask_h", "bg.mask_h0"), ("bg_module.rnn_mask_c", "bg.mask_c0"),
    ("bg_module.z_mask_0", "bg.z_mask0"), ("bg_module.rnn_mask_prior.", "bg.prior_rnn."),
    ("bg_module.rnn_mask.", "bg.mask_rnn."), ("bg_module.image_enc.enc.", "bg.encoder."),
    ("bg_module.predict_mask.fc.", "bg.mask_head."), ("bg_module.mask_decoder.dec.", "bg.mask_decoder."),
    ("bg_module.comp_encoder.enc.", "bg.comp_encoder."), ("bg_module.comp_decoder.decoder.", "bg.comp_decoder."),
    ("bg_module.predict_mask_prior.fc.", "bg.prior_mask_head."), ("bg_module.predict_comp_prior.mlp.", "bg.prior_comp."),
    ("fg_module.img_encoder.enc.", "fg.encoder."), ("fg_module.img_encoder.enc_lat.", "fg.lateral."),
    ("fg_module.img_encoder.enc_cat.", "fg.merge."), ("fg_module.img_encoder.z_scale_net.", "fg.scale_head."),
    ("fg_module.img_encoder.z_shift_net.", "fg.shift_head."), ("fg_module.img_encoder.z_pres_net.", "fg.pres_head."),
    ("fg_module.img_encoder.z_depth_net.", "fg.depth_head."), ("fg_module.z_what_net.enc_cnn.", "fg.what_encoder."),
    ("fg_module.z_what_net.enc_what.", "fg.what_head."), ("fg_module.glimpse_dec.dec.", "fg.glimpse_decoder."),
    ("fg_module.glimpse_dec.dec_o.", "fg.glimpse_rgb."), ("fg_module.glimpse_dec.dec_alpha.", "fg.glimpse_alpha."),
)  # fmt: skip
CONSTANTS = ("fg_module.tau", "fg_module.prior_", "fg_module.img_encoder.offset")


def reference_file(ref: str | None, dest: Path) -> None:
    if ref is None:
        clone = dest.parent / "clevrtex"
        subprocess.run(["git", "clone", "-q", URL, str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", COMMIT], check=True)
        ref = str(clone)
    root = Path(ref)
    if (root / FILE).is_file():
        dest.write_text((root / FILE).read_text())
    else:  # a bare git directory (e.g. a mirror)
        dest.write_text(subprocess.run(["git", f"--git-dir={root}", "show", f"{COMMIT}:{FILE}"], check=True,
                                       capture_output=True, text=True).stdout)  # fmt: skip


def name_map(sd: dict) -> dict[str, str]:
    out = {}
    for k in sd:
        if k.startswith(CONSTANTS):
            continue
        for a, b in NAMES:
            if k == a or (a.endswith(".") and k.startswith(a)):
                out[k] = b + k[len(a) :]
                break
        else:
            raise KeyError(f"unmapped reference tensor {k}")
    return out


def discs(n: int, size: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        out[i] = rng.uniform(0, 1, 3)[:, None, None]
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            r = rng.uniform(0.1, 0.2) * size
            out[i][:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 1, (3, 1))
    return torch.from_numpy(out)


def compare(ref_mod, name, G, batch, mode, step, weights, dtype, seed) -> dict[str, float]:
    default, old_g = torch.get_default_dtype(), ref_mod.arch.G
    torch.set_default_dtype(dtype)
    ref_mod.arch.G, ref_mod.arch.fg_sigma, ref_mod.arch.bg_sigma = G, 0.15, 0.15
    try:
        torch.manual_seed(seed)
        ref = ref_mod.Space()
        ours = space.build({"G": G})
        if weights == "perturbed":
            g = torch.Generator().manual_seed(seed + 7)
            with torch.no_grad():
                for p in ref.parameters():
                    sd_ = p.std().item() if p.numel() > 1 and p.std().item() > 0 else 0.05
                    p.add_(0.3 * sd_ * torch.randn(p.shape, generator=g, dtype=p.dtype))
                for n_, buf in ref.named_buffers():
                    if n_.endswith("running_mean"):
                        buf.add_(0.1 * torch.randn(buf.shape, generator=g, dtype=buf.dtype))
                    elif n_.endswith("running_var"):
                        buf.mul_(0.5 + torch.rand(buf.shape, generator=g, dtype=buf.dtype))
        sd = ref.state_dict()
        names = name_map(sd)
        ours.load_state_dict({names[k]: v for k, v in sd.items() if k in names}, strict=True)
        ours = ours.to(dtype)
        n_ref = sum(p.numel() for p in ref.parameters())
        assert n_ref == sum(p.numel() for p in ours.parameters()), "parameter counts differ"
        ref.train(mode == "train")
        ours.train(mode == "train")

        x = discs(batch, 128, seed).to(dtype)
        normal_mod = importlib.import_module("torch.distributions.normal")
        g_ref = torch.Generator().manual_seed(seed + 1)
        orig_normal, orig_rand = normal_mod._standard_normal, torch.rand
        normal_mod._standard_normal = lambda shape, dtype, device: torch.randn(shape, generator=g_ref, dtype=dtype)
        torch.rand = lambda shape, dtype=None, device=None: orig_rand(shape, generator=g_ref, dtype=dtype)
        try:
            with torch.set_grad_enabled(mode == "train"):
                r = ref(x, 160000 if step is None else step)
        finally:
            normal_mod._standard_normal, torch.rand = orig_normal, orig_rand
        with torch.set_grad_enabled(mode == "train"):
            o = ours(x, torch.Generator().manual_seed(seed + 1), step=step)
        ours_sd = ours.state_dict()  # the reference's `sd` tensors were updated in place by its training forward
        bn = max((sd[n_] - ours_sd[names[n_]]).abs().max().item() for n_ in names if "running_" in n_)
        with torch.no_grad():  # negative control: another seed must move the masks
            other = ours(x, torch.Generator().manual_seed(seed + 2), step=step).masks
    finally:
        torch.set_default_dtype(default)
        ref_mod.arch.G = old_g

    def rel(a: float, b: float) -> float:
        return abs(a - b) / max(abs(a), 1e-12)

    k = r["steps"]["mask"].shape[1]
    out = {
        "masks": (r["steps"]["mask"][:, :, 0] - o.masks).abs().max().item(),
        "canvas": (r["canvas"] - o.canvas).abs().max().item(),
        "count": abs(r["counts"].mean().item() - o.terms["count"]),
    }
    control = (r["steps"]["mask"][:, :, 0] - other).abs().max().item()
    if mode == "train":
        out["bn stats"] = bn
        r["loss"].backward()
        o.loss.backward()
        ours_params = dict(ours.named_parameters())
        diffs, scale, none = [], 0.0, 0
        for n_, p in ref.named_parameters():
            q = ours_params[names[n_]]
            if p.grad is None or q.grad is None:
                assert p.grad is None and q.grad is None, n_
                none += 1
                continue
            diffs.append((p.grad - q.grad).abs().max().item())
            scale = max(scale, p.grad.abs().max().item())
        assert none == 0, f"{none} parameters without a gradient"
        out |= {"loss (rel)": rel(r["loss"].item(), o.terms["loss"]), "rec (rel)": rel(r["rec_loss"].item(), o.terms["rec"]),
                "boundary (rel)": rel(r["boundary_loss"].item(), o.terms["boundary"])}  # fmt: skip
        for t in ("elbo", "kl", "kl_fg", "kl_bg", "kl_what", "kl_where", "kl_depth", "kl_pres"):
            out[f"{t} (rel)"] = rel(r[t].item(), o.terms[t])
        out["grad (rel to max |grad|)"] = max(diffs) / scale
    else:  # the reference computes its loss at evaluation too
        out["loss (rel)"] = rel(r["loss"].item(), o.terms["loss"])
    loss = f"loss {o.loss.item():.1f}" if mode == "train" else f"loss {o.loss.item():.1f} (ref {r['loss'].item():.1f})"
    print(f"{name} {str(dtype)[6:]}: {batch}x3x128x128, {k} cells, {weights} weights, {n_ref:,} params, step {step}, "
          f"pres prior {space.anneal(space.DEFAULTS['pres_prior'], step):.4g}, scale mean "
          f"{space.anneal(space.DEFAULTS['scale_prior_mean'], step):.4g}, present {o.terms['count']:.2f}, {loss}")  # fmt: skip
    for key, v in out.items():
        print(f"  {key:26s} {v:.3g}")
    print(f"  {'(control: another seed)':26s} masks {control:.3g}")
    if not control > TOL["masks"]:
        out["control: another seed moves the masks"] = float("inf")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="two cases (train@15000 and eval, float32)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        reference_file(args.reference, src / "space_reference.py")
        sys.path.insert(0, str(src))
        ref_mod = importlib.import_module("space_reference")
        bad = []
        for case in QUICK if args.quick else CASES:
            res = compare(ref_mod, *case, seed=args.seed)
            for key, v in res.items():
                tol = TOL64 if case[-1] == torch.float64 else TOL.get(key, TOL_REL if "(rel)" in key else 0.0)
                if key == "count":
                    tol = 0.0
                if not v <= tol:
                    bad.append(f"{case[0]} {str(case[-1])[6:]}: {key} {v:.3g}")
    print("FAIL: " + "; ".join(bad) if bad else "OK: every figure within its tolerance")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
