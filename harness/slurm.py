"""`bench matrix --executor slurm`, `bench status`, `bench cancel`: a suite's cells as Slurm job arrays, through
submitit.

Each job runs one cell with `run.run_cell`, the local executor's code path and backend, and writes its result
atomically into the results folder, which every node must see. The submission is recorded beside the results
(`<results>/.slurm/<suite>.json`: per cell its key and job ids; submitit's pickles and logs in `.slurm/jobs/`), so a
rerun skips done cells and never submits a pending or running one twice. A job preempted (or near its time limit)
is requeued in place by submitit's checkpointing; one cancelled, killed or lost with its node is resubmitted by the
harness that waits for the matrix (or by the next `bench matrix`); either way at most `--max-retries` times, after
which the cell is a failed result with the scheduler's reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import submitit
from submitit.core.utils import UncompletedJobError
from tabulate import tabulate

from harness import specs
from harness.data import open_dataset
from harness.errors import MethodFailure, UserError
from harness.lifetime import interruptible
from harness.provenance import now
from harness.results import NewerResult, ResultKey, ResultStore, RunResult, write_atomic
from harness.run import Cell, RunOptions, cell_key, data_kind, matrix_cells, run_cell, timeout_s
from harness.runners import get_runner

SLURM_DIR = ".slurm"
MARGIN_MIN = 10  # a job's time limit: the method's budget plus this, for data, evaluation and start-up
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"}
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD", "PREEMPTED"}
UNSEEN_S = 60  # a submitted job the scheduler does not list for this long has ended, unseen


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    max_parallel: int | None = None
    max_retries: int = 2
    detach: bool = False
    poll_s: float = 2.0


# --- the scheduler ------------------------------------------------------------------------------------------------


def check_reachable() -> None:
    """Slurm's client on PATH and its controller answering, else one line saying which is missing."""
    missing = [c for c in ("sbatch", "squeue", "scancel", "srun") if shutil.which(c) is None]
    if missing:
        raise UserError(
            f"slurm: {', '.join(missing)} not found on PATH: run on a Slurm cluster's login node "
            "(scripts/slurm.sh starts a single-node cluster)"
        )
    try:
        proc = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise UserError("slurm: the controller did not answer within 30 s (squeue)") from None
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"slurm: the controller does not answer (squeue: {last})")


def scheduler_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """(state, reason) of each job (`123` or array task `123_4`) the scheduler knows: from sacct where accounting
    is on, else from squeue, which lists ended jobs for MinJobAge."""
    if not job_ids:
        return {}
    base = sorted({j.split("_")[0] for j in job_ids})
    sacct = ["sacct", "-n", "-X", "-P", "-o", "JobID,State,Reason", "-j", ",".join(base)]
    proc = subprocess.run(sacct, capture_output=True, text=True)
    if proc.returncode:  # accounting storage disabled (a single-node cluster): the controller's own list
        proc = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r"], capture_output=True, text=True)
    states = {}
    for line in proc.stdout.splitlines():
        job, state, reason = (line.split("|") + ["", ""])[:3]
        state = state.split(" ")[0]  # "CANCELLED by 0"
        for ids in submitit.slurm.slurm.read_job_id(job) if job and "." not in job else ():
            if len(ids) == 3:  # a pending range 123_[4-6]
                states |= {f"{ids[0]}_{i}": (state, reason) for i in range(int(ids[1]), int(ids[2]) + 1)}
            else:
                states["_".join(ids)] = (state, reason)
    return states


def _job_outcome(folder: Path, job_id: str) -> tuple[str, str] | None:
    """submitit's record of how the job's function ended: ("success", status) or ("error", traceback); None
    when it did not end (killed, cancelled, lost)."""
    path = submitit.SlurmJob(folder, job_id).paths.result_pickle
    return submitit.core.utils.pickle_load(path) if path.exists() else None


def _log_tail(folder: Path, job_id: str, size: int = 2000) -> str:
    paths = submitit.SlurmJob(folder, job_id).paths
    try:
        return paths.stderr.read_text(errors="replace")[-size:]
    except OSError:
        return ""


