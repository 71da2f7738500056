"""The micro-VM tier through vmm.sandbox, with the real example plugins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import wasmtime
from _kvm_helpers import host
from _loop_ticks import loop_ticks

from plugins import build as plugin_build
from vmm.contract import DataEvent, Direction, VerdictKind
from vmm.microvm import tier
from vmm.microvm.tier import MicroVmFactory
from vmm.policy import Limits, SandboxSpec
from vmm.runner import Runner
from vmm.sandbox import FaultKind, PluginFault, PluginLoadError

pytestmark = pytest.mark.kvm


def _read(data: bytes, eos: bool = False) -> DataEvent:
    return DataEvent(Direction.READ, data, eos)


def _write(data: bytes) -> DataEvent:
    return DataEvent(Direction.WRITE, data, False)


async def _load(plugin: Path, config: str = "", **limits: int) -> MicroVmFactory:
    return await tier.load(
        SandboxSpec("lst", str(plugin), limits=Limits(**limits), plugin_config=config), pool_size=2
    )


@pytest.fixture(scope="module")
async def rewrite() -> AsyncIterator[MicroVmFactory]:
    f = await _load(plugin_build.build_core("rewrite"), "read=number,write=rot13")
    yield f
    await f.aclose()


async def test_rewrite_runs(rewrite: MicroVmFactory) -> None:
    assert rewrite.tier == "microvm"
    assert rewrite.imports == frozenset()
    s = await rewrite.new_sandbox(host())
    await s.open("lst", "read=number,write=rot13")
    assert (await s.on_data(_read(b"abc"))).data == b"1:abc"
    assert (await s.on_data(_write(b"hello"))).data == b"uryyb"
    assert (await s.on_data(_read(b"def"))).data == b"2:def"
    assert (await s.on_data(_read(b"x !close"))).kind is VerdictKind.CLOSE
    assert (await s.on_data(_read(b"!reset"))).kind is VerdictKind.RESET
    await s.close()
    await s.close()  # idempotent, never raises


async def test_every_connection_gets_a_fresh_vm(rewrite: MicroVmFactory) -> None:
    identities = []
    for _ in range(12):
        s = await rewrite.new_sandbox(host())
        await s.open("lst", "read=number,write=rot13")
        # a static counter in the plugin: a reused instance would say 2: or more
        assert (await s.on_data(_read(b"x"))).data == b"1:x"
        assert (await s.on_data(_read(b"y"))).data == b"2:y"
        identities.append(s.identity)
        await s.close()
    assert len(set(identities)) == len(identities)
    # the same KVM VM serves again only after a restore (a new incarnation)
    by_vm: dict[str, set[str]] = {}
    for ident in identities:
        serial, incarnation = ident.rsplit(".", 1)
        by_vm.setdefault(serial, set()).add(incarnation)
    assert sum(len(v) for v in by_vm.values()) == len(identities)


async def test_component_wrapping_a_core_module_loads() -> None:
    f = await _load(plugin_build.build("rewrite"))
    try:
        s = await f.new_sandbox(host())
        await s.open("lst", "")
        assert (await s.on_data(_read(b"shout"))).data == b"SHOUT"
        assert (await s.on_data(_write(b"keep"))).kind is VerdictKind.PASS
        await s.close()
    finally:
        await f.aclose()


async def test_large_chunk(rewrite: MicroVmFactory) -> None:
    s = await rewrite.new_sandbox(host())
    await s.open("lst", "read=number,write=rot13")
    data = b"abcdefgh" * 8192  # 64 KiB
    assert (await s.on_data(_write(data))).data == b"nopqrstu" * 8192
    await s.close()


@pytest.fixture(scope="module")
async def probe_kv() -> AsyncIterator[MicroVmFactory]:
    f = await _load(plugin_build.build_core("probe"), "call=kv")
    yield f
    await f.aclose()


async def test_granted_capability(probe_kv: MicroVmFactory) -> None:
    assert "kv" in probe_kv.imports
    h = host("kv")
    s = await probe_kv.new_sandbox(h)
    await s.open("lst", "call=kv")
    assert (await s.on_data(_read(b"a"))).data == b"kv=1\n"
    assert (await s.on_data(_read(b"b"))).data == b"kv=2\n"
    await s.close()


async def test_ungranted_capability_denied(probe_kv: MicroVmFactory) -> None:
    h = host("log")
    s = await probe_kv.new_sandbox(h)
    await s.open("lst", "call=kv")
    with pytest.raises(PluginFault) as info:
        await s.on_data(_read(b"a"))
    assert info.value.kind is FaultKind.DENIED
    assert h.denied == "kv"
    with pytest.raises(PluginFault):  # the connection's sandbox stays failed
        await s.on_data(_read(b"b"))
    await s.close()


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        ("mode=trap", FaultKind.TRAP),
        ("mode=loop", FaultKind.BUDGET),
        ("mode=grow", FaultKind.MEMORY),
    ],
)
async def test_faulty_plugin_ends_only_its_connection(config: str, kind: FaultKind) -> None:
    f = await _load(
        plugin_build.build_core("faulty"), config + ";after=2", memory_bytes=2 << 20, event_cpu_ms=30
    )
    try:
        s = await f.new_sandbox(host())
        await s.open("lst", config + ";after=2")
        assert (await s.on_data(_read(b"first"))).kind is VerdictKind.PASS
        with pytest.raises(PluginFault) as info:
            await s.on_data(_read(b"second"))
        assert info.value.kind is kind
        await s.close()
        # the next connection starts clean from the snapshot
        s2 = await f.new_sandbox(host())
        await s2.open("lst", config + ";after=2")
        assert (await s2.on_data(_read(b"first"))).kind is VerdictKind.PASS
        await s2.close()
    finally:
        await f.aclose()


async def test_bad_config_faults_at_first_hook() -> None:
    f = await _load(plugin_build.build_core("rewrite"), "read=nonsense")
    try:
        s = await f.new_sandbox(host())
        await s.open("lst", "read=nonsense")  # on-open runs with the next hook
        with pytest.raises(PluginFault) as info:
            await s.on_data(_read(b"x"))
        assert info.value.kind is FaultKind.TRAP
        await s.close()
    finally:
        await f.aclose()


async def test_wasi_plugin_logs_when_granted(caplog: pytest.LogCaptureFixture) -> None:
    f = await _load(plugin_build.build("wasi-log"))
    try:
        caplog.set_level("INFO", logger="lightcell.plugin")
        s = await f.new_sandbox(host("log", "clock"))
        await s.open("lst", "")
        assert (await s.on_data(_read(b"12345"))).kind is VerdictKind.PASS
        await s.close()
        assert "wasi-log: lst read 5 bytes" in caplog.text
        s = await f.new_sandbox(host())
        await s.open("lst", "")
        with pytest.raises(PluginFault) as info:
            await s.on_data(_read(b"12345"))
        assert info.value.kind is FaultKind.DENIED
        await s.close()
    finally:
        await f.aclose()


async def test_component_with_a_foreign_import_refused_naming_wasmtime(tmp_path: Path) -> None:
    # (componentize-py components run: tests/test_component_microvm.py)
    wat = (Path(__file__).resolve().parent / "components" / "two_modules.wat").read_text()
    path = tmp_path / "foreign.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat.replace("lightcell:filter/kv@0.1.0", "example:other/kv@1.0.0")))
    with pytest.raises(PluginLoadError, match="wasmtime"):
        await _load(path)


async def test_missing_plugin_refused(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError):
        await _load(tmp_path / "nope.wasm")


@pytest.mark.parametrize("value", ["abc", "0", "-3", "2000", ""])
def test_a_bad_pool_or_thread_count_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    for name in (tier.POOL_ENV, tier.THREADS_ENV):
        monkeypatch.setenv(name, value)
        with pytest.raises(PluginLoadError, match=rf"\${name}="):
            tier.env_count(name)
        monkeypatch.setenv(name, "7")
        assert tier.env_count(name) == 7
        monkeypatch.delenv(name)
        assert tier.env_count(name) == 4


async def test_a_short_event_runs_on_the_loop_thread_without_a_hand_off(rewrite: MicroVmFactory) -> None:
    s = await rewrite.new_sandbox(host())
    assert isinstance(s, Runner)
    await s.open("lst", "read=number,write=rot13")
    for i in range(1, 6):
        assert (await s.on_data(_read(b"abc"))).data == f"{i}:abc".encode()
    assert s.offloads == 0
    await s.close()


async def test_an_event_longer_than_the_inline_slice_finishes_on_the_vcpu_thread() -> None:
    """8 MB written byte by byte takes several ms: the call is preempted on the loop
    thread, resumed on the VM's vCPU thread, and answers exactly as if it had not moved."""
    f = await _load(plugin_build.build_core("faulty"), memory_bytes=32 << 20, event_cpu_ms=5000)
    try:
        size = 8_000_000
        s = await f.new_sandbox(host())
        assert isinstance(s, Runner)
        await s.open("lst", f"mode=replace;size={size}")
        verdict = await s.on_data(_read(b"go"))
        assert verdict.kind is VerdictKind.REPLACE and verdict.data == b"x" * size
        assert s.offloads == 1
        # The VM keeps working after the move (inline again for a short event).
        assert (await s.on_data(_read(b""))).kind is VerdictKind.PASS
        assert await s.close() is None
    finally:
        await f.aclose()


