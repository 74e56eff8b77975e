#!/usr/bin/env python
"""Run the ClevrTex reference Slot Attention and images/slot_attention/slot_attention.py on identical weights, images
and noise.

    python scripts/compare_slot_attention.py [--reference PATH] [--seed 0] [--threads 2] [--quick]

PATH: a checkout or a bare git directory of karazijal/clevrtex; not given, it is cloned at fe982ab into a temporary
folder (needs git and the network). Its `ool/picture/models/thirdparty/slot_attention/model.py` (MIT) is copied into
a temporary package and imported unedited.

For each case the reference `SlotAttentionAutoEncoder((3, S, S), num_slots, num_iterations=3)` is built under a fixed
seed, and ours under the same seed: the script checks that both draw the same initial weights, then loads the
reference's state dict into ours through a name map (its position-grid buffers have no saved counterpart) anyway.
Both run on the same disc images at the reference's initialisation and with perturbed weights (every parameter +
N(0, 0.05^2), so that the masks are not near-uniform). The slot noise is fixed identically: during the reference's
forward `torch.randn` is replaced by `torch.randn(shape, generator=g, dtype=dtype)` on a generator seeded as the one
passed to ours (ours draws one (B, K, width) tensor from it). Compared: `layers.mask` vs masks, `canvas`, the loss
(relative) and every parameter's gradient of the loss (relative to the largest |gradient|), as max |reference - ours|.
Float32 and float64 (both models converted with .to(dtype)). Exit status 1 when one exceeds the tolerance.

Figures (fe982ab, seed 0, CPU): at 128x128 with 11 slots (batch 2) and at 97x97 with 5 slots (batch 3, the decoder's
128 output resized bicubic), reference init and perturbed weights, float32 and float64: masks, canvas, loss and every
gradient are bit-identical (all differences 0); ours under the same seed draws the reference's initial weights;
2,987,524 parameters at 128. Negative controls: another slot-noise seed gives masks 0.40 apart; eps 1e-6 instead of
1e-8 is caught in float64 (masks 6e-8, loss 4e-10 relative).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import objseg_reference as common
import torch

slot_attention = common.our_module("slot_attention")

FILE = "ool/picture/models/thirdparty/slot_attention/model.py"
# float32: masks/canvas absolute, loss relative, gradients relative to the largest |gradient|; float64 all 1e-10
TOL32 = {"masks": 1e-5, "canvas": 1e-5, "loss (rel)": 1e-5, "grad (rel to max)": 1e-4}
TOL64 = 1e-10
# (name, image size, slots, batch): the ClevrTex setting, and an odd size (the decoder's 128 output is resized bicubic)
CASES = (("clevrtex 128", 128, 11, 2), ("odd 97", 97, 5, 3))
QUICK = (("small 64", 64, 5, 2),)


def ours_name(ref_name: str) -> str | None:
    """reference tensor name -> ours (None: a position grid buffer, rebuilt rather than saved in ours)."""
    if ref_name.endswith("_pos.grid"):
        return None
    return ref_name.replace("encoder_cnn.", "encoder.").replace("decoder_cnn.", "decoder.")


def compare(ref_mod, size: int, slots: int, batch: int, dtype: torch.dtype, perturb: bool, seed: int) -> dict:
    torch.manual_seed(seed)
    ref = ref_mod.SlotAttentionAutoEncoder((3, size, size), num_slots=slots, num_iterations=3)
    torch.manual_seed(seed)
    ours = slot_attention.build({"slots": slots, "iters": 3, "image_size": size})
    sd = ref.state_dict()
    mapped = {ours_name(k): v for k, v in sd.items() if ours_name(k) is not None}
    ours_sd = ours.state_dict()
    assert set(mapped) == set(ours_sd), sorted(set(mapped) ^ set(ours_sd))
    same_init = all(torch.equal(v, ours_sd[k]) for k, v in mapped.items())
    for k in sd:  # the grids: same values as ours
        if k.endswith("_pos.grid"):
            torch.testing.assert_close(sd[k], ours.get_buffer(k), rtol=0, atol=0)
    if perturb:
        g = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        mapped = {ours_name(k): v for k, v in ref.state_dict().items() if ours_name(k) is not None}
    ours.load_state_dict(mapped, strict=True)
    ref, ours = ref.to(dtype).train(), ours.to(dtype).train()
    n_params = sum(p.numel() for p in ref.parameters())
    assert n_params == sum(p.numel() for p in ours.parameters())

    x = common.discs(batch, size, seed).to(dtype)
    g_ref = torch.Generator().manual_seed(seed + 1)
    original = torch.randn
    torch.randn = lambda shape, **kw: original(shape, generator=g_ref, dtype=dtype)
    try:
        t0 = time.perf_counter()
        r = ref(x)
        r["loss"].backward()
        t_ref = time.perf_counter() - t0
    finally:
        torch.randn = original
    t0 = time.perf_counter()
    o = ours(x, torch.Generator().manual_seed(seed + 1), step=0)
    o.loss.backward()
    t_ours = time.perf_counter() - t0
    ours_params = dict(ours.named_parameters())
    grad = max((p.grad - ours_params[ours_name(k)].grad).abs().max().item() for k, p in ref.named_parameters())
    grad_scale = max(p.grad.abs().max().item() for p in ref.parameters())
    return {
        "params": n_params,
        "same init": same_init,
        "loss": o.loss.item(),
        "mask range": (o.masks.min().item(), o.masks.max().item()),
        "time ref/ours": (t_ref, t_ours),
        **common.mask_canvas_gaps(r, o),
        "loss (rel)": abs(r["loss"].item() - o.loss.item()) / abs(r["loss"].item()),
        "grad (rel to max)": grad / grad_scale,
    }


def main() -> int:
    args = common.parse_args(__doc__, quick="one small case (64x64, 5 slots) instead of 128 and 97")
    with tempfile.TemporaryDirectory() as tmp:
        ref_mod = common.reference_module(args.reference, Path(tmp), {FILE: "refslota/model.py"}, "refslota.model")
        bad = []
        keys = ("masks", "canvas", "loss (rel)", "grad (rel to max)")
        print(f"{'case':26s} {'weights':9s} {'dtype':7s} " + " ".join(f"{k:>17s}" for k in keys) + "  loss, s ref/ours")
        for name, size, slots, batch in QUICK if args.quick else CASES:
            for perturb in (False, True):
                for dtype in (torch.float32, torch.float64):
                    res = compare(ref_mod, size, slots, batch, dtype, perturb, args.seed)
                    tol = TOL32 if dtype == torch.float32 else dict.fromkeys(keys, TOL64)
                    label = f"{name} ({batch}x{slots} slots)"
                    bad += [f"{label} {dtype}: {k}" for k in keys if res[k] > tol[k]]
                    if not res["same init"]:
                        bad.append(f"{label}: ours under the same seed does not draw the reference's initial weights")
                    weights = "perturbed" if perturb else "init"
                    print(f"{label:26s} {weights:9s} {str(dtype)[6:]:7s} "
                          + " ".join(f"{res[k]:17.3g}" for k in keys)
                          + f"  {res['loss']:.1f}, {res['time ref/ours'][0]:.1f}/{res['time ref/ours'][1]:.1f}"
                          f"  masks in [{res['mask range'][0]:.3f}, {res['mask range'][1]:.3f}]"
                          f"  {res['params']:,} params, same init: {res['same init']}")  # fmt: skip
    return common.report(bad, f"OK: float32 within {TOL32}; float64 within {TOL64}")


if __name__ == "__main__":
    sys.exit(main())