# --- the record beside the results --------------------------------------------------------------------------------


@dataclass
class Record:
    """The cells a suite submitted (`.slurm/<suite>.json`): per cell (by result path) its key, names, job ids and
    whether `bench cancel` cancelled it."""

    path: Path
    cells: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "Record":
        try:
            return cls(path, json.loads(path.read_text())["cells"])
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"not a readable submission record ({e}): remove it to start afresh", where=path) from None

    def save(self) -> None:
        write_atomic(self.path, json.dumps({"suite": self.path.stem, "cells": self.cells}, indent=1))


def _slurm_dir(store: ResultStore) -> Path:
    return store.root / SLURM_DIR


@contextmanager
def _records(store: ResultStore) -> Iterator[None]:
    """Hold the lock of the submission records (one submitter or canceller at a time)."""
    folder = _slurm_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _all_records(store: ResultStore, suite: str | None = None) -> list[Record]:
    folder = _slurm_dir(store)
    paths = [folder / f"{suite}.json"] if suite else sorted(folder.glob("*.json"))
    return [Record.load(p) for p in paths if p.exists()]


def _starts_file(store: ResultStore, relpath: str) -> Path:
    return _slurm_dir(store) / "starts" / hashlib.sha256(relpath.encode()).hexdigest()[:16]


def _starts(store: ResultStore, relpath: str) -> int:
    """How often a job started this cell (each start, requeues included, appends its job id)."""
    try:
        return len(_starts_file(store, relpath).read_text().split())
    except FileNotFoundError:
        return 0


# --- the job ------------------------------------------------------------------------------------------------------


class CellJob(submitit.helpers.Checkpointable):
    """One cell as a Slurm job: `run_cell` on the node, as the local executor runs it. Preempted (or near its
    time limit) it is requeued by submitit until its retries are spent, then writes a failed result."""

    def __init__(self, method: str, task: str, overrides: dict, seed: int, opts: RunOptions, results: Path, relpath: str, max_retries: int):  # fmt: skip
        self.method, self.task, self.overrides, self.seed = method, task, overrides, seed
        self.opts, self.results, self.relpath, self.max_retries = opts, results, relpath, max_retries

    def _cell(self) -> Cell:
        return specs.get("method", self.method), specs.get("task", self.task).with_overrides(self.overrides), self.seed

    def __call__(self) -> str:
        store = ResultStore(self.results)
        job_id = submitit.JobEnvironment().job_id
        starts = _starts_file(store, self.relpath)
        starts.parent.mkdir(parents=True, exist_ok=True)
        with open(starts, "a") as f:
            f.write(f"{job_id}\n")
        if (n := _starts(store, self.relpath)) > self.max_retries + 1:  # requeued by Slurm itself (node failure)
            failure = MethodFailure(f"slurm job {job_id}: started {n} times, retries (--max-retries) exhausted")
            return run_cell(*self._cell(), self.opts, store, failure=failure).status
        try:
            with interruptible():  # scancel's SIGTERM: the cell unwinds as at Ctrl-C, writing nothing
                return run_cell(*self._cell(), self.opts, store).status
        except UncompletedJobError:  # preempted with no retry left (checkpoint said so): the cell has unwound
            failure = MethodFailure(
                f"slurm job {job_id}: preempted or at its time limit on start {n}, retries (--max-retries) exhausted"
            )
            return run_cell(*self._cell(), self.opts, store, failure=failure).status

    def checkpoint(self, *args, **kwargs):
        """Requeue (the cell starts over: it holds no partial state) while retries are left; else None."""
        if _starts(ResultStore(self.results), self.relpath) > self.max_retries:
            return None
        return super().checkpoint(*args, **kwargs)


# --- submitting and watching --------------------------------------------------------------------------------------


@dataclass
class Submission:
    """A cell to run through Slurm: its key, its job and the sbatch parameters of its group."""

    cell: Cell
    key: ResultKey
    job: CellJob
    parameters: dict

    @property
    def relpath(self) -> str:
        return str(self.key.relpath())


