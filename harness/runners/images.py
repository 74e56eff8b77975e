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
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness.errors import UserError
from harness.provenance import hash_path
from harness.specs import REPO_ROOT, MethodSpec

BASE_ENV = (
    "BENCH_BASE_IMAGE"  # build-arg BASE for method Dockerfiles (e.g. vrbench/base:bookworm); unset: their default
)
BUILT_REPO = "vrbench-built"
WHEELHOUSE = REPO_ROOT / ".cache" / "wheelhouse"
GENERATED = REPO_ROOT / ".cache" / "dockerfiles"  # Dockerfiles generated for method folders without one
BASE_DIR = REPO_ROOT / "images" / "_base"  # the shared Dockerfile and the runtimes' requirements
BUILD_TIMEOUT = 3600  # seconds a build request may go without output (installing torch's wheels is silent for minutes)

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REFERENCE = re.compile(
    rf"^(?P<repo>(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>\w[\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
IMAGE_ID = re.compile(r"^(?:sha256:[0-9a-f]{64}|[0-9a-f]{12,64})$")


@dataclass(frozen=True)
class ResolvedImage:
    id: str  # the local image ID containers are created from (never a tag, which could move)
    ref: str  # what results are keyed by: REPO@sha256:<registry digest>, or the image ID of a local image


@lru_cache(maxsize=8)
def client(host: str | None = None):
    """The Docker-API daemon at `host` (e.g. unix:///run/user/1000/podman/podman.sock), else at DOCKER_HOST or the
    default socket; unreachable is one clear line."""
    import docker

    try:
        c = docker.DockerClient(base_url=host, timeout=120) if host else docker.from_env(timeout=120)
        c.ping()
        return c
    except Exception as e:  # docker.errors.DockerException and connection errors of every kind
        raise UserError(
            f"docker backend: cannot reach the Docker daemon ({str(e).splitlines()[0][:200]}); "
            "start it with `make services`"
        ) from None


def _has_registry_host(repo: str) -> bool:
    first, _, rest = repo.partition("/")
    return bool(rest) and ("." in first or ":" in first or first == "localhost")


def _image_or_none(dc, name: str, what: str | None = None):
    import docker

    try:
        return dc.images.get(name)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as e:
        raise UserError(f"{what or 'image ' + name}: {e.explanation}") from None


def _pull(dc, what: str, repo: str, tag_or_digest: str):
    """Pull repo:tag or repo@digest; returns (image, the manifest digest the registry served)."""
    import docker

    served = None
    try:
        for event in dc.api.pull(repo, tag=tag_or_digest, stream=True, decode=True):
            if "error" in event:
                raise UserError(f"{what}: not found locally and the pull failed: {event['error']}")
            served = (re.findall(r"Digest: (sha256:[0-9a-f]{64})", str(event.get("status"))) or [served])[0]
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return dc.images.get(f"{repo}{sep}{tag_or_digest}"), served
    except docker.errors.APIError as e:
        raise UserError(f"{what}: not found locally and the pull failed: {e.explanation}") from None


def resolve(name: str, where: str | Path | None = None, dc=None) -> ResolvedImage:
    """Pin an image reference (REPO@sha256:..., REPO:TAG, or a local image ID) to one image (on daemon `dc`,
    default client())."""
    dc = dc or client()
    what = f"{where}: image {name}" if where else f"image {name}"
    if IMAGE_ID.match(name):
        image = _image_or_none(dc, name, what)
        if image is None:
            raise UserError(f"{what}: no local image has this ID")
        return ResolvedImage(image.id, image.id)
    m = REFERENCE.match(name)
    if not m:
        raise UserError(
            f"image {name!r} is not a valid image reference (REPO@sha256:<64 hex>, REPO:TAG or an image ID)",
            where=where,
        )
    repo, tag, digest = m["repo"], m["tag"], m["digest"]
    if digest:
        pinned = f"{repo}@{digest}"
        image = _image_or_none(dc, pinned, what) or _pull(dc, what, repo, digest)[0]
        if pinned not in image.attrs.get("RepoDigests", []):
            raise UserError(
                f"{what}: the image obtained does not carry digest {digest} (it has {image.attrs.get('RepoDigests')})"
            )
        return ResolvedImage(image.id, pinned)
    # a tag can move: pull it whenever a registry is named, and record the digest it points to now;
    # a bare name may be a local build (no registry digest: recorded by its image ID)
    tag = tag or "latest"
    image = None if _has_registry_host(repo) else _image_or_none(dc, f"{repo}:{tag}", what)
    if image is None:
        image, served = _pull(dc, what, repo, tag)
        if served and f"{repo}@{served}" in image.attrs.get("RepoDigests", []):
            return ResolvedImage(image.id, f"{repo}@{served}")
    digests = [d for d in image.attrs.get("RepoDigests", []) if d.split("@")[0] == repo]
    return ResolvedImage(image.id, digests[0] if len(digests) == 1 else image.id)


def resolve_method(method: MethodSpec, quiet: bool = False, dc=None) -> ResolvedImage:
    """The image a method runs as: its `image:` pinned, or its folder's (or generated) Dockerfile built."""
    if method.image:
        return resolve(method.image, where=method.path, dc=dc)
    return build(method, base=os.environ.get(BASE_ENV) or None, quiet=quiet, dc=dc)


# --- building ---------------------------------------------------------------------------------------------------
#
# A method image is three images deep, each built once per content and shared by everything above it:
#   runtime  images/_base/Dockerfile FROM the base, with the wheels of images/_base/<runtime>.txt, benchsdk, the user,
#            the environment and the entrypoint (vrbench-runtime/<runtime>:<key>); torch's layers live here, once;
#   extras   the same Dockerfile FROM the runtime, with the method's requirements.txt minus what the runtime has
#            (vrbench-extras/<method>:<key>; only for a method with a requirements.txt);
#   method   the folder's Dockerfile, or the one generated from method.yaml, FROM the last (build-arg RUNTIME), which
#            adds only the method's code (vrbench-built/<method>:<key>).


def runtimes() -> dict[str, Path]:
    """Runtime name -> its requirements file (images/_base/<name>.txt)."""
    return {p.stem: p for p in sorted(BASE_DIR.glob("*.txt"))}


def generated_dockerfile(method: MethodSpec) -> str:
    """The Dockerfile of a method folder that has none: its Python files, and those of the folders it includes
    (copied first: the method's own win a name they share, as on the local backend), on top of its runtime."""
    folder, *included = (f.resolve().relative_to(REPO_ROOT).as_posix() for f in method.code_folders)
    lines = [
        f"# Generated by harness/runners/images.py for {folder} (no Dockerfile of its own): its Python files",
        f"# on top of runtime {method.runtime!r} (images/_base/Dockerfile), whose image the harness passes as RUNTIME.",
        "# A method that needs more ships its own Dockerfile, FROM ${RUNTIME} like this one.",
        "ARG RUNTIME",
        "FROM ${RUNTIME}",
        *(f"COPY {inc}/*.py /method/" for inc in included),
        f"COPY {folder}/*.py /method/",
    ]
    if method.entrypoint != "adapter.py":
        lines.append(f'ENTRYPOINT ["python3", "/method/{method.entrypoint}"]')
    return "\n".join(lines) + "\n"


def method_dockerfile(method: MethodSpec) -> Path:
    """The Dockerfile a method's image is built from: the folder's own, else the generated one, written (when it
    changed) to .cache/dockerfiles/<method>/Dockerfile, inside the build context, where it can be read."""
    try:
        for folder in method.code_folders:
            folder.resolve().relative_to(REPO_ROOT)
    except ValueError:
        raise UserError(
            f"{method.folder}: method images are built with the repository root as context; move the "
            f"folder under {REPO_ROOT / 'images'} or give `image:` in method.yaml"
        ) from None
    own = method.folder / "Dockerfile"
    if own.is_file():
        return own.resolve()
    if not any(method.folder.glob("*.py")):
        raise UserError(f"{method.path}: no `image:`, no Dockerfile and no Python files in {method.folder} to build")
    text, path = generated_dockerfile(method), GENERATED / method.base / "Dockerfile"
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def build(method: MethodSpec, base: str | None = None, quiet: bool = False, dc=None) -> ResolvedImage:
    """Build a method's image (context: the repository root) on its runtime, once per source version.

    Every layer is keyed by what goes into it: the runtime by images/_base/, benchsdk/, the base and the base's image
    ID; the extras by the method's requirements.txt and the runtime's image ID; the method by its code (its folder
    and those it includes: MethodSpec.code_hash), its Dockerfile and the image it is built FROM. An image already
    built from the same key is reused. With a `base` (a local image) nothing is built with network."""
    import docker

    dc = dc or client()
    dockerfile = method_dockerfile(method)
    rel = dockerfile.relative_to(REPO_ROOT)
    if method.runtime not in runtimes():
        raise UserError(
            f"runtime: {method.runtime!r} is not one of {', '.join(runtimes())} (images/_base/*.txt)", where=method.path
        )
    base_image = _image_or_none(dc, base) if base else None
    if base and base_image is None:
        raise UserError(
            f"{method.path}: base image {base} ({BASE_ENV}) is not on this machine; make it with `make base-image`"
        )
    say = (lambda msg: None) if quiet else (lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))
    parent = _layer(
        dc,
        "runtime",
        method.runtime,
        base_image.id if base_image else None,
        runtimes()[method.runtime],
        offline=base is not None,
        say=say,
        what=f"{method.path}: runtime {method.runtime}",
        base_name=base or "the CUDA default",
    )
    if (method.folder / "requirements.txt").is_file():
        parent = _layer(
            dc,
            "extras",
            method.base,
            parent,
            method.folder / "requirements.txt",
            offline=True,
            say=say,
            what=str(method.folder / "requirements.txt"),
            base_name=f"runtime {method.runtime}",
            wheelhouse=WHEELHOUSE / method.base,
        )
    code_hash = method.code_hash
    key = hashlib.sha256(json.dumps([code_hash, dockerfile.read_text(), parent]).encode()).hexdigest()
    tag = f"{BUILT_REPO}/{method.base}:{key[:16]}"
    existing = _image_or_none(dc, tag)
    if existing is not None and existing.labels.get("vrbench.build_key") == key:
        return ResolvedImage(existing.id, existing.id)
    say(f"building {rel} on runtime {method.runtime} (base {base or 'the CUDA default'})")
    try:
        image, _ = dc.images.build(
            path=str(REPO_ROOT),
            dockerfile=str(rel),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            timeout=BUILD_TIMEOUT,
            buildargs={"RUNTIME": parent},
            network_mode="none" if base else None,
            labels={
                "vrbench.method": method.base,
                "vrbench.code_sha256": code_hash,
                "vrbench.build_key": key,
                "vrbench.runtime": method.runtime,
                "org.opencontainers.image.title": method.base,
            },
        )
    except docker.errors.BuildError as e:
        hint = "" if base else f"; without a registry, build FROM the local base: {BASE_ENV}=vrbench/base:bookworm"
        raise UserError(f"{dockerfile}: docker build failed: {e.msg} ({_log_tail(e)}){hint}") from None
    except docker.errors.APIError as e:
        raise UserError(f"{dockerfile}: docker build failed: {e.explanation}") from None
    return ResolvedImage(image.id, image.id)


