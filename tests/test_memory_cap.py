"""The listener's memory cap (`limits.memory_mb`) is the wasm memory's, exactly, in both tiers.

The same plugin (tests/wat/grow_pages.wat: `memory.grow(1)` until refused,
then reply with `memory.size`) runs in the wasmtime tier and the micro-VM
tier under several caps; both must stop at the cap's page count, neither
short of it nor past it (the micro-VM heap holds a runtime reserve beyond
the cap, which the wasm memory must not grow into). A module whose initial
memory is over the cap must fail to load in both tiers.

The micro-VM tier refuses such a module before booting it (with the
wasmtime tier's message); the guest enforces the cap on its own too, which
the last tests check below the tier: in a micro-VM booted directly from a
Layout (the cap reaches the guest in rdx) and in the host-native harness.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime
from _kvm_helpers import host

from devtools.native import NativeInstance, Status
from vmm import wasmtime_tier
from vmm.contract import DataEvent, Direction, VerdictKind
from vmm.kvm import System
from vmm.microvm import abi
from vmm.microvm import tier as microvm_tier
from vmm.microvm.compile import compile_plugin
from vmm.microvm.image import load_image
from vmm.microvm.layout import Layout
from vmm.microvm.machine import build_template
from vmm.microvm.vm import MicroVm, VmFault
from vmm.policy import Limits, SandboxSpec
from vmm.sandbox import PluginLoadError, SandboxFactory

WAT = Path(__file__).resolve().parent / "wat" / "grow_pages.wat"
WASM_PAGE = 64 * 1024
TIERS = ("wasmtime", "microvm")
MiB = 1 << 20
INITIAL = '(memory (export "memory") 1)'


def _wasm(tmp: Path, initial_pages: int = 1) -> Path:
    text = WAT.read_text()
    assert INITIAL in text
    path = tmp / f"grow_pages-{initial_pages}.wasm"
    path.write_bytes(wasmtime.wat2wasm(text.replace(INITIAL, f'(memory (export "memory") {initial_pages})')))
    return path


async def _load(tier: str, wasm: Path, memory_bytes: int) -> SandboxFactory:
    spec = SandboxSpec("cap", str(wasm), limits=Limits(memory_bytes=memory_bytes, event_cpu_ms=5000))
    if tier == "wasmtime":
        return await wasmtime_tier.load(spec)
    return await microvm_tier.load(spec, pool_size=1)


async def _pages_reached(tier: str, wasm: Path, memory_bytes: int) -> int:
    factory = await _load(tier, wasm, memory_bytes)
    try:
        sandbox = await factory.new_sandbox(host())
        try:
            await sandbox.open("cap", "")
            verdict = await sandbox.on_data(DataEvent(Direction.READ, b"grow", False))
        finally:
            await sandbox.close()
    finally:
        await factory.aclose()
    assert verdict.kind is VerdictKind.REPLACE, (tier, verdict)
    return int(verdict.data)


@pytest.mark.kvm
@pytest.mark.parametrize(
    "memory_bytes",
    [1 * MiB, 4 * MiB, 16 * MiB, 2 * MiB + WASM_PAGE // 2],  # the last: not a whole number of pages
    ids=["1MiB", "4MiB", "16MiB", "2MiB+32KiB"],
)
async def test_memory_grow_stops_exactly_at_the_cap(tmp_path: Path, memory_bytes: int) -> None:
    wasm = _wasm(tmp_path)
    reached = {tier: await _pages_reached(tier, wasm, memory_bytes) for tier in TIERS}
    cap = memory_bytes // WASM_PAGE
    assert reached == {tier: cap for tier in TIERS}, f"cap {cap} pages, reached {reached}"


@pytest.mark.kvm
@pytest.mark.parametrize("tier", TIERS)
async def test_initial_memory_over_the_cap_fails_to_load(tmp_path: Path, tier: str) -> None:
    """17 initial pages under a 1 MiB (16-page) cap: refused at load, naming memory."""
    with pytest.raises(PluginLoadError, match=rf"needs {17 * WASM_PAGE} bytes of memory at start, "
                                              rf"over the limit of {1 * MiB}"):
        factory = await _load(tier, _wasm(tmp_path, 17), 1 * MiB)
        await factory.aclose()


@pytest.mark.kvm
@pytest.mark.parametrize("tier", TIERS)
async def test_initial_memory_at_the_cap_loads(tmp_path: Path, tier: str) -> None:
    """Exactly the cap at start is allowed, and then no page more."""
    assert await _pages_reached(tier, _wasm(tmp_path, 16), 1 * MiB) == 16


# --- the guest's own enforcement, below the tier ------------------------------


def _boot(system: System, wasm: Path, root: Path, memory_bytes: int) -> tuple[MicroVm, VmFault | None]:
    compiled = compile_plugin(wasm, target="guest", root=root)
    template = build_template(load_image(compiled.image), Layout.for_memory_limit(memory_bytes))
    vm = MicroVm(system, template)
    try:
        vm.boot()
    except VmFault as e:
        vm.close()
        template.close()
        return vm, e
    return vm, None


@pytest.mark.kvm
def test_the_guest_refuses_memory_past_the_cap_it_boots_with(system: System, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    vm, fault = _boot(system, _wasm(tmp_path), cache, 1 * MiB)
    assert fault is None
    try:
        vm.call(abi.Op.OPEN, 1, 0, b"l")
        assert vm.call(abi.Op.DATA, 0, 0, b"grow").payload == b"16"
    finally:
        vm.close()
        vm.template.close()
    _, fault = _boot(system, _wasm(tmp_path, 17), cache, 1 * MiB)
    assert fault is not None and fault.status == abi.Status.MEMORY, fault


def test_the_native_harness_takes_a_memory_cap(tmp_path: Path) -> None:
    """The harness (tests, spec-test runner) passes the cap as boot does."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    lib = compile_plugin(_wasm(tmp_path), target="native", root=cache).image
    inst = NativeInstance(lib, None, heap_bytes=8 * MiB, memory_cap=2 * MiB)
    assert inst.init_result.status == Status.OK
    assert inst.open("l", "").status == Status.OK
    assert inst.data(0, b"grow").data == b"32"
    lib17 = compile_plugin(_wasm(tmp_path, 17), target="native", root=cache).image
    over = NativeInstance(lib17, None, heap_bytes=8 * MiB, memory_cap=1 * MiB)
    assert over.init_result.status == Status.MEMORY
    at = NativeInstance(lib17, None, heap_bytes=8 * MiB, memory_cap=17 * WASM_PAGE)
    assert at.init_result.status == Status.OK
