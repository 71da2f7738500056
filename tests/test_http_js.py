"""JavaScript http-filter plugins (issue 8): the jsonpatch example, built from source with
componentize-js (plugins/build.py runs `npm ci` from plugins/sdk/js/package-lock.json on first
use), run through the wasmtime tier's load_http (built without WASI, the component is one core
module importing only the contract, so it runs on the core path) and end to end through real
Envoy 1.40 + `lightcell serve` + an HTTP upstream; the SDK's helpers through a test plugin
(tests/http_plugins/sdk_probe.js).

Building needs node and npm on PATH: without them these tests fail (ToolchainMissing), they do not
skip."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from _host_fakes import Sent
from test_envoy_http import HttpUpstream, Stack, _bootstrap, _listener, _policy, post

import vmm.wasmtime_tier as wt
from extproc.harness import EnvoyProcess, LightcellProcess, write_config
from plugins import build as plugin_build
from vmm.capabilities import HostCapabilities
from vmm.contract import MAX_EVENT_BYTES, DecisionKind, HttpPhase
from vmm.http_abi import Header, HttpDecision
from vmm.kvstore import KvStore
from vmm.policy import Grants, Limits, SandboxSpec
from vmm.runner import HttpRunner
from vmm.sandbox import FaultKind, PluginFault

HERE = Path(__file__).resolve().parent
LISTENER = "js-listener"
# SpiderMonkey's memory starts at 145 pages (~9 MiB), and rewriting a body of a few hundred KB
# takes tens of MiB more (plugins/sdk/js/README.md).
LIMITS = {"memory_bytes": 64 * 1024 * 1024, "event_cpu_ms": 2000}


@pytest.fixture(scope="session")
def jsonpatch() -> Path:
    return plugin_build.build("jsonpatch")


@pytest.fixture(scope="session")
def sdk_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("js-sdk-probe") / "sdk_probe.wasm"
    return plugin_build.componentize_js(HERE / "http_plugins" / "sdk_probe.js", "http-filter", out)


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lightcell-js-cache")


class Loaded:
    def __init__(self, factory: wt.HttpFactory, spec: SandboxSpec) -> None:
        self.factory, self.spec = factory, spec
        self.kv = KvStore(spec.limits.kv_max_keys, spec.limits.kv_max_value_bytes)

    async def runner(self, config: str = "") -> HttpRunner:
        """A fresh sandbox (one request), on-open queued."""
        spec = self.spec
        name = Path(spec.plugin_path).stem
        host = HostCapabilities(spec.listener, name, spec.grants, spec.limits, self.kv, Sent())
        r = await self.factory.new_sandbox(host)
        await r.open(self.spec.listener, config)
        return r


LoadFn = Callable[..., Awaitable[Loaded]]


@pytest.fixture
async def load(cache: Path, jsonpatch: Path) -> AsyncIterator[LoadFn]:
    opened: list[wt.HttpFactory] = []

    async def _load(grants: frozenset[str] = frozenset(), plugin: Path = jsonpatch) -> Loaded:
        spec = SandboxSpec(LISTENER, str(plugin), Grants(grants), Limits(**LIMITS))
        factory = await wt.load_http(spec, cache)
        opened.append(factory)
        return Loaded(factory, spec)

    yield _load
    for f in opened:
        await f.aclose()


async def one_request(p: Loaded, config: str, *pieces: bytes) -> list[HttpDecision]:
    """The request body in `pieces` (end-of-stream on the last) through a fresh sandbox."""
    r = await p.runner(config)
    try:
        return [await r.request_body(b, i == len(pieces) - 1) for i, b in enumerate(pieces)]
    finally:
        await r.close()


def forwarded(decisions: list[HttpDecision], pieces: tuple[bytes, ...]) -> bytes:
    out = b""
    for d, piece in zip(decisions, pieces, strict=True):
        if d.kind is DecisionKind.CONTINUE:
            out += piece
        else:
            assert d.kind is DecisionKind.MODIFY and d.body is not None, d
            out += d.body
    return out


# --- the built component -------------------------------------------------------------


def test_the_component_imports_the_contract_and_no_wasi(jsonpatch: Path) -> None:
    wit = subprocess.run(
        [*plugin_build._wasm_tools(), "component", "wit", str(jsonpatch)],
        capture_output=True, text=True, check=True,
    ).stdout
    world = wit[wit.index("world root {") : wit.index("\n}\n")]
    lines = [line.split() for line in world.splitlines()]
    imports = {words[1].rstrip(";") for words in lines if words and words[0] == "import"}
    assert imports == {
        f"lightcell:filter/{i}@0.1.0"
        for i in ("types", "http-types", "log", "clock", "random", "kv", "metadata", "egress")
    }
    assert "export on-request-body: func(body: list<u8>, end-of-stream: bool) -> decision;" in world


def test_without_node_the_build_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no node, no npm
    with pytest.raises(plugin_build.ToolchainMissing, match=r"node not found: .*Node\.js .* npm"):
        plugin_build.build("jsonpatch", tmp_path)
    assert not (tmp_path / "jsonpatch.wasm").exists()


# --- through the wasmtime tier --------------------------------------------------------


async def test_a_json_body_is_rewritten(load: LoadFn) -> None:
    p = await load()
    # Built without WASI, SpiderMonkey's core module imports only contract functions, so the
    # tier unwraps it and runs it on the core path (canonical-ABI calls), as it does C plugins.
    assert (p.factory.tier, p.factory.path) == ("wasmtime", "core")
    assert p.factory.phases == HttpPhase.REQUEST_BODY  # wantedPhases(), read once at load
    body = b'{"b":2,"c":"x","meta":{"keep":true}}'
    [d] = await one_request(p, "set=a:1,meta.src:lc,s:\"two words\";drop=b,nope.x", body)
    assert d.kind is DecisionKind.MODIFY and d.headers.set == () and d.headers.remove == ()
    assert d.body == b'{"c":"x","meta":{"keep":true,"src":"lc"},"a":1,"s":"two words"}'
    # No rules: the body goes on as it was.
    [d] = await one_request(p, "", body)
    assert d.kind is DecisionKind.CONTINUE


async def test_a_body_in_pieces_is_gathered_and_sent_with_the_last(load: LoadFn) -> None:
    p = await load()
    doc = {"items": ["x" * 1000] * 600, "drop": 1}  # ~600 KB: more than two MAX_EVENT_BYTES pieces
    raw = json.dumps(doc).encode()
    assert len(raw) > 2 * MAX_EVENT_BYTES
    cuts = [0, 10, *range(MAX_EVENT_BYTES, len(raw), MAX_EVENT_BYTES), len(raw)]
    pieces = tuple(raw[a:b] for a, b in itertools.pairwise(cuts))
    assert len(pieces) == 4
    decisions = await one_request(p, "drop=drop;set=n:3;max=700000", *pieces)
    assert [d.body for d in decisions[:-1]] == [b"", b"", b""]  # held back
    assert json.loads(forwarded(decisions, pieces)) == {"items": doc["items"], "n": 3}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "request body is not JSON"),
        (b"\xff\xfe{}", "request body is not JSON"),
        (b"", "request body is not JSON"),
        (b"[1,2]", "request body is not a JSON object"),
        (b'"text"', "request body is not a JSON object"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_answered_400(
    load: LoadFn, body: bytes, error: str
) -> None:
    p = await load()
    [d] = await one_request(p, "set=a:1", body)
    assert (d.kind, d.status) == (DecisionKind.RESPOND, 400)
    assert d.response_headers == (Header("content-type", b"application/json"),)
    assert d.body is not None and json.loads(d.body) == {"error": error}


async def test_a_body_over_max_is_answered_413_at_once(load: LoadFn) -> None:
    p = await load()
    decisions = await one_request(p, "max=10", b'{"a":', b'"0123456789"}')
    assert decisions[0].body == b""
    assert (decisions[1].kind, decisions[1].status) == (DecisionKind.RESPOND, 413)


async def test_each_request_starts_from_a_fresh_instance(load: LoadFn) -> None:
    p = await load()
    # Request 1 holds back a piece and its config, then ends without end-of-stream.
    first = await p.runner("set=a:1")
    assert (await first.request_body(b'{"x":', False)).body == b""
    await first.close()
    # Request 2 sees neither the held piece nor request 1's rules.
    [d] = await one_request(p, "", b'{"y":2}')
    assert d.kind is DecisionKind.CONTINUE
    [d] = await one_request(p, "drop=y", b'{"y":2}')
    assert d.body == b"{}"


async def test_keys_like_proto_are_plain_fields(load: LoadFn) -> None:
    p = await load()
    [d] = await one_request(p, "set=__proto__.p:1,constructor:2", b'{"__proto__":{"z":1}}')
    assert d.body is not None and json.loads(d.body) == {"__proto__": {"z": 1, "p": 1}, "constructor": 2}


async def test_logging_needs_the_log_grant(load: LoadFn, caplog: pytest.LogCaptureFixture) -> None:
    denied = await load()
    assert "log" in denied.factory.imports  # imported, never granted here
    r = await denied.runner("set=a:1;log=on")
    with pytest.raises(PluginFault) as e:
        await r.request_body(b"{}", True)
    assert e.value.kind is FaultKind.DENIED
    await r.close()
    granted = await load(frozenset({"log"}))
    with caplog.at_level(logging.INFO, logger="lightcell.plugin"):
        [d] = await one_request(granted, "set=a:1;log=on", b"{}")
    assert d.body == b'{"a":1}'
    assert f"[{LISTENER}/jsonpatch] jsonpatch: 1 set, 0 dropped, 2 bytes in" in caplog.text


@pytest.mark.parametrize("config", ["nope=1", "set=a", "max=-1", "log=maybe", "drop=a..b"])
async def test_bad_config_faults_on_open(load: LoadFn, config: str) -> None:
    p = await load()
    r = await p.runner(config)  # on-open runs with the first hook
    with pytest.raises(PluginFault) as e:
        await r.request_body(b"{}", True)
    assert e.value.kind is FaultKind.TRAP
    assert await r.close() is None  # a faulted sandbox is released without on-close


# --- the SDK's helpers, through a test plugin -------------------------------------------


async def test_sdk_headers_attributes_config_and_modify(load: LoadFn, sdk_probe: Path) -> None:
    p = await load(plugin=sdk_probe)
    assert p.factory.phases == HttpPhase.REQUEST_HEADERS | HttpPhase.REQUEST_BODY
    r = await p.runner(" a=1; b ;;c=x=y")
    headers = [
        Header(":path", b"/p"), Header("x-multi", b"one"), Header("X-Multi", b"two"),
        Header("x-raw", b"\xff\xfe"),
    ]
    d = await r.request_headers(headers, [("request.path", "/p")], False)
    await r.close()
    assert d.kind is DecisionKind.MODIFY and d.body is None
    assert d.headers.set == (
        Header("x-first", b"one"),
        Header("x-all", b"one|two"),
        Header("x-raw-text", b"undefined"),  # not UTF-8: no text
        Header("x-raw-bytes", b"\xff\xfe"),  # the bytes, unchanged
        Header("x-path", b"/p"),
        Header("x-config", b'[["a","1"],["b",""],["c","x=y"]]'),
    )
    assert d.headers.append == (Header("x-app", b"a"), Header("x-app", b"b"))
    assert d.headers.remove == ("x-gone",)


async def test_sdk_respond_and_bodies(load: LoadFn, sdk_probe: Path) -> None:
    p = await load(plugin=sdk_probe)
    r = await p.runner()
    d = await r.request_headers([Header("x-answer", b"418")], [], False)
    await r.close()
    assert (d.kind, d.status, d.body) == (DecisionKind.RESPOND, 418, b"answered")
    assert d.response_headers == (Header("x-from", b"probe"),)
    r = await p.runner()
    with pytest.raises(PluginFault) as e:  # respond() refuses a status outside 200..599
        await r.request_headers([Header("x-answer", b"99")], [], False)
    assert e.value.kind is FaultKind.TRAP
    await r.close()
    [d] = await one_request(await load(plugin=sdk_probe), "", "hello \u00e9".encode())
    assert (d.kind, d.body) == (DecisionKind.MODIFY, "HELLO \u00c9".encode())
    [d] = await one_request(p, "", b"\xff")
    assert (d.kind, d.status, d.body) == (DecisionKind.RESPOND, 415, b'{"error":"not UTF-8"}')
    assert d.response_headers == (Header("content-type", b"application/json"),)


# --- end to end: Envoy + lightcell serve + upstream ---------------------------------------


@pytest.fixture(scope="module")
async def js_stack(jsonpatch: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp("envoy_http_js")
    socket = workdir / "lightcell.sock"
    upstreams = {"json": await HttpUpstream().start()}
    # wasmtime named: `auto` would pick the micro-VM (the plugin is one core module), which
    # would have to compile SpiderMonkey's 12 MB module with wasm2c.
    policy = {
        **_policy(jsonpatch, "set=via:lightcell,n:1;drop=secret;max=400000"),
        "tier": "wasmtime",
        "limits": {"memory_mb": 64, "event_cpu_ms": 2000},
    }
    listener = _listener("json", upstreams["json"].port, policy)
    config = write_config(_bootstrap([listener], upstreams, socket), workdir / "lightcell.yaml")
    lightcell = LightcellProcess(config, socket, workdir / "lightcell.log", ["--log-level", "debug"])
    envoy = EnvoyProcess(_bootstrap([listener], upstreams, socket), workdir)
    try:
        await lightcell.start(timeout_s=300)  # compiles the 12 MB component unless cached
        await envoy.start()
        yield Stack(envoy, lightcell, upstreams)
    finally:
        await envoy.stop()
        await lightcell.stop()
        await upstreams["json"].stop()


@pytest.mark.envoy
async def test_envoy_forwards_the_rewritten_json_and_answers_400_for_the_rest(js_stack: Stack) -> None:
    up = js_stack.upstreams["json"]
    status, _, _ = await post(js_stack, "json", "/a", b'{"secret":"s3","user":"ann"}')
    assert status == 200, js_stack.diagnose()
    assert up.requests[-1] == ("/a", b'{"user":"ann","via":"lightcell","n":1}')
    # Request bodies are STREAMED here: a large one arrives in several chunks, gathered whole.
    doc = {"secret": 1, "blob": "y" * 300_000}
    status, _, _ = await post(js_stack, "json", "/big", json.dumps(doc).encode())
    assert status == 200, js_stack.diagnose()
    assert up.requests[-1][0] == "/big"
    assert json.loads(up.requests[-1][1]) == {"blob": doc["blob"], "via": "lightcell", "n": 1}
    seen = len(up.requests)
    status, body, headers = await post(js_stack, "json", "/bad", b"definitely not json")
    assert status == 400, js_stack.diagnose()
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "request body is not JSON"}
    assert len(up.requests) == seen and b"definitely" not in up.raw  # answered by the plugin
