"""Where in a YAML file a validation error points: every spec and registry file reports `file:line: field: why`."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError


def line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """Line (1-based) of the YAML node at pydantic's error location, or of the closest parent."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def validation_error_line(path: Path, err: ValidationError, root: yaml.Node | None, prefix: tuple = ()) -> str:
    """`file:line: field: why` for the first of pydantic's errors, the line found in the composed YAML `root`."""
    first = err.errors()[0]
    loc = prefix + tuple(first["loc"])
    line = line_of(root, loc)
    field = ".".join(str(p) for p in loc) or "(top level)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{path}{f':{line}' if line else ''}: {field}: {first['msg']}{more}"
