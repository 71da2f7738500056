"""The wasmtime tier with real plugins (plugins/build.py) and WAT fixtures (tests/wat)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import wasmtime
from _host_fakes import Sent
from _loop_ticks import loop_ticks

import vmm.wasmtime_tier as wt
from plugins import build as plugin_build
from vmm.capabilities import HostCapabilities
from vmm.contract import DataEvent, Direction, Verdict, VerdictKind
from vmm.kvstore import KvStore
from vmm.metrics import METRICS
from vmm.policy import EgressTarget, Grants, Limits, SandboxSpec
from vmm.runner import Runner
from vmm.sandbox import FaultKind, PluginFault, PluginLoadError, Sandbox
from vmm.wasmtime_tier._budget import CallBudget
from vmm.wasmtime_tier._runner import INLINE_MAX_BUDGET_MS
from vmm.wasmtime_tier._warm import WARM_INSTANCES

WAT_DIR = Path(__file__).resolve().parent / "wat"

READ, WRITE = Direction.READ, Direction.WRITE
ALL = frozenset({"log", "clock", "random", "kv", "metadata", "egress"})


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lightcell-cache")


@pytest.fixture(scope="session")
def plugin() -> Callable[[str], Path]:
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = plugin_build.build(name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def wat(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    out = tmp_path_factory.mktemp("wat")

    def get(name: str) -> Path:
        path = out / f"{name}.wasm"
        if not path.exists():
            path.write_bytes(wasmtime.wat2wasm((WAT_DIR / f"{name}.wat").read_text()))
        return path

    return get


class Loaded:
    """A factory plus the per-listener state a session would own (kv store)."""

    def __init__(self, factory: wt.WasmtimeFactory, spec: SandboxSpec, name: str) -> None:
        self.factory, self.spec, self.name = factory, spec, name
        self.kv = KvStore(spec.limits.kv_max_keys, spec.limits.kv_max_value_bytes)
        self.sent = Sent()

    def host(self) -> HostCapabilities:
        return HostCapabilities(
            self.spec.listener, self.name, self.spec.grants, self.spec.limits, self.kv, self.sent
        )

    async def sandbox(self, config: str = "") -> Sandbox:
        sb = await self.factory.new_sandbox(self.host())
        await sb.open(self.spec.listener, config)
        return sb


LoadFn = Callable[..., Awaitable[Loaded]]
PathFn = Callable[[str], Path]


@pytest.fixture
async def load(cache: Path) -> AsyncIterator[LoadFn]:
    opened: list[wt.WasmtimeFactory] = []

    async def _load(
        path: Path,
        grants: frozenset[str] = frozenset(),
        egress: frozenset[EgressTarget] = frozenset(),
        listener: str = "test-listener",
        **limits: int,
    ) -> Loaded:
        spec = SandboxSpec(listener, str(path), Grants(grants, egress), Limits(**limits))
        factory = await wt.load(spec, cache)
        opened.append(factory)
        return Loaded(factory, spec, path.stem)

    yield _load
    for f in opened:
        await f.aclose()


def ev(data: bytes, direction: Direction = READ, eos: bool = False) -> DataEvent:
    return DataEvent(direction, data, eos)


# --- real plugins ---------------------------------------------------------------


async def test_rewrite_both_ways_on_the_core_path(load: LoadFn, plugin: PathFn) -> None:
    p = await load(plugin("rewrite"))
    assert p.factory.path == "core"  # a component wrapping one core module is unwrapped
    assert p.factory.tier == "wasmtime"
    assert p.factory.imports == frozenset()
    sb = await p.sandbox("read=upper,write=rot13")
    assert await sb.on_data(ev(b"hello")) == Verdict.replace(b"HELLO")
    assert await sb.on_data(ev(b"hello", WRITE)) == Verdict.replace(b"uryyb")
    assert (await sb.on_data(ev(b"x !close"))).kind is VerdictKind.CLOSE
    assert (await sb.on_data(ev(b"x !reset", WRITE))).kind is VerdictKind.RESET
    big = bytes(range(256)) * 256
    out = await sb.on_data(ev(big, WRITE))
    assert (
        out.output(big)
        == bytes(range(256)).translate(
            bytes.maketrans(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                b"nopqrstuvwxyzabcdefghijklmNOPQRSTUVWXYZABCDEFGHIJKLM",
            )
        )
        * 256
    )
    await sb.close()


async def test_each_sandbox_starts_fresh(load: LoadFn, plugin: PathFn) -> None:
    p = await load(plugin("rewrite"))
    identities = set()
    for _ in range(3):
        sb = await p.sandbox("read=number,write=pass")
        identities.add(sb.identity)
        assert (await sb.on_data(ev(b"a"))).data == b"1:a"
        assert (await sb.on_data(ev(b"b"))).data == b"2:b"
        await sb.close()
    assert len(identities) == 3


@pytest.mark.parametrize(
    ("mode", "kind"), [("trap", FaultKind.TRAP), ("loop", FaultKind.BUDGET), ("grow", FaultKind.MEMORY)]
)
async def test_faults_are_classified_and_poison_only_their_sandbox(
    load: LoadFn, plugin: PathFn, mode: str, kind: FaultKind
) -> None:
    p = await load(plugin("faulty"), event_cpu_ms=20, memory_bytes=4 * 1024 * 1024)
    bad = await p.sandbox(f"mode={mode};after=2")
    good = await p.sandbox("mode=ok")
    assert (await bad.on_data(ev(b"first"))).kind is VerdictKind.PASS
    with pytest.raises(PluginFault) as fault:
        await bad.on_data(ev(b"second"))
    assert fault.value.kind is kind
    with pytest.raises(PluginFault) as again:  # poisoned: the plugin does not run again
        await bad.on_data(ev(b"third"))
    assert again.value.kind is kind and "poisoned" in again.value.message
    assert isinstance(bad, Runner) and bad.fault is fault.value
    assert await bad.close() is None  # skips on-close, never raises
    assert (await good.on_data(ev(b"still here"))).kind is VerdictKind.PASS
    assert await good.close() is None
    # Counting and logging faults is the session's job (one place): tests/test_session.py.


async def test_ungranted_capability_is_denied_and_counted(load: LoadFn, plugin: PathFn) -> None:
    p = await load(plugin("probe"), grants=frozenset({"log"}), listener="deny-listener")
    assert p.factory.imports == ALL | {"connection"}
    labels = {"listener": "deny-listener", "plugin": "probe", "capability": "kv"}
    before = METRICS.get("capability_denied_total", **labels)
    sb = await p.sandbox("call=kv")
    with pytest.raises(PluginFault) as fault:
        await sb.on_data(ev(b"x"))
    assert fault.value.kind is FaultKind.DENIED
    assert METRICS.get("capability_denied_total", **labels) == before + 1
    ok = await p.sandbox("call=log")
    assert (await ok.on_data(ev(b"x"))).data == b"log=ok\n"
    for s in (sb, ok):
        await s.close()


@pytest.mark.parametrize(
    ("cap", "prefix"),
    [("clock", b"clock="), ("random", b"random="), ("metadata", b"metadata=ok\n"), ("none", b"none=ok\n")],
)
async def test_granted_capabilities_work(load: LoadFn, plugin: PathFn, cap: str, prefix: bytes) -> None:
    p = await load(plugin("probe"), grants=ALL)
    sb = await p.sandbox(f"call={cap}")
    host_out = await sb.on_data(ev(b"x"))
    assert host_out.data.startswith(prefix)
    await sb.close()


async def test_kv_is_shared_by_the_sandboxes_of_one_factory(load: LoadFn, plugin: PathFn) -> None:
    p = await load(plugin("probe"), grants=frozenset({"kv"}))
    a, b = await p.sandbox("call=kv"), await p.sandbox("call=kv")
    assert (await a.on_data(ev(b"x"))).data == b"kv=1\n"
    assert (await b.on_data(ev(b"x"))).data == b"kv=2\n"  # also proves kv.get's list came back
    assert (await a.on_data(ev(b"x"))).data == b"kv=3\n"
    for s in (a, b):
        await s.close()


async def test_egress_allow_list(load: LoadFn, plugin: PathFn) -> None:
    allowed = EgressTarget("127.0.0.1", 9125)
    p = await load(plugin("probe"), grants=frozenset({"egress"}), egress=frozenset({allowed}))
    ok = await p.sandbox("call=egress:127.0.0.1:9125")
    assert (await ok.on_data(ev(b"ping"))).data == b"egress=ok\n"
    assert p.sent.datagrams == [(allowed, b"ping")]
    refused = await p.sandbox("call=egress:10.0.0.1:53")
    assert (await refused.on_data(ev(b"ping"))).data == b"egress=err0\n"  # send-error.denied
    assert len(p.sent.datagrams) == 1
    for s in (ok, refused):
        await s.close()


async def test_wasi_preview1_subset(load: LoadFn, plugin: PathFn, caplog: pytest.LogCaptureFixture) -> None:
    p = await load(plugin("wasi-log"), grants=frozenset({"log", "clock"}), listener="wasi-l")
    assert p.factory.imports == frozenset({"log", "clock"})
    sb = await p.sandbox()
    with caplog.at_level(logging.INFO, logger="lightcell.plugin"):
        assert (await sb.on_data(ev(b"abc"))).kind is VerdictKind.PASS
    assert any("wasi-log: wasi-l read 3 bytes" in r.getMessage() for r in caplog.records)
    await sb.close()
    no_log = await load(plugin("wasi-log"), grants=frozenset({"clock"}))
    sb = await no_log.sandbox()
    with pytest.raises(PluginFault) as fault:
        await sb.on_data(ev(b"abc"))
    assert fault.value.kind is FaultKind.DENIED
    await sb.close()


async def test_python_counter_component_end_to_end(load: LoadFn, plugin: PathFn) -> None:
    p = await load(plugin("counter"), grants=frozenset({"kv"}))
    assert p.factory.path == "component"
    assert "kv" in p.factory.imports
    a = await p.sandbox()
    assert await a.on_data(ev(b"up", READ)) == Verdict.pass_()
    assert (await a.on_data(ev(b"one", WRITE))).data == b"[conn 1 chunk 1] one"
    assert (await a.on_data(ev(b"two", WRITE))).data == b"[conn 1 chunk 2] two"
    b = await p.sandbox()
    assert (await b.on_data(ev(b"x", WRITE))).data == b"[conn 2 chunk 1] x"
    big = bytes(range(256)) * 256  # 64 KiB through the fast list<u8> conversion, both ways
    assert (await b.on_data(ev(big, WRITE))).data == b"[conn 2 chunk 2] " + big
    assert (await b.on_data(ev(b"", WRITE, eos=True))) == Verdict.pass_()
    for s in (a, b):
        await s.close()
    denied = await load(plugin("counter"))  # no kv grant: on-open's increment is refused
    sandbox = await denied.sandbox()  # on-open is deferred to the first event ...
    with pytest.raises(PluginFault) as fault:
        await sandbox.on_data(ev(b"x", WRITE))  # ... which raises its fault
    assert fault.value.kind is FaultKind.DENIED


async def test_component_replacement_over_the_output_cap_is_an_abi_fault(
    load: LoadFn, plugin: PathFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The component path refuses a replacement by its length, as the core path does
    (the cap is lowered here: a real 8 MiB list<u8> through wasmtime's lifting is slow)."""
    from vmm.wasmtime_tier import _component_bytes

    monkeypatch.setattr(_component_bytes, "MAX_OUTPUT_BYTES", 1000)
    p = await load(plugin("counter"), grants=frozenset({"kv"}))
    sb = await p.sandbox()
    prefix = b"[conn 1 chunk 1] "
    assert (await sb.on_data(ev(b"a" * (1000 - len(prefix)), WRITE))).data == prefix + b"a" * 983
    with pytest.raises(PluginFault) as fault:
        await sb.on_data(ev(b"b" * 1000, WRITE))
    assert fault.value.kind is FaultKind.ABI and "maximum output per event" in fault.value.message
    await sb.close()


