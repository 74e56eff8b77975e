"""A method session answered from the feature cache (harness.cache), which starts the method only on the first miss.

A protocol sees an ordinary session: every reply, stored or live, passes the same contract checks (MethodSession's
embed / embed_dense / segment). What a miss returns is stored as the method sent it. The handshake info is stored
too, so a cell whose every request hits never starts the method. A fit stage always runs on the live method and
changes the keys of the replies after it (a digest of everything it streamed).
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, ContextManager, Iterable, Iterator

import numpy as np

from harness.cache import FeatureCache, FitDigest, ReplyKeys
from harness.contract import FitBatch, MethodInfo
from harness.errors import HarnessBug, UserError
from harness.runners.base import RunningMethod
from harness.runners.session import MethodSession


class CachedSession(MethodSession):
    """The session of `start()`'s method, started when a request misses the cache (or the protocol fits it)."""

    def __init__(self, cache: FeatureCache, keys: ReplyKeys, start: Callable[[], ContextManager[RunningMethod]]):
        # no channel of its own: the counters are the live session's (properties below)
        self.cache, self.keys, self._start, self._stack = cache, keys, start, ExitStack()
        self.running: RunningMethod | None = None
        stored = cache.get_info(keys.method, keys.info)
        self._info = MethodInfo.model_validate(stored) if stored else None
        self.cached_requests = 0
        self.cache_seconds = 0.0  # hashing, reading and writing entries

    # the live session's counters; zero while the method has not started
    method_seconds = property(lambda self: self._live("method_seconds", 0.0))
    fit_seconds = property(lambda self: self._live("fit_seconds", 0.0))
    images_sent = property(lambda self: self._live("images_sent", 0))
    bytes_sent = property(lambda self: self._live("bytes_sent", 0))

    def _live(self, name: str, default):
        return getattr(self.running.session, name) if self.running else default

    @property
    def info(self) -> MethodInfo | None:
        """The stored info, else the live method's (None once it failed to start)."""
        if self._info is None and self._start is not None:
            self.method()
        return self._info

    def method(self) -> MethodSession:
        """The live method's session, started (and its info stored) on first use; one start only."""
        if self.running is None:
            start, self._start = self._start, None
            if start is None:
                raise HarnessBug("the method failed to start, and a request came after")
            self.running = self._stack.enter_context(start())
            self._info = self.running.session.info
            self._store(lambda: self.cache.put_info(self.keys.method, self.keys.info, self._info.model_dump()))
        return self.running.session

    def _images_request(self, kind: str, images: np.ndarray) -> dict:
        from harness.contract import OUTPUTS

        t0 = time.perf_counter()
        key = self.keys.request(OUTPUTS[kind].op, images)
        out = self.cache.get(self.keys.method, key)
        self.cache_seconds += time.perf_counter() - t0
        if out is not None:
            self.cached_requests += 1
            return out
        out = self.method()._images_request(kind, images)
        self._store(lambda: self.cache.put(self.keys.method, key, out))
        return out

    def fit(self, batches: Iterable[FitBatch], with_labels: bool) -> None:
        """The live method's fit stage; the replies after it are keyed by what it streamed."""
        digest = FitDigest()

        def hashed() -> Iterator[FitBatch]:
            for batch in batches:
                t0 = time.perf_counter()
                digest.add(batch.images, *((batch.labels, batch.patches) if with_labels else ()))
                self.cache_seconds += time.perf_counter() - t0
                yield batch

        self.method().fit(hashed(), with_labels)
        self.keys = self.keys.after_fit(digest.hexdigest())

    def _store(self, write: Callable[[], None]) -> None:
        """A write into the cache; one that fails (a full disk) costs the cache, never the cell."""
        t0 = time.perf_counter()
        try:
            write()
        except UserError as e:
            print(f"bench: feature cache: not stored: {e}", file=sys.stderr)
        self.cache_seconds += time.perf_counter() - t0

    def request(self, op: str, fields: dict | None = None, arrays: dict | None = None) -> tuple[dict, dict]:
        return self.method().request(op, fields, arrays)

    def shutdown(self) -> None:
        """The live method, if any, is stopped when the session's context ends."""


class CachedRunning(RunningMethod):
    """A running method whose session is a CachedSession: log and peak memory are the live method's, if it started."""

    def __init__(self, session: CachedSession):
        super().__init__(log=None, session=session)

    @property
    def peak_memory_bytes(self) -> int | None:
        return self.session.running.peak_memory_bytes if self.session.running else None

    @peak_memory_bytes.setter
    def peak_memory_bytes(self, value) -> None:  # RunningMethod.__init__ sets it
        pass


@contextmanager
def cached_start(
    cache: FeatureCache, keys: ReplyKeys, start: Callable[[], ContextManager[RunningMethod]]
) -> Iterator[CachedRunning]:
    """`start()`'s method behind the cache: started on the first miss, stopped (with the cell's exception, if one
    ends it) when this context ends; the size limit is kept afterwards."""
    session = CachedSession(cache, keys, start)
    with session._stack:
        yield CachedRunning(session)
    cache.enforce_limit()
