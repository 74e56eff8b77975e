"""Backends that start a method and connect it to the harness through the contract.

Each backend is imported only when it is asked for: the docker SDK is not loaded to run a method locally."""

from __future__ import annotations

from importlib import import_module

from harness.errors import UserError
from harness.runners.base import Runner

RUNNERS: dict[str, str] = {
    "local": "harness.runners.local:LocalRunner",
    "docker": "harness.runners.docker:DockerRunner",
    "inprocess": "harness.runners.inprocess:InProcessRunner",
}


def runner_class(name: str) -> type[Runner]:
    if name not in RUNNERS:
        raise UserError(f"unknown backend {name!r}; available: {', '.join(RUNNERS)}")
    module, _, cls = RUNNERS[name].partition(":")
    return getattr(import_module(module), cls)


def get_runner(name: str) -> Runner:
    return runner_class(name)()
