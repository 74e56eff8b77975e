"""Where a result came from: code version, machine, libraries."""

from __future__ import annotations

import datetime as dt
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata

from harness import __version__
from harness.specs import REPO_ROOT

LIBRARIES = ("numpy", "scipy", "scikit-learn", "torch", "torchvision", "timm", "pydantic", "pillow")


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
