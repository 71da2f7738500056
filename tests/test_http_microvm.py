"""http-filter plugins in the micro-VM tier (issue 8 item 7), in real /dev/kvm
micro-VMs: the redact example, tests/http_plugins/answer.c and the WAT fixture
of test_http_wasmtime.py, driven through MicroVmHttpInstance and HttpRunner; a
differential against the wasmtime tier over the same plugins and inputs; a
fresh VM per request; and a hostile guest (tests/kvm_guests/http_forger.c)
forging the memory range and return area the host lifts from."""

from __future__ import annotations

import dataclasses
import random
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _differential import ObservedKv, RecordingHost, http_in_both_tiers
from _host_fakes import Sent
from test_http_wasmtime import _misbehave_wat

import vmm.wasmtime_tier as wt
from plugins import build as plugin_build
from vmm.capabilities import HostCapabilities
from vmm.contract import HTTP_PHASES_ALL, MAX_EVENT_BYTES, DecisionKind, HttpPhase
from vmm.http_abi import Header, HeaderMutation, HttpDecision
from vmm.kvstore import KvStore
from vmm.microvm import abi, guest_build, hostcalls
from vmm.microvm.http_instance import MicroVmHttpInstance, encode_pairs
from vmm.microvm.http_tier import MicroVmHttpFactory
from vmm.microvm.image import load_image
from vmm.microvm.layout import Layout
from vmm.microvm.machine import build_template
from vmm.microvm.pool import VmPool
from vmm.microvm.snapshot import warm_up
from vmm.microvm.tier import _Shared, load_http
from vmm.microvm.vm import VmFault
from vmm.policy import CAPABILITIES, Grants, Limits, SandboxSpec
from vmm.runner import HttpRunner
from vmm.sandbox import FaultKind, PluginFault, PluginLoadError

pytestmark = pytest.mark.kvm

HERE = Path(__file__).resolve().parent
CONTINUE = HttpDecision(DecisionKind.CONTINUE)
LOOP = "(loop $forever (br $forever))"
GROW = "(loop $g (br_if $g (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable"


@pytest.fixture(scope="module")
def redact() -> Path:
    return plugin_build.build("redact")


def _wat(tmp: Path, name: str, replace: tuple[str, str] | None = None) -> Path:
    path = tmp / f"{name}.wasm"
    path.write_bytes(_misbehave_wat(replace))
    return path