async def test_a_looping_plugin_does_not_hold_the_event_loop() -> None:
    """Inline work is bounded by the slice: while one plugin spins for its whole
    budget, the loop keeps serving (here: a ticking task and another sandbox)."""
    f = await _load(plugin_build.build_core("faulty"), event_cpu_ms=1500)
    try:
        bad = await f.new_sandbox(host())
        good = await f.new_sandbox(host())
        await bad.open("lst", "mode=loop")
        await good.open("lst", "mode=ok")
        async with loop_ticks(0.01) as ticks:
            spinning = asyncio.create_task(bad.on_data(_read(b"spin")))
            await asyncio.sleep(0.2)
            assert not spinning.done()  # still spinning on its vCPU thread ...
            assert ticks.count >= 5  # ... while the loop ran the ticker
        assert (await good.on_data(_read(b"still served"))).kind is VerdictKind.PASS
        with pytest.raises(PluginFault) as fault:
            await spinning
        assert fault.value.kind is FaultKind.BUDGET
        await bad.close()
        await good.close()
    finally:
        await f.aclose()


async def test_on_open_runs_once_in_the_snapshot_for_the_policys_arguments(rewrite: MicroVmFactory) -> None:
    """Without capabilities on-open depends only on (listener, config): the pool runs it
    once and snapshots after it, so a connection's first event is its only VM entry."""
    assert rewrite.pool.opened_with == ("lst", "read=number,write=rot13")
    s = await rewrite.new_sandbox(host())
    assert isinstance(s, Runner)
    vm = s._instance._lease.vm  # type: ignore[attr-defined]
    before = vm.exits
    await s.open("lst", "read=number,write=rot13")
    assert (await s.on_data(_read(b"abc"))).data == b"1:abc"  # on-open's config is in effect
    assert vm.exits == before + 1  # one entry: on-data alone
    await s.close()
    # Other arguments (tests do this; a session never does): on-open from the booted state.
    other = await rewrite.new_sandbox(host())
    await other.open("lst", "read=upper")
    assert (await other.on_data(_read(b"abc"))).data == b"ABC"
    # Not rot13: nothing of the opened state is left.
    assert (await other.on_data(_write(b"xyz"))).kind is VerdictKind.PASS
    await other.close()


