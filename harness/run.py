"""Run cells (method x task x seed) and matrices of them: specs -> data -> runner -> protocol -> result."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from harness import specs
from harness.cache import FeatureCache, ReplyKeys, cache_root
from harness.data import DATASETS, fingerprint, is_procedural, open_dataset
from harness.data.base import DatasetReader
from harness.errors import MethodFailure, MethodTimeout, UserError
from harness.protocols.base import Protocol, RunContext
from harness.provenance import compute_device, gpu_name, machine, now
from harness.results import CellBusy, DatasetInfo, NewerResult, Provenance, ResultKey, ResultStore, RunResult, Timings
from harness.runners import get_runner
from harness.runners.base import Runner, RunningMethod
from harness.runners.cached import cached_start
from harness.weights import RANDOM_INIT, expected_path, fetch_command, resolve

WEIGHTS_ABSENT = "declared weights absent: a random init of the architecture"


@dataclass
class RunOptions:
    backend: str = "local"
    synthetic: bool = False
    data_root: Path = Path(os.environ.get("BENCH_DATA", "data"))
    weights_root: Path | None = None  # None: $BENCH_WEIGHTS_ROOT or ./weights
    force: bool = False
    timeout_s: float | None = None  # None: the task's own
    progress: bool = True
    num_workers: int = 2
    cache: bool = True  # the feature cache (harness.cache); --no-cache: every request goes to the method


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def incompatibility(method: specs.MethodSpec, task: specs.TaskSpec) -> str | None:
    if task.output not in method.outputs:
        return f"method {method.name} produces {method.outputs}, task {task.name} needs {task.output!r} outputs"
    if method.fit and not task.protocol_class.has_fit_stage():
        return f"method {method.name} has a fit stage, and task {task.name}'s protocol {task.protocol!r} has none yet"
    return None


def run_cell(
    method: specs.MethodSpec,
    task: specs.TaskSpec,
    seed: int,
    opts: RunOptions,
    store: ResultStore,
    runner: Runner | None = None,
    wait: bool = True,
    failure: MethodFailure | None = None,
) -> RunResult:
    """Run one cell, or return its stored result. Method misbehaviour becomes a failed/timeout result;
    bad specs or data raise UserError before anything is written. `runner`: default, a new one of opts.backend
    (a matrix passes one, so each method is prepared once). `failure`: the cell could not run (a scheduler gave
    up on it): its result is this failure, the method is never started."""
    if reason := incompatibility(method, task):
        raise UserError(reason)
    store.check_writable()
    method = with_weights(method, opts)
    runner = runner or get_runner(opts.backend)
    key = cell_key(task, method.name, runner.result_ref(method), data_kind(task.dataset, opts), seed)
    task_info = {"name": task.name, "version": task.version, "output": task.output, "seed": seed}

    def start() -> ContextManager[RunningMethod]:
        live = partial(runner.start, method, seed, task_info, timeout_s(task, opts))
        return cached_start(*cache, live) if (cache := reply_cache(method, runner, seed, opts, store)) else live()

    return score_cell(
        task,
        key,
        opts,
        store,
        runner.name,
        (lambda: _failed(failure)) if failure else start,
        sandboxed=runner.sandboxed,
        fit=method.fit,
        weights=RANDOM_INIT if method.random_init else f"sha256:{d}" if (d := method.weights_digest) else None,
        training=_training_link(method.training),
        fit_recipe=method.fit_recipe_payload,
        wait=wait,
    )


def _fit_recipe_note(recipe: dict) -> str:
    return f"trained from scratch in its fit stage: recipe {recipe['name']!r}, {recipe['steps']} steps"


def _training_link(record: str | None) -> dict | None:
    """What a result says of weights `bench train` made: their recipe and steps, and the training record's path."""
    if record is None:
        return None
    body = json.loads(Path(record).read_text())
    return {"recipe": body["recipe"], "steps": body["steps"], "record": str(Path(record).resolve())}