@pytest.fixture(scope="module")
def misbehave(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _wat(tmp_path_factory.mktemp("http-wat"), "misbehave")


@pytest.fixture(scope="module")
def grower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """misbehave.wat whose mode '6' grows memory until refused, then traps."""
    return _wat(tmp_path_factory.mktemp("http-wat"), "grower", (LOOP, GROW))


@pytest.fixture(scope="module")
def far_retptr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """misbehave.wat whose mode '7' returns a return area past the memory's end."""
    return _wat(tmp_path_factory.mktemp("http-wat"), "far", ("(i32.const 66)", "(i32.const 0x7ffffff0)"))


@pytest.fixture(scope="module")
def post_return(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """misbehave.wat with a cabi_post_on-request-headers that spoils the
    `continue` area it returns (tag 3): a host that ran it before lifting would
    see tag 3 at once; one that never ran it would not see it next time."""
    post = ('(func (export "on-close")) (func (export "cabi_post_on-request-headers") (param i32) '
            "(i32.store8 (i32.const 384) (i32.const 3))))")
    return _wat(tmp_path_factory.mktemp("http-wat"), "post", ('(func (export "on-close")))', post))


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/http_plugins/mirror.c: every hook shows back exactly what it was given."""
    out = tmp_path_factory.mktemp("http-c")
    return plugin_build.compile_c(HERE / "http_plugins" / "mirror.c", out / "mirror.wasm")


class OnWorker:
    """An instance whose hooks run on its own worker (the VM's vCPU thread), as
    the runner would move them there: a test's direct call is then never
    pre-empted into an Offload, however loaded the machine is."""

    def __init__(self, instance: Any) -> None:
        self.instance = instance

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.instance, name)
        if not callable(attr) or name in ("release", "submit"):
            return attr
        return lambda *args: self.instance.submit(lambda: attr(*args)).result()


class Loaded:
    """One plugin loaded in one tier: fresh synchronous instances and runners."""

    def __init__(self, factory: Any, spec: SandboxSpec) -> None:
        self.factory, self.spec = factory, spec
        self.kv = KvStore(spec.limits.kv_max_keys, spec.limits.kv_max_value_bytes)

    def host(self) -> HostCapabilities:
        name = Path(self.spec.plugin_path).stem
        return HostCapabilities(self.spec.listener, name, self.spec.grants, self.spec.limits, self.kv, Sent())

    def instance(self, config: str | None = None, opened: bool = True) -> Any:
        i = OnWorker(self.factory.new_instance(self.host()))
        if opened:
            i.open(self.spec.listener, self.spec.plugin_config if config is None else config)
        return i

    async def runner(self, config: str | None = None) -> HttpRunner:
        r: HttpRunner = await self.factory.new_sandbox(self.host())
        await r.open(self.spec.listener, self.spec.plugin_config if config is None else config)
        return r


LoadFn = Callable[..., Awaitable[Loaded]]


@pytest.fixture
async def load(tmp_path: Path) -> AsyncIterator[LoadFn]:
    """load(path, tier="microvm", grants=..., config=..., **limits)."""
    opened: list[Any] = []

    async def _load(path: Path, tier: str = "microvm", grants: frozenset[str] = frozenset(),
                    config: str = "", **limits: Any) -> Loaded:
        spec = SandboxSpec("http-listener", str(path), Grants(grants), Limits(**limits), config)
        if tier == "microvm":
            factory: Any = await load_http(spec, pool_size=2)
        else:
            factory = await wt.load_http(spec, tmp_path / "wasmtime-cache")
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


# --- the redact example and answer.c, as in the wasmtime tier's tests ---------------------------


async def test_redact_through_the_instance(load: LoadFn, redact: Path) -> None:
    p = await load(redact, config="pattern=secret")
    assert isinstance(p.factory, MicroVmHttpFactory)
    assert (p.factory.tier, p.factory.imports) == ("microvm", frozenset())
    assert p.factory.phases == HttpPhase.REQUEST_BODY | HttpPhase.RESPONSE_BODY  # read from the code
    assert p.factory.pool.opened_with == ("http-listener", "pattern=secret")  # on-open is in the snapshot
    i = p.instance()
    assert isinstance(i.instance, MicroVmHttpInstance) and i.identity.startswith("microvm:")
    assert i.request_headers([Header(":path", b"/x")], [("request.path", "/x")], False) == CONTINUE
    out = _forwarded(i.request_body(b"a sec", False), b"a sec")
    out += _forwarded(i.request_body(b"ret b", True), b"ret b")
    assert out == b"a ****** b"
    assert i.request_trailers([Header("t", b"1")]) == CONTINUE
    assert i.response_body(b"my secret", False) == HttpDecision(DecisionKind.MODIFY, body=b"my ******")
    d = i.response_body(b"", True)
    assert d.kind is DecisionKind.MODIFY and d.body is None
    assert d.headers == HeaderMutation(set=(Header("x-lightcell-redacted", b"2"),))
    i.close()
    assert i.release() is None


async def test_redact_through_the_http_runner(load: LoadFn, redact: Path) -> None:
    p = await load(redact)
    r = await p.runner("pattern=ab")  # not the snapshot's config: on-open runs for this request
    assert r.phases == HttpPhase.REQUEST_BODY | HttpPhase.RESPONSE_BODY
    assert await r.request_headers([Header(":path", b"/")], [], False) == CONTINUE
    assert (await r.response_body(b"xxa", False)).body == b"xx"
    d = await r.response_body(b"bab", True)
    assert d.body == b"****" and d.headers.set == (Header("x-lightcell-redacted", b"2"),)
    assert await r.close() is None
    with pytest.raises(PluginFault, match="closed"):
        await r.request_body(b"x", True)


async def test_an_on_open_trap_surfaces_at_the_first_wanted_hook(load: LoadFn, redact: Path) -> None:
    p = await load(redact)
    r = await p.runner("")  # no pattern: on-open traps
    assert await r.request_headers([], [], False) == CONTINUE  # unwanted: no VM entry, open deferred
    with pytest.raises(PluginFault) as e:
        await r.request_body(b"x", False)
    assert e.value.kind is FaultKind.TRAP and e.value.message == "on-open: wasm trap: unreachable"
    with pytest.raises(PluginFault, match="poisoned"):
        await r.request_headers([], [], False)
    assert await r.close() is None


async def test_an_immediate_response_with_its_metadata(load: LoadFn, answer: Path) -> None:
    p = await load(answer, grants=frozenset({"metadata"}))
    assert p.factory.phases == HttpPhase.REQUEST_HEADERS | HttpPhase.RESPONSE_HEADERS
    assert p.factory.imports == frozenset({"metadata"})
    d = p.instance().request_headers([Header(":path", b"/blocked")], [("request.path", "/blocked")], True)
    assert d == HttpDecision(DecisionKind.RESPOND, status=403, body=b"blocked\n",
                             response_headers=(Header("content-type", b"text/plain"),),
                             metadata={"blocked": "yes"})
    d = p.instance().request_headers([Header("x-echo", b"\x00raw\xff")], [("request.path", "/ok")], False)
    assert d.kind is DecisionKind.MODIFY and d.body is None and d.metadata == {}
    assert d.headers.append == (Header("x-echoed", b"\x00raw\xff"),)
    assert d.headers.set == (Header("x-hooks-run", b"1"),)


async def test_each_request_gets_a_fresh_vm(load: LoadFn, answer: Path) -> None:
    p = await load(answer)
    a = p.instance()

    def runs(i: OnWorker) -> bytes:
        d: HttpDecision = i.response_headers([Header(":status", b"200")], [], True)
        return d.headers.set[0].value

    assert [runs(a), runs(a), runs(a)] == [b"1", b"2", b"3"]  # one request's VM keeps its state
    a.close()
    a.release()
    seen = set()
    for _ in range(200):  # every request: a counter that starts at 0, in a VM never seen before
        r = await p.runner()
        d = await r.request_headers([Header("host", b"x")], [("request.path", "/")], False)
        assert d.headers.set == (Header("x-hooks-run", b"1"),)
        assert r.identity not in seen
        seen.add(r.identity)
        assert await r.close() is None
    assert p.factory.pool.live <= p.factory.pool.max_idle + 2  # VMs are reused, restored


async def test_a_body_over_the_event_size_is_the_callers_error(load: LoadFn, redact: Path) -> None:
    p = await load(redact, config="pattern=x")
    i = p.instance()
    with pytest.raises(ValueError, match="at most"):
        i.request_body(b"y" * (MAX_EVENT_BYTES + 1), False)
    assert i.request_body(b"y" * MAX_EVENT_BYTES, False) == CONTINUE
    i.release()


# --- wanted-phases: read once, at load ----------------------------------------------------------


async def test_phases_are_read_in_the_booted_vm_once(load: LoadFn, misbehave: Path) -> None:
    p = await load(misbehave, grants=frozenset({"metadata"}), config="0")
    assert p.factory.phases == HttpPhase.REQUEST_HEADERS  # not a constant: called at load
    i = p.instance()
    # Each of these is `unreachable` in the module: none runs.
    assert i.request_body(b"x", True) == CONTINUE
    assert i.request_trailers([]) == CONTINUE
    assert i.response_headers([], [], True) == CONTINUE
    assert i.response_body(b"x", True) == CONTINUE
    assert i.response_trailers([]) == CONTINUE
    assert i.request_headers([Header(":path", b"/")], [("a", "b")], False) == CONTINUE
    i.close()
    i.release()


@pytest.mark.parametrize(
    ("replace", "match"),
    [
        (("(i32.or (i32.const 1) (i32.const 0))", "(i32.or (i32.const 64) (i32.const 0))"),
         "wanted-phases failed at load: abi: wanted-phases returned 0x40, which has bits outside"),
        (("(i32.or (i32.const 1) (i32.const 0))", "(unreachable)"),
         "wanted-phases failed at load: trap: wanted-phases: wasm trap: unreachable"),
        (("(i32.or (i32.const 1) (i32.const 0))", "(call $meta_set (i32.const 0) (i32.const 0) "
          "(i32.const 0) (i32.const 0)) (i32.const 1)"),
         "wanted-phases failed at load: denied: wanted-phases: capability 'metadata' not granted"),
    ],
)  # fmt: skip
async def test_wanted_phases_failures_are_load_errors(
    load: LoadFn, tmp_path: Path, replace: tuple[str, str], match: str
) -> None:
    path = _wat(tmp_path, "bad", replace)
    for tier in ("microvm", "wasmtime"):  # the same words in both tiers
        with pytest.raises(PluginLoadError, match=match):
            await load(path, tier, grants=frozenset({"metadata"}))


async def test_a_tcp_plugin_is_refused(load: LoadFn) -> None:
    with pytest.raises(PluginLoadError, match="implements the tcp-filter world, not http-filter"):
        await load(plugin_build.build("rewrite"))


# --- differential: the same plugins and inputs through both tiers --------------------------------

Outcome = tuple[Any, ...]


def _outcome(step: Callable[[], HttpDecision]) -> Outcome:
    try:
        return ("decision", step())
    except PluginFault as e:
        return ("fault", e.kind, e.message)


def _request(i: Any, steps: list[tuple[str, tuple[Any, ...]]]) -> list[Outcome]:
    """Run steps on one instance until a fault; then on-close if healthy."""
    out = []
    for name, args in steps:
        o = _outcome(lambda name=name, args=args: getattr(i, name)(*args) or CONTINUE)  # type: ignore[misc]
        out.append(o)
        if o[0] == "fault":
            break
    else:
        out.append(_outcome(lambda: i.close() or CONTINUE))
    i.release()
    return out


H = [Header(":path", b"/a"), Header("x-echo", b"v\x00\xff"), Header("empty", b"")]
A = [("request.path", "/a"), ("source.address", "10.0.0.1:5")]
CASES: list[tuple[str, str, frozenset[str], dict[str, int], str, list[tuple[str, tuple[Any, ...]]]]] = [
    ("redact", "redact", frozenset(), {}, "pattern=secret", [
        ("request_headers", (H, A, False)), ("request_body", (b"a sec", False)),
        ("request_body", (b"ret b", True)), ("response_headers", (H, [], False)),
        ("response_body", (b"secret" * 100, False)), ("response_body", (b"", True))]),
    ("redact-trap", "redact", frozenset(), {}, "", [("request_body", (b"x", True))]),
    ("answer-blocked", "answer", frozenset({"metadata"}), {}, "", [
        ("request_headers", (H, [("request.path", "/blocked")], True))]),
    ("answer-echo", "answer", frozenset(), {}, "", [
        ("request_headers", (H, A, False)), ("response_headers", ([Header(":status", b"200")], [], True))]),
    ("answer-denied", "answer", frozenset(), {}, "", [
        ("request_headers", ([], [("request.path", "/blocked")], True))]),
    *[(f"misbehave-{m}", "misbehave", frozenset({"metadata"}), {}, m, [("request_headers", (H, A, True))])
      for m in "0123457"],
    ("misbehave-denied", "misbehave", frozenset(), {}, "5", [("request_headers", ([], [], True))]),
    ("far-retptr", "far", frozenset(), {}, "7", [("request_headers", ([], [], True))]),
    ("post-return", "post", frozenset(), {}, "0", [
        ("request_headers", ([], [], False)), ("request_headers", ([], [], True))]),
    ("loop", "misbehave", frozenset(), {"event_cpu_ms": 20}, "6", [("request_headers", ([], [], True))]),
    ("memory-cap", "grower", frozenset(), {"memory_bytes": 1 << 20}, "6", [
        ("request_headers", ([], [], True))]),
]  # fmt: skip


def _comparable(outcome: Outcome) -> Outcome:
    """What must agree: decisions whole; faults by kind and message, where the
    message names a measured amount (memory in use) only up to it."""
    if outcome[0] == "fault" and outcome[1] is FaultKind.MEMORY:
        return (*outcome[:2], outcome[2].split(" (")[0])
    return outcome


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_both_tiers_agree(load: LoadFn, redact: Path, answer: Path, misbehave: Path, grower: Path,
                                far_retptr: Path, post_return: Path, case: tuple[Any, ...]) -> None:
    _, plugin, grants, limits, config, steps = case
    path = {"redact": redact, "answer": answer, "misbehave": misbehave, "grower": grower,
            "far": far_retptr, "post": post_return}[plugin]
    results = {}
    for tier in ("microvm", "wasmtime"):
        p = await load(path, tier, grants=grants, config=config, **limits)
        instance = p.instance(opened=False)
        opened = [("open", ("http-listener", config)), *steps]
        results[tier] = [_comparable(o) for o in _request(instance, opened)]
    assert results["microvm"] == results["wasmtime"]
    if case[0] in ("loop", "memory-cap", "redact-trap", "answer-denied", "misbehave-denied"):
        kind = {"loop": FaultKind.BUDGET, "memory-cap": FaultKind.MEMORY, "redact-trap": FaultKind.TRAP}
        assert results["microvm"][-1][1] is kind.get(case[0], FaultKind.DENIED)
    if case[0].startswith("misbehave-") and case[0][-1] in "12347":
        assert results["microvm"][-1][1] is FaultKind.ABI
    if case[0] == "post-return":  # lifted before the post-return ran, which ran before the next hook
        assert results["microvm"][1:] == [("decision", CONTINUE), (
            "fault", FaultKind.ABI, "on-request-headers: decision tag 3 (0 continue, 1 modify, 2 respond)")]


def _random_request(rng: random.Random) -> list[tuple[str, tuple[Any, ...]]]:
    def name() -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-:") for _ in range(rng.randrange(13)))

    def value() -> bytes:
        return bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 5, 40))))

    def text() -> str:
        return "".join(rng.choice("az/.é日本\x00") for _ in range(rng.randrange(9)))

    def headers() -> list[Header]:
        return [Header(name(), value()) for _ in range(rng.choice((0, 1, 3, 20)))]

    def attributes() -> list[tuple[str, str]]:
        return [(text(), text()) for _ in range(rng.choice((0, 1, 4)))]

    def body() -> bytes:
        return bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 100, 5000))))

    return [
        ("request_headers", (headers(), attributes(), rng.random() < 0.5)),
        ("request_body", (body(), False)), ("request_body", (body(), True)),
        ("request_trailers", (headers(),)),
        ("response_headers", (headers(), attributes(), rng.random() < 0.5)),
        ("response_body", (body(), True)), ("response_trailers", (headers(),)),
    ]  # fmt: skip


async def test_both_tiers_lower_the_same_inputs_alike(load: LoadFn, mirror: Path) -> None:
    # Every hook of mirror.c shows back what the host lowered: any difference
    # in names, values, empty entries, order or flags between the tiers shows.
    rng = random.Random(0x1A7E)
    requests = [_random_request(rng) for _ in range(25)]
    tiers = {tier: await load(mirror, tier) for tier in ("microvm", "wasmtime")}
    for steps in requests:
        seen = {tier: _request(p.instance(), steps) for tier, p in tiers.items()}
        assert seen["microvm"] == seen["wasmtime"]
        assert all(o[0] == "decision" for o in seen["microvm"]), seen["microvm"]
    shown = [("request_headers", ([Header("n", b"\x00v")], [("a", "é")], True))]
    first = _request(tiers["microvm"].instance(), shown)
    assert first[0][1].body == b"H1:nH2:\x00vA1:aA2:\xc3\xa91"


async def test_a_looping_hook_is_interrupted_and_the_runner_poisoned(load: LoadFn, misbehave: Path) -> None:
    p = await load(misbehave, event_cpu_ms=20, config="6")
    r = await p.runner()
    with pytest.raises(PluginFault) as e:
        await r.request_headers([], [], True)
    assert e.value.kind is FaultKind.BUDGET
    with pytest.raises(PluginFault) as again:
        await r.request_headers([], [], True)
    assert again.value.kind is FaultKind.BUDGET and "poisoned" in again.value.message
    assert await r.close() is None
    r = await p.runner("0")  # the pool's next VM is healthy
    assert await r.request_headers([], [], True) == CONTINUE
    assert await r.close() is None


# --- Python components (componentize-py, lightcell_sdk) in both tiers ------------------------------

PY_LIMITS = Limits(event_cpu_ms=5000)  # CPython's first calls; no loop is meant here
PY_PHASES = {"guard": HttpPhase.REQUEST_HEADERS | HttpPhase.RESPONSE_HEADERS,
             "blockpath": HttpPhase.REQUEST_HEADERS}  # what the SDK derives from the hooks defined
PY_CASES: list[tuple[str, str, frozenset[str], str, FaultKind | None]] = [
    # (plugin, config, the request's grants, path, the fault both tiers must show)
    ("guard", "block=/admin,/private", frozenset(), "/shop/cart?id=1", None),
    ("guard", "block=/admin,/private", frozenset(), "/private/x?y=1", None),
    ("guard", "block=/admin;count=on", frozenset({"kv"}), "/shop", None),
    ("guard", "count=on", frozenset(), "/shop", FaultKind.DENIED),
    ("guard", "stamp=on", frozenset({"kv"}), "/shop", FaultKind.DENIED),
    ("guard", "stamp=on", frozenset({"clock"}), "/shop", None),  # WASI wall clock: one wall_now
    ("guard", "block=admin", frozenset({"kv"}), "/shop", FaultKind.TRAP),  # on-open raises
    ("blockpath", "", frozenset(), "/admin/users", None),
    ("blockpath", "", frozenset(), "/shop", None),
]  # fmt: skip


@pytest.fixture(scope="module")
async def python_http(built_plugins: dict[str, Path]) -> AsyncIterator[dict[tuple[str, str], Any]]:
    """guard and blockpath loaded once per tier (every grant in the spec; each request's host
    carries its case's grants, as a listener's would). Both tiers' compiles are cached in the
    user's cache (wasmtime's of CPython takes a minute)."""
    specs = {p: SandboxSpec("http-listener", str(built_plugins[p]), Grants(CAPABILITIES), PY_LIMITS)
             for p in ("guard", "blockpath")}  # fmt: skip
    async with http_in_both_tiers(specs) as loaded:
        yield loaded


def _python_request(factory: Any, kv: ObservedKv, plugin: str, config: str, grants: frozenset[str],
                    path: str) -> tuple[list[Outcome], list[Any]]:
    """One request through every hook; what each hook decided and the host calls made."""
    host = RecordingHost("http-listener", plugin, Grants(grants), PY_LIMITS, kv, Sent())
    steps: list[tuple[str, tuple[Any, ...]]] = [
        ("open", ("http-listener", config)),
        ("request_headers", ([Header(":path", path.encode()), Header("x-guard-debug", b"1"),
                              Header("x-debug", b"1")], [("request.path", path.split("?")[0])], False)),
        ("request_body", (b"body", True)),
        ("response_headers", ([Header(":status", b"200")], [("response.code", "200")], False)),
        ("response_trailers", ([],)),
    ]  # fmt: skip
    outcomes = [_python_comparable(o) for o in _request(OnWorker(factory.new_instance(host)), steps)]
    return outcomes, host.calls


def _python_comparable(outcome: Outcome) -> Outcome:
    """guard's x-guard-time (the wall clock) by its being a number."""
    if outcome[0] == "decision" and outcome[1].headers.set:
        stamped = tuple(Header(h.name, b"N") if h.name == "x-guard-time" and h.value.isdigit() else h
                        for h in outcome[1].headers.set)
        return ("decision", dataclasses.replace(outcome[1], headers=dataclasses.replace(
            outcome[1].headers, set=stamped)))
    return outcome


async def test_on_open_runs_ahead_when_every_request_would_open_alike(
        python_http: dict[tuple[str, str], Any], built_plugins: dict[str, Path]) -> None:
    """guard's on-open (CPython reseeding `random` from the start-up zeros when the listener
    does not grant `random`) is in the pool's snapshot; with `random` granted each request
    opens itself, with real randomness. Both give wasmtime's decisions."""
    config = "block=/admin"
    want, _ = _python_request(python_http["wasmtime", "guard"], ObservedKv(10, 64), "guard", config,
                              frozenset(), "/shop")
    for grants, opened in ((frozenset(), ("http-listener", config)), (frozenset({"random"}), None)):
        spec = SandboxSpec("http-listener", str(built_plugins["guard"]), Grants(grants), PY_LIMITS, config)
        factory = await load_http(spec, pool_size=1)
        try:
            assert factory.pool.opened_with == opened
            got, calls = _python_request(factory, ObservedKv(10, 64), "guard", config, grants, "/shop")
            assert got == want and all(o[0] == "decision" for o in got)
            assert calls == ([("random_bytes", (256,), "-")] * 9 + [("random_bytes", (192,), "-")]
                             if grants else [])  # the reseed: 624 words, as componentize-py reads them
        finally:
            await factory.aclose()


def test_outside_a_connection_only_answers_that_need_none_are_given() -> None:
    """Boot, warm-up rehearsals: no host at all. A plugin's (empty) arguments and an
    immediate poll are the same for every connection; a grant is not (GRANTED is denied,
    so no snapshot bakes in "not granted"), nor is anything else."""
    assert hostcalls.dispatch(None, abi.HostFn.ARGUMENTS, 0, b"", b"") == hostcalls.HostcallResult(
        abi.HostcallStatus.OK, 0, b"")
    assert hostcalls.dispatch(None, abi.HostFn.POLL, 10**9, struct.pack("<I", 0), b"").status is (
        abi.HostcallStatus.OK)
    assert hostcalls.dispatch(None, abi.HostFn.POLL, 0, b"abc", b"").status is abi.HostcallStatus.MISUSE
    for fn in set(abi.HostFn) - {abi.HostFn.ARGUMENTS, abi.HostFn.POLL}:
        assert hostcalls.dispatch(None, fn, 0, b"", b"").status is abi.HostcallStatus.DENIED, fn


@pytest.mark.parametrize("case", PY_CASES, ids=[f"{c[0]}[{c[1]}|{'+'.join(sorted(c[2]))}]{c[3]}"
                                               for c in PY_CASES])
async def test_python_components_agree_across_tiers(python_http: dict[tuple[str, str], Any],
                                                    case: tuple[Any, ...]) -> None:
    plugin, config, grants, path, fault = case
    seen = {}
    for tier in ("microvm", "wasmtime"):
        factory = python_http[tier, plugin]
        assert (factory.tier, factory.phases) == (tier, PY_PHASES[plugin])
        kv = ObservedKv(100, 1024)
        # two requests: the second shows a fresh filter (guard's hook count) and the shared kv
        requests = [_python_request(factory, kv, plugin, config, grants, path) for _ in range(2)]
        seen[tier] = (requests, kv.contents())
    assert seen["microvm"] == seen["wasmtime"]
    first, calls = seen["microvm"][0][0]
    if fault is not None:
        assert first[-1][:2] == ("fault", fault), first
        return
    assert all(o[0] == "decision" for o in first), first
    decision = first[1][1]
    if path.startswith(("/admin", "/private")):
        assert decision.kind is DecisionKind.RESPOND and decision.status == 403
    else:
        assert decision.kind is DecisionKind.MODIFY
    if plugin == "guard" and decision.kind is DecisionKind.MODIFY:
        assert first[3][1].headers.set == (Header("x-guard", b"on"), Header("x-guard-hooks", b"2"))
    if "stamp=on" in config:
        assert Header("x-guard-time", b"N") in decision.headers.set and ("wall_now", (), "-") in calls
    if "count=on" in config:
        assert seen["microvm"][1] == {"requests": (2).to_bytes(8, "little")}
        assert ("kv_increment", ("requests", 1), 1) in calls


# --- a hostile guest: every value it reports is checked ------------------------------------------


@pytest.fixture(scope="module")
def forger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VmPool, _Shared]]:
    out = tmp_path_factory.mktemp("forger")
    objs = guest_build.compile_c([HERE / "kvm_guests" / "http_forger.c"], out)
    image = guest_build.link_image(objs, out / "forger.elf")
    template = build_template(load_image(image), Layout.for_memory_limit(1 << 20))
    shared = _Shared.get()
    pool = VmPool(shared.system, template, shared.threads, target=1, warm=warm_up)
    pool.start()
    yield pool, shared
    pool.close()
    template.close()


