"""`bench regress`: current results against a suite's stored baseline (leaderboard/baselines/<suite>.json), cell by
cell (method x task x data kind x seed) on each task's main metric; `--update` rewrites the baseline from them.

A baseline number is compared only with a result of the same task spec and evaluator version (the key's spec hash
and `<protocol>/v<N>`): one of another spec is *stale*, reported and never compared. The tolerance on a number is,
first found: `--abs-tol`/`--rel-tol`; the task spec's `tolerance: {abs, rel}`; on procedural data 1e-6 (the
evaluators are deterministic), or 1e-4 of the number where the baseline was measured on another CPU or GPU (float
kernels differ between instruction sets: random_vit's numbers moved by up to 1.8e-5 of themselves from an Intel
Xeon to an AVX2-only AMD EPYC, every evaluator unchanged); on real data 2 x the standard deviation over the baseline's seeds of that method and
task (at least 1e-6), or 1 % of the number where the baseline has one seed. Allowed change: max(abs, rel x |value|).
"""

from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, FiniteFloat, ValidationError, model_validator
from tabulate import tabulate

from harness import specs
from harness.errors import UserError
from harness.leaderboard import current_task_ref, main_metric, text_cell, weights_column
from harness.provenance import now
from harness.results import ResultKey, RunResult, write_atomic
from harness.specs import Tolerance

PROCEDURAL_TOLERANCE = Tolerance(abs=1e-6)
OTHER_HARDWARE_TOLERANCE = Tolerance(abs=1e-6, rel=1e-4)  # procedural numbers measured on another CPU / GPU
SPREAD_FACTOR = 2.0  # seeds' standard deviations a real-data number may move
ONE_SEED_TOLERANCE = Tolerance(rel=0.01)
Change = Literal["regression", "improvement", "unchanged", "stale", "missing", "new"]
ORDER = ("regression", "improvement", "stale", "missing", "new", "unchanged")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(_Model):
    """Where a baseline number came from: its result file (relative to the results folder it was in) and run."""

    result: str
    harness_version: str
    harness_commit: str | None
    git_dirty: bool | None
    hardware: str
    finished_at: str


class BaselineCell(_Model):
    """One reference number: the result's key (method_ref, spec hash and evaluator included), metric and value."""

    key: ResultKey
    metric: str
    value: FiniteFloat
    source: Source

    @property
    def cell(self) -> tuple:
        return _cell(self.key)


class Baseline(_Model):
    format: Literal[1] = 1
    suite: str
    updated_at: str
    cells: list[BaselineCell]

    @model_validator(mode="after")
    def _one_per_cell(self) -> "Baseline":
        seen = set()
        for c in self.cells:
            if c.cell in seen:
                raise ValueError(f"cell {' '.join(map(str, c.cell))} is listed twice")
            seen.add(c.cell)
        return self


def _cell(key: ResultKey) -> tuple:
    return key.method, key.task, key.data, key.seed


@dataclass
class Row:
    change: Change
    cell: tuple
    metric: str | None = None
    baseline: float | None = None
    current: float | None = None
    tolerance: str = ""
    why: str = ""


def load(path: Path) -> Baseline | None:
    """The baseline in `path`, None if there is no file; a bad one is one line naming it."""
    if not path.exists():
        return None
    try:
        baseline = Baseline.model_validate_json(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror or e}", where=path) from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or "(top level)"
        raise UserError(f"not a valid baseline: {where}: {first['msg']}", where=path) from None
    if baseline.suite != path.stem:
        raise UserError(f"suite: {baseline.suite!r}, but the file is named for {path.stem!r}", where=path)
    return baseline


def suite_of(path: Path) -> specs.SuiteSpec:
    """The suite a baseline file is named for (leaderboard/baselines/<suite>.json)."""
    try:
        return specs.get("suite", path.stem)
    except UserError as e:
        raise UserError(f"a baseline is named <suite>.json: {e}", where=path) from None


def current_results(results: list[RunResult], suite: specs.SuiteSpec) -> dict[tuple, RunResult]:
    """Per cell of the suite (its tasks, seeds and data kind; any method), the newest result of the spec and
    evaluator this harness runs now (older specs' files are leftovers, not current)."""
    kind = "procedural" if suite.data == "synthetic" else "real"
    tasks, refs, out = set(suite.tasks), {}, {}
    for r in results:
        k = r.key
        if k.task not in tasks or k.seed not in suite.seeds or k.data != kind:
            continue
        if k.task_ref != refs.setdefault(k.task, current_task_ref(k.task)):
            continue
        if (old := out.get(_cell(k))) is None or old.provenance.finished_at < r.provenance.finished_at:
            out[_cell(k)] = r
    return out


