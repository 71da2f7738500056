"""One place classifies the wasmtime tier's faults (_faults.classify_failure),
from the call's own context only.

wasmtime-py keeps a host function's Python exception in a process-global slot
(`wasmtime._func.LAST_EXCEPTION`, `wasmtime.component._enter.LAST_EXCEPTION`)
and its own call wrappers re-raise whatever is there after *any* trap. With
sandboxes on several threads, another sandbox's host function can fill the
slot between this call's trap and its classification. The deterministic tests
put a foreign exception in the slot, as that other thread would, right
before a call that traps on its own; the threaded one races two sandboxes.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import wasmtime
import wasmtime._func
import wasmtime.component._enter
from _host_fakes import Sent

import vmm.wasmtime_tier as wt
from plugins import build as plugin_build
from vmm.capabilities import CapabilityDenied, CapabilityMisuse, HostCapabilities
from vmm.contract import DataEvent, Direction, Verdict
from vmm.kvstore import KvStore
from vmm.policy import Grants, Limits, SandboxSpec
from vmm.sandbox import FaultKind, PluginFault
from vmm.wasmtime_tier._context import CallContext
from vmm.wasmtime_tier._faults import AbiViolation, ProcExit, classify_failure

# on-data looks at its first byte: 't' traps, 'd' calls kv.delete (ungranted:
# DENIED), 'l' loops (BUDGET); anything else passes.
PLUGIN_WAT = """
(module
  (import "lightcell:filter/kv@0.1.0" "delete" (func $kv_delete (param i32 i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    global.get $heap
    local.set $p
    global.get $heap
    local.get 3
    i32.add
    global.set $heap
    local.get $p)
  (func (export "on-open") (param i32 i32 i32 i32))
  (func (export "on-data") (param $dir i32) (param $ptr i32) (param $len i32) (param $eos i32) (result i32)
    (global.set $heap (i32.const 4096))
    (if (i32.eqz (local.get $len)) (then (return (i32.const 16))))
    (if (i32.eq (i32.load8_u (local.get $ptr)) (i32.const 116)) (then unreachable))
    (if (i32.eq (i32.load8_u (local.get $ptr)) (i32.const 100))
      (then (call $kv_delete (i32.const 0) (i32.const 0))))
    (if (i32.eq (i32.load8_u (local.get $ptr)) (i32.const 108))
      (then (loop $forever (br $forever))))
    (i32.store8 (i32.const 16) (i32.const 0))
    i32.const 16)
  (func (export "on-close"))
)
"""


def _event(data: bytes) -> DataEvent:
    return DataEvent(Direction.READ, data, False)


def _host(spec: SandboxSpec) -> HostCapabilities:
    limits = spec.limits
    kv = KvStore(limits.kv_max_keys, limits.kv_max_value_bytes)
    return HostCapabilities(spec.listener, "p", spec.grants, limits, kv, Sent())


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "faults.wasm"
    path.write_bytes(wasmtime.wat2wasm(PLUGIN_WAT))
    return path


@pytest.fixture(autouse=True)
def _empty_slots() -> None:
    wasmtime._func.LAST_EXCEPTION = None
    wasmtime.component._enter.LAST_EXCEPTION = None


async def _fault_of(spec: SandboxSpec, data: bytes, foreign: Exception | None = None) -> FaultKind | None:
    factory = await wt.load(spec)
    try:
        sb = await factory.new_sandbox(_host(spec))
        await sb.open(spec.listener, "")
        if foreign is not None:  # another sandbox's host function, on another thread, just failed
            wasmtime._func.LAST_EXCEPTION = foreign
            wasmtime.component._enter.LAST_EXCEPTION = foreign
        try:
            assert await sb.on_data(_event(data)) == Verdict.pass_()
            return None
        except PluginFault as e:
            return e.kind
        finally:
            await sb.close()
    finally:
        await factory.aclose()


@pytest.mark.parametrize(
    ("data", "kind"),
    [(b"t", FaultKind.TRAP), (b"l", FaultKind.BUDGET), (b"d", FaultKind.DENIED)],
)
@pytest.mark.parametrize("foreign", [CapabilityDenied("egress"), CapabilityMisuse("kv"), ProcExit(3)])
async def test_a_core_fault_is_classified_from_its_own_call(
    plugin_path: Path, data: bytes, kind: FaultKind, foreign: Exception
) -> None:
    spec = SandboxSpec("l", str(plugin_path), Grants(), Limits(event_cpu_ms=20))
    assert await _fault_of(spec, data, foreign) is kind


async def test_a_component_fault_is_classified_from_its_own_call() -> None:
    """counter's on-open raises (a trap) on an unknown config; a foreign DENIED must not stick."""
    spec = SandboxSpec("l", str(plugin_build.build("counter")), Grants(frozenset({"kv"})), Limits())
    factory = await wt.load(spec)
    try:
        sb = await factory.new_sandbox(_host(spec))
        wasmtime.component._enter.LAST_EXCEPTION = CapabilityDenied("egress")
        with pytest.raises(PluginFault) as info:  # on-open may run with the first event
            await sb.open(spec.listener, "touch=bogus")
            await sb.on_data(DataEvent(Direction.WRITE, b"x", False))
        assert info.value.kind is FaultKind.TRAP, info.value
        await sb.close()
    finally:
        await factory.aclose()


def test_two_sandboxes_on_two_threads_each_get_their_own_kind(plugin_path: Path) -> None:
    """One thread's plugin traps plainly, the other's is denied a capability, many times over."""
    rounds = 150
    results: dict[str, list[FaultKind | None]] = {"t": [], "d": []}
    spec = SandboxSpec("l", str(plugin_path), Grants(), Limits())

    def worker(tag: str, start: threading.Barrier) -> None:
        async def run() -> None:
            factory = await wt.load(spec)
            try:
                start.wait()
                for _ in range(rounds):
                    sb = await factory.new_sandbox(_host(spec))
                    await sb.open("l", "")
                    for _ in range(4):
                        try:
                            await sb.on_data(_event(tag.encode()))
                            results[tag].append(None)
                        except PluginFault as e:
                            results[tag].append(e.kind)
                            break
                    await sb.close()
            finally:
                await factory.aclose()

        asyncio.run(run())

    start = threading.Barrier(2)
    threads = [threading.Thread(target=worker, args=(tag, start)) for tag in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["t"] == [FaultKind.TRAP] * rounds
    assert results["d"] == [FaultKind.DENIED] * rounds


# --- the classifier alone ------------------------------------------------------------

_TRAP = wasmtime.Trap("wasm trap: wasm `unreachable` instruction executed")


def _ctx(recorded: BaseException | None) -> CallContext:
    ctx = CallContext(host=None)  # type: ignore[arg-type]
    ctx.error = recorded
    return ctx


@pytest.mark.parametrize(
    ("recorded", "raised", "kind"),
    [
        (CapabilityDenied("kv"), wasmtime.Trap("python exception"), FaultKind.DENIED),
        (CapabilityMisuse("x"), wasmtime.Trap("python exception"), FaultKind.ABI),
        (AbiViolation("x"), wasmtime.Trap("python exception"), FaultKind.ABI),
        (ProcExit(0), wasmtime.Trap("python exception"), FaultKind.TRAP),
        (RuntimeError("bug"), wasmtime.Trap("python exception"), FaultKind.INTERNAL),
        (None, _TRAP, FaultKind.TRAP),
        (None, AbiViolation("verdict tag"), FaultKind.ABI),  # host code outside a host function
        (None, PluginFault(FaultKind.ABI, "x"), FaultKind.ABI),
    ],
)
def test_the_recorded_cause_decides(
    recorded: BaseException | None, raised: BaseException, kind: FaultKind
) -> None:
    assert classify_failure("on-data", raised, _ctx(recorded), None, 1 << 24).kind is kind


def test_a_nested_trap_recorded_by_a_host_function_keeps_its_code() -> None:
    """kv.get's cabi_realloc re-enters the plugin: its trap is the call's cause."""

    class Interrupted(wasmtime.Trap):
        @property
        def trap_code(self) -> wasmtime.TrapCode:
            return wasmtime.TrapCode.INTERRUPT

    fault = classify_failure(
        "on-data", wasmtime.Trap("python exception"), _ctx(Interrupted("interrupt")), None, 1 << 24
    )
    assert fault.kind is FaultKind.BUDGET


