"""Method images for the docker backend: resolve a reference to one pinned image, or build a method's Dockerfile.

`image: REPO@sha256:...` is pulled by digest (and the pulled image must carry that digest); a tag is pulled
(or, without a registry host, taken locally) and recorded by the digest it points to now; a method folder
without `image:` has its Dockerfile built with the repository root as context. Every result is keyed by what
`ResolvedImage.ref` names, so a tag that moves or code that changes never reuses old results.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness.errors import UserError
from harness.provenance import hash_path
from harness.specs import REPO_ROOT, MethodSpec

BASE_ENV = "BENCH_BASE_IMAGE"  # build-arg BASE for method Dockerfiles (e.g. vrbench/base:bookworm); unset: their default
BUILT_REPO = "vrbench-built"
WHEELHOUSE = REPO_ROOT / ".cache" / "wheelhouse"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REFERENCE = re.compile(rf"^(?P<repo>(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*)"
                       r"(?::(?P<tag>\w[\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")
IMAGE_ID = re.compile(r"^(?:sha256:[0-9a-f]{64}|[0-9a-f]{12,64})$")


@dataclass(frozen=True)
class ResolvedImage:
    id: str  # the local image ID containers are created from (never a tag, which could move)
    ref: str  # what results are keyed by: REPO@sha256:<registry digest>, or the image ID of a local image


@lru_cache(maxsize=1)
def client():
    """The Docker daemon (DOCKER_HOST or the default socket); unreachable is one clear line."""
    import docker

    try:
        c = docker.from_env(timeout=120)
        c.ping()
        return c
    except Exception as e:  # docker.errors.DockerException and connection errors of every kind
        raise UserError(f"docker backend: cannot reach the Docker daemon ({str(e).splitlines()[0][:200]}); "
                        "start it with `make services`") from None


def _has_registry_host(repo: str) -> bool:
    first, _, rest = repo.partition("/")
    return bool(rest) and ("." in first or ":" in first or first == "localhost")


def _image_or_none(name: str, what: str | None = None):
    import docker

    try:
        return client().images.get(name)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as e:
        raise UserError(f"{what or 'image ' + name}: {e.explanation}") from None


def _pull(what: str, repo: str, tag_or_digest: str):
    """Pull repo:tag or repo@digest; returns (image, the manifest digest the registry served)."""
    import docker

    served = None
    try:
        for event in client().api.pull(repo, tag=tag_or_digest, stream=True, decode=True):
            if "error" in event:
                raise UserError(f"{what}: not found locally and the pull failed: {event['error']}")
            served = (re.findall(r"Digest: (sha256:[0-9a-f]{64})", str(event.get("status"))) or [served])[0]
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return client().images.get(f"{repo}{sep}{tag_or_digest}"), served
    except docker.errors.APIError as e:
        raise UserError(f"{what}: not found locally and the pull failed: {e.explanation}") from None


def resolve(name: str, where: str | Path | None = None) -> ResolvedImage:
    """Pin an image reference (REPO@sha256:..., REPO:TAG, or a local image ID) to one image."""
    what = f"{where}: image {name}" if where else f"image {name}"
    if IMAGE_ID.match(name):
        image = _image_or_none(name, what)
        if image is None:
            raise UserError(f"{what}: no local image has this ID")
        return ResolvedImage(image.id, image.id)
    m = REFERENCE.match(name)
    if not m:
        raise UserError(f"image {name!r} is not a valid image reference (REPO@sha256:<64 hex>, REPO:TAG or an "
                        "image ID)", where=where)
    repo, tag, digest = m["repo"], m["tag"], m["digest"]
    if digest:
        pinned = f"{repo}@{digest}"
        image = _image_or_none(pinned, what) or _pull(what, repo, digest)[0]
        if pinned not in image.attrs.get("RepoDigests", []):
            raise UserError(f"{what}: the image obtained does not carry digest {digest} "
                            f"(it has {image.attrs.get('RepoDigests')})")
        return ResolvedImage(image.id, pinned)
    # a tag can move: pull it whenever a registry is named, and record the digest it points to now;
    # a bare name may be a local build (no registry digest: recorded by its image ID)
    tag = tag or "latest"
    image = None if _has_registry_host(repo) else _image_or_none(f"{repo}:{tag}", what)
    if image is None:
        image, served = _pull(what, repo, tag)
        if served and f"{repo}@{served}" in image.attrs.get("RepoDigests", []):
            return ResolvedImage(image.id, f"{repo}@{served}")
    digests = [d for d in image.attrs.get("RepoDigests", []) if d.split("@")[0] == repo]
    return ResolvedImage(image.id, digests[0] if len(digests) == 1 else image.id)


def resolve_method(method: MethodSpec, quiet: bool = False) -> ResolvedImage:
    """The image a method runs as: its `image:` pinned, or its folder's Dockerfile built."""
    if method.image:
        return resolve(method.image, where=method.path)
    return build(method, base=os.environ.get(BASE_ENV) or None, quiet=quiet)