async def test_a_looping_plugin_does_not_stall_other_sandboxes(load: LoadFn, plugin: PathFn) -> None:
    p = await load(plugin("faulty"), event_cpu_ms=2000)
    looping = await p.sandbox("mode=loop")
    other = await p.sandbox("mode=ok")
    stuck = asyncio.create_task(looping.on_data(ev(b"spin")))
    await asyncio.sleep(0)
    for i in range(20):
        assert (await other.on_data(ev(b"%d" % i))).kind is VerdictKind.PASS
    assert not stuck.done()  # 20 answers while the loop still holds its worker
    with pytest.raises(PluginFault) as fault:
        await stuck
    assert fault.value.kind is FaultKind.BUDGET
    for s in (looping, other):
        await s.close()


async def test_a_fast_plugin_runs_on_the_loop_thread(load: LoadFn, plugin: PathFn) -> None:
    p = await load(plugin("faulty"))  # mode=ok: microseconds per hook
    loop_thread = threading.get_ident()
    ran_on: list[int] = []
    sb = await p.sandbox("mode=ok")
    assert isinstance(sb, Runner)
    instance = sb._instance
    real = instance.on_data

    def spy(event: DataEvent) -> Verdict:
        ran_on.append(threading.get_ident())
        return real(event)

    instance.on_data = spy  # type: ignore[method-assign]
    for _ in range(5):
        assert (await sb.on_data(ev(b"x"))).kind is VerdictKind.PASS
    # An instance made ahead, or the first entry creating it on a worker; then inline.
    assert ran_on[1:] == [loop_thread] * 4
    assert p.factory.inline_gate.open
    await sb.close()


