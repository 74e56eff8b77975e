"""Results -> the leaderboard's tables, each number formatted here once so that every page shows the same: cells (one
method version on one task spec, over its seeds), task tables, suite summaries and failures."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

import pandas as pd

from harness.leaderboard.catalog import Catalog, Suite
from harness.leaderboard.stats import Paired, bootstrap_ci, borda, paired, ranks
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


def _records(results: list[RunResult], files: list[str]) -> list[dict]:
    rows = []
    for r, file in zip(results, files):
        k, p, t = r.key, r.provenance, r.timings
        weights = weights_column(k.method_ref)
        name = k.method + (RANDOM_INIT_MARK if weights == "random-init" else "")
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
                "p:weights": p.weights or "none declared",
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


def _cells(records: list[dict], sp: Catalog) -> list[Cell]:
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


def _task_tables(cells: list[Cell], sp: Catalog) -> list[TaskTable]:
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


def _summaries(tables: list[TaskTable], sp: Catalog) -> list[Summary]:
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
    records = _records(results, files)
    cells = _cells(records, sp)
    tables = _task_tables(cells, sp)
    failed = sorted((r for r in records if r["status"] != "ok"), key=lambda r: tuple(r[k] for k in FAILURE_COLUMNS))
    failures = [{k if k != "error" else "reason": str(r[k]) for k in FAILURE_COLUMNS} for r in failed]
    suites = {t.task: [s.name for s in sp.suites if t.task in s.tasks] for t in tables}
    return Board(cells, tables, _summaries(tables, sp), failures, suites, records)
