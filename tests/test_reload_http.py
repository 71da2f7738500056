"""Live reload of HTTP policies: a real `lightcell serve` (confined workers) and the redact
plugin, a gRPC client playing Envoy's HTTP ext_proc filter. A route policy is changed while a
request on it is open: the open request keeps the old plugin on the old worker, a new request
gets the new one from the new worker, the log names the one change, and the old worker exits
once the request ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.harness import LightcellProcess, static_cluster, write_config

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


async def _until_log(lightcell: LightcellProcess, text: str) -> None:
    deadline = time.monotonic() + IO_TIMEOUT
    while text not in lightcell.log():
        assert time.monotonic() < deadline, lightcell.log()[-3000:]
        await asyncio.sleep(0.05)


async def test_a_changed_route_policy_serves_new_requests_only(
    built_plugins: dict[str, Path], tmp_path: Path
) -> None:
    redact, path = built_plugins["redact"], tmp_path / "envoy.yaml"
    write(path, redact, listener="secret", route="token")
    sock = tmp_path / "lc.sock"
    lightcell = LightcellProcess(path, sock, tmp_path / "lightcell.log")
    await lightcell.start(timeout_s=120)
    try:
        assert lightcell.pid is not None
        async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
            before = await start_request(ch)
            write(path, redact, listener="secret", route="secret")
            os.kill(lightcell.pid, signal.SIGHUP)
            await _until_log(lightcell, "reload applied")
            assert "reload: route web/api: changed" in lightcell.log()
            assert "1 change(s), 1 policy(ies) unchanged" in lightcell.log()
            assert await body(before, b"token secret") == b"***** secret"  # the old route policy
            async with grpc.aio.insecure_channel(f"unix:{sock}") as fresh:  # reaches the new worker
                after = await start_request(fresh)
                assert await body(after, b"token secret") == b"token ******"
                assert await end(after) is grpc.StatusCode.OK
            assert "finished its open streams" not in lightcell.log()
            assert await end(before) is grpc.StatusCode.OK
        await _until_log(lightcell, "finished its open streams (exit code 0)")
    finally:
        assert await lightcell.stop() == 0, lightcell.log()[-3000:]