def _layer(
    dc,
    kind: str,
    name: str,
    base_id: str | None,
    requirements: Path,
    offline: bool,
    say,
    what: str,
    base_name: str,
    wheelhouse: Path | None = None,
) -> str:
    """Build images/_base/Dockerfile FROM `base_id` (None: its CUDA default) with the wheels of `requirements` into
    /opt/runtime (kind runtime) or /opt/deps (kind extras); returns the image ID, or `base_id` itself when the
    requirements add nothing to it. Reused while the Dockerfile, benchsdk/, the requirements and the base are."""
    import docker

    site = {"runtime": "/opt/runtime", "extras": "/opt/deps"}[kind]
    key = hashlib.sha256(
        json.dumps(
            [
                (BASE_DIR / "Dockerfile").read_text(),
                hash_path(REPO_ROOT / "benchsdk"),
                requirements.read_text(),
                base_id,
                site,
            ]
        ).encode()
    ).hexdigest()
    tag = f"vrbench-{kind}/{name}:{key[:16]}"
    existing = _image_or_none(dc, tag)
    if existing is not None and existing.labels.get("vrbench.build_key") == key:
        return existing.id
    args = dict(
        rm=True,
        forcerm=True,
        pull=False,
        timeout=BUILD_TIMEOUT,
        custom_context=True,
        buildargs={"SITE": site, **({"BASE": base_id} if base_id else {})},
        network_mode="none" if offline else None,
    )
    try:
        python = base_id
        if kind == "runtime":  # the python stage first: the wheels are downloaded for its Python
            with _context() as ctx:
                python = dc.images.build(fileobj=ctx, target="python", **args)[0].id
        dest = _wheelhouse(
            dc, requirements, python, wheelhouse or WHEELHOUSE / f"{kind}.{name}", what, constrained=kind == "extras"
        )
        if not (dest / "requirements.txt").read_text().strip():
            if kind == "extras":
                return base_id  # everything it asks for is in the runtime already
            raise UserError(f"{requirements}: a runtime needs at least one package")
        say(
            f"building the {kind} image {name} from {requirements.relative_to(REPO_ROOT)} on {base_name}"
            + (" (minutes, for a runtime as large as torch)" if kind == "runtime" else "")
        )
        with _context(dest) as ctx:
            image, _ = dc.images.build(
                fileobj=ctx, tag=tag, labels={"vrbench.build_key": key, f"vrbench.{kind}": name}, **args
            )
    except docker.errors.BuildError as e:
        hint = "" if offline else f"; without a registry, build FROM the local base: {BASE_ENV}=vrbench/base:bookworm"
        raise UserError(
            f"{what}: docker build of images/_base/Dockerfile failed: {e.msg} ({_log_tail(e)}){hint}"
        ) from None
    except docker.errors.APIError as e:
        raise UserError(f"{what}: docker build of images/_base/Dockerfile failed: {e.explanation}") from None
    return image.id


