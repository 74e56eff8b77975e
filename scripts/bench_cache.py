#!/usr/bin/env python
"""What the feature cache saves and costs (README, "Feature cache"), on procedural data with the local backend.

    python scripts/bench_cache.py [--tasks voc_hummingbird,flowers102_knn,...] [--seeds 0,1,2] [--out table.md]

`dino` (ViT-S/16, `seed_independent: true`) with a weights file this script makes (timm's ViT-S/16 at a seeded
random init, saved in the official backbone format, its sha256 given to the spec as a published one would be):
1. seeds: every task x seed without the cache (--no-cache), then with a cold cache; per cell the method's time and
   the requests the cache answered; the total method time with the cache against without (the second and third
   seeds should cost only what differs, HummingBird's augmented memory passes);
2. sharing: `imagenette_knn`, then `imagenette_linear_probe` as defined (it squashes, kNN centre-crops: other
   bytes) and with `--set preprocess=resize_crop` (the same bytes): the images each sends to the method;
3. the cache's own cost on the cold runs (timings.cache_s against the cell's wall time), and the wall time of the
   cold cached runs against the uncached ones;
4. disk bytes per cached image, per output kind.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness import specs  # noqa: E402
from harness.cache import FeatureCache, cache_root  # noqa: E402
from harness.provenance import file_sha256  # noqa: E402
from harness.results import ResultStore, RunResult  # noqa: E402
from harness.run import RunOptions, run_cell  # noqa: E402
from harness.specs import WeightsSource  # noqa: E402

DEFAULT_TASKS = "voc_hummingbird,voc_overcluster,voc_linear_seg,coco_r2,flowers102_knn,imagenette_knn"


def dino_with_weights(root: Path) -> specs.MethodSpec:
    """`dino` with a ViT-S/16 backbone file of seeded random weights under `root`, declared with its sha256."""
    import timm
    import torch

    spec = specs.get("method", "dino")
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    path = root / "dino" / spec.weights.file
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    weights = WeightsSource(file=spec.weights.file, url=spec.weights.url, sha256=file_sha256(path))
    return spec.model_copy(update={"weights": weights, "weights_root": root})


def run(method, task: str, seed: int, store: ResultStore, cache: bool, **overrides) -> RunResult:
    opts = RunOptions(synthetic=True, progress=False, cache=cache, force=True, num_workers=2)
    result = run_cell(method, specs.get("task", task).with_overrides(overrides), seed, opts, store)
    if result.status != "ok":
        raise SystemExit(f"{task} seed {seed}: {result.status}: {result.error}")
    return result


def cache_bytes(store: ResultStore) -> int:
    return sum(e.bytes for e in FeatureCache(cache_root(store.root)).entries())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=None, help="also write the tables here (markdown)")
    args = ap.parse_args()
    tasks, seeds = args.tasks.split(","), [int(s) for s in args.seeds.split(",")]
    out: list[str] = []

    def show(title: str, rows: list, headers: list[str]) -> None:
        text = f"\n## {title}\n\n" + tabulate(rows, headers=headers, tablefmt="github", floatfmt=".2f")
        print(text, flush=True)
        out.append(text)

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        tmp = Path(tmp)
        dino = dino_with_weights(tmp / "weights")
        plain, cached = ResultStore(tmp / "plain" / "results"), ResultStore(tmp / "cached" / "results")
        os.environ.pop("BENCH_CACHE", None)  # each store's cache beside it: tmp/cached/feature-cache
        rows, per_image = [], {}
        totals = {"plain_method": 0.0, "cached_method": 0.0, "plain_wall": 0.0, "cold_wall": 0.0, "cache_s": 0.0}
        for task in tasks:
            kind = specs.get("task", task).output
            for seed in seeds:
                a = run(dino, task, seed, plain, cache=False)
                before = cache_bytes(cached)
                b = run(dino, task, seed, cached, cache=True)
                if seed == seeds[0]:  # the cold run: every request went to the method
                    per_image.setdefault(kind, []).append((cache_bytes(cached) - before, b.timings.images_sent))
                    totals["plain_wall"] += a.timings.total_s
                    totals["cold_wall"] += b.timings.total_s
                    totals["cache_s"] += b.timings.cache_s
                totals["plain_method"] += a.timings.method_s
                totals["cached_method"] += b.timings.method_s
                requests = b.timings.cached_requests
                rows.append(
                    (task, seed, a.timings.method_s, b.timings.method_s, requests, b.timings.images_sent,
                     a.timings.total_s, b.timings.total_s, a.metrics == b.metrics)
                )  # fmt: skip
        show(
            "1. dino, three seeds: without the cache vs with it (cold at the first seed)",
            rows,
            ["task", "seed", "method s (no cache)", "method s (cache)", "hits", "images sent (cache)",
             "wall s (no cache)", "wall s (cache)", "metrics equal"],
        )  # fmt: skip
        ratio = totals["cached_method"] / totals["plain_method"]
        show(
            "totals",
            [
                ("method time, all seeds: cache / no cache", f"{totals['cached_method']:.1f} / "
                 f"{totals['plain_method']:.1f} s = {100 * ratio:.1f}%"),
                ("cold runs: cache's own time / wall", f"{totals['cache_s']:.2f} / {totals['cold_wall']:.1f} s = "
                 f"{100 * totals['cache_s'] / totals['cold_wall']:.2f}%"),
                ("cold runs: wall with cache / without", f"{totals['cold_wall']:.1f} / {totals['plain_wall']:.1f} s = "
                 f"{totals['cold_wall'] / totals['plain_wall']:.3f}"),
            ],
            ["figure", "value"],
        )  # fmt: skip
        show(
            "4. disk bytes per cached image",
            [(k, f"{sum(b for b, _ in v) / max(1, sum(n for _, n in v)):,.0f}", sum(n for _, n in v))
             for k, v in per_image.items()],
            ["output", "bytes per image", "images"],
        )  # fmt: skip

        share = ResultStore(tmp / "share" / "results")
        t0 = time.perf_counter()
        knn = run(dino, "imagenette_knn", 0, share, cache=True)
        defined = run(dino, "imagenette_linear_probe", 0, share, cache=True)
        crop = run(dino, "imagenette_linear_probe", 0, share, cache=True, preprocess="resize_crop")
        show(
            f"2. imagenette_knn, then imagenette_linear_probe ({time.perf_counter() - t0:.0f} s)",
            [
                (name, r.timings.images_sent, r.timings.cached_requests, r.timings.method_s)
                for name, r in (("imagenette_knn", knn), ("imagenette_linear_probe (squash)", defined),
                                ("imagenette_linear_probe --set preprocess=resize_crop", crop))
            ],
            ["task", "images sent to the method", "hits", "method s"],
        )  # fmt: skip
    if args.out:
        args.out.write_text("".join(out).lstrip() + "\n")


if __name__ == "__main__":
    main()
