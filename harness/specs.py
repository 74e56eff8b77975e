"""Task, suite and method specs: YAML files validated by pydantic, errors reported as `file:line: field: why`."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness import REPO_ROOT, weights
from harness.contract import OutputKind
from harness.errors import SpecError, UserError
from harness.names import METHOD_NAME_PATTERN, NAME_PATTERN, TASK_NAME_PATTERN
from harness.provenance import file_sha256, hash_folders, hash_path
from harness.yamlfile import line_of, validation_error_line

MAX_TIMEOUT_S = 30 * 24 * 3600  # a month: above every task's limit, far below what a deadline can hold
# a time limit (a task's timeout_s, --timeout) and a seed (numpy's and torch's range), as specs and the CLI check them
Seconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


def check_method_name(name: str, what: str) -> str:
    """`name` if it can name a method (a results path, a folder under images/); else one line naming `what`."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise UserError(f"{what} {name!r}: use lower-case letters, digits and _ (starting with a letter or digit)")
    return name


def _check_variant_names(variants: dict) -> dict:
    for name in variants:
        if not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(f"variant name {name!r} must match {NAME_PATTERN}")
    return variants


def _variant_of(spec: "TaskSpec | MethodSpec", kind: str, name: str):
    """Variant `name` of a task or method spec; an unknown one is one line listing the known ones."""
    if name not in spec.variants:
        raise SpecError(
            f"{kind} {spec.name!r} has no variant {name!r}; variants: {', '.join(spec.variants) or '(none)'}",
            where=spec.path,
        )
    return spec.variants[name]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: Path | None = Field(default=None, exclude=True)


