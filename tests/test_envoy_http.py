"""End to end over HTTP: real Envoy 1.40 (HTTP ext_proc) -> real `lightcell serve` -> the redact
plugin (tier auto: the micro-VM where /dev/kvm works), with a real HTTP/1.1 upstream on loopback.

One Envoy + one Lightcell serve the module. Listener `web` masks "secret" (its listener policy)
except under /api/, whose route policy masks "token"; `ghost` names a listener Lightcell does not
know; `fault_<mode>` run redact without a pattern (on-open traps at the first body) under each
failure mode. Each listener has its own upstream, which records every byte it receives and answers
with a body of its own that carries both patterns.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from extproc.harness import EnvoyProcess, LightcellProcess, static_cluster, write_config

pytestmark = [pytest.mark.envoy]

IO_TIMEOUT = 30.0
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
REPLY_PREFIX = b"upstream says secret and token; got: "
LIMITS = {"memory_mb": 16, "event_cpu_ms": 2000}
MODES = ("close", "reset", "allow")


@dataclass
class HttpUpstream:
    """An asyncio HTTP/1.1 server: records each request (path, body) and every raw byte; answers
    REPLY_PREFIX + the request body, with a content-length. Bodies: content-length or chunked."""

    requests: list[tuple[str, bytes]] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> HttpUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, n: int) -> bytes:
        data = await reader.readexactly(n)
        self.raw += data
        return data

    async def _line(self, reader: asyncio.StreamReader, until: bytes = b"\r\n") -> bytes:
        data = await reader.readuntil(until)
        self.raw += data
        return data

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await self._line(reader, b"\r\n\r\n")).decode("latin-1").split("\r\n")
                path = head[0].split(" ")[1]
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)
                }
                body = b""
                if "content-length" in headers:
                    body = await self._read(reader, int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    while size := int((await self._line(reader)).split(b";")[0], 16):
                        body += await self._read(reader, size)
                        await self._read(reader, 2)
                    while await self._line(reader) != b"\r\n":  # trailers
                        pass
                self.requests.append((path, body))
                reply = REPLY_PREFIX + body
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                    + f"content-length: {len(reply)}\r\n\r\n".encode()
                    + reply
                )
                await writer.drain()
        writer.close()


LOOPBACK = "127.0.0.1"


def _ext_proc(lightcell_name: str) -> dict[str, Any]:
    return {
        "@type": EXT_PROC,
        "failure_mode_allow": False,
        "message_timeout": "10s",
        "processing_mode": {
            "request_header_mode": "SEND",
            "response_header_mode": "SEND",
            "request_body_mode": "STREAMED",
            "response_body_mode": "BUFFERED",
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        },
        "metadata_options": {"receiving_namespaces": {"untyped": ["lightcell"]}},
        "grpc_service": {
            "envoy_grpc": {"cluster_name": "lightcell"},
            "initial_metadata": [{"key": "x-lightcell-listener", "value": lightcell_name}],
        },
    }


def _policy(plugin: Path, config: str, failure: str = "close") -> dict[str, Any]:
    return {
        "plugin": str(plugin),
        "config": config,
        "tier": "auto",
        "failure_mode": failure,
        "limits": LIMITS,
    }


def _listener(
    name: str, upstream: int, policy: dict[str, Any], route_policy: dict[str, Any] | None = None
) -> dict[str, Any]:
    cluster = f"upstream_{name}"
    routes: list[dict[str, Any]] = []
    if route_policy is not None:
        routes.append(
            {
                "name": "api",
                "match": {"prefix": "/api/"},
                "route": {"cluster": cluster},
                "metadata": {"filter_metadata": {"lightcell": route_policy}},
                "typed_per_filter_config": {
                    "envoy.filters.http.ext_proc": {
                        "@type": PER_ROUTE,
                        "overrides": {
                            "grpc_initial_metadata": [{"key": "x-lightcell-route", "value": "api"}]
                        },
                    }
                },
            }
        )
    routes.append({"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster}})
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
        "http_filters": [
            {
                "name": "envoy.filters.http.ext_proc",
                "typed_config": _ext_proc("no-such-listener" if name == "ghost" else name),
            },
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "metadata": {"filter_metadata": {"lightcell": policy}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }



def _bootstrap(
    listeners: list[dict[str, Any]], upstreams: dict[str, HttpUpstream], socket: Path
) -> dict[str, Any]:
    clusters = [static_cluster("lightcell", {"pipe": {"path": str(socket)}}, http2=True)]
    clusters += [
        static_cluster(f"upstream_{name}", {"socket_address": {"address": LOOPBACK, "port_value": up.port}})
        for name, up in upstreams.items()
    ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


@dataclass
class Stack:
    envoy: EnvoyProcess
    lightcell: LightcellProcess
    upstreams: dict[str, HttpUpstream]

    def url(self, listener: str, path: str) -> str:
        return f"http://127.0.0.1:{self.envoy.ports[listener]}{path}"

    def diagnose(self) -> str:
        log = "\n".join(self.lightcell.log().splitlines()[-15:])
        return f"envoy log tail:\n{self.envoy.log()[-2000:]}\nlightcell log tail:\n{log}"


@pytest.fixture(scope="module")
async def stack(
    built_plugins: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp("envoy_http")
    socket = workdir / "lightcell.sock"
    redact = built_plugins["redact"]
    names = ("web", "ghost", *(f"fault_{mode}" for mode in MODES))
    upstreams = {name: await HttpUpstream().start() for name in names}
    web = _listener(
        "web", upstreams["web"].port, _policy(redact, "pattern=secret"), _policy(redact, "pattern=token")
    )
    ghost = _listener("ghost", upstreams["ghost"].port, _policy(redact, "pattern=secret"))
    faulty = [  # on-open traps: no pattern
        _listener(f"fault_{mode}", upstreams[f"fault_{mode}"].port, _policy(redact, "", mode))
        for mode in MODES
    ]
    # Lightcell knows all but ghost; Envoy has them all.
    known = {n: up for n, up in upstreams.items() if n != "ghost"}
    lightcell_config = write_config(_bootstrap([web, *faulty], known, socket), workdir / "lightcell.yaml")
    lightcell = LightcellProcess(
        lightcell_config, socket, workdir / "lightcell.log", ["--log-level", "debug"]
    )
    envoy = EnvoyProcess(_bootstrap([web, ghost, *faulty], upstreams, socket), workdir)
    try:
        await lightcell.start()
        await envoy.start()
        yield Stack(envoy, lightcell, upstreams)
    finally:
        await envoy.stop()
        await lightcell.stop()
        for up in upstreams.values():
            await up.stop()


def _post(url: str, body: bytes) -> tuple[int, bytes, Message]:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=IO_TIMEOUT) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def _get(url: str) -> tuple[int, bytes, Message]:
    with urllib.request.urlopen(url, timeout=IO_TIMEOUT) as r:
        return r.status, r.read(), r.headers


async def post(stack: Stack, listener: str, path: str, body: bytes) -> tuple[int, bytes, Message]:
    return await asyncio.to_thread(_post, stack.url(listener, path), body)


async def test_listener_and_route_policies_mask_both_directions(stack: Stack) -> None:
    up = stack.upstreams["web"]
    status, body, headers = await post(stack, "web", "/other", b"token and secret")
    assert status == 200, stack.diagnose()
    assert up.requests[-1] == ("/other", b"token and ******")  # the listener's pattern
    assert body == b"upstream says ****** and token; got: token and ******"
    assert headers["x-lightcell-redacted"] == "2"  # set on the last (BUFFERED) response body
    status, body, headers = await post(stack, "web", "/api/x", b"token and secret")
    assert status == 200, stack.diagnose()
    assert up.requests[-1] == ("/api/x", b"***** and secret")  # the route's pattern
    assert body == b"upstream says secret and *****; got: ***** and secret"
    assert headers["x-lightcell-redacted"] == "2"
    # A request body in several STREAMED chunks, the pattern across a boundary, and a GET.
    big = b"x" * 70_000 + b"sec" + b"ret" + b"y" * 70_000
    status, body, _ = await post(stack, "web", "/big", big)
    assert status == 200, stack.diagnose()
    assert up.requests[-1] == ("/big", big.replace(b"secret", b"******"))
    status, body, _ = await asyncio.to_thread(_get, stack.url("web", "/get"))
    assert (status, body) == (200, b"upstream says ****** and token; got: ")


async def test_an_unknown_listener_is_refused_and_nothing_passes(stack: Stack) -> None:
    status, body, _ = await post(stack, "ghost", "/x", b"token and secret")
    assert 500 <= status <= 599
    assert b"secret" not in body and b"token" not in body
    assert stack.upstreams["ghost"].raw == b""
    assert "unknown HTTP listener 'no-such-listener'" in stack.lightcell.log()


@pytest.mark.parametrize("mode", MODES)
async def test_a_plugin_fault_under_each_failure_mode(stack: Stack, mode: str) -> None:
    listener = f"fault_{mode}"
    up = stack.upstreams[listener]
    status, body, _ = await post(stack, listener, "/x", b"token and secret")
    if mode == "allow":  # the plugin is dropped: the rest of the request goes on unchanged
        assert status == 200, stack.diagnose()
        assert up.requests == [("/x", b"token and secret")]
    else:  # close: Lightcell answers 500; reset: a non-OK gRPC status, Envoy answers 500
        assert status == 500, stack.diagnose()
        assert b"secret" not in body
        assert b"secret" not in up.raw and up.requests == []
    log = stack.lightcell.log()
    assert log.count(f"plugin fault protocol=http listener={listener} ") == 1
    assert f"fault=trap failure_mode={mode}" in log