async def test_a_slow_hook_moves_its_listener_off_the_loop_for_good(load: LoadFn, plugin: PathFn) -> None:
    """A wasmtime call cannot be moved once started: the gate lets a plugin hold the
    loop at most once per listener, for one budget, then runs it on the pool."""
    p = await load(plugin("faulty"), event_cpu_ms=50, memory_bytes=32 << 20)
    assert p.factory.inline_gate.open
    slow = await p.sandbox("mode=loop;after=2")
    assert (await slow.on_data(ev(b"first"))).kind is VerdictKind.PASS  # instantiated on a worker
    with pytest.raises(PluginFault) as fault:
        await slow.on_data(ev(b"spin"))  # inline: this one held the loop for its budget
    assert fault.value.kind is FaultKind.BUDGET
    assert not p.factory.inline_gate.open
    await slow.close()
    # From now on a looping sandbox of this listener spins on a worker thread.
    again = await p.sandbox("mode=loop;after=2")
    assert (await again.on_data(ev(b"first"))).kind is VerdictKind.PASS
    async with loop_ticks() as ticks:
        with pytest.raises(PluginFault):
            await again.on_data(ev(b"spin"))
    assert ticks.count >= 3  # the loop kept running while the plugin spun
    await again.close()


def warm_ready(factory: object) -> tuple[object, ...]:
    warm = getattr(factory, "warm", None)
    return warm.ready if warm is not None else ()


