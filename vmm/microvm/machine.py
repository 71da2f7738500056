"""The x86-64 machine a guest image runs on: page tables, GDT/IDT/TSS, CPU state.

Built once per (image, layout) as a Template. Its read-only memory (page
tables, descriptor tables, code) is one memfd that every VM of the plugin maps
as a KVM_MEM_READONLY slot, so VMs share those pages and no guest, not even
its ring-0 stubs, can change them. The vCPU starts directly in 64-bit ring 3:
on PVM, ring-0 code is emulated (slow, no SSE); see kvm-here.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmm.kvm import GuestMemory, KvmSregs
from vmm.kvm.structs import KvmFpu, KvmRegs, KvmSegment
from vmm.microvm import abi
from vmm.microvm.image import Image
from vmm.microvm.layout import PAGE, Layout, RwOffset, page_up

# Page-table entry bits. Accessed/Dirty are preset everywhere: the tables sit
# in a read-only slot, so the page walker must never need to write them.
P, RW, US, A, D = 1 << 0, 1 << 1, 1 << 2, 1 << 5, 1 << 6
NX = 1 << 63
_TABLE = P | RW | US | A  # intermediate levels: the leaf decides

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
CR4_TSD, CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 2, 1 << 5, 1 << 9, 1 << 10
EFER_LME, EFER_LMA, EFER_NXE = 1 << 8, 1 << 10, 1 << 11

TSS_SIZE = 104
IO_MAP_PORTS = 0x200  # ports above this are outside the TSS limit: denied
IO_MAP_BYTES = IO_MAP_PORTS // 8
TSS_LIMIT = TSS_SIZE + IO_MAP_BYTES + 1 - 1  # + the 0xff terminator byte
ALLOWED_PORTS = range(0x100, 0x10C)  # READY, DONE, HOSTCALL (each 32-bit wide)
GDT_ENTRIES = 7
IDT_VECTORS = 32


class LayoutError(Exception):
    pass


def _page_tables(mappings: list[tuple[int, int, int]]) -> tuple[dict[int, bytearray], int]:
    """4-level identity tables with 4 KiB leaves. Returns {table address: bytes}, end."""
    tables: dict[int, bytearray] = {abi.LC_PAGE_TABLES: bytearray(PAGE)}
    next_free = abi.LC_PAGE_TABLES + PAGE

    def child(table: int, index: int) -> int:
        nonlocal next_free
        entry = struct.unpack_from("<Q", tables[table], index * 8)[0]
        if entry & P:
            return int(entry & 0x000F_FFFF_FFFF_F000)
        addr = next_free
        next_free += PAGE
        if next_free > abi.LC_GDT:
            raise LayoutError("page tables do not fit below the GDT (heap too large)")
        tables[addr] = bytearray(PAGE)
        struct.pack_into("<Q", tables[table], index * 8, addr | _TABLE)
        return addr

    for start, end, flags in mappings:
        for va in range(start, end, PAGE):
            pdpt = child(abi.LC_PAGE_TABLES, (va >> 39) & 511)
            pd = child(pdpt, (va >> 30) & 511)
            pt = child(pd, (va >> 21) & 511)
            struct.pack_into("<Q", tables[pt], ((va >> 12) & 511) * 8, va | flags | P | A | D)
    return tables, next_free


def _gdt() -> bytes:
    base, limit = abi.LC_TSS, TSS_LIMIT
    tss_lo = ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0xB << 40) | (1 << 47)
              | (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56))
    entries = [
        0,
        0x00AF9B000000FFFF,  # 0x08 ring-0 code, 64-bit (accessed bit preset)
        0x00CF93000000FFFF,  # 0x10 ring-0 data
        0x00CFF3000000FFFF,  # 0x18 ring-3 data
        0x00AFFB000000FFFF,  # 0x20 ring-3 code, 64-bit
        tss_lo, base >> 32,  # 0x28 busy 64-bit TSS
    ]
    assert len(entries) == GDT_ENTRIES
    return struct.pack(f"<{GDT_ENTRIES}Q", *entries)


def _idt(vectors: int) -> bytes:
    out = bytearray()
    for i in range(IDT_VECTORS):
        h = vectors + i * abi.LC_VECTOR_STUB_SIZE
        lo = (h & 0xFFFF) | (abi.LC_SEL_KCODE << 16) | (0x8E << 40) | (((h >> 16) & 0xFFFF) << 48)
        out += struct.pack("<QQ", lo, h >> 32)  # DPL-0 interrupt gates: `int n` from ring 3 is #GP
    return bytes(out)


def _tss() -> bytes:
    tss = bytearray(TSS_SIZE + IO_MAP_BYTES + 1)
    struct.pack_into("<Q", tss, 4, abi.LC_KSTACK + abi.LC_KSTACK_SIZE)  # RSP0
    struct.pack_into("<H", tss, 102, TSS_SIZE)  # I/O map base
    iomap = memoryview(tss)[TSS_SIZE:]
    iomap[:] = b"\xff" * len(iomap)  # deny every port ...
    for port in ALLOWED_PORTS:  # ... but the hypercall ports
        iomap[port // 8] &= ~(1 << (port % 8)) & 0xFF
    return bytes(tss)


def _segment(selector: int, type_: int, dpl: int, long: bool) -> KvmSegment:
    return KvmSegment(base=0, limit=0xFFFFFFFF, selector=selector, type=type_, present=1, dpl=dpl,
                      db=0 if long else 1, s=1, l=1 if long else 0, g=1, avl=0, unusable=0)


@dataclass
class Template:
    """Everything shared by the VMs of one (image, layout)."""

    image: Image
    layout: Layout
    ro: GuestMemory
    rw_init: list[tuple[RwOffset, bytes]]

    @property
    def ro_size(self) -> int:
        return self.ro.size

    def initial_regs(self) -> KvmRegs:
        regs = KvmRegs()
        regs.rip = self.image.entry
        regs.rsp = self.layout.stack_top
        regs.rflags = 0x2
        # lc_boot_main(heap base, heap size, wasm memory cap): entry.S
        regs.rdi = abi.LC_HEAP_BASE
        regs.rsi = self.layout.heap_size
        regs.rdx = self.layout.memory_cap
        return regs

    @staticmethod
    def initial_fpu() -> KvmFpu:
        fpu = KvmFpu()
        fpu.fcw = 0x37F
        fpu.mxcsr = 0x1F80
        return fpu

    @staticmethod
    def configure_sregs(sregs: KvmSregs) -> KvmSregs:
        """Long mode, ring 3, from the vCPU's current special registers."""
        sregs.cs = _segment(abi.LC_SEL_UCODE, 0xB, 3, long=True)
        data = _segment(abi.LC_SEL_UDATA, 0x3, 3, long=False)
        sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
        sregs.tr = KvmSegment(base=abi.LC_TSS, limit=TSS_LIMIT, selector=abi.LC_SEL_TSS, type=0xB,
                              present=1, dpl=0, db=0, s=0, l=0, g=0, avl=0, unusable=0)
        sregs.ldt = KvmSegment(selector=0, type=0x2, present=0, unusable=1)
        sregs.gdt.base, sregs.gdt.limit = abi.LC_GDT, GDT_ENTRIES * 8 - 1
        sregs.idt.base, sregs.idt.limit = abi.LC_IDT, IDT_VECTORS * 16 - 1
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
        sregs.cr3 = abi.LC_PAGE_TABLES
        # CR4.TSD (no rdtsc in ring 3) is set, but PVM does not honour it (tested: rdtsc runs).
        sregs.cr4 = CR4_TSD | CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
        sregs.efer = EFER_LME | EFER_LMA | EFER_NXE
        return sregs

    def close(self) -> None:
        self.ro.close()


