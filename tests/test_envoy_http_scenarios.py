"""Envoy's own HTTP ext_proc scenarios, replayed against the real Envoy 1.40 -> real `lightcell
serve` -> plugins built from source, with a real HTTP/1.1 upstream on loopback; every scenario in
both tiers (wasmtime, and a KVM micro-VM per request).

One Envoy and one Lightcell serve the whole module through many listeners, one per Envoy
processing mode or failure mode. Most listeners run tests/http_plugins/knobs.c, which does per
phase what its policy config says, plus what the request header `x-knobs` adds for that request:
one listener serves many scenarios. Clients: raw asyncio HTTP/1.1 (chunked bodies with trailers
need it) and curl over HTTP/2 with prior knowledge (h2c).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from extproc.harness import EnvoyProcess, LightcellProcess, static_cluster, write_config
from plugins import build as plugin_build

pytestmark = [pytest.mark.envoy, pytest.mark.kvm]

IO_TIMEOUT = 60.0
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
REPLY_PREFIX = b"upstream got: "
ACCESS_LOG_FORMAT = "path=%REQ(:PATH)% probe=%DYNAMIC_METADATA(lightcell:probe)%\n"
MIB = 1024 * 1024

HEADERS_ONLY = {"request_header_mode": "SEND", "response_header_mode": "SEND"}
ALL_SEND = {
    "request_header_mode": "SEND",
    "response_header_mode": "SEND",
    "request_body_mode": "STREAMED",
    "response_body_mode": "STREAMED",
    "request_trailer_mode": "SEND",
    "response_trailer_mode": "SEND",
}


def _bodies(mode: str, headers: str = "SEND") -> dict[str, str]:
    return {
        "request_header_mode": headers,
        "response_header_mode": headers,
        "request_body_mode": mode,
        "response_body_mode": mode,
    }


HDR_CONFIG = (
    "rqh.set=x-set:one,rqh.append=x-app:two,rqh.remove=x-drop,"
    "rsh.set=x-rs-set:three,rsh.append=x-rs-app:four,rsh.remove=x-up-drop"
)


@dataclass(frozen=True)
class Spec:
    """One listener: its plugin and policy, and its ext_proc filter's settings."""

    plugin: str  # "knobs" or "redact"
    config: str = ""
    mode: dict[str, str] = field(default_factory=lambda: dict(HEADERS_ONLY))
    failure: str = "close"
    policy: dict[str, Any] = field(default_factory=dict)
    ext_proc: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=lambda: {"memory_mb": 16, "event_cpu_ms": 2000})
    access_log: bool = False


