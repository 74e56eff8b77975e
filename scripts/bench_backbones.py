#!/usr/bin/env python
"""Images per second of the backbone adapters through the harness against a bare timm forward loop.

    python scripts/bench_backbones.py [--images 24] [--batch 8] [--threads N] [--case dino@vits16:512 ...]
                                      [--out table.md]

Cases (default): DINO ViT-S/16 at 512² and DINOv2 ViT-S/14 at 504², the HummingBird resolutions, random weights
(speed does not depend on them). Per case, on the same seeded uint8 batches, after one warm-up batch each:
- bare timm: `timm.create_model(name, img_size=S)` and `forward_features` on batches already normalised on the
  device, under inference_mode: the model's own cost, the ceiling;
- adapter: the adapter's `embed_dense(uint8 batch)` called directly (normalisation, the per-size position
  embedding, the copy back to numpy);
- in-process: the harness's in-process session (`harness.runners.inprocess.InProcessSession`), with the contract's
  reply validation;
- local: the harness's local backend, the adapter as a subprocess speaking the contract (over the Unix socket it
  offers), started by `LocalRunner.start` as `bench run` starts it; start-up and the handshake are not timed.
A row gives images/s and the ratio to bare timm. CUDA when available (synchronised before each clock read), else CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.runners.inprocess import InProcessSession  # noqa: E402
from harness.runners.local import LocalRunner  # noqa: E402
from harness.specs import MethodSpec  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from compare_backbones import load_adapter as adapter  # noqa: E402  (images/<family>/adapter.py as a module)

CLASSES = {"dino": "Dino", "dinov2": "Dinov2", "neco": "Neco"}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, batches) -> float:
    """Images per second of fn over the batches, after one warm-up call."""
    fn(batches[0])
    sync()
    t0 = time.perf_counter()
    for batch in batches:
        fn(batch)
    sync()
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def bare_timm(timm_name: str, module, batches: list[np.ndarray], size: int) -> float:
    """The ceiling: timm's forward_features on batches normalised on the device beforehand."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.create_model(timm_name, pretrained=False, num_classes=0, img_size=size).eval().to(device)
    mean, std = module.MEAN.to(device), module.STD.to(device)
    ready = {id(b): ((torch.from_numpy(b).to(device).permute(0, 3, 1, 2).float() / 255) - mean) / std for b in batches}

    @torch.inference_mode()
    def forward(b):
        return model.forward_features(ready[id(b)])

    return timed(forward, batches)


def bench_case(family: str, variant: str, size: int, n: int, batch: int) -> list[tuple[str, float]]:
    module = adapter(family)
    method = getattr(module, CLASSES[family])(variant=variant)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (min(batch, n - i), size, size, 3), dtype=np.uint8) for i in range(0, n, batch)]
    rows = [("bare timm forward_features", bare_timm(method.arch.timm_name, module, batches, size))]
    method.setup(0, {"name": "bench"})
    rows.append(("adapter embed_dense", timed(method.embed_dense, batches)))
    session = InProcessSession(method)
    session.handshake(0, {"name": "bench"}, None)
    rows.append(("harness in-process session", timed(session.embed_dense, batches)))
    session.shutdown()
    del method, session  # free the models before the subprocess loads its own

    folder = REPO / "images" / family
    spec = MethodSpec(
        name=family,
        version=module.__dict__[CLASSES[family]].version,
        description="bench",
        outputs=["global", "dense"],
        patch_size=module.__dict__[CLASSES[family]].patch_size,
        embed_dim=module.VARIANTS[variant].embed_dim,
        runtime="torch",
        path=folder / "method.yaml",
    )  # built here: the harness does not read the variants/weights mappings of these method.yaml files yet
    os.environ["BENCH_VARIANT"] = variant
    try:
        with LocalRunner().start(spec, 0, {"name": "bench"}, timeout_s=3600) as running:
            rows.append(("harness local backend (subprocess)", timed(running.session.embed_dense, batches)))
    finally:
        del os.environ["BENCH_VARIANT"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--case", action="append", help="FAMILY@VARIANT:SIZE (default dino@vits16:512, dinov2@vits14:504)"
    )
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the local backend's subprocess too
    lines = ["| case | route | images/s | × bare |", "|---|---|---|---|"]
    for case in args.case or ["dino@vits16:512", "dinov2@vits14:504"]:
        name, size = case.rsplit(":", 1)
        family, variant = name.split("@")
        rows = bench_case(family, variant, int(size), args.images, args.batch)
        for route, rate in rows:
            lines.append(f"| {name} {size}² | {route} | {rate:.2f} | {rate / rows[0][1]:.2f} |")
            print(f"{name} {size}: {route} {rate:.2f} images/s", file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    text = "\n".join(
        [
            *lines,
            "",
            f"{device}; {args.images} images in batches of {args.batch}, fp32; torch {torch.__version__}, "
            f"timm {timm.__version__}",
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
