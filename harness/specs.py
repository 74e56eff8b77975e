"""Task, suite and method specs: YAML files validated by pydantic, errors reported as `file:line: field: why`."""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.errors import SpecError, UserError

REPO_ROOT = Path(__file__).resolve().parent.parent

OutputKind = Literal["global", "dense", "masks"]
NAME_PATTERN = r"^[a-z0-9][a-z0-9_]*$"
TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_]*(@[a-z0-9][a-z0-9_]*)?$"  # a variant's name carries its task's


def check_method_name(name: str, what: str) -> str:
    """`name` if it can name a method (a results path, a folder under images/); else one line naming `what`."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise UserError(f"{what} {name!r}: use lower-case letters, digits and _ (starting with a letter or digit)")
    return name


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: Path | None = Field(default=None, exclude=True)


class TaskVariant(BaseModel):
    """A named variation of a task (`<task>@<variant>`): another dataset and/or some parameters overridden."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str | None = None
    dataset: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class TaskSpec(_Spec):
    """One task of the fixed suite: a protocol applied to a dataset with fixed parameters.

    `variants` name variations run as tasks of their own, e.g. `voc_hummingbird@m1024000`."""

    name: str = Field(pattern=TASK_NAME_PATTERN)
    version: int = Field(ge=1)
    description: str
    protocol: str
    dataset: str
    params: dict[str, Any] = Field(default_factory=dict)
    reference: str | None = None  # the paper / official evaluator this task follows
    timeout_s: float = Field(default=3600, gt=0)
    batch_size: int = Field(default=16, ge=1)
    fit_labels: bool = False  # may a method's fit stage see the training split's labels?
    variants: dict[str, TaskVariant] = Field(default_factory=dict)

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict) -> dict:
        for name in v:
            if not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(f"variant name {name!r} must match {NAME_PATTERN}")
        return v

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, v: str) -> str:
        from harness.protocols import PROTOCOLS

        if v not in PROTOCOLS:
            raise ValueError(f"unknown protocol {v!r}; known: {', '.join(sorted(PROTOCOLS))}")
        return v

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from harness.data import DATASETS

        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; known: {', '.join(sorted(DATASETS))}")
        return v

    def variant(self, name: str) -> "TaskSpec":
        """This task with variant `name` applied, named `<task>@<name>`, as a task of its own."""
        if name not in self.variants:
            raise SpecError(f"task {self.name!r} has no variant {name!r}; variants: "
                            f"{', '.join(self.variants) or '(none)'}", where=self.path)
        v = self.variants[name]
        body = self.model_dump(exclude={"variants", "name", "params", "dataset", "description"})
        return TaskSpec(**body, name=f"{self.name}@{name}", path=self.path, dataset=v.dataset or self.dataset,
                        params={**self.params, **v.params},
                        description=v.description or f"{self.description} [{name}]")

    @cached_property
    def protocol_params(self):
        from harness.protocols import PROTOCOLS

        return PROTOCOLS[self.protocol].Params(**self.params)

    def make_protocol(self):
        from harness.protocols import PROTOCOLS

        return PROTOCOLS[self.protocol](self.protocol_params)

    @property
    def output(self) -> str:
        from harness.protocols import PROTOCOLS

        return PROTOCOLS[self.protocol].output

    @property
    def spec_hash(self) -> str:
        """Hash of the validated spec with protocol defaults filled in: changes whenever what runs changes."""
        body = self.model_dump(mode="json") | {"params": self.protocol_params.model_dump(mode="json")}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class SuiteSpec(_Spec):
    """A named list of tasks, the methods to run on them, seeds and data kind."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str
    tasks: list[str] = Field(min_length=1)
    methods: list[str] | None = None  # None: every baseline method
    seeds: list[int] = Field(default=[0], min_length=1)
    data: Literal["real", "synthetic"] = "real"


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cpus: float | None = None
    memory_gb: float = 8
    shm_gb: float = 1
    gpus: int = 0


class MethodSpec(_Spec):
    """images/<name>/method.yaml: what a method is, what it produces, and how to start it."""

    name: str = Field(pattern=NAME_PATTERN)
    version: str
    description: str
    outputs: list[OutputKind] = Field(min_length=1)
    patch_size: int | None = Field(default=None, ge=1)
    embed_dim: int | None = Field(default=None, ge=1)
    entrypoint: str = "adapter.py"  # run with the harness's Python by the local backend
    image: str | None = None  # REPO@sha256:... (or a tag) for the docker backend
    runtime: str = Field(default="plain", pattern=NAME_PATTERN)  # docker builds: the image under it, images/_base/<runtime>.txt
    weights: str | None = None  # a weights file or folder on the host, relative to this file's folder or absolute
    fit: bool = False  # has a fit stage on the task's training split
    baseline: bool = False  # part of the default method set of suites
    paper: str | None = None
    code: str | None = None
    license: str | None = None
    resources: Resources = Resources()

    @property
    def folder(self) -> Path:
        assert self.path is not None
        return self.path.parent

    @property
    def weights_path(self) -> Path | None:
        """The `weights:` file or folder, which must exist: mounted read-only for the method, never copied."""
        if self.weights is None:
            return None
        path = (self.folder / Path(self.weights).expanduser()).resolve()
        if not path.exists():
            raise SpecError(f"weights: {path} does not exist", where=self.path)
        return path


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
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


def _format_validation_error(path: Path, err: ValidationError, root: yaml.Node | None, prefix: tuple = ()) -> str:
    first = err.errors()[0]
    loc = prefix + tuple(first["loc"])
    line = _line_of(root, loc)
    field = ".".join(str(p) for p in loc) or "(top level)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{path}{f':{line}' if line else ''}: {field}: {first['msg']}{more}"


def _check_task(spec: TaskSpec, path: Path, root: yaml.Node) -> None:
    """Validate the protocol's own parameters, and every variant, now rather than mid-run."""
    for name in (None, *spec.variants):
        where = () if name is None else ("variants", name)
        try:
            task = spec if name is None else spec.variant(name)
        except ValidationError as e:  # a variant's own fields, e.g. an unknown dataset
            raise SpecError(_format_validation_error(path, e, root, prefix=where)) from None
        try:
            task.protocol_params
        except ValidationError as e:
            raise SpecError(_format_validation_error(path, e, root, prefix=(*where, "params"))) from None


