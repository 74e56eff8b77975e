"""`bench ci plan`: the cells (method, task, seeds, data) a change set touches, so that the GPU regression workflow
runs only those. By changed file, relative to the repository:

- `images/<m>/…`: method m and its variants on the suites whose `methods:` name them, else on m's own (paper) suite,
  the one named m (`fungi`, `neco`), else on the reference set;
- `images/<folder>/…` that methods include (`include: [../_vit]`): each of those methods, as above; `images/_base/`
  (every image is built FROM it): every method; `images/weights.lock.json`: every method with checksummed weights;
- `benchmarks/tasks/<t>.yaml`: task t and its variants with every method that can run them, seed 0, real data;
- `benchmarks/suites/<s>.yaml`, `leaderboard/baselines/<s>.json`: suite s's cells;
- `harness/`, `benchsdk/`, `pyproject.toml`, the GPU workflow: the reference set, REFERENCE_SUITE's cells;
- anything else (docs, `*.md`, tests, scripts, the CPU CI files): nothing; CPU CI covers it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath

from tabulate import tabulate

from harness import REPO_ROOT, specs
from harness.run import incompatibility

REFERENCE_SUITE = "smoke"
REFERENCE = ("harness/", "benchsdk/", "pyproject.toml", ".github/workflows/gpu-regression.yml")


class Catalog:
    """Every task, method and suite, loaded once per plan."""

    @cached_property
    def tasks(self) -> dict[str, specs.TaskSpec]:
        return {t.name: t for t in specs.load_all("task")}

    @cached_property
    def methods(self) -> dict[str, specs.MethodSpec]:
        return {m.name: m for m in specs.load_all("method")}

    @cached_property
    def suites(self) -> dict[str, specs.SuiteSpec]:
        return {s.name: s for s in specs.load_all("suite")}

    def forms(self, kind: str, base: str) -> list[str]:
        """`base` and its variants' names (`dino`, `dino@vitb16`)."""
        return [name for name in getattr(self, kind) if name.partition("@")[0] == base]


@dataclass
class Plan:
    cells: dict[tuple[str, str, str], set[int]] = field(default_factory=dict)  # (method, task, data) -> seeds
    changes: list[tuple[str, str]] = field(default_factory=list)  # (file, what it selects)
    catalog: Catalog = field(default_factory=Catalog)

    def add(self, methods: list[str], tasks: list[str], seeds: list[int], data: str) -> None:
        """Each method x task that can run together, with these seeds on this data (`real` / `synthetic`)."""
        for task in tasks:
            for method in methods:
                if incompatibility(self.catalog.methods[method], self.catalog.tasks[task]) is None:
                    self.cells.setdefault((method, task, data), set()).update(seeds)

    def add_suite(self, name: str, methods: list[str] | None = None) -> str:
        suite = self.catalog.suites[name]
        self.add(methods or suite.methods or specs.baseline_methods(), suite.tasks, suite.seeds, suite.data)
        return f"suite {name}" + (f" with {', '.join(methods)}" if methods else "")

    def add_method(self, base: str) -> str:
        """Method `base` and its variants on their suites (module docstring)."""
        forms = self.catalog.forms("methods", base)
        naming = {s.name: [m for m in s.methods or [] if m in forms] for s in self.catalog.suites.values()}
        if found := [self.add_suite(name, methods) for name, methods in naming.items() if methods]:
            return "; ".join(found)
        if base in self.catalog.suites:
            return self.add_suite(base, forms)
        return f"reference set: {self.add_suite(REFERENCE_SUITE, forms)}"

    def as_json(self) -> dict:
        return {
            "cells": [
                {"method": m, "task": t, "seeds": sorted(seeds), "data": d}
                for (m, t, d), seeds in sorted(self.cells.items())
            ],
            "changes": [{"file": f, "selects": what} for f, what in self.changes],
        }

    def render(self) -> str:
        cells = self.as_json()["cells"]
        rows = [(c["method"], c["task"], ",".join(map(str, c["seeds"])), c["data"]) for c in cells]
        head = (
            tabulate(rows, headers=["method", "task", "seeds", "data"], tablefmt="simple", disable_numparse=True)
            if rows
            else "no cells to run"
        )
        return head + "\n\n" + "\n".join(f"{f}: {what}" for f, what in self.changes)


def _relative(path: str) -> PurePosixPath:
    p = Path(os.path.normpath(path))
    if p.is_absolute() and p.is_relative_to(REPO_ROOT):
        p = p.relative_to(REPO_ROOT)
    return PurePosixPath(p.as_posix())


def select(plan: Plan, path: PurePosixPath) -> str:
    """Add the cells one changed file touches to `plan`; say what they are."""
    parts, cat = path.parts, plan.catalog
    if not parts:
        return "not a file: nothing"
    if path.suffix == ".md" or parts[0] == "docs":
        return "documentation: nothing"
    bases = [name for name in cat.methods if "@" not in name]
    if parts[0] == "images" and len(parts) >= 3:
        folder = parts[1]
        if folder == "_base":
            users = bases
        elif folder in cat.methods:
            return plan.add_method(folder)
        else:
            where = (REPO_ROOT / "images" / folder).resolve()
            users = [m for m in bases if where in cat.methods[m].code_folders]
        if not users:
            return "no method includes it: nothing"
        return "; ".join(f"{m}: {plan.add_method(m)}" for m in users)
    if str(path) == "images/weights.lock.json":
        users = [m for m in bases if isinstance(cat.methods[m].weights, specs.WeightsSource)]
        return "; ".join(f"{m}: {plan.add_method(m)}" for m in users) or "no method has checksummed weights"
    if parts[:2] == ("benchmarks", "tasks") and path.suffix == ".yaml":
        if path.stem not in cat.tasks:
            return "task removed: nothing"
        plan.add(list(cat.methods), cat.forms("tasks", path.stem), [0], "real")
        return f"task {path.stem} and its variants, every method, seed 0, real data"
    if parts[:2] in (("benchmarks", "suites"), ("leaderboard", "baselines")):
        return plan.add_suite(path.stem) if path.stem in cat.suites else "no such suite: nothing"
    if any(str(path) == r or str(path).startswith(r) for r in REFERENCE):
        return f"reference set: {plan.add_suite(REFERENCE_SUITE)}"
    return "not an input of any cell: nothing"


def plan(changed: list[str]) -> Plan:
    """The cells a change set touches, and what each file selects."""
    result = Plan()
    for path in dict.fromkeys(changed):
        result.changes.append((path, select(result, _relative(path))))
    return result
