"""http-filter plugins as real components (componentize-py) in the wasmtime tier: the guard
example (plugins/examples/guard, written with lightcell_sdk) and a raw-bindings test plugin that
misbehaves on request (tests/http_plugins/misbehave_py), through the synchronous instance and
vmm.runner.HttpRunner. Both are built from source here (cached for guard)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from _host_fakes import Sent

import vmm.wasmtime_tier as wt
from plugins import build as plugin_build
from vmm.capabilities import HostCapabilities
from vmm.contract import DecisionKind, HttpPhase
from vmm.http_abi import Header, HeaderMutation, HttpDecision
from vmm.kvstore import KvStore
from vmm.metrics import METRICS
from vmm.policy import Grants, Limits, SandboxSpec
from vmm.runner import HttpRunner
from vmm.sandbox import FaultKind, PluginFault, PluginLoadError
from vmm.wasmtime_tier._http_component import HttpComponentInstance

HERE = Path(__file__).resolve().parent
CONTINUE = HttpDecision(DecisionKind.CONTINUE)
GET = [Header(":method", b"GET"), Header(":path", b"/shop/cart?id=1"), Header("x-guard-debug", b"1")]
STATUS_200 = [Header(":status", b"200"), Header("content-type", b"text/plain")]


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lightcell-http-component-cache")


@pytest.fixture(scope="session")
def guard() -> Path:
    return plugin_build.build("guard")


@pytest.fixture(scope="session")
def misbehave(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("http-py") / "misbehave.wasm"
    return plugin_build.componentize_python(HERE / "http_plugins" / "misbehave_py", "app", "http-filter", out)


class Loaded:
    def __init__(self, factory: wt.HttpFactory, spec: SandboxSpec) -> None:
        self.factory, self.spec = factory, spec
        self.kv = KvStore(spec.limits.kv_max_keys, spec.limits.kv_max_value_bytes)

    def host(self) -> HostCapabilities:
        name = Path(self.spec.plugin_path).stem
        return HostCapabilities(self.spec.listener, name, self.spec.grants, self.spec.limits, self.kv, Sent())

    def instance(self, config: str = "") -> HttpComponentInstance:
        """A fresh synchronous instance, on-open done."""
        i = self.factory.new_instance(self.host())
        assert isinstance(i, HttpComponentInstance)
        i.open(self.spec.listener, config)
        return i

    async def runner(self, config: str = "") -> HttpRunner:
        r = await self.factory.new_sandbox(self.host())
        await r.open(self.spec.listener, config)
        return r


LoadFn = Callable[..., Awaitable[Loaded]]


@pytest.fixture
async def load(cache: Path) -> AsyncIterator[LoadFn]:
    opened: list[wt.HttpFactory] = []

    async def _load(
        path: Path, grants: frozenset[str] = frozenset(), listener: str = "http-component", **limits: int
    ) -> Loaded:
        spec = SandboxSpec(listener, str(path), Grants(grants), Limits(**limits))
        factory = await wt.load_http(spec, cache)
        opened.append(factory)
        return Loaded(factory, spec)

    yield _load
    for f in opened:
        await f.aclose()


async def _fault(r: HttpRunner, headers: list[Header] = GET) -> PluginFault:
    with pytest.raises(PluginFault) as fault:
        await r.request_headers(headers, [], False)
    await r.close()
    return fault.value


# --- the guard example (lightcell_sdk) ---------------------------------------------------


async def test_guard_adds_headers_both_ways(load: LoadFn, guard: Path) -> None:
    p = await load(guard)
    assert (p.factory.tier, p.factory.path) == ("wasmtime", "component")
    # Derived by the SDK from the hooks the Filter overrides.
    assert p.factory.phases == HttpPhase.REQUEST_HEADERS | HttpPhase.RESPONSE_HEADERS
    r = await p.runner("block=/admin,/private")
    assert r.phases == p.factory.phases
    d = await r.request_headers(GET, [("request.path", "/shop/cart")], False)
    assert d == HttpDecision(
        DecisionKind.MODIFY,
        headers=HeaderMutation(set=(Header("x-guard", b"checked"),), remove=("x-guard-debug",)),
    )
    assert await r.request_body(b"not asked for", True) == CONTINUE
    d = await r.response_headers(STATUS_200, [("response.code", "200")], False)
    assert d.headers.set == (Header("x-guard", b"on"), Header("x-guard-hooks", b"2"))
    assert await r.close() is None
    # componentize-py's slow first call (on-open, always on a worker) leaves the gate open.
    assert p.factory.inline_gate.open


@pytest.mark.parametrize("path", [b"/admin", b"/private/x?y=1", b"/admin/users"])
async def test_guard_answers_403_for_a_blocked_path(load: LoadFn, guard: Path, path: bytes) -> None:
    p = await load(guard)
    i = p.instance("block=/admin,/private")
    d = i.request_headers([Header(":method", b"GET"), Header(":path", path)], [], True)
    assert d.kind is DecisionKind.RESPOND
    assert (d.status, d.body) == (403, b"guard: " + path + b" is blocked\n")
    assert d.response_headers == (Header("content-type", b"text/plain"), Header("x-guard", b"blocked"))
    i.close()
    i.release()


async def test_wanted_phases_is_read_once_at_load(
    load: LoadFn, guard: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = HttpComponentInstance.call_wanted_phases

    def counting(self: HttpComponentInstance) -> HttpPhase:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(HttpComponentInstance, "call_wanted_phases", counting)
    p = await load(guard)
    assert len(calls) == 1
    for _ in range(3):
        r = await p.runner()
        await r.request_headers(GET, [], True)
        await r.close()
    assert len(calls) == 1


async def test_each_request_gets_fresh_state_and_kv_is_shared(load: LoadFn, guard: Path) -> None:
    """Every request's filter has run exactly its own two hooks (module globals and the
    Filter object do not outlive the request); the kv store is the one shared state."""
    p = await load(guard, grants=frozenset({"kv"}))
    runners = [await p.runner("count=on") for _ in range(3)]
    counts = []
    for r in runners:  # interleaved: all three alive at once
        d = await r.request_headers(GET, [], True)
        counts.append(dict((h.name, h.value) for h in d.headers.set)["x-guard-count"])
    for r in runners:
        d = await r.response_headers(STATUS_200, [], True)
        assert Header("x-guard-hooks", b"2") in d.headers.set
        assert await r.close() is None
    assert counts == [b"1", b"2", b"3"]


async def test_an_ungranted_capability_is_denied_and_counted(load: LoadFn, guard: Path) -> None:
    p = await load(guard, listener="no-kv")  # count=on calls kv.increment: not granted
    labels = {"listener": "no-kv", "plugin": "guard", "capability": "kv"}
    before = METRICS.get("capability_denied_total", **labels)
    fault = await _fault(await p.runner("count=on"))
    assert fault.kind is FaultKind.DENIED and "kv" in fault.message
    assert METRICS.get("capability_denied_total", **labels) == before + 1


async def test_wasi_clock_needs_the_clock_grant(load: LoadFn, guard: Path) -> None:
    """stamp=on calls time.time_ns(): WASI 0.2 wall-clock, gated like the contract's clock."""
    denied = await load(guard, listener="no-clock")
    fault = await _fault(await denied.runner("stamp=on"))
    assert fault.kind is FaultKind.DENIED and "clock" in fault.message

    granted = await load(guard, grants=frozenset({"clock"}), listener="clock")
    r = await granted.runner("stamp=on")
    d = await r.request_headers(GET, [], True)
    stamp = dict((h.name, h.value) for h in d.headers.set)["x-guard-time"]
    assert int(stamp) > 1_700_000_000 * 10**9  # nanoseconds since the epoch, after 2023
    await r.close()