def _task(name: str) -> specs.TaskSpec:
    """The spec a result's task name comes from (`voc_hummingbird@m1024000+k=5`: the variant; --set overrides
    change neither tolerance nor protocol)."""
    return specs.get("task", name.split("+", 1)[0])


def hardware(p) -> str:
    """What computed a result's numbers, as a baseline's source names it: the CPU, and the GPU if any."""
    return p.cpu + (f", {p.gpu}" if p.gpu else "")


def _tolerance(
    b: BaselineCell, cli: Tolerance | None, spread: dict[tuple, list[float]], current: RunResult
) -> tuple[float, str]:
    """The allowed change of baseline number `b` and where that rule comes from (module docstring)."""
    if cli is not None:
        return cli.of(b.value), "--abs-tol/--rel-tol"
    task = _task(b.key.task)
    if task.tolerance is not None:
        return task.tolerance.of(b.value), "task spec"
    if b.key.data == "procedural":
        if b.source.hardware != hardware(current.provenance):
            return OTHER_HARDWARE_TOLERANCE.of(b.value), "procedural, other hardware"
        return PROCEDURAL_TOLERANCE.of(b.value), "procedural"
    values = spread[(b.key.method, b.key.task, b.key.data, b.key.task_ref)]
    if len(values) >= 2:
        sd = SPREAD_FACTOR * statistics.stdev(values)
        return max(sd, PROCEDURAL_TOLERANCE.abs), f"{SPREAD_FACTOR:g}σ of {len(values)} seeds"
    return ONE_SEED_TOLERANCE.of(b.value), "1 % (one seed)"


def _stale(b: BaselineCell, current: RunResult | None) -> str | None:
    """Why baseline number `b` cannot be compared with this harness's results, or None."""
    now_ref = current_task_ref(b.key.task)
    if now_ref is None:
        return "the task is not known to this harness"
    if b.key.task_ref != now_ref:
        task = _task(b.key.task)
        if b.key.evaluator != task.evaluator:
            return f"baseline's evaluator {b.key.evaluator}, now {task.evaluator}"
        return f"baseline's task spec {b.key.task_ref}, now {now_ref}: task changed"
    metric, _ = main_metric(b.key.task)
    if b.metric != metric:
        return f"baseline's metric {b.metric}, the task's main metric is now {metric}"
    if current is not None and (weights_column(b.key.method_ref) == "random-init") != (
        weights_column(current.key.method_ref) == "random-init"
    ):
        return "one of baseline and result ran a random init, the other real weights"
    return None


def compare(baseline: Baseline, current: dict[tuple, RunResult], cli: Tolerance | None = None) -> list[Row]:
    """Every baseline cell against its current result, then the current cells the baseline lacks (new)."""
    spread = defaultdict(list)
    for b in baseline.cells:
        spread[(b.key.method, b.key.task, b.key.data, b.key.task_ref)].append(b.value)
    rows = []
    for b in baseline.cells:
        r = current.get(b.cell)
        value = r.metrics.get(b.metric) if r else None
        row = Row("missing", b.cell, b.metric, b.value, value)
        if why := _stale(b, r):
            row.change, row.why = "stale", why
        elif r is None:
            row.why = "no current result"
        elif r.status != "ok" or value is None:
            row.change = "regression"
            row.why = f"{r.status}: {r.error or ''}"[:100] if r.status != "ok" else f"no {b.metric} in the result"
        else:
            tol, rule = _tolerance(b, cli, spread, r)
            higher = _task(b.key.task).protocol_class.higher_is_better(b.metric)
            gain = (value - b.value) * (1 if higher else -1)
            row.change = "regression" if gain < -tol else "improvement" if gain > tol else "unchanged"
            row.tolerance = f"{tol:.3g} ({rule})"
            row.why = "" if row.change == "unchanged" else f"{'higher' if higher else 'lower'} is better"
        rows.append(row)
    known = {b.cell for b in baseline.cells}
    for cell, r in sorted(current.items()):
        if cell not in known:
            metric, _ = main_metric(r.key.task)
            why = "" if r.status == "ok" else f"{r.status}: {r.error or ''}"[:100]
            rows.append(Row("new", cell, metric, None, r.metrics.get(metric), why=why))
    return sorted(rows, key=lambda row: (ORDER.index(row.change), row.cell))


