"""The feature cache: method replies stored by content, so a frozen method's outputs are extracted once and scored
many times (seeds, tasks sharing a dataset, re-scoring after an evaluator fix).

An entry's key is the sha256 of what determines the reply (ReplyKeys): the method (name with variant, and its runner's
reference: image digest or code hash, weights hash, for the local backend the host's packages), the machine that
computes it (GPU, else CPU model and count: float results may differ between them), the setup seed (left out where
method.yaml declares `seed_independent: true` and real weights are loaded), a digest of every fit input the session
streamed, the op and the request's exact image bytes. Keying on the bytes makes it correct by construction:
augmented passes, which differ per seed, simply miss. The value is the reply's arrays in the dtype the method sent.

Entries are `<root>/<method>/<key[:2]>/<key>.npz`, written to a temporary name and renamed into place, so a reader
never sees a partial entry (also after `kill -9`) and concurrent harnesses may write the same entry. A hit touches the
entry's mtime: pruning is least-recently-used first, and the size limit ($BENCH_CACHE_MAX_GB) is kept after each cell.
VISSL, CLIP_benchmark and eva cache features by file name; none keys them by content.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import UserError
from harness.results import write_atomic

FORMAT = 1  # bump when what a key covers, or how an entry is written, changes
DEFAULT_MAX_GB = 50.0
TMP_PREFIX = ".tmp-"  # results.write_atomic's
STALE_TMP_S = 3600  # a temporary file this old belongs to a harness that died while writing it
NONDETERMINISTIC = ".nondeterministic"  # refs of method images `bench validate` found nondeterministic


def cache_root(results_root: Path) -> Path:
    """$BENCH_CACHE, else `feature-cache` beside the results folder."""
    return Path(os.environ.get("BENCH_CACHE") or Path(results_root).parent / "feature-cache")


def max_bytes() -> int:
    raw = os.environ.get("BENCH_CACHE_MAX_GB", str(DEFAULT_MAX_GB))
    try:
        gb = float(raw)
    except ValueError:
        gb = -1.0
    if not gb > 0:
        raise UserError(f"BENCH_CACHE_MAX_GB={raw!r}: give the cache's size limit in GB, a positive number")
    return int(gb * (1 << 30))


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ReplyKeys:
    """The keys of one session's replies. `prefix` covers everything but the request: method, machine, seed, fit."""

    method: str
    prefix: str

    @classmethod
    def of(cls, method: str, ref: str, machine: str, seed: int | None) -> "ReplyKeys":
        """`seed` None: the method's outputs do not depend on the setup seed."""
        return cls(method, _digest(FORMAT, method, ref, machine, seed))

    def after_fit(self, fit_digest: str) -> "ReplyKeys":
        """The keys once the method has been fit on inputs whose digest is `fit_digest`."""
        return ReplyKeys(self.method, _digest(self.prefix, "fit", fit_digest))

    @property
    def info(self) -> str:
        """The key of the method's handshake info, kept so a cell whose every request hits never starts it."""
        return _digest(self.prefix, "info")

    def request(self, op: str, images: np.ndarray) -> str:
        h = hashlib.sha256(f"{self.prefix}\0{op}\0{images.dtype.str}\0{images.shape}\0".encode())
        h.update(np.ascontiguousarray(images).data)
        return h.hexdigest()


class FitDigest:
    """A running sha256 of what a fit stage streams: every batch's images, and labels and patch indices when sent."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def add(self, *arrays: np.ndarray | None) -> None:
        for a in arrays:
            if a is None:
                self.h.update(b"none\0")
            else:
                self.h.update(f"{a.dtype.str}{a.shape}\0".encode())
                self.h.update(np.ascontiguousarray(a).data)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


@dataclass(frozen=True)
class Entry:
    path: Path
    method: str
    bytes: int
    used: float  # last written or read (mtime)


class FeatureCache:
    """Replies and handshake infos under `root`, one file each, bounded by `limit` bytes (least recently used
    entries go first)."""

    def __init__(self, root: Path, limit: int | None = None):
        self.root = Path(root)
        self.limit = max_bytes() if limit is None else limit

    def _path(self, method: str, key: str, suffix: str) -> Path:
        return self.root / method / key[:2] / f"{key}{suffix}"

    def get(self, method: str, key: str) -> dict[str, np.ndarray] | None:
        """The stored reply of `key`, None if there is none (or it cannot be read: then it is removed)."""
        path = self._path(method, key, ".npz")
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {name: z[name] for name in z.files}
            os.utime(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # damaged on disk: a miss, and it is rewritten
            path.unlink(missing_ok=True)
            return None
        return out

    def put(self, method: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_atomic(self._path(method, key, ".npz"), buf.getvalue())

    def get_info(self, method: str, key: str) -> dict | None:
        try:
            return json.loads(self._path(method, key, ".json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def put_info(self, method: str, key: str, info: dict) -> None:
        write_atomic(self._path(method, key, ".json"), json.dumps(info))

    def entries(self, method: str | None = None) -> list[Entry]:
        """Every entry (of `method`'s, if given), replies and infos alike."""
        folders = [self.root / method] if method else sorted(p for p in self.root.glob("*") if p.is_dir())
        found = []
        for folder in folders:
            if folder.name.startswith("."):
                continue
            for path in folder.glob("*/*"):
                if path.name.startswith(TMP_PREFIX):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:  # pruned meanwhile by another harness
                    continue
                found.append(Entry(path, folder.name, st.st_size, st.st_mtime))
        return found

    def prune(self, older_than_s: float | None = None, method: str | None = None) -> tuple[int, int]:
        """Remove the entries (of `method`) last used more than `older_than_s` ago (all of them when None), and
        temporary files left by harnesses that died; returns (entries, bytes) removed."""
        cutoff = time.time() - older_than_s if older_than_s is not None else float("inf")
        self._remove_stale_tmp()
        return self._remove([e for e in self.entries(method) if e.used < cutoff])

    def enforce_limit(self) -> tuple[int, int]:
        """Down to 90% of the size limit, least recently used first, once the cache exceeds it."""
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        if total <= self.limit:
            return 0, 0
        doomed, target = [], total - int(0.9 * self.limit)
        for e in sorted(entries, key=lambda e: e.used):
            if target <= 0:
                break
            doomed.append(e)
            target -= e.bytes
        return self._remove(doomed)

    def _remove(self, doomed: list[Entry]) -> tuple[int, int]:
        n = size = 0
        for e in doomed:
            try:
                e.path.unlink()
            except FileNotFoundError:
                continue
            n, size = n + 1, size + e.bytes
        return n, size

    def _remove_stale_tmp(self) -> None:
        for tmp in self.root.glob(f"*/*/{TMP_PREFIX}*"):
            try:
                if time.time() - tmp.stat().st_mtime > STALE_TMP_S:
                    tmp.unlink()
            except FileNotFoundError:
                pass

    # --- what `bench validate` found -------------------------------------------------------------------------

    def _marker(self, ref: str) -> Path:
        return self.root / NONDETERMINISTIC / hashlib.sha256(ref.encode()).hexdigest()

    def nondeterministic(self, ref: str) -> str | None:
        """Why the method with runner reference `ref` is never cached, if `bench validate` found it nondeterministic."""
        try:
            return self._marker(ref).read_text()
        except FileNotFoundError:
            return None

    def record_determinism(self, ref: str, problem: str | None) -> None:
        """`bench validate`'s finding on `ref`: `problem` (its outputs differ between two runs) or None (they agree)."""
        if problem is None:
            self._marker(ref).unlink(missing_ok=True)
        else:
            write_atomic(self._marker(ref), f"{ref}: {problem}")
