"""The guest memory layout, and the one accessor for guest-supplied ranges.

Guest virtual == guest physical (identity paging). Two KVM memory slots:

    guest address                                  ring 3   slot
    0x0000_0000 +------------------------------+
                | null page                    |   -        (unmapped)
    0x0000_1000 | page tables                  |   -        RO: one memfd per image,
    0x0008_0000 | GDT | IDT | TSS + I/O map    |   -            shared by all its VMs,
    0x0010_0000 | image .text                  |   r-x          KVM_MEM_READONLY
                | image .rodata                |   r--
                +------------------------------+ ro_size
                 ...
    0x4000_0000 +------------------------------+ LC_RW_BASE
                | ring-0 exception stack 16 KiB|   -        RW: one memfd per VM
    0x4001_0000 | image .data/.bss             |   rw-
                | (unmapped: stack guard)      |
    0x4010_0000 | user stack 1 MiB             |   rw-
    0x4020_0000 | IN buffer 16 MiB             |   rw-      host -> guest
    0x4120_0000 | OUT buffer 16 MiB            |   rw-      guest -> host
    0x4220_0000 | heap: wasm memory <= cap     |   rw-      memory_cap (limits.memory_bytes,
                |   + runtime reserve 1 MiB    |              page-rounded) + RUNTIME_RESERVE
                +------------------------------+ LC_HEAP_BASE + heap_size

The guest gets the heap (rdi base, rsi size) and memory_cap (rdx) at boot
(machine.Template.initial_regs) and refuses any wasm memory larger than
memory_cap, at instantiation or by memory.grow: the cap is the wasm
memory's, exactly, as in the wasmtime tier, and the reserve stays the
runtime's.

Only .text is executable; nothing ring 3 can write is executable. The pages
ring 3 can write are exactly the RW slot; restoring a VM rewrites all of it
that differs from the snapshot (snapshot.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

from vmm.microvm import abi

GuestAddr = NewType("GuestAddr", int)
"""An address in the guest's (identity-mapped) address space."""
RwOffset = NewType("RwOffset", int)
"""An offset into the per-VM RW memfd (guest address - LC_RW_BASE)."""
HostAddr = NewType("HostAddr", int)
"""A virtual address in this process (where a memfd is mapped)."""

PAGE = 4096
RUNTIME_RESERVE = 1 << 20
"""Heap beyond the wasm memory cap, for the runtime's own allocations."""
MAX_HEAP = 160 << 20
"""The page tables (4 KiB leaves) must fit below the GDT."""
MAX_MEMORY_BYTES = MAX_HEAP - RUNTIME_RESERVE
"""The largest wasm memory cap (`limits.memory_mb`) a micro-VM can hold."""


class GuestRangeError(ValueError):
    """A guest-supplied offset/length fell outside its window (or overflowed)."""


def checked_range(window_base: int, window_size: int, offset: int, length: int) -> tuple[int, int]:
    """THE accessor for guest-supplied (offset, length) pairs.

    Values come from guest memory as unsigned integers of up to 64 bits; C code
    would overflow on `offset + length`, Python does not, but every bound is
    still checked separately so the rule reads the same on both sides.
    Returns (start, end) absolute within the caller's address space.
    """
    if not (0 <= offset < 2**64 and 0 <= length < 2**64):
        raise GuestRangeError(f"offset {offset} / length {length} not a u64")
    if offset > window_size or length > window_size - offset:
        raise GuestRangeError(
            f"range {offset:#x}+{length:#x} outside a window of {window_size:#x} bytes")
    start = window_base + offset
    return start, start + length


def page_up(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


@dataclass(frozen=True, slots=True)
class Layout:
    """The layout for one listener's memory limit."""

    heap_size: int
    """Bytes of the heap region: the wasm memory cap, page-rounded, plus RUNTIME_RESERVE."""
    memory_cap: int
    """The wasm memory cap in bytes (the listener's `memory_bytes`, exactly)."""

    def __post_init__(self) -> None:
        if self.heap_size <= 0 or self.heap_size % PAGE or self.heap_size > MAX_HEAP:
            raise ValueError(f"heap size {self.heap_size:#x} must be page-aligned, <= {MAX_HEAP:#x}")
        if self.memory_cap < 0 or page_up(self.memory_cap) + RUNTIME_RESERVE > self.heap_size:
            raise ValueError(f"memory cap {self.memory_cap:#x} and the runtime reserve "
                             f"{RUNTIME_RESERVE:#x} do not fit a heap of {self.heap_size:#x}")

    @staticmethod
    def for_memory_limit(memory_bytes: int) -> Layout:
        return Layout(page_up(memory_bytes) + RUNTIME_RESERVE, memory_bytes)

    @property
    def rw_size(self) -> int:
        return abi.LC_HEAP_BASE - abi.LC_RW_BASE + self.heap_size

    @property
    def stack_top(self) -> GuestAddr:
        return GuestAddr(abi.LC_STACK_BASE + abi.LC_STACK_SIZE)

    def rw_offset(self, addr: GuestAddr, length: int) -> RwOffset:
        """The RW memfd offset of a guest range that must lie wholly in the RW slot."""
        start, _ = checked_range(0, self.rw_size, addr - abi.LC_RW_BASE, length)
        return RwOffset(start)

    def user_writable(self, data_end: GuestAddr) -> list[tuple[GuestAddr, GuestAddr]]:
        """Ranges mapped user-writable (given the image's .data/.bss end)."""
        return [
            (GuestAddr(abi.LC_DATA_BASE), GuestAddr(page_up(data_end))),
            (GuestAddr(abi.LC_STACK_BASE), GuestAddr(abi.LC_STACK_BASE + abi.LC_STACK_SIZE)),
            (GuestAddr(abi.LC_IN_BASE), GuestAddr(abi.LC_IN_BASE + abi.LC_IN_SIZE)),
            (GuestAddr(abi.LC_OUT_BASE), GuestAddr(abi.LC_OUT_BASE + abi.LC_OUT_SIZE)),
            (GuestAddr(abi.LC_HEAP_BASE), GuestAddr(abi.LC_HEAP_BASE + self.heap_size)),
        ]
