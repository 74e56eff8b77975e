"""Time a 2 methods x 2 tasks matrix (pixels, random_vit x flowers102_knn, medmnist_blood_knn; procedural data) run
locally and through Slurm (`bench matrix --executor slurm`, on the cluster scripts/slurm.sh starts), and each Slurm
job's overhead: its queue wait (submitted -> started) and its time outside the cell (started -> ended, less the
cell's own total_s). Prints a table.

    python scripts/bench_slurm.py [--methods pixels,random_vit] [--tasks flowers102_knn,medmnist_blood_knn]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent


def bench(*args: str, env: dict) -> float:
    """Run `bench ARGS`, return its wall time; exit with its stderr if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", *args], env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"bench {' '.join(args)} failed:\n{proc.stderr}")
    return time.perf_counter() - t0


def job_times(results: Path) -> list[tuple[str, float, float]]:
    """Per recorded job: its id, queue wait and time outside the cell (s), from squeue's times and the result."""
    (record,) = (results / ".slurm").glob("*.json")
    cells = json.loads(record.read_text())["cells"]
    listing = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%V|%S|%e"], capture_output=True, text=True)
    times = {job: [dt.datetime.fromisoformat(t) for t in ts] for job, *ts in (x.split("|") for x in listing.stdout.split())}  # fmt: skip
    out = []
    for rel, cell in cells.items():
        submitted, started, ended = times[cell["jobs"][-1]]
        total = json.loads((results / rel).read_text())["timings"]["total_s"]
        out.append((cell["jobs"][-1], (started - submitted).total_seconds(), (ended - started).total_seconds() - total))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="pixels,random_vit")
    parser.add_argument("--tasks", default="flowers102_knn,medmnist_blood_knn")
    args = parser.parse_args()
    subprocess.run(["bash", str(REPO / "scripts" / "slurm.sh")], check=True)
    with tempfile.TemporaryDirectory(dir=REPO / ".cache" if (REPO / ".cache").is_dir() else None) as tmp:
        tmp = Path(tmp)
        (tmp / "suites").mkdir()
        (tmp / "suites" / "bench2x2.yaml").write_text(
            f"name: bench2x2\ndescription: x\ntasks: [{args.tasks}]\nmethods: [{args.methods}]\nseeds: [0]\n"
            "data: synthetic\n"
        )
        env = dict(os.environ, BENCH_BENCHMARKS=f"{tmp}{os.pathsep}{REPO / 'benchmarks'}", BENCH_SLURM_POLL_S="0.5")
        common = ["matrix", "--suite", "bench2x2", "--data-root", str(tmp / "data"), "--no-progress"]
        bench(*common, "--results", str(tmp / "warm"), env=env)  # data made, caches warm: neither run pays for it
        local = bench(*common, "--results", str(tmp / "local"), env=env)
        slurm = bench(*common, "--results", str(tmp / "slurm"), "--executor", "slurm", env=env)
        jobs = job_times(tmp / "slurm")
        cpu = [json.loads(p.read_text())["timings"]["total_s"] for p in (tmp / "local").rglob("seed*.json")]
    n = len(jobs)
    rows = [
        ("local executor (one process, cells in turn)", f"{local:.1f}", f"{sum(cpu):.1f} s in cells"),
        ("slurm executor (jobs, 2 CPUs: 2 at a time)", f"{slurm:.1f}", f"{n} jobs, {slurm / local:.2f}x local"),
        (
            "per job: queue wait, median",
            f"{statistics.median(j[1] for j in jobs):.1f}",
            "submitted -> started (1 s steps)",
        ),  # fmt: skip
        (
            "per job: outside the cell, median",
            f"{statistics.median(j[2] for j in jobs):.1f}",
            "started -> ended, less total_s",
        ),  # fmt: skip
    ]
    print(f"{args.methods} x {args.tasks}, procedural data, load average {os.getloadavg()[0]:.1f}")
    print(tabulate(rows, headers=["run", "wall s", "note"], tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