class TaskVariant(BaseModel):
    """A named variation of a task (`<task>@<variant>`): another dataset and/or some parameters overridden."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str | None = None
    dataset: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class Tolerance(BaseModel):
    """How far a number may move before `bench regress` calls it a change: max(abs, rel x |baseline|)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    abs: float = Field(default=0.0, ge=0)
    rel: float = Field(default=0.0, ge=0)

    def of(self, value: float) -> float:
        return max(self.abs, self.rel * abs(value))


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
    timeout_s: Seconds = 3600
    batch_size: int = Field(default=16, ge=1)
    fit_labels: bool = False  # may a method's fit stage see the training split's labels?
    variants: dict[str, TaskVariant] = Field(default_factory=dict)
    overrides: dict[str, Any] = Field(default_factory=dict)  # set with --set, never in a YAML file
    # `bench regress`'s tolerance on the main metric (harness.regress), for the task and its variants; not in the
    # spec hash: it changes no number
    tolerance: Tolerance | None = None

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict) -> dict:
        return _check_variant_names(v)

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
        v = _variant_of(self, "task", name)
        body = self.model_dump(exclude={"variants", "name", "params", "dataset", "description"})
        return TaskSpec(
            **body,
            name=f"{self.name}@{name}",
            path=self.path,
            dataset=v.dataset or self.dataset,
            params={**self.params, **v.params},
            description=v.description or f"{self.description} [{name}]",
        )

    def with_overrides(self, overrides: dict[str, Any]) -> "TaskSpec":
        """This task with some protocol parameters replaced (`bench run --set k=5`), as a task of its own named
        `<task>+k=5`, so its results never mix with the stock task's. Values given as text are read as YAML
        scalars (5 -> int, 0.07 -> float, true -> bool); a bad name or value is one line naming it."""
        if not overrides:
            return self
        values = {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in overrides.items()}
        merged = {**self.overrides, **values}
        try:
            self._params_class()(**{**self.params, **values})
        except ValidationError as e:
            first = e.errors()[0]
            name = ".".join(map(str, first["loc"]))
            given = f"={overrides[name]}" if name in overrides else ""
            raise UserError(
                f"--set {name}{given}: {first['msg']} (task {self.name}, protocol {self.protocol})"
            ) from None
        base = self.name.split("+", 1)[0]
        name = base + "".join(
            f"+{k}={json.dumps(v, separators=(',', ':')).strip(chr(34))}" for k, v in sorted(merged.items())
        )
        body = self.model_dump(exclude={"name", "params", "overrides"})
        try:
            return TaskSpec(**body, name=name, path=self.path, params={**self.params, **values}, overrides=merged)
        except ValidationError:
            raise UserError(f"--set: {name!r} cannot name a task: values may not contain '+', '/' or spaces") from None

    def _params_class(self):
        from harness.protocols import PROTOCOLS

        return PROTOCOLS[self.protocol].Params

    @cached_property
    def protocol_params(self):
        return self._params_class()(**self.params)

    @property
    def protocol_class(self):
        from harness.protocols import PROTOCOLS

        return PROTOCOLS[self.protocol]

    def make_protocol(self):
        return self.protocol_class(self.protocol_params)

    @property
    def output(self) -> str:
        from harness.protocols import PROTOCOLS

        return PROTOCOLS[self.protocol].output

    @property
    def evaluator(self) -> str:
        """The protocol that scores this task and its version, e.g. `knn/v1`: part of every result's key."""
        return f"{self.protocol}/v{self.protocol_class.version}"

    @property
    def spec_hash(self) -> str:
        """Hash of the validated spec with protocol defaults filled in: changes whenever what runs changes."""
        body = self.model_dump(mode="json", exclude={"tolerance"}) | {
            "params": self.protocol_params.model_dump(mode="json")
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class SuiteSpec(_Spec):
    """A named selection of tasks, the methods to run on them, seeds and data kind.

    `tasks` is a list of task names (`task` or `task@variant`), or `all`: every task's base form, so that a new
    task joins the suite with no edit here. `variants: true` adds each selected task's variants after it;
    `exclude` drops exactly the names it lists (a base task's variants stay unless listed too). Once loaded
    (load_spec), `tasks` is the expanded list."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str
    tasks: list[str] | Literal["all"]
    variants: bool = False
    exclude: list[str] = Field(default_factory=list)
    methods: list[str] | None = None  # None: every baseline method
    seeds: list[Seed] = Field(default=[0], min_length=1)
    data: Literal["real", "synthetic"] = "real"

    @field_validator("tasks", mode="before")
    @classmethod
    def _list_or_all(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("an empty list selects no task; name tasks, or write `all`")
        if not isinstance(v, list) and v != "all":
            raise ValueError(f"{v!r} is neither `all` nor a list of task names")
        return v


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cpus: float | None = Field(default=None, gt=0)  # also the CPUs a Slurm job asks for (default 1)
    memory_gb: float = Field(default=8, gt=0)
    shm_gb: float = Field(default=1, gt=0)
    gpus: int = Field(default=0, ge=0)  # Slurm: --gres=gpu:N


class Recipe(BaseModel):
    """`recipes: {name: ...}` in method.yaml: a training run of the method (`bench train --recipe NAME`). The method
    makes its own training data (procedural images); `params` are its hyper-parameters, passed to train_start."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str
    variant: str | None = None  # the variant of the method it trains (procedural_dino's tiny: vitt16)
    steps: int = Field(ge=1)
    checkpoint_every: int = Field(default=100, ge=1)  # steps between checkpoints (and after the last)
    timeout_s: Seconds = 7 * 86400
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def hash(self) -> str:
        """sha256 of what the recipe computes (its description apart)."""
        body = self.model_dump(mode="json", exclude={"description", "timeout_s"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class WeightsSource(BaseModel):
    """`weights: {file, url, sha256}`: an official checkpoint, downloaded by `bench weights fetch` to
    `<weights root>/<method>/<file>` and verified against `sha256` (null: none is published, and the first fetch
    records one in the method directory's weights.lock.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str = Field(pattern=r"^[A-Za-z0-9_][\w.-]*$")  # a file name: no folders
    url: str | None = Field(pattern=r"^https?://")  # null: none is published (`bench train` makes them)
    sha256: str | None = Field(pattern=r"^[0-9a-f]{64}$")  # required: the published checksum, or null for none


def _weights_field(v: Any) -> Any:
    """A mapping becomes a WeightsSource, its first problem one message on `weights` (not pydantic's two union
    branches); a string is a host path, as before."""
    if isinstance(v, dict):
        try:
            return WeightsSource(**v)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise ValueError(f"{where + ': ' if where else ''}{first['msg']} (a mapping takes file, url, sha256)")
    return v


class MethodVariant(BaseModel):
    """A named variation of a method (`<method>@<variant>`): another architecture or checkpoint of one adapter,
    which reads the variant's name from $BENCH_VARIANT."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str | None = None
    patch_size: int | None = Field(default=None, ge=1)
    embed_dim: int | None = Field(default=None, ge=1)
    weights: str | WeightsSource | None = None  # given (null included): replaces the method's
    fit_recipe: str | None = None  # the recipe its fit stage trains (replaces the method's)
    resources: dict[str, Any] | None = None  # merged into the method's

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_mapping(cls, v: Any) -> Any:
        return _weights_field(v)


class MethodSpec(_Spec):
    """images/<name>/method.yaml: what a method is, what it produces, and how to start it.

    `variants` name variations run as methods of their own, e.g. `dino@vitb16`. `weights_root` and `random_init`
    are set by the harness for a run (harness.weights.resolve), never in a YAML file."""

    name: str = Field(pattern=METHOD_NAME_PATTERN)
    version: str
    description: str
    outputs: list[OutputKind] = Field(min_length=1)
    patch_size: int | None = Field(default=None, ge=1)
    embed_dim: int | None = Field(default=None, ge=1)
    entrypoint: str = "adapter.py"  # run with the harness's Python by the local backend
    image: str | None = None  # REPO@sha256:... (or a tag) for the docker backend
    runtime: str = Field(
        default="plain", pattern=NAME_PATTERN
    )  # docker builds: the image under it, images/_base/<runtime>.txt
    # a host path (file or folder, relative to this file's folder or absolute), or {file, url, sha256}
    weights: str | WeightsSource | None = None
    fit: bool = False  # has a fit stage on the task's training split
    # the recipe (of `recipes`) its fit stage trains when no weights are given: sent with setup (fit_recipe_payload)
    fit_recipe: str | None = None
    # the feature cache (harness.cache): replies of a method that is not deterministic are never stored; those of a
    # seed-independent one (fixed pretrained weights) are shared between seeds, where its real weights are loaded
    deterministic: bool = True
    seed_independent: bool = False
    baseline: bool = False  # part of the default method set of suites
    paper: str | None = None
    code: str | None = None
    license: str | None = None
    resources: Resources = Resources()
    # folders of Python modules the adapter imports (`../_vit`), relative to this file's folder, in the same methods
    # directory: they join the code hash, the image (their *.py into /method/) and the adapter's import path
    include: list[str] = Field(default_factory=list)
    variants: dict[str, MethodVariant] = Field(default_factory=dict)
    recipes: dict[str, Recipe] = Field(default_factory=dict)  # training runs (`bench train`)
    weights_root: Path | None = Field(default=None, exclude=True)  # None: $BENCH_WEIGHTS_ROOT or ./weights
    output_dir: Path | None = Field(default=None, exclude=True)  # bench train: the one folder the method may write
    training: str | None = Field(default=None, exclude=True)  # the training.json of `bench run --weights` weights
    random_init: bool = Field(default=False, exclude=True)  # declared weights absent, procedural data: none given

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_mapping(cls, v: Any) -> Any:
        return _weights_field(v)

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict) -> dict:
        return _check_variant_names(v)

    @property
    def folder(self) -> Path:
        assert self.path is not None
        return self.path.parent

    @property
    def code_folders(self) -> list[Path]:
        """The folders whose files are the method's code: its own, then each of `include` (resolved)."""
        return [self.folder, *((self.folder / p).resolve() for p in self.include)]

    @property
    def code_hash(self) -> str:
        """sha256 of the method's code (hash_folders of code_folders): what the local and in-process backends key
        results by, and what a docker build is keyed by."""
        return hash_folders(self.code_folders)

    @property
    def base(self) -> str:
        """The method's own name, its folder's: `dino` for `dino@vitb16`."""
        return self.name.partition("@")[0]

    @property
    def variant_name(self) -> str:
        """The variant that runs (`vitb16` for `dino@vitb16`), "" for the base form: the method's $BENCH_VARIANT."""
        return self.name.partition("@")[2]

    def variant(self, name: str) -> "MethodSpec":
        """This method with variant `name` applied, named `<method>@<name>`, as a method of its own."""
        v = _variant_of(self, "method", name)
        update = {k: getattr(v, k) for k in v.model_fields_set - {"resources"}}
        if v.resources:
            update["resources"] = {**self.resources.model_dump(), **v.resources}
        update.setdefault("description", f"{self.description} [{name}]")
        body = self.model_dump(exclude={"variants", "name", *update})
        return MethodSpec(
            **body,
            **update,
            name=f"{self.name}@{name}",
            path=self.path,
            weights_root=self.weights_root,
            random_init=self.random_init,
        )

    @property
    def fit_recipe_payload(self) -> dict | None:
        """What setup's `fit_recipe` carries (images/CONTRACT.md, "Fit stages"): {name, steps, params, hash}; None
        without one, or when weights are given (they are loaded instead of trained)."""
        if self.fit_recipe is None or (self.weights is not None and not self.random_init):
            return None
        recipe = self.recipes[self.fit_recipe]
        return {"name": self.fit_recipe, "steps": recipe.steps, "params": recipe.params, "hash": recipe.hash}

    @property
    def weights_path(self) -> Path | None:
        """The weights file or folder, which must exist: mounted read-only for the method, never copied. For
        `{file, url, sha256}` weights, `<weights root>/<method>/<file>`, checked against its checksum (a missing or
        different file raises WeightsError); a host path must be under the weights root or the method's folder
        (weights.host_path); None under a random init."""
        if self.weights is None or self.random_init:
            return None
        return weights.verified(self) if isinstance(self.weights, WeightsSource) else weights.host_path(self)

    @property
    def weights_digest(self) -> str | None:
        """The sha256 that joins the code's in result keys: of the file's bytes for `{file, url, sha256}` weights
        (comparable with the published one), hash_path's of a host path; None without weights."""
        path = self.weights_path
        if path is None:
            return None
        return file_sha256(path) if isinstance(self.weights, WeightsSource) else hash_path(path)


def _include_problem(spec: MethodSpec, entry: str) -> str | None:
    """Why `include:` entry `entry` cannot be used, or None: it must name an existing folder of Python modules under
    the methods directory the method's folder is in (images/ or a BENCH_IMAGES folder), outside the method's own."""
    if Path(entry).is_absolute():
        return "give a folder relative to the method's folder, e.g. ../_vit"
    folder, methods = spec.folder.resolve(), spec.folder.resolve().parent
    target = (folder / entry).resolve()
    if not target.is_dir():
        return f"{target} is not a folder"
    if target == methods or not target.is_relative_to(methods):
        return f"{target} is not a folder under the methods directory {methods}"
    if target.is_relative_to(folder):
        return "names the method's own folder or one inside it, which its code hash and image cover already"
    if not any(target.glob("*.py")):
        return f"{target} holds no Python modules (*.py)"
    return None


def _entrypoint_problem(spec: MethodSpec) -> str | None:
    """Why `entrypoint:` cannot be used, or None: it must name a file in the method's folder (symlinks resolved),
    which its code hash and image cover; the file must exist unless a pinned `image:` brings its own."""
    if Path(spec.entrypoint).is_absolute():
        return "give a file relative to the method's folder, e.g. adapter.py"
    folder = spec.folder.resolve()
    target = (folder / spec.entrypoint).resolve()
    if not target.is_relative_to(folder):
        return (
            f"resolves to {target}, outside the method's folder {folder}, which its code hash and image cover: "
            "move the file there (share code with `include:`)"
        )
    if spec.image is None and not target.is_file():
        return f"{target} {'is not a file' if target.exists() else 'does not exist'}"
    return None


def _check_method(spec: MethodSpec, path: Path, root: yaml.Node) -> None:
    """Validate `entrypoint:`, `include:` and every variant now rather than mid-run."""
    if why := _entrypoint_problem(spec):
        raise SpecError(f"entrypoint: {spec.entrypoint!r}: {why}", where=f"{path}:{line_of(root, ('entrypoint',))}")
    for i, entry in enumerate(spec.include):
        why = _include_problem(spec, entry)
        if why is None and entry in spec.include[:i]:
            why = "listed twice"
        if why:
            raise SpecError(f"include: {entry!r}: {why}", where=f"{path}:{line_of(root, ('include', i))}")
    for name in spec.variants:
        try:
            spec.variant(name)
        except ValidationError as e:
            raise SpecError(validation_error_line(path, e, root, prefix=("variants", name))) from None
    for where, recipe in (((), spec.fit_recipe), *((("variants", n), v.fit_recipe) for n, v in spec.variants.items())):
        if recipe is None:
            continue
        why = (
            f"no recipe {recipe!r} (recipes: {', '.join(spec.recipes) or 'none'})"
            if recipe not in spec.recipes
            else "the method has no fit stage (fit: false)"
            if not spec.fit
            else None
        )
        if why:
            raise SpecError(f"fit_recipe: {recipe!r}: {why}", where=f"{path}:{line_of(root, (*where, 'fit_recipe'))}")


def _check_task(spec: TaskSpec, path: Path, root: yaml.Node) -> None:
    """Validate the protocol's own parameters, and every variant, now rather than mid-run."""
    for name in (None, *spec.variants):
        where = () if name is None else ("variants", name)
        try:
            task = spec if name is None else spec.variant(name)
        except ValidationError as e:  # a variant's own fields, e.g. an unknown dataset
            raise SpecError(validation_error_line(path, e, root, prefix=where)) from None
        try:
            task.protocol_params
        except ValidationError as e:
            raise SpecError(validation_error_line(path, e, root, prefix=(*where, "params"))) from None


def _expand_suite(spec: SuiteSpec, path: Path, root: yaml.Node) -> SuiteSpec:
    """The suite with `tasks` resolved against the task catalog (load_all's order for `all`); an unknown or
    unselected name is one line naming file, line and field."""
    catalog = {task.name: task for task in load_all("task")}  # base tasks, each followed by its variants

    def fail(field: str, i: int | None, why: str) -> SpecError:
        loc = (field,) if i is None else (field, i)
        return SpecError(f"{'.'.join(map(str, loc))}: {why}", where=f"{path}:{line_of(root, loc)}")

    def unknown(name: str) -> str:
        close = ", ".join(difflib.get_close_matches(name, catalog, n=3))
        return f"unknown task {name!r}; {f'did you mean {close}? ' if close else ''}`bench list tasks` lists them"

    if spec.tasks == "all":
        chosen = [name for name in catalog if "@" not in name]
    else:
        for i, name in enumerate(spec.tasks):
            if name not in catalog:
                raise fail("tasks", i, unknown(name))
        chosen = list(spec.tasks)
    if spec.variants:
        chosen = list(
            dict.fromkeys(v for name in chosen for v in (name, *(f"{name}@{x}" for x in catalog[name].variants)))
        )
    for i, name in enumerate(spec.exclude):
        if name not in catalog:
            raise fail("exclude", i, unknown(name))
        if name not in chosen:
            raise fail("exclude", i, f"{name!r} is not among the selected tasks, so excluding it does nothing")
    tasks = [name for name in chosen if name not in spec.exclude]
    if not tasks:
        raise fail("exclude", None, "excludes every selected task")
    return spec.model_copy(update={"tasks": tasks})


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
    if "path" in data:
        raise SpecError(
            "path: not a field of a spec (the harness records where the file is)",
            where=f"{path}:{line_of(root, ('path',))}",
        )
    if cls is TaskSpec and "overrides" in data:
        raise SpecError(
            "overrides: set with `bench run --set`, not in a task file; use params or a variant",
            where=f"{path}:{line_of(root, ('overrides',))}",
        )
    if cls is MethodSpec and "@" in str(data.get("name", "")):
        raise SpecError(
            f"name: {data['name']!r}: a variant is declared under `variants:` and addressed as <method>@<variant>",
            where=f"{path}:{line_of(root, ('name',))}",
        )
    for field in ("weights_root", "random_init") if cls is MethodSpec else ():
        if field in data:
            raise SpecError(
                f"{field}: set by the harness for a run (--weights-root), not in method.yaml",
                where=f"{path}:{line_of(root, (field,))}",
            )
    try:
        spec = cls(**data, path=path)
        if isinstance(spec, TaskSpec):
            _check_task(spec, path, root)
        if isinstance(spec, MethodSpec):
            _check_method(spec, path, root)
    except ValidationError as e:
        raise SpecError(validation_error_line(path, e, root)) from None
    if isinstance(spec, SuiteSpec):
        spec = _expand_suite(spec, path, root)
    stem = path.parent.name if cls is MethodSpec else path.stem
    if spec.name != stem:
        raise SpecError(
            f"name: {spec.name!r} must match its {'folder' if cls is MethodSpec else 'file'} name {stem!r}",
            where=f"{path}:{line_of(root, ('name',))}",
        )
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


def names(kind: str) -> list[str]:
    """The names of every task, suite or method spec found (their base forms)."""
    return list(_catalog(kind))


_CLASSES = {"task": TaskSpec, "suite": SuiteSpec, "method": MethodSpec}


def get(kind: str, name: str):
    """Load a task (`name` or `name@variant`), suite or method by name; an unknown name lists the known ones."""
    base, _, variant = name.partition("@") if kind in ("task", "method") else (name, "", "")
    catalog = _catalog(kind)
    if base not in catalog:
        raise SpecError(f"unknown {kind} {name!r}; known: {', '.join(catalog) or '(none)'}")
    spec = load_spec(_CLASSES[kind], catalog[base])
    return spec.variant(variant) if variant else spec


def spec_files(kind: str) -> list[Path]:
    """The spec files of a kind that `get` and `load_all` read (BENCH_BENCHMARKS / BENCH_IMAGES included)."""
    return list(_catalog(kind).values())


def load_all(kind: str) -> list:
    """Every spec of a kind; tasks and methods come with each of their variants after them."""
    specs = [load_spec(_CLASSES[kind], p) for p in _catalog(kind).values()]
    if kind in ("task", "method"):
        specs = [t for spec in specs for t in (spec, *(spec.variant(v) for v in spec.variants))]
    return specs


def baseline_methods() -> list[str]:
    """The default methods of suites: every baseline's base form (a variant runs when a suite or --methods names
    it)."""
    return [m.name for m in load_all("method") if m.baseline and not m.variant_name]
