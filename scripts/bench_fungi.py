#!/usr/bin/env python
"""Time and peak memory of dense FUNGI at 512² on CPU: ours (images/fungi, per-token gradients projected in token
chunks) against the reference's route (fungi-hummingbird `combined_token_features`: autograd_hacks.compute_grad1's
(B, T, E, E + 1) per-token gradients, then `projection @ grads.T`), at equal batch size, each in its own process.

    python scripts/bench_fungi.py [--ref DIR] [--dino DIR] [--images 2] [--size 512] [--bank 10240] [--repeat 2]

Each route runs in a fresh subprocess (`--route ours|ref`), so its peak RSS (getrusage ru_maxrss) is its own. Both
get the same random weights (seeded), the same random L2-normalised support bank of `--bank` rows searched by our
exact top-5 (the reference through the `search_batched` wrapper of scripts/compare_fungi.py), `--images` seeded
uint8 images at `--size`, in one batch (ours: chunks of 4; the reference: one call). Per image = the fastest of
`--repeat` calls / images. Peak RSS is the process's whole peak; "over setup" subtracts the RSS before the first
call (model, P, bank: the same in both). The reference runs as is (float16 loss; autocast and bf16 off, as on CPU).
Prints a table with ours / reference ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_route(args) -> dict:
    import compare_fungi as cf

    sys.path[:0] = [str(REPO / "images" / "fungi"), str(REPO / "images" / "_vit")]
    from adapter import Fungi

    official = cf.official_vit(Path(args.dino), 0)
    queries = cf.images(args.images, args.size, 2)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BENCH_WEIGHTS"] = path = os.path.join(tmp, "dino_deitsmall16_pretrain.pth")
        torch.save(official.state_dict(), path)
        ours = Fungi()
        ours.setup(0, {"name": "voc_hummingbird", "version": "1", "output": "dense", "seed": 0})
    bank = torch.nn.functional.normalize(
        torch.randn(args.bank, 384, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    ours.dense.add_support(bank[None])
    ours.dense.build_index()
    if args.route == "ours":
        del official

        def call():
            return ours.embed_dense(queries)
    else:
        from collections import OrderedDict
        from types import SimpleNamespace

        folder = cf.reference_folder(args.ref)
        fn, ref = cf.load_reference(folder, {})
        model = torch.nn.Sequential(OrderedDict([("backbone", official), ("fc", torch.nn.Linear(384, 96))]))
        paths = ref.autograd_hacks.preprocess_layer_paths(paths=[cf.LAYER])
        fn.__globals__.update(
            args=SimpleNamespace(
                use_fp16=False, num_negative_neighbors=2, negative_batch_percent=0.5, gradients_layer=cf.LAYER
            ),
            device=torch.device("cpu"),
            memory=ours.dense.bank,
            voc_index=cf.ExactIndex(ours.dense.index),
            projection=ours.dense.projection,
            scaling=ref.compression.suggested_scaling_factor(projection_dim=384),
            scaler=torch.cuda.amp.GradScaler(enabled=False),
            gradient_paths=paths,
        )
        ref.autograd_hacks.add_hooks(model, layer_paths=paths)
        x = cf.normalised(queries)
        ours.model = ours.dense.model = None  # our backbone is not needed by the reference route

        def call():
            out = fn(model, x)[0].detach()
            official.zero_grad(set_to_none=True)
            return out

    before = rss_mb()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return dict(
        route=args.route,
        per_image_s=min(times) / args.images,
        peak_mb=peak_mb(),
        over_setup_mb=peak_mb() - before,
        threads=torch.get_num_threads(),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="/tmp/fungi_ref")
    parser.add_argument("--dino", default="/tmp/bb_refs/dino")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--bank", type=int, default=10240)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--route", choices=("ours", "ref"), help="internal: run one route and print JSON")
    args = parser.parse_args(argv)
    if args.route:
        print(json.dumps(run_route(args)))
        return 0
    results = {}
    for route in ("ours", "ref"):
        cmd = [sys.executable, __file__, "--route", route] + [
            f"--{k}={getattr(args, k)}" for k in ("ref", "dino", "images", "size", "bank", "repeat")
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[route] = json.loads(out.strip().splitlines()[-1])
        print(results[route], flush=True)
    ours, ref = results["ours"], results["ref"]
    print()
    print(f"dense FUNGI, {args.images} images of {args.size}², bank {args.bank} rows, {ours['threads']} threads")
    print("| route | s / image | peak RSS (MB) | peak over setup (MB) |")
    print("|---|---|---|---|")
    for name, r in (("ours (token-chunked projection)", ours), ("reference (compute_grad1 + P @ vec)", ref)):
        print(f"| {name} | {r['per_image_s']:.2f} | {r['peak_mb']:.0f} | {r['over_setup_mb']:.0f} |")
    print(
        f"| ratio ours / reference | {ours['per_image_s'] / ref['per_image_s']:.2f} "
        f"({ref['per_image_s'] / ours['per_image_s']:.1f}× faster) | {ours['peak_mb'] / ref['peak_mb']:.2f} "
        f"| {ours['over_setup_mb'] / max(ref['over_setup_mb'], 1e-9):.2f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
