"""A warm pool of restored micro-VMs for one plugin image.

The image is booted once; its state after initialisation is snapshotted, and
a warm-up call records the pages a first event touches. Every pooled VM is a
separate KVM VM restored from that snapshot and warmed (so its guest mappings
exist), then restored again: taking one is a deque pop, and its first event
takes no page faults. A VM given back is restored on its vCPU thread in the
background before it re-enters the pool, so nothing of one connection is ever
visible to the next; a poisoned VM is restored the same way.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from vmm.capabilities import HostCapabilities
from vmm.kvm import System
from vmm.metrics import METRICS
from vmm.microvm import abi
from vmm.microvm.machine import Template
from vmm.microvm.snapshot import Snapshot, warm_up
from vmm.microvm.vm import MicroVm, VmFault
from vmm.microvm.worker import BACKGROUND, ThreadSet, VcpuThread

LOG = logging.getLogger("lightcell.microvm.pool")

MAX_IDLE_DEFAULT = 32
"""Idle VMs a pool may keep (at least; 4x its initial target otherwise). Each
costs ~0.6 MiB, and every live VM adds to the process's MMU-notifier cost
(README, "Scaling out"): beyond this a burst's VMs are destroyed on return."""


@dataclass(eq=False)
class PooledVm:
    vm: MicroVm
    thread: VcpuThread
    restores: int = 0
    leased: bool = field(default=False)


