"""Registry of evaluation protocols by name: every Protocol subclass defined in a module of this package."""

import hashlib
import importlib
import inspect
import pkgutil
from pathlib import Path

from harness.protocols.base import Protocol

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

PROTOCOLS: dict[str, type[Protocol]] = {cls.name: cls for cls in Protocol.__subclasses__()}


def evaluator_sources() -> list[tuple[str, type[Protocol], str]]:
    """(name, class, sha256) per protocol: the sha256 of its module's source and of this package's shared modules
    (those defining no protocol). harness/protocols/versions.lock.json records these with each protocol's `version`,
    so a test notices code that changed without a version decision (scripts/lock_evaluators.py rewrites it)."""
    own = {Path(inspect.getfile(cls)) for cls in PROTOCOLS.values()}
    shared = sorted(p for p in Path(__file__).parent.glob("*.py") if p not in own and p.name != "__init__.py")
    out = []
    for name, cls in sorted(PROTOCOLS.items()):
        digest = hashlib.sha256()
        for path in (Path(inspect.getfile(cls)), *shared):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        out.append((name, cls, digest.hexdigest()))
    return out
