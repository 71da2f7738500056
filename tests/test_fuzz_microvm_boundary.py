"""The hostile plugin of test_fuzz_wasm_boundary.py, compiled ahead of time
(wasm2c + guest runtime) and fuzzed inside real KVM micro-VMs.

Same commands (hypothesis-drawn, the earlier seeds kept as examples) and the same oracle
as the wasmtime tier: every range
outside the plugin's linear memory must end the event with LC_STATUS_ABI
(checked by the guest's one accessor, lc_rt_guest), a memory.copy out of
bounds with a trap; nothing else may happen (no CPU exception, no bad port,
no bad length reaching the monitor, no dead VM), and a faulted VM refuses
further calls. Known, deliberate differences between the tiers (the oracle's
"may" sets cover them): the guest lifts the egress port as a u16 by
truncation (the canonical ABI rule; wasmtime's core path refuses ports over
0xFFFF), and log messages are decoded with replacement, not refused.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import _fuzz_settings
import pytest
import wasmtime
from _host_fakes import Sent
from hypothesis import example, given
from hypothesis import strategies as st
from test_fuzz_wasm_boundary import (
    HOSTILE_WAT,
    MEMORY_BYTES,
    command,
    may_be_abi,
    must_be_abi,
    pick_command,
    read_memory,
)

from vmm.capabilities import HostCapabilities
from vmm.kvm import System
from vmm.kvstore import KvStore
from vmm.microvm import abi
from vmm.microvm.compile import compile_plugin
from vmm.microvm.image import load_image
from vmm.microvm.layout import Layout
from vmm.microvm.machine import Template, build_template
from vmm.microvm.vm import FaultReason, MicroVm, VmFault
from vmm.policy import CAPABILITIES, EgressTarget, Grants, Limits

pytestmark = pytest.mark.kvm

SEEDS = (1, 0xC0FFEE)
"""The seeded fuzzer's seeds, kept as explicit hypothesis examples of STEPS commands."""
STEPS = 400
DRAWN_STEPS = 40
ALLOWED = EgressTarget("127.0.0.1", 9125)
HOST_AT, KEY_AT = 1024, 1100
_U32 = 1 << 32


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    work = tmp_path_factory.mktemp("fuzz-microvm")
    wasm = work / "hostile.wasm"
    wasm.write_bytes(wasmtime.wat2wasm(HOSTILE_WAT))
    compiled = compile_plugin(wasm, target="guest", root=work / "cache")
    tpl = build_template(load_image(compiled.image), Layout.for_memory_limit(Limits().memory_bytes))
    yield tpl
    tpl.close()


@pytest.fixture(scope="module")
def new_vm(template: Template) -> Iterator[Callable[[HostCapabilities], MicroVm]]:
    made: list[MicroVm] = []
    with System() as system:

        def make(host: HostCapabilities) -> MicroVm:
            while made:  # one live VM at a time is enough here
                made.pop().close()
            vm = MicroVm(system, template)
            made.append(vm)
            vm.boot()
            vm.call(abi.Op.OPEN, 1, 0, b"l", host)
            for at, text in ((HOST_AT, b"127.0.0.1"), (KEY_AT, b"k")):
                vm.call(abi.Op.DATA, 0, 0, command(13, at, payload=text), host)
            return vm

        yield make
        while made:
            made.pop().close()


def _host(kv: KvStore, sent: Sent) -> HostCapabilities:
    return HostCapabilities(
        "fuzz", "hostile", Grants(CAPABILITIES, frozenset({ALLOWED})), Limits(), kv, sent
    )


@_fuzz_settings.examples(10)
@example(rng=random.Random(SEEDS[0]), steps=STEPS)
@example(rng=random.Random(SEEDS[1]), steps=STEPS)
@given(rng=st.randoms(use_true_random=False), steps=st.just(DRAWN_STEPS))
def test_hostile_plugin_fuzz_in_micro_vms(
    new_vm: Callable[[HostCapabilities], MicroVm], rng: random.Random, steps: int
) -> None:
    kv, sent = KvStore(50, 4096), Sent()
    h = _host(kv, sent)
    vm = new_vm(h)
    evil = 0
    statuses: dict[str, int] = {}
    for step in range(steps):
        op, args = pick_command(rng)
        chunk = command(op, *args)
        where = f"step={step} op={op} args={[hex(a) for a in args]} evil={evil:#x}"
        try:
            response = vm.call(abi.Op.DATA, 0, 0, chunk, h)
        except VmFault as fault:
            assert fault.reason is FaultReason.GUEST_STATUS, f"{where}: {fault}"
            status = abi.Status(fault.status or 0)
            statuses[status.name] = statuses.get(status.name, 0) + 1
            if status is abi.Status.TRAP:
                assert op == 13 or evil, f"{where}: unexpected trap {fault}"
            else:
                assert status is abi.Status.ABI, f"{where}: {fault}"
                allowed = must_be_abi(op, args, len(chunk), evil) or may_be_abi(op, args) or evil
                assert allowed, f"{where}: ABI fault the oracle does not allow: {fault}"
            assert vm.poisoned is not None
            with pytest.raises(VmFault):
                vm.call(abi.Op.DATA, 0, 0, b"after the fault", h)
            vm, evil = new_vm(h), 0
            continue
        assert not must_be_abi(op, args, len(chunk), evil), f"{where}: accepted, detail {response.detail}"
        if op == 11:
            tag = args[0] & 0xFF
            assert response.detail == tag, where
            if tag == 1:
                assert len(response.payload) == args[2], where
        if op == 12:
            evil = args[0]
    assert all(target == ALLOWED for target, _ in sent.datagrams)
    if steps == STEPS:  # a long seeded run did reach the checks
        assert statuses.get("ABI", 0) > STEPS // 10, statuses
    assert len(kv._data) <= 50


def test_forged_reads_return_exactly_the_range(new_vm: Callable[[HostCapabilities], MicroVm]) -> None:
    h = _host(KvStore(50, 4096), Sent())
    vm = new_vm(h)
    secret = bytes(range(256))
    vm.call(abi.Op.DATA, 0, 0, command(13, MEMORY_BYTES - 256, payload=secret), h)
    assert vm.call(abi.Op.DATA, 0, 0, read_memory(MEMORY_BYTES - 256, 256), h).payload == secret
    for ptr, length in ((MEMORY_BYTES - 256, 257), (0xFFFFFFF0, 0x20), (16, _U32 - 8)):
        vm = new_vm(h)
        with pytest.raises(VmFault) as info:
            vm.call(abi.Op.DATA, 0, 0, read_memory(ptr, length), h)
        assert info.value.status == abi.Status.ABI


def test_guest_lifts_the_egress_port_by_truncation_to_the_allow_list_only(
    new_vm: Callable[[HostCapabilities], MicroVm],
) -> None:
    """Port 9125 + 65536 becomes 9125 in the guest (canonical ABI): still allow-list checked."""
    sent = Sent()
    h = _host(KvStore(50, 4096), sent)
    vm = new_vm(h)
    vm.call(abi.Op.DATA, 0, 0, command(7, HOST_AT, 9, 9125 + 65536, KEY_AT, 1, 700), h)
    vm.call(abi.Op.DATA, 0, 0, command(7, HOST_AT, 9, 9126 + 65536, KEY_AT, 1, 700), h)
    assert vm.call(abi.Op.DATA, 0, 0, read_memory(700, 2), h).payload == b"\x01\x00"  # DENIED
    assert sent.datagrams == [(ALLOWED, b"k")]

