"""Bring your own outputs: export a task's exact inputs to files, then score replies saved beside them.

`bench inputs` runs the task's protocol against a RecordingSession, which writes every request the protocol makes
(the uint8 images the contract would send, in order) to DIR/requests/NNNNNN.npz and answers it with placeholder
outputs of the expected shape so the protocol can go on (its outcome is discarded: an export costs one evaluator
pass).
DIR/manifest.json pins what the requests were made from. The user answers each request with DIR/replies/NNNNNN.npz
holding the contract's reply arrays. `bench score` runs the protocol again against a ReplaySession, which checks
that every request equals the recorded one and hands the protocol the saved reply, validated exactly as a live
reply is (both sessions are MethodSessions whose transport is files). The result is an ordinary RunResult,
marked external.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness import specs
from harness.contract import OPS, OUTPUTS, MethodInfo
from harness.data.files import npz_members
from harness.errors import HarnessBug, MethodFailure, UserError
from harness.lifetime import owned_prefix, remove_orphaned
from harness.provenance import hash_files
from harness.results import DataKind, DatasetInfo, ResultStore, RunResult
from harness.run import RunOptions, cell_key, prepare, score_cell
from harness.runners.base import RunningMethod
from harness.runners.session import MethodSession, check_reply_array, reply_limit

MANIFEST = "manifest.json"
BACKEND = "external"


class RequestRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: str
    shape: list[int]
    sha256: str = Field(description="sha256 of the images' C-order bytes")


class Manifest(BaseModel):
    """DIR/manifest.json: what the requests were made from, and each request's op, shape and hash."""

    model_config = ConfigDict(extra="forbid")
    format: int = 1
    task: str
    task_version: int
    task_spec_hash: str
    seed: int
    data: DataKind
    dataset: DatasetInfo
    method_info: dict[str, Any]
    requests: list[RequestRecord]


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    return f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}"


def request_file(folder: Path, kind: str, index: int) -> Path:
    """DIR/requests/000012.npz or DIR/replies/000012.npz."""
    return folder / kind / f"{index:06d}.npz"


def record(op: str, images: np.ndarray) -> RequestRecord:
    return RequestRecord(
        op=op, shape=list(images.shape), sha256=hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()
    )


class FileSession(MethodSession):
    """A MethodSession whose transport is files instead of a process: subclasses answer `request`, and the
    inherited embed / embed_dense / segment check every answer exactly as they check a live method's."""

    def __init__(self, folder: Path, info: MethodInfo):
        super().__init__(channel=None, info=info)
        self.folder = folder
        self.requests: list[RequestRecord] = []

    def fit(self, batches: Iterable, with_labels: bool) -> None:
        """External methods train on their own, before producing their outputs: a fit stage sends nothing."""


class RecordingSession(FileSession):
    """Writes each request to DIR/requests/NNNNNN.npz and answers it with placeholder outputs of the shape the task
    expects: seeded noise rather than zeros, which some evaluators reject as degenerate (e.g. R² of constant
    features)."""

    def __init__(self, folder: Path, info: MethodInfo):
        super().__init__(folder, info)
        self.rng = np.random.default_rng(0)

    def request(self, op: str, fields: dict | None = None, arrays: dict | None = None) -> tuple[dict, dict]:
        if op not in OPS:
            raise HarnessBug(f"cannot export request {op!r}")
        images = arrays["images"]
        path = request_file(self.folder, "requests", len(self.requests))
        path.parent.mkdir(exist_ok=True)
        np.savez(path, op=np.array(op), images=images)
        self.requests.append(record(op, images))
        self.bytes_sent += images.nbytes
        shape = next(iter(OPS[op].reply_shapes(self.info, images.shape).values()))
        return {"ok": True}, {OPS[op].reply: self.rng.random([2 if d is None else d for d in shape], np.float32)}