SPECS: dict[str, Spec] = {
    "hdr": Spec("knobs_hdr", HDR_CONFIG),
    # Immediate responses and faults from every phase, under each failure mode.
    "all_close": Spec(
        "knobs",
        mode=ALL_SEND,
        policy={"close_status": 503, "max_header_bytes": 1024},
        limits={"memory_mb": 16, "event_cpu_ms": 300},
    ),
    "all_reset": Spec("knobs", mode=ALL_SEND, failure="reset", limits={"memory_mb": 16, "event_cpu_ms": 300}),
    "all_allow": Spec("knobs", mode=ALL_SEND, failure="allow", limits={"memory_mb": 16, "event_cpu_ms": 300}),
    # Every body mode.
    "none": Spec("knobs_hdr", mode=_bodies("NONE")),
    "streamed": Spec("knobs_notrl", mode=_bodies("STREAMED")),
    "buffered": Spec("knobs_notrl", mode=_bodies("BUFFERED")),
    # Request headers skipped: x-knobs cannot reach the plugin, so the policy says what to do.
    "buffered_skip": Spec("knobs_body", "rqb.body=double,rsb.body=double", mode=_bodies("BUFFERED", "SKIP")),
    "partial": Spec("knobs_notrl", mode=_bodies("BUFFERED_PARTIAL")),
    "duplex": Spec(
        "knobs",
        mode={
            **_bodies("FULL_DUPLEX_STREAMED"),
            "request_trailer_mode": "SEND",
            "response_trailer_mode": "SEND",
        },
    ),
    "observe": Spec(
        "knobs_notrl",
        "rqb.body=upper,rsb.body=upper",
        mode=_bodies("STREAMED"),
        failure="allow",
        ext_proc={"observability_mode": True, "failure_mode_allow": True},
    ),
    # Message timeout (Envoy's default, 200 ms) against a plugin that takes 1 s.
    "timeout_deny": Spec("knobs_hdr", ext_proc={"message_timeout": None}),
    "timeout_allow": Spec(
        "knobs_hdr", failure="allow", ext_proc={"message_timeout": None, "failure_mode_allow": True}
    ),
    # Phases: redact wants the bodies only.
    "ovr": Spec("redact", "pattern=secret", mode=ALL_SEND, ext_proc={"allow_mode_override": True}),
    "noovr": Spec("redact", "pattern=secret", mode=ALL_SEND),
    "enable": Spec("knobs", mode=_bodies("NONE"), ext_proc={"allow_mode_override": True}),
    "meta": Spec("knobs_hdr", "rqh.meta=1", access_log=True),
    "leak": Spec("knobs_hdr"),
}


# --- the upstream ---------------------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Upstream:
    """HTTP/1.1 on loopback: records each request (headers, body, trailers) and every raw byte.
    Answers by path: /size/N -> N bytes of 'abcdefgh...'; /trailers... -> REPLY_PREFIX + body,
    chunked, with the trailer `x-up-trailer: yes`; anything else -> REPLY_PREFIX + body with a
    content-length and a header `x-up-drop` (for the remove scenario)."""

    seen: list[Seen] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def find(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.raw += head
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = [
                    (k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:] if h)
                ]
                found = dict(headers)
                body, trailers = b"", list[tuple[str, str]]()
                if path.startswith("/early"):  # answer before reading the request body
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
                    await writer.drain()
                if "content-length" in found:
                    body = await reader.readexactly(int(found["content-length"]))
                    self.raw += body
                elif found.get("transfer-encoding", "").lower() == "chunked":
                    body, trailers = await _read_chunked(reader, self.raw)
                self.seen.append(Seen(path, headers, body, trailers))
                if path.startswith("/early"):
                    continue
                writer.write(_answer(path, body))
                await writer.drain()
        writer.close()


def _answer(path: str, body: bytes) -> bytes:
    if path.startswith("/size/"):
        size = int(path.split("/")[2])
        data = (b"abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1))[:size]
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + data
    reply = REPLY_PREFIX + body
    if path.startswith("/trailers"):
        return (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-up-trailer\r\n\r\n"
            + b"%x\r\n" % len(reply)
            + reply
            + b"\r\n0\r\nx-up-trailer: yes\r\n\r\n"
        )
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-up-drop: here\r\n"
        + b"content-length: %d\r\n\r\n" % len(reply)
        + reply
    )


async def _read_chunked(
    reader: asyncio.StreamReader, raw: bytearray | None = None
) -> tuple[bytes, list[tuple[str, str]]]:
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if raw is not None:
            raw += line
        if size == 0:
            break
        chunk = await reader.readexactly(size + 2)
        if raw is not None:
            raw += chunk
        body += chunk[:-2]
    trailers = []
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        trailers.append((name.strip().lower(), value.strip()))
    return bytes(body), trailers


# --- clients ----------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