def failed(rows: list[Row], strict: bool) -> bool:
    """A regression; with `strict` (a deterministic baseline: any move must come with --update), also an
    improvement or a stale baseline number."""
    bad = {"regression", "improvement", "stale"} if strict else {"regression"}
    return any(row.change in bad for row in rows)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.6f}"


def table(rows: list[Row], fmt: str = "simple") -> str:
    """Every row that is neither unchanged nor missing, as a table (markdown for fmt="github"), then a line per
    method with missing cells (a partial run is normal: they are counted, not listed)."""
    shown = [
        {
            "change": row.change.upper() if row.change == "regression" else row.change,
            "method": row.cell[0],
            "task": row.cell[1],
            "data": row.cell[2],
            "seed": row.cell[3],
            "metric": row.metric or "",
            "baseline": _fmt(row.baseline),
            "current": _fmt(row.current),
            "Δ": f"{row.current - row.baseline:+.3g}" if row.current is not None and row.baseline is not None else "",
            "tolerance": row.tolerance,
            "why": text_cell(row.why) if fmt == "github" else row.why,
        }
        for row in rows
        if row.change not in ("unchanged", "missing")
    ]
    missing = defaultdict(list)
    for row in rows:
        if row.change == "missing":
            missing[row.cell[0]].append(row.cell[1])
    lines = [
        f"missing (no current result): {method}: {len(tasks)} cell(s): {', '.join(sorted(set(tasks)))}"
        for method, tasks in sorted(missing.items())
    ]
    if shown:
        lines.insert(0, tabulate(shown, headers="keys", tablefmt=fmt, disable_numparse=True))
    return "\n\n".join(lines) if fmt == "github" else "\n".join(lines)


def counts(rows: list[Row]) -> str:
    n = {c: sum(row.change == c for row in rows) for c in ORDER}
    return (
        f"{n['regression']} regression(s), {n['improvement']} improvement(s), {n['unchanged']} unchanged; "
        f"{n['stale']} stale, {n['missing']} missing, {n['new']} new"
    )


def markdown(rows: list[Row], path: Path, failing: bool) -> str:
    """The summary for a CI page ($GITHUB_STEP_SUMMARY)."""
    verdict = "**FAILED**" if failing else "passed"
    body = table(rows, "github") or "No cell changed."
    return f"### bench regress: {path} {verdict}\n\n{counts(rows)}\n\n{body}\n"


def append_summary(path: Path, text: str) -> None:
    try:
        with open(path, "a") as f:
            f.write(text + "\n")
    except OSError as e:
        raise UserError(f"cannot write the summary: {e.strerror or e}", where=path) from None


def updated(baseline: Baseline | None, suite: str, current: dict[tuple, RunResult]) -> Baseline:
    """The baseline with every cell that has a current ok result replaced by it (its main metric, with its
    provenance); the other cells, stale ones included, stay as they were, and so does a cell whose key and number
    the result repeats (its source stays the run that first measured it)."""
    cells = {b.cell: b for b in baseline.cells} if baseline else {}
    for cell, r in current.items():
        metric, _ = main_metric(r.key.task)
        if r.status != "ok" or metric not in r.metrics:
            continue
        if (old := cells.get(cell)) and (old.key, old.metric, old.value) == (r.key, metric, r.metrics[metric]):
            continue
        p = r.provenance
        cells[cell] = BaselineCell(
            key=r.key,
            metric=metric,
            value=r.metrics[metric],
            source=Source(
                result=str(r.key.relpath()),
                harness_version=p.harness_version,
                harness_commit=p.git_commit,
                git_dirty=p.git_dirty,
                hardware=hardware(p),
                finished_at=p.finished_at,
            ),
        )
    return Baseline(suite=suite, updated_at=now(), cells=[cells[c] for c in sorted(cells)])


def write(baseline: Baseline, path: Path) -> None:
    write_atomic(path, json.dumps(baseline.model_dump(mode="json"), indent=2) + "\n")


def summary_path() -> Path | None:
    """Where the markdown summary goes by default: $GITHUB_STEP_SUMMARY, when set."""
    return Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None
