"""The CPUID table a micro-VM sees: only what the guest needs, nothing about the host.

The guest (wasm2c output built with -msse4.1 -mno-avx, see kvm-here.md) needs
64-bit mode with NX, x87/FXSR and SSE up to SSE4.1, and KVM needs the guest's
address width (leaf 0x80000008) to check page tables. Everything else is left
out: no hypervisor bit or leaves (0x40000000...), no brand string, no cache or
topology leaves, no XSAVE/AVX, a neutral vendor and a zero family/model.

Bits KVM itself acts on (long mode, NX, FXSR, ...) must be in what
KVM_GET_SUPPORTED_CPUID reports, else it is an error, not a silent downgrade.
The SSE3/SSSE3/SSE4.1 bits are advertised as the guest was built for them:
KVM under PVM leaves them out of its supported list (ecx 0x81202000 here) while
the guest's ring-3 code runs them natively; on a CPU without them the guest
faults with #UD, a poisoned VM like any other fault.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmm.kvm.errors import KvmError
from vmm.kvm.structs import KvmCpuidEntry2

__all__ = ["VENDOR", "CpuidLeaf", "minimal_table"]

VENDOR = b"Lightcell-VM"  # 12 bytes, in ebx, edx, ecx order
MAX_BASIC, MAX_EXTENDED = 0x1, 0x80000008

# Leaf 1
ECX_SSE3, ECX_SSSE3, ECX_SSE4_1 = 1 << 0, 1 << 9, 1 << 19
EDX_FPU, EDX_TSC, EDX_PAE, EDX_CX8, EDX_CMOV = 1 << 0, 1 << 4, 1 << 6, 1 << 8, 1 << 15
EDX_MMX, EDX_FXSR, EDX_SSE, EDX_SSE2 = 1 << 23, 1 << 24, 1 << 25, 1 << 26
LEAF1_ECX = ECX_SSE3 | ECX_SSSE3 | ECX_SSE4_1
LEAF1_EDX = EDX_FPU | EDX_TSC | EDX_PAE | EDX_CX8 | EDX_CMOV | EDX_MMX | EDX_FXSR | EDX_SSE | EDX_SSE2
LEAF1_EBX = 8 << 8  # CLFLUSH line size 64 bytes; APIC id 0, one logical CPU
# Leaf 0x80000001
EXT_EDX_NX, EXT_EDX_LM = 1 << 20, 1 << 29
EXT1_EDX = EXT_EDX_NX | EXT_EDX_LM
ADDRESS_BITS_MASK = 0xFFFF  # 0x80000008 eax: physical (7:0) and linear (15:8) address widths


@dataclass(frozen=True)
class CpuidLeaf:
    function: int
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0


def _vendor_regs() -> tuple[int, int, int]:
    b, d, c = (int.from_bytes(VENDOR[i:i + 4], "little") for i in (0, 4, 8))
    return b, c, d


def _find(supported: list[KvmCpuidEntry2], function: int) -> KvmCpuidEntry2:
    for e in supported:
        if e.function == function and e.index == 0:
            return e
    raise KvmError("KVM_GET_SUPPORTED_CPUID", 0, f"host KVM offers no CPUID leaf {function:#x}")


def _require(have: int, want: int, what: str) -> int:
    if have & want != want:
        raise KvmError("KVM_GET_SUPPORTED_CPUID", 0, f"host lacks {what} bits {want & ~have:#x}")
    return want


def minimal_table(supported: list[KvmCpuidEntry2]) -> list[CpuidLeaf]:
    """The guest's whole CPUID table, checked against what the host KVM supports."""
    vb, vc, vd = _vendor_regs()
    leaf1, ext1, ext8 = _find(supported, 1), _find(supported, 0x80000001), _find(supported, 0x80000008)
    return [
        CpuidLeaf(0, MAX_BASIC, vb, vc, vd),
        CpuidLeaf(1, 0, LEAF1_EBX, LEAF1_ECX, _require(leaf1.edx, LEAF1_EDX, "leaf 1 edx")),
        CpuidLeaf(0x80000000, MAX_EXTENDED),
        CpuidLeaf(0x80000001, edx=_require(ext1.edx, EXT1_EDX, "leaf 0x80000001 edx")),
        CpuidLeaf(0x80000008, eax=ext8.eax & ADDRESS_BITS_MASK),
    ]  # fmt: skip
