"""The whole leaderboard of a set of results, built once for every page: cells, task tables, suite summaries and
failures."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.leaderboard.catalog import Catalog
from harness.leaderboard.frame import Cell, TaskTable, cells_of, records, task_tables
from harness.leaderboard.summary import Summary, summaries
from harness.results import RunResult


@dataclass
class Board:
    cells: list[Cell]
    tables: list[TaskTable]
    summaries: list[Summary]
    failures: list[dict[str, str]]  # free text not yet escaped
    suites: dict[str, list[str]]  # task -> the suites it is in
    records: list[dict] = field(repr=False)


FAILURE_COLUMNS = ("data", "task", "method", "ref", "seed", "status", "error", "file")


def build(results: list[RunResult], files: list[str] | None = None) -> Board:
    """The leaderboard of `results`; `files`: the link to each result's file (default results/<its key's path>)."""
    files = files or [f"results/{r.key.relpath()}" for r in results]
    sp = Catalog()
    rows = records(results, files)
    cells = cells_of(rows, sp)
    tables = task_tables(cells, sp)
    failed = sorted((r for r in rows if r["status"] != "ok"), key=lambda r: tuple(r[k] for k in FAILURE_COLUMNS))
    failures = [{k if k != "error" else "reason": str(r[k]) for k in FAILURE_COLUMNS} for r in failed]
    suites = {t.task: [s.name for s in sp.suites if t.task in s.tasks] for t in tables}
    return Board(cells, tables, summaries(tables, sp), failures, suites, rows)
