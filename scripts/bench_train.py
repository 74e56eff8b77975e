#!/usr/bin/env python
"""Does a `bench train` recipe learn? Train it, then score its weights against the same architecture's random init.

    python scripts/bench_train.py [--method procedural_dino] [--recipe tiny] [--steps N]
                                  [--tasks flowers102_knn,voc_hummingbird] [--weights-root DIR] [--out table.md]

Runs `bench train` (local backend) into a weights root of its own (kept, or --weights-root), then every task on
procedural data twice: with the trained weights (`--weights RECIPE`) and without (a seeded random init of the recipe's
variant). Prints the loss curve's start and end, seconds per step, and each task's main metric for both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness import specs  # noqa: E402


def bench(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="procedural_dino")
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--steps", default=None)
    ap.add_argument("--tasks", default="flowers102_knn,voc_hummingbird")
    ap.add_argument("--weights-root", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    root = args.weights_root or Path(tempfile.mkdtemp(prefix="bench-train-"))
    t0 = time.perf_counter()
    extra = ("--steps", args.steps) if args.steps else ()
    bench(
        "train", "--method", args.method, "--recipe", args.recipe, "--weights-root", str(root), "--no-progress", *extra
    )
    wall = time.perf_counter() - t0
    record = json.loads(max(root.glob("trained/*/training.json"), key=lambda p: p.stat().st_mtime).read_text())
    losses = [loss for _, loss in record["losses"]]
    k = max(1, len(losses) // 10)
    rows = [
        ("trained", record["method"], f"{record['steps']} steps, {record['wall_s']:.0f} s in the method session "
         f"({record['wall_s'] / record['steps']:.2f} s/step), {wall:.0f} s with start-up"),
        ("loss", f"mean of the first {k}: {sum(losses[:k]) / k:.4f}", f"mean of the last {k}: {sum(losses[-k:]) / k:.4f}"),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-train-results-") as results:
        for task in args.tasks.split(","):
            scores = []
            for weights in (("--weights", args.recipe), ()):
                run = ("run", "--method", record["method"], "--task", task, "--data", "synthetic", "--results",
                       results, "--weights-root", str(root), "--no-progress", "--force", *weights)  # fmt: skip
                bench(*run)
                found = sorted(Path(results).rglob("seed0.json"), key=lambda p: p.stat().st_mtime)[-1]
                result = json.loads(found.read_text())
                main_metric = specs.get("task", task).protocol_class.main_metric
                scores.append(f"{main_metric} {result['metrics'][main_metric]:.2f}")
            rows.append((task, f"trained: {scores[0]}", f"random init: {scores[1]}"))
    text = tabulate(rows, headers=["", "", ""], tablefmt="github")
    print(text)
    print(f"weights: {root}")
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
