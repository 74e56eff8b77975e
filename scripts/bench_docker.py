#!/usr/bin/env python3
"""What the docker backend costs: one cell run with the local and the docker backend, wall time of each, the ratio
(target: docker / local <= 1.03 for a cell of a minute or more) and the transport throughput.

    .venv/bin/python scripts/bench_docker.py [--method pixels] [--task voc_hummingbird] [--scale small] [--repeats 2]
                                             [--stdio]

The default cell is pixels x voc_hummingbird on the `small` procedural VOC (1,400 images of 512x512 sent), about
five minutes on two cores. Both backends move the batches over the contract socket; `--stdio` adds a docker arm that
keeps them on the container's attach stream (BENCH_TRANSPORT=stdio), to show what the socket saves. Runs alternate
local, docker, docker, local, ... (ABBA) so that drift in the machine's load hits every arm alike; ratios are of
the medians. The image is built (or found) before timing starts. Results go to
a temporary folder, never to the leaderboard. Needs `make services base-image`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabulate import tabulate  # noqa: E402

from harness import specs  # noqa: E402
from harness.data import DATASETS, synthetic_root  # noqa: E402
from harness.results import ResultStore  # noqa: E402
from harness.run import RunOptions, run_cell  # noqa: E402
from harness.runners.images import BASE_ENV, resolve_method  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="pixels")
    p.add_argument("--task", default="voc_hummingbird")
    p.add_argument("--scale", default="small", choices=["tiny", "small"], help="procedural stand-in size")
    p.add_argument("--repeats", type=int, default=2, help="runs per backend (default 2)")
    p.add_argument("--stdio", action="store_true", help="add a docker arm that keeps the contract on stdio")
    p.add_argument("--data-root", type=Path, default=Path(os.environ.get("BENCH_DATA", "data")))
    args = p.parse_args()
    os.environ.setdefault(BASE_ENV, "vrbench/base:bookworm")

    method, task = specs.get("method", args.method), specs.get("task", args.task)
    # the stand-in at the chosen scale, read as a dataset root of its own (run_cell's procedural data is `tiny`)
    reader = DATASETS[task.dataset]
    home = synthetic_root(reader, args.data_root, args.scale, 0).parents[len(Path(reader.subdir).parts) - 1]
    image = resolve_method(method)
    print(
        f"cell: {method.name} x {task.name}, procedural {args.scale} ({home}); image {image.ref[:19]}", file=sys.stderr
    )

    arms = {"local": ("local", None), "docker": ("docker", None)}
    if args.stdio:
        arms["docker, stdio"] = ("docker", "stdio")
    order = [a for i in range(args.repeats) for a in (list(arms) if i % 2 == 0 else reversed(arms))]
    runs: dict[str, list] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="bench-docker-") as tmp:
        for arm in order:
            backend, transport = arms[arm]
            os.environ.pop("BENCH_TRANSPORT", None)
            if transport:
                os.environ["BENCH_TRANSPORT"] = transport
            opts = RunOptions(backend=backend, data_root=home, force=True, progress=False)
            t0 = time.perf_counter()
            result = run_cell(method, task, 0, opts, ResultStore(tmp))
            wall = time.perf_counter() - t0
            if result.status != "ok":
                print(f"{arm}: {result.status}: {result.error}", file=sys.stderr)
                return 1
            runs[arm].append((wall, result))

    rows = []
    for arm, done in runs.items():
        for wall, r in done:
            t = r.timings
            rows.append(
                (
                    arm,
                    r.provenance.method_info.get("transport", "stdio"),
                    f"{wall:.1f}",
                    f"{t.total_s:.1f}",
                    f"{t.method_s:.1f}",
                    t.images_sent,
                    f"{t.bytes_sent / 1e6:.0f}",
                    f"{t.images_sent / t.method_s:.1f}",
                    f"{t.bytes_sent / 1e6 / t.method_s:.1f}",
                    ", ".join(f"{k}={v:.2f}" for k, v in r.metrics.items()),
                )
            )
    print(
        tabulate(
            rows,
            headers=[
                "arm",
                "transport",
                "wall s",
                "cell s",
                "method s",
                "images",
                "MB sent",
                "images/s",
                "MB/s",
                "metrics",
            ],
            tablefmt="github",
            disable_numparse=True,
        )
    )
    median = {arm: statistics.median(w for w, _ in done) for arm, done in runs.items()}
    same = all(r.metrics == runs["local"][0][1].metrics for done in runs.values() for _, r in done)
    print("\nmedian wall: " + ", ".join(f"{arm} {m:.1f}s" for arm, m in median.items()))
    for arm in list(arms)[1:]:
        print(
            f"ratio {arm} / local: {median[arm] / median['local']:.3f}"
            + (" (target <= 1.03)" if arm == "docker" else "")
        )
    print(f"metrics identical across arms: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