async def test_connections_take_instances_made_ahead_each_used_once(load: LoadFn, plugin: PathFn) -> None:
    p = await load(plugin("faulty"))
    for _ in range(200):  # the pool fills on a worker thread
        if len(warm_ready(p.factory)) == WARM_INSTANCES:
            break
        await asyncio.sleep(0.01)
    assert len(warm_ready(p.factory)) == WARM_INSTANCES
    ready = set(map(id, warm_ready(p.factory)))
    sandboxes = [await p.sandbox("mode=ok") for _ in range(3)]
    used = [id(s._instance) for s in sandboxes if isinstance(s, Runner)]
    assert len(set(used)) == 3 and set(used) <= ready  # three distinct instances from the pool
    for s in sandboxes:
        assert (await s.on_data(ev(b"x"))).kind is VerdictKind.PASS
        await s.close()
    assert not set(used) & set(map(id, warm_ready(p.factory)))  # never handed out again


async def test_start_code_that_needs_capabilities_runs_with_the_connections(
    load: LoadFn, wat: PathFn
) -> None:
    """Instances are made ahead without capabilities; a plugin whose _initialize calls
    one is instantiated per connection instead, with that connection's grants."""
    p = await load(wat("init_uses_kv"), grants=frozenset({"kv"}))
    outputs = []
    for _ in range(3):
        sb = await p.sandbox()
        outputs.append((await sb.on_data(ev(b"x"))).data)
        await sb.close()
    assert outputs == [b"1", b"2", b"3"]  # each start code ran once, on this listener's kv
    assert not warm_ready(p.factory)
    denied = await load(wat("init_uses_kv"))
    sb = await denied.sandbox()
    with pytest.raises(PluginFault) as fault:
        await sb.on_data(ev(b"x"))
    assert fault.value.kind is FaultKind.DENIED