# --- building ---------------------------------------------------------------------------------------------------

def build(method: MethodSpec, base: str | None = None, quiet: bool = False) -> ResolvedImage:
    """Build images/<method>/Dockerfile (context: the repository root) once per source version.

    The build is keyed by the method folder, benchsdk/, the base and the base's image ID; an image already built
    from the same key is reused. With a `base` (a local image) the build runs without network."""
    import docker

    dockerfile = method.folder / "Dockerfile"
    if not dockerfile.is_file():
        raise UserError(f"{method.path}: no `image:` and no Dockerfile in {method.folder} to build")
    try:
        rel = dockerfile.resolve().relative_to(REPO_ROOT)
    except ValueError:
        raise UserError(f"{dockerfile}: method images are built with the repository root as context; move the "
                        f"folder under {REPO_ROOT / 'images'} or give `image:` in method.yaml") from None
    base_image = _image_or_none(base) if base else None
    code_hash = hash_path(method.folder)
    key = hashlib.sha256(json.dumps([code_hash, hash_path(REPO_ROOT / "benchsdk"), base,
                                     base_image.id if base_image else None]).encode()).hexdigest()
    tag = f"{BUILT_REPO}/{method.name}:{key[:16]}"
    existing = _image_or_none(tag)
    if existing is not None and existing.labels.get("vrbench.build_key") == key:
        return ResolvedImage(existing.id, existing.id)
    if base and base_image is None:
        raise UserError(f"{method.path}: base image {base} ({BASE_ENV}) is not on this machine; "
                        "make it with `make base-image`")
    if not quiet:
        print(f"bench: building {rel} (base {base or 'the Dockerfile default'})", file=sys.stderr, flush=True)
    args = dict(path=str(REPO_ROOT), dockerfile=str(rel), tag=tag, rm=True, forcerm=True, pull=False,
                buildargs={"BASE": base} if base else {}, network_mode="none" if base else None)
    try:
        if (method.folder / "requirements.txt").is_file():
            runtime, _ = client().images.build(**args, target="runtime")
            prepare_wheelhouse(method, runtime.id)
        image, _ = client().images.build(**args, labels={
            "vrbench.method": method.name, "vrbench.code_sha256": code_hash, "vrbench.build_key": key})
    except docker.errors.BuildError as e:
        lines = [str(x.get("stream") or x.get("error") or "").strip() for x in e.build_log]
        tail = " | ".join([ln for ln in lines if ln][-3:])
        hint = "" if base else f"; without a registry, build FROM the local base: {BASE_ENV}=vrbench/base:bookworm"
        raise UserError(f"{dockerfile}: docker build failed: {e.msg} ({tail[-600:]}){hint}") from None
    except docker.errors.APIError as e:
        raise UserError(f"{dockerfile}: docker build failed: {e.explanation}") from None
    return ResolvedImage(image.id, image.id)


def prepare_wheelhouse(method: MethodSpec, runtime_image: str) -> Path:
    """pip download the method's requirements.txt (and pip itself) for the Python of `runtime_image` into
    .cache/wheelhouse/<method>/, which its Dockerfile installs from with no index: builds need no network."""
    probe = "import platform, sys; print(sys.version_info[0], sys.version_info[1], platform.libc_ver()[1])"
    out = client().containers.run(runtime_image, ["python3", "-c", probe], remove=True, network_mode="none",
                                  entrypoint=[], user="65534:65534").decode().split()
    major, minor, glibc = out[0], out[1], out[2] if len(out) > 2 else "2.17"
    glibc_minor = int(glibc.split(".")[1]) if "." in glibc else 17
    platforms = [f"manylinux_2_{m}_{platform.machine()}" for m in range(glibc_minor, 16, -1)]
    platforms += [f"manylinux2014_{platform.machine()}", "linux_" + platform.machine()]
    requirements = (method.folder / "requirements.txt").read_text()
    dest = WHEELHOUSE / method.name
    stamp = hashlib.sha256(json.dumps([requirements, major, minor, platforms]).encode()).hexdigest()
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    with open(WHEELHOUSE / f".{method.name}.lock", "w") as lock:  # two harnesses building one method take turns
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ((dest / ".stamp").is_file() and (dest / ".stamp").read_text() == stamp):
            _download_wheels(method, dest, major, minor, platforms)
            (dest / ".stamp").write_text(stamp)
    return dest


def _download_wheels(method: MethodSpec, dest: Path, major: str, minor: str, platforms: list[str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", f"{major}.{minor}", "--implementation", "cp", "--dest", str(dest),
           *[a for p in platforms for a in ("--platform", p)], "-r", str(method.folder / "requirements.txt"), "pip"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{method.folder / 'requirements.txt'}: pip download for Python {major}.{minor} failed: "
                        f"{(proc.stderr.strip().splitlines() or ['?'])[-1][:400]}")
    (dest / "requirements.txt").write_text((method.folder / "requirements.txt").read_text())


# --- conformance: `bench validate` and `bench submit` ---------------------------------------------------------

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
