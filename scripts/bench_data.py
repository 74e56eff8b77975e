"""Benchmark of the data loading paths (not a test): images/s with 0/1/2 loader workers, and peak memory.

    .venv/bin/python scripts/bench_data.py [--data-root DIR] [--workers 0,1,2] [--limit N]

Rows, each measured in a fresh process on the `small` procedural stand-ins (generated first if absent):
  hbird eval   VOC val: JPEG + palette PNG decode, squash to 512, mask nearest (HummingBird queries)
  hbird train  VOC trainaug: decode + colour jitter + RandomResizedCrop to 512, mask nearest (HummingBird memory)
  clevrtex 128 ClevrTex train: RGBA PNG + flat mask, centre crop 192, resize to 128 (only when a
               'clevrtex_full' reader is registered; skipped with the reason otherwise)
Peak RSS is the process's own and its largest loader worker's, from resource.getrusage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from tabulate import tabulate

from harness.data import DATASETS, open_dataset
from harness.data.base import Split
from harness.data.loader import iter_batches
from harness.data.transforms import resize_mask_nearest, squash_resize
from harness.protocols.hummingbird import load_eval_sample, load_train_sample

HBIRD_SIZE, PATCH, BATCH = 512, 16, 8
CLEVRTEX_READER, CLEVRTEX_CROP, CLEVRTEX_SIZE = "clevrtex_full", 192, 128


def load_clevrtex_128(split: Split, i: int) -> tuple[np.ndarray, np.ndarray]:
    """The object-segmentation preprocessing: centre square crop of side 0.8·min(H, W) (192 for 320×240), then
    128×128, bilinear image and nearest mask. Hook: swap in the objseg protocol's own load function once it exists."""
    image, mask = split.image(i), split.mask(i)
    height, width = mask.shape
    side = int(0.8 * min(height, width))
    top, left = (height - side) // 2, (width - side) // 2
    crop = (slice(top, top + side), slice(left, left + side))
    return squash_resize(image[crop], CLEVRTEX_SIZE), resize_mask_nearest(mask[crop], CLEVRTEX_SIZE)


def _hbird_train(split: Split):
    ids = np.arange(len(split))
    return partial(load_train_sample, split, ids, HBIRD_SIZE, 0, 0, (HBIRD_SIZE // PATCH) ** 2)


# row -> (dataset, split, load function factory)
PATHS = {
    "hbird eval": ("voc", "val", lambda split: partial(load_eval_sample, split, HBIRD_SIZE)),
    "hbird train": ("voc", "trainaug", _hbird_train),
    "clevrtex 128": (CLEVRTEX_READER, "train", lambda split: partial(load_clevrtex_128, split)),
}


def measure(path: str, workers: int, data_root: Path, limit: int | None) -> dict:
    """One full pass of a loading path in this process: images, seconds, peak RSS (MiB) of it and its workers."""
    dataset, split_name, make_load = PATHS[path]
    split = open_dataset(dataset, data_root, synthetic=True, scale="small").split(split_name)
    n = min(len(split), limit or len(split))
    start, seen = time.perf_counter(), 0
    for batch in iter_batches(n, make_load(split), BATCH, workers, path, progress=False):
        seen += len(batch[0])
    seconds = time.perf_counter() - start
    kib = {who: resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)}
    return {
        "images": seen,
        "seconds": seconds,
        "rss_main": kib[resource.RUSAGE_SELF] / 1024,
        "rss_worker": kib[resource.RUSAGE_CHILDREN] / 1024 if workers else None,
    }


def _row_in_fresh_process(path: str, workers: int, data_root: Path, limit: int | None) -> dict:
    command = [sys.executable, __file__, "--row", path, "--workers", str(workers), "--data-root", str(data_root)]
    proc = subprocess.run(command + (["--limit", str(limit)] if limit else []), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{path} with {workers} workers failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("BENCH_DATA", "data")))
    parser.add_argument("--workers", default="0,1,2", help="comma-separated loader worker counts")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per pass")
    parser.add_argument("--row", choices=list(PATHS), help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.row:
        print(json.dumps(measure(args.row, int(args.workers), args.data_root, args.limit)))
        return

    rows = []
    for path, (dataset, _, _) in PATHS.items():
        if dataset not in DATASETS:
            print(f"skipped '{path}': no '{dataset}' reader is registered in harness.data.DATASETS", file=sys.stderr)
            continue
        open_dataset(dataset, args.data_root, synthetic=True, scale="small")  # generate before timing
        for workers in (int(w) for w in args.workers.split(",")):
            r = _row_in_fresh_process(path, workers, args.data_root, args.limit)
            rows.append(
                (
                    path,
                    workers,
                    r["images"],
                    f"{r['seconds']:.1f}",
                    f"{r['images'] / r['seconds']:.1f}",
                    f"{r['rss_main']:.0f}",
                    "" if r["rss_worker"] is None else f"{r['rss_worker']:.0f}",
                )
            )
    print(
        tabulate(
            rows,
            headers=["path", "workers", "images", "seconds", "images/s", "peak RSS MiB", "largest worker MiB"],
            tablefmt="github",
            disable_numparse=True,
        )
    )
    print(f"\n{os.cpu_count()} CPUs; batch {BATCH}; `small` procedural stand-ins under {args.data_root}/_synthetic")


if __name__ == "__main__":
    main()