def _forged(forger: tuple[VmPool, _Shared], answer: bytes, heap: bytes = b"") -> Outcome:
    pool, shared = forger
    host = HostCapabilities("l", "forger", Grants(), Limits(), KvStore(1, 1), Sent())
    i = MicroVmHttpInstance(pool, pool.take(), host, shared.watchdog, 1.0).bind_phases(HTTP_PHASES_ALL)
    body = struct.pack("<I", len(answer)) + answer + heap
    outcome = _outcome(lambda: i.submit(lambda: i.request_body(body, True)).result())
    if outcome[0] == "fault":
        assert i._lease.vm.poisoned is not None  # never used again before a restore
    i.release()
    return outcome


HEAP = abi.LC_HEAP_BASE
PAGE = 65536
HEAP_SIZE = Layout.for_memory_limit(1 << 20).heap_size


def _result(base: int, size: int, retptr: int) -> bytes:
    return abi.HTTP_RESULT.pack(base, size, retptr, 0)


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (_result(abi.LC_IN_BASE, PAGE, 0), "below the heap"),  # the IN buffer: not plugin memory
        (_result(abi.LC_STACK_BASE, PAGE, 0), "below the heap"),
        (_result(HEAP, 2 * (1 << 20), 0), "not whole pages within the cap"),  # over the memory cap
        (_result(HEAP, PAGE + 1, 0), "not whole pages"),
        (_result(HEAP + HEAP_SIZE - PAGE, 2 * PAGE, 0), "outside a window"),  # runs off the heap's end
        (_result(HEAP + HEAP_SIZE, PAGE, 0), "outside a window"),
        (_result(2**64 - PAGE, PAGE, 0), "outside a window"),  # wraps around
        (_result(HEAP, PAGE, PAGE - 8), r"decision return area at 0xfff8\+40 is outside"),
        (_result(HEAP, PAGE, 6), "not aligned to 4"),
        (_result(HEAP, 0, 0), "outside the plugin's memory"),
        (_result(HEAP, PAGE, 0)[:-1], "an http result of 23 bytes"),
        (_result(HEAP, PAGE, 0) + b"\0" * 8, "an http result of 32 bytes"),
    ],
)  # fmt: skip
def test_a_forged_answer_is_an_abi_fault(forger: tuple[VmPool, _Shared], answer: bytes, match: str) -> None:
    outcome = _forged(forger, answer)
    assert outcome[:2] == ("fault", FaultKind.ABI), outcome
    assert outcome[2].startswith("on-request-body: ")
    assert re.search(match, outcome[2]), outcome