async def test_an_exception_in_python_is_a_trap(load: LoadFn, guard: Path) -> None:
    p = await load(guard)
    r = await p.runner("block=relative")  # on-open raises ValueError (deferred to the first hook)
    fault = await _fault(r)
    assert fault.kind is FaultKind.TRAP and fault.message.startswith("on-open:")
    assert r.fault is fault  # poisoned: on-close was skipped


async def test_a_tcp_component_is_not_an_http_filter(cache: Path) -> None:
    counter = plugin_build.build("counter")
    spec = SandboxSpec("l", str(counter), Grants(), Limits())
    with pytest.raises(PluginLoadError, match="not an http-filter component: no export 'wanted-phases'"):
        await wt.load_http(spec, cache)


# --- misbehaving plugins: the core path's checks and fault kinds -------------------------


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("body", "a body replacement from a headers or trailers hook"),
        ("status", "immediate response status 99 is outside 200..599"),
        ("many", "set: 1025 entries, more than 1024"),
        ("bytes", "the decision's headers exceed 262144 bytes"),
        ("huge", "the result is larger than wasmtime copies in one call"),
    ],
)
async def test_contract_violations_are_abi_faults(
    load: LoadFn, misbehave: Path, mode: str, message: str
) -> None:
    p = await load(misbehave, memory_bytes=96 << 20)
    fault = await _fault(await p.runner(f"mode={mode}"))
    assert fault.kind is FaultKind.ABI
    assert fault.message.startswith("on-request-headers: ") and message in fault.message


async def test_budget_and_memory_limits(load: LoadFn, misbehave: Path) -> None:
    p = await load(misbehave, event_cpu_ms=200)
    assert (await _fault(await p.runner("mode=loop"))).kind is FaultKind.BUDGET
    # Python turns a refused memory.grow into MemoryError, an exception: a trap.
    small = await load(misbehave, memory_bytes=32 << 20)
    assert (await _fault(await small.runner("mode=grow"))).kind is FaultKind.TRAP
    assert (await _fault(await p.runner("mode=raise"))).kind is FaultKind.TRAP


