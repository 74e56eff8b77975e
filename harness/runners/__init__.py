"""Backends that start a method and connect it to the harness through the contract."""

from harness.errors import UserError
from harness.runners.base import Runner
from harness.runners.docker import DockerRunner
from harness.runners.local import LocalRunner

RUNNERS: dict[str, type[Runner]] = {"local": LocalRunner, "docker": DockerRunner}


def get_runner(name: str) -> Runner:
    if name not in RUNNERS:
        raise UserError(f"unknown backend {name!r}; available: {', '.join(RUNNERS)}")
    return RUNNERS[name]()