class ReplaySession(FileSession):
    """Checks each request against the manifest and answers it with DIR/replies/NNNNNN.npz."""

    def __init__(self, folder: Path, manifest: Manifest):
        super().__init__(folder, MethodInfo.model_validate(manifest.method_info))
        self.manifest = manifest
        self.reply: Path | None = None  # the reply file being checked, named by any error

    def _mismatch(self, what: str) -> UserError:
        return UserError(f"{what} (task, seed or data changed since `bench inputs`)", where=self.folder / MANIFEST)

    def request(self, op: str, fields: dict | None = None, arrays: dict | None = None) -> tuple[dict, dict]:
        t0, i, images = time.monotonic(), len(self.requests), arrays["images"]
        if i >= len(self.manifest.requests) or record(op, images) != self.manifest.requests[i]:
            raise self._mismatch(f"request {i} differs from the recorded one")
        self.requests.append(self.manifest.requests[i])
        self.reply = request_file(self.folder, "replies", i)
        out = load_reply(self.reply, op, images, self.info)
        self.bytes_sent += images.nbytes
        self.method_seconds += time.monotonic() - t0
        return {"ok": True}, out

    @contextmanager
    def replaying(self) -> Iterator[RunningMethod]:
        """The session as a runner's started method; a bad reply is the user's error, naming its file."""
        try:
            yield RunningMethod(log=None, session=self)
        except MethodFailure as e:
            raise UserError(str(e), where=self.reply or self.folder / MANIFEST) from None
        if len(self.requests) != len(self.manifest.requests):
            raise self._mismatch(
                f"the task made {len(self.requests)} requests, {len(self.manifest.requests)} were recorded"
            )


def _present(path: Path) -> Path:
    if not path.is_file():
        raise UserError(
            "missing: every request needs its reply (see `Bring your own outputs` in images/CONTRACT.md)", where=path
        )
    return path


def load_reply(path: Path, op: str, images: np.ndarray, info: MethodInfo) -> dict[str, np.ndarray]:
    """The arrays of the reply file to request `op` on `images`; a missing or unreadable file is one line naming it.
    The .npy headers are checked before any data is read or inflated: each array's declared shape and dtype against
    the reply expected, and their bytes against the live contract's cap."""
    with open(_present(path), "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise UserError("an .npy file, not an .npz: save a reply's arrays with np.savez(path, features=...)", path)
    members = npz_members(path)  # headers only; a header whose shape needs more bytes than the file holds: one line
    expected = OPS[op].reply_shapes(info, images.shape)
    for name, member in members.items():
        if name in expected:
            check_reply_array(op, name, member.shape, member.dtype, expected[name], info)
    size, limit = sum(math.prod(m.shape) * m.dtype.itemsize for m in members.values()), reply_limit(images.nbytes)
    if size > limit:
        raise UserError(
            f"its arrays hold {size} bytes, above the limit of {limit} bytes (max(256 MiB, 16 x the request's "
            "bytes), as for a live reply)",
            where=path,
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in members}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"not a readable .npz file of arrays ({e})", where=path) from None


def method_info(task: specs.TaskSpec, info: dict, where: str | None = None) -> MethodInfo:
    """The info the protocols read, validated, with what `task` needs present (outputs default to the task's)."""
    try:
        model = MethodInfo.model_validate({"name": "external", "version": "0", "outputs": [task.output], **info})
    except ValidationError as e:
        raise UserError(_first_error(e), where=where) from None
    if task.output not in model.outputs:
        raise UserError(f"outputs {model.outputs} lack {task.output!r}, which task {task.name} needs", where=where)
    for name in OUTPUTS[task.output].needs:
        if getattr(model, name) is None:
            raise UserError(
                f"task {task.name} needs {task.output} outputs: give {name} "
                f"(--{name.replace('_', '-')} N, or in --info FILE)",
                where=where,
            )
    return model


