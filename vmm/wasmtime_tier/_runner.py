"""Async hook calls, run off the event loop, in order, poisoning on fault.

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

Ordering: one asyncio.Lock per sandbox keeps its hooks in call order; a
threading.Lock per sandbox guarantees its Store is never used by two threads
at once, even when an awaiting task was cancelled while its call still runs
(the sandbox is then poisoned: the plugin's state is unknown).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TypeVar

from vmm.contract import DataEvent, Verdict
from vmm.metrics import METRICS
from vmm.sandbox import FaultKind, PluginFault
from vmm.wasmtime_tier._engine import EXECUTOR

__all__ = ["HookRunner", "new_identity"]

LOG = logging.getLogger("lightcell.wasmtime")
T = TypeVar("T")
_ids = itertools.count(1)


def new_identity(kind: str) -> str:
    return f"wasmtime-{kind}-{next(_ids)}"


class HookRunner(ABC):
    """The async Sandbox surface; subclasses implement the synchronous hooks."""

    def __init__(self, identity: str, listener: str, plugin: str) -> None:
        self._identity = identity
        self._listener = listener
        self._plugin = plugin
        self._fault: PluginFault | None = None
        self._closed = False
        self._instantiated = False
        self._order = asyncio.Lock()
        self._guard = threading.Lock()

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def fault(self) -> PluginFault | None:
        """The fault that poisoned this sandbox, if any."""
        return self._fault

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

    # --- Sandbox protocol -----------------------------------------------------
    # Instantiation happens in the same worker round trip as on-open: one
    # thread hop per new connection instead of two (~0.2 ms saved, see the
    # benchmark); a plugin that cannot instantiate fails its open().
    async def open(self, listener: str, config: str) -> None:
        def call() -> None:
            self._ensure_instance()
            self._open_sync(listener, config)

        await self._run("on-open", call)

    async def on_data(self, event: DataEvent) -> Verdict:
        def call() -> Verdict:
            self._ensure_instance()
            return self._data_sync(event)

        return await self._run("on-data", call)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            async with self._order:
                await loop.run_in_executor(EXECUTOR, self._close_locked)
        except BaseException as e:  # close never raises, but cancellation must propagate
            if isinstance(e, asyncio.CancelledError):
                raise
            LOG.warning("sandbox %s: close failed: %s", self._identity, e)

    # --- machinery --------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._fault is not None:
            raise PluginFault(
                self._fault.kind, f"sandbox poisoned by an earlier fault: {self._fault.message}"
            )
        if self._closed:
            raise PluginFault(FaultKind.INTERNAL, "sandbox is closed")

    async def _run(self, hook: str, call: Callable[[], T]) -> T:
        self._check_usable()
        loop = asyncio.get_running_loop()
        async with self._order:
            self._check_usable()
            try:
                return await loop.run_in_executor(EXECUTOR, self._locked, call)
            except PluginFault as fault:
                self._poison(fault)
                raise
            except asyncio.CancelledError:
                self._poison(PluginFault(FaultKind.INTERNAL, f"{hook}: call cancelled"))
                raise

    def _locked(self, call: Callable[[], T]) -> T:
        with self._guard:
            self._check_usable()
            return call()

    def _ensure_instance(self) -> None:
        if not self._instantiated:
            self._instantiate_sync()
            self._instantiated = True

    def _poison(self, fault: PluginFault) -> None:
        if self._fault is None:
            self._fault = fault
            METRICS.inc(
                "plugin_faults_total", listener=self._listener, plugin=self._plugin, kind=fault.kind.value
            )
            LOG.warning("sandbox %s poisoned: %s", self._identity, fault)

    def _close_locked(self) -> None:
        with self._guard:
            try:
                if self._fault is None and self._instantiated:
                    self._close_sync()
            except PluginFault as fault:
                self._poison(fault)
            except Exception as e:
                LOG.warning("sandbox %s: on-close failed: %s", self._identity, e)
            finally:
                self._release_sync()
