"""The wasmtime tier's instances: where their hooks run, one at a time.

A wasmtime call cannot be paused and moved to another thread, so it runs
where it starts. Small events of a plugin that has always been fast run on
the event loop's thread (no hand-off: the 1 KiB event costs ~38 us inline
against ~150 us through a worker, `benchmarks/bench_wasmtime_tier.py`);
everything else runs on EXECUTOR, where a call holds only its worker for up
to its CPU budget and wasmtime-py releases the GIL while wasm runs. The
InlineGate below decides, and bounds what inline execution can cost the
loop: one stall of at most one event budget per listener.

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
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from vmm.capabilities import HostCapabilities
from vmm.contract import DataEvent, Verdict
from vmm.wasmtime_tier._engine import EXECUTOR

__all__ = [
    "INLINE_MAX_BUDGET_MS", "INLINE_MAX_EVENT_BYTES", "SLOW_HOOK_S", "InlineGate", "WasmtimeInstance",
    "new_identity",
]

LOG = logging.getLogger("lightcell.wasmtime")
T = TypeVar("T")
_ids = itertools.count(1)


def new_identity(kind: str) -> str:
    return f"wasmtime-{kind}-{next(_ids)}"


SLOW_HOOK_S = 0.005
"""A small-event hook that takes more CPU time than this shuts its listener's
InlineGate. Fast plugins take tens of microseconds; the margin keeps a GC pause
or a fresh store's first page faults (1-2 ms seen) from shutting it."""
INLINE_MAX_BUDGET_MS = 100
"""Listeners whose event budget is larger never run inline (their worst stall)."""
INLINE_MAX_EVENT_BYTES = 16 * 1024
"""Larger events always run on EXECUTOR: an honest plugin's cost grows with the
chunk (bulk transfers), and there the hand-off is a small share anyway."""


class InlineGate:
    """Whether one listener's plugin may run on the event loop's thread.

    A wasmtime call cannot be paused and moved to another thread (the micro-VM
    tier's can), so a call run inline holds the loop until it ends: at most its
    epoch budget. Only hooks with at most INLINE_MAX_EVENT_BYTES of input run
    inline. The gate starts open for budgets up to INLINE_MAX_BUDGET_MS and
    shuts for good the first time one of those hooks takes longer than
    SLOW_HOOK_S of CPU: a plugin can stall the loop once per listener,
    for at most one event budget, and then runs on EXECUTOR like before
    (THREAT_MODEL.md, "Where a call runs").
    """

    def __init__(self, listener: str, plugin: str, event_cpu_ms: int) -> None:
        self.listener = listener
        self.plugin = plugin
        self.open = event_cpu_ms <= INLINE_MAX_BUDGET_MS

    def observe(self, cpu_seconds: float) -> None:
        if self.open and cpu_seconds > SLOW_HOOK_S:
            self.open = False
            LOG.info(
                "listener %s: plugin %s took %.1f ms of CPU on one hook: "
                "its calls run off the event loop from now on",
                self.listener, self.plugin, cpu_seconds * 1000,
            )  # fmt: skip


class WasmtimeInstance(ABC):
    """vmm.runner.Instance for the wasmtime tier: one hook at a time, inline on
    the event loop while the listener's InlineGate is open, else on EXECUTOR;
    subclasses implement the synchronous hooks."""

    def __init__(self, identity: str, host: HostCapabilities, gate: InlineGate) -> None:
        self._identity = identity
        self._host = host
        self._gate = gate
        self._instantiated = False
        self._guard = threading.Lock()

    @property
    def identity(self) -> str:
        return self._identity

    def runs_inline(self, size: int) -> bool:
        # The first entry creates the Store and instance (~0.4-0.8 ms, page
        # faults included): always on the worker, and never held against the gate.
        return self._instantiated and size <= INLINE_MAX_EVENT_BYTES and self._gate.open

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
        if not self._instantiated or len(event.data) > INLINE_MAX_EVENT_BYTES:
            # Never inline, so their time says nothing about the gate's question.
            self._ensure_instance()
            verdict = self._data_sync(event)
        else:
            verdict = self._timed(lambda: self._data_sync(event))
        # With what the plugin set during the hook (and a deferred on-open).
        return verdict.with_metadata(self._host.take_metadata())

    def close(self) -> None:
        if self._instantiated:
            self._timed(self._close_sync)

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
    def _timed(self, call: Callable[[], T]) -> T:
        start = time.thread_time()
        try:
            return call()
        finally:
            self._gate.observe(time.thread_time() - start)

    def _locked(self, call: Callable[[], T]) -> T:
        with self._guard:
            return call()

    def _ensure_instance(self) -> None:
        if not self._instantiated:
            self._instantiate_sync()
            self._instantiated = True