async def test_an_on_open_that_fails_ahead_runs_per_connection() -> None:
    f = await _load(plugin_build.build_core("faulty"), "mode=bogus")  # on-open traps on bad config
    try:
        assert f.pool.opened_with is None
        s = await f.new_sandbox(host())
        await s.open("lst", "mode=bogus")
        with pytest.raises(PluginFault) as fault:
            await s.on_data(_read(b"x"))
        assert fault.value.kind is FaultKind.TRAP
        await s.close()
        ok = await f.new_sandbox(host())
        await ok.open("lst", "mode=ok")
        assert (await ok.on_data(_read(b"x"))).kind is VerdictKind.PASS
        await ok.close()
    finally:
        await f.aclose()


@pytest.mark.parametrize(("plugin", "config", "grants", "data"), [
    ("faulty", "mode=trap", (), b"x"),  # on-data: wasm trap: unreachable
    ("faulty", "mode=loop", (), b"x"),  # on-data: CPU budget of 50 ms exhausted
    ("faulty", "mode=bogus", (), b"x"),  # on-open traps on bad config
    ("probe", "call=kv", (), b"x"),  # on-data: capability 'kv' not granted
])  # fmt: skip
async def test_a_fault_reads_as_in_wasmtime(
    plugin: str, config: str, grants: tuple[str, ...], data: bytes
) -> None:
    """An operator reads the same fault line whichever tier ran the plugin: the hook, then
    what went wrong in wasmtime's words (not the guest's status and detail numbers)."""
    import vmm.wasmtime_tier as wt

    path = plugin_build.build_core(plugin)
    spec = SandboxSpec("lst", str(path), limits=Limits(event_cpu_ms=50), plugin_config=config)
    messages = {}
    for name, factory in (("microvm", await tier.load(spec, pool_size=1)), ("wasmtime", await wt.load(spec))):
        try:
            s = await factory.new_sandbox(host(*grants))
            await s.open("lst", config)
            with pytest.raises(PluginFault) as fault:
                await s.on_data(_read(data))
            messages[name] = (fault.value.kind, fault.value.message)
            await s.close()
        finally:
            await factory.aclose()
    assert messages["microvm"] == messages["wasmtime"], messages
