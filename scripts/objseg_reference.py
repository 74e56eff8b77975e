"""What the ClevrTex side-by-side scripts (scripts/compare_<model>.py) share: the reference files copied into a
temporary package at run time (from a checkout, a bare git directory or a fresh clone at fe982ab; nothing of the
reference is kept or committed), the shims for a newer numpy, the reference's noise routed to a seeded generator,
weight perturbations, disc images, default-dtype switching and the final OK / FAIL line with its exit status.

The scripts import it as `objseg_reference` (their own folder is first on sys.path when run as a script); so does
tests/objseg_checks.py, for `discs`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

URL, COMMIT = "https://github.com/karazijal/clevrtex", "fe982ab"
REPO = Path(__file__).resolve().parents[1]


def our_module(name: str) -> types.ModuleType:
    """images/<name>/<name>.py, imported with images/_objseg and images/<name> first on sys.path (as in the image)."""
    sys.path[:0] = [str(REPO / "images" / "_objseg"), str(REPO / "images" / name)]
    return importlib.import_module(name)


def reference_package(ref: str | None, root: Path, files: dict[str, str], commit: str = COMMIT) -> None:
    """Write each reference file (its path in the repository -> its path under `root`) from `ref`, a checkout or a
    bare git directory (e.g. a mirror), or from a clone of URL at `commit` when None; every folder between `root` and
    a written file gets an empty `__init__.py` (a package), unless it has one."""
    if ref is None:
        clone = root / "_clevrtex_clone"
        subprocess.run(["git", "clone", "-q", URL, str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", commit], check=True)
        ref = str(clone)
    src = Path(ref)
    for f, to in files.items():
        dest = root / to
        dest.parent.mkdir(parents=True, exist_ok=True)
        if (src / f).is_file():
            text = (src / f).read_text()
        else:  # a bare git directory
            text = subprocess.run(["git", f"--git-dir={src}", "show", f"{commit}:{f}"], check=True,
                                  capture_output=True, text=True).stdout  # fmt: skip
        dest.write_text(text)
        for parent in dest.parents:
            if parent == root:
                break
            if not (parent / "__init__.py").exists():
                (parent / "__init__.py").write_text("")


def shim_numpy() -> None:
    """In this process only: `numpy.object` and `numpy.product` (removed from numpy) are `object` and `numpy.prod`."""
    if not hasattr(np, "object"):
        np.object = object
    if not hasattr(np, "product"):
        np.product = np.prod


def stub_module(name: str) -> None:
    """An empty module `name` (imported by the reference, never used on the paths compared), unless installed."""
    sys.modules.setdefault(name, types.ModuleType(name))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def reference_noise(g: torch.Generator, rand: bool = False):
    """torch.distributions' standard-normal draws (Normal.rsample) and, with rand, torch.rand (RelaxedBernoulli.rsample,
    other uniform draws) come from `g`, in the dtype asked for or else the default dtype."""
    normal_mod = importlib.import_module("torch.distributions.normal")
    orig_rand, orig_normal = torch.rand, normal_mod._standard_normal

    def seeded_rand(*size, device=None, dtype=None, **kw):
        assert not kw, kw
        return orig_rand(*size, generator=g, dtype=dtype or torch.get_default_dtype()).to(device)

    normal_mod._standard_normal = lambda shape, dtype, device: torch.randn(shape, generator=g, dtype=dtype)
    if rand:
        torch.rand = seeded_rand
    try:
        yield
    finally:
        torch.rand, normal_mod._standard_normal = orig_rand, orig_normal


def perturb_fan_in(model: torch.nn.Module, seed: int, trainable_only: bool = False) -> None:
    """Every weight + N(0, 1/fan_in), every vector + N(0, 0.1^2), from the global RNG seeded with `seed`."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad or not trainable_only:
                p += torch.randn_like(p) * (p[0].numel() ** -0.5 if p.dim() > 1 else 0.1)


