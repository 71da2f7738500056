"""A pure-Python KVM monitor layer: structures, ioctls, fd wrappers, exits, memory."""

from vmm.kvm.errors import KvmError
from vmm.kvm.exits import Exit, Interrupted, IoIn, IoOut, Mmio, Other, Shutdown
from vmm.kvm.fds import System, Vcpu, Vm, copy_struct
from vmm.kvm.memory import GuestMemory
from vmm.kvm.structs import KvmFpu, KvmRegs, KvmSregs

__all__ = [
    "Exit",
    "GuestMemory",
    "Interrupted",
    "IoIn",
    "IoOut",
    "KvmError",
    "KvmFpu",
    "KvmRegs",
    "KvmSregs",
    "Mmio",
    "Other",
    "Shutdown",
    "System",
    "Vcpu",
    "Vm",
    "copy_struct",
]
