"""One wrapper class per KVM fd kind: System (/dev/kvm), Vm, Vcpu.

Each owns its fd, closes once, works as a context manager, and raises
KvmError naming the ioctl and errno.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import struct
from typing import Any

from vmm.kvm import ioctls as io
from vmm.kvm.cpuid import minimal_table
from vmm.kvm.cputime import CpuMeter
from vmm.kvm.errors import KvmError
from vmm.kvm.exits import Exit, Interrupted, RunArea
from vmm.kvm.memory import PROT_READ, PROT_WRITE, mmap_fd, munmap
from vmm.kvm.structs import (
    KvmCpuidEntry2,
    KvmFpu,
    KvmMsrFilter,
    KvmRegs,
    KvmSregs,
    KvmUserspaceMemoryRegion,
    KvmXsave,
)

_SUPPORTED_CPUID_MAX = 256


@functools.lru_cache(maxsize=8)
def _cpuid2_type(n: int) -> type[ctypes.Structure]:
    """struct kvm_cpuid2 with room for n entries (made once per n: ctypes classes are slow to make)."""

    class KvmCpuid2(ctypes.Structure):
        _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32),
                    ("entries", KvmCpuidEntry2 * n)]

    return KvmCpuid2


def _cpuid2(n: int) -> ctypes.Structure:
    return _cpuid2_type(n)(nent=n)

__all__ = ["System", "Vcpu", "Vm"]


def _ioctl(fd: int, request: int, arg: Any = 0) -> int:
    try:
        return int(fcntl.ioctl(fd, request, arg, True) if not isinstance(arg, int)
                   else fcntl.ioctl(fd, request, arg))
    except OSError as e:
        raise KvmError(io.NAMES.get(request, hex(request)), e.errno or 0) from None


class _Fd:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{type(self).__name__} is closed")
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class System(_Fd):
    """/dev/kvm: one per process is enough."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        super().__init__(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        version = _ioctl(self.fd, io.KVM_GET_API_VERSION)
        if version != io.KVM_API_VERSION:
            self.close()
            raise KvmError("KVM_GET_API_VERSION", 0, f"API version {version}, want 12")
        self.vcpu_mmap_size = _ioctl(self.fd, io.KVM_GET_VCPU_MMAP_SIZE)
        # KVM_SET_XSAVE reads as many bytes as KVM_CAP_XSAVE2 says (at least struct kvm_xsave).
        self.xsave_size = 0
        if self.check_extension(io.KVM_CAP_XSAVE) > 0:
            self.xsave_size = max(self.check_extension(io.KVM_CAP_XSAVE2), ctypes.sizeof(KvmXsave))

    def check_extension(self, cap: int) -> int:
        return _ioctl(self.fd, io.KVM_CHECK_EXTENSION, cap)

    def create_vm(self) -> Vm:
        return Vm(_ioctl(self.fd, io.KVM_CREATE_VM, 0), self.vcpu_mmap_size, self.xsave_size)

    @functools.cached_property
    def guest_cpuid(self) -> list[tuple[int, int, int, int, int]]:
        """The CPUID table every micro-VM gets (vmm/kvm/cpuid.py), computed once."""
        return [(x.function, x.eax, x.ebx, x.ecx, x.edx) for x in minimal_table(self.supported_cpuid())]

    @functools.cached_property
    def msr_filter(self) -> bool:
        """Whether KVM_X86_SET_MSR_FILTER is available (KVM_CAP_X86_MSR_FILTER)."""
        return self.check_extension(io.KVM_CAP_X86_MSR_FILTER) > 0

    def supported_cpuid(self) -> list[KvmCpuidEntry2]:
        buf: Any = _cpuid2(_SUPPORTED_CPUID_MAX)
        _ioctl(self.fd, io.KVM_GET_SUPPORTED_CPUID, buf)
        return [copy_struct(buf.entries[i]) for i in range(buf.nent)]