async def test_a_slow_on_open_shuts_the_gate_too(load: LoadFn, wat: PathFn) -> None:
    """on-open of an instance made ahead runs inline with the first event: it is timed."""
    p = await load(wat("slow_open"), event_cpu_ms=100)
    sb = await p.sandbox()
    assert (await sb.on_data(ev(b"x"))).kind is VerdictKind.PASS
    assert not p.factory.inline_gate.open
    await sb.close()


async def test_a_call_queued_before_release_never_runs_plugin_code(load: LoadFn, plugin: PathFn) -> None:
    p = await load(plugin("faulty"))
    sb = await p.sandbox("mode=ok")
    assert isinstance(sb, Runner)
    instance = sb._instance
    ran: list[str] = []
    assert instance.release() is None  # nothing running: released at once
    with pytest.raises(PluginFault) as fault:
        instance.submit(lambda: ran.append("plugin code")).result(10)
    assert fault.value.kind is FaultKind.INTERNAL and "released" in fault.value.message
    assert ran == []


async def test_a_large_budget_never_runs_inline(load: LoadFn, plugin: PathFn) -> None:
    p = await load(plugin("faulty"), event_cpu_ms=INLINE_MAX_BUDGET_MS + 1)
    assert not p.factory.inline_gate.open


# --- WAT fixtures: edge cases real plugins never produce ---------------------------


async def test_wat_plugin_runs_and_reports_imports(load: LoadFn, wat: PathFn) -> None:
    p = await load(wat("multi"))
    assert p.factory.path == "core"
    assert p.factory.imports == ALL
    sb = await p.sandbox("u")
    assert await sb.on_data(ev(b"abc")) == Verdict.replace(b"ABC")
    assert await sb.on_data(ev(b"abc", WRITE)) == Verdict.pass_()
    assert (await sb.on_data(ev(b"", eos=True))).data == b""
    await sb.close()


async def test_kv_get_allocates_the_list_in_the_guest(load: LoadFn, wat: PathFn) -> None:
    p = await load(wat("multi"), grants=frozenset({"kv"}))
    setter = await p.sandbox("Skey")
    assert (await setter.on_data(ev(b"stored value"))).kind is VerdictKind.PASS
    getter = await p.sandbox("Gkey")
    assert (await getter.on_data(ev(b"x"))).data == b"stored value"
    missing = await p.sandbox("Gother")
    assert (await missing.on_data(ev(b"x"))).data == b"none"
    for s in (setter, getter, missing):
        await s.close()


async def test_host_refusing_a_granted_call_is_an_abi_fault(load: LoadFn, wat: PathFn) -> None:
    p = await load(wat("multi"), grants=frozenset({"kv"}), kv_max_value_bytes=4)
    sb = await p.sandbox("Skey")
    assert (await sb.on_data(ev(b"tiny"))).kind is VerdictKind.PASS
    with pytest.raises(PluginFault) as fault:  # kv.set over the value limit: CapabilityMisuse
        await sb.on_data(ev(b"too large"))
    assert fault.value.kind is FaultKind.ABI
    await sb.close()


@pytest.mark.parametrize("config", ["b", "o", "O", "v"])
async def test_malicious_return_values_are_abi_faults(load: LoadFn, wat: PathFn, config: str) -> None:
    # b: return area out of bounds; o: ptr+len past the end; O: ptr+len wraps u32; v: bad tag
    p = await load(wat("multi"))
    sb = await p.sandbox(config)
    with pytest.raises(PluginFault) as fault:
        await sb.on_data(ev(b"x"))
    assert fault.value.kind is FaultKind.ABI
    await sb.close()


async def test_wat_egress_and_memory_cap(load: LoadFn, wat: PathFn) -> None:
    p = await load(
        wat("multi"),
        grants=frozenset({"egress"}),
        egress=frozenset({EgressTarget("127.0.0.1", 9125)}),
        memory_bytes=2 * 1024 * 1024,
    )
    ok = await p.sandbox("e127.0.0.1")
    assert (await ok.on_data(ev(b"d"))).data == b"ok"
    refused = await p.sandbox("e10.1.1.1")
    assert (await refused.on_data(ev(b"d"))).data == b"err0"
    grow = await p.sandbox("g")
    with pytest.raises(PluginFault) as fault:
        await grow.on_data(ev(b"d"))
    assert fault.value.kind is FaultKind.MEMORY
    for s in (ok, refused, grow):
        await s.close()


