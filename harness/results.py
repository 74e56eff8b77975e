"""Typed run results (one JSON per method x task x data kind x seed) and the store that doubles as a cache."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, field_validator

from harness import REPO_ROOT
from harness.errors import UserError
from harness.names import METHOD_NAME_PATTERN, TASK_NAME_PATTERN

SCHEMA_VERSION = 2  # 2: keys carry the task's spec hash and the evaluator's version
DEFAULT_RESULTS_DIR = REPO_ROOT / "leaderboard" / "results"
Status = Literal["ok", "failed", "timeout"]
DataKind = Literal["real", "procedural"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def task_ref(spec_hash: str, evaluator: str) -> str:
    """8 hex digits naming a task's spec and evaluator together (a results path segment, a leaderboard column):
    results of different ones never mix."""
    return hashlib.sha256(f"{spec_hash}|{evaluator}".encode()).hexdigest()[:8]


class ResultKey(_Model):
    """What makes two runs the same run: reruns with an equal key are skipped (resume for free). Everything that
    determines the number is in it: the method's code (and weights), the task's whole spec, the evaluator's
    version, the data kind and the seed."""

    method: str = Field(pattern=METHOD_NAME_PATTERN)
    method_ref: str = Field(description="image digest or code hash of the method that ran")
    task: str = Field(pattern=TASK_NAME_PATTERN)
    task_version: int = Field(ge=1)
    spec_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the task's spec, defaults filled in")
    evaluator: str = Field(pattern=r"^[a-z0-9_]+/v[0-9]+$", description="the protocol and its version")
    data: DataKind
    seed: int = Field(ge=0, le=2**32 - 1)

    @property
    def task_ref(self) -> str:
        return task_ref(self.spec_hash, self.evaluator)

    @property
    def short_ref(self) -> str:
        """12 hex digits naming what ran: the image digest or code hash; with weights, a hash of code and weights
        together (never the weights' alone, which two code versions can share). Results path and leaderboard row."""
        if "+" in self.method_ref:
            return hashlib.sha256(self.method_ref.encode()).hexdigest()[:12]
        return self.method_ref.rsplit(":", 1)[-1][:12]

    def relpath(self) -> Path:
        return Path(
            self.task,
            f"v{self.task_version}-{self.task_ref}",
            self.data,
            self.method,
            self.short_ref,
            f"seed{self.seed}.json",
        )


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
    training: dict[str, Any] | None = Field(
        default=None,
        description="weights made by `bench train`: {recipe, steps, record: the path of its training.json}",
    )
    fit_recipe: dict[str, Any] | None = Field(
        default=None,
        description="the recipe the method's fit stage trained from scratch (method.yaml fit_recipe): "
        "{name, steps, hash}; None: it trained none or was given weights",
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
    images_sent: int = Field(default=0, description="images the method received (feature-cache hits apart)")
    bytes_sent: int = 0
    cached_requests: int = Field(
        default=0, description="requests answered from the feature cache, unseen by the method"
    )
    cache_s: float = Field(default=0.0, description="the feature cache's own work (hashing, reading, writing entries)")
    method_peak_bytes: int | None = Field(
        default=None,
        description="the method's peak resident memory as its backend measured it (local: its process's VmHWM, read "
        "before the session ends, its child processes apart; docker: its container's cgroup max_usage, page cache "
        "included, on cgroup v1 daemons); None: not measured (in-process, external, a cgroup v2 docker daemon, or a "
        "method that ended by itself)",
    )


class RunResult(_Model):
    schema_version: Literal[2] = SCHEMA_VERSION
    key: ResultKey
    status: Status
    error: str | None = Field(default=None, description="one line: newlines are written as ⏎")
    metrics: dict[str, FiniteFloat] = Field(default={}, description="this seed's headline metrics (finite)")
    details: dict[str, Any] = {}
    notes: list[str] = []
    external: bool = Field(default=False, description="outputs were produced outside the harness's runners")
    provenance: Provenance
    timings: Timings
    log_tail: str = Field(default="", description="last bytes of the method's stderr")

    @field_validator("error")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        return None if v is None else " ⏎ ".join(line.strip() for line in v.strip().splitlines() if line.strip())


class NewerResult(UserError):
    """A result file written by a newer harness (a higher schema_version): kept as it is, never re-run over."""


class CellBusy(Exception):
    """Another harness holds the cell's lock (it is running that cell now)."""


MIN_FREE_BYTES = 16 << 20  # what a results folder needs free before any work starts
_UMASK = os.umask(0o022)  # read once (setting it is process-wide), then put back
os.umask(_UMASK)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write `text` (or bytes) to `path` whole or not at all (temp file beside it + rename); a failed write (full disk, no
    permission) is one UserError line naming the file, and the old file stays as it was. The file gets the mode a
    plain open() would give it (0666 less the umask), not mkstemp's owner-only 0600: results folders are shared."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    except OSError as e:
        raise UserError(f"cannot write: {e.strerror or e}", where=path) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write: {e.strerror or e}", where=path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultStore:
    """Results under a root folder at deterministic paths (ResultKey.relpath); writes are atomic, each cell has a
    lock file beside its result (`.seed0.json.lock`) that a running harness holds, and reading trusts a file only
    where its path is its key's."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root or os.environ.get("BENCH_RESULTS") or DEFAULT_RESULTS_DIR)

    def path(self, key: ResultKey) -> Path:
        return self.root / key.relpath()

    def check_writable(self) -> None:
        """Before any work: the root is a folder a file can be written in (or one that can be made, without making
        it yet), on a disk with MIN_FREE_BYTES free; else one line naming it."""
        existing = next(p for p in (self.root, *self.root.parents) if p.exists())
        if not existing.is_dir():
            raise UserError(f"{existing} is a file, not a folder (--results / BENCH_RESULTS)", where=self.root)
        if existing == self.root:
            write_atomic(self.root / ".write-check", "")
            (self.root / ".write-check").unlink(missing_ok=True)
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"cannot be created: no write permission in {existing}", where=self.root)
        free = shutil.disk_usage(existing).free
        if free < MIN_FREE_BYTES:
            raise UserError(
                f"only {free >> 10} KiB free, results need at least {MIN_FREE_BYTES >> 20} MiB", where=self.root
            )

    def get(self, key: ResultKey) -> RunResult | None:
        """The stored result of `key`, None if none (or an unreadable one, said on stderr); a newer harness's
        raises NewerResult."""
        path = self.path(key)
        if not path.exists():
            return None
        result = self._load(path)
        if isinstance(result, int):
            raise NewerResult(
                f"written by a newer harness (result schema {result}; this one writes {SCHEMA_VERSION}): kept, "
                "not re-run (upgrade vrbench, or --force to replace it)",
                where=path,
            )
        return result

    def put(self, result: RunResult) -> Path:
        path = self.path(result.key)
        write_atomic(path, result.model_dump_json(indent=2))
        return path

    @contextmanager
    def lock(self, key: ResultKey, wait: bool = True) -> Iterator[None]:
        """Hold the cell's lock: an flock on `.seedN.json.lock` beside the result, which the kernel releases however
        this process ends. `wait=False`: raise CellBusy at once when another harness holds it. The lock file, and
        the folders made for it when no result was written, are removed on the way out: a user error leaves
        nothing behind."""
        path = self.path(key)
        lock_path = path.with_name(f".{path.name}.lock")
        made = next((p for p in reversed((path.parent, *path.parent.parents)) if not p.exists()), None)
        while True:  # the file may be removed by its holder between open and flock: then lock the new one
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                f = open(lock_path, "a")
            except FileNotFoundError:  # a folder removed by a holder that wrote nothing
                continue
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                f.close()
                raise CellBusy(str(path)) from None
            if lock_path.exists() and os.stat(lock_path).st_ino == os.fstat(f.fileno()).st_ino:
                break
            f.close()
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
            f.close()
            if made is not None and not path.exists():
                for folder in (path.parent, *path.parent.parents):
                    try:
                        folder.rmdir()  # only an empty one
                    except OSError:
                        break
                    if folder == made:
                        break

    def all(self) -> list[RunResult]:
        """Every valid result under the root, once per key. A file whose path is not its key's (copied or moved by
        hand) is reported and skipped, as is one of an older schema; those of a newer harness are counted and
        said once."""
        results, newer, older = {}, [], []
        for path in sorted(self.root.rglob("seed*.json")):
            result = self._load(path)
            if isinstance(result, int):
                (newer if result > SCHEMA_VERSION else older).append(path)
            elif result is not None:
                if path.relative_to(self.root) != result.key.relpath():  # found under root: no need to resolve
                    _warn(f"{path}: its key belongs at {self.path(result.key)}: copied or moved by hand? skipped")
                else:
                    results.setdefault(result.key.relpath(), result)
        if newer:
            _warn(f"{len(newer)} result file(s) written by a newer harness skipped, e.g. {newer[0]}: upgrade vrbench")
        if older:
            _warn(
                f"{len(older)} result file(s) of an older result schema skipped, e.g. {older[0]}: their keys lack "
                "the task's spec hash and evaluator version; re-run those cells"
            )
        return list(results.values())

    @staticmethod
    def _load(path: Path) -> RunResult | int | None:
        """The result in `path`; its schema_version when that is not this harness's; None (said) if invalid."""
        try:
            data = json.loads(path.read_text(), parse_constant=_reject_constant)
            version = data.get("schema_version") if isinstance(data, dict) else None
            if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
                return version
            return RunResult.model_validate(data)
        except (OSError, ValueError, ValidationError) as e:
            _warn(f"{path}: not a valid result file, ignored ({str(e).splitlines()[0]})")
            return None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number a result may hold")


def _warn(msg: str) -> None:
    print(f"bench: warning: {msg}", file=sys.stderr)


def json_schema() -> dict:
    return RunResult.model_json_schema()
