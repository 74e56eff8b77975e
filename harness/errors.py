"""Errors by whose fault they are: the user's (one clear line, exit 2), the method's (a failed result), the harness's
(a traceback)."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input from the user (spec, data, arguments). Printed as one line; exit code 2."""

    exit_code = 2

    def __init__(self, message: str, where: str | Path | None = None):
        self.where = str(where) if where is not None else None
        super().__init__(f"{self.where}: {message}" if self.where else message)


class SpecError(UserError):
    """A task, suite or method YAML that does not validate."""


class DataError(UserError):
    """A dataset that is missing, malformed, or does not match its official layout."""


class WeightsError(UserError):
    """A method's declared weights file that is missing, unverifiable or not the expected one."""


class WeightsMissing(WeightsError):
    """The declared weights file is not under the weights root (on procedural data: a random init instead)."""


class HarnessBug(RuntimeError):
    """A condition that only a bug in the harness can cause. Never caught as a user error: it keeps its traceback
    (and Python's exit code 1), so it gets reported and fixed rather than mistaken for bad input."""


class MethodFailure(Exception):
    """The method under test misbehaved (crash, protocol violation, bad output). Becomes a failed result."""

    log_tail = ""  # the end of the method's stderr, attached by the runner once the method is stopped


class MethodTimeout(MethodFailure):
    """The method exceeded its time budget. Becomes a timeout result."""
