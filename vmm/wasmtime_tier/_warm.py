"""Core-path instances made ahead of their connection (or HTTP request).

Creating a Store and instance (and running the plugin's `_initialize`) costs
~0.4-0.8 ms, on a worker thread. A factory keeps WARM_INSTANCES of them ready,
made on the worker pool with no capabilities (`_Unbound`); a connection takes
one that has never run anything for anyone, binds its own capabilities to it
and uses it alone, so its first hook can run inline on the event loop. A
plugin whose start code calls a capability cannot be made ahead: the pool
stops for it, and its instances are made per connection as before.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from vmm.capabilities import HostCapabilities
from vmm.kvstore import KvStore
from vmm.metrics import METRICS, Metrics
from vmm.policy import Grants, SandboxSpec
from vmm.wasmtime_tier._engine import EXECUTOR

__all__ = ["WARM_INSTANCES", "Unbound", "WarmInstances"]

LOG = logging.getLogger("lightcell.wasmtime")

WARM_INSTANCES = 4
"""Core-path instances created ahead of connections, on the worker pool."""


class NeedsConnection(Exception):
    """Start code called a capability before any connection exists."""


class Unbound(HostCapabilities):
    """The capabilities of an instance made ahead of its connection: none. Any
    call fails (quietly: it is not the plugin's fault), and the pool stops
    making instances ahead for a plugin whose start code needs capabilities."""

    def check(self, capability: str) -> None:
        raise NeedsConnection(capability)

    @classmethod
    def for_spec(cls, spec: SandboxSpec, plugin: str) -> Unbound:
        return cls(spec.listener, plugin, Grants(), spec.limits, KvStore(1, 1), metrics=Metrics())


class Preparable(Protocol):
    def prepare(self) -> None: ...

    def bind(self, host: HostCapabilities) -> None: ...

    def release(self) -> object: ...


InstanceT = TypeVar("InstanceT", bound=Preparable)


class WarmInstances(Generic[InstanceT]):
    """Up to WARM_INSTANCES instances from `make(unbound)`, refilled on the worker pool."""

    def __init__(
        self, listener: str, make: Callable[[HostCapabilities], InstanceT], unbound: Unbound
    ) -> None:
        self._listener = listener
        self._make = make
        self._unbound = unbound
        self._ready: collections.deque[InstanceT] = collections.deque()
        self._on = True
        self._filling = False
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._refill()

    @property
    def ready(self) -> tuple[InstanceT, ...]:
        """The instances ready now (a snapshot)."""
        return tuple(self._ready)

    def take(self, host: HostCapabilities) -> InstanceT | None:
        """A ready instance bound to `host`, or None (then the caller makes one)."""
        instance = self._ready.popleft() if self._ready else None
        if instance is not None:
            self._gauge(-1)
            instance.bind(host)
        self._refill()
        return instance

    def stop(self, timeout_s: float = 30.0) -> None:
        """Blocking: stop refilling, wait for a fill in progress (start code runs
        under the epoch ticker, which must outlive it), release what is ready."""
        self._on = False
        self._idle.wait(timeout_s)
        while self._ready:
            self._ready.popleft().release()
            self._gauge(-1)

    def _gauge(self, delta: int) -> None:
        METRICS.add("wasmtime_warm_instances", delta, listener=self._listener)

    def _refill(self) -> None:
        with self._lock:
            if self._filling or not self._on or len(self._ready) >= WARM_INSTANCES:
                return
            self._filling = True
            self._idle.clear()
        EXECUTOR.submit(self._fill)

    def _fill(self) -> None:
        """On a worker: make instances until WARM_INSTANCES are ready."""
        try:
            while self._on and len(self._ready) < WARM_INSTANCES:
                started = time.perf_counter()
                instance = self._make(self._unbound)
                try:
                    instance.prepare()
                except Exception as e:  # start code needs a connection, or fails outright
                    instance.release()
                    self._on = False
                    LOG.debug("listener %s: instances are made per connection: %s", self._listener, e)
                    return
                METRICS.observe("sandbox_create_seconds", time.perf_counter() - started, tier="wasmtime")
                if not self._on:
                    instance.release()
                    return
                self._ready.append(instance)
                self._gauge(1)
        finally:
            with self._lock:
                self._filling = False
                self._idle.set()
