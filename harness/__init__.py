"""vrbench: a containerized benchmark harness for visual representation learning.

The package reads as the pipeline: specs -> data -> runners/contract -> protocols -> results -> leaderboard.
"""

__version__ = "0.1.0"
