"""What the specs say now, as the leaderboard needs it: each task's main metric, its direction and its task_ref
(ResultKey.task_ref), and the suites. Reading them means importing the protocols (torch: seconds), so they are
cached in .cache/leaderboard/ under a digest of every file that determines them (the task and suite specs, the
protocols' code and version lock, specs.py, results.py, the harness and pydantic versions): a changed file is a
new digest, never a stale answer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import pydantic

from harness import REPO_ROOT, __version__, specs
from harness.errors import UserError
from harness.results import task_ref, write_atomic

CACHE = REPO_ROOT / ".cache" / "leaderboard"
HARNESS = REPO_ROOT / "harness"


class Suite(NamedTuple):
    name: str
    description: str
    data: str
    tasks: list[str]


class TaskFacts(NamedTuple):
    main: str | None
    higher: bool
    ref: str | None


UNKNOWN = TaskFacts(None, True, None)


def _digest() -> str:
    files = [HARNESS / "specs.py", HARNESS / "results.py", *sorted((HARNESS / "protocols").rglob("*.py"))]
    files += [HARNESS / "protocols" / "versions.lock.json", *specs.spec_files("task"), *specs.spec_files("suite")]
    h = hashlib.sha256(f"{__version__} {pydantic.VERSION}".encode())
    for f in files:
        h.update(f"{f}\0".encode() + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _facts(spec: specs.TaskSpec) -> TaskFacts:
    protocol = spec.protocol_class
    return TaskFacts(
        protocol.main_metric, protocol.higher_is_better(protocol.main_metric), task_ref(spec.spec_hash, spec.evaluator)
    )


class Catalog:
    """The facts of every task in the catalog (variants included) and the suites, from the cache when its digest
    matches, else from the specs (then cached); a task with --set overrides is looked up when asked for."""

    def __init__(self, cache: Path | None = None):
        path = (cache or CACHE) / f"specs-{_digest()}.json"
        try:
            data = json.loads(path.read_text())
            self.tasks = {name: TaskFacts(*f) for name, f in data["tasks"].items()}
            self.suites = [Suite(**s) for s in data["suites"]]
        except (OSError, ValueError, KeyError, TypeError):
            self.tasks = {t.name: _facts(t) for t in specs.load_all("task")}
            self.suites = [Suite(s.name, s.description, s.data, list(s.tasks)) for s in specs.load_all("suite")]
            data = {"tasks": self.tasks, "suites": [s._asdict() for s in self.suites]}
            try:
                write_atomic(path, json.dumps(data))
            except UserError:  # a read-only checkout: only slower next time
                pass

    def task(self, name: str) -> TaskFacts:
        if name not in self.tasks:
            base, *overrides = name.split("+")
            try:
                spec = specs.get("task", base).with_overrides(dict(pair.split("=", 1) for pair in overrides))
            except UserError:
                spec = None
            self.tasks[name] = _facts(spec) if spec else UNKNOWN
        return self.tasks[name]

    def main_metric(self, task: str) -> tuple[str | None, bool]:
        """The main metric of a task's protocol (of its base form, for a task with overrides) and whether higher is
        better; (None, True) for a task not known here."""
        facts = self.task(task.split("+", 1)[0])
        return facts.main, facts.higher

    def current_ref(self, task: str) -> str | None:
        """The task_ref the task's spec and evaluator have now; None for a task not known here."""
        return self.task(task).ref