async def http1(
    port: int,
    path: str,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
    trailers: Sequence[tuple[str, str]] | None = None,
) -> Reply:
    """One request on its own connection; a body with `trailers` goes chunked."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=16 * MIB)
    try:
        method = "GET" if body is None else "POST"
        head = [
            f"{method} {path} HTTP/1.1",
            "host: test",
            "connection: close",
            *(f"{k}: {v}" for k, v in headers),
        ]
        if trailers is not None:
            head.append("transfer-encoding: chunked")
            data = body or b""
            tail = "".join(f"{k}: {v}\r\n" for k, v in trailers).encode()
            payload = (b"%x\r\n" % len(data) + data + b"\r\n" if data else b"") + b"0\r\n" + tail + b"\r\n"
        else:
            if body is not None:
                head.append(f"content-length: {len(body)}")
            payload = body or b""
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        return await asyncio.wait_for(_read_reply(reader), IO_TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in head[1:] if h)]
    found = dict(headers)
    if found.get("transfer-encoding", "").lower() == "chunked":
        body, trailers = await _read_chunked(reader)
        return Reply(status, headers, body, trailers)
    if "content-length" in found:
        return Reply(status, headers, await reader.readexactly(int(found["content-length"])))
    return Reply(status, headers, await reader.read())


async def curl_h2(
    port: int, path: str, body: bytes | None, workdir: Path, headers: Sequence[tuple[str, str]] = ()
) -> Reply:
    """One HTTP/2 (h2c, prior knowledge) request with curl; trailers come back after the headers."""
    out, dump, data = workdir / "body.out", workdir / "headers.out", workdir / "body.in"
    argv = ["curl", "-sS", "--http2-prior-knowledge", "-o", str(out), "-D", str(dump)]
    for k, v in headers:
        argv += ["-H", f"{k}: {v}"]
    if body is not None:
        data.write_bytes(body)
        argv += ["--data-binary", f"@{data}"]
    argv.append(f"http://127.0.0.1:{port}{path}")
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), IO_TIMEOUT)
    assert proc.returncode == 0, err.decode()
    blocks = dump.read_bytes().decode("latin-1").split("\r\n\r\n")  # not read_text: it folds CRLF
    lines = blocks[0].split("\r\n")
    assert lines[0].startswith("HTTP/2 "), lines[0]
    pairs = [(k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:] if h)]
    trailers = [
        (k.strip().lower(), v.strip())
        for block in blocks[1:] for k, _, v in (h.partition(":") for h in block.split("\r\n") if h)
    ]  # fmt: skip
    return Reply(int(lines[0].split(" ")[1]), pairs, out.read_bytes(), trailers)


# --- the stack ---------------------------------------------------------------------------------------


def _ext_proc(name: str, spec: Spec) -> dict[str, Any]:
    config: dict[str, Any] = {
        "@type": EXT_PROC,
        "failure_mode_allow": False,
        "message_timeout": "10s",
        "processing_mode": spec.mode,
        "metadata_options": {"receiving_namespaces": {"untyped": ["lightcell"]}},
        "grpc_service": {
            "envoy_grpc": {"cluster_name": "lightcell"},
            "initial_metadata": [{"key": "x-lightcell-listener", "value": name}],
        },
    }
    for key, value in spec.ext_proc.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def _listener(name: str, spec: Spec, plugins: dict[str, Path], workdir: Path, tier: str) -> dict[str, Any]:
    policy = {
        "plugin": str(plugins[spec.plugin]),
        "config": spec.config,
        "tier": tier,
        "failure_mode": spec.failure,
        "grants": ["clock", "metadata"] if spec.plugin.startswith("knobs") else [],
        "limits": spec.limits,
        **spec.policy,
    }
    hcm: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": name,
        "http_protocol_options": {"enable_trailers": True},
        "http_filters": [
            {"name": "envoy.filters.http.ext_proc", "typed_config": _ext_proc(name, spec)},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
        "route_config": {
            "name": name,
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                }
            ],
        },
    }
    if spec.access_log:
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": FILE_LOG,
                    "path": str(workdir / f"{name}.access.log"),
                    "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                },
            }
        ]
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "metadata": {"filter_metadata": {"lightcell": policy}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _bootstrap(
    plugins: dict[str, Path], upstream: Upstream, socket: Path, workdir: Path, tier: str
) -> dict[str, Any]:
    up = static_cluster("up", {"socket_address": {"address": "127.0.0.1", "port_value": upstream.port}})
    up["typed_extension_protocol_options"] = {
        HTTP_OPTIONS: {
            "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
            "explicit_http_config": {"http_protocol_options": {"enable_trailers": True}},
        }
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [_listener(name, spec, plugins, workdir, tier) for name, spec in SPECS.items()],
            "clusters": [static_cluster("lightcell", {"pipe": {"path": str(socket)}}, http2=True), up],
        },
    }


@dataclass
class Stack:
    envoy: EnvoyProcess
    lightcell: LightcellProcess
    upstream: Upstream
    workdir: Path
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def port(self, listener: str) -> int:
        return self.envoy.ports[listener]

    def path(self, prefix: str = "/p") -> str:
        """A path no other request of the module uses."""
        return f"{prefix}/{next(self._ids)}"

    def diagnose(self) -> str:
        log = "\n".join(self.lightcell.log().splitlines()[-20:])
        return f"envoy log tail:\n{self.envoy.log()[-3000:]}\nlightcell log tail:\n{log}"

    def stat(self, name: str) -> int:
        return self.envoy.stats(name).get(name, 0)


# knobs built for several phase sets (its phases are checked against each listener's mode).
KNOBS_PHASES = {
    "knobs": "LC_PHASE_ALL",
    "knobs_hdr": "LC_PHASE_REQUEST_HEADERS | LC_PHASE_RESPONSE_HEADERS",
    "knobs_notrl": "LC_PHASE_REQUEST_HEADERS | LC_PHASE_RESPONSE_HEADERS | LC_PHASE_REQUEST_BODY"
    " | LC_PHASE_RESPONSE_BODY",
    "knobs_body": "LC_PHASE_REQUEST_BODY | LC_PHASE_RESPONSE_BODY",
}


@pytest.fixture(scope="module")
def knobs_wasm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("knobs")
    source = Path(__file__).resolve().parent / "http_plugins" / "knobs.c"
    built = {}
    for name, phases in KNOBS_PHASES.items():
        wrapper = out / f"{name}.c"  # the phases first, then the plugin itself
        wrapper.write_text(f'#define LC_HTTP_PHASES ({phases})\n#include "{source}"\n')
        built[name] = plugin_build.compile_c(wrapper, out / f"{name}.wasm")
    return built


@pytest.fixture(scope="module", params=["wasmtime", "microvm"])
async def stack(
    request: pytest.FixtureRequest,
    built_plugins: dict[str, Path],
    knobs_wasm: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    tier = request.param
    workdir = tmp_path_factory.mktemp(f"envoy_http_scenarios_{tier}")
    socket = workdir / "lightcell.sock"
    upstream = await Upstream().start()
    plugins = {**knobs_wasm, "redact": built_plugins["redact"]}
    config = _bootstrap(plugins, upstream, socket, workdir, tier)
    lightcell = LightcellProcess(
        write_config(config, workdir / "lightcell.yaml"),
        socket,
        workdir / "lightcell.log",
        ["--log-level", "debug"],
    )
    envoy = EnvoyProcess(config, workdir)
    try:
        await lightcell.start()
        await envoy.start()
        yield Stack(envoy, lightcell, upstream, workdir)
    finally:
        await envoy.stop()
        await lightcell.stop()
        await upstream.stop()


def knobs(items: str) -> list[tuple[str, str]]:
    return [("x-knobs", items)]


def log_since(stack: Stack, mark: int) -> str:
    return stack.lightcell.log()[mark:]


# --- headers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("h2", [False, True], ids=["http1", "http2"])
async def test_header_set_append_remove_both_directions(stack: Stack, h2: bool) -> None:
    path = stack.path()
    sent = [("x-set", "old"), ("x-app", "one"), ("x-drop", "bye")]
    if h2:
        reply = await curl_h2(stack.port("hdr"), path, None, stack.workdir, sent)
    else:
        reply = await http1(stack.port("hdr"), path, None, sent)
    assert reply.status == 200, stack.diagnose()
    (seen,) = stack.upstream.find(path)
    assert seen.header("x-set") == ["one"]
    assert seen.header("x-app") == ["one", "two"]
    assert seen.header("x-drop") == []
    assert reply.header("x-rs-set") == "three"
    assert [v for k, v in reply.headers if k == "x-rs-app"] == ["four"]
    assert reply.header("x-up-drop") is None  # the upstream sent it; the plugin removed it
    assert reply.body == REPLY_PREFIX


# --- immediate responses -------------------------------------------------------------------------

PHASES = ("rqh", "rqb", "rqt", "rsh", "rsb", "rst")


@pytest.mark.parametrize("phase", PHASES)
async def test_an_immediate_response_from_every_phase(stack: Stack, phase: str) -> None:
    path = stack.path("/trailers")  # the upstream answers with a body and trailers
    reply = await http1(
        stack.port("all_close"),
        path,
        b"request body",
        knobs(f"{phase}.respond=418"),
        [("x-client-trailer", "a")],
    )
    seen = stack.upstream.find(path)
    if phase.startswith("rq"):
        assert seen == [], "the upstream got a whole request although the plugin answered"
    else:
        assert [(s.body, s.trailers) for s in seen] == [(b"request body", [("x-client-trailer", "a")])]
    assert reply.status == 418, stack.diagnose()
    assert reply.body == f"knobs {phase}\n".encode()
    assert ("x-up-trailer", "yes") not in reply.trailers


# --- faults under each failure mode --------------------------------------------------------------

FAULT_KIND = {"trap": "trap", "loop": "budget", "grow": "memory"}


@pytest.mark.parametrize("kind", sorted(FAULT_KIND))
@pytest.mark.parametrize("mode", ["close", "reset", "allow"])
@pytest.mark.parametrize("phase", ["rqh", "rqb"])
async def test_a_plugin_fault_under_each_failure_mode(stack: Stack, mode: str, kind: str, phase: str) -> None:
    listener = f"all_{mode}"
    mark = len(stack.lightcell.log())
    path = stack.path()
    body = b"private body of " + path.encode()
    reply = await http1(stack.port(listener), path, body, knobs(f"{phase}.fault={kind}"))
    seen = stack.upstream.find(path)
    if mode == "allow":  # the plugin is dropped; the request goes on unchanged
        assert reply.status == 200, stack.diagnose()
        assert [s.body for s in seen] == [body]
    else:  # close: the policy's close_status (503); reset: a non-OK gRPC status, Envoy's 500
        assert reply.status == (503 if mode == "close" else 500), stack.diagnose()
        assert seen == []
        assert body not in stack.upstream.raw
    log = log_since(stack, mark)
    assert log.count(f"plugin fault protocol=http listener={listener} ") == 1, log
    assert f"fault={FAULT_KIND[kind]} failure_mode={mode}" in log


async def test_a_header_change_over_the_policy_limit_is_a_fault(stack: Stack) -> None:
    """all_close has max_header_bytes 1024: a 1500-byte header from the plugin is refused."""
    path = stack.path()
    mark = len(stack.lightcell.log())
    reply = await http1(stack.port("all_close"), path, None, knobs("rqh.set=x-big:" + "b" * 1500))
    assert reply.status == 503, stack.diagnose()
    assert stack.upstream.find(path) == []
    assert "header mutations add more than 1024 bytes" in log_since(stack, mark)


# --- body modes ----------------------------------------------------------------------------------

BODY_LISTENERS = ("none", "streamed", "buffered", "partial", "duplex")


@pytest.mark.parametrize("listener", BODY_LISTENERS)
async def test_each_body_mode_changes_both_bodies(stack: Stack, listener: str) -> None:
    path = stack.path()
    body = b"hello body " + path.encode()
    reply = await http1(stack.port(listener), path, body, knobs("rqb.body=upper,rsb.body=upper"))
    assert reply.status == 200, stack.diagnose()
    (seen,) = stack.upstream.find(path)
    if listener == "none":  # Envoy sends no body: nothing changes
        assert seen.body == body
        assert reply.body == REPLY_PREFIX + body
    else:
        assert seen.body == body.upper()
        assert reply.body == (REPLY_PREFIX + body.upper()).upper()


@pytest.mark.parametrize("listener", ["streamed", "buffered", "buffered_skip", "partial", "duplex"])
async def test_a_body_that_changes_length_keeps_the_framing_right(stack: Stack, listener: str) -> None:
    """Content-length after a body change: Envoy strips it except in BUFFERED with headers SEND,
    where Lightcell sets the new length (a wrong one would give the client a 500)."""
    path = stack.path()
    body = b"twice " + path.encode()
    reply = await http1(stack.port(listener), path, body, knobs("rqb.body=double,rsb.body=double"))
    assert reply.status == 200, stack.diagnose()
    (seen,) = stack.upstream.find(path)
    assert seen.body == body * 2
    if seen.header("content-length"):
        assert seen.header("content-length") == [str(len(body) * 2)]
    assert reply.body == (REPLY_PREFIX + body * 2) * 2
    length = reply.header("content-length")
    assert length is None or int(length) == len(reply.body)


@pytest.mark.parametrize("listener", ["streamed", "duplex"])
async def test_eight_mib_bodies_both_ways(stack: Stack, listener: str) -> None:
    path = stack.path()
    body = (b"abcdefghijklmnopqrstuvwxyz" * (8 * MIB // 26 + 1))[: 8 * MIB]
    reply = await http1(stack.port(listener), path, body, knobs("rqb.body=upper"))
    assert reply.status == 200, stack.diagnose()
    (seen,) = stack.upstream.find(path)
    assert len(seen.body) == 8 * MIB and seen.body == body.upper()
    path = f"/size/{8 * MIB}"
    reply = await http1(stack.port(listener), path, None, knobs("rsb.body=upper"))
    assert reply.status == 200, stack.diagnose()
    assert len(reply.body) == 8 * MIB and reply.body == body.upper()


@pytest.mark.parametrize("listener", ["streamed", "duplex", "buffered"])
async def test_http2_downstream(stack: Stack, listener: str) -> None:
    path = stack.path()
    body = b"over h2 " + path.encode()
    reply = await curl_h2(
        stack.port(listener), path, body, stack.workdir, knobs("rqb.body=upper,rsb.body=upper")
    )
    assert reply.status == 200, stack.diagnose()
    (seen,) = stack.upstream.find(path)
    assert seen.body == body.upper()
    assert reply.body == (REPLY_PREFIX + body.upper()).upper()


async def test_observability_mode_lets_everything_through_unchanged(stack: Stack) -> None:
    """observability_mode: Envoy sends the phases and waits for no reply; the plugin's changes
    (upper case) are never applied, and Lightcell sends nothing back."""
    mark = len(stack.lightcell.log())
    path = stack.path()
    reply = await http1(stack.port("observe"), path, b"watch me")
    assert reply.status == 200, stack.diagnose()
    assert [s.body for s in stack.upstream.find(path)] == [b"watch me"]
    assert reply.body == REPLY_PREFIX + b"watch me"
    # Envoy did not wait for the plugin: it sees the body after the client had its answer.
    log = await asyncio.wait_for(_log_with(stack, mark, "policy=observe response body"), IO_TIMEOUT)
    assert "policy=observe request body" in log
    assert "ERROR" not in log and "Traceback" not in log


async def _log_with(stack: Stack, mark: int, text: str) -> str:
    while text not in (log := log_since(stack, mark)):
        await asyncio.sleep(0.05)
    return log


async def test_streamed_request_chunks_interleave_with_the_response(stack: Stack) -> None:
    """STREAMED: the upstream answers before the request body is over, so Envoy sends the
    response headers and body between request body chunks; each gets its one reply."""
    mark = len(stack.lightcell.log())
    path = stack.path("/early")
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port("streamed"))
    head = (
        f"POST {path} HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n"
        "x-knobs: rqb.body=upper,rsb.body=upper\r\n\r\n"
    )
    writer.write(head.encode() + b"6\r\nfirst \r\n")
    await writer.drain()
    reply = await asyncio.wait_for(_read_reply(reader), IO_TIMEOUT)  # while the request is still open
    assert (reply.status, reply.body) == (200, b"EARLY"), stack.diagnose()
    await _log_with(stack, mark, "policy=streamed response body")
    with contextlib.suppress(ConnectionError):
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
    lines = [
        line.split("policy=streamed ")[1].split(" end_of_stream")[0]
        for line in log_since(stack, mark).splitlines()
        if "policy=streamed " in line
    ]
    assert lines[:4] == ["request headers", "request body", "response headers", "response body"], lines
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    assert "Traceback" not in stack.lightcell.log()


# --- trailers ------------------------------------------------------------------------------------


async def test_trailers_both_ways_over_http1(stack: Stack) -> None:
    path = stack.path("/trailers")
    reply = await http1(
        stack.port("all_close"), path, b"with trailers",
        knobs("rqt.set=x-rq-added:1,rst.set=x-rs-added:2"), [("x-client-trailer", "a")],
    )  # fmt: skip
    assert reply.status == 200, stack.diagnose()
    (seen,) = stack.upstream.find(path)
    assert seen.body == b"with trailers"
    assert ("x-client-trailer", "a") in seen.trailers and ("x-rq-added", "1") in seen.trailers
    assert reply.body == REPLY_PREFIX + b"with trailers"
    assert ("x-up-trailer", "yes") in reply.trailers and ("x-rs-added", "2") in reply.trailers


async def test_response_trailers_over_http2(stack: Stack) -> None:
    path = stack.path("/trailers")
    reply = await curl_h2(stack.port("all_close"), path, b"h2", stack.workdir, knobs("rst.set=x-rs-added:2"))
    assert reply.status == 200, stack.diagnose()
    assert ("x-up-trailer", "yes") in reply.trailers and ("x-rs-added", "2") in reply.trailers


# --- message timeout ------------------------------------------------------------------------------


async def test_a_plugin_slower_than_the_message_timeout(stack: Stack) -> None:
    """Envoy's default message_timeout is 200 ms; the plugin takes 1 s on the request headers.
    failure_mode_allow false: Envoy answers 504 and the upstream sees nothing. True: Envoy stops
    waiting and lets the request through unprocessed."""
    path = stack.path()
    reply = await http1(stack.port("timeout_deny"), path, None, knobs("rqh.spin=1000,rqh.set=x-late:1"))
    assert reply.status == 504, stack.diagnose()
    assert stack.upstream.find(path) == []
    path = stack.path()
    reply = await http1(stack.port("timeout_allow"), path, None, knobs("rqh.spin=1000,rqh.set=x-late:1"))
    assert reply.status == 200, stack.diagnose()
    (seen,) = stack.upstream.find(path)
    assert seen.header("x-late") == []  # the late reply was not applied
    # Lightcell is fine afterwards: the next request on the same listener is filtered.
    path = stack.path()
    reply = await http1(stack.port("timeout_deny"), path, None, knobs("rqh.set=x-quick:1"))
    assert reply.status == 200, stack.diagnose()
    assert stack.upstream.find(path)[0].header("x-quick") == ["1"]
    assert "Traceback" not in stack.lightcell.log()


# --- phases and mode_override ---------------------------------------------------------------------


def _phase_lines(log: str, policy: str, what: str) -> int:
    return len(re.findall(rf"policy={policy} {what} end_of_stream", log))


@pytest.mark.parametrize("listener", ["ovr", "noovr"])
async def test_mode_override_skips_phases_the_plugin_does_not_want(stack: Stack, listener: str) -> None:
    """redact wants the bodies only. With allow_mode_override Lightcell's reply to the request
    headers makes Envoy skip the response headers and both trailers; without it they still
    arrive and are answered unchanged, without entering the sandbox."""
    mark = len(stack.lightcell.log())
    path = stack.path("/trailers")
    reply = await http1(stack.port(listener), path, b"a secret", (), [("x-client-trailer", "a")])
    assert reply.status == 200, stack.diagnose()
    assert [s.body for s in stack.upstream.find(path)] == [b"a ******"]
    assert reply.body == REPLY_PREFIX + b"a ******"
    log = log_since(stack, mark)
    assert _phase_lines(log, listener, "request body") >= 1
    arrived = sum(
        _phase_lines(log, listener, what)
        for what in ("response headers", "request trailers", "response trailers")
    )
    assert arrived == (0 if listener == "ovr" else 3), log
    # serve warned at start-up where Lightcell cannot skip them.
    warned = f"listener {listener!r} metadata.filter_metadata.lightcell: Envoy sends request headers, "
    assert (warned in stack.lightcell.log()) == (listener == "noovr")


async def test_mode_override_asks_for_a_body_envoy_does_not_send(stack: Stack) -> None:
    """`enable` sends no bodies, but knobs wants them: the override asks for them STREAMED."""
    path = stack.path()
    reply = await http1(stack.port("enable"), path, b"turn me on", knobs("rqb.body=upper,rsb.body=upper"))
    assert reply.status == 200, stack.diagnose()
    assert [s.body for s in stack.upstream.find(path)] == [b"TURN ME ON"]
    assert reply.body == (REPLY_PREFIX + b"TURN ME ON").upper()


# --- metadata, state, concurrency -----------------------------------------------------------------


async def test_plugin_metadata_reaches_the_envoy_access_log(stack: Stack) -> None:
    path = stack.path()
    reply = await http1(stack.port("meta"), path)
    assert reply.status == 200, stack.diagnose()
    log_path = stack.workdir / "meta.access.log"

    async def line() -> str:
        while True:
            text = log_path.read_text() if log_path.exists() else ""
            found = [entry for entry in text.splitlines() if entry.startswith(f"path={path} ")]
            if found:
                return found[0]
            await asyncio.sleep(0.05)

    assert await asyncio.wait_for(line(), IO_TIMEOUT) == f"path={path} probe=ok"


async def test_no_state_crosses_requests(stack: Stack) -> None:
    """knobs counts request-header hooks in a static and remembers the last path: a reused
    sandbox would show a count above 1 or a previous request's path."""
    for _ in range(500):
        reply = await http1(stack.port("leak"), stack.path("/leak"))
        assert reply.status == 200, stack.diagnose()
        assert (reply.header("x-knobs-calls"), reply.header("x-knobs-leak")) == ("1", None)


async def test_two_hundred_concurrent_requests(stack: Stack) -> None:
    paths = [stack.path("/many") for _ in range(200)]
    replies = await asyncio.gather(
        *(
            http1(stack.port("streamed"), p, f"body of {p}".encode(), knobs("rqb.body=upper,rsb.body=upper"))
            for p in paths
        )
    )
    for p, reply in zip(paths, replies, strict=True):
        assert reply.status == 200, stack.diagnose()
        assert [s.body for s in stack.upstream.find(p)] == [f"BODY OF {p.upper()}".encode()]
        assert reply.body == (REPLY_PREFIX + f"body of {p}".encode()).upper()
