"""Typed run results (one JSON per method x task x data kind x seed) and the store that doubles as a cache."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness import REPO_ROOT

SCHEMA_VERSION = 1
DEFAULT_RESULTS_DIR = REPO_ROOT / "leaderboard" / "results"
Status = Literal["ok", "failed", "timeout"]
DataKind = Literal["real", "procedural"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResultKey(_Model):
    """What makes two runs the same run: reruns with an equal key are skipped (resume for free)."""

    method: str
    method_ref: str = Field(description="image digest or code hash of the method that ran")
    task: str
    task_version: int
    data: DataKind
    seed: int

    @property
    def short_ref(self) -> str:
        """12 hex digits naming what ran: the image digest or code hash; with weights, a hash of code and weights
        together (never the weights' alone, which two code versions can share). Results path and leaderboard row."""
        if "+" in self.method_ref:
            return hashlib.sha256(self.method_ref.encode()).hexdigest()[:12]
        return self.method_ref.rsplit(":", 1)[-1][:12]

    def relpath(self) -> Path:
        return Path(self.task, f"v{self.task_version}", self.data, self.method, self.short_ref, f"seed{self.seed}.json")


class DatasetInfo(_Model):
    name: str
    kind: DataKind
    root: str
    fingerprint: str
    split_sizes: dict[str, int] = {}


class Provenance(_Model):
    harness_version: str
    git_commit: str | None
    git_dirty: bool | None
    task_spec_hash: str
    task_params: dict[str, Any]
    task_overrides: dict[str, Any] = Field(default={}, description="parameters set with --set (in the task's name too)")
    backend: str
    sandboxed: bool | None = Field(default=None, description="the method ran in a sandbox (docker); None: not recorded")
    weights: str | None = Field(
        default=None,
        description="`sha256:<hex>` of the weights that ran (as in the key); `random-init`: the method declares "
        "weights but ran without them (procedural data only); None: it declares none",
    )
    host: str
    platform: str
    python: str
    cpu: str
    gpu: str | None
    libraries: dict[str, str]
    dataset: DatasetInfo | None
    method_info: dict[str, Any] = {}
    started_at: str
    finished_at: str


class Timings(_Model):
    total_s: float
    method_s: float = Field(description="waiting on the method, transport included (its fit stage apart)")
    fit_s: float = Field(default=0.0, description="waiting on the method's fit stage")
    data_s: float = Field(description="waiting on decoding and preprocessing")
    evaluator_s: float
    harness_s: float = Field(description="everything else: start-up, dataset checks, bookkeeping")
    images_sent: int = 0
    bytes_sent: int = 0


class RunResult(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    key: ResultKey
    status: Status
    error: str | None = None
    metrics: dict[str, float] = Field(default={}, description="this seed's headline metrics")
    details: dict[str, Any] = {}
    notes: list[str] = []
    external: bool = Field(default=False, description="outputs were produced outside the harness's runners")
    provenance: Provenance
    timings: Timings
    log_tail: str = Field(default="", description="last bytes of the method's stderr")


class ResultStore:
    """Results under a root folder at deterministic paths; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root or os.environ.get("BENCH_RESULTS") or DEFAULT_RESULTS_DIR)

    def path(self, key: ResultKey) -> Path:
        return self.root / key.relpath()

    def get(self, key: ResultKey) -> RunResult | None:
        path = self.path(key)
        return self._load(path) if path.exists() else None

    def put(self, result: RunResult) -> Path:
        path = self.path(result.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(result.model_dump_json(indent=2))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def all(self) -> list[RunResult]:
        results = []
        for path in sorted(self.root.rglob("seed*.json")):
            result = self._load(path)
            if result is not None:
                results.append(result)
        return results

    @staticmethod
    def _load(path: Path) -> RunResult | None:
        try:
            return RunResult.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError, ValidationError) as e:
            print(
                f"bench: warning: {path}: not a valid result file, ignored ({str(e).splitlines()[0]})", file=sys.stderr
            )
            return None


def json_schema() -> dict:
    return RunResult.model_json_schema()
