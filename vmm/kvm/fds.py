"""One wrapper class per KVM fd kind: System (/dev/kvm), Vm, Vcpu.

Each owns its fd, closes once, works as a context manager, and raises
KvmError naming the ioctl and errno.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from typing import Any

from vmm.kvm import ioctls as io
from vmm.kvm.errors import KvmError
from vmm.kvm.exits import Exit, Interrupted, RunArea
from vmm.kvm.memory import PROT_READ, PROT_WRITE, mmap_fd, munmap
from vmm.kvm.structs import KvmFpu, KvmRegs, KvmSregs, KvmUserspaceMemoryRegion

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

    def check_extension(self, cap: int) -> int:
        return _ioctl(self.fd, io.KVM_CHECK_EXTENSION, cap)

    def create_vm(self) -> Vm:
        return Vm(_ioctl(self.fd, io.KVM_CREATE_VM, 0), self.vcpu_mmap_size)


class Vm(_Fd):
    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        super().__init__(fd)
        self._vcpu_mmap_size = vcpu_mmap_size

    def set_memory_region(self, slot: int, guest_phys: int, size: int, host_addr: int,
                          readonly: bool = False) -> None:
        region = KvmUserspaceMemoryRegion(slot, io.KVM_MEM_READONLY if readonly else 0,
                                          guest_phys, size, host_addr)
        _ioctl(self.fd, io.KVM_SET_USER_MEMORY_REGION, region)

    def create_vcpu(self, index: int = 0) -> Vcpu:
        return Vcpu(_ioctl(self.fd, io.KVM_CREATE_VCPU, index), self._vcpu_mmap_size)


class Vcpu(_Fd):
    def __init__(self, fd: int, mmap_size: int) -> None:
        super().__init__(fd)
        try:
            self._run_addr = mmap_fd(fd, mmap_size, PROT_READ | PROT_WRITE)
        except BaseException:
            self.close()
            raise
        self._run_size = mmap_size
        self.run_area = RunArea(self._run_addr)

    def run(self) -> Exit:
        """Enter the guest until the next exit. KVM_RUN releases the GIL."""
        try:
            fcntl.ioctl(self.fd, io.KVM_RUN, 0)
        except InterruptedError:
            # Not retried by Python: a signal (watchdog) or immediate_exit.
            return Interrupted()
        except OSError as e:
            raise KvmError("KVM_RUN", e.errno or 0) from None
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

    def get_fpu(self) -> KvmFpu:
        fpu = KvmFpu()
        _ioctl(self.fd, io.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: KvmFpu) -> None:
        _ioctl(self.fd, io.KVM_SET_FPU, fpu)

    def close(self) -> None:
        if self._fd >= 0:
            munmap(self._run_addr, self._run_size)
        super().close()


def copy_struct(s: ctypes.Structure) -> Any:
    """A detached copy of a ctypes structure (snapshots keep their own)."""
    return type(s).from_buffer_copy(s)
