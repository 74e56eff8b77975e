#!/usr/bin/env python
"""Compare images/neco/neco_train.py with the code NeCo trains with, on identical inputs, and print the largest
differences.

    python scripts/compare_neco_train.py sort [--diffsort WHEEL_OR_DIR]

`sort`: our `DiffSort` against PyPI diffsort 0.2.0's DiffSortNet('bitonic', n, steepness=100) (distribution
'cauchy', art_lambda 0.25), as NeCo builds it (src/neco.py on_train_epoch_start), on seeded random inputs: max |P|
and |sorted| differences for n in 2..64 (49 = NeCo's 7x7 cells, padded to 64), and of the input gradient of a
cross-entropy through log P (NeCo's loss). --diffsort: the wheel (`pip download diffsort==0.2.0 --no-deps`) or an
unpacked folder; without it the wheel is downloaded with pip into a temporary folder. The wheel is unpacked into a
temporary folder and imported from there, never installed.

Measured (2-core CPU, 294 rows, under a minute): P and the sorted values 0.0 apart (bit-exact) for every n; the
input gradients up to 4.6e-8 apart (1.7e-8 at n = 49, where they are up to 1.1e-2): the backward of gathers sums in
another order than that of diffsort's 0/1 matrix products.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "images" / "_vit"), str(REPO / "images" / "neco")]
import neco_train  # noqa: E402

SORT_SIZES = (2, 3, 5, 8, 13, 16, 31, 49, 64)


def import_diffsort(source: str | None, tmp: Path):
    """diffsort 0.2.0 from its wheel (downloaded with pip when `source` is None) or an unpacked folder."""
    if source and Path(source).is_dir():
        root = Path(source)
    else:
        wheel = Path(source) if source else None
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "diffsort==0.2.0", "--no-deps", "-d", str(tmp)]
            subprocess.run(cmd, check=True, capture_output=True)
            wheel = next(tmp.glob("diffsort-0.2.0-*.whl"))
        root = tmp / "diffsort_src"
        zipfile.ZipFile(wheel).extractall(root)
    sys.path.insert(0, str(root))
    import diffsort

    assert Path(diffsort.__file__).is_relative_to(root), diffsort.__file__
    return diffsort


def compare_sort(diffsort) -> float:
    worst = 0.0
    print(f"{'n':>3} {'rows':>5} {'|P diff|':>10} {'|x diff|':>10} {'|grad diff|':>11} {'|grad|':>9}  min P")
    for n in SORT_SIZES:
        g = torch.Generator().manual_seed(n)
        x = (torch.rand(294, n, generator=g) * 2 - 1).requires_grad_()  # cosine similarities: [-1, 1]
        q = torch.softmax(torch.randn(294, n, n, generator=g) * 3, 1)
        results = []
        for sorter in (diffsort.DiffSortNet("bitonic", n, steepness=100), neco_train.DiffSort(n, steepness=100)):
            x.grad = None
            sorted_x, p = sorter(x)
            (-(q * p.log()).sum(1).mean()).backward()
            results.append((sorted_x.detach(), p.detach(), x.grad.clone()))
        (xr, pr, gr), (xo, po, go) = results
        diffs = [(pr - po).abs().max().item(), (xr - xo).abs().max().item(), (gr - go).abs().max().item()]
        worst = max(worst, *diffs)
        print(
            f"{n:>3} {len(x):>5} {diffs[0]:>10.3g} {diffs[1]:>10.3g} {diffs[2]:>11.3g} {gr.abs().max().item():>9.3g}  {pr.min().item():.3g}"
        )
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    sort = sub.add_parser("sort", help="DiffSort against diffsort 0.2.0")
    sort.add_argument("--diffsort", help="diffsort-0.2.0 wheel or unpacked folder (default: pip download)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.part == "sort":
            worst = compare_sort(import_diffsort(args.diffsort, Path(tmp)))
            print(f"largest difference: {worst:.3g}")
            return int(worst > 1e-6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