def perturb_by_std(model: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Every parameter moved by N(0, (scale * its tensor's std)^2) (std 0.05 for a scalar or constant tensor), drawn
    from a generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            sd = p.std().item() if p.numel() > 1 and p.std().item() > 0 else 0.05
            p.add_(scale * sd * torch.randn(p.shape, generator=g, dtype=p.dtype))


def discs(
    n: int,
    size: int,
    seed: int,
    count: tuple[int, int] = (1, 4),
    place: tuple[float, float] = (0.2, 0.8),
    radius: tuple[float, float] = (0.1, 0.2),
) -> torch.Tensor:
    """n images: a flat random background with count[0] to count[1] - 1 discs (1-3 by default) of random colour,
    radius (radius * size) and place (centre in place * size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        out[i] = rng.uniform(0, 1, 3)[:, None, None]
        for _ in range(rng.integers(*count)):
            cy, cx = rng.uniform(*place, 2) * size
            r = rng.uniform(*radius) * size
            out[i][:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 1, (3, 1))
    return torch.from_numpy(out)


def rel(a: float, b: float) -> float:
    """|a - b| relative to |a| (the reference's value)."""
    return abs(a - b) / max(abs(a), 1e-12)


def report(bad: list[str], ok: str = "OK: every figure within its tolerance") -> int:
    """Print the FAIL line (the figures past their tolerance) or `ok`; the exit status: 1 on a failure."""
    print("FAIL: " + "; ".join(bad) if bad else ok)
    return 1 if bad else 0


def parse_args(doc: str, quick: str | None = None, extra: tuple = ()) -> argparse.Namespace:
    """The command line every compare script takes: --reference PATH, --seed, --threads (set here) and, given its
    help, --quick; `extra`: more (flags, keyword arguments) pairs. The description: the docstring's first paragraph."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--reference", default=None)
    for flags, kw in extra:
        ap.add_argument(*flags, **kw)
    if quick is not None:
        ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def grad_gap(ref: torch.nn.Module, ours: torch.nn.Module, names: dict[str, str]) -> float:
    """max |reference grad - ours| over the parameters (reference name -> ours through `names`), relative to the
    largest |reference grad|; a parameter without a gradient must have none on both sides."""
    ours_params = dict(ours.named_parameters())
    diffs, scale = [], 0.0
    for n, p in ref.named_parameters():
        q = ours_params[names[n]]
        if p.grad is None or q.grad is None:
            assert p.grad is None and q.grad is None, n
            continue
        diffs.append((p.grad - q.grad).abs().max().item())
        scale = max(scale, p.grad.abs().max().item())
    return max(diffs) / scale


def print_figures(out: dict[str, float], width: int = 26, control: float | None = None) -> None:
    """One line a figure; with control, the negative control's mask difference (another seed) last."""
    for k, v in out.items():
        print(f"  {k:{width}s} {v:.3g}", flush=True)
    if control is not None:
        print(f"  {'(control: another seed)':{width}s} masks {control:.3g}")


def past_tolerance(label: str, res: dict[str, float], tol) -> list[str]:
    """`label: figure value` for each figure of res not within tol(figure name) (NaN is not within)."""
    return [f"{label}: {k} {v:.3g}" for k, v in res.items() if not v <= tol(k)]


# emorl, iodine and genesisv2, by dtype: masks/canvas absolute, loss terms relative, gradients relative to the largest
# |grad| (figures named "... (abs, ...)" are shown, not held to a tolerance)
TOL_BY_DTYPE = {torch.float32: 1e-5, torch.float64: 1e-9}
TOL_GRAD_BY_DTYPE = {torch.float32: 1e-3, torch.float64: 1e-9}


def past_dtype_tolerance(label: str, res: dict[str, float], dtype: torch.dtype) -> list[str]:
    """`label: figure` for each figure of res above its TOL_BY_DTYPE / TOL_GRAD_BY_DTYPE (the "abs" ones left out)."""
    tol, tol_grad = TOL_BY_DTYPE[dtype], TOL_GRAD_BY_DTYPE[dtype]
    return [
        f"{label}: {k}" for k, v in res.items() if "abs" not in k and v > (tol_grad if k.startswith("grad") else tol)
    ]


def mask_canvas_gaps(ref_out: dict, o, key: str = "layers") -> dict[str, float]:
    """max |reference - ours| of the masks (the reference's out[key]['mask'], what the ClevrTex evaluator reads) and
    of the canvas."""
    return {
        "masks": (ref_out[key]["mask"][:, :, 0] - o.masks).abs().max().item(),
        "canvas": (ref_out["canvas"] - o.canvas).abs().max().item(),
    }


def ours_and_control(ours: torch.nn.Module, x: torch.Tensor, seed: int, step, train: bool):
    """Ours on x with the generator seeded seed + 1 (grad on when train), and, as a negative control, its masks with
    seed + 2 (no grad)."""
    with torch.set_grad_enabled(train):
        o = ours(x, torch.Generator().manual_seed(seed + 1), step=step)
    with torch.no_grad():
        other = ours(x, torch.Generator().manual_seed(seed + 2), step=step).masks
    return o, other


def reference_module(ref: str | None, root: Path, files: dict[str, str], module: str, extra=None, quiet=False):
    """reference_package(ref, root, files), `extra` files (path under root -> text) beside it, `root` first on
    sys.path, and the reference `module` imported (its stdout swallowed when quiet)."""
    reference_package(ref, root, files)
    for path, text in (extra or {}).items():
        (root / path).write_text(text)
    sys.path.insert(0, str(root))
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        return importlib.import_module(module)
