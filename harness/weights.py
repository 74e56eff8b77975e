"""Weights declared in method.yaml as `{file, url, sha256}`: where they live, what they must hash to, fetching them.

A method's file is expected at `<weights root>/<method>/<file>`: the root is `--weights-root`, else env
BENCH_WEIGHTS_ROOT, else ./weights (BENCH_WEIGHTS is taken: it tells a running method where its weights are).
The file must hash to method.yaml's `sha256`, or, where none is published (`sha256: null`), to the one the first
`bench weights fetch` recorded in the lock file beside the method folders (images/weights.lock.json, committed):
every later fetch and every run must match it. Downloads reuse `bench data fetch`'s machinery (harness/data/fetch.py:
resumable `.part` files, BENCH_FETCH_BASE_URL mirrors, checksum verification that deletes a bad download).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import SpecError, UserError, WeightsError, WeightsMissing
from harness.provenance import file_sha256, now
from harness.results import write_atomic

if TYPE_CHECKING:
    from harness.specs import MethodSpec

ROOT_ENV = "BENCH_WEIGHTS_ROOT"
DEFAULT_ROOT = "weights"
LOCK_NAME = "weights.lock.json"
RANDOM_INIT = "random-init"  # provenance.weights and the result key's mark of a run without its weights
_SHA256 = re.compile(r"[0-9a-f]{64}")


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def declared(method: MethodSpec) -> bool:
    """The method declares `{file, url, sha256}` weights (not a host path, not none)."""
    return method.weights is not None and not isinstance(method.weights, str)


def root_of(method: MethodSpec) -> Path:
    return method.weights_root or default_root()


def expected_path(method: MethodSpec) -> Path:
    return root_of(method) / method.base / method.weights.file


def lock_path(method: MethodSpec) -> Path:
    """One lock file per methods directory (images/weights.lock.json): outside every method folder, so recording a
    checksum changes no method's code hash or image."""
    return method.folder.parent / LOCK_NAME


def lock_key(method: MethodSpec) -> str:
    return f"{method.base}/{method.weights.file}"


