"""Raw-guest escape attempts: each must end in a poisoned VM that is never
reused without a restore, with the process (and other VMs) still working."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from _kvm_helpers import host

from vmm.kvm import System
from vmm.microvm import abi
from vmm.microvm.machine import Template
from vmm.microvm.snapshot import Snapshot, warm_up
from vmm.microvm.vm import FaultReason, MicroVm, VmFault
from vmm.microvm.watchdog import Watchdog

pytestmark = pytest.mark.kvm

GP, PF = 13, 14

MISDEEDS = [
    # privileged instructions in ring 3
    (b"!hlt", FaultReason.EXCEPTION, GP),
    (b"!cli", FaultReason.EXCEPTION, GP),
    (b"!wrmsr", FaultReason.EXCEPTION, GP),
    (b"!cr3", FaultReason.EXCEPTION, GP),
    (b"!ud2", FaultReason.EXCEPTION, 6),
    # writes to page tables (unmapped), descriptor tables and the ring-0 stack
    # (supervisor-only), code (read-only); executing the heap (no-execute)
    (b"!wpt", FaultReason.EXCEPTION, PF),
    (b"!wgdt", FaultReason.EXCEPTION, PF),
    (b"!kstack", FaultReason.EXCEPTION, PF),
    (b"!wcode", FaultReason.EXCEPTION, PF),
    (b"!exec", FaultReason.EXCEPTION, PF),
    (b"!null", FaultReason.EXCEPTION, PF),
    (b"!heapend", FaultReason.EXCEPTION, PF),
    (b"!stack", FaultReason.EXCEPTION, PF),  # overflow into the guard
    # ports: outside the TSS I/O map, inside it but unknown, wrong size or direction, wrong time
    (b"!portbad", FaultReason.EXCEPTION, GP),
    (b"!portodd", FaultReason.BAD_PORT, None),
    (b"!portbyte", FaultReason.BAD_PORT, None),
    (b"!portin", FaultReason.BAD_PORT, None),
    (b"!ready", FaultReason.BAD_PORT, None),
    # forged records
    (b"!forgecall", FaultReason.BAD_LENGTH, None),
    (b"!forgefn", FaultReason.BAD_HOSTCALL, None),
    (b"!forgeresp", FaultReason.BAD_LENGTH, None),
    (b"!badverdict", FaultReason.BAD_RESPONSE, None),
    (b"!badstatus", FaultReason.BAD_RESPONSE, None),
]


@pytest.fixture(scope="module")
def booted_vm(system: System, template: Template) -> Iterator[tuple[MicroVm, Snapshot]]:
    vm = MicroVm(system, template)
    vm.boot()
    snap = Snapshot.take(vm)
    warm_up(vm)
    snap.add_warm_pages(vm)
    snap.restore(vm)
    yield vm, snap
    vm.close()


@pytest.fixture(scope="module")
def watchdog() -> Iterator[Watchdog]:
    w = Watchdog()
    yield w
    w.close()


def _assert_clean_after_restore(vm: MicroVm, snap: Snapshot) -> None:
    snap.restore(vm)
    assert vm.call(abi.Op.DATA, payload=b"!count").payload == b"count=1"
    assert vm.call(abi.Op.DATA, payload=b"!heapmark").payload == b"heap=0"
    assert vm.call(abi.Op.DATA, payload=b"still here").payload == b"STILL HERE"
    snap.restore(vm)


@pytest.mark.parametrize(("cmd", "reason", "vector"), MISDEEDS, ids=[m[0].decode() for m in MISDEEDS])
def test_misdeed_poisons(booted_vm: tuple[MicroVm, Snapshot], template: Template, cmd: bytes,
                         reason: FaultReason, vector: int | None) -> None:
    vm, snap = booted_vm
    ro_before = bytes(template.ro.view)
    vm.call(abi.Op.DATA, payload=b"!heapmark")  # leave some state behind
    with pytest.raises(VmFault) as info:
        vm.call(abi.Op.DATA, payload=cmd, host=host("log", "kv"))
    assert info.value.reason is reason, info.value
    if vector is not None:
        assert info.value.detail == vector, info.value
    assert vm.poisoned is not None
    with pytest.raises(VmFault) as again:  # never reused as is
        vm.call(abi.Op.DATA, payload=b"x")
    assert again.value.reason is FaultReason.POISONED
    assert bytes(template.ro.view) == ro_before  # the shared read-only slot is untouched
    _assert_clean_after_restore(vm, snap)


def test_looping_guest_interrupted(booted_vm: tuple[MicroVm, Snapshot], watchdog: Watchdog) -> None:
    vm, snap = booted_vm
    with pytest.raises(VmFault) as info:
        watchdog.run(vm, 0.05, lambda: vm.call(abi.Op.DATA, payload=b"!loop"))
    assert info.value.reason is FaultReason.DEADLINE
    assert vm.poisoned is not None
    _assert_clean_after_restore(vm, snap)


def test_deadline_counts_cpu_time_not_waiting(
    booted_vm: tuple[MicroVm, Snapshot], watchdog: Watchdog
) -> None:
    # A vCPU thread that waits (for the GIL, for a core) past the budget has not
    # overrun it: only CPU time counts, so a starved but innocent event survives.
    vm, _ = booted_vm
    fired = watchdog.fired
    r = watchdog.run(vm, 0.05, lambda: (time.sleep(0.2), vm.call(abi.Op.DATA, payload=b"late"))[1])
    assert r.payload == b"LATE" and vm.poisoned is None and watchdog.fired == fired


def test_deadline_not_hit_leaves_vm_healthy(booted_vm: tuple[MicroVm, Snapshot], watchdog: Watchdog) -> None:
    vm, _ = booted_vm
    r = watchdog.run(vm, 1.0, lambda: vm.call(abi.Op.DATA, payload=b"fast"))
    assert r.payload == b"FAST" and vm.poisoned is None


def test_many_misdeeds_process_keeps_working(system: System, template: Template) -> None:
    # fresh VMs per misdeed, destroyed afterwards: no leaks of fds or state
    import os
    fds_before = len(os.listdir("/proc/self/fd"))
    for cmd, _, _ in MISDEEDS:
        vm = MicroVm(system, template)
        vm.boot()
        with pytest.raises(VmFault):
            vm.call(abi.Op.DATA, payload=cmd)
        vm.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before
