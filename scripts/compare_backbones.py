#!/usr/bin/env python
"""Run the official DINO, DINOv2 and NeCo backbones and our adapters (images/dino, images/dinov2, images/neco) on
identical random weights and identical images, and print a table of the largest differences.

    python scripts/compare_backbones.py [--dino DIR] [--dinov2 DIR] [--neco DIR] [--only dino,dinov2,neco]
                                        [--arch NAME ...] [--out table.md] [--seed 0]
    python scripts/compare_backbones.py --write-fixture tests/fixtures/pos_embed_official.npz [--dino ...]

--dino, --dinov2, --neco: checkouts of facebookresearch/dino (7c446df), facebookresearch/dinov2 (b8931f7) and
vpariza/NeCo (3932160); each one not given is cloned at that commit into a temporary folder (needs git and the
network) and removed afterwards. They are imported and run as they are, nothing in them is edited; the harness and
the adapters come from this checkout. The Python that runs it needs torch, timm and pillow (DINO's utils.py imports
PIL).

For each architecture: the official model is built under a fixed seed (DINO `vision_transformer.vit_{small,base}
(patch_size=16, num_classes=0)`, DINOv2 `hub.backbones.dinov2_vit{s,b}14[_reg](pretrained=False)`, NeCo
`src/models/vit_v2.vit_{small,base}(patch_size=14, num_register_tokens=0)`, which carries the projection head), and
N(0, 0.05) is added to every bias, norm, layer-scale gamma and token (cls, register, mask) and to the position
embedding, so that every tensor matters. Its state dict is saved in the official format (the plain backbone file;
for DINO ViT-S/16 also a main_dino.py full checkpoint, whose `teacher` is a MultiCropWrapper with a DINOHead and
whose `student` has DDP's `module.` prefix; for NeCo the backbone with its projection head) and read back through
the adapter's own code ($BENCH_WEIGHTS, setup, embed, embed_dense). Images: seeded uint8 noise, normalised for the
official model exactly as the adapter normalises (ImageNet mean/std); 2 images for ViT-S, 1 for ViT-B. Sizes: 224,
448, 512 (/16) or 504 and 518 (/14), and 448×224 (non-square). Compared: the CLS after the final norm (DINO
`get_intermediate_layers(x, 1)[0][:, 0]`, DINOv2 `x_norm_clstoken`, NeCo `forward_backbone(x)[:, 0]`) with `embed`,
and the patch tokens after the final norm (DINO `[:, 1:]`, DINOv2 `x_norm_patchtokens`, NeCo
`forward_backbone(x)[:, 1:]`) with `embed_dense`, as max |official − ours| in fp32 on CPU. Negative control: the same
weights in timm's own `dynamic_img_size=True` model (timm resamples the position embedding with antialias to the
size), which differs from the official interpolation at every size but the native one for the non-register models.
A row passes when both of ours are ≤ 1e-4. Exit status 1 when a row fails.

--write-fixture: instead, write the official `interpolate_pos_encoding` of DINO, DINOv2 (with and without the
register settings) and NeCo, applied to a small random position embedding (1 + 6², 4 channels) at a few sizes, to an
npz file that tests/test_backbones.py checks the adapters' formulas against without the official code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REFERENCES = {
    "dino": ("https://github.com/facebookresearch/dino", "7c446df5b9f45747937fb0d72314eb9f7b66930a"),
    "dinov2": ("https://github.com/facebookresearch/dinov2", "b8931f7bf91576930313be2c6d6af376033b35f0"),
    "neco": ("https://github.com/vpariza/NeCo", "393216026b4d045e2e0b803f70a7d89d9a58937e"),
}
TOLERANCE = 1e-4
NOISE = 0.05
# pos-embedding fixture: grid M, channels, and (rows, columns) in patches; 6×6 with a square input is the official
# shortcut (returned unchanged)
FIXTURE_GRID, FIXTURE_DIM = 6, 4
FIXTURE_SIZES = ((8, 8), (4, 4), (9, 5), (6, 6), (6, 3))


@dataclass(frozen=True)
class Case:
    name: str  # as printed
    family: str  # dino | dinov2 | neco: the reference repo and the adapter folder
    variant: str  # the adapter's variant
    official: str  # constructor name in the reference
    timm_name: str
    patch: int
    images: int
    checkpoint: str = "backbone"  # backbone | full (DINO's main_dino.py checkpoint)


CASES = [
    Case("DINO S/16", "dino", "vits16", "vit_small", "vit_small_patch16_224", 16, 2),
    Case("DINO S/16 full ckpt", "dino", "vits16", "vit_small", "vit_small_patch16_224", 16, 2, "full"),
    Case("DINO B/16", "dino", "vitb16", "vit_base", "vit_base_patch16_224", 16, 1),
    Case("DINOv2 S/14", "dinov2", "vits14", "dinov2_vits14", "vit_small_patch14_dinov2", 14, 2),
    Case("DINOv2 B/14", "dinov2", "vitb14", "dinov2_vitb14", "vit_base_patch14_dinov2", 14, 1),
    Case("DINOv2 S/14 reg4", "dinov2", "vits14_reg", "dinov2_vits14_reg", "vit_small_patch14_reg4_dinov2", 14, 2),
    Case("DINOv2 B/14 reg4", "dinov2", "vitb14_reg", "dinov2_vitb14_reg", "vit_base_patch14_reg4_dinov2", 14, 1),
    Case("NeCo S/14", "neco", "vits14", "vit_small", "vit_small_patch14_dinov2", 14, 2),
    Case("NeCo B/14", "neco", "vitb14", "vit_base", "vit_base_patch14_dinov2", 14, 1),
]
SIZES = {
    16: [(224, 224), (448, 448), (512, 512), (448, 224)],
    14: [(224, 224), (448, 448), (504, 504), (518, 518), (448, 224)],
}


# --- the references ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def on_path(folder: Path):
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def checkout(family: str, given: Path | None, stack: contextlib.ExitStack) -> Path:
    """The reference checkout: the one given, else a clone at the pinned commit in a temporary folder."""
    if given:
        return given.resolve()
    url, commit = REFERENCES[family]
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"ref-{family}-"))) / family
    print(f"cloning {url} at {commit} into {folder} ...", file=sys.stderr, flush=True)
    subprocess.run(["git", "clone", "--quiet", url, str(folder)], check=True)
    subprocess.run(["git", "-C", str(folder), "checkout", "--quiet", commit], check=True)
    return folder


def import_references(paths: dict[str, Path]) -> dict[str, SimpleNamespace]:
    """The official modules, imported from the checkouts (each family's folder on sys.path while it imports)."""
    refs = {}
    if "dino" in paths:
        with on_path(paths["dino"]):
            import utils as dino_utils  # dino/utils.py
            import vision_transformer as dino_vits  # dino/vision_transformer.py
        refs["dino"] = SimpleNamespace(vits=dino_vits, utils=dino_utils)
    if "dinov2" in paths:
        with on_path(paths["dinov2"]):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "xFormers is not available"
                from dinov2.hub import backbones
                from dinov2.models.vision_transformer import DinoVisionTransformer
        refs["dinov2"] = SimpleNamespace(hub=backbones, vit=DinoVisionTransformer)
    if "neco" in paths:
        with on_path(paths["neco"]):
            from src.models import vit_v2
        refs["neco"] = SimpleNamespace(vit=vit_v2)
    return refs


def official_model(refs: dict, case: Case) -> torch.nn.Module:
    if case.family == "dino":
        return refs["dino"].vits.__dict__[case.official](patch_size=16, num_classes=0)
    if case.family == "dinov2":
        return getattr(refs["dinov2"].hub, case.official)(pretrained=False)
    return getattr(refs["neco"].vit, case.official)(patch_size=14, num_register_tokens=0)


def perturb(model: torch.nn.Module, seed: int) -> None:
    """N(0, 0.05) on every bias, norm, gamma, token and the position embedding (1-D tensors and the tokens)."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or "token" in name or name == "pos_embed":
                p.add_(torch.randn(p.shape, generator=g) * NOISE)


def official_outputs(refs: dict, case: Case, model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLS (N, D), patch tokens (N, h·w, D)) after the final norm, as each official code gives them."""
    with torch.no_grad():
        if case.family == "dino":
            tokens = model.get_intermediate_layers(x, 1)[0]
            return tokens[:, 0], tokens[:, 1:]
        if case.family == "dinov2":
            out = model.forward_features(x)
            return out["x_norm_clstoken"], out["x_norm_patchtokens"]
        tokens = model.forward_backbone(x)
        return tokens[:, 0], tokens[:, 1:]


def save_official(refs: dict, case: Case, model, path: Path) -> None:
    """The official file format: the backbone state dict, or (DINO `full`) main_dino.py's checkpoint dict."""
    if case.checkpoint != "full":
        torch.save(model.state_dict(), path)
        return
    vits, utils = refs["dino"].vits, refs["dino"].utils
    teacher = utils.MultiCropWrapper(model, vits.DINOHead(model.embed_dim, 1024))
    student = utils.MultiCropWrapper(vits.__dict__[case.official](patch_size=16), vits.DINOHead(model.embed_dim, 1024))
    torch.save(
        {
            "student": {f"module.{k}": v for k, v in student.state_dict().items()},  # DDP-wrapped in main_dino.py
            "teacher": teacher.state_dict(),
            "epoch": 100,
            "args": Namespace(arch=case.official, patch_size=16, out_dim=1024),
            "dino_loss": {"center": torch.zeros(1, 1024)},
        },
        path,
    )


# --- ours and the control ----------------------------------------------------------------------------------------


def load_adapter(family: str):
    """images/<family>/adapter.py, its method.yaml's included folders (images/_vit) on sys.path while it loads, as
    every backend has them."""
    from harness.specs import MethodSpec, load_spec

    path = REPO / "images" / family / "adapter.py"
    included = [str(f) for f in load_spec(MethodSpec, path.with_name("method.yaml")).code_folders[1:]]
    spec = importlib.util.spec_from_file_location(f"compare_{family}_adapter", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    sys.path[:0] = included
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.path[: len(included)]
    return module


def ours(adapters: dict, case: Case, weights: Path):
    cls = getattr(adapters[case.family], {"dino": "Dino", "dinov2": "Dinov2", "neco": "Neco"}[case.family])
    os.environ["BENCH_WEIGHTS"] = str(weights)
    try:
        method = cls(variant=case.variant)
        method.setup(0, {"name": "compare"})
    finally:
        del os.environ["BENCH_WEIGHTS"]
    return method


def control(case: Case, weights: Path) -> torch.nn.Module:
    """timm's own dynamic-size model with the same weights (its checkpoint_filter_fn conversion)."""
    model = timm.create_model(case.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True)
    state = torch.load(weights, map_location="cpu", weights_only=False)
    if case.checkpoint == "full":
        state = {k.removeprefix("backbone."): v for k, v in state["teacher"].items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith("projection_head.")}
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    return model.eval()


def normalise(images: np.ndarray) -> torch.Tensor:
    """As the adapters normalise: ImageNet mean/std of images/_vit/vit_backbone.py, which they import."""
    vit = sys.modules["vit_backbone"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    return (x - vit.MEAN) / vit.STD


def compare_case(refs, adapters, case: Case, seed: int, folder: Path) -> list[dict]:
    torch.manual_seed(seed)
    official = official_model(refs, case).eval()
    perturb(official, seed)
    weights = folder / f"{case.family}_{case.variant}_{case.checkpoint}.pth"
    save_official(refs, case, official, weights)
    method, timm_dynamic = ours(adapters, case, weights), control(case, weights)
    rows = []
    for h, w in SIZES[case.patch]:
        images = np.random.default_rng(seed).integers(0, 256, (case.images, h, w, 3), dtype=np.uint8)
        x = normalise(images)
        t0 = time.perf_counter()
        cls_ref, patch_ref = official_outputs(refs, case, official, x)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        cls_ours, dense = method.embed(images), method.embed_dense(images)
        t_ours = time.perf_counter() - t0
        with torch.no_grad():
            tokens = timm_dynamic.forward_features(x)
        cls_ctl, patch_ctl = tokens[:, 0], tokens[:, timm_dynamic.num_prefix_tokens :]
        n = case.images
        assert dense.shape == (n, h // case.patch, w // case.patch, patch_ref.shape[-1]), dense.shape
        patch_ours = torch.from_numpy(dense).reshape(n, -1, dense.shape[-1])
        diff = lambda a, b: float((torch.as_tensor(a) - b).abs().max())  # noqa: E731
        rows.append(
            {
                "arch": case.name,
                "size": f"{h}×{w}",
                "cls": diff(cls_ours, cls_ref),
                "patch": diff(patch_ours, patch_ref),
                "ctl_cls": diff(cls_ctl, cls_ref),
                "ctl_patch": diff(patch_ctl, patch_ref),
                "amax": float(patch_ref.abs().max()),
                "t_ref": t_ref,
                "t_ours": t_ours,
            }
        )
        r = rows[-1]
        print(f"{case.name} {h}×{w}: ours {r['cls']:.1e} / {r['patch']:.1e}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| architecture | input | ours: CLS | ours: patch | timm dynamic_img_size: CLS | … patch | max abs token "
        "| official s | ours s | pass |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = r["cls"] <= TOLERANCE and r["patch"] <= TOLERANCE
        lines.append(
            f"| {r['arch']} | {r['size']} | {r['cls']:.1e} | {r['patch']:.1e} | {r['ctl_cls']:.1e} | "
            f"{r['ctl_patch']:.1e} | {r['amax']:.2f} | {r['t_ref']:.2f} | {r['t_ours']:.2f} | {'yes' if ok else 'NO'} |"
        )
    return "\n".join(lines)


# --- the pos-embedding fixture -----------------------------------------------------------------------------------


def write_fixture(refs: dict, path: Path, seed: int) -> None:
    """Each official `interpolate_pos_encoding`, called as an unbound method on a stand-in holding only what it
    reads (pos_embed, the patch size, the offset and antialias settings), on one random grid at FIXTURE_SIZES."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(1, 1 + FIXTURE_GRID**2, FIXTURE_DIM, generator=g)
    formulas = {
        "dino": (refs["dino"].vits.VisionTransformer, SimpleNamespace(patch_embed=SimpleNamespace(patch_size=16)), 16),
        "dinov2": (
            refs["dinov2"].vit,
            SimpleNamespace(patch_size=14, interpolate_offset=0.1, interpolate_antialias=False),
            14,
        ),
        "dinov2_reg": (
            refs["dinov2"].vit,
            SimpleNamespace(patch_size=14, interpolate_offset=0.0, interpolate_antialias=True),
            14,
        ),
        "neco": (refs["neco"].vit.DinoVisionTransformer, SimpleNamespace(patch_size=14, interpolate_offset=0.1), 14),
    }
    out = {"pos_embed": pos.numpy(), "sizes": np.array(FIXTURE_SIZES)}
    for name, (cls, holder, patch) in formulas.items():
        holder.pos_embed = pos
        for h0, w0 in FIXTURE_SIZES:
            x = torch.zeros(1, 1 + h0 * w0, FIXTURE_DIM)  # only its shape is read
            # the official signature is (x, w, h) with w, h = x.shape[2:]: rows first
            result = cls.interpolate_pos_encoding(holder, x, h0 * patch, w0 * patch)
            out[f"{name}_{h0}x{w0}"] = result.detach().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes): {', '.join(sorted(out))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for family in REFERENCES:
        parser.add_argument(f"--{family}", type=Path, help=f"a checkout of {REFERENCES[family][0]}")
    parser.add_argument("--only", default="dino,dinov2,neco", help="families to compare (comma-separated)")
    parser.add_argument("--arch", action="append", help="only these architectures (as in the table; repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--write-fixture", type=Path, help="write the pos-embedding fixture and stop")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    families = list(REFERENCES) if args.write_fixture else args.only.split(",")
    with contextlib.ExitStack() as stack:
        paths = {f: checkout(f, getattr(args, f), stack) for f in families}
        refs = import_references(paths)
        if args.write_fixture:
            write_fixture(refs, args.write_fixture, args.seed)
            return 0
        adapters = {f: load_adapter(f) for f in families}
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="compare-backbones-")))
        rows = []
        for case in CASES:
            if case.family in families and (not args.arch or case.name in args.arch):
                rows += compare_case(refs, adapters, case, args.seed, folder)
    text = "\n".join(
        [
            table(rows),
            "",
            f"fp32, CPU ({torch.get_num_threads()} threads), torch {torch.__version__}, timm {timm.__version__}; "
            f"references: {', '.join(f'{f} {paths[f]}' for f in families)}; max |official − ours| over "
            f"{'/'.join(str(c) for c in sorted({c.images for c in CASES}))} seeded images; pass: ≤ {TOLERANCE:g}. "
            "Seconds: the official forward once, ours embed and embed_dense (two forwards); indicative only",
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    failed = [r for r in rows if r["cls"] > TOLERANCE or r["patch"] > TOLERANCE]
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
