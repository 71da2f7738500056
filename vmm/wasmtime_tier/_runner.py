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
keeps a sandbox's hooks in call order, one at a time, and poisons it on a
fault or a cancellation; it never runs a hook inline while a worker call of
the same sandbox may still be running. Worker calls hold the instance's
_guard; release() drops the Store at once when no worker call runs, and
otherwise leaves that to the running call (a queued call that has not
started refuses to run plugin code once release was asked for).
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
from vmm.sandbox import FaultKind, PluginFault
from vmm.wasmtime_tier._engine import EXECUTOR

__all__ = [
    "INLINE_MAX_BUDGET_MS", "INLINE_MAX_EVENT_BYTES", "SLOW_HOOK_S", "InlineGate", "WasmtimeInstance",
    "WasmtimeInstanceBase", "new_identity",
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


class WasmtimeInstanceBase(ABC):
    """vmm.runner.BaseInstance for the wasmtime tier, whatever the world: one
    hook at a time, inline on the event loop while the listener's InlineGate is
    open, else on EXECUTOR; subclasses implement the synchronous hooks
    (WasmtimeInstance adds tcp-filter's on-data)."""

    def __init__(self, identity: str, host: HostCapabilities, gate: InlineGate) -> None:
        self._identity = identity
        self._host = host
        self._gate = gate
        self._instantiated = False
        self._guard = threading.Lock()
        """Held while plugin code runs on a worker (inline calls need none: the
        runner has one call in flight and never runs inline while a worker call
        may still be running, see vmm/runner.py)."""
        self._flags = threading.Lock()
        self._running = False
        self._release_requested = False
        self._released: Future[None] = Future()

    @property
    def identity(self) -> str:
        return self._identity

    def runs_inline(self, size: int) -> bool:
        # Creating the Store and instance (~0.4-0.8 ms, page faults included) runs
        # on the worker and is never held against the gate; an instance made ahead
        # (_factory.py) can take its connection's first entry inline.
        return self._instantiated and size <= INLINE_MAX_EVENT_BYTES and self._gate.open

    # --- what a tier implements (run on a worker thread, under _guard) --------
    @abstractmethod
    def _instantiate_sync(self) -> None:
        """Create the Store and instance (runs plugin start code, so it is budgeted)."""

    @abstractmethod
    def _open_sync(self, listener: str, config: str) -> None: ...

    @abstractmethod
    def _close_sync(self) -> None: ...

    @abstractmethod
    def _release_sync(self) -> None:
        """Drop the store and instance. Must not raise."""

    # --- vmm.runner.BaseInstance ------------------------------------------------
    def submit(self, fn: Callable[[], T]) -> Future[T]:
        return EXECUTOR.submit(self._locked, fn)

    # Instantiation happens in the same worker round trip as on-open (the
    # runner folds on-open into the first event): one thread hop per new
    # connection; a plugin that cannot instantiate fails that first call.
    # Every hook with at most INLINE_MAX_EVENT_BYTES of input is timed for the
    # gate, wherever it runs; creating the instance is not.
    def open(self, listener: str, config: str) -> None:
        self._ensure_instance()
        self._timed(lambda: self._open_sync(listener, config))

    def close(self) -> None:
        if self._instantiated:
            self._timed(self._close_sync)

    def release(self) -> Future[None] | None:
        """Drop the Store now if no worker call is running; else the running call
        drops it when it ends (no worker waits for it), and a queued call that
        had not started yet never runs plugin code."""
        with self._flags:
            self._release_requested = True
            running = self._running
        if not running and self._guard.acquire(blocking=False):
            try:
                self._release_now()
            finally:
                self._guard.release()
            return None
        return self._released  # done when the call holding _guard has released

    def _release_now(self) -> None:
        """Under _guard."""
        if not self._released.done():
            self._release_sync()
            self._released.set_result(None)

    # --- machinery --------------------------------------------------------------
    def _hook(self, size: int, call: Callable[[], T]) -> T:
        """Run a hook with `size` bytes of input (instance made first), timed for
        the gate unless it is too large ever to run inline."""
        self._ensure_instance()
        if size > INLINE_MAX_EVENT_BYTES:
            return call()  # never inline: says nothing about the gate's question
        return self._timed(call)

    def _timed(self, call: Callable[[], T]) -> T:
        start = time.thread_time()
        try:
            return call()
        finally:
            self._gate.observe(time.thread_time() - start)

    def _locked(self, call: Callable[[], T]) -> T:
        with self._guard:
            with self._flags:
                refused = self._release_requested
                self._running = not refused
            if refused:  # released while this call waited for a worker
                self._release_now()
                raise PluginFault(FaultKind.INTERNAL, "sandbox released before the call ran")
            try:
                return call()
            finally:
                with self._flags:
                    self._running = False
                    release = self._release_requested
                if release:
                    self._release_now()

    def _ensure_instance(self) -> None:
        if not self._instantiated:
            self._instantiate_sync()
            self._instantiated = True


class WasmtimeInstance(WasmtimeInstanceBase):
    """vmm.runner.Instance (tcp-filter) for the wasmtime tier."""

    @abstractmethod
    def _data_sync(self, event: DataEvent) -> Verdict: ...

    def on_data(self, event: DataEvent) -> Verdict:
        verdict = self._hook(len(event.data), lambda: self._data_sync(event))
        # With what the plugin set during the hook (and a deferred on-open).
        return verdict.with_metadata(self._host.take_metadata())
