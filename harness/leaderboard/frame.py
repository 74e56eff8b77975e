"""Results -> the leaderboard's tables, each number formatted here once so that every page shows the same: cells (one
method version on one task spec, over its seeds), task tables, suite summaries and failures."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

from harness.leaderboard.catalog import Catalog
from harness.leaderboard.stats import Paired, bootstrap_ci, paired
from harness.results import RunResult

MISSING = "—"
EXTERNAL_MARK = "†"
UNSANDBOXED_MARK = "‡"
TIE_MARK = "≈"
RANDOM_INIT_MARK = " (random-init)"
DATA_KINDS = ("real", "procedural")
COMPARED = 3  # a task's best row is compared with the next COMPARED - 1
MIB = 1 << 20


def weights_column(method_ref: str) -> str:
    """The short form of the weights in a result key: 12 hex digits of their sha256, `random-init`, or ""."""
    if method_ref.endswith("+weights:random-init"):
        return "random-init"
    _, found, digest = method_ref.partition("+weights-sha256:")
    return digest[:12] if found else ""


def number(v: float | None) -> str:
    return MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return number(values[0]) if values else MISSING
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def records(results: list[RunResult], files: list[str]) -> list[dict]:
    rows = []
    for r, file in zip(results, files):
        k, p, t = r.key, r.provenance, r.timings
        weights = weights_column(k.method_ref)
        name = k.method + (RANDOM_INIT_MARK if weights == "random-init" else "")
        if p.training:  # weights `bench train` made: say by which recipe
            weights += f" (recipe {p.training['recipe']}, {p.training['steps']} steps)"
        unsandboxed = not r.external and not p.sandboxed
        commit = (p.git_commit or "unknown")[:12] + (" (dirty)" if p.git_dirty else "")
        rows.append(
            {
                "data": k.data,
                "task": k.task,
                "version": k.task_version,
                "spec": k.task_ref,
                "name": name,
                "method": name + f" {EXTERNAL_MARK}" * r.external + f" {UNSANDBOXED_MARK}" * unsandboxed,
                "ref": k.short_ref,
                "weights": weights,
                "seed": k.seed,
                "status": r.status,
                "error": r.error or "",
                "external": r.external,
                "unsandboxed": unsandboxed,
                "wall_s": t.total_s,
                "peak": t.method_peak_bytes,
                "memory_size": p.task_params.get("memory_size"),
                "file": file,
                "finished": p.finished_at,
                "p:code": k.method_ref.split("+", 1)[0],
                "p:weights": (p.weights or "none declared")
                + (f"; trained by bench train: {p.training['record']}" if p.training else ""),
                "p:dataset": f"{p.dataset.name} ({p.dataset.kind}) {p.dataset.fingerprint}" if p.dataset else "none",
                "p:harness": f"{p.harness_version} @ {commit}",
                "p:backend": f"{p.backend}" + ("" if r.external else f", sandboxed: {p.sandboxed}"),
                "p:hardware": f"{p.cpu}; GPU: {p.gpu or 'none'}; host {p.host}",
                "metrics": r.metrics,
            }
        )
    return rows


@dataclass
class Cell:
    """One row of a task table: a method (one code version, one task spec) on one task, over its seeds."""

    id: str
    data: str
    task: str
    version: int
    spec: str
    name: str  # the method, with its random-init mark
    method: str  # name with the external / unsandboxed marks
    ref: str
    weights: str
    stale: bool
    external: bool
    unsandboxed: bool
    seeds: dict[int, float]  # main metric per successful seed
    metrics: dict[str, str]  # each metric's mean ± std, formatted
    mean: float | None
    ci: tuple[float, float] | None
    n: int
    status: str
    wall: str
    peak: str
    finished: str
    memory_size: int | None
    files: list[tuple[int, str]]  # (seed, link to its result file)
    provenance: list[tuple[str, str]]

    @property
    def ci_text(self) -> str:
        return MISSING if self.ci is None else f"[{self.ci[0]:.2f}, {self.ci[1]:.2f}]"


PROVENANCE = ("code", "weights", "dataset", "harness", "backend", "hardware")
CELL_KEY = ("data", "task", "version", "spec", "method", "ref")


def cells_of(records: list[dict], sp: Catalog) -> list[Cell]:
    groups = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in CELL_KEY)].append(r)
    cells = []
    for i, ((data, task, version, spec, method, ref), g) in enumerate(sorted(groups.items())):
        main, _ = sp.main_metric(task)
        ok, bad = [r for r in g if r["status"] == "ok"], [r for r in g if r["status"] != "ok"]
        names = list(dict.fromkeys(m for r in g for m in r["metrics"]))
        names = [main, *(m for m in names if m != main)] if main in names else names
        values = {m: [r["metrics"][m] for r in ok if m in r["metrics"]] for m in names}
        seeds = {r["seed"]: r["metrics"][names[0]] for r in ok if names and names[0] in r["metrics"]}
        status = f"ok {len(ok)}/{len(g)}" + (f"; {bad[0]['status']}: {bad[0]['error'][:80]}" if bad else "")
        current = sp.current_ref(task)
        timed = ok or g
        peaks = [r["peak"] for r in timed if r["peak"] is not None]
        dates = sorted(r["finished"] for r in g)
        cells.append(
            Cell(
                id=f"c{i}",
                data=data,
                task=task,
                version=version,
                spec=spec,
                name=g[0]["name"],
                method=method,
                ref=ref,
                weights=g[0]["weights"],
                stale=current not in (None, spec),
                external=any(r["external"] for r in g),
                unsandboxed=any(r["unsandboxed"] for r in g),
                seeds=seeds,
                metrics={m: mean_std(v) for m, v in values.items()},
                mean=statistics.fmean(seeds.values()) if seeds else None,
                ci=bootstrap_ci(list(seeds.values())),
                n=len(ok),
                status=status,
                wall=number(statistics.fmean(r["wall_s"] for r in timed)),
                peak=number(max(peaks) / MIB) if peaks else MISSING,
                finished=dates[-1],
                memory_size=g[0]["memory_size"],
                files=sorted((r["seed"], r["file"]) for r in g),
                provenance=[(f, "; ".join(sorted({r[f"p:{f}"] for r in g}))) for f in PROVENANCE]
                + [("date", dates[0] if dates[0] == dates[-1] else f"{dates[0]} – {dates[-1]}")],
            )
        )
    return cells


@dataclass
class TaskTable:
    data: str
    task: str
    version: int
    main: str | None
    higher: bool
    metrics: list[str]
    cells: list[Cell]  # best first
    comparisons: list[Paired]

    @property
    def with_spec(self) -> bool:
        return len({c.spec for c in self.cells}) > 1

    @property
    def with_weights(self) -> bool:
        return any(c.weights for c in self.cells)

    def header(self, metric: str) -> str:
        return metric + ((" ↑" if self.higher else " ↓") if metric == self.metrics[0] else "")

    def rows(self) -> list[dict[str, str]]:
        """The table as text cells, column -> text (free text not yet escaped: each page escapes for itself)."""
        out = []
        for c in self.cells:
            row = {"method": c.method, "ref": c.ref}
            if self.with_spec:
                row["spec"] = c.spec + " (stale)" * c.stale
            if self.with_weights:
                row["weights"] = c.weights
            row |= {self.header(m): c.metrics.get(m, MISSING) for m in self.metrics}
            row |= {"95% CI": c.ci_text, "n": str(c.n), "status": c.status, "wall s": c.wall, "peak MiB": c.peak}
            out.append(row)
        return out

    @property
    def current(self) -> list[Cell]:
        return [c for c in self.cells if not c.stale]


def task_tables(cells: list[Cell], sp: Catalog) -> list[TaskTable]:
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.data, c.task, c.version), []).append(c)
    tables = []
    for (data, task, version), group in sorted(groups.items()):
        main, higher = sp.main_metric(task)
        metrics = list(dict.fromkeys(m for c in group for m in c.metrics))
        if main in metrics:
            metrics = [main, *(m for m in metrics if m != main)]
        sign = -1 if higher else 1
        group.sort(key=lambda c: (c.mean is None, sign * (c.mean or 0.0), c.method, c.ref))
        ranked = [c for c in group if c.mean is not None and not c.stale]
        comparisons = [paired(ranked[0].method, ranked[0].seeds, c.method, c.seeds, higher) for c in ranked[1:COMPARED]]
        tables.append(
            TaskTable(data, task, version, metrics[0] if metrics else main, higher, metrics, group, comparisons)
        )
    return tables
