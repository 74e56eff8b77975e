"""Where a result came from: code version, machine, libraries."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from harness import REPO_ROOT, __version__

LIBRARIES = ("numpy", "scipy", "scikit-learn", "torch", "torchvision", "timm", "pydantic", "pillow")


def hash_path(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's relative paths and file contents (caches ignored), streamed.
    Remembered while no file's size or modification time changes: weights are read once per matrix, not per cell."""
    return hash_files([(path, "")] if path.is_file() else _folder_files(path))


def hash_folders(folders: list[Path]) -> str:
    """hash_path of one folder; of several (a method folder and the folders it includes), every file's contents
    named by its folder's place in the list and its path in the folder, so that a change to any of them shows."""
    if len(folders) == 1:
        return hash_path(folders[0])
    return hash_files([(p, f"{i}/{name}") for i, folder in enumerate(folders) for p, name in _folder_files(folder)])


def _folder_files(folder: Path) -> list[tuple[Path, str]]:
    return [
        (p, str(p.relative_to(folder)))
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]


def hash_files(files: list[tuple[Path, str]]) -> str:
    """sha256 of (file, name) pairs in order: each name, then the file's bytes, streamed; remembered as above."""
    stats = [(file, name, file.stat()) for file, name in files]
    return _hash_files(tuple((file, name, st.st_size, st.st_mtime_ns) for file, name, st in stats))


@lru_cache(maxsize=256)
def _hash_files(files: tuple[tuple[Path, str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for file, name, _, _ in files:
        h.update(name.encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (as `sha256sum` prints it), streamed; remembered while its size and modification time
    are unchanged."""
    path = Path(path).resolve()
    st = path.stat()
    return _file_sha256(path, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


@lru_cache(maxsize=1)
def machine() -> dict:
    """The fields of Provenance that do not change between runs of one harness process."""
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "harness_version": __version__,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu(),
        "gpu": gpu_name(),
        "libraries": versions,
    }


@lru_cache(maxsize=1)
def host_environment() -> str:
    """sha256 of what a method run by the local backend computes with besides its own folder: this Python, every
    installed package's version and benchsdk's code."""
    dists = sorted({(d.metadata["Name"] or "", d.version) for d in metadata.distributions()})
    return hashlib.sha256(repr((sys.version, dists, hash_path(REPO_ROOT / "benchsdk"))).encode()).hexdigest()


def compute_device() -> str:
    """What computes a method's floats, which may differ between machines: the GPU, else the CPU model and count."""
    return gpu_name() or f"{_cpu()} x{os.cpu_count()}"
