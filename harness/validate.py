"""Conformance of a method image (`bench validate`, `bench submit`): every check runs in the docker sandbox."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.runners.images import ResolvedImage, resolve
from harness.specs import MethodSpec

CANDIDATE = "candidate"  # the name a validated image runs under


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not applicable
    detail: str


def _run_sessions(spec: MethodSpec, timeout_s: float, work) -> tuple[object, str | None]:
    """work(session) in one sandboxed session of `spec`; returns (its value, None) or (None, why it failed)."""
    from harness.errors import MethodFailure
    from harness.runners.docker import DockerRunner

    running = None
    try:
        with DockerRunner().start(spec, 0, {"name": "validate", "version": 0, "output": None, "seed": 0},
                                  timeout_s) as running:
            return work(running.session), None
    except MethodFailure as e:
        lines = running.log_tail.splitlines() if running else []
        tail = [ln for ln in lines if ln.strip() and not ln.startswith("[vrbench]")][-1:]
        return None, f"{e}" + (f" (log: {tail[0][:200]})" if tail else "")


def _check_info(info: dict) -> str | None:
    outputs = info.get("outputs")
    if not isinstance(outputs, list) or not outputs or not set(outputs) <= {"global", "dense", "masks"}:
        return f"outputs must be a non-empty list of global, dense, masks (got {outputs!r})"
    if "dense" in outputs and not (isinstance(info.get("patch_size"), int) and info["patch_size"] >= 1):
        return f"dense outputs need an integer patch_size (got {info.get('patch_size')!r})"
    if set(outputs) & {"global", "dense"} and not (isinstance(info.get("embed_dim"), int) and info["embed_dim"] >= 1):
        return f"global/dense outputs need an integer embed_dim (got {info.get('embed_dim')!r})"
    if not info.get("name") or not info.get("version"):
        return "info lacks name or version"
    return None


def _fixed_batch_outputs(session, info: dict) -> dict:
    import numpy as np

    rng = np.random.default_rng(1234)
    out = {}
    if "global" in info["outputs"]:
        out["global"] = session.embed(rng.integers(0, 256, (4, 224, 224, 3), dtype=np.uint8))
    if "dense" in info["outputs"]:
        side = 224 // info["patch_size"] * info["patch_size"]
        out["dense"] = session.embed_dense(rng.integers(0, 256, (2, side, side, 3), dtype=np.uint8))
    if "masks" in info["outputs"]:
        masks, recon = session.segment(rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8))
        out["masks"] = masks if recon is None else np.concatenate([masks.ravel(), recon.ravel()])
    return out


def candidate_yaml(name: str, image: str, info: dict, **meta) -> str:
    """method.yaml for an image, with what its info declares; None-valued metadata is left out."""
    import yaml

    body = {"name": name, "version": str(info.get("version")), "description": meta.pop("description", None)
            or f"{info.get('name')} (submitted image)", "outputs": info.get("outputs"),
            "patch_size": info.get("patch_size"), "embed_dim": info.get("embed_dim"), "image": image, **meta}
    return yaml.safe_dump({k: v for k, v in body.items() if v is not None}, sort_keys=False)


def validate(name: str, data_root: Path, timeout_s: float, tasks: list[str] | None = None
             ) -> tuple[ResolvedImage, dict, list[Check]]:
    """Run an image through the conformance checks, every one in the full sandbox (no network); `tasks` default to
    the smoke suite's."""
    import tempfile

    import numpy as np

    from harness import specs
    from harness.results import ResultStore
    from harness.run import RunOptions, incompatibility, run_cell

    resolved = resolve(name)
    checks = [Check("image", True, resolved.ref)]
    probe = MethodSpec.model_construct(name=CANDIDATE, version="0", description="", outputs=[], image=resolved.id)
    info, error = _run_sessions(probe, timeout_s, lambda s: s.info)
    checks.append(Check("handshake (info, setup)", error is None,
                        error or f"{info.get('name')} {info.get('version')}, protocol {info.get('protocol')}, "
                                 f"sdk {info.get('sdk')}, transport {info.get('transport', 'stdio')}"))
    if error:
        return resolved, {}, checks
    error = _check_info(info)
    checks.append(Check("declared outputs", error is None, error or
                        f"{', '.join(info['outputs'])}; patch {info.get('patch_size')}, dim {info.get('embed_dim')}"))
    if error:
        return resolved, info, checks
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        folder = Path(tmp) / "images" / CANDIDATE
        folder.mkdir(parents=True)
        (folder / "method.yaml").write_text(candidate_yaml(CANDIDATE, resolved.id, info))
        spec = specs.load_spec(MethodSpec, folder / "method.yaml")
        saved = os.environ.get("BENCH_IMAGES")
        os.environ["BENCH_IMAGES"] = os.pathsep.join(filter(None, [str(folder.parent), saved]))
        try:
            store = ResultStore(Path(tmp) / "results")
            opts = RunOptions(backend="docker", synthetic=True, data_root=data_root, timeout_s=timeout_s,
                              progress=False)
            for task in (specs.get("task", t) for t in tasks or specs.get("suite", "smoke").tasks):
                if incompatibility(spec, task):
                    checks.append(Check(f"task {task.name}", None, f"skipped: needs {task.output!r} outputs"))
                    continue
                try:
                    r = run_cell(CANDIDATE, task.name, 0, opts, store)
                except UserError as e:  # the harness's problem (task, data), not the image's
                    checks.append(Check(f"task {task.name} (procedural)", None, f"not checked: the harness could "
                                                                                 f"not run it: {e}"))
                    continue
                detail = ", ".join(f"{k}={v:.2f}" for k, v in r.metrics.items()) if r.status == "ok" else \
                    f"{r.status}: {r.error}"
                checks.append(Check(f"task {task.name} (procedural)", r.status == "ok", detail))
        finally:
            os.environ.pop("BENCH_IMAGES") if saved is None else os.environ.update(BENCH_IMAGES=saved)
    runs = [_run_sessions(spec, timeout_s, lambda s: _fixed_batch_outputs(s, info)) for _ in range(2)]
    if runs[0][1] or runs[1][1]:
        checks.append(Check("determinism (seed 0, twice)", False, runs[0][1] or runs[1][1]))
    else:
        diffs = {k: float(np.max(np.abs(runs[0][0][k] - runs[1][0][k]), initial=0)) for k in runs[0][0]}
        same = all(np.array_equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
        checks.append(Check("determinism (seed 0, twice)", same,
                            "equal outputs" if same else f"outputs differ: max |diff| {diffs}"))
    sandboxed = all(c.ok is not False for c in checks)
    checks.append(Check("no network needed", sandboxed, "every check ran with no network, read-only root, no "
                        "capabilities" if sandboxed else "a check failed in the sandbox (no network): see above"))
    return resolved, info, checks