async def test_wasi_proc_exit_random_and_clock(
    load: LoadFn, wat: PathFn, caplog: pytest.LogCaptureFixture
) -> None:
    p = await load(wat("wasi"), grants=frozenset({"log", "clock", "random"}))
    assert p.factory.imports == frozenset({"log", "clock", "random"})
    for config in ("c", "r"):
        sb = await p.sandbox(config)
        with caplog.at_level(logging.INFO, logger="lightcell.plugin"):
            assert (await sb.on_data(ev(b"line one\nline two"))).kind is VerdictKind.PASS
        await sb.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("line one") for m in messages) and any(m.endswith("line two") for m in messages)
    ex = await p.sandbox("x")
    with pytest.raises(PluginFault) as fault:
        await ex.on_data(ev(b"bye"))
    assert fault.value.kind is FaultKind.TRAP and "proc_exit(3)" in fault.value.message
    await ex.close()


async def test_load_errors(load: LoadFn, wat: PathFn, tmp_path: Path) -> None:
    bad = tmp_path / "garbage.wasm"
    bad.write_bytes(b"\0asm\x01\0\0\0\x01\xff\xff")
    with pytest.raises(PluginLoadError, match="malformed"):
        await load(bad)
    not_wasm = tmp_path / "text.wasm"
    not_wasm.write_bytes(b"hello world")
    with pytest.raises(PluginLoadError, match="malformed"):
        await load(not_wasm)
    with pytest.raises(PluginLoadError, match="cannot read"):
        await load(tmp_path / "missing.wasm")
    with pytest.raises(PluginLoadError, match="fd_read"):
        await load(wat("bad_wasi_import"))
    with pytest.raises(PluginLoadError, match="on-close") as missing:
        await load(wat("bad_exports"))
    assert "on-data" in str(missing.value)
    with pytest.raises(PluginLoadError, match="memory"):
        await load(wat("multi"), memory_bytes=1024)
    with pytest.raises(PluginLoadError, match="2 memories"):
        await load(wat("two_memories"))


async def test_compiled_module_is_cached_on_disk(wat: PathFn, tmp_path: Path) -> None:
    spec = SandboxSpec("l", str(wat("multi")))
    first = await wt.load(spec, tmp_path)
    entries = sorted(tmp_path.glob("*.cwasm"))
    assert len(entries) == 1
    stamp = entries[0].stat().st_mtime_ns
    second = await wt.load(spec, tmp_path)
    assert sorted(tmp_path.glob("*.cwasm")) == entries and entries[0].stat().st_mtime_ns == stamp
    for f in (first, second):
        await f.aclose()


def test_cache_dir_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTCELL_CACHE", "/somewhere")
    assert wt.cache_dir() == Path("/somewhere")
    monkeypatch.delenv("LIGHTCELL_CACHE")
    assert wt.cache_dir() == Path.home() / ".cache" / "lightcell"


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    yield
    from vmm.wasmtime_tier._engine import ticker

    assert not ticker.running  # every factory closed: the epoch ticker stopped


# --- WASI 0.2 of components is gated by the grants ------------------------------


async def test_python_component_runs_with_only_kv_and_no_wasi_denial(load: LoadFn, plugin: PathFn) -> None:
    """componentize-py reseeds `random` on its first call: served (zeros) without a denial."""
    p = await load(plugin("counter"), grants=frozenset({"kv"}), listener="kv-only")
    labels = [{"listener": "kv-only", "plugin": "counter", "capability": c} for c in ("clock", "random")]
    before = [METRICS.get("capability_denied_total", **lb) for lb in labels]
    for conn in (1, 2):
        sb = await p.sandbox()
        assert (await sb.on_data(ev(b"hi", WRITE))).data == b"[conn %d chunk 1] hi" % conn
        await sb.close()
    assert [METRICS.get("capability_denied_total", **lb) for lb in labels] == before