def _log_tail(e) -> str:
    lines = [str(x.get("stream") or x.get("error") or "").strip() for x in e.build_log]
    return " | ".join([ln for ln in lines if ln][-3:])[-600:]


@contextmanager
def _context(wheels: Path | None = None):
    """The build context of images/_base/Dockerfile, as an uncompressed tar in a temporary file: the Dockerfile,
    benchsdk/ and the wheelhouse as wheels/ (only the Dockerfile for the python stage, which copies nothing)."""
    (REPO_ROOT / ".cache").mkdir(exist_ok=True)
    with tempfile.TemporaryFile(dir=REPO_ROOT / ".cache") as f:
        with tarfile.open(fileobj=f, mode="w") as tar:
            tar.add(BASE_DIR / "Dockerfile", arcname="Dockerfile")
            if wheels is not None:
                tar.add(
                    REPO_ROOT / "benchsdk",
                    arcname="benchsdk",
                    filter=lambda t: None if "__pycache__" in t.name or t.name.endswith(".pyc") else t,
                )
                tar.add(wheels, arcname="wheels", filter=lambda t: None if Path(t.name).name.startswith(".") else t)
        f.seek(0)
        yield f


def prepare_wheelhouse(method: MethodSpec, image: str, dc=None) -> Path:
    """The wheelhouse of a method's requirements.txt for `image` (a runtime, or an image built on it):
    .cache/wheelhouse/<method>/, which images/_base/Dockerfile installs from with no index."""
    return _wheelhouse(
        dc or client(),
        method.folder / "requirements.txt",
        image,
        WHEELHOUSE / method.base,
        str(method.folder / "requirements.txt"),
        constrained=True,
    )


