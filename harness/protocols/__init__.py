"""Registry of evaluation protocols by name: every Protocol subclass defined in a module of this package."""

import importlib
import pkgutil

from harness.protocols.base import Protocol

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

PROTOCOLS: dict[str, type[Protocol]] = {cls.name: cls for cls in Protocol.__subclasses__()}