@pytest.mark.parametrize(("touch", "cap"), [("clock", "clock"), ("monotonic", "clock"), ("random", "random")])
async def test_component_wasi_clock_and_random_need_their_grant(
    load: LoadFn, plugin: PathFn, touch: str, cap: str
) -> None:
    p = await load(plugin("counter"), grants=frozenset({"kv"}), listener="wasi-deny")
    labels = {"listener": "wasi-deny", "plugin": "counter", "capability": cap}
    before = METRICS.get("capability_denied_total", **labels)
    sb = await p.sandbox(f"touch={touch}")
    with pytest.raises(PluginFault) as fault:
        await sb.on_data(ev(b"x", WRITE))
    assert fault.value.kind is FaultKind.DENIED
    assert cap in str(fault.value)
    assert METRICS.get("capability_denied_total", **labels) == before + 1
    await sb.close()

    granted = await load(plugin("counter"), grants=frozenset({"kv", cap}), listener="wasi-grant")
    ok = await granted.sandbox(f"touch={touch}")
    out = (await ok.on_data(ev(b"x", WRITE))).data
    assert out.startswith(b"touch=") and out.endswith(b"\n")
    value = out[len(b"touch=") : -1].decode()
    if touch == "random":
        assert len(value) == 16 and int(value, 16) >= 0
    else:
        assert int(value) > 0
    await ok.close()


async def test_component_random_after_open_is_real_only_with_the_grant(load: LoadFn, plugin: PathFn) -> None:
    """With the grant, two connections draw different bytes (real randomness, not zeros)."""
    p = await load(plugin("counter"), grants=frozenset({"kv", "random"}))
    seen = set()
    for _ in range(2):
        sb = await p.sandbox("touch=random")
        seen.add((await sb.on_data(ev(b"x", WRITE))).data)
        await sb.close()
    assert len(seen) == 2 and b"touch=0000000000000000\n" not in seen


def test_component_socket_constructors_are_always_shadowed(plugin: PathFn) -> None:
    """Every wasi:sockets way to a socket or a network handle is replaced by a denying stub,
    whatever the grants (no OS socket is ever created)."""
    from wasmtime.component import Component

    from vmm.wasmtime_tier import _component
    from vmm.wasmtime_tier._engine import engine

    component = Component.from_file(engine(), plugin("counter"))
    gate = _component._WasiGate(component)
    imported = {n.split("@")[0] for n in component.type.imports(engine())}
    sockets = {
        "wasi:sockets/tcp-create-socket": "create-tcp-socket",
        "wasi:sockets/udp-create-socket": "create-udp-socket",
        "wasi:sockets/instance-network": "instance-network",
    }
    for iface, func in sockets.items():
        assert iface in imported
        [(cap, funcs)] = [v for n, v in gate.functions.items() if n.startswith(iface + "@")]
        assert cap == "sockets" and func in funcs

    class Spy:
        def __init__(self) -> None:
            self.shadowed: list[str] = []

        def root(self) -> Spy:
            return self

        def add_instance(self, name: str) -> Spy:
            self.shadowed.append(name.split("@")[0])
            return self

        def add_func(self, name: str, fn: object) -> None:
            pass

        def __enter__(self) -> Spy:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    for grants in (frozenset(), frozenset({"clock", "random", "kv"})):
        spy = Spy()
        gate.define(spy, grants)  # type: ignore[arg-type]
        assert set(sockets) <= set(spy.shadowed)
        clocks = {n for n in spy.shadowed if n.startswith("wasi:clocks/")}
        if "clock" in grants:
            # Granted: wall-clock reads go through the host (recorded as `clock` host
            # calls, test_wasip2); wasmtime keeps the monotonic clock (its pollables).
            assert clocks == {"wasi:clocks/wall-clock"}
        else:
            assert clocks == {"wasi:clocks/wall-clock", "wasi:clocks/monotonic-clock"}


def test_the_budget_counts_the_threads_cpu_time_not_wall_time() -> None:
    """The same meaning as the micro-VM tier's watchdog: waiting (for a core, the GIL)
    costs no budget; running does."""
    budget = CallBudget(0.05)
    time.sleep(0.1)  # twice the budget of wall time, almost no CPU
    assert budget.ticks_left() > 0
    end = time.thread_time() + 0.06
    while time.thread_time() < end:  # burn more than the budget
        pass
    assert budget.ticks_left() == 0


async def test_a_looping_plugin_is_stopped_by_its_cpu_budget(load: LoadFn, plugin: PathFn) -> None:
    p = await load(plugin("faulty"), event_cpu_ms=30)
    sb = await p.sandbox("mode=loop")
    with pytest.raises(PluginFault) as fault:
        await sb.on_data(ev(b"spin"))
    assert fault.value.kind is FaultKind.BUDGET
    assert "CPU budget of 30 ms exhausted" in fault.value.message  # the per-thread CPU check ended it
    await sb.close()