def test_the_lifter_reads_no_further_than_the_reported_memory(forger: tuple[VmPool, _Shared]) -> None:
    # A modify decision whose header name lies in the heap, but past the memory
    # the guest reported: refused, not read.
    area = struct.pack("<B3xIIIIIIB3xII", 1, 64, 1, 0, 0, 0, 0, 0, 0, 0)
    entry = struct.pack("<IIII", PAGE + 16, 4, 0, 0)
    heap = area + b"\0" * (64 - len(area)) + entry
    assert _forged(forger, _result(HEAP, 2 * PAGE, 0), heap + b"\0" * (PAGE + 16 - len(heap)) + b"name") == (
        "decision", HttpDecision(DecisionKind.MODIFY, headers=HeaderMutation(set=(Header("name", b""),))))
    outcome = _forged(forger, _result(HEAP, PAGE, 0), heap)
    assert outcome[:2] == ("fault", FaultKind.ABI)
    assert "set[0] name at 0x10010+4 is outside the plugin's memory (65536 bytes)" in outcome[2]


def test_a_well_formed_forged_answer_is_just_a_decision(forger: tuple[VmPool, _Shared]) -> None:
    # The heap is zero: tag 0 at offset 0 is `continue`. Proves the refusals above are the checks'.
    assert _forged(forger, _result(HEAP, PAGE, 0)) == ("decision", CONTINUE)
    assert _forged(forger, _result(HEAP + PAGE, PAGE, 8)) == ("decision", CONTINUE)


