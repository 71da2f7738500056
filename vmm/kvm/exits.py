"""vCPU exits as small tagged values, decoded from `struct kvm_run` in one place."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from vmm.kvm.structs import RUN_EXIT_UNION_OFFSET, KvmRunHeader, KvmRunIo

KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_IO_OUT = 1


@dataclass(frozen=True, slots=True)
class IoOut:
    """`out` to `port` of `size` bytes; `value` is the data (size <= 4, count 1)."""

    port: int
    size: int
    count: int
    value: int


@dataclass(frozen=True, slots=True)
class IoIn:
    port: int
    size: int


@dataclass(frozen=True, slots=True)
class Interrupted:
    """KVM_RUN returned EINTR (a signal, or immediate_exit)."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Triple fault or similar: the guest is dead."""


@dataclass(frozen=True, slots=True)
class Mmio:
    address: int
    is_write: bool


@dataclass(frozen=True, slots=True)
class Other:
    reason: int
    detail: str = ""


Exit = IoOut | IoIn | Interrupted | Shutdown | Mmio | Other


class RunArea:
    """Typed views over one vCPU's mmapped `struct kvm_run`."""

    def __init__(self, addr: int) -> None:
        self.addr = addr
        self.header = KvmRunHeader.from_address(addr)
        self.io = KvmRunIo.from_address(addr + RUN_EXIT_UNION_OFFSET)

    def decode(self) -> Exit:
        reason = self.header.exit_reason
        if reason == KVM_EXIT_IO:
            io = self.io
            if io.direction != KVM_EXIT_IO_OUT:
                return IoIn(io.port, io.size)
            size = io.size if io.size in (1, 2, 4) else 4
            value = int.from_bytes(ctypes.string_at(self.addr + io.data_offset, size), "little")
            return IoOut(io.port, io.size, io.count, value)
        if reason == KVM_EXIT_SHUTDOWN:
            return Shutdown()
        if reason == KVM_EXIT_MMIO:
            phys = ctypes.c_uint64.from_address(self.addr + RUN_EXIT_UNION_OFFSET).value
            is_write = ctypes.c_uint8.from_address(self.addr + RUN_EXIT_UNION_OFFSET + 20).value
            return Mmio(phys, bool(is_write))
        if reason == KVM_EXIT_INTERNAL_ERROR:
            sub = ctypes.c_uint32.from_address(self.addr + RUN_EXIT_UNION_OFFSET).value
            return Other(reason, f"internal error, suberror {sub}")
        if reason == KVM_EXIT_FAIL_ENTRY:
            hw = ctypes.c_uint64.from_address(self.addr + RUN_EXIT_UNION_OFFSET).value
            return Other(reason, f"entry failed, hardware reason {hw:#x}")
        return Other(reason)