class VmPool:
    def __init__(self, system: System, template: Template, threads: ThreadSet,
                 target: int = 4, max_idle: int | None = None,
                 warm: Callable[[MicroVm], None] = warm_up,
                 open_ahead: tuple[str, str] | None = None,
                 run: Callable[[MicroVm, Callable[[], object]], object] = lambda _vm, fn: fn(),
                 probe: Callable[[MicroVm], None] | None = None, listener: str = "",
                 open_host: HostCapabilities | None = None) -> None:
        self.system = system
        self.listener = listener
        """Label of the pool's gauges (microvm_pool_idle/live), moved by deltas so that
        two pools of one listener (a reload) add up."""
        self._probe = probe
        """Run once in the booted VM, which is then restored to its booted state
        (e.g. reading wanted-phases: nothing it does reaches a connection)."""
        self.warm = warm
        self._open_ahead = open_ahead
        self._open_host = open_host
        """The host on-open ahead runs with (wasip2_host.AheadHost; None: every call denied)."""
        self._run = run
        self.opened_with: tuple[str, str] | None = None
        """(listener, config) on-open already ran with in the snapshot, if it did."""
        self.base: Snapshot | None = None
        """The snapshot right after boot, before any on-open."""
        self.template = template
        self.threads = threads
        self.target = target
        """VMs kept ready; grows (up to max_idle) each time a lease finds none ready."""
        self.max_idle = max_idle if max_idle is not None else max(target * 4, MAX_IDLE_DEFAULT)
        self._ready: collections.deque[PooledVm] = collections.deque()
        self._lock = threading.Lock()
        self._pending = 0
        self._restoring = 0  # given back, restore queued: counts toward the target
        self._leased = 0  # VMs out with connections now
        self._closed = False
        self._live: set[PooledVm] = set()
        self.snapshot: Snapshot | None = None
        self.created = 0

    # -- set-up ---------------------------------------------------------------
    def start(self) -> None:
        """Cold-boot the image, snapshot it, keep the boot VM as the first pooled one."""
        thread = self.threads.pick()
        first = thread.run(lambda: self._boot_first(thread))
        with self._lock:
            self._ready.append(first)
        self._gauge("idle", 1)
        self.refill()

    def _boot_first(self, thread: VcpuThread) -> PooledVm:
        vm = MicroVm(self.system, self.template)
        try:
            vm.boot()
            snap = self.base = Snapshot.take(vm)
            if self._probe is not None:
                try:
                    self._probe(vm)
                finally:
                    snap.restore(vm)
            if self._open_ahead is not None:
                snap = self._snapshot_opened(vm, snap, *self._open_ahead)
            self.warm(vm)
            snap.add_warm_pages(vm)
            snap.restore(vm)
        except BaseException:
            vm.close()
            raise
        self.snapshot = snap
        return self._track(PooledVm(vm, thread))

    def _snapshot_opened(self, vm: MicroVm, base: Snapshot, listener: str, config: str) -> Snapshot:
        """Run on-open once, with no capabilities, and snapshot after it.

        Without capabilities on-open is a function of (listener, config) and
        the booted state alone (no clock, randomness or I/O reach it; the
        open host answers only what every connection of the listener is
        answered alike: its grants, no arguments), so every connection of
        this listener restored from the opened snapshot is exactly as if it
        had run on-open itself, one VM entry sooner. A plugin whose on-open
        calls a capability (or fails) gets on-open per connection, with that
        connection's grants, from the booted snapshot.
        """
        lb, cb = listener.encode(), config.encode()
        try:
            self._run(vm, lambda: vm.call(abi.Op.OPEN, len(lb), len(cb), lb + cb, host=self._open_host))
        except VmFault as e:
            LOG.debug("on-open runs per connection (%s)", e)
            base.restore(vm)
            return base
        self.opened_with = (listener, config)
        return Snapshot.take(vm)

    def _track(self, p: PooledVm) -> PooledVm:
        with self._lock:
            self._live.add(p)
            self.created += 1
        self._gauge("live", 1)
        return p

    def _gauge(self, which: str, delta: int) -> None:
        METRICS.add(f"microvm_pool_{which}", delta, listener=self.listener)

    def _fresh(self, thread: VcpuThread) -> PooledVm:
        """A new VM from the snapshot, warmed then restored (runs on `thread`)."""
        snap = self.snapshot
        assert snap is not None
        if self._closed:
            raise RuntimeError("pool is closed")
        started = time.perf_counter()
        vm = MicroVm(self.system, self.template)
        try:
            snap.restore(vm)
            self.warm(vm)
            snap.restore(vm)
        except BaseException:
            vm.close()
            raise
        METRICS.observe("sandbox_create_seconds", time.perf_counter() - started, tier="microvm")
        return self._track(PooledVm(vm, thread))

    # -- lease ----------------------------------------------------------------
    def try_take(self) -> PooledVm | None:
        """A ready VM if the pool has one (never blocks)."""
        with self._lock:
            p = self._ready.popleft() if self._ready else None
            if p is None:
                self._grow()
            else:
                self._leased += 1
        if p is not None:
            self._gauge("idle", -1)
            p.leased = True
            self.refill()
        return p

    def _grow(self) -> None:
        """Under _lock, when a lease finds no VM ready: if as many VMs are out as the
        pool keeps, demand outran it; keep more ready from now on (a burst of N
        concurrent connections otherwise makes, and later destroys, VMs for all but
        `target` of them, each time). An empty pool with few VMs out is only
        restores still running: no reason to grow."""
        if self._leased >= self.target:
            self.target = min(max(self.target * 2, 1), self.max_idle)

    def take(self) -> PooledVm:
        """A ready VM: from the pool, else made now on the caller's behalf (slow path)."""
        with self._lock:
            p = self._ready.popleft() if self._ready else None
            if p is None:
                self._grow()
            self._leased += 1
        if p is None:
            try:
                thread = self.threads.pick()
                p = thread.run(lambda: self._fresh(thread))
            except BaseException:
                with self._lock:
                    self._leased -= 1
                raise
        else:
            self._gauge("idle", -1)
        p.leased = True
        self.refill()
        return p

    def give_back(self, p: PooledVm) -> Future[None]:
        """Restore off the critical path, then pool (or destroy if enough are idle)."""
        if not p.leased:  # given back twice: it must never be pooled twice
            LOG.error("VM %s given back twice; ignored", p.vm.identity)
            done: Future[None] = Future()
            done.set_result(None)
            return done
        p.leased = False
        with self._lock:
            self._leased -= 1
            self._restoring += 1

        def restore() -> None:
            try:
                _restore()
            finally:
                with self._lock:
                    self._restoring -= 1

        def _restore() -> None:
            snap = self.snapshot
            assert snap is not None
            with self._lock:
                keep = not self._closed and len(self._ready) < self.max_idle
            if not keep:
                self._destroy(p)
                return
            try:
                with METRICS.timed("sandbox_restore_seconds", tier="microvm"):
                    snap.restore(p.vm)
            except Exception:
                LOG.exception("restore failed; destroying %s", p.vm.identity)
                self._destroy(p)
                return
            p.restores += 1
            with self._lock:
                if self._closed:
                    keep = False
                else:
                    self._ready.append(p)
            if keep:
                self._gauge("idle", 1)
            else:
                self._destroy(p)

        return p.thread.submit(restore, BACKGROUND)

    def refill(self) -> None:
        """Top the pool up to `target` in the background."""
        with self._lock:
            if self._closed or self.snapshot is None:
                return
            missing = self.target - len(self._ready) - self._pending - self._restoring
            self._pending += max(missing, 0)
        for _ in range(max(missing, 0)):
            thread = self.threads.pick()
            thread.submit(lambda t=thread: self._add_fresh(t), BACKGROUND)  # type: ignore[misc]

    def _add_fresh(self, thread: VcpuThread) -> None:
        try:
            if self._closed:
                return
            p = self._fresh(thread)
        except Exception:
            LOG.exception("could not make a pooled VM")
            return
        finally:
            with self._lock:
                self._pending -= 1
        with self._lock:
            closed = self._closed
            if not closed:
                self._ready.append(p)
        if closed:
            self._destroy(p)
        else:
            self._gauge("idle", 1)

    def _destroy(self, p: PooledVm) -> None:
        with self._lock:
            tracked = p in self._live
            self._live.discard(p)
        if tracked:
            self._gauge("live", -1)
        p.vm.close()

    @property
    def idle(self) -> int:
        with self._lock:
            return len(self._ready)

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._live)

    def close(self) -> None:
        """Destroy every VM, each on its own thread; waits for them.

        Background work already queued (restores, refills) runs first: the
        barrier below queues behind it, so no VM outlives the template.
        """
        with self._lock:
            was_closed, self._closed = self._closed, True
            idle = len(self._ready)
        if not was_closed:  # what stays in _ready is destroyed below
            self._gauge("idle", -idle)
        for t in self.threads.threads:
            t.submit(lambda: None, BACKGROUND).result()
        with self._lock:
            live = list(self._live)
        futures = [p.thread.submit(lambda p=p: self._destroy(p), BACKGROUND)  # type: ignore[misc]
                   for p in live]
        for f in futures:
            f.result()