def job_parameters(cell: Cell, opts: RunOptions, sopts: SlurmOptions, suite: str) -> dict:
    """sbatch parameters of a cell: the method's `resources` (GPUs as gres, CPUs, memory), the time limit from the
    task's (or --timeout's) budget plus MARGIN_MIN, and the cluster flags."""
    method, task, _ = cell
    r = method.resources
    parameters = {
        "job_name": f"bench-{suite}",
        "time": math.ceil(timeout_s(task, opts) / 60) + MARGIN_MIN,
        "cpus_per_task": max(1, math.ceil(r.cpus or 1)),
        "mem": f"{math.ceil(r.memory_gb * 1024)}M",
        "gres": f"gpu:{r.gpus}" if r.gpus else None,
        "partition": sopts.partition,
        "account": sopts.account,
        "qos": sopts.qos,
        "array_parallelism": sopts.max_parallel,
    }
    return {k: v for k, v in parameters.items() if v is not None}


def _submit(subs: list[Submission], store: ResultStore, record: Record) -> None:
    """Submit each group of cells with equal resources as one job array (its time limit the longest of theirs)
    and record each cell's job id."""
    groups: dict[str, list[Submission]] = {}
    for sub in subs:
        resources = {k: v for k, v in sub.parameters.items() if k != "time"}
        groups.setdefault(json.dumps(resources, sort_keys=True), []).append(sub)
    folder = _slurm_dir(store) / "jobs"
    for group in groups.values():
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=10**6)  # CellJob counts its own retries
        executor.update_parameters(**{**group[0].parameters, "time": max(sub.parameters["time"] for sub in group)})
        try:
            with executor.batch():
                jobs = [executor.submit(sub.job) for sub in group]
        except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as e:
            raise UserError(f"slurm: sbatch failed: {str(e).strip().splitlines()[-1]}") from None
        for sub, job in zip(group, jobs):
            method, task, seed = sub.cell
            entry = record.cells.setdefault(sub.relpath, {"jobs": []})
            entry.update(key=sub.key.model_dump(), method=method.name, task=task.name, seed=seed, cancelled=False)
            entry["jobs"].append(job.job_id)
            entry["submitted_at"] = now()
        flags = ", ".join(f"{k}={v}" for k, v in executor.parameters.items() if k != "job_name")
        _log(f"submitted {len(group)} cell(s) as slurm job {jobs[0].job_id.split('_')[0]} ({flags})")


def prepare_data(cells: list[Cell], opts: RunOptions) -> None:
    """Every dataset the cells read, opened once here (procedural stand-ins generated), not in every job; a
    missing or malformed one is one line before anything is submitted."""
    for dataset in dict.fromkeys(task.dataset for _, task, _ in cells):
        open_dataset(dataset, opts.data_root, synthetic=opts.synthetic)