async def test_bodies_round_trip_through_the_fast_path(load: LoadFn, misbehave: Path) -> None:
    p = await load(misbehave)
    i = p.instance()
    assert i.request_headers(GET, [("request.path", "/shop/cart")], False) == CONTINUE
    body = bytes(range(256)) * 256  # 64 KiB, every byte value
    assert i.request_body(body, False) == HttpDecision(DecisionKind.MODIFY, body=body)
    assert i.request_body(b"", True) == HttpDecision(DecisionKind.MODIFY, body=b"")
    assert i.response_body(body, True).body == body[::-1]
    assert i.response_headers(STATUS_200, [], False) == CONTINUE  # not wanted: no plugin code
    i.close()
    i.release()


async def test_decisions_carry_the_metadata_set_in_the_hook(load: LoadFn, misbehave: Path) -> None:
    p = await load(misbehave, grants=frozenset({"metadata"}))
    r = await p.runner("mode=meta")
    d = await r.request_headers(GET, [], False)
    assert d.kind is DecisionKind.CONTINUE and dict(d.metadata) == {"mode": "meta"}
    await r.close()


async def test_a_body_over_the_output_cap_is_refused_by_its_length(
    load: LoadFn, misbehave: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on the core path (the cap is lowered here: wasmtime's own per-call bound on
    copied values, the `huge` case above, is below the real MAX_OUTPUT_BYTES)."""
    from vmm.wasmtime_tier import _component_bytes

    monkeypatch.setattr(_component_bytes, "MAX_OUTPUT_BYTES", 1000)
    p = await load(misbehave)
    r = await p.runner()
    assert (await r.request_body(b"a" * 1000, False)).body == b"a" * 1000
    with pytest.raises(PluginFault) as fault:
        await r.request_body(b"b" * 1001, True)
    assert fault.value.kind is FaultKind.ABI
    assert "a replacement of 1001 bytes is over the maximum output per event" in fault.value.message
    await r.close()


def test_unprovided_wasi_imports_link_to_stubs_that_deny() -> None:
    """wasi:http (which add_wasip2 does not provide, and which must never be a real HTTP
    client) still links, its `use`d wasi:io resource left to add_wasip2, so a component that
    imports it instantiates; a call is refused, logged and counted under the interface."""
    import wasmtime
    from wasmtime.component import Component

    from vmm.wasmtime_tier import _context
    from vmm.wasmtime_tier._component import ComponentProgram
    from vmm.wasmtime_tier._component_bytes import call
    from vmm.wasmtime_tier._context import CallContext
    from vmm.wasmtime_tier._engine import engine

    component = Component(engine(), wasmtime.wat2wasm((HERE / "wat" / "wasi_http_import.wat").read_text()))
    store = wasmtime.Store(engine())
    store.set_wasi(wasmtime.WasiConfig())
    store.set_epoch_deadline(1 << 30)
    run = ComponentProgram(component).instantiate(store).get_func(store, "run")
    assert run is not None
    host = HostCapabilities("stubs", "wasi-http", Grants(), Limits(), KvStore(1, 1), Sent())
    labels = {"listener": "stubs", "plugin": "wasi-http", "capability": "wasi:http/types"}
    before = METRICS.get("capability_denied_total", **labels)
    ctx = CallContext(host)
    _context.enter(ctx)
    try:
        with pytest.raises(wasmtime.WasmtimeError):  # this call's own error (see _fastcall.py)
            call(run, store)
    finally:
        _context.leave()
    assert repr(ctx.error) == "CapabilityDenied(\"capability 'wasi:http/types' not granted\")"
    assert METRICS.get("capability_denied_total", **labels) == before + 1


# --- lightcell_sdk in plain CPython (no bindings) ----------------------------------------


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.syspath_prepend(str(HERE.parent / "plugins" / "sdk" / "python"))
    import lightcell_sdk

    return lightcell_sdk


def test_sdk_phases_are_the_overridden_hooks_and_headers_ignore_case(sdk: object) -> None:
    import lightcell_sdk as lc
    from lightcell_sdk import host

    class Both(lc.Filter):
        def on_request_headers(self, headers, attributes, end_of_stream):  # type: ignore[no-untyped-def]
            return lc.Modify(set={"X-A": "1"}, append=[("x-b", b"\xff")], remove=["X-C"])

        def on_response_body(self, body, end_of_stream):  # type: ignore[no-untyped-def]
            return lc.Continue()

    assert Both.phases() == ("on_request_headers", "on_response_body")
    assert lc.Filter.phases() == ()
    headers = lc.Headers([("Set-Cookie", b"a=1"), ("set-cookie", b"b=2"), (":path", b"/x\xff")])
    assert headers.get("SET-COOKIE") == b"a=1" and headers.get_all("set-cookie") == [b"a=1", b"b=2"]
    assert headers.text(":path") == "/x\ufffd" and headers.text("missing", "-") == "-"
    assert "Set-cookie" in headers and "cookie" not in headers and len(headers) == 3
    with pytest.raises(KeyError):
        headers["missing"]
    assert lc.Modify().body is None and lc.Respond(403).body == b""
    with pytest.raises(RuntimeError, match="no bindings"):
        host.kv_increment("n")  # capabilities exist only inside a component