def reply_cache(
    method: specs.MethodSpec, runner: Runner, seed: int, opts: RunOptions, store: ResultStore
) -> tuple[FeatureCache, ReplyKeys] | None:
    """The feature cache beside `store` and this cell's reply keys; None where replies are not cached: --no-cache,
    a backend whose ref does not name all the code (in-process), a method declared or found nondeterministic."""
    if not opts.cache or not method.deterministic or (ref := runner.cache_ref(method)) is None:
        return None
    cache = FeatureCache(cache_root(store.root))
    if why := cache.nondeterministic(runner.prepare(method)):
        _log(f"{method.name}: not cached: bench validate found it nondeterministic ({why})")
        return None
    seed_part = None if method.seed_independent and not method.random_init else seed
    return cache, ReplyKeys.of(method.name, ref, compute_device(), seed_part)


def timeout_s(task: specs.TaskSpec, opts: RunOptions) -> float:
    """The method's time budget in a cell: --timeout, else the task's."""
    return opts.timeout_s or task.timeout_s


@contextmanager
def _failed(failure: MethodFailure) -> Iterator[RunningMethod]:
    raise failure
    yield  # a context manager that never enters


def cell_key(task: specs.TaskSpec, method: str, method_ref: str, data: str, seed: int) -> ResultKey:
    """The key of a cell's result: the method's name and ref, the task with its spec hash and evaluator version."""
    return ResultKey(
        method=method,
        method_ref=method_ref,
        task=task.name,
        task_version=task.version,
        spec_hash=task.spec_hash,
        evaluator=task.evaluator,
        data=data,
        seed=seed,
    )


def data_kind(dataset: str, opts: RunOptions) -> str:
    """ "procedural" for stand-ins, also for a --data-root that holds one (it carries the marker file): the kind
    comes from the dataset itself, not from the flag alone."""
    return "procedural" if opts.synthetic or is_procedural(opts.data_root / DATASETS[dataset].subdir) else "real"


def with_weights(method: specs.MethodSpec, opts: RunOptions) -> specs.MethodSpec:
    """The method with its weights found and verified (harness.weights.resolve), before anything runs or is
    written; a random init, said once, where declared weights are absent on procedural data."""
    resolved = resolve(method, opts.weights_root, opts.synthetic)
    if resolved.random_init and not method.random_init:
        _log(
            f"{method.name}: no weights at {expected_path(resolved)}: on procedural data it runs with a random "
            f"init, recorded as weights: {RANDOM_INIT} ({fetch_command(resolved)} gets them)"
        )
    return resolved


@dataclass
class Prepared:
    """A task ready to run: its dataset, protocol and context (the context's session is set by the caller)."""

    dataset: DatasetReader
    dataset_info: DatasetInfo
    protocol: Protocol
    ctx: RunContext


def prepare(task: specs.TaskSpec, seed: int, opts: RunOptions, fit: bool = False) -> Prepared:
    """Open the task's dataset and make its protocol and run context (`fit`: the method has a fit stage); bad data
    raises UserError."""
    dataset = open_dataset(task.dataset, opts.data_root, synthetic=opts.synthetic)
    kind = data_kind(task.dataset, opts)
    dataset_info = DatasetInfo(
        name=task.dataset,
        kind=kind,
        root=str(dataset.root),
        fingerprint=fingerprint(dataset.root),
    )
    ctx = RunContext(
        session=None,
        seed=seed,
        fit=fit,
        fit_labels=task.fit_labels,
        procedural=kind == "procedural",
        device="cuda" if gpu_name() else "cpu",
        batch_size=task.batch_size,
        num_workers=opts.num_workers,
        progress=opts.progress,
    )
    return Prepared(dataset, dataset_info, task.make_protocol(), ctx)