_PROBE = """import importlib.metadata as m, platform, sys
print(sys.version_info[0], sys.version_info[1], platform.libc_ver()[1] or "2.17")
for d in m.distributions(path=["/opt/runtime"]):
    print(d.metadata["Name"], d.version)
"""


def _wheelhouse(dc, requirements: Path, image: str, dest: Path, what: str, constrained: bool) -> Path:
    """pip download `requirements` (and pip itself) on the host for the Python of `image` into `dest`. With
    `constrained`, pinned to the versions the image's runtime (/opt/runtime) already has, and without those: the
    wheelhouse then holds only what goes on top. Its requirements.txt pins every wheel to install (pip excepted).
    One download per requirements, Python and runtime: harnesses preparing one wheelhouse at once take turns."""
    out = (
        dc.containers.run(
            image, ["python3", "-c", _PROBE], remove=True, network_mode="none", entrypoint=[], user="65534:65534"
        )
        .decode()
        .splitlines()
    )
    major, minor, glibc = out[0].split()
    has = dict(line.split(" ", 1) for line in out[1:] if line.strip()) if constrained else {}
    has = {_canonical(k): v for k, v in has.items()}
    glibc_minor = int(glibc.split(".")[1]) if "." in glibc else 17
    platforms = [f"manylinux_2_{m}_{platform.machine()}" for m in range(glibc_minor, 16, -1)]
    platforms += [f"manylinux2014_{platform.machine()}", "linux_" + platform.machine()]
    stamp = hashlib.sha256(
        json.dumps([requirements.read_text(), major, minor, platforms, sorted(has.items())]).encode()
    ).hexdigest()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:  # two harnesses building one method take turns
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ((dest / ".stamp").is_file() and (dest / ".stamp").read_text() == stamp):
            _download_wheels(requirements, dest, major, minor, platforms, has, what)
            (dest / ".stamp").write_text(stamp)
    return dest


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _download_wheels(
    requirements: Path, dest: Path, major: str, minor: str, platforms: list[str], has: dict[str, str], what: str
) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        old.unlink()
    (dest / ".constraints.txt").write_text("".join(f"{k}=={v}\n" for k, v in sorted(has.items())))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--python-version",
        f"{major}.{minor}",
        "--implementation",
        "cp",
        "--dest",
        str(dest),
        *[a for p in platforms for a in ("--platform", p)],
        "-r",
        str(requirements),
        "-c",
        str(dest / ".constraints.txt"),
        "pip",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(
            f"{what}: pip download for Python {major}.{minor} failed: "
            f"{(proc.stderr.strip().splitlines() or ['?'])[-1][:400]}"
        )
    pins = []
    for wheel in sorted(dest.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        if _canonical(name) in has:  # the runtime has it (at this very version: the download was pinned to it)
            wheel.unlink()
        elif _canonical(name) != "pip":
            pins.append(f"{name}=={version}\n")
    (dest / "requirements.txt").write_text("".join(pins))