def load_spec(cls: type[_Spec], path: Path) -> Any:
    """Parse and validate one YAML spec; any problem raises SpecError with one line naming file, line and field."""
    path = Path(path)
    try:
        text = path.read_text()
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise SpecError("file not found", where=path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise SpecError(f"not valid YAML: {getattr(e, 'problem', e)}", where=where) from None
    if not isinstance(data, dict):
        raise SpecError("expected a mapping of fields at the top level", where=path)
    try:
        spec = cls(**data, path=path)
        if isinstance(spec, TaskSpec):
            _check_task(spec, path, root)
    except ValidationError as e:
        raise SpecError(_format_validation_error(path, e, root)) from None
    stem = path.parent.name if cls is MethodSpec else path.stem
    if spec.name != stem:
        raise SpecError(f"name: {spec.name!r} must match its {'folder' if cls is MethodSpec else 'file'} name {stem!r}",
                        where=f"{path}:{_line_of(root, ('name',))}")
    return spec


def _search_path(env: str, default: Path) -> list[Path]:
    """Folders to look in: the env variable's os.pathsep-separated list (earlier wins), else the default."""
    return [Path(p) for p in os.environ.get(env, str(default)).split(os.pathsep) if p]


def _catalog(kind: str) -> dict[str, Path]:
    """name -> spec file. BENCH_BENCHMARKS and BENCH_IMAGES may add folders of your own."""
    found: dict[str, Path] = {}
    if kind == "method":
        for folder in _search_path("BENCH_IMAGES", REPO_ROOT / "images"):
            for p in sorted(folder.glob("*/method.yaml")):
                found.setdefault(p.parent.name, p)
        return found
    for folder in _search_path("BENCH_BENCHMARKS", REPO_ROOT / "benchmarks"):
        for p in sorted((folder / f"{kind}s").glob("*.yaml")):
            found.setdefault(p.stem, p)
    return found


_CLASSES = {"task": TaskSpec, "suite": SuiteSpec, "method": MethodSpec}


def get(kind: str, name: str):
    """Load a task (`name` or `name@variant`), suite or method by name; an unknown name lists the known ones."""
    base, _, variant = name.partition("@") if kind == "task" else (name, "", "")
    catalog = _catalog(kind)
    if base not in catalog:
        raise SpecError(f"unknown {kind} {name!r}; known: {', '.join(catalog) or '(none)'}")
    spec = load_spec(_CLASSES[kind], catalog[base])
    return spec.variant(variant) if variant else spec


def load_all(kind: str) -> list:
    """Every spec of a kind; tasks come with each of their variants after them."""
    specs = [load_spec(_CLASSES[kind], p) for p in _catalog(kind).values()]
    if kind == "task":
        specs = [t for spec in specs for t in (spec, *(spec.variant(v) for v in spec.variants))]
    return specs


def baseline_methods() -> list[str]:
    return [m.name for m in load_all("method") if m.baseline]
