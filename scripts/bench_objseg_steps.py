#!/usr/bin/env python
"""Seconds per training step of the ClevrTex models (images/<model>, images/_objseg), as their fit stage trains them.

    python scripts/bench_objseg_steps.py [--recipe paper|tiny] [--batch 8] [--steps 3] [--threads 2] [--models a,b]

For each model: its recipe's model params (paper: the reference's defaults at 128x128), a Trainer on random uint8
128x128 images (the fit stage's crops) with the recipe's optimiser, schedule and clipping at batch `--batch`, the
first step apart (allocation, warm-up) and the median of the next `--steps`. Prints a table: parameters, input
size, first step, median s/step, the recipe's steps and the hours they take at that rate on this machine (CPU, or
CUDA where available).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "images" / "_objseg")]
from harness import specs  # noqa: E402

MODELS = ("slot_attention", "monet", "genesisv2", "iodine", "emorl", "spair", "dti_sprites", "gnm", "space")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny", choices=("paper", "tiny"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import trainer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images = np.random.default_rng(0).integers(0, 256, (max(args.batch, 16), 128, 128, 3), dtype=np.uint8)
    rows = []
    for name in args.models.split(","):
        sys.path.insert(0, str(REPO / "images" / name))
        module = importlib.import_module(name)
        spec = specs.get("method", name).recipes[args.recipe]
        recipe = trainer.Recipe.of({**spec.params, "batch_size": args.batch})
        t = trainer.Trainer(module.build, recipe, images, 0, device)
        times = []
        for _ in range(args.steps + 1):
            t0 = time.perf_counter()
            t.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rate = statistics.median(times[1:])
        params = sum(p.numel() for p in t.model.parameters())
        rows.append((name, f"{params:,}", t.model.image_size, f"{times[0]:.2f}", f"{rate:.2f}", f"{spec.steps:,}",
                     f"{rate * spec.steps / 3600:,.1f}"))  # fmt: skip
        print(f"{name}: {rate:.2f} s/step", file=sys.stderr, flush=True)
    print(f"recipe {args.recipe}, batch {args.batch}, {device.type}, {args.threads} threads")
    headers = ["model", "params", "input", "first step s", "s/step", "recipe steps", "hours at this rate"]
    print(tabulate(rows, headers=headers, disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
