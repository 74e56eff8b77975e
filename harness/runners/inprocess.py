"""In-process backend: a benchsdk `Method` instance answers the contract from inside the harness's own process.

What a researcher uses from a notebook or a test (`harness.evaluate(MyMethod(), "voc_hummingbird")`, as MTEB's
`evaluate` and lm-eval's `simple_evaluate` are used), and `bench run --backend inprocess` for a method folder's
adapter. Requests go to the SDK's own dispatcher (the code a served method runs), and every reply gets the same
validation as a live one, but nothing is isolated: no sandbox, no time limit (a call cannot be pre-empted), and the
method shares the harness's memory, so images are handed over read-only and replies are copied (both in C order, as
the wire has them, so that every number equals the other backends' bit for bit). Results say
`sandboxed: false`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

import benchsdk
from harness.contract import FitBatch
from harness.errors import MethodFailure, SpecError
from harness.provenance import hash_path
from harness.runners.base import Runner, RunningMethod, check_outputs, method_env
from harness.runners.session import MethodSession
from harness.specs import MethodSpec


class InProcessSession(MethodSession):
    """A MethodSession whose transport is a function call into benchsdk's dispatcher."""

    def __init__(self, method: benchsdk.Method):
        super().__init__(channel=None)
        self.server = benchsdk._Server(method, None, None)

    def request(self, op: str, fields: dict | None = None, arrays: dict | None = None) -> tuple[dict, dict]:
        t0 = time.monotonic()
        arrays = {k: _read_only(v) for k, v in (arrays or {}).items()}
        try:
            header, out = self.server.dispatch(op, {"op": op, **(fields or {})}, arrays)
        except Exception as e:  # what a served method would send back as {"ok": false, "error": ...}
            raise MethodFailure(f"method failed in {op!r}: {type(e).__name__}: {e}") from e
        finally:
            self.method_seconds += time.monotonic() - t0
        self.bytes_sent += sum(a.nbytes for a in arrays.values())
        # copied, in C order, as the wire delivers them: numpy's reductions depend on the layout
        return {"ok": True, **header}, {k: np.array(v, order="C") for k, v in (out or {}).items()}

    def fit(self, batches: Iterable[FitBatch], with_labels: bool) -> None:
        """The batches straight into the method's `fit`, as the SDK's server gives them (labels and patches only
        when the task allows them); a method that returns early stops the stream."""

        def stream():
            for batch in batches:
                self.images_sent += len(batch.images)
                allowed = (_read_only(a) if with_labels and a is not None else None for a in batch[1:])
                yield FitBatch(_read_only(batch.images), *allowed)

        t0 = time.monotonic()
        try:
            self.server.method.fit(stream())
        except Exception as e:
            raise MethodFailure(f"method failed in 'fit': {type(e).__name__}: {e}") from e
        finally:
            self.fit_seconds += time.monotonic() - t0

    def shutdown(self) -> None:
        """Nothing to stop: the method is an object of this process."""


def _read_only(a: np.ndarray | None) -> np.ndarray | None:
    """The array as the wire would deliver it (C order: numpy's reductions depend on the layout, so outputs match
    the other backends' bit for bit), read-only."""
    if a is None:
        return None
    view = np.ascontiguousarray(a).view()
    view.flags.writeable = False
    return view


def adapter_module(method: MethodSpec):
    """The method folder's entrypoint, executed as the module `vrbench_adapter_<method>` with its own folder and its
    `include:` folders on sys.path while it loads (as every backend has them)."""
    path = method.folder / method.entrypoint
    if not path.is_file():
        raise SpecError(f"entrypoint: {path} does not exist", where=method.path)
    module_name = f"vrbench_adapter_{method.base}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # as for an import: a dataclass (dino's Arch) looks its module up there
    folders = [str(path.parent), *map(str, method.code_folders[1:])]  # its own helper modules, then its includes
    sys.path[:0] = folders
    try:
        spec.loader.exec_module(module)
    finally:
        for folder in folders:
            sys.path.remove(folder)
    return module


