"""vrbench: a containerized benchmark harness for visual representation learning.

The package reads as the pipeline: specs -> data -> runners/contract -> protocols -> results -> leaderboard.
"""

import os

__version__ = "0.1.0"

# OpenMP threads that busy-wait make faiss (and torch) several times slower on a shared 2-core machine;
# this must be set before either library starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
