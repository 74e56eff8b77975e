"""The leaderboard's PNG plots (matplotlib, Agg): per task bars with CI whiskers, HummingBird mIoU against memory size
per method, and a rank heat map per suite summary. Each plot is described by plain data first (`describe`); a plot
whose data and code are unchanged is not drawn again (plots/.index.json keeps each one's digest), and many are drawn
on every core."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.leaderboard.board import Board
from harness.leaderboard.frame import Cell
from harness.results import write_atomic

matplotlib.use("Agg")  # no display: figures are only ever saved
HUMMINGBIRD = "voc_hummingbird"  # its @m... variants (and --set memory_size runs) vary only the memory size
DPI = 72
ANNOTATED = 300  # heat maps with at most this many cells print each rank
VERSION = 2  # bump when a drawing changes, so that every plot is drawn again
INDEX = ".index.json"


def _point(label, c: Cell) -> tuple:
    return (label, c.mean, *(c.ci or (None, None)))


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _labels(ax, names: list[str], axis: str, **kw) -> None:
    """Tick labels as plain texts (a third of matplotlib's tick machinery's cost, which dominates small plots)."""
    getattr(ax, f"{axis}axis").set_visible(False)
    transform = ax.get_yaxis_transform() if axis == "y" else ax.get_xaxis_transform()
    for i, name in enumerate(names):
        xy = (-0.01, i) if axis == "y" else (i, -0.01)
        ax.text(*xy, name, transform=transform, ha="right", va="center" if axis == "y" else "top", **kw)


def draw_bars(title: str, xlabel: str, points: list[tuple]) -> bytes:
    """Horizontal bars of the means, a whisker from each interval's low to its high end (none without one)."""
    width = 6 + 0.08 * max(len(p[0]) for p in points)
    fig = Figure(figsize=(width, 0.9 + 0.3 * len(points)))
    fig.subplots_adjust(left=(0.3 + 0.08 * max(len(p[0]) for p in points)) / width, right=0.97)
    ax = fig.subplots()
    y = np.arange(len(points))
    ax.barh(y, [p[1] for p in points], color="#4c78a8")
    ax.hlines(
        y, [p[1] if p[2] is None else p[2] for p in points], [p[1] if p[3] is None else p[3] for p in points], "k"
    )
    ax.set_ylim(len(points) - 0.5, -0.5)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    _labels(ax, [p[0] for p in points], "y")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _png(fig)


def draw_memory(title: str, series: dict[str, list[tuple]]) -> bytes:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name, points in series.items():
        err = [[p[1] - (p[2] if p[2] is not None else p[1]) for p in points]]
        err.append([(p[3] if p[3] is not None else p[1]) - p[1] for p in points])
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=err, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("memory size (patches)")
    ax.set_ylabel("mIoU")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _png(fig)


def draw_ranks(title: str, tasks: list[str], names: list[str], ranks: list[list[float | None]]) -> bytes:
    values = np.array(ranks, dtype=float)
    fig = Figure(figsize=(2.5 + 0.3 * len(tasks), 2 + 0.25 * len(names)))
    fig.subplots_adjust(left=0.25, bottom=0.3, right=0.95)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis_r", aspect="auto")
    _labels(ax, tasks, "x", rotation=60, rotation_mode="anchor", fontsize="small")
    _labels(ax, names, "y", fontsize="small")
    if values.size <= ANNOTATED and np.isfinite(values).any():
        middle = (np.nanmax(values) + 1) / 2
        for i, j in np.argwhere(~np.isnan(values)):
            v = values[i, j]
            ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize="x-small", color="k" if v <= middle else "w")
    fig.colorbar(image, ax=ax, label="rank (1 = best)")
    ax.set_title(title)
    return _png(fig)


DRAW = {"bars": draw_bars, "memory": draw_memory, "ranks": draw_ranks}


def _memory_series(cells: list[Cell], data: str) -> dict[str, list[tuple]]:
    series: dict[str, list[tuple]] = {}
    for c in cells:
        size = c.memory_size
        if (
            c.data == data
            and c.task.split("+", 1)[0].split("@", 1)[0] == HUMMINGBIRD
            and not c.stale
            and c.mean is not None
            and isinstance(size, (int, float))
            and not math.isnan(size)
        ):
            series.setdefault(c.name, []).append(_point(float(size), c))
    return {name: sorted(points, key=lambda p: p[0]) for name, points in sorted(series.items())}


def describe(board: Board) -> dict[str, tuple[str, tuple]]:
    """File name -> (kind, the plain data it is drawn from), for every plot of the board."""
    out = {}
    for t in board.tables:
        points = [_point(c.method, c) for c in t.current if c.mean is not None]
        if points:
            xlabel = f"{t.metrics[0]} ({'higher' if t.higher else 'lower'} is better), 95% bootstrap CI"
            out[f"{t.data}-{t.task}-v{t.version}.png"] = (
                "bars",
                (f"{t.task} (v{t.version}), {t.data} data", xlabel, points),
            )
    for data in ("real", "procedural"):
        if series := _memory_series(board.cells, data):
            title = f"HummingBird on VOC: mIoU against memory size, {data} data"
            out[f"{data}-hummingbird-memory.png"] = ("memory", (title, series))
    for s in board.summaries:
        ranks = [[None if math.isnan(v) else v for v in row] for row in s.rank.to_numpy(dtype=float).tolist()]
        title = f"{s.suite}: rank per task, {s.data} data"
        out[f"{s.data}-{s.suite}-ranks.png"] = ("ranks", (title, s.tasks, list(s.rank.index), ranks))
    return out


def _draw(item: tuple[str, tuple]) -> bytes:
    kind, data = item
    return DRAW[kind](*data)


def _digest(item: tuple[str, tuple]) -> str:
    return hashlib.sha256(repr((VERSION, matplotlib.__version__, item)).encode()).hexdigest()[:16]


def write(described: dict[str, tuple[str, tuple]], folder: Path) -> int:
    """Draw into `folder` the plots whose data changed (each written atomically), remove the PNGs of plots no
    longer made; how many were drawn."""
    index_path = folder / INDEX
    if not described and not folder.exists():
        return 0
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    digests = {name: _digest(item) for name, item in described.items()}
    todo = [n for n in described if index.get(n) != digests[n] or not (folder / n).exists()]
    workers = min(os.cpu_count() or 1, 4) if len(todo) >= 8 else 1
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            pngs = list(pool.map(_draw, [described[n] for n in todo], chunksize=4))
    else:
        pngs = [_draw(described[n]) for n in todo]
    for name, png in zip(todo, pngs):
        write_atomic(folder / name, png)
    if folder.is_dir():
        for old in folder.glob("*.png"):
            if old.name not in described:
                old.unlink()
    write_atomic(index_path, json.dumps(digests, indent=0, sort_keys=True))
    return len(todo)
