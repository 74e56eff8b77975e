"""vrbench: a containerized benchmark harness for visual representation learning.

The package reads as the pipeline: specs -> data -> runners/contract -> protocols -> results -> leaderboard.
"""

import os
from pathlib import Path

__version__ = "0.1.0"
REPO_ROOT = Path(__file__).resolve().parent.parent  # where images/, benchmarks/ and leaderboard/ are

# OpenMP threads that busy-wait make faiss (and torch) several times slower on a shared 2-core machine;
# this must be set before either library starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def __getattr__(name: str):
    """`harness.evaluate(method, task, ...)`: imported on first use, so that `import harness.errors` stays light."""
    if name == "evaluate":
        from harness.run import evaluate

        return evaluate
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