def export_inputs(
    task_name: str,
    out: Path,
    seed: int,
    info: dict,
    opts: RunOptions,
    force: bool = False,
    info_source: str | None = None,
) -> Manifest:
    """`bench inputs`: every request the task makes, in order, under `out` (written whole or not at all)."""
    task = specs.get("task", task_name)
    info = method_info(task, info, info_source)
    out = Path(out)
    if out.exists() and not force:
        raise UserError("already exists (--force to replace it)", where=out)
    run = prepare(task, seed, opts)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned(out.parent, f".{out.name}-")  # an export killed midway
    staging = Path(tempfile.mkdtemp(prefix=owned_prefix(f".{out.name}-"), dir=out.parent))
    try:
        session = RecordingSession(staging, info)
        run.ctx.session = session
        _log(f"exporting the inputs of {task.name} seed {seed} ({run.dataset_info.kind} data) to {out}")
        try:
            run.protocol.run(run.dataset, run.ctx)  # placeholder outputs: the outcome means nothing
        except MethodFailure as e:
            raise HarnessBug(f"the task rejected placeholder outputs: {e}") from e
        manifest = Manifest(
            task=task.name,
            task_version=task.version,
            task_spec_hash=task.spec_hash,
            seed=seed,
            data=run.dataset_info.kind,
            dataset=run.dataset_info,
            method_info=info.model_dump(mode="json"),
            requests=session.requests,
        )
        (staging / MANIFEST).write_text(_manifest_json(manifest))
        staging.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    images = sum(r.shape[0] for r in manifest.requests)
    _log(
        f"wrote {len(manifest.requests)} requests ({images} images, {session.bytes_sent / 2**20:.1f} MiB) to "
        f"{out / 'requests'}; answer each with {out / 'replies'}/NNNNNN.npz, then "
        f"`bench score --task {task.name} --outputs {out}`"
    )
    return manifest


def _manifest_json(manifest: Manifest) -> str:
    """Indented, with one line per request."""
    body = manifest.model_dump(mode="json")
    requests = ",\n".join("  " + json.dumps(r) for r in body.pop("requests"))
    return json.dumps(body, indent=1)[:-2] + f',\n "requests": [\n{requests}\n ]\n}}\n'


def load_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"missing: make it with `bench inputs --task T --out {folder}`", where=path)
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as e:
        raise UserError(_first_error(e), where=path) from None


def outputs_ref(folder: Path, manifest: Manifest) -> str:
    """What identifies the outputs scored: a sha256 of the manifest and every reply file, in order."""
    replies = [_present(request_file(folder, "replies", i)) for i in range(len(manifest.requests))]
    return "outputs-sha256:" + hash_files([(Path(folder) / MANIFEST, MANIFEST), *((p, p.name) for p in replies)])


def score_outputs(
    task_name: str,
    folder: Path,
    name: str | None,
    seed: int | None,
    data: str | None,
    opts: RunOptions,
    store: ResultStore,
) -> RunResult:
    """`bench score`: the task's protocol over the saved replies; the result is marked external."""
    task, folder = specs.get("task", task_name), Path(folder)
    manifest = load_manifest(folder)
    where = folder / MANIFEST
    data_kind = {"synthetic": "procedural", "real": "real", None: manifest.data}[data]
    for what, recorded, now in (
        ("task", manifest.task, task.name),
        ("task version", manifest.task_version, task.version),
        ("task spec", manifest.task_spec_hash[:12], task.spec_hash[:12]),
        ("seed", manifest.seed, manifest.seed if seed is None else seed),
        ("data", manifest.data, data_kind),
    ):
        if recorded != now:
            raise UserError(
                f"inputs were exported for {what} {recorded}, not {now} (export them again with `bench inputs`)",
                where=where,
            )
    name = specs.check_method_name(name or folder.resolve().name, "method name (--name, default the folder's name)")
    store.check_writable()
    key = cell_key(task, name, outputs_ref(folder, manifest), manifest.data, manifest.seed)
    opts = dataclasses.replace(opts, synthetic=manifest.data == "procedural")
    session = ReplaySession(folder, manifest)
    return score_cell(task, key, opts, store, BACKEND, session.replaying, external=True)
