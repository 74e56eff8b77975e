"""The leaderboard's statistics: a seeded percentile bootstrap of the mean over seeds, paired comparisons over
common seeds, and ranks (mean rank, Borda count) across tasks."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

RESAMPLES = 10_000
LEVEL = 0.95
SEED = 0
MIN_PAIRED = 3  # common seeds a paired comparison needs (with 2, the bootstrap interval is the two differences)

METHOD_NOTE = (
    f"**Statistics.** A cell is the mean ± sample standard deviation (ddof 1) over its successful seeds (n). Its "
    f"{LEVEL:.0%} confidence interval is a percentile bootstrap of the mean: {RESAMPLES:,} resamples of the seeds "
    f"with replacement, drawn by numpy's `default_rng({SEED})` (so the page is reproducible), the "
    f"{(1 - LEVEL) / 2:.1%} and {(1 + LEVEL) / 2:.1%} percentiles of the resampled means; none with one seed. With "
    "few seeds the interval is optimistic (with 2 seeds it spans the two values). Paired comparisons: a task's best "
    "row against each of the next ones, on the seeds both have; the difference's mean and the same bootstrap over "
    "the per-seed differences. Two rows are distinguishable when that interval excludes 0; with fewer than "
    f"{MIN_PAIRED} common seeds they are not tested. **Ranks.** On each task, the rows with a value are ranked by the task's main metric "
    "in its direction (ties share the average rank). Mean rank: the mean over the suite's tasks; Borda count: the "
    "sum over tasks of the number of rows ranked below (ties count half). A method missing tasks is ranked only on "
    "the tasks it has and listed after the complete ones, marked with how many it has: its mean rank is over fewer "
    "tasks and not comparable."
)


@lru_cache(maxsize=64)
def _indices(n: int) -> np.ndarray:
    """The (RESAMPLES, n) resampling indices for n values: one seeded draw per n, the same for every cell."""
    return np.random.default_rng(SEED).integers(0, n, size=(RESAMPLES, n))


def bootstrap_ci(values) -> tuple[float, float] | None:
    """The LEVEL percentile-bootstrap interval of the mean of `values`; None for fewer than 2."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    means = values[_indices(len(values))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Paired:
    """`a` minus `b` over their common seeds, oriented so that a positive mean means `a` is better."""

    a: str
    b: str
    n: int
    mean: float | None
    ci: tuple[float, float] | None

    @property
    def distinguishable(self) -> bool | None:
        """True/False: the interval excludes / includes 0; None: not tested (fewer than MIN_PAIRED common seeds)."""
        return None if self.ci is None else not (self.ci[0] <= 0 <= self.ci[1])

    def text(self) -> str:
        if self.ci is None:
            return f"{self.a} vs {self.b}: not tested ({self.n} common seed{'s' * (self.n != 1)})"
        verdict = "distinguishable" if self.distinguishable else "**not distinguishable**"
        return (
            f"{self.a} vs {self.b}: difference {self.mean:+.2f} [{self.ci[0]:+.2f}, {self.ci[1]:+.2f}] over "
            f"{self.n} common seeds: {verdict}"
        )


def paired(a: str, a_values: dict[int, float], b: str, b_values: dict[int, float], higher: bool) -> Paired:
    """Compare two rows on the seeds both have (seed -> value); the difference is a − b, negated where lower is
    better."""
    seeds = sorted(set(a_values) & set(b_values))
    sign = 1.0 if higher else -1.0
    diffs = np.array([sign * (a_values[s] - b_values[s]) for s in seeds])
    ci = bootstrap_ci(diffs) if len(seeds) >= MIN_PAIRED else None
    return Paired(a, b, len(seeds), float(diffs.mean()) if len(seeds) else None, ci)


def ranks(values: pd.DataFrame, higher: dict[str, bool]) -> pd.DataFrame:
    """Per task (column) rank of each row (index) with a value, 1 the best; ties share the average rank."""
    return pd.DataFrame(
        {task: values[task].rank(ascending=not higher[task], method="average") for task in values.columns},
        index=values.index,
    )


def borda(rank: pd.DataFrame) -> pd.Series:
    """Sum over tasks of the rows ranked below each row, ties counting half: with average ranks that is, per task,
    (rows with a value) − rank."""
    return (rank.notna().sum() - rank).sum(axis=1, min_count=1)