def score_cell(
    task: specs.TaskSpec,
    key: ResultKey,
    opts: RunOptions,
    store: ResultStore,
    backend: str,
    start: Callable[[], ContextManager[RunningMethod]],
    external: bool = False,
    sandboxed: bool = False,
    fit: bool = False,
    weights: str | None = None,
    training: dict | None = None,
    fit_recipe: dict | None = None,
    wait: bool = True,
) -> RunResult:
    """Score one cell with the session that `start()` provides and store the result, or return the stored ok
    result of an equal key. The session comes from a runner (a started method) or, for external outputs,
    from replayed files. `fit`: the method has a fit stage, which the protocol runs first (timed as fit_s).
    The cell's lock is held while it runs, so a concurrent harness waits for it (`wait=False`: raise CellBusy),
    then finds its result."""
    with _claim(key, opts, store, wait) as cached:
        if cached is not None:
            return cached
        t0, started = time.perf_counter(), now()
        run = prepare(task, key.seed, opts, fit=fit)
        ctx = run.ctx
        _log(f"{key.method} x {task.name} seed {key.seed} ({key.data} data, {backend} backend)")
        status, error, log_tail, outcome, running = "ok", None, "", None, None
        try:
            with start() as running:
                ctx.session = running.session
                outcome = run.protocol.execute(run.dataset, ctx)
        except MethodFailure as e:
            status, error, log_tail = "timeout" if isinstance(e, MethodTimeout) else "failed", str(e), e.log_tail
        if outcome and (bad := {k: v for k, v in outcome.metrics.items() if not math.isfinite(v)}):
            status, error, outcome.metrics = "failed", f"the evaluator gave non-finite metrics {bad}: none recorded", {}

        session = running.session if running else None
        total = time.perf_counter() - t0
        method_s = session.method_seconds if session else 0.0
        fit_s = session.fit_seconds if session else 0.0
        data_s, evaluator_s = ctx.stopwatch.totals["data"], ctx.stopwatch.totals["evaluator"]
        result = RunResult(
            key=key,
            status=status,
            error=error,
            external=external,
            metrics=outcome.metrics if outcome else {},
            details=outcome.details if outcome else {},
            notes=(outcome.notes if outcome else [])
            + (["procedural stand-in data: not comparable to published numbers"] if key.data == "procedural" else [])
            + ([f"{WEIGHTS_ABSENT}: not the method's numbers"] if weights == RANDOM_INIT else [])
            + ([_fit_recipe_note(fit_recipe)] if fit_recipe else []),
            provenance=Provenance(
                **machine(),
                task_spec_hash=task.spec_hash,
                task_params=task.protocol_params.model_dump(mode="json"),
                task_overrides=task.overrides,
                backend=backend,
                sandboxed=sandboxed,
                weights=weights,
                training=training,
                fit_recipe={k: fit_recipe[k] for k in ("name", "steps", "hash")} if fit_recipe else None,
                dataset=run.dataset_info,
                method_info=session.info.model_dump(mode="json") if session and session.info else {},
                started_at=started,
                finished_at=now(),
            ),
            timings=Timings(
                total_s=total,
                method_s=method_s,
                fit_s=fit_s,
                data_s=data_s,
                evaluator_s=evaluator_s,
                harness_s=max(0.0, total - method_s - fit_s - data_s - evaluator_s),
                images_sent=session.images_sent if session else 0,
                bytes_sent=session.bytes_sent if session else 0,
                cached_requests=getattr(session, "cached_requests", 0),
                cache_s=getattr(session, "cache_seconds", 0.0),
                method_peak_bytes=running.peak_memory_bytes if running else None,
            ),
            log_tail=log_tail,
        )
        path = store.put(result)
        summary = ", ".join(f"{k}={v:.2f}" for k, v in result.metrics.items()) or error
        hits = f", {n} request(s) from the feature cache" if (n := result.timings.cached_requests) else ""
        _log(f"{key.method} x {task.name} seed {key.seed}: {status} in {total:.1f}s ({summary}{hits}) -> {path}")
        return result


@contextmanager
def _claim(key: ResultKey, opts: RunOptions, store: ResultStore, wait: bool) -> Iterator[RunResult | None]:
    """The stored ok result of `key` (unless --force), else None with the cell's lock held: checked again once
    the lock is held, since another harness may have run the cell while this one waited."""
    if (cached := _cached(key, opts, store)) is not None:
        yield cached
        return
    with store.lock(key, wait=wait):
        yield _cached(key, opts, store)


