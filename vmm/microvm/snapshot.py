"""Snapshot a booted VM; restore any VM of the same template to it.

A snapshot is the VM's RW memory as sparse page ranges plus its registers.
The RW memfd holds everything ring 3 can write (layout.py); the read-only
slot is shared and immutable, so it needs no restoring.

Restore copies the snapshot back over the live mapping instead of dropping
pages: the guest's mappings stay, so the next call takes no page faults
(15-20 us each on PVM). Then every page allocated since the snapshot (found
with SEEK_DATA, which sees any page ever touched) reads as zero again, as it
did in the snapshot: zeroed in place if there are few, else punched out. After restore, every RW page equals
the snapshot, whatever the previous connection wrote.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

from vmm.kvm import copy_struct
from vmm.kvm.structs import KvmFpu, KvmRegs, KvmSregs
from vmm.microvm import abi
from vmm.microvm.vm import MicroVm, VmFault

Range = tuple[int, int]  # [start, end) offsets in the RW memfd

KEEP_RESIDENT = 128 * 1024
"""Pages touched beyond the snapshot that a restore zeroes rather than frees
(bounds the extra memory per VM; 1,000 VMs must stay under 1 GiB)."""


def _subtract(have: list[Range], keep: list[Range]) -> list[Range]:
    """Parts of sorted `have` not covered by sorted, disjoint `keep`."""
    out: list[Range] = []
    k = 0
    for lo, hi in have:
        while k < len(keep) and keep[k][1] <= lo:
            k += 1
        j, pos = k, lo
        while pos < hi:
            if j < len(keep) and keep[j][0] < hi:
                if keep[j][0] > pos:
                    out.append((pos, keep[j][0]))
                pos = max(pos, keep[j][1])
                j += 1
            else:
                out.append((pos, hi))
                pos = hi
    return out


def _merge(ranges: list[Range]) -> list[Range]:
    out: list[Range] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


@dataclass
class Snapshot:
    content: list[tuple[int, int, int]]  # (rw offset, length, offset in `blob`)
    zeros: list[Range]  # pages the warm-up touched that were zero at snapshot time
    blob: ctypes.Array[ctypes.c_char]
    regs: KvmRegs
    sregs: KvmSregs
    fpu: KvmFpu

    @property
    def covered(self) -> list[Range]:
        return _merge([(o, o + n) for o, n, _ in self.content] + self.zeros)

    @property
    def resident_bytes(self) -> int:
        return sum(n for _, n, _ in self.content) + sum(hi - lo for lo, hi in self.zeros)

    @staticmethod
    def take(vm: MicroVm) -> Snapshot:
        """Capture a healthy VM sitting at a DONE/READY exit."""
        if vm.poisoned is not None:
            raise ValueError("cannot snapshot a poisoned VM")
        ranges = vm.mem.data_ranges(0, vm.mem.size)
        total = sum(hi - lo for lo, hi in ranges)
        blob = (ctypes.c_char * max(total, 1))()
        content, pos = [], 0
        for lo, hi in ranges:
            ctypes.memmove(ctypes.addressof(blob) + pos, vm.mem.addr + lo, hi - lo)
            content.append((lo, hi - lo, pos))
            pos += hi - lo
        return Snapshot(content, [], blob, copy_struct(vm.vcpu.get_regs()),
                        copy_struct(vm.vcpu.get_sregs()), copy_struct(vm.vcpu.get_fpu()))

    def add_warm_pages(self, vm: MicroVm) -> None:
        """Keep the pages a warm-up call touched resident (as zeros) across restores."""
        self.zeros = _merge(self.zeros + _subtract(vm.mem.data_ranges(0, vm.mem.size), self.covered))

    def restore(self, vm: MicroVm) -> None:
        """Make `vm` identical to the snapshot: memory, registers, health."""
        mem, base = vm.mem, ctypes.addressof(self.blob)
        for off, length, src in self.content:
            mem.copy_in(off, base + src, length)
        for lo, hi in self.zeros:
            mem.zero(lo, hi - lo)
        extras = _subtract(mem.data_ranges(0, mem.size), self.covered)
        # A few extra pages (a larger event) are zeroed in place, staying
        # mapped so the next such event takes no faults; many are freed.
        keep = sum(hi - lo for lo, hi in extras) <= KEEP_RESIDENT
        for lo, hi in extras:
            if keep:
                mem.zero(lo, hi - lo)
            else:
                mem.punch(lo, hi - lo)
        if vm.poisoned is not None or vm.call_in_flight is not None:
            vm.flush_pending_exit()  # also a call preempted and never resumed
        vm.vcpu.set_sregs(self.sregs)
        vm.vcpu.set_fpu(self.fpu)
        vm.vcpu.set_regs(self.regs)
        vm.vcpu.immediate_exit = False
        vm.deadline_hit = False
        vm.preempt_hit = False
        vm.call_in_flight = None
        vm.poisoned = None
        vm.incarnation += 1


def warm_up(vm: MicroVm) -> None:
    """Let the guest touch what a first event touches (LC_OP_WARMUP)."""
    vm.call(abi.Op.WARMUP)


def rehearse(listener: str, config: str, run: Callable[[MicroVm, Callable[[], object]], object],
             chunk: int = 1024, opened: Callable[[], bool] = lambda: False) -> Callable[[MicroVm], None]:
    """A warm-up that also runs a connection's first steps (open, one chunk,
    close) with no capabilities granted, each step through `run` (the
    watchdog: the plugin may loop), so the pages of code, stack and heap
    those paths touch are mapped in the VM before it is pooled (on PVM every
    first touch costs 15-20 us, code pages included: each VM has its own
    shadow page tables). Failures are fine: the VM is restored afterwards."""
    lb, cb = listener.encode(), config.encode()

    def warm(vm: MicroVm) -> None:
        open_step = [] if opened() else [(abi.Op.OPEN, len(lb), len(cb), lb + cb)]  # in the snapshot
        steps = [(abi.Op.WARMUP, 0, 0, b""), *open_step,
                 (abi.Op.DATA, 0, 0, b"w" * chunk), (abi.Op.DATA, 1, 0, b"w" * chunk),
                 (abi.Op.CLOSE, 0, 0, b"")]
        for op, a0, a1, payload in steps:
            try:
                run(vm, lambda op=op, a0=a0, a1=a1, p=payload: vm.call(op, a0, a1, p))  # type: ignore[misc]
            except VmFault:
                return

    return warm