def load_adapter(method: MethodSpec) -> benchsdk.Method:
    """An instance of the one benchsdk.Method subclass that the method folder's entrypoint defines."""
    module = adapter_module(method)
    path, module_name = method.folder / method.entrypoint, module.__name__
    classes = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, benchsdk.Method) and c is not benchsdk.Method and c.__module__ == module_name
    ]
    if len(classes) != 1:
        raise SpecError(
            f"entrypoint: {path} defines {len(classes)} benchsdk.Method subclasses; the in-process "
            "backend needs exactly one",
            where=method.path,
        )
    return classes[0]()


class InProcessRunner(Runner):
    """Runs a Method instance (given, or loaded from the method folder's adapter) in the harness's process."""

    name = "inprocess"
    sandboxed = False

    def __init__(self, instance: benchsdk.Method | None = None):
        self.instance = instance

    def prepare(self, method: MethodSpec) -> str:
        if self.instance is not None:
            return instance_ref(self.instance)
        return "code-sha256:" + method.code_hash

    def cache_ref(self, method: MethodSpec) -> None:
        """Never cached: an instance's state (its weights, what a notebook changed) is not part of its ref."""
        return None

    def launch(self, method, log, contract_socket):
        raise NotImplementedError("the in-process backend starts no process")

    @contextmanager
    def start(self, method: MethodSpec, seed: int, task: dict, timeout_s: float) -> Iterator[RunningMethod]:
        weights = method.weights_path
        env = method_env(method, str(weights) if weights else None)
        saved = {name: os.environ.get(name) for name in ("BENCH_VARIANT", "BENCH_WEIGHTS")}
        os.environ.pop("BENCH_WEIGHTS", None)  # as the other backends tell the method, for this session only
        os.environ.update(env)
        try:  # the adapter is loaded with its environment in place: it may pick its variant when it is imported
            instance = self.instance if self.instance is not None else load_adapter(method)
            session = InProcessSession(instance)
            check_outputs(method, session.handshake(seed, task, None, method.fit_recipe_payload))
            yield RunningMethod(log=None, session=session)
        finally:
            for name, value in saved.items():
                os.environ.pop(name, None) if value is None else os.environ.update({name: value})


def instance_ref(instance: benchsdk.Method) -> str:
    """What identifies a Method object's code: the sha256 of the file its class was loaded from, else of the class's
    source (a notebook cell), else a fresh random reference, so that a result is never reused for code we cannot
    see."""
    cls = type(instance)
    module = sys.modules.get(cls.__module__)
    if module is not None and getattr(module, "__file__", None) and Path(module.__file__).is_file():
        return "code-sha256:" + hash_path(Path(module.__file__))
    try:
        return "code-sha256:" + hashlib.sha256(inspect.getsource(cls).encode()).hexdigest()
    except (OSError, TypeError):
        return f"unhashed:{uuid.uuid4().hex}"


def spec_for(instance: benchsdk.Method) -> MethodSpec:
    """A method.yaml-equivalent spec for a Method object, from what its info declares. An info saying
    `"weights": "random-init"` (the reference backbones' adapters without $BENCH_WEIGHTS) makes the result say so,
    as a method.yaml run without its declared weights does: never shown as the real method."""
    info = instance.info()
    return MethodSpec(
        name=_name(info.get("name")),
        version=str(info.get("version")),
        description=f"{type(instance).__name__} (in-process)",
        outputs=list(info.get("outputs") or []),
        patch_size=info.get("patch_size"),
        embed_dim=info.get("embed_dim"),
        fit=info.get("fit") is True,
        random_init=info.get("weights") == "random-init",
    )


def _name(name: object) -> str:
    """The info's name as a method name (lower-case letters, digits and _)."""
    return "".join(c if c.isalnum() else "_" for c in str(name or "unnamed").lower()).strip("_") or "unnamed"