def _cached(key: ResultKey, opts: RunOptions, store: ResultStore) -> RunResult | None:
    """The stored ok result of `key`, unless --force."""
    cached = None if opts.force else store.get(key)
    if cached is not None and cached.status == "ok":
        _log(f"{key.method} x {key.task} seed {key.seed} ({key.data}): cached, skipped ({store.path(key)})")
        return cached
    return None


def run_matrix(
    suite: specs.SuiteSpec,
    opts: RunOptions,
    store: ResultStore,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: dict[str, str] | None = None,
) -> list[RunResult]:
    """Every compatible (method, task, seed) cell of a suite, each once however often it is named; a failing cell
    never stops the others."""
    runner = get_runner(opts.backend)
    cells = matrix_cells(suite, opts, methods, seeds, overrides)
    results, busy = [], []
    for cell in cells:  # a cell another harness is running now waits until the end, then is found done
        try:
            results.append(run_cell(*cell, opts, store, runner, wait=False))
        except CellBusy as e:
            _log(f"{cell[0].name} x {cell[1].name} seed {cell[2]}: another bench is running it ({e}): later")
            busy.append(cell)
        except NewerResult as e:
            _log(f"skipped: {e}")
    for cell in busy:
        results.append(run_cell(*cell, opts, store, runner))
    return results


Cell = tuple[specs.MethodSpec, specs.TaskSpec, int]


def matrix_cells(
    suite: specs.SuiteSpec,
    opts: RunOptions,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: dict[str, str] | None = None,
) -> list[Cell]:
    """A suite's compatible (method, task, seed) cells in run order, each once however often it is named; every
    method's weights are checked here, before the first cell runs."""
    tasks = [specs.get("task", t).with_overrides(overrides or {}) for t in dict.fromkeys(suite.tasks)]
    method_specs = [
        with_weights(specs.get("method", m), opts)
        for m in dict.fromkeys(methods or suite.methods or specs.baseline_methods())
    ]
    return [
        (method, task, seed)
        for task in tasks
        for method in method_specs
        if not _skipped(method, task)
        for seed in dict.fromkeys(seeds or suite.seeds)
    ]


def _skipped(method: specs.MethodSpec, task: specs.TaskSpec) -> bool:
    if reason := incompatibility(method, task):
        _log(f"skipped: {reason}")
    return reason is not None


def evaluate(
    method,
    task: str | specs.TaskSpec,
    seed: int = 0,
    data: str = "synthetic",
    data_root: Path | str | None = None,
    results: Path | str | None = None,
    force: bool = False,
    overrides: dict | None = None,
    progress: bool = False,
    num_workers: int = 0,
) -> RunResult:
    """Score a benchsdk `Method` instance on a task from Python (a notebook, a test), in this process.

    The same protocols, reply validation and result JSON as `bench run` (results under `results`, default
    $BENCH_RESULTS or leaderboard/results), with the in-process backend: unsandboxed, no time limit. `data`:
    "synthetic" (procedural stand-ins, made if absent) or "real" (under `data_root`, default $BENCH_DATA or ./data).
    `overrides`: task parameters, as `bench run --set`."""
    from harness.runners.inprocess import InProcessRunner, spec_for

    if data not in ("synthetic", "real"):
        raise UserError(f"data={data!r}: use 'synthetic' or 'real'")
    task = specs.get("task", task) if isinstance(task, str) else task
    opts = RunOptions(
        backend="inprocess",
        synthetic=data == "synthetic",
        force=force,
        progress=progress,
        num_workers=num_workers,
        **({"data_root": Path(data_root)} if data_root else {}),
    )
    return run_cell(
        spec_for(method),
        task.with_overrides(overrides or {}),
        seed,
        opts,
        ResultStore(results),
        InProcessRunner(method),
    )
