"""Suite summaries: per suite and data kind, methods x tasks on each task's main metric, with the mean rank across
tasks and a Borda count."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.leaderboard.catalog import Catalog, Suite
from harness.leaderboard.frame import (
    DATA_KINDS,
    EXTERNAL_MARK,
    MISSING,
    RANDOM_INIT_MARK,
    TIE_MARK,
    UNSANDBOXED_MARK,
    Cell,
    TaskTable,
    number,
)
from harness.leaderboard.stats import borda, ranks


@dataclass
class Summary:
    """One suite on one data kind: methods x tasks on each task's main metric, mean rank and Borda count."""

    suite: str
    description: str
    data: str
    tasks: list[str]  # the suite's tasks with results here
    absent: list[str]  # the suite's tasks without any
    headers: dict[str, str]  # task -> column header
    names: list[str]  # the methods, in the summary's order
    rows: list[dict[str, str]]  # one per method: "#", "method", "mean rank", "Borda" and each task
    links: dict[tuple[str, str], str]  # (method, task) -> the cell id its number comes from
    rank: pd.DataFrame  # methods x tasks, the summary's order; NaN where a method has no value

    @property
    def marks(self) -> set[str]:
        text = " ".join(v for r in self.rows for v in r.values())
        return {m for m in (EXTERNAL_MARK, UNSANDBOXED_MARK, TIE_MARK, RANDOM_INIT_MARK.strip()) if m in text}


def _summary(suite: Suite, data: str, tables: list[TaskTable]) -> Summary | None:
    by_task = {t.task: t for t in tables if t.data == data and t.task in suite.tasks and t.current}
    tasks = [t for t in suite.tasks if t in by_task]
    if not tasks:
        return None
    chosen: dict[tuple[str, str], Cell] = {}
    for task in tasks:
        for c in sorted(by_task[task].current, key=lambda c: (c.n > 0, c.finished)):
            chosen[(c.name, task)] = c  # each method's latest result with a value, else its latest failure
    names = sorted({name for name, _ in chosen})
    values = pd.DataFrame(
        {t: [chosen[(n, t)].mean if (n, t) in chosen else None for n in names] for t in tasks}, index=names, dtype=float
    )
    rank = ranks(values, {t: by_task[t].higher for t in tasks})
    count = values.notna().sum(axis=1)
    order = sorted(names, key=lambda n: (count[n] < len(tasks), -count[n], rank.loc[n].mean(), n))
    points = borda(rank)
    ties = {(cmp.b, t.task): cmp.distinguishable is False for t in by_task.values() for cmp in t.comparisons}
    rows, position = [], 0
    for n in order:
        complete = count[n] == len(tasks)
        position += complete
        row = {
            "#": str(position) if complete else MISSING,
            "method": n + ("" if complete else f" ({count[n]}/{len(tasks)} tasks)"),
            "mean rank": number(rank.loc[n].mean()),
            "Borda": f"{points[n]:g}" if not math.isnan(points[n]) else MISSING,
        }
        for t in tasks:
            c = chosen.get((n, t))
            text = MISSING if c is None else number(c.mean) if c.n else c.status.split("; ", 1)[-1].split(":", 1)[0]
            if c is not None:
                text += f" {EXTERNAL_MARK}" * c.external + f" {UNSANDBOXED_MARK}" * c.unsandboxed
                text += f" {TIE_MARK}" * ties.get((c.method, t), False)
            row[t] = text
        rows.append(row)
    headers = {
        t: f"{t} {by_task[t].metrics[0] if by_task[t].metrics else ''} {'↑' if by_task[t].higher else '↓'}"
        for t in tasks
    }
    return Summary(
        suite.name,
        suite.description,
        data,
        tasks,
        [t for t in suite.tasks if t not in by_task],
        headers,
        order,
        rows,
        {(n, t): c.id for (n, t), c in chosen.items()},
        rank.loc[order],
    )


def summaries(tables: list[TaskTable], sp: Catalog) -> list[Summary]:
    """Per data kind, the suites that declare that kind first, smaller suites first; a suite whose tasks with results
    are all in the summaries before it is left out (its numbers are there), so that `make bench`'s procedural
    results are summarised once, by smoke, and a paper's suite comes before `seeds`."""
    out = []
    for data in DATA_KINDS:
        declared = "real" if data == "real" else "synthetic"
        covered: set[str] = set()
        for suite in sorted(sp.suites, key=lambda s: (s.data != declared, len(s.tasks))):
            s = _summary(suite, data, tables)
            if s is not None and not set(s.tasks) <= covered:
                covered |= set(s.tasks)
                out.append(s)
    return out
