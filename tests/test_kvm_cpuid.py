"""What a micro-VM learns from CPUID (vmm/kvm/cpuid.py): a guest that executes `cpuid` in
ring 3 (tests/kvm_guests/cpuid_probe.c) sees Lightcell's table, not the host's. And the
vector state a guest can reach (AVX runs under PVM whatever CPUID says) does not outlive a
snapshot restore.

Under PVM (these machines) `cpuid` in the guest's ring 3 traps to KVM, which answers
from the table for vendor, leaf limits, family/model and the extended leaves; the
leaf-1 feature bits are the real CPU's (PVM passes them through, as the guest's
instructions run natively anyway), minus the hypervisor bit. The asserts below hold
on both PVM and VMX hosts.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmm.kvm import KvmFpu, System
from vmm.kvm import cpuid as table
from vmm.microvm import abi, guest_build
from vmm.microvm.image import load_image
from vmm.microvm.layout import Layout
from vmm.microvm.machine import build_template
from vmm.microvm.snapshot import Snapshot
from vmm.microvm.vm import MicroVm

pytestmark = pytest.mark.kvm
HERE = Path(__file__).resolve().parent
HYPERVISOR_BIT = 1 << 31


@pytest.fixture(scope="module")
def probe(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MicroVm]:
    out = tmp_path_factory.mktemp("cpuid_probe")
    objs = guest_build.compile_c([HERE / "kvm_guests" / "cpuid_probe.c"], out)
    template = build_template(load_image(guest_build.link_image(objs, out / "probe.elf")),
                              Layout.for_memory_limit(1 << 20))  # fmt: skip
    vm = MicroVm(system, template)
    vm.boot()
    yield vm
    vm.close()
    template.close()


def cpuid(vm: MicroVm, leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
    regs = struct.unpack("<4I", vm.call(abi.Op.DATA, payload=struct.pack("<II", leaf, sub)).payload)
    return regs[0], regs[1], regs[2], regs[3]


def test_vendor_and_limits_come_from_the_table(probe: MicroVm) -> None:
    eax, ebx, ecx, edx = cpuid(probe, 0)
    assert eax == table.MAX_BASIC
    assert struct.pack("<3I", ebx, edx, ecx) == table.VENDOR == b"Lightcell-VM"
    assert cpuid(probe, 0x80000000)[0] == table.MAX_EXTENDED


def test_no_hypervisor_signature_brand_or_model(probe: MicroVm, system: System) -> None:
    _, ebx, ecx, edx = cpuid(probe, 0x40000000)
    assert b"KVMKVMKVM" not in struct.pack("<3I", ebx, ecx, edx)
    for leaf in (0x80000002, 0x80000003, 0x80000004):  # the brand string
        assert cpuid(probe, leaf) == (0, 0, 0, 0)
    eax, ebx, ecx, _ = cpuid(probe, 1)
    assert eax == 0  # family, model, stepping
    assert ebx == table.LEAF1_EBX  # no APIC id or CPU count from the host
    assert not ecx & HYPERVISOR_BIT
    assert all(leaf not in (0x40000000, 0x40000001) for leaf, *_ in system.guest_cpuid)


def test_the_guests_features_are_advertised(probe: MicroVm) -> None:
    _, _, ecx, edx = cpuid(probe, 1)
    assert ecx & table.LEAF1_ECX == table.LEAF1_ECX  # up to SSE4.1, as the guest is built
    assert edx & table.LEAF1_EDX == table.LEAF1_EDX
    assert cpuid(probe, 0x80000001)[3] == table.EXT1_EDX  # long mode and NX, nothing else


def test_leaves_past_the_table_show_no_host_extensions(probe: MicroVm) -> None:
    avx2, avx512f = 1 << 5, 1 << 16
    assert cpuid(probe, 7)[1] & (avx2 | avx512f) == 0


def test_the_table_is_minimal(system: System) -> None:
    functions = [leaf[0] for leaf in system.guest_cpuid]
    assert functions == [0, 1, 0x80000000, 0x80000001, 0x80000008]
    assert system.guest_cpuid[1][3] == table.LEAF1_ECX  # no AVX, XSAVE, hypervisor bit ...


def test_upper_vector_state_does_not_outlive_a_restore(probe: MicroVm) -> None:
    snap = Snapshot.take(probe)
    try:
        probe.call(abi.Op.DATA, payload=b"V")
    except Exception:
        pytest.skip("AVX faults in this guest: no upper vector state to leak")
    probe.call(abi.Op.DATA, payload=b"W")
    assert probe.call(abi.Op.DATA, payload=b"R").payload == b"\xff" * 16  # the probe works
    snap.restore(probe)
    assert probe.call(abi.Op.DATA, payload=b"R").payload == b"\0" * 16


def test_floating_point_works_after_a_restore(probe: MicroVm) -> None:
    # KVM_GET_FPU reports MXCSR 0 on these hosts: a snapshot holding that unmasked every SIMD
    # FP exception, and 1.0/3.0 (inexact) faulted #XM in every restored guest.
    snap = Snapshot.take(probe)
    assert snap.fpu.mxcsr == 0x1F80  # the x86 default: all exceptions masked
    snap.restore(probe)
    assert probe.call(abi.Op.DATA, payload=b"F").payload == b"f"


def test_set_fpu_keeps_x87_and_sse_state(probe: MicroVm) -> None:
    fpu = KvmFpu()
    fpu.fcw, fpu.fsw, fpu.ftwx, fpu.last_opcode, fpu.mxcsr = 0x27F, 0x0, 0x0, 0, 0x9FC0
    for i in range(16):
        fpu.xmm[i][:] = bytes(range(i, i + 16))
    fpu.fpr[3][:10] = b"\x11" * 10
    probe.vcpu.set_fpu(fpu)
    got = probe.vcpu.get_fpu()
    assert (got.fcw, got.mxcsr) == (0x27F, 0x9FC0)
    assert [bytes(got.xmm[i]) for i in range(16)] == [bytes(range(i, i + 16)) for i in range(16)]
    assert bytes(got.fpr[3])[:10] == b"\x11" * 10
    probe.poisoned = None  # the next test restores anyway; this one only used the vCPU