def run_matrix_slurm(
    suite: specs.SuiteSpec,
    opts: RunOptions,
    sopts: SlurmOptions,
    store: ResultStore,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: dict[str, str] | None = None,
) -> tuple[list[RunResult], int] | None:
    """Submit the suite's cells that have no ok result and no pending or running job; then, unless detached, wait
    for every cell, resubmitting those whose jobs died, and return their results and the number of cells whose
    job raised (a user error on a node: no result); None when detached."""
    check_reachable()
    store.check_writable()
    store = ResultStore(store.root.resolve())
    opts = replace(opts, data_root=opts.data_root.resolve(), progress=False)
    if opts.weights_root:
        opts.weights_root = opts.weights_root.resolve()
    cells = matrix_cells(suite, opts, methods, seeds, overrides)
    prepare_data(cells, opts)
    runner = get_runner(opts.backend)
    subs = []
    for cell in cells:
        method, task, seed = cell
        key = cell_key(task, method.name, runner.result_ref(method), data_kind(task.dataset, opts), seed)
        job = CellJob(method.name, task.name.split("+")[0], task.overrides, seed, opts, store.root, str(key.relpath()), sopts.max_retries)  # fmt: skip
        subs.append(Submission(cell, key, job, job_parameters(cell, opts, sopts, suite.name)))
    with _records(store):
        record = Record.load(_slurm_dir(store) / f"{suite.name}.json")
        active = _active_jobs(store)
        todo, watched = [], []
        for sub in subs:
            if job := active.get(sub.relpath):
                _log(f"{_name(sub.cell)}: slurm job {job} is pending or running it: not submitted again")
                watched.append(sub)
            elif not _done(sub, opts, store):
                todo.append(sub)
        if todo:
            _submit(todo, store, record)
            record.save()
    _log(f"{len(subs)} cells: {len(todo)} submitted, {len(subs) - len(todo)} done or already submitted")
    if sopts.detach:
        _log(
            f"detached: `bench status --suite {suite.name}` shows them, `bench cancel --suite {suite.name}` stops them"
        )
        return None
    raised = _watch(todo + watched, suite.name, opts, sopts, store)
    return [r for sub in subs if (r := _result(store, sub.key)) is not None], raised


def _name(cell: Cell) -> str:
    return f"{cell[0].name} x {cell[1].name} seed {cell[2]}"


def _done(sub: Submission, opts: RunOptions, store: ResultStore) -> bool:
    """The cell has an ok result (not --force), or a newer harness's that this one leaves alone."""
    try:
        result = None if opts.force else store.get(sub.key)
    except NewerResult as e:
        _log(f"skipped: {e}")
        return True
    if result is not None and result.status == "ok":
        _log(f"{_name(sub.cell)} ({sub.key.data}): cached, skipped ({store.path(sub.key)})")
    return result is not None and result.status == "ok"


def _active_jobs(store: ResultStore) -> dict[str, str]:
    """Result path -> the job id of every recorded cell whose last job is pending or running (any suite)."""
    last = {rel: c["jobs"][-1] for r in _all_records(store) for rel, c in r.cells.items() if c["jobs"]}
    states = scheduler_states(list(last.values()))
    return {rel: job for rel, job in last.items() if states.get(job, ("",))[0] in RUNNING | WAITING}


def _watch(subs: list[Submission], suite: str, opts: RunOptions, sopts: SlurmOptions, store: ResultStore) -> int:
    """Wait until every cell's job has ended; resubmit a cell whose job ended without running it to the end
    (cancelled by `scancel`, killed, its node lost) while retries are left, else write it as a failed result
    with the scheduler's reason. Returns the number of jobs that raised (said, one line each)."""
    folder = _slurm_dir(store) / "jobs"
    waiting = {sub.relpath: sub for sub in subs}
    seen: dict[str, float] = {}
    errors: list[str] = []
    while waiting:
        record = Record.load(_slurm_dir(store) / f"{suite}.json")
        jobs = {rel: record.cells[rel]["jobs"][-1] for rel in waiting if record.cells.get(rel, {}).get("jobs")}
        states = scheduler_states(list(jobs.values()))
        retry = []
        for rel in list(waiting):
            job = jobs.get(rel)
            state, reason = states.get(job, ("", "")) if job else ("", "")
            if job and (
                state in RUNNING | WAITING or (not state and time.time() - seen.setdefault(job, time.time()) < UNSEEN_S)
            ):
                continue  # fmt: skip
            sub = waiting.pop(rel)
            outcome = _job_outcome(folder, job) if job else None
            if not job or record.cells[rel].get("cancelled") or (outcome and outcome[0] == "success"):
                continue  # done before (no job), cancelled by `bench cancel`, or ran to its end
            if outcome:  # the job raised: a user error on the node (data, weights) or a harness bug: not retried
                errors.append(f"{_name(sub.cell)}: slurm job {job} raised: {outcome[1].strip().splitlines()[-1]}")
                continue
            ended = f"slurm job {job} ended {state or 'unseen by the scheduler'}"
            ended += f" ({reason})" if reason and reason != "None" else ""
            used = max(len(record.cells[rel]["jobs"]), _starts(store, rel)) - 1
            if used < sopts.max_retries:
                _log(f"{_name(sub.cell)}: {ended} before its result: resubmitted (retry {used + 1} of {sopts.max_retries})")  # fmt: skip
                retry.append(sub)
            else:
                failure = MethodFailure(f"{ended}; {used} retries (--max-retries) exhausted")
                failure.log_tail = _log_tail(folder, job)
                run_cell(*sub.cell, opts, store, failure=failure)
        if retry:
            with _records(store):
                record = Record.load(record.path)
                _submit(retry, store, record)
                record.save()
            waiting |= {sub.relpath: sub for sub in retry}
        if waiting:
            time.sleep(sopts.poll_s)
    for line in errors:
        print(f"bench: error: {line}", file=sys.stderr)
    return len(errors)


