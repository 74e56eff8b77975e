"""The leaderboard: result files (of one folder, or merged from several machines) -> leaderboard/README.md,
index.html and plots/, every page built from the same tables (frame.py) so that they show the same numbers."""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import UserError
from harness.leaderboard import markdown
from harness.leaderboard.board import Board, build
from harness.leaderboard.catalog import Catalog
from harness.leaderboard.frame import weights_column
from harness.leaderboard.markdown import text_cell
from harness.results import ResultStore, RunResult, write_atomic

__all__ = ["Board", "build", "current_task_ref", "load", "main_metric", "render", "text_cell", "weights_column"]


def main_metric(task: str) -> tuple[str | None, bool]:
    """The main metric of a task's protocol and whether higher is better; (None, True) for a task not known here."""
    return Catalog().main_metric(task)


def current_task_ref(task: str) -> str | None:
    """The task_ref (ResultKey.task_ref) the task's spec and evaluator have now; None for a task not known here."""
    return Catalog().current_ref(task)


def render(results: list[RunResult]) -> str:
    """The markdown leaderboard of `results`."""
    return markdown.render(build(results))


def _numbers(r: RunResult) -> tuple:
    return r.status, r.metrics


def load(folders: list[Path], must_exist: bool = True) -> tuple[list[RunResult], list[Path]]:
    """Every result under `folders` (results folders of several machines) with its file: a result found twice
    with the same numbers counts once; the same run key with other numbers is one line naming both files."""
    seen: dict[Path, tuple[RunResult, Path]] = {}
    for folder in folders:
        if must_exist and not Path(folder).is_dir():
            raise UserError("no such results folder (--from)", where=folder)
        store = ResultStore(folder)
        for r in store.all():
            rel, path = r.key.relpath(), store.path(r.key)
            if rel in seen and _numbers(seen[rel][0]) != _numbers(r):
                raise UserError(
                    f"the same run has different numbers in {seen[rel][1]} and {path}: keep the one you trust "
                    "(or re-run it with --force)"
                )
            seen.setdefault(rel, (r, path))
    return [r for r, _ in seen.values()], [p for _, p in seen.values()]


def write(results: list[RunResult], files: list[Path], out: Path) -> tuple[Board, int, int]:
    """Write the markdown to `out`, then index.html and plots/ beside it, each whole or not at all (a full disk
    leaves the old file as it was, and stops there); plots no longer made are removed. The board, the number of
    plots and how many of them were drawn (the others were unchanged). Links to result files are relative to `out`."""
    from harness.leaderboard import page, plots

    board = build(results, [os.path.relpath(f, out.parent) for f in files])
    described = plots.describe(board)
    write_atomic(out, markdown.render(board))
    write_atomic(out.parent / "index.html", page.render(board, sorted(described)))
    return board, len(described), plots.write(described, out.parent / "plots")
