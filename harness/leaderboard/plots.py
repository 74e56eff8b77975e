"""The leaderboard's PNG plots (matplotlib, Agg): per task bars with CI whiskers, HummingBird mIoU against memory
size per method, and a rank heat map per suite summary."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from harness.leaderboard.frame import Board, Cell, Summary, TaskTable
from harness.results import write_atomic

matplotlib.use("Agg")  # no display: figures are only ever saved

HUMMINGBIRD = "voc_hummingbird"  # its @m... variants (and --set memory_size runs) vary only the memory size
DPI = 80


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def task_bars(t: TaskTable) -> bytes | None:
    cells = [c for c in t.current if c.mean is not None]
    if not cells:
        return None
    fig = Figure(figsize=(6, 0.9 + 0.35 * len(cells)))
    ax = fig.subplots()
    means = [c.mean for c in cells]
    err = [[c.mean - c.ci[0] if c.ci else 0 for c in cells], [c.ci[1] - c.mean if c.ci else 0 for c in cells]]
    ax.barh(range(len(cells)), means, xerr=err, capsize=3, color="#4c78a8", ecolor="#222")
    ax.set_yticks(range(len(cells)), [c.method for c in cells])
    ax.invert_yaxis()
    ax.set_xlabel(f"{t.metrics[0]} ({'higher' if t.higher else 'lower'} is better), 95% bootstrap CI")
    ax.set_title(f"{t.task} (v{t.version}), {t.data} data")
    return _png(fig)


def hummingbird_memory(cells: list[Cell], data: str) -> bytes | None:
    """mIoU against memory size, one line per method, over the current voc_hummingbird tasks."""
    series: dict[str, list[tuple[float, Cell]]] = {}
    for c in cells:
        size = c.memory_size
        if (
            c.data == data
            and c.task.split("+", 1)[0].split("@", 1)[0] == HUMMINGBIRD
            and not c.stale
            and c.mean is not None
            and size is not None
            and not (isinstance(size, float) and math.isnan(size))
        ):
            series.setdefault(c.name, []).append((float(size), c))
    if not series:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, points in sorted(series.items()):
        points.sort(key=lambda p: p[0])
        xs, cs = [p[0] for p in points], [p[1] for p in points]
        err = [[c.mean - c.ci[0] if c.ci else 0 for c in cs], [c.ci[1] - c.mean if c.ci else 0 for c in cs]]
        ax.errorbar(xs, [c.mean for c in cs], yerr=err, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("memory size (patches)")
    ax.set_ylabel("mIoU")
    ax.set_title(f"HummingBird on VOC: mIoU against memory size, {data} data")
    ax.legend(fontsize="small")
    return _png(fig)


def rank_heatmap(s: Summary) -> bytes:
    values = s.rank.to_numpy(dtype=float)
    fig = Figure(figsize=(1.5 + 0.55 * len(s.tasks), 1.2 + 0.4 * len(values)))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(s.tasks)), s.tasks, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(range(len(values)), list(s.rank.index), fontsize="small")
    middle = (np.nanmax(values) + 1) / 2 if np.isfinite(values).any() else 1
    for i, j in np.argwhere(~np.isnan(values)):
        v = values[i, j]
        ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize="x-small", color="k" if v <= middle else "w")
    fig.colorbar(image, ax=ax, label="rank (1 = best)")
    ax.set_title(f"{s.suite}: rank per task, {s.data} data")
    return _png(fig)


def plots(board: Board) -> dict[str, bytes]:
    """File name -> PNG, every plot of the board."""
    out = {f"{t.data}-{t.task}-v{t.version}.png": task_bars(t) for t in board.tables}
    out |= {f"{data}-hummingbird-memory.png": hummingbird_memory(board.cells, data) for data in ("real", "procedural")}
    out |= {f"{s.data}-{s.suite}-ranks.png": rank_heatmap(s) for s in board.summaries}
    return {name: png for name, png in out.items() if png is not None}


def write(made: dict[str, bytes], folder: Path) -> None:
    """Write the plots (name -> PNG) into `folder`, each atomically, and remove the PNGs of plots no longer made."""
    for name, png in made.items():
        write_atomic(folder / name, png)
    if folder.is_dir():
        for old in folder.glob("*.png"):
            if old.name not in made:
                old.unlink()