def build_template(image: Image, layout: Layout) -> Template:
    ro_segments = [s for s in image.segments if not s.writable]
    rw_segments = [s for s in image.segments if s.writable]
    if image.data_end > abi.LC_DATA_LIMIT:
        raise LayoutError(f"image .data/.bss ends at {image.data_end:#x}, past {abi.LC_DATA_LIMIT:#x}")
    user_rw = US | RW | NX
    mappings = [
        (abi.LC_GDT, abi.LC_GDT + PAGE, NX),
        (abi.LC_IDT, abi.LC_IDT + PAGE, NX),
        (abi.LC_TSS, abi.LC_TSS + PAGE, NX),
        *((s.vaddr, page_up(s.vaddr + s.memsz), US | (0 if s.executable else NX)) for s in ro_segments),
        (abi.LC_KSTACK, abi.LC_KSTACK + abi.LC_KSTACK_SIZE, RW | NX),
        *((lo, hi, user_rw) for lo, hi in layout.user_writable(image.data_end) if hi > lo),
    ]
    tables, _ = _page_tables(mappings)
    ro_size = max(image.ro_end, abi.LC_TSS + PAGE)
    ro = GuestMemory(ro_size, "lightcell-ro")
    try:
        for addr, table in tables.items():
            ro.view[addr:addr + PAGE] = table
        gdt, idt, tss = _gdt(), _idt(image.vectors), _tss()
        ro.view[abi.LC_GDT:abi.LC_GDT + len(gdt)] = gdt
        ro.view[abi.LC_IDT:abi.LC_IDT + len(idt)] = idt
        ro.view[abi.LC_TSS:abi.LC_TSS + len(tss)] = tss
        for s in ro_segments:
            ro.view[s.vaddr:s.vaddr + len(s.data)] = s.data
    except BaseException:
        ro.close()
        raise
    rw_init = [(layout.rw_offset(s.vaddr, s.memsz), s.data) for s in rw_segments if s.data]
    return Template(image, layout, ro, rw_init)
