"""http-filter plugins in the wasmtime tier, core path (issue 8): the redact
example, a C test plugin built with lightcell_http.h (tests/http_plugins) and a
WAT fixture that misbehaves on request (tests/wat/http_misbehave.wat), driven
through the synchronous HttpCoreInstance and through vmm.runner.HttpRunner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from _host_fakes import Sent

import vmm.wasmtime_tier as wt
from plugins import build as plugin_build
from vmm.capabilities import HostCapabilities
from vmm.contract import MAX_EVENT_BYTES, DecisionKind, HttpPhase
from vmm.http_abi import Header, HeaderMutation, HttpDecision
from vmm.kvstore import KvStore
from vmm.policy import Grants, Limits, SandboxSpec
from vmm.runner import HttpRunner
from vmm.sandbox import FaultKind, PluginFault, PluginLoadError
from vmm.wasmtime_tier._http_core import HttpCoreInstance
from vmm.wasmtime_tier._warm import WARM_INSTANCES

HERE = Path(__file__).resolve().parent
CONTINUE = HttpDecision(DecisionKind.CONTINUE)


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lightcell-http-cache")


@pytest.fixture(scope="session")
def redact() -> Path:
    return plugin_build.build("redact")



def _misbehave_wat(replace: tuple[str, str] | None = None) -> bytes:
    text = (HERE / "wat" / "http_misbehave.wat").read_text()
    if replace is not None:
        assert replace[0] in text
        text = text.replace(*replace)
    return bytes(wasmtime.wat2wasm(text))


@pytest.fixture(scope="session")
def misbehave(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("http-wat") / "misbehave.wasm"
    path.write_bytes(_misbehave_wat())
    return path


class Loaded:
    def __init__(self, factory: wt.HttpFactory, spec: SandboxSpec) -> None:
        self.factory, self.spec = factory, spec
        self.kv = KvStore(spec.limits.kv_max_keys, spec.limits.kv_max_value_bytes)

    def host(self) -> HostCapabilities:
        name = Path(self.spec.plugin_path).stem
        return HostCapabilities(self.spec.listener, name, self.spec.grants, self.spec.limits, self.kv, Sent())

    def instance(self, config: str = "") -> HttpCoreInstance:
        """A fresh synchronous instance, on-open done."""
        i = self.factory.new_instance(self.host())
        assert isinstance(i, HttpCoreInstance)  # these plugins are core modules
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

    async def _load(path: Path, grants: frozenset[str] = frozenset(), **limits: Any) -> Loaded:
        spec = SandboxSpec("http-listener", str(path), Grants(grants), Limits(**limits))
        factory = await wt.load_http(spec, cache)
        opened.append(factory)
        return Loaded(factory, spec)

    yield _load
    for f in opened:
        await f.aclose()


def _forwarded(d: HttpDecision, chunk: bytes) -> bytes:
    if d.kind is DecisionKind.CONTINUE:
        return chunk
    assert d.kind is DecisionKind.MODIFY and d.body is not None
    return d.body


# --- the redact example ----------------------------------------------------------------


async def test_redact_through_the_instance(load: LoadFn, redact: Path) -> None:
    p = await load(redact)
    assert (p.factory.tier, p.factory.path, p.factory.imports) == ("wasmtime", "core", frozenset())
    assert p.factory.phases == HttpPhase.REQUEST_BODY | HttpPhase.RESPONSE_BODY  # read from the code
    i = p.instance("pattern=secret")
    assert i.wanted_phases() == p.factory.phases
    headers = [Header(":path", b"/x"), Header("x-a", b"\xff")]
    assert i.request_headers(headers, [("request.path", "/x")], False) == CONTINUE
    # The pattern split across two chunks: the first chunk's tail is held back.
    out = _forwarded(i.request_body(b"a sec", False), b"a sec")
    out += _forwarded(i.request_body(b"ret b", True), b"ret b")
    assert out == b"a ****** b"
    assert i.request_trailers([Header("t", b"1")]) == CONTINUE
    assert i.response_headers([Header(":status", b"200")], [], False) == CONTINUE
    d = i.response_body(b"my secret", False)
    assert d == HttpDecision(DecisionKind.MODIFY, body=b"my ******")
    d = i.response_body(b"", True)
    assert d.kind is DecisionKind.MODIFY and d.body is None
    assert d.headers == HeaderMutation(set=(Header("x-lightcell-redacted", b"2"),))
    assert d.metadata == {}
    i.close()
    assert i.release() is None


async def test_redact_through_the_http_runner(load: LoadFn, redact: Path) -> None:
    p = await load(redact)
    r = await p.runner("pattern=ab")
    assert r.phases == HttpPhase.REQUEST_BODY | HttpPhase.RESPONSE_BODY
    assert await r.request_headers([Header(":path", b"/")], [], False) == CONTINUE
    assert (await r.response_body(b"xxa", False)).body == b"xx"
    d = await r.response_body(b"bab", True)
    assert d.body == b"****" and d.headers.set == (Header("x-lightcell-redacted", b"2"),)
    assert await r.close() is None
    with pytest.raises(PluginFault, match="closed"):
        await r.request_body(b"x", True)


async def test_an_on_open_fault_surfaces_at_the_first_wanted_hook(load: LoadFn, redact: Path) -> None:
    p = await load(redact)
    r = await p.runner("")  # no pattern: on-open traps
    assert await r.request_headers([], [], False) == CONTINUE  # unwanted: open still deferred
    with pytest.raises(PluginFault) as e:
        await r.request_body(b"x", False)
    assert e.value.kind is FaultKind.TRAP and "on-open" in e.value.message
    with pytest.raises(PluginFault, match="poisoned"):  # every later hook, wanted or not
        await r.request_headers([], [], False)
    assert await r.close() is None  # no on-close after a fault


# --- a C plugin built with lightcell_http.h ----------------------------------------------------


async def test_an_immediate_response_with_its_metadata(load: LoadFn, answer: Path) -> None:
    p = await load(answer, frozenset({"metadata"}))
    assert p.factory.phases == HttpPhase.REQUEST_HEADERS | HttpPhase.RESPONSE_HEADERS
    assert p.factory.imports == frozenset({"metadata"})
    i = p.instance()
    d = i.request_headers([Header(":path", b"/blocked")], [("request.path", "/blocked")], True)
    assert d == HttpDecision(
        DecisionKind.RESPOND,
        status=403,
        body=b"blocked\n",
        response_headers=(Header("content-type", b"text/plain"),),
        metadata={"blocked": "yes"},
    )
    d = p.instance().request_headers([Header("x-echo", b"\x00raw\xff")], [("request.path", "/ok")], False)
    assert d.kind is DecisionKind.MODIFY and d.body is None and d.metadata == {}
    assert d.headers.append == (Header("x-echoed", b"\x00raw\xff"),)
    assert d.headers.set == (Header("x-hooks-run", b"1"),)


async def test_an_ungranted_capability_is_denied(load: LoadFn, answer: Path) -> None:
    p = await load(answer)  # no grants
    r = await p.runner()
    with pytest.raises(PluginFault) as e:
        await r.request_headers([], [("request.path", "/blocked")], True)
    assert e.value.kind is FaultKind.DENIED and "metadata" in e.value.message
    assert "on-request-headers" in e.value.message
    assert await r.close() is None


async def test_state_is_fresh_per_request(load: LoadFn, answer: Path) -> None:
    p = await load(answer)
    a, b = p.instance(), p.instance()
    assert a.identity != b.identity

    def runs(i: HttpCoreInstance) -> bytes:
        d = i.response_headers([Header(":status", b"200")], [], True)
        assert len(d.headers.set) == 1
        return d.headers.set[0].value

    assert runs(a) == b"1"
    assert runs(a) == b"2"
    assert runs(b) == b"1"  # b sees nothing of a's hooks
    assert runs(a) == b"3"
    runners = [await p.runner() for _ in range(3)]
    for r in runners:
        d = await r.request_headers([], [("request.path", "/")], False)
        assert d.headers.set == (Header("x-hooks-run", b"1"),)
        assert await r.close() is None


# --- the WAT fixture: bad decisions, the budget, unwanted phases -------------------------------


async def test_phases_are_read_by_calling_wanted_phases_once_at_load(load: LoadFn, misbehave: Path) -> None:
    p = await load(misbehave, frozenset({"metadata"}))
    assert p.factory.phases == HttpPhase.REQUEST_HEADERS  # not a constant: called at load
    i = p.instance("0")
    # Every other hook is `unreachable` in the module: none of them runs.
    assert i.request_body(b"x", True) == CONTINUE
    assert i.request_trailers([Header("t", b"1")]) == CONTINUE
    assert i.response_headers([Header(":status", b"200")], [], True) == CONTINUE
    assert i.response_body(b"x", True) == CONTINUE
    assert i.response_trailers([]) == CONTINUE
    assert i.request_headers([Header(":path", b"/")], [("a", "b")], False) == CONTINUE
    i.close()
    i.release()


async def test_unwanted_hooks_do_not_even_instantiate(load: LoadFn, misbehave: Path) -> None:
    p = await load(misbehave)
    assert p.factory.warm is not None
    await asyncio.to_thread(p.factory.warm.stop)  # no instances made ahead: each made by its first hook
    i = p.factory.new_instance(p.host())
    assert i.response_body(b"x", True) == CONTINUE
    assert not i._instantiated
    assert i.request_headers([], [], True) == CONTINUE  # the first wanted hook instantiates
    assert i._instantiated
    i.release()


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("1", "status 99 is outside 200..599"),
        ("2", r"set\[0\] name at 0xfffffff0\+8 is outside"),
        ("3", "8388609 bytes is over the maximum output"),
        ("4", "a body replacement from a headers or trailers hook"),
        ("7", "not aligned to 4"),
    ],
)
async def test_bad_decisions_are_abi_faults(load: LoadFn, misbehave: Path, mode: str, match: str) -> None:
    p = await load(misbehave)
    r = await p.runner(mode)
    with pytest.raises(PluginFault, match=match) as e:
        await r.request_headers([Header(":path", b"/")], [], True)
    assert e.value.kind is FaultKind.ABI
    assert e.value.message.startswith("on-request-headers: ")
    assert r.fault is e.value
    assert await r.close() is None


async def test_metadata_is_attached_and_an_ungranted_call_is_denied(load: LoadFn, misbehave: Path) -> None:
    granted = await load(misbehave, frozenset({"metadata"}))
    d = granted.instance("5").request_headers([], [], True)
    assert d.kind is DecisionKind.CONTINUE and d.metadata == {"k": "v"}
    p = await load(misbehave)
    with pytest.raises(PluginFault) as e:
        p.instance("5").request_headers([], [], True)
    assert e.value.kind is FaultKind.DENIED


async def test_a_looping_hook_runs_out_of_budget(load: LoadFn, misbehave: Path) -> None:
    p = await load(misbehave, event_cpu_ms=20)
    r = await p.runner("6")
    with pytest.raises(PluginFault) as e:
        await r.request_headers([], [], True)
    assert e.value.kind is FaultKind.BUDGET
    with pytest.raises(PluginFault) as again:
        await r.request_headers([], [], True)
    assert again.value.kind is FaultKind.BUDGET and "poisoned" in again.value.message
    assert await r.close() is None


async def test_a_body_over_the_event_size_is_the_callers_error(load: LoadFn, redact: Path) -> None:
    p = await load(redact)
    i = p.instance("pattern=x")
    with pytest.raises(ValueError, match="at most"):
        i.request_body(b"y" * (MAX_EVENT_BYTES + 1), False)
    assert i.request_body(b"y" * MAX_EVENT_BYTES, False) == CONTINUE
    i.release()


# --- load errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replace", "match"),
    [
        (("(i32.or (i32.const 1) (i32.const 0))", "(i32.or (i32.const 64) (i32.const 0))"),
         "bits outside the phases flags"),
        (("(i32.or (i32.const 1) (i32.const 0))", "(unreachable)"), "wanted-phases failed at load"),
        (("(i32.or (i32.const 1) (i32.const 0))", "(call $meta_set (i32.const 0) (i32.const 0) "
          "(i32.const 0) (i32.const 0)) (i32.const 1)"), "denied"),
    ],
)  # fmt: skip
async def test_wanted_phases_failures_are_load_errors(
    load: LoadFn, tmp_path: Path, replace: tuple[str, str], match: str
) -> None:
    path = tmp_path / "bad.wasm"
    path.write_bytes(_misbehave_wat(replace))
    with pytest.raises(PluginLoadError, match=match):
        await load(path, frozenset({"metadata"}))  # no capability at load, granted or not


async def test_a_tcp_plugin_is_refused(load: LoadFn) -> None:
    with pytest.raises(PluginLoadError, match="implements the tcp-filter world, not http-filter"):
        await load(plugin_build.build("rewrite"))


async def test_tcp_load_still_refuses_an_http_plugin(cache: Path, redact: Path) -> None:
    with pytest.raises(PluginLoadError, match="implements the http-filter world, not tcp-filter"):
        await wt.load(SandboxSpec("l", str(redact)), cache)


async def test_requests_take_instances_made_ahead_each_used_once(load: LoadFn, answer: Path) -> None:
    """As for TCP (_warm.py): the first hook of a request runs on an instance made ahead,
    never one another request used; the request's own capabilities are bound to it."""
    p = await load(answer, grants=frozenset({"metadata"}))
    warm = p.factory.warm
    assert warm is not None  # a core plugin: instances are made ahead
    for _ in range(200):  # the pool fills on a worker thread
        if len(warm.ready) == WARM_INSTANCES:
            break
        await asyncio.sleep(0.01)
    ready = set(map(id, warm.ready))
    assert len(ready) == WARM_INSTANCES
    instances = [p.factory.new_instance(p.host()) for _ in range(3)]
    assert len({id(i) for i in instances}) == 3 and {id(i) for i in instances} <= ready
    for i in instances:
        assert i._instantiated  # made ahead: the first hook may run inline
        blocked = i.request_headers([], [("request.path", "/blocked")], True)
        assert blocked.status == 403 and dict(blocked.metadata) == {"blocked": "yes"}  # bound grants
        i.release()
    assert not {id(i) for i in instances} & set(map(id, warm.ready))
