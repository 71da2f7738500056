"""The wasmtime tier's instances: hooks run on a worker thread, one at a time.

Why a thread pool and not inline: a plugin call holds its thread for up to
its CPU budget (50 ms by default); run inline on the event loop, one looping
plugin would stall every other connection for that long per event.
wasmtime-py releases the GIL while wasm runs, so other connections' calls and
the event loop proceed meanwhile (tests/test_wasmtime_tier.py proves it with
a looping plugin).

The price, measured with `python benchmarks/bench_wasmtime_tier.py` on this
2-core machine shared with other work (p50 / p99 per event, rewrite plugin,
core path):
    1 KiB:  inline  38 µs / 132 µs   via the pool 151 µs / 262 µs
    64 KiB: inline 277 µs / 616 µs   via the pool 410 µs / 705 µs
and a bare executor round trip is ~185 µs p50 under that load. About 0.1-0.2
ms per event buys the guarantee that no plugin can stall the loop; inline
execution cannot give that guarantee at any price, so the pool it is.

Ordering and state: vmm.runner.Runner (the one async edge of every tier)
keeps a sandbox's hooks in call order and poisons it on a fault or a
cancellation; a threading.Lock per instance guarantees its Store is never
used by two threads at once, even when an awaiting task was cancelled while
its call still runs (release waits for that call).
"""

from __future__ import annotations

import itertools
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from vmm.contract import DataEvent, Verdict
from vmm.wasmtime_tier._engine import EXECUTOR

__all__ = ["WasmtimeInstance", "new_identity"]

LOG = logging.getLogger("lightcell.wasmtime")
T = TypeVar("T")
_ids = itertools.count(1)


def new_identity(kind: str) -> str:
    return f"wasmtime-{kind}-{next(_ids)}"


class WasmtimeInstance(ABC):
    """vmm.runner.Instance for the wasmtime tier: hooks run on EXECUTOR (never
    inline: a wasmtime call cannot be paused and moved off the loop), one at a
    time; subclasses implement the synchronous hooks."""

    inline = False

    def __init__(self, identity: str) -> None:
        self._identity = identity
        self._instantiated = False
        self._guard = threading.Lock()

    @property
    def identity(self) -> str:
        return self._identity

    # --- what a tier implements (run on a worker thread, under _guard) --------
    @abstractmethod
    def _instantiate_sync(self) -> None:
        """Create the Store and instance (runs plugin start code, so it is budgeted)."""

    @abstractmethod
    def _open_sync(self, listener: str, config: str) -> None: ...

    @abstractmethod
    def _data_sync(self, event: DataEvent) -> Verdict: ...

    @abstractmethod
    def _close_sync(self) -> None: ...

    @abstractmethod
    def _release_sync(self) -> None:
        """Drop the store and instance. Must not raise."""

    # --- vmm.runner.Instance ----------------------------------------------------
    def submit(self, fn: Callable[[], T]) -> Future[T]:
        return EXECUTOR.submit(self._locked, fn)

    # Instantiation happens in the same worker round trip as on-open (the
    # runner folds on-open into the first event): one thread hop per new
    # connection; a plugin that cannot instantiate fails that first call.
    def open(self, listener: str, config: str) -> None:
        self._ensure_instance()
        self._open_sync(listener, config)

    def on_data(self, event: DataEvent) -> Verdict:
        self._ensure_instance()
        return self._data_sync(event)

    def close(self) -> None:
        if self._instantiated:
            self._close_sync()

    def release(self) -> Future[None] | None:
        # Usually no call is running: drop the Store here, without a hop. A call
        # that was cancelled may still run on a worker: release after it.
        if self._guard.acquire(blocking=False):
            try:
                self._release_sync()
            finally:
                self._guard.release()
            return None
        return EXECUTOR.submit(self._locked, self._release_sync)

    # --- machinery --------------------------------------------------------------
    def _locked(self, call: Callable[[], T]) -> T:
        with self._guard:
            return call()

    def _ensure_instance(self) -> None:
        if not self._instantiated:
            self._instantiate_sync()
            self._instantiated = True
