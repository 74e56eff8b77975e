"""Conformance of a method image (`bench validate`, `bench submit`): every check runs in the docker sandbox."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.cache import FeatureCache, cache_root
from harness.contract import OUTPUTS, MethodInfo
from harness.errors import MethodFailure, UserError
from harness.lifetime import owned_prefix
from harness.runners.base import RUN_FOLDER
from harness.runners.images import ResolvedImage, resolve, resolve_method
from harness.specs import MethodSpec

CANDIDATE = "candidate"  # the name a validated image runs under


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not applicable
    detail: str


def _run_sessions(spec: MethodSpec, timeout_s: float, work, output: str | None = None) -> tuple[object, str | None]:
    """work(session) in one sandboxed session of `spec` (set up for `output`); returns (its value, None) or (None, why
    it failed)."""
    from harness.runners.docker import DockerRunner

    running = None
    try:
        with DockerRunner().start(
            spec, 0, {"name": "validate", "version": 0, "output": output, "seed": 0}, timeout_s
        ) as running:
            return work(running.session), None
    except MethodFailure as e:
        lines = running.log_tail.splitlines() if running else []
        tail = [ln for ln in lines if ln.strip() and not ln.startswith("[vrbench]")][-1:]
        return None, f"{e}" + (f" (log: {tail[0][:200]})" if tail else "")


def _fixed_batch_output(session, info: MethodInfo, kind: str):
    """Output `kind` on one fixed random batch (masks and reconstructions flattened together), after a fit stage on
    that batch for a method that has one."""
    import numpy as np

    from harness.contract import FitBatch

    rng = np.random.default_rng(1234)
    side = {"global": 224, "dense": 224 // (info.patch_size or 1) * (info.patch_size or 1), "masks": 128}[kind]
    batch = rng.integers(0, 256, (4 if kind == "global" else 2, side, side, 3), dtype=np.uint8)
    if info.fit:
        session.fit(iter([FitBatch(batch)]), with_labels=False)
    reply = getattr(session, OUTPUTS[kind].op)(batch)
    if kind == "masks":
        masks, recon = reply
        reply = masks if recon is None else np.concatenate([masks.ravel(), recon.ravel()])
    return reply


def _determinism(spec: MethodSpec, info: MethodInfo, timeout_s: float, refs: set[str]) -> Check:
    """Each declared output twice, in two sessions with seed 0 (a fit stage first, where the method has one). What it
    finds is recorded in the feature cache under the image's `refs`: a nondeterministic image's replies are never
    stored."""
    import numpy as np

    from harness.results import ResultStore

    name, diffs = "determinism (seed 0, twice)", {}
    for kind in info.outputs:
        runs = [_run_sessions(spec, timeout_s, lambda s: _fixed_batch_output(s, info, kind), kind) for _ in range(2)]
        if error := runs[0][1] or runs[1][1]:
            return Check(name, False, error)
        if not np.array_equal(runs[0][0], runs[1][0]):
            diffs[kind] = float(np.max(np.abs(runs[0][0] - runs[1][0]), initial=0))
    check = Check(name, not diffs, f"outputs differ: max |diff| {diffs}" if diffs else "equal outputs")
    cache = FeatureCache(cache_root(ResultStore().root))
    for ref in refs:
        cache.record_determinism(ref, check.detail if diffs else None)
    return check


def candidate_yaml(name: str, image: str, info: MethodInfo, **meta) -> str:
    """method.yaml for an image, with what its info declares; None-valued metadata is left out."""
    import yaml

    body = {
        "name": name,
        "version": info.version,
        "description": meta.pop("description", None) or f"{info.name} (submitted image)",
        "outputs": info.outputs,
        "patch_size": info.patch_size,
        "embed_dim": info.embed_dim,
        "fit": info.fit or None,
        "image": image,
        **meta,
    }
    return yaml.safe_dump({k: v for k, v in body.items() if v is not None}, sort_keys=False)


def validate(
    name: str, data_root: Path, timeout_s: float, tasks: list[str] | None = None, method: MethodSpec | None = None
) -> tuple[ResolvedImage, MethodInfo | None, list[Check]]:
    """Run an image through the conformance checks, every one in the full sandbox (no network); `tasks` default to
    the smoke suite's. `method`: the image is this method's (built or pulled as `bench run` would), and its sessions
    get what its method.yaml gives them besides the info: the recipe its fit stage trains (fit_recipe)."""

    from harness import specs
    from harness.results import ResultStore
    from harness.run import RunOptions, incompatibility, run_cell
    from harness.runners.docker import DockerRunner

    resolved = resolve_method(method) if method else resolve(name)
    checks = [Check("image", True, resolved.ref + (f" ({method.name}'s)" if method else ""))]
    from_yaml = {"recipes": method.recipes, "fit_recipe": method.fit_recipe} if method else {}
    probe = MethodSpec.model_construct(
        name=CANDIDATE, version="0", description="", outputs=[], image=resolved.id, weights=None, **from_yaml
    )
    info, error = _run_sessions(probe, timeout_s, lambda s: s.info)
    checks.append(
        Check(
            "handshake (info, setup)",
            error is None,
            error
            or f"{info.name} {info.version}, protocol {info.protocol}, sdk {info.sdk}, transport {info.transport}",
        )
    )
    if error:
        return resolved, None, checks
    checks.append(Check("declared outputs", True, info.summary()))
    spec = MethodSpec(
        name=CANDIDATE,
        version=info.version,
        description=f"{info.name} (submitted image)",
        outputs=info.outputs,
        patch_size=info.patch_size,
        embed_dim=info.embed_dim,
        fit=info.fit,
        image=resolved.id,
        **from_yaml,
    )
    runner = DockerRunner()
    with tempfile.TemporaryDirectory(prefix=owned_prefix(f"{RUN_FOLDER}validate-")) as tmp:  # see Runner.start
        store = ResultStore(Path(tmp) / "results")
        opts = RunOptions(  # every request to the image itself: it is what is checked
            backend="docker", synthetic=True, data_root=data_root, timeout_s=timeout_s, progress=False, cache=False
        )
        for task in (specs.get("task", t) for t in tasks or specs.get("suite", "smoke").tasks):
            if reason := incompatibility(spec, task):
                checks.append(Check(f"task {task.name}", None, f"skipped: {reason}"))
                continue
            try:
                r = run_cell(spec, task, 0, opts, store, runner)
            except UserError as e:  # the harness's problem (task, data), not the image's
                checks.append(
                    Check(f"task {task.name} (procedural)", None, f"not checked: the harness could not run it: {e}")
                )
                continue
            detail = (
                ", ".join(f"{k}={v:.2f}" for k, v in r.metrics.items())
                if r.status == "ok"
                else f"{r.status}: {r.error}"
            )
            checks.append(Check(f"task {task.name} (procedural)", r.status == "ok", detail))
    checks.append(_determinism(spec, info, timeout_s, {resolved.id, resolved.ref}))
    sandboxed = all(c.ok is not False for c in checks)
    checks.append(
        Check(
            "no network needed",
            sandboxed,
            "every check ran with no network, read-only root, no capabilities"
            if sandboxed
            else "a check failed in the sandbox (no network): see above",
        )
    )
    return resolved, info, checks