def test_the_flat_encoding() -> None:
    assert encode_pairs([(b"ab", b""), (b"", b"xyz")]) == (
        struct.pack("<I", 2) + struct.pack("<II", 2, 0) + b"ab" + struct.pack("<II", 0, 3) + b"xyz")


def test_the_http_result_record_mirrors_lc_guest_h() -> None:
    text = (HERE.parent / "guest" / "include" / "lc_guest.h").read_text()
    body = re.search(r"struct lc_http_result\s*\{(.*?)\};", text, re.S)
    assert body is not None
    bits = re.findall(r"uint(\d+)_t\s+\w+;", body.group(1))
    assert "<" + "".join({"32": "I", "64": "Q"}[b] for b in bits) == abi.HTTP_RESULT.format


# --- the guest refuses requests of the wrong shape or world ---------------------------------------

_BAD_REQUEST = 3  # guest/runtime/lc_rt.h LC_ABI_BAD_REQUEST


@pytest.mark.parametrize(
    ("op", "arg0", "arg1", "payload"),
    [
        (abi.Op.DATA, 0, 0, b"x"),  # a tcp-filter op to an http-filter image
        (abi.Op.HTTP, 6, 0, b""),  # no such phase
        (abi.Op.HTTP, 1, 2, b""),  # end_of_stream is 0 or 1
        (abi.Op.HTTP, 2, 1, encode_pairs([])),  # trailers have no end_of_stream
        (abi.Op.HTTP, 0, 0, struct.pack("<I", 5)),  # five headers announced, none sent
        (abi.Op.HTTP, 0, 0, struct.pack("<III", 1, 9, 0) + b"short"),  # a name shorter than its length
        (abi.Op.HTTP, 0, 0, encode_pairs([]) + encode_pairs([]) + b"!"),  # bytes left over
        (abi.Op.HTTP, 0, 0, encode_pairs([])),  # the attributes list missing
    ],
)  # fmt: skip
async def test_a_malformed_request_fails_the_event(load: LoadFn, answer: Path, op: abi.Op, arg0: int,
                                                   arg1: int, payload: bytes) -> None:
    p = await load(answer)
    lease = p.factory.pool.take()
    try:
        with pytest.raises(VmFault) as e:
            lease.thread.run(lambda: lease.vm.call(op, arg0, arg1, payload))
        assert (e.value.status, e.value.detail) == (abi.Status.ABI, _BAD_REQUEST)
    finally:
        p.factory.pool.give_back(lease).result()


