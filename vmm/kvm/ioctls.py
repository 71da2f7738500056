"""The one table of KVM ioctl numbers, computed from (direction, nr, struct).

Grouped by the fd each applies to, like rust-vmm's kvm-ioctls; sizes come from
the asserted ctypes mirrors in structs.py, so the table can be checked line by
line against linux/kvm.h.
"""

from __future__ import annotations

import ctypes

from vmm.kvm.structs import (
    KvmCpuid2Header,
    KvmFpu,
    KvmMsrFilter,
    KvmRegs,
    KvmSregs,
    KvmUserspaceMemoryRegion,
    KvmXsave,
)

KVMIO = 0xAE
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_WRITE, nr, ctypes.sizeof(struct))


def _ior(nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_READ, nr, ctypes.sizeof(struct))


def _iowr(nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(struct))


# /dev/kvm
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, KvmCpuid2Header)
# VM fd
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, KvmUserspaceMemoryRegion)
KVM_X86_SET_MSR_FILTER = _iow(0xC6, KvmMsrFilter)
# vCPU fd
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, KvmRegs)
KVM_SET_REGS = _iow(0x82, KvmRegs)
KVM_GET_SREGS = _ior(0x83, KvmSregs)
KVM_SET_SREGS = _iow(0x84, KvmSregs)
KVM_GET_FPU = _ior(0x8C, KvmFpu)
KVM_SET_FPU = _iow(0x8D, KvmFpu)
KVM_SET_CPUID2 = _iow(0x90, KvmCpuid2Header)
KVM_GET_XSAVE = _ior(0xA4, KvmXsave)
KVM_SET_XSAVE = _iow(0xA5, KvmXsave)

NAMES = {v: k for k, v in globals().items() if k.startswith("KVM_") and isinstance(v, int)}

# Extensions (KVM_CHECK_EXTENSION arguments)
KVM_CAP_USER_MEMORY = 3
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_XSAVE = 55
KVM_CAP_X86_MSR_FILTER = 189
KVM_CAP_XSAVE2 = 208

KVM_API_VERSION = 12
KVM_MEM_READONLY = 1 << 1
KVM_MSR_FILTER_DEFAULT_DENY = 1
KVM_MSR_FILTER_READ, KVM_MSR_FILTER_WRITE = 1, 2

# Hand-checked against linux/kvm.h for x86_64 (a regression guard for the formula).
assert KVM_SET_USER_MEMORY_REGION == 0x4020AE46
assert KVM_GET_REGS == 0x8090AE81
assert KVM_SET_SREGS == 0x4138AE84
assert KVM_RUN == 0xAE80
assert KVM_SET_CPUID2 == 0x4008AE90
assert KVM_GET_SUPPORTED_CPUID == 0xC008AE05
assert KVM_X86_SET_MSR_FILTER == 0x4188AEC6
assert KVM_GET_XSAVE == 0x9000AEA4
assert KVM_SET_XSAVE == 0x5000AEA5
