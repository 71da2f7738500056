"""Snapshot, restore and the warm pool: no state survives from one lease to the next."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vmm.kvm import System
from vmm.microvm import abi
from vmm.microvm.machine import Template
from vmm.microvm.pool import VmPool
from vmm.microvm.snapshot import Snapshot, _subtract
from vmm.microvm.vm import FaultReason, MicroVm, VmFault
from vmm.microvm.watchdog import Watchdog
from vmm.microvm.worker import ThreadSet

pytestmark = pytest.mark.kvm


@pytest.fixture
def pool(system: System, template: Template) -> Iterator[VmPool]:
    threads = ThreadSet(2)
    p = VmPool(system, template, threads, target=3)
    p.start()
    yield p
    p.close()
    threads.close()


def test_subtract_ranges() -> None:
    assert _subtract([(0, 10), (20, 30)], [(2, 4), (25, 40)]) == [(0, 2), (4, 10), (20, 25)]
    assert _subtract([(0, 10)], []) == [(0, 10)]
    assert _subtract([(5, 6)], [(0, 10)]) == []


def test_restore_erases_every_write(system: System, template: Template) -> None:
    vm = MicroVm(system, template)
    vm.boot()
    snap = Snapshot.take(vm)
    before = bytes(vm.mem.view)
    vm.call(abi.Op.DATA, payload=b"!heapmark")
    vm.call(abi.Op.DATA, payload=b"q" * 200_000)  # touches many IN/OUT pages
    assert bytes(vm.mem.view) != before
    snap.restore(vm)
    # pages touched since the snapshot are freed again (reading `before` touched all)
    assert vm.mem.data_ranges(0, vm.mem.size) == [(lo, lo + n) for lo, n, _ in snap.content]
    assert bytes(vm.mem.view) == before
    vm.close()


def test_few_extra_pages_stay_resident_but_zero(system: System, template: Template) -> None:
    vm = MicroVm(system, template)
    vm.boot()
    snap = Snapshot.take(vm)
    vm.call(abi.Op.DATA, payload=b"s" * 20_000)  # a few IN/OUT pages beyond the snapshot
    touched = vm.mem.data_ranges(0, vm.mem.size)
    snap.restore(vm)
    assert vm.mem.data_ranges(0, vm.mem.size) == touched  # still mapped: no faults next time
    in_off = abi.LC_IN_BASE - abi.LC_RW_BASE
    assert bytes(vm.mem.view[in_off + 4096:in_off + 20_000]) == bytes(20_000 - 4096)
    vm.close()


def test_fresh_vm_from_snapshot_matches(system: System, template: Template) -> None:
    a = MicroVm(system, template)
    a.boot()
    snap = Snapshot.take(a)
    b = MicroVm(system, template)
    snap.restore(b)
    assert bytes(a.mem.view) == bytes(b.mem.view)
    assert b.call(abi.Op.DATA, payload=b"!count").payload == b"count=1"
    a.close()
    b.close()


def test_pool_leases_are_fresh_and_distinct(pool: VmPool) -> None:
    seen: set[str] = set()
    for _ in range(8):
        p = pool.take()
        assert p.vm.identity not in seen  # identity per incarnation, never reused
        seen.add(p.vm.identity)
        vm = p.vm
        assert p.thread.run(lambda vm=vm: vm.call(abi.Op.DATA, payload=b"!count")).payload == b"count=1"
        assert p.thread.run(lambda vm=vm: vm.call(abi.Op.DATA, payload=b"!heapmark")).payload == b"heap=0"
        assert p.thread.run(lambda vm=vm: vm.call(abi.Op.DATA, payload=b"!count")).payload == b"count=3"
        pool.give_back(p).result()
    assert pool.created <= 8  # restored VMs were reused ...
    assert any(ident.endswith(".2") or ident.endswith(".3") for ident in seen)  # ... only after restores


def test_poisoned_vm_restored_before_reuse(pool: VmPool) -> None:
    p = pool.take()
    vm = p.vm
    with pytest.raises(VmFault):
        p.thread.run(lambda: vm.call(abi.Op.DATA, payload=b"!wcode"))
    pool.give_back(p).result()
    assert vm.poisoned is None
    while True:  # drain until we meet it again
        q = pool.take()
        if q.vm is vm:
            break
        pool.give_back(q).result()
    assert q.thread.run(lambda: vm.call(abi.Op.DATA, payload=b"ok")).payload == b"OK"
    pool.give_back(q).result()


def test_pool_refills_in_background(pool: VmPool) -> None:
    leases = [pool.take() for _ in range(5)]
    for t in pool.threads.threads:  # background work queued behind the takes
        t.submit(lambda: None, priority=1).result()
    assert pool.idle >= 1
    for p in leases:
        pool.give_back(p).result()
    assert pool.live >= 5


def test_watchdog_on_pooled_vm(pool: VmPool) -> None:
    dog = Watchdog()
    try:
        p = pool.take()
        vm = p.vm
        with pytest.raises(VmFault) as info:
            p.thread.run(lambda: dog.run(vm, 0.03, lambda: vm.call(abi.Op.DATA, payload=b"!loop")))
        assert info.value.reason is FaultReason.DEADLINE
        assert dog.fired == 1
        # the other thread's VMs are unaffected by the signal
        other = pool.take()
        assert other.thread.run(lambda: other.vm.call(abi.Op.DATA, payload=b"a")).payload == b"A"
        pool.give_back(other).result()
        pool.give_back(p).result()
    finally:
        dog.close()


def _settle(pool: VmPool) -> None:
    for t in pool.threads.threads:  # background restores and refills queued so far
        t.submit(lambda: None, priority=1).result()


def test_a_burst_grows_the_pool_so_the_next_one_reuses_vms(pool: VmPool) -> None:
    """Eight connections at once against a pool of three: the first burst makes VMs; after
    it the pool keeps them ready, so an equal burst creates none (and no VM is destroyed)."""
    _settle(pool)
    leases = [pool.take() for _ in range(8)]
    assert pool.target > 3
    for p in leases:
        pool.give_back(p).result()
    _settle(pool)
    created, live = pool.created, pool.live
    again = [pool.take() for _ in range(8)]
    assert pool.created == created  # all eight came ready from the pool
    for p in again:
        pool.give_back(p).result()
    _settle(pool)
    assert pool.live == live <= pool.max_idle