async def test_an_http_op_to_a_tcp_filter_image_is_refused() -> None:
    from vmm.microvm.tier import load

    f = await load(SandboxSpec("l", str(plugin_build.build_core("rewrite"))), pool_size=1)
    lease = f.pool.take()
    try:
        for op in (abi.Op.HTTP, abi.Op.PHASES):
            with pytest.raises(VmFault) as e:
                lease.thread.run(lambda op=op: lease.vm.call(op, 1, 0, b""))  # type: ignore[misc]
            assert (e.value.status, e.value.detail) == (abi.Status.ABI, _BAD_REQUEST)
            lease.thread.run(lambda: f.pool.snapshot.restore(lease.vm))  # type: ignore[union-attr]
    finally:
        f.pool.give_back(lease).result()
        await f.aclose()


# --- a Python component that misbehaves, in the micro-VM ---------------------------------------

MISBEHAVE_LIMITS = Limits(memory_bytes=64 << 20, event_cpu_ms=1500)
"""`grow` must reach the memory cap inside the budget: it touches ~40 MiB of new pages, whose
faults are the guest's CPU time (0.2-0.4 s here, more under load: 300 ms once ended it as
BUDGET); `loop` spins for the whole budget in each tier."""


@pytest.fixture(scope="module")
async def misbehave_py(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    """tests/http_plugins/misbehave_py (raw componentize-py bindings) loaded in both tiers."""
    out = tmp_path_factory.mktemp("misbehave-py") / "misbehave_py.wasm"
    wasm = plugin_build.componentize_python(HERE / "http_plugins" / "misbehave_py", "app", "http-filter", out)
    spec = SandboxSpec("http-listener", str(wasm), Grants(frozenset({"metadata"})), MISBEHAVE_LIMITS)
    tiers: dict[str, Any] = {}
    try:
        tiers["microvm"] = await load_http(spec, pool_size=1)
        tiers["wasmtime"] = await wt.load_http(spec)
        yield tiers
    finally:
        for f in tiers.values():
            await f.aclose()


@pytest.mark.parametrize(("mode", "fault"), [
    ("ok", None), ("loop", FaultKind.BUDGET), ("grow", FaultKind.MEMORY), ("raise", FaultKind.TRAP),
    ("status", FaultKind.ABI), ("body", FaultKind.ABI),
])  # fmt: skip
def test_a_misbehaving_python_component_faults_alike_in_both_tiers(
        misbehave_py: dict[str, Any], mode: str, fault: FaultKind | None) -> None:
    """CPython spinning forever ends on its own CPU budget in the micro-VM (the watchdog), one
    allocating forever on its memory cap, a raise as a trap, a contract violation as an ABI fault:
    the same kind, in the same hook, as in wasmtime (but for the memory cap, below)."""
    steps: list[tuple[str, tuple[Any, ...]]] = [
        ("open", ("http-listener", f"mode={mode}")),
        ("request_headers", ([Header(":path", b"/x")], [("request.path", "/x")], False)),
        ("request_body", (b"body", True)),
    ]
    kinds = {}
    grants = Grants(frozenset({"metadata"}))
    for tier, factory in misbehave_py.items():
        kv = ObservedKv(10, 64)
        host = RecordingHost("http-listener", "misbehave_py", grants, MISBEHAVE_LIMITS, kv, Sent())
        outcomes = _request(OnWorker(factory.new_instance(host)), steps)
        kinds[tier] = [(o[0], o[1] if o[0] == "fault" else o[1].kind) for o in outcomes]
    want = ([("decision", DecisionKind.CONTINUE)] * 2 + [("decision", DecisionKind.MODIFY)] * 1
            + [("decision", DecisionKind.CONTINUE)] if fault is None
            else [("decision", DecisionKind.CONTINUE), ("fault", fault)])  # fmt: skip
    if mode == "grow":
        # The one difference: CPython turns the refused memory.grow into MemoryError, an
        # uncaught exception; the micro-VM sees the memory at its cap and says so, wasmtime's
        # component path cannot read a component's memory size and reports the trap.
        assert kinds["wasmtime"] == [("decision", DecisionKind.CONTINUE), ("fault", FaultKind.TRAP)]
        assert kinds["microvm"] == want, kinds
        return
    assert kinds["microvm"] == kinds["wasmtime"] == want, kinds


def test_a_python_exception_reads_alike_in_both_tiers(misbehave_py: dict[str, Any]) -> None:
    """An uncaught exception ends componentize-py's call with `unreachable`: wasmtime says so
    under a backtrace ("error while executing at wasm backtrace: ... Caused by: wasm trap:
    wasm `unreachable` instruction executed"), the micro-VM by its trap code. Both logs read
    the same line."""
    steps: list[tuple[str, tuple[Any, ...]]] = [
        ("open", ("http-listener", "mode=raise")),
        ("request_headers", ([Header(":path", b"/x")], [("request.path", "/x")], False)),
    ]
    grants = Grants(frozenset({"metadata"}))
    seen = {}
    for tier, factory in misbehave_py.items():
        kv = ObservedKv(10, 64)
        host = RecordingHost("http-listener", "misbehave_py", grants, MISBEHAVE_LIMITS, kv, Sent())
        seen[tier] = _request(OnWorker(factory.new_instance(host)), steps)[-1]
    assert seen["microvm"] == seen["wasmtime"] == (
        "fault", FaultKind.TRAP, "on-request-headers: wasm trap: unreachable"), seen
