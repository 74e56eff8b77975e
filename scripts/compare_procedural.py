#!/usr/bin/env python
"""Run the reference Shaders KML and Mixup generators (data_generation/fast2leaves.py `Fast2LeavesDataset`,
mixup_dataset.py `MixupDataset`, adriarm/separating_knowledge b126018) and ours (images/procedural_dino/
procedural.py) on the same tiny ImageFolders, and print the largest pixel differences before JPEG.

    python scripts/compare_procedural.py --ref PATH [--commit b126018] [--n 6]

--ref (or $SEPARATING_KNOWLEDGE_REF): a checkout of the repository, or a git directory (e.g. a bare clone:
`git clone --bare https://github.com/adriarm/separating_knowledge`); files are read at --commit. The three
files (fast2leaves.py, mixup_dataset.py, utils_kmeans.py) are copied to a temporary folder and only read there.

What runs:
- The two dataset classes are taken from the copied files with `ast` and executed unchanged in a namespace with
  numpy, torch, torchvision, cv2 and `utils_kmeans` (the modules also import matplotlib, pandas, seaborn, skimage,
  timm that the classes never use).
- `utils_kmeans` is the copied file when pykeops imports; otherwise a numpy drop-in written to the temporary
  folder (`DROP_IN` below: pykeops' float32 sum over dimensions, argmin with ties to the first, bincount means).
- Folders of our shader-like PNGs (lossless, so ours and the reference decode the same pixels): A 256² (one
  class), B 320² (two classes: x0 is resized to 256 for the mask and the mask back), C 200² (upsampled for the
  mask). KML rows: shapes/textures A/A, B/B, C/B (textures downsampled to 200), A/C (textures upsampled); ours
  also from the in-memory `ShaderLike` source. Mixup rows: on A (N=2, the paper's), on B (N=3), and on the KML
  images of A (S. KML Mixup before JPEG; the reference reads the KML JPEGs).
Compared: float32 images, max |ref - ours|, and the uint8 images `torchvision.utils.save_image` would encode
(its quantisation, written as PNG). Exit 1 when any difference is not 0.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "images" / "procedural_dino"))
import procedural as P  # noqa: E402

FILES = ("fast2leaves.py", "mixup_dataset.py", "utils_kmeans.py")
DROP_IN = '''"""numpy stand-in for utils_kmeans.Fast2Means (pykeops), written for scripts/compare_procedural.py."""
import numpy as np

def Fast2Means(x, rnggen, Niter=10, verbose=False):
    n, dims = x.shape
    u = np.unique(x, axis=0)
    c = np.array([u[0], u[-1]])
    for _ in range(Niter):
        dist = np.zeros((n, 2), np.float32)
        for k in range(dims):  # keops: Sum((x_i - c_j) ** 2) over the dimensions, in float32
            dist += (x[:, k, None] - c[None, :, k]) ** 2
        cl = dist.argmin(axis=1).astype(int).reshape(n)
        ncl = np.bincount(cl).astype("float32")
        for k in range(dims):
            c[:, k] = np.bincount(cl, weights=x[:, k]) / ncl
    return cl, c
'''


def copy_reference(ref: Path, commit: str, dest: Path) -> None:
    for name in FILES:
        path = ref / "data_generation" / name
        if path.is_file():
            text = path.read_text()
        else:
            show = ["git", "--git-dir", str(ref), "show", f"{commit}:data_generation/{name}"]
            text = subprocess.run(show, check=True, capture_output=True, text=True).stdout
        (dest / name).write_text(text)


def kmeans_module(folder: Path) -> tuple[types.ModuleType, str]:
    if importlib.util.find_spec("pykeops") is None:
        (folder / "utils_kmeans.py").write_text(DROP_IN)
        which = "numpy drop-in"
    else:
        which = "reference (pykeops)"
    spec = importlib.util.spec_from_file_location("utils_kmeans", folder / "utils_kmeans.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, which


def reference_class(path: Path, name: str, namespace: dict):
    tree = ast.parse(path.read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def make_folder(root: Path, classes: dict[str, range], size: int, seed: int) -> Path:
    for cls, indices in classes.items():
        (root / cls).mkdir(parents=True)
        for i in indices:
            Image.fromarray(P.shader_like(i, size, seed)).save(root / cls / f"{i:04d}.png")
    return root


def saved_uint8(x: torch.Tensor, path: Path) -> np.ndarray:
    torchvision.utils.save_image(x, path)
    return np.asarray(Image.open(path))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, default=os.environ.get("SEPARATING_KNOWLEDGE_REF"))
    ap.add_argument("--commit", default="b126018")
    ap.add_argument("--n", type=int, default=6, help="images per folder")
    args = ap.parse_args()
    if args.ref is None:
        sys.exit("--ref (or $SEPARATING_KNOWLEDGE_REF): a checkout or git directory of adriarm/separating_knowledge")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="compare_procedural_") as tmp:
        tmp = Path(tmp)
        (tmp / "ref").mkdir()
        copy_reference(args.ref, args.commit, tmp / "ref")
        kmeans, which = kmeans_module(tmp / "ref")
        ns = {"np": np, "torch": torch, "torchvision": torchvision, "cv2": cv2, "utils_kmeans": kmeans}
        Fast2Leaves = reference_class(tmp / "ref" / "fast2leaves.py", "Fast2LeavesDataset", ns)
        Mixup = reference_class(tmp / "ref" / "mixup_dataset.py", "MixupDataset", ns)
        n = args.n
        folders = {
            "A": make_folder(tmp / "A", {"shaders": range(n)}, 256, 0),
            "B": make_folder(tmp / "B", {"b": range(n // 2, n), "a": range(n // 2)}, 320, 1),
            "C": make_folder(tmp / "C", {"shaders": range(n)}, 200, 2),
        }
        ref_ds = {
            k: torchvision.datasets.ImageFolder(str(v), torchvision.transforms.ToTensor()) for k, v in folders.items()
        }
        ours_ds = {k: P.ImageFolderSource(v) for k, v in folders.items()}
        cases = [
            (f"KML {s}/{t}", Fast2Leaves(ref_ds[s], ref_ds[t]), P.KML(ours_ds[s], ours_ds[t]))
            for s, t in (("A", "A"), ("B", "B"), ("C", "B"), ("A", "C"))
        ]
        cases += [
            ("KML A/A, ours ShaderLike", Fast2Leaves(ref_ds["A"], ref_ds["A"]), P.KML(P.ShaderLike(n, 256, 0))),
            ("Mixup A N=2", Mixup(ref_ds["A"], 2), P.Mixup(ours_ds["A"], 2)),
            ("Mixup B N=3", Mixup(ref_ds["B"], 3), P.Mixup(ours_ds["B"], 3)),
            ("Mixup of KML A N=2", Mixup(Fast2Leaves(ref_ds["A"], ref_ds["A"]), 2), P.Mixup(P.KML(ours_ds["A"]), 2)),
        ]
        print(f"reference {args.commit}, utils_kmeans: {which}; torch {torch.__version__}, torchvision "
              f"{torchvision.__version__}, cv2 {cv2.__version__}; {n} images per folder, all indices")  # fmt: skip
        print(
            f"{'case':<26} {'shape':>13} {'max|float|':>11} {'px differ':>9} {'max|uint8|':>10} {'ref s':>6} {'ours s':>6}"
        )
        worst = 0.0
        for name, ref, ours in cases:
            fmax, differ, umax, t_ref, t_ours = 0.0, 0, 0, 0.0, 0.0
            for i in range(len(ref)):
                t0 = time.perf_counter()
                r = ref[i][0]
                t1 = time.perf_counter()
                o = ours[i]
                t2 = time.perf_counter()
                t_ref, t_ours = t_ref + t1 - t0, t_ours + t2 - t1
                assert r.dtype == torch.float32 and o.dtype == np.float32 and r.shape == o.shape, (r.shape, o.shape)
                diff = np.abs(r.numpy() - o)
                fmax, differ = max(fmax, float(diff.max())), differ + int((diff > 0).sum())
                u = np.abs(saved_uint8(r, tmp / "r.png").astype(int) - P.to_uint8(o).astype(int))
                umax = max(umax, int(u.max()))
            worst = max(worst, fmax, umax)
            print(
                f"{name:<26} {str(tuple(r.shape)):>13} {fmax:>11.3g} {differ:>9} {umax:>10} {t_ref:>6.2f} {t_ours:>6.2f}"
            )
        return int(worst > 0)


if __name__ == "__main__":
    sys.exit(main())
