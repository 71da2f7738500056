"""Live reload of HTTP policies, in process: a real server and the redact plugin, a gRPC client
playing Envoy's HTTP ext_proc filter. A route policy is changed while a request on it is open:
the open request keeps the old plugin, a new request gets the new one, the listener's own
policy (unchanged) keeps its plugin, and the replaced one is closed after the request ends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.config import load_config
from extproc.harness import static_cluster, write_config
from extproc.server import LightcellServer

IO_TIMEOUT = 30.0
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
STREAMED, BUFFERED = 1, 2
Call = Any  # grpc.aio.StreamStreamCall


def _policy(plugin: Path, pattern: str) -> dict[str, Any]:
    limits = {"memory_mb": 16, "event_cpu_ms": 2000}
    return {"plugin": str(plugin), "config": f"pattern={pattern}", "tier": "wasmtime", "limits": limits}


def write(path: Path, plugin: Path, listener: str, route: str) -> None:
    """An HTTP listener `web` (redacting `listener`) whose route `api` redacts `route`."""
    ext_proc = {
        "@type": EXT_PROC,
        "processing_mode": {"request_body_mode": "STREAMED", "response_body_mode": "BUFFERED"},
        "grpc_service": {
            "envoy_grpc": {"cluster_name": "lightcell"},
            "initial_metadata": [{"key": "x-lightcell-listener", "value": "web"}],
        },
    }
    api = {
        "name": "api", "match": {"prefix": "/api/"}, "route": {"cluster": "up"},
        "metadata": {"filter_metadata": {"lightcell": _policy(plugin, route)}},
        "typed_per_filter_config": {"envoy.filters.http.ext_proc": {
            "@type": PER_ROUTE,
            "overrides": {"grpc_initial_metadata": [{"key": "x-lightcell-route", "value": "api"}]},
        }},
    }  # fmt: skip
    hcm = {
        "@type": HCM, "stat_prefix": "web",
        "http_filters": [
            {"name": "envoy.filters.http.ext_proc", "typed_config": ext_proc},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
        "route_config": {"name": "web", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            api, {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "up"}},
        ]}]},
    }  # fmt: skip
    web = {
        "name": "web",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "metadata": {"filter_metadata": {"lightcell": _policy(plugin, listener)}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    clusters = [
        static_cluster("lightcell", {"pipe": {"path": str(path.parent / "envoy.sock")}}, http2=True),
        static_cluster("up", {"socket_address": {"address": "127.0.0.1", "port_value": 9}}),
    ]
    write_config({"static_resources": {"listeners": [web], "clusters": clusters}}, path)


def headers(path: str) -> pb.ProcessingRequest:
    pairs = [base_pb2.HeaderValue(key=":path", raw_value=path.encode())]
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=pairs)),
        protocol_config=pb.ProtocolConfiguration(request_body_mode=STREAMED, response_body_mode=BUFFERED),
    )


async def body(call: Call, data: bytes) -> bytes:
    await call.write(pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=True)))
    reply = await asyncio.wait_for(call.read(), IO_TIMEOUT)
    return bytes(reply.request_body.response.body_mutation.body) or data


async def start_request(ch: grpc.aio.Channel) -> Call:
    md = [("x-lightcell-listener", "web"), ("x-lightcell-route", "api")]
    call = pb_grpc.ExternalProcessorStub(ch).Process(metadata=md)
    await call.write(headers("/api/x"))
    await asyncio.wait_for(call.read(), IO_TIMEOUT)
    return call


async def end(call: Call) -> grpc.StatusCode:
    await call.done_writing()
    assert await asyncio.wait_for(call.read(), IO_TIMEOUT) is grpc.aio.EOF
    return await call.code()


async def test_a_changed_route_policy_serves_new_requests_only(
    built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    redact, path = built_plugins["redact"], tmp_path / "envoy.yaml"
    write(path, redact, listener="secret", route="token")
    server = await LightcellServer.start(load_config(path), socket_path=tmp_path / "lc.sock")
    try:
        listener_factory = server.http.listeners["web"].factory
        old_route = server.http.routes["web/api"].factory
        async with grpc.aio.insecure_channel(f"unix:{server.socket_path}") as ch:
            before = await start_request(ch)
            write(path, redact, listener="secret", route="secret")
            result = await server.reload()
            assert result.applied, result.error
            assert result.changes == ("route web/api: changed",) and result.unchanged == 1
            assert server.http.listeners["web"].factory is listener_factory
            assert server.served.routes.retired == 1  # held by the open request
            assert await body(before, b"token secret") == b"***** secret"  # the old route policy
            after = await start_request(ch)
            assert await body(after, b"token secret") == b"token ******"
            for call in (before, after):
                assert await end(call) is grpc.StatusCode.OK
        await server.served.routes.settled()
        assert server.served.routes.retired == 0
        with pytest.raises(RuntimeError, match="closed"):
            await old_route.new_sandbox(None)  # type: ignore[arg-type]  # refused before use
    finally:
        await server.stop(grace=1.0)
