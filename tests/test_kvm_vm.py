"""The KVM layer and one micro-VM: boot in ring 3, calls, host calls, faults."""

from __future__ import annotations

import ctypes
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from _kvm_helpers import booted, host

from vmm.kvm import KvmError, System, Vm
from vmm.kvm import ioctls as io
from vmm.kvm.exits import IoOut, Other, RunArea, Shutdown
from vmm.kvm.structs import KvmRunHeader
from vmm.microvm import abi, guest_build
from vmm.microvm.image import ImageError, load_image
from vmm.microvm.machine import Template
from vmm.microvm.vm import FaultReason, MicroVm, VmFault

pytestmark = pytest.mark.kvm


@pytest.fixture
def vm(system: System, template: Template) -> Iterator[MicroVm]:
    v = booted(system, template)
    yield v
    v.close()


def test_ioctl_error_names_ioctl_and_errno(system: System) -> None:
    with system.create_vm() as v, pytest.raises(KvmError) as info:
        # slot memory not page aligned: the kernel refuses with EINVAL
        Vm.set_memory_region(v, 0, 0x1000, 0x1000, 12345)
    assert "KVM_SET_USER_MEMORY_REGION" in str(info.value)
    assert info.value.errno == errno.EINVAL


def test_closed_fd_raises(system: System) -> None:
    v = system.create_vm()
    v.close()
    v.close()  # closes once
    with pytest.raises(ValueError, match="closed"):
        v.create_vcpu()


def test_exit_decoding_from_made_up_runs() -> None:
    buf = (ctypes.c_uint8 * 4096)()
    run = RunArea(ctypes.addressof(buf))
    hdr = KvmRunHeader.from_buffer(buf)
    hdr.exit_reason = 2  # IO
    buf[32], buf[33] = 1, 4  # out, 4 bytes
    buf[34], buf[35] = 0x04, 0x01  # port 0x104
    buf[36] = 1
    buf[40] = 0x80  # data at offset 128
    buf[128:132] = [7, 0, 0, 0]
    assert run.decode() == IoOut(0x104, 4, 1, 7)
    hdr.exit_reason = 8
    assert run.decode() == Shutdown()
    hdr.exit_reason = 17
    assert isinstance(run.decode(), Other)


def test_boots_in_ring3_long_mode(vm: MicroVm) -> None:
    sregs = vm.vcpu.get_sregs()
    assert sregs.cs.selector & 3 == 3 and sregs.cs.l == 1  # CPL 3, 64-bit code
    assert sregs.efer & (1 << 10)  # LMA
    assert vm.call(abi.Op.DATA, payload=b"hello, vm").payload == b"HELLO, VM"


def test_sse_runs_in_ring3(vm: MicroVm) -> None:
    assert vm.call(abi.Op.DATA, payload=b"!sse").payload == b"sse=9"


def test_large_event_round_trip(vm: MicroVm) -> None:
    data = bytes(range(97, 123)) * 2600  # ~66 KiB
    assert vm.call(abi.Op.DATA, payload=data).payload == data.upper()


def test_oversized_request_refused_before_the_guest(vm: MicroVm) -> None:
    with pytest.raises(ValueError):
        vm.call(abi.Op.DATA, payload=b"x" * abi.LC_IN_SIZE)
    assert vm.poisoned is None


def test_granted_host_call(vm: MicroVm) -> None:
    h = host("kv")
    assert vm.call(abi.Op.DATA, payload=b"!kv", host=h).payload == b"kv=1"
    assert vm.call(abi.Op.DATA, payload=b"!kv", host=h).payload == b"kv=2"
    assert vm.call(abi.Op.DATA, payload=b"!get", host=h).payload == (2).to_bytes(8, "little")


def test_ungranted_host_call_denied(vm: MicroVm) -> None:
    h = host("log")
    with pytest.raises(VmFault) as info:
        vm.call(abi.Op.DATA, payload=b"!kv", host=h)
    assert info.value.reason is FaultReason.GUEST_STATUS
    assert info.value.status == abi.Status.DENIED
    assert h.denied == "kv"
    assert vm.poisoned is not None


def test_host_call_log(vm: MicroVm, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="lightcell.plugin")
    vm.call(abi.Op.DATA, payload=b"!log from the guest", host=host("log"))
    assert "!log from the guest" in caplog.text


def test_guest_failure_status(vm: MicroVm) -> None:
    with pytest.raises(VmFault) as info:
        vm.call(abi.Op.DATA, payload=b"!fail")
    assert info.value.status == abi.Status.TRAP and info.value.detail == abi.Trap.UNREACHABLE
    with pytest.raises(VmFault, match="poisoned"):
        vm.call(abi.Op.DATA, payload=b"ok")


@pytest.mark.parametrize(("cmd", "vector"), [(b"!ud2", 6), (b"!hlt", 13), (b"!null", 14)])
def test_exception_stub_reports(vm: MicroVm, cmd: bytes, vector: int) -> None:
    with pytest.raises(VmFault) as info:
        vm.call(abi.Op.DATA, payload=cmd)
    assert info.value.reason is FaultReason.EXCEPTION
    assert info.value.detail == vector
    if vector == 14:
        assert "cr2=0x8" in info.value.message


def test_image_with_other_abi_version_refused(tmp_path: Path) -> None:
    src = guest_build.build_test_image()
    raw = bytearray(src.read_bytes())
    text = load_image(src).segments[0]
    off = raw.find(text.data[:16])
    raw[off + 4] = abi.LC_ABI_VERSION + 1
    bad = tmp_path / "bad.elf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ImageError, match="ABI version"):
        load_image(bad)


def test_not_an_image_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.elf"
    p.write_bytes(b"\x7fELF" + b"\0" * 100)
    with pytest.raises(ImageError):
        load_image(p)


def test_readonly_memory_supported(system: System) -> None:
    assert system.check_extension(io.KVM_CAP_READONLY_MEM) == 1


def test_zig_toolchain_used() -> None:
    # zig comes from PyPI, so CI has it; gcc is only a fallback.
    assert guest_build.toolchain()[0].startswith("zig") or shutil.which("gcc")
