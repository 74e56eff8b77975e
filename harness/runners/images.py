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
