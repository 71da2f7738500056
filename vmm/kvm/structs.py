"""ctypes mirrors of the linux/kvm.h structures the monitor uses.

Sizes are asserted at import: an ioctl number encodes its argument's size, so a
wrong mirror would make the kernel reject (or misread) every call.
"""

from __future__ import annotations

import ctypes

__all__ = [
    "KvmCpuid2Header",
    "KvmCpuidEntry2",
    "KvmDtable",
    "KvmFpu",
    "KvmMsrFilter",
    "KvmMsrFilterRange",
    "KvmRegs",
    "KvmRunHeader",
    "KvmRunIo",
    "KvmSegment",
    "KvmSregs",
    "KvmUserspaceMemoryRegion",
    "KvmXsave",
]

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class KvmRegs(ctypes.Structure):
    _fields_ = [
        (name, u64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]


class KvmSegment(ctypes.Structure):
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class KvmDtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class KvmSregs(ctypes.Structure):
    _fields_ = [
        ("cs", KvmSegment), ("ds", KvmSegment), ("es", KvmSegment), ("fs", KvmSegment),
        ("gs", KvmSegment), ("ss", KvmSegment), ("tr", KvmSegment), ("ldt", KvmSegment),
        ("gdt", KvmDtable), ("idt", KvmDtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
        ("efer", u64), ("apic_base", u64),
        ("interrupt_bitmap", u64 * 4),  # (KVM_NR_INTERRUPTS + 63) / 64
    ]


class KvmFpu(ctypes.Structure):
    _fields_ = [
        ("fpr", (u8 * 16) * 8),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class KvmUserspaceMemoryRegion(ctypes.Structure):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


class KvmRunHeader(ctypes.Structure):
    """The fixed head of `struct kvm_run`; the exit union starts at offset 32."""

    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
    ]


class KvmRunIo(ctypes.Structure):
    """`kvm_run.io`, at offset 32 (KVM_EXIT_IO)."""

    _fields_ = [
        ("direction", u8),
        ("size", u8),
        ("port", u16),
        ("count", u32),
        ("data_offset", u64),
    ]


RUN_EXIT_UNION_OFFSET = 32


class KvmCpuidEntry2(ctypes.Structure):
    _fields_ = [
        ("function", u32), ("index", u32), ("flags", u32),
        ("eax", u32), ("ebx", u32), ("ecx", u32), ("edx", u32),
        ("padding", u32 * 3),
    ]  # fmt: skip


class KvmCpuid2Header(ctypes.Structure):
    """struct kvm_cpuid2 without its flexible array (the ioctl number encodes this size)."""

    _fields_ = [("nent", u32), ("padding", u32)]


class KvmXsave(ctypes.Structure):
    """struct kvm_xsave: the XSAVE image (legacy FXSAVE area, header at 512, extended state)."""

    _fields_ = [("region", u32 * 1024)]


class KvmMsrFilterRange(ctypes.Structure):
    _fields_ = [("flags", u32), ("nmsrs", u32), ("base", u32), ("bitmap", ctypes.c_void_p)]


class KvmMsrFilter(ctypes.Structure):
    _fields_ = [("flags", u32), ("ranges", KvmMsrFilterRange * 16)]


assert ctypes.sizeof(KvmRegs) == 144
assert ctypes.sizeof(KvmSegment) == 24
assert ctypes.sizeof(KvmDtable) == 16
assert ctypes.sizeof(KvmSregs) == 312
assert ctypes.sizeof(KvmFpu) == 416
assert ctypes.sizeof(KvmUserspaceMemoryRegion) == 32
assert ctypes.sizeof(KvmRunHeader) == RUN_EXIT_UNION_OFFSET
assert KvmRunHeader.immediate_exit.offset == 1
assert KvmRunIo.port.offset + RUN_EXIT_UNION_OFFSET == 34
assert KvmRunIo.data_offset.offset + RUN_EXIT_UNION_OFFSET == 40
assert ctypes.sizeof(KvmCpuidEntry2) == 40
assert ctypes.sizeof(KvmCpuid2Header) == 8
assert ctypes.sizeof(KvmMsrFilterRange) == 24
assert ctypes.sizeof(KvmMsrFilter) == 392
assert ctypes.sizeof(KvmXsave) == 4096