class Vm(_Fd):
    def __init__(self, fd: int, vcpu_mmap_size: int, xsave_size: int = 0) -> None:
        super().__init__(fd)
        self._vcpu_mmap_size = vcpu_mmap_size
        self._xsave_size = xsave_size

    def set_memory_region(self, slot: int, guest_phys: int, size: int, host_addr: int,
                          readonly: bool = False) -> None:
        region = KvmUserspaceMemoryRegion(slot, io.KVM_MEM_READONLY if readonly else 0,
                                          guest_phys, size, host_addr)
        _ioctl(self.fd, io.KVM_SET_USER_MEMORY_REGION, region)

    def deny_msrs(self) -> None:
        """Every guest RDMSR/WRMSR the filter can cover raises #GP in the guest."""
        # KVM refuses a deny-by-default filter without ranges: one range that allows nothing.
        nothing = (ctypes.c_uint8 * 8)()
        f = KvmMsrFilter(flags=io.KVM_MSR_FILTER_DEFAULT_DENY)
        f.ranges[0].flags = io.KVM_MSR_FILTER_READ | io.KVM_MSR_FILTER_WRITE
        f.ranges[0].nmsrs = 64
        f.ranges[0].base = 0
        f.ranges[0].bitmap = ctypes.cast(nothing, ctypes.c_void_p)
        _ioctl(self.fd, io.KVM_X86_SET_MSR_FILTER, f)

    def create_vcpu(self, index: int = 0) -> Vcpu:
        return Vcpu(_ioctl(self.fd, io.KVM_CREATE_VCPU, index), self._vcpu_mmap_size, self._xsave_size)