def _result(store: ResultStore, key: ResultKey) -> RunResult | None:
    try:
        return store.get(key)
    except NewerResult:
        return None


# --- status and cancel --------------------------------------------------------------------------------------------


def status(store: ResultStore, suite: str | None = None) -> tuple[list[tuple], dict[str, int]]:
    """Per recorded cell: method, task, seed, state (pending / running / done / failed / timed out / cancelled),
    its last job and the detail (a failure's reason); and the count per state."""
    records = _all_records(store, suite)
    if not records:
        raise UserError(
            f"no Slurm submission recorded in {_slurm_dir(store)}"
            + (f" for suite {suite}" if suite else "")
            + ": `bench matrix --executor slurm` submits one"
        )
    folder = _slurm_dir(store) / "jobs"
    states = scheduler_states([c["jobs"][-1] for r in records for c in r.cells.values() if c["jobs"]])
    rows = []
    for record in records:
        for rel, cell in record.cells.items():
            job = cell["jobs"][-1]
            state, reason = states.get(job, ("", ""))
            result = _result(store, ResultKey(**cell["key"]))
            if state in RUNNING | WAITING:
                shown, detail = ("running" if state in RUNNING else "pending"), state.lower()
            elif result is not None and result.provenance.finished_at >= cell["submitted_at"]:
                shown = {"ok": "done", "failed": "failed", "timeout": "timed out"}[result.status]
                detail = result.error or ""
            elif cell.get("cancelled"):
                shown, detail = "cancelled", "by bench cancel"
            elif outcome := _job_outcome(folder, job):
                shown, detail = "failed", f"the job raised: {outcome[1].strip().splitlines()[-1]}"
            else:
                shown = "failed"
                detail = f"slurm {state or 'job unknown to the scheduler'}" + (f" ({reason})" if reason and reason != "None" else "")  # fmt: skip
                detail += ", no result: rerun the matrix to resubmit it"
            rows.append((cell["method"], cell["task"], cell["seed"], shown, job, detail))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[3]] = counts.get(row[3], 0) + 1
    return rows, counts


def render_status(rows: list[tuple]) -> str:
    return tabulate(
        rows,
        headers=["method", "task", "seed", "state", "job", "detail"],
        tablefmt="simple",
        disable_numparse=True,
        maxcolwidths=[None, None, None, None, None, 80],
    )


def cancel(store: ResultStore, suite: str | None = None) -> int:
    """scancel every pending or running job of the recorded cells (of `suite`) and mark those cells cancelled, so
    no waiting harness resubmits them; the number of jobs cancelled."""
    check_reachable()
    with _records(store):
        records = _all_records(store, suite)
        states = scheduler_states([c["jobs"][-1] for r in records for c in r.cells.values() if c["jobs"]])
        jobs = []
        for record in records:
            for cell in record.cells.values():
                if states.get(cell["jobs"][-1], ("",))[0] in RUNNING | WAITING:
                    cell["cancelled"] = True
                    jobs.append(cell["jobs"][-1])
            record.save()
        if jobs:
            subprocess.run(["scancel", *jobs], check=True)
    return len(jobs)
