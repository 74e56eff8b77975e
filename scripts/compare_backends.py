"""The in-process backend and harness.evaluate against the local backend, on every smoke task: equal metrics, and
what each costs.

For each task of a suite (default: smoke) and one method (default: pixels), runs the cell three ways, interleaved
(local, inprocess, evaluate): `bench run --backend local` (the adapter as a subprocess, over the contract socket),
`--backend inprocess` (the adapter's Method called inside the harness) and `harness.evaluate(Method(), task)`, all
on procedural data with --force. Prints a table of wall seconds, the in-process / local ratio and whether the three
sets of metrics are identical; exits 1 if any differ.

    python scripts/compare_backends.py [--suite smoke] [--method pixels] [--data-root DIR] [--tasks a,b]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tabulate import tabulate  # noqa: E402

import harness  # noqa: E402
from harness import specs  # noqa: E402
from harness.results import ResultStore  # noqa: E402
from harness.run import RunOptions, run_cell  # noqa: E402
from harness.runners import get_runner  # noqa: E402
from harness.runners.inprocess import load_adapter  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="smoke")
    p.add_argument("--method", default="pixels")
    p.add_argument("--tasks", default=None, help="comma-separated (default: the suite's)")
    p.add_argument("--data-root", type=Path, default=Path(os.environ.get("BENCH_DATA", "data")))
    args = p.parse_args()
    method = specs.get("method", args.method)
    tasks = args.tasks.split(",") if args.tasks else specs.get("suite", args.suite).tasks
    rows, differ = [], 0
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        store = ResultStore(tmp)
        for name in tasks:
            task = specs.get("task", name)
            if task.output not in method.outputs:
                continue
            walls, metrics = {}, {}
            for how in ("local", "inprocess", "evaluate"):
                t0 = time.perf_counter()
                if how == "evaluate":
                    result = harness.evaluate(
                        load_adapter(method), task, data_root=args.data_root, results=tmp, force=True, num_workers=2
                    )
                else:
                    opts = RunOptions(backend=how, synthetic=True, data_root=args.data_root, force=True, progress=False)
                    result = run_cell(method, task, 0, opts, store, get_runner(how))
                walls[how] = time.perf_counter() - t0
                metrics[how] = result.metrics if result.status == "ok" else result.error
            same = metrics["local"] == metrics["inprocess"] == metrics["evaluate"]
            differ += not same
            main_metric = next(iter(metrics["local"].items())) if isinstance(metrics["local"], dict) else ("-", 0)
            rows.append(
                (
                    name,
                    f"{main_metric[0]}={main_metric[1]:.4f}",
                    f"{walls['local']:.1f}",
                    f"{walls['inprocess']:.1f}",
                    f"{walls['evaluate']:.1f}",
                    f"{walls['inprocess'] / walls['local']:.2f}",
                    "yes" if same else f"NO: {metrics}",
                )
            )
    print(
        tabulate(
            rows,
            headers=[
                "task",
                "first metric (local)",
                "local s",
                "inprocess s",
                "evaluate s",
                "inprocess / local",
                "identical",
            ],
            tablefmt="github",
            disable_numparse=True,
        )
    )
    print(f"{len(rows)} tasks, {differ} with differing metrics", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