class Vcpu(_Fd):
    def __init__(self, fd: int, mmap_size: int, xsave_size: int = 0) -> None:
        super().__init__(fd)
        self._xsave_size = xsave_size
        self._xsave_buf: ctypes.Array[ctypes.c_char] | None = None
        try:
            self._run_addr = mmap_fd(fd, mmap_size, PROT_READ | PROT_WRITE)
        except BaseException:
            self.close()
            raise
        self._run_size = mmap_size
        self.run_area = RunArea(self._run_addr)
        self.cpu = CpuMeter()
        """CPU time spent in the guest (KVM_RUN), what the per-event budget charges."""

    def run(self) -> Exit:
        """Enter the guest until the next exit. KVM_RUN releases the GIL."""
        fd, meter = self.fd, self.cpu
        start = meter.enter()
        try:
            fcntl.ioctl(fd, io.KVM_RUN, 0)
        except InterruptedError:
            # Not retried by Python: a signal (watchdog) or immediate_exit.
            meter.leave(start)
            return Interrupted()
        except OSError as e:
            meter.leave(start)
            raise KvmError("KVM_RUN", e.errno or 0) from None
        meter.leave(start)
        return self.run_area.decode()

    @property
    def immediate_exit(self) -> bool:
        return bool(self.run_area.header.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.run_area.header.immediate_exit = 1 if value else 0

    def get_regs(self) -> KvmRegs:
        regs = KvmRegs()
        _ioctl(self.fd, io.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: KvmRegs) -> None:
        _ioctl(self.fd, io.KVM_SET_REGS, regs)

    def get_sregs(self) -> KvmSregs:
        sregs = KvmSregs()
        _ioctl(self.fd, io.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: KvmSregs) -> None:
        _ioctl(self.fd, io.KVM_SET_SREGS, sregs)

    def set_cpuid(self, leaves: list[tuple[int, int, int, int, int]]) -> None:
        """The vCPU's whole CPUID table: (function, eax, ebx, ecx, edx), index 0 each.
        Must come before the first KVM_RUN (KVM refuses a different table after)."""
        buf: Any = _cpuid2(len(leaves))
        for i, (function, eax, ebx, ecx, edx) in enumerate(leaves):
            buf.entries[i] = KvmCpuidEntry2(function=function, eax=eax, ebx=ebx, ecx=ecx, edx=edx)
        _ioctl(self.fd, io.KVM_SET_CPUID2, buf)

    def get_fpu(self) -> KvmFpu:
        """x87/SSE state. Read from the XSAVE image where there is one: KVM_GET_FPU reports
        MXCSR as 0 here, and a snapshot holding that unmasked every SIMD FP exception (an
        inexact division then faulted #XM in a restored guest)."""
        fpu = KvmFpu()
        if not self._xsave_size:
            _ioctl(self.fd, io.KVM_GET_FPU, fpu)
            return fpu
        buf = ctypes.create_string_buffer(self._xsave_size)
        _ioctl(self.fd, io.KVM_GET_XSAVE, buf)
        fpu.fcw, fpu.fsw, fpu.ftwx, fpu.last_opcode, fpu.last_ip, fpu.last_dp, fpu.mxcsr, _ = (
            struct.unpack_from(_LEGACY_HEAD, buf, 0))
        ctypes.memmove(ctypes.addressof(fpu.fpr), ctypes.addressof(buf) + 32, 128)
        ctypes.memmove(ctypes.addressof(fpu.xmm), ctypes.addressof(buf) + 160, 256)
        return fpu

    def set_fpu(self, fpu: KvmFpu) -> None:
        """x87/SSE state from `fpu`; every later XSAVE component (AVX, AVX-512, ...) back to
        its initial state. KVM_SET_FPU alone leaves those: under PVM the guest's ring 3 runs
        AVX natively whatever its CPUID says, so upper register halves outlived a restore."""
        if not self._xsave_size:
            _ioctl(self.fd, io.KVM_SET_FPU, fpu)
            return
        if self._xsave_buf is None:
            self._xsave_buf = ctypes.create_string_buffer(self._xsave_size)
        _xsave_image(fpu, self._xsave_buf, self._mxcsr_mask())
        _ioctl(self.fd, io.KVM_SET_XSAVE, self._xsave_buf)

    def _mxcsr_mask(self) -> int:
        global _MXCSR_MASK
        if _MXCSR_MASK is None:  # a property of the CPU: read once from a vCPU
            buf = ctypes.create_string_buffer(self._xsave_size)
            _ioctl(self.fd, io.KVM_GET_XSAVE, buf)
            _MXCSR_MASK = struct.unpack_from("<I", buf, 28)[0] or _DEFAULT_MXCSR_MASK
        return _MXCSR_MASK

    def close(self) -> None:
        if self._fd >= 0:
            munmap(self._run_addr, self._run_size)
        super().close()


_MXCSR_MASK: int | None = None
_DEFAULT_MXCSR_MASK = 0xFFBF  # what FXSAVE stores when the CPU leaves the field 0
_XSTATE_X87_SSE = 0b11  # XSTATE_BV: only x87 and SSE are taken from the image
# FXSAVE area: fcw, fsw, abridged ftw, -, fop, fip, fdp, mxcsr, mxcsr_mask; ST0-7 at 32, XMM at 160
_LEGACY_HEAD = "<HHBxHQQII"


def _xsave_image(fpu: KvmFpu, buf: ctypes.Array[ctypes.c_char], mxcsr_mask: int) -> None:
    """Write into `buf` (zero past the legacy area and header, and kept so) the standard-format
    XSAVE image of `fpu`: the FXSAVE legacy area as KVM_SET_FPU fills it, XSTATE_BV = x87|SSE,
    so every other component loads in its initial state."""
    struct.pack_into(_LEGACY_HEAD, buf, 0, fpu.fcw, fpu.fsw, fpu.ftwx, fpu.last_opcode,
                     fpu.last_ip, fpu.last_dp, fpu.mxcsr, mxcsr_mask)  # fmt: skip
    ctypes.memmove(ctypes.addressof(buf) + 32, ctypes.addressof(fpu.fpr), 128)  # ST0-7, 16 B each
    ctypes.memmove(ctypes.addressof(buf) + 160, ctypes.addressof(fpu.xmm), 256)  # XMM0-15
    struct.pack_into("<Q", buf, 512, _XSTATE_X87_SSE)


def copy_struct(s: ctypes.Structure) -> Any:
    """A detached copy of a ctypes structure (snapshots keep their own)."""
    return type(s).from_buffer_copy(s)