def read_lock(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SpecError(f"not a readable JSON lock file ({e})", where=path) from None
    if not isinstance(data, dict) or not all(
        isinstance(v, dict) and _SHA256.fullmatch(str(v.get("sha256", ""))) for v in data.values()
    ):
        raise SpecError('expected {"<method>/<file>": {"sha256": "<64 hex digits>", ...}, ...}', where=path)
    return data


def expected(method: MethodSpec) -> tuple[str | None, str]:
    """(the sha256 the file must have, where it comes from: `published in <method.yaml>` or `recorded in <lock>`);
    (None, "") when none is published and none recorded yet."""
    if method.weights.sha256:
        return method.weights.sha256, f"published in {method.path}"
    entry = read_lock(lock_path(method)).get(lock_key(method))
    return (entry["sha256"], f"recorded in {lock_path(method)}") if entry else (None, "")


def fetch_command(method: MethodSpec) -> str:
    """The command that gets the method's weights: `bench weights fetch`, or `bench train` where none are published."""
    root = root_of(method)
    flag = f" --weights-root {root}" if root != default_root() else ""
    if declared(method) and method.weights.url is None:
        recipes = "|".join(method.recipes) or "RECIPE"
        return f"`bench train --method {method.name} --recipe {recipes}{flag}`, then `bench run ... --weights RECIPE`"
    return f"`bench weights fetch {method.name}{flag}`"


def _host_path(method: MethodSpec) -> Path:
    """Where weights given as a host path are, symlinks resolved (relative paths are to the method's folder)."""
    return (method.folder / Path(method.weights).expanduser()).resolve()


def host_path(method: MethodSpec) -> Path:
    """The weights given as a host path: an existing regular file or folder under the weights root or the method's
    folder (after symlinks), as a method may read it (mounted read-only, its output in results); else SpecError."""
    path, given = _host_path(method), f"weights: {method.weights!r}"
    if not path.exists():
        raise SpecError(f"{given}: {path} does not exist", where=method.path)
    root, folder = root_of(method).resolve(), method.folder.resolve()
    if not (path.is_relative_to(root) or path.is_relative_to(folder)):
        raise SpecError(
            f"{given} resolves to {path}, outside the weights root {root} (--weights-root, env {ROOT_ENV}) and the "
            f"method's folder {folder}: put the weights in one of them",
            where=method.path,
        )
    if not (path.is_file() or path.is_dir()):
        raise SpecError(f"{given}: {path} is not a regular file or folder", where=method.path)
    return path


def verified(method: MethodSpec) -> Path:
    """The method's weights file, present and with the expected sha256; else WeightsMissing / WeightsError, one line
    naming the file, where it is expected and the command that fixes it."""
    path = expected_path(method)
    if not path.is_file():
        raise WeightsMissing(
            f"{method.name}: weights file {method.weights.file} is missing: expected at {path}; "
            f"get it with {fetch_command(method)}"
        )
    want, source = expected(method)
    if want is None:
        raise WeightsError(
            f"{method.name}: {path} has no checksum to match (sha256: null in {method.path}, no entry "
            f"{lock_key(method)!r} in {lock_path(method)}); {fetch_command(method)} verifies and records it"
        )
    got = file_sha256(path)
    if got != want:
        raise WeightsError(
            f"{method.name}: {path} has sha256 {got}, not the {want} {source}; "
            f"delete it and run {fetch_command(method)}"
        )
    return path


def resolve(method: MethodSpec, root: Path | None, synthetic: bool) -> MethodSpec:
    """The spec a run uses: its weights under `root` (None: the default), checked now, before anything runs or is
    written. On procedural data a declared file that is absent gives a random init: the method gets no
    $BENCH_WEIGHTS and its results say `weights: random-init`. A wrong or unverifiable file never runs."""
    if root is not None:
        method = method.model_copy(update={"weights_root": Path(root)})
    if method.random_init:
        return method
    try:
        method.weights_path
    except WeightsMissing:
        if not synthetic:
            raise
        return method.model_copy(update={"random_init": True})
    return method


def record(method: MethodSpec, sha256: str, size: int) -> Path:
    """Write the first fetch's checksum to the lock file (atomically, other entries kept): the read, update and
    write hold an flock on a guard file beside it, so concurrent fetches of other methods never lose an entry."""
    lock = lock_path(method)
    with open(lock.with_name(f".{lock.name}.flock"), "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        entries = read_lock(lock)
        entries[lock_key(method)] = {"sha256": sha256, "size": size, "url": method.weights.url, "recorded": now()}
        write_atomic(lock, json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return lock


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def fetch(method: MethodSpec, progress: bool = True, retries: int = 3, log: Callable[[str], None] = _log) -> Path:
    """Download the method's weights file (resumable), verify it, install it at its expected path (by rename, so it
    is there only complete) and, where no checksum is published, record it in the lock file. Returns the path."""
    from harness.data.fetch import Archive, download, mirrored, verify

    if not declared(method):
        what = f"its weights are a host path ({method.weights})" if method.weights else "it declares no weights"
        raise UserError(f"{method.name}: nothing to fetch: {what}", where=method.path)
    if method.weights.url is None:
        raise UserError(
            f"{method.name}: nothing to fetch: no weights are published; make them with {fetch_command(method)}"
        )
    source, path = method.weights, expected_path(method)
    want, where = expected(method)
    if path.is_file():
        got = file_sha256(path)
        if want is None:
            lock = record(method, got, path.stat().st_size)
            log(
                f"{method.name}: {path} was already there; recorded its sha256 {got} in {lock} (no checksum is "
                "published: delete the file and fetch again to download it instead)"
            )
        elif got != want:
            raise WeightsError(f"{method.name}: {path} has sha256 {got}, not the {want} {where}; delete it to fetch it")
        else:
            log(f"{method.name}: {path} already installed (sha256 {where})")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    url = mirrored(source.url, source.file)
    log(f"{method.name}: {source.file} <- {url}")
    download(url, part, None, progress, retries)
    if want is not None:
        by = str(method.path) if source.sha256 else f"{lock_path(method)}, at the first fetch"
        verify(
            part, Archive(url=source.url, filename=source.file, checksum=f"sha256:{want}", published_by=by), progress
        )
    got = file_sha256(part)
    os.replace(part, path)
    if want is None:
        lock = record(method, got, path.stat().st_size)
        log(
            f"{method.name}: no checksum is published; recorded sha256 {got} in {lock} (commit it: later fetches "
            "and runs must match it)"
        )
    log(f"{method.name}: installed at {path}")
    return path


def status(method: MethodSpec) -> tuple[str, str, str, str]:
    """(file, expected at, present, checksum) for `bench weights list`; a present file is hashed and checked."""
    if not declared(method):
        path = _host_path(method)
        return method.weights, str(path), "present" if path.exists() else "missing", "host path: not checked"
    path = expected_path(method)
    want, where = expected(method)
    kind = "published" if method.weights.sha256 else "locked" if want else "none recorded"
    if not path.is_file():
        return method.weights.file, str(path), "missing", kind
    if want is None:
        return method.weights.file, str(path), "present", f"{kind}: `bench weights fetch` records it"
    return method.weights.file, str(path), "present", f"{kind}, {'ok' if file_sha256(path) == want else 'MISMATCH'}"
