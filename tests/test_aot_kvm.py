"""Plugins compiled by `lightcell compile` (wasm2c + the guest runtime + guest/boot)
running in real micro-VMs: the same behaviour the native harness shows, now
behind the KVM boundary with the monitor's host calls."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aot_support import ALL_GRANTS, Compiler, host

from vmm.kvm import System
from vmm.microvm import abi
from vmm.microvm.compile import compile_plugin
from vmm.microvm.image import load_image
from vmm.microvm.layout import Layout
from vmm.microvm.machine import Template, build_template
from vmm.microvm.vm import MicroVm, VmFault

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def compiler(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    return Compiler(tmp_path_factory.mktemp("aot-kvm"))


@pytest.fixture(scope="module")
def boot(system: System, compiler: Compiler) -> Iterator[Callable[..., MicroVm]]:
    made: list[tuple[MicroVm, Template]] = []

    def _boot(name: str, memory: int = 16 << 20) -> MicroVm:
        t0 = time.perf_counter()
        compiled = compile_plugin(compiler.example(name), target="guest", root=compiler.root / "cache")
        t1 = time.perf_counter()
        template = build_template(load_image(compiled.image), Layout.for_memory_limit(memory))
        vm = MicroVm(system, template)
        vm.boot()
        print(f"\n{name}: compile {t1 - t0:.2f} s ({'cached' if compiled.cached else 'cold'}), "
              f"boot {1000 * (time.perf_counter() - t1):.1f} ms")
        made.append((vm, template))
        return vm

    yield _boot
    for vm, template in made:
        vm.close()
        template.close()


def _open(vm: MicroVm, config: str, grants: frozenset[str] = ALL_GRANTS) -> None:
    vm.call(abi.Op.OPEN, 1, len(config), b"l" + config.encode(), host(grants))


def test_rewrite_in_a_micro_vm(boot: Callable[..., MicroVm]) -> None:
    vm = boot("rewrite")
    _open(vm, "read=rot13,write=number")
    assert vm.call(abi.Op.DATA, 0, 0, b"hello").payload == b"uryyb"
    assert vm.call(abi.Op.DATA, 1, 0, b"x").payload == b"1:x"
    assert vm.call(abi.Op.DATA, 1, 0, b"y").payload == b"2:y"
    assert vm.call(abi.Op.DATA, 0, 0, b"!reset").detail == 3
    big = bytes(range(256)) * 256
    assert len(vm.call(abi.Op.DATA, 0, 0, big).payload) == len(big)


def test_probe_host_calls_in_a_micro_vm(boot: Callable[..., MicroVm]) -> None:
    vm = boot("probe")
    h = host()
    vm.call(abi.Op.OPEN, 1, 7, b"lcall=kv", h)
    assert vm.call(abi.Op.DATA, 0, 0, b"x", h).payload == b"kv=1\n"
    assert vm.call(abi.Op.DATA, 0, 0, b"x", h).payload == b"kv=2\n"
    assert h.kv.get("probe-last") == b"2"


def test_denied_capability_poisons_only_that_vm(boot: Callable[..., MicroVm]) -> None:
    vm = boot("probe")
    h = host(frozenset({"log"}))
    vm.call(abi.Op.OPEN, 1, 7, b"lcall=kv", h)
    with pytest.raises(VmFault) as err:
        vm.call(abi.Op.DATA, 0, 0, b"x", h)
    assert err.value.status == abi.Status.DENIED


def test_trap_and_memory_cap_in_a_micro_vm(boot: Callable[..., MicroVm]) -> None:
    vm = boot("faulty")
    _open(vm, "mode=trap")
    with pytest.raises(VmFault) as err:
        vm.call(abi.Op.DATA, 0, 0, b"x")
    assert (err.value.status, err.value.detail) == (abi.Status.TRAP, 1)  # unreachable
    vm = boot("faulty", memory=4 << 20)
    _open(vm, "mode=grow")
    with pytest.raises(VmFault) as err:
        vm.call(abi.Op.DATA, 0, 0, b"x")
    assert err.value.status == abi.Status.MEMORY


def test_wasi_plugin_in_a_micro_vm(boot: Callable[..., MicroVm], compiler: Compiler) -> None:
    vm = boot("wasi-log")
    h = host()
    vm.call(abi.Op.OPEN, 1, 0, b"l", h)
    assert vm.call(abi.Op.DATA, 0, 0, b"hi", h).detail == 0


def test_one_kib_event_round_trip_is_reported(boot: Callable[..., MicroVm]) -> None:
    vm = boot("rewrite")
    _open(vm, "read=upper")
    chunk = b"a" * 1024
    vm.call(abi.Op.WARMUP)
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        assert vm.call(abi.Op.DATA, 0, 0, chunk).payload == b"A" * 1024
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"\n1 KiB event through a compiled plugin: p50 {1e6 * times[25]:.0f} us")


def test_compiled_image_is_cached(compiler: Compiler, tmp_path: Path) -> None:
    a = compile_plugin(compiler.example("rewrite"), target="guest", root=tmp_path)
    built = a.image.stat().st_mtime_ns
    b = compile_plugin(compiler.example("rewrite"), target="guest", root=tmp_path)
    assert b.cached and a.image == b.image
    assert b.image.stat().st_mtime_ns == built  # not rewritten: nothing was built again
