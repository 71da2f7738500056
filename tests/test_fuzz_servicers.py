"""Property-based fuzzing of the gRPC request path: malformed ProcessingRequests, as bytes on the
wire, straight to a real LightcellServer (grpc.aio, in-process, on a Unix socket) serving real
plugins in the wasmtime tier: rewrite (TCP, read=upper, write=rot13) and redact (HTTP,
pattern=secret).

The client is a plain grpc stub run from the test's thread while the server runs on its own
event loop in a thread, so hypothesis drives ordinary synchronous examples. Every message is a
valid protobuf on the outside (Envoy's gRPC client never sends anything else) with random
fields inside: both or neither direction, random bodies and headers, unknown fields, a
connection-attributes field (4) with random contents, protocol configs with unknown body
modes, observability mode. Invariants:
- the stream ends with OK or a clear refusal (INVALID_ARGUMENT, ABORTED, PERMISSION_DENIED,
  NOT_FOUND, RESOURCE_EXHAUSTED), never INTERNAL or UNKNOWN (a Lightcell bug);
- TCP, OK: one reply per request, in order, each the plugin's transform of its bytes or a
  close (and only closes after the first): never the original bytes passed through;
- HTTP, OK: each reply answers its request's phase (or is the immediate response that ends the
  stream), and no reply carries "secret" (redact's pattern: that would be a body let through).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _fuzz_settings
import grpc
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as hpb
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2 as tpb
from hypothesis import example, given
from hypothesis import strategies as st

from extproc import http_service, tcp_service
from extproc.config import load_config
from extproc.server import LightcellServer

CLEAR = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED,
         grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
TIMEOUT = 30.0
ROT13 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                        b"NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm")
NET_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor"
HTTP_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _bootstrap(rewrite: Path, redact: Path) -> dict[str, Any]:
    def grpc_service(name: str) -> dict[str, Any]:
        return {"envoy_grpc": {"cluster_name": "lightcell"},
                "initial_metadata": [{"key": "x-lightcell-listener", "value": name}]}

    tcp = {
        "name": "rewrite",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "metadata": {"filter_metadata": {"lightcell": {
            "plugin": str(rewrite), "config": "read=upper,write=rot13", "tier": "wasmtime"}}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.ext_proc", "typed_config": {
            "@type": NET_EXT_PROC, "stat_prefix": "rewrite", "grpc_service": grpc_service("rewrite")}}]}],
    }
    http = {
        "name": "web",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "metadata": {"filter_metadata": {"lightcell": {
            "plugin": str(redact), "config": "pattern=secret", "tier": "wasmtime"}}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": {
            "@type": HCM, "stat_prefix": "web", "route_config": {"virtual_hosts": []},
            "http_filters": [{"name": "envoy.filters.http.ext_proc", "typed_config": {
                "@type": HTTP_EXT_PROC, "grpc_service": grpc_service("web"),
                "processing_mode": {"request_body_mode": "STREAMED",
                                    "response_body_mode": "STREAMED"}}}]}}]}],
    }  # fmt: skip
    return {"static_resources": {"listeners": [tcp, http]}}


class Served:
    """The server on its own event loop (a thread); sync stubs call it."""

    def __init__(self, config_path: Path, socket_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        start = LightcellServer.start(load_config(config_path), socket_path=socket_path)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(120)
        self.channel = grpc.insecure_channel(f"unix:{socket_path}")

    def stream(self, service: str, listener: str | None, messages: list[bytes],
               reply_type: Any) -> tuple[grpc.StatusCode, list[Any]]:
        call = self.channel.stream_stream(f"/{service}/Process", request_serializer=lambda b: b,
                                          response_deserializer=reply_type.FromString)
        metadata = [] if listener is None else [("x-lightcell-listener", listener)]
        replies: list[Any] = []
        try:
            for reply in call(iter(messages), metadata=metadata, timeout=TIMEOUT):
                replies.append(reply)
        except grpc.RpcError as e:
            return e.code(), replies
        return grpc.StatusCode.OK, replies

    def close(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=1.0), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def served(built_plugins: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("fuzz-servicers")
    path = work / "envoy.yaml"
    path.write_text(yaml.safe_dump(_bootstrap(built_plugins["rewrite"], built_plugins["redact"])))
    s = Served(path, work / "lc.sock")
    yield s
    s.close()


# --- messages: valid protobuf outside, anything inside ---------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: always parses, whatever `payload` holds."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


unknown_fields = st.lists(st.one_of(
    st.builds(_field, st.sampled_from([4, 4, 9, 1000]), st.binary(max_size=40)),
    st.builds(lambda n, v: _varint(n << 3) + _varint(v), st.integers(5, 2000), st.integers(0, 2**64 - 1)),
), max_size=3).map(b"".join)  # fmt: skip
datas = st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"hello", b"!close", b"x !reset", b"\xff"]))


@st.composite
def tcp_message(draw: st.DrawFn) -> bytes:
    request = tpb.ProcessingRequest()
    which = draw(st.sampled_from(["read", "write", "read", "write", "both", "neither"]))
    for side in ("read", "write"):
        if which in (side, "both"):
            data = tpb.Data(data=draw(datas), end_of_stream=draw(st.booleans()))
            getattr(request, f"{side}_data").CopyFrom(data)
    return bytes(request.SerializeToString()) + draw(unknown_fields)


tcp_streams = st.tuples(st.sampled_from(["rewrite", "rewrite", "rewrite", None, "nope", "web"]),
                        st.lists(tcp_message(), min_size=1, max_size=6))


def _expected(request: tpb.ProcessingRequest) -> tuple[str, bytes, bool]:
    if request.HasField("read_data"):
        return "read_data", request.read_data.data.upper(), request.read_data.end_of_stream
    return "write_data", request.write_data.data.translate(ROT13), request.write_data.end_of_stream


@example(("rewrite", [tpb.ProcessingRequest().SerializeToString()]))  # neither direction
@example(("rewrite", [_field(1, b"") + _field(2, b"")]))  # both directions
@example(("rewrite", [_field(1, _field(1, b"hi")) + _field(4, b"\xff\xff")]))  # undecodable attributes
@example(("rewrite", [_field(1, _field(1, b"hi")) + _field(4, _field(1, b"\xc3\x28"))]))  # key not UTF-8
@example(("rewrite", [_field(1, _field(1, b"a !close b")), _field(2, _field(1, b"late"))]))
@example((None, [_field(1, b"")]))
@given(tcp_streams)
@_fuzz_settings.examples(60)
def test_network_servicer(served: Served, stream: tuple[str | None, list[bytes]]) -> None:
    listener, messages = stream
    code, replies = served.stream(tcp_service.SERVICE_NAME, listener, messages, tpb.ProcessingResponse)
    assert code in CLEAR, (code, replies)
    if listener is None:
        assert code is grpc.StatusCode.PERMISSION_DENIED and not replies
    elif listener != "rewrite":
        assert code is grpc.StatusCode.NOT_FOUND and not replies
    requests = [tpb.ProcessingRequest.FromString(m) for m in messages]
    closed = False
    for request, reply in zip(requests, replies, strict=False):  # every reply sent, OK or not
        assert request.HasField("read_data") != request.HasField("write_data"), "a malformed request answered"
        if reply.connection_status != tpb.ProcessingResponse.CONTINUE:
            closed = True
            assert not reply.HasField("read_data") and not reply.HasField("write_data")
            continue
        assert not closed, "data forwarded after the connection was closed"
        field, data, eos = _expected(request)
        assert reply.HasField(field) and getattr(reply, field).data == data, (request, reply)
        assert getattr(reply, field).end_of_stream == eos
    if code is grpc.StatusCode.OK:
        assert len(replies) == len(requests)
    else:
        assert len(replies) < len(requests)


# --- HTTP ------------------------------------------------------------------------------------

PHASES = ["request_headers", "request_body", "request_trailers", "response_headers", "response_body",
          "response_trailers"]
header_maps = st.lists(st.tuples(st.sampled_from([":path", ":method", "content-type", "x-a", "", "X-Up"]),
                                 st.binary(max_size=16)), max_size=3)


@st.composite
def http_message(draw: st.DrawFn) -> bytes:
    request = hpb.ProcessingRequest()
    phase = draw(st.sampled_from([*PHASES, "request_body", "response_body", None]))
    if phase is not None and phase.endswith("_body"):
        body = draw(st.one_of(datas, st.sampled_from([b"a secret", b"secr", b"et", b"secretsecret"])))
        getattr(request, phase).CopyFrom(hpb.HttpBody(body=body, end_of_stream=draw(st.booleans())))
    elif phase is not None:
        target = getattr(request, phase)
        headers = target.trailers if phase.endswith("_trailers") else target.headers
        for key, value in draw(header_maps):
            headers.headers.add(key=key, raw_value=value)
        if phase.endswith("_headers"):
            target.end_of_stream = draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:
        request.observability_mode = True
    if draw(st.integers(0, 3)) == 0:
        request.protocol_config.request_body_mode = draw(st.integers(0, 7))
        request.protocol_config.response_body_mode = draw(st.integers(0, 7))
    if draw(st.integers(0, 3)) == 0:
        request.attributes["envoy.filters.http.ext_proc"].fields[draw(st.text(max_size=8))].number_value = (
            draw(st.floats(allow_nan=True, allow_infinity=True)))
    return bytes(request.SerializeToString()) + draw(unknown_fields)


def _headers(path: bytes = b"/") -> bytes:
    r = hpb.ProcessingRequest()
    r.request_headers.headers.headers.add(key=":path", raw_value=path)
    return bytes(r.SerializeToString())


def _body(body: bytes, eos: bool = False, response: bool = False) -> bytes:
    r = hpb.ProcessingRequest()
    (r.response_body if response else r.request_body).CopyFrom(hpb.HttpBody(body=body, end_of_stream=eos))
    return bytes(r.SerializeToString())


http_streams = st.tuples(st.sampled_from(["web", "web", "web", None, "rewrite"]),
                         st.lists(http_message(), min_size=1, max_size=6))


@example(("web", [_headers(), _body(b"a secret here", eos=True)]))
@example(("web", [_headers(), _body(b"sec"), _body(b"ret", eos=True)]))
@example(("web", [_body(b"secret", eos=True)]))  # a body before its headers
@example(("web", [_headers(), _headers()]))  # headers twice
@example(("web", [hpb.ProcessingRequest().SerializeToString()]))
@given(http_streams)
@_fuzz_settings.examples(60)
def test_http_servicer(served: Served, stream: tuple[str | None, list[bytes]]) -> None:
    listener, messages = stream
    code, replies = served.stream(http_service.SERVICE_NAME, listener, messages, hpb.ProcessingResponse)
    assert code in CLEAR, (code, replies)
    if listener != "web":
        assert code is not grpc.StatusCode.OK and not replies
    for reply in replies:
        assert b"secret" not in reply.SerializeToString(), f"the pattern got through: {reply}"
    if code is not grpc.StatusCode.OK:
        return
    requests = [hpb.ProcessingRequest.FromString(m) for m in messages]
    asked = [r.WhichOneof("request") for r in requests if not r.observability_mode]
    answered = [r.WhichOneof("response") for r in replies]
    assert len(answered) <= len(asked)
    for i, kind in enumerate(answered):
        last = i == len(answered) - 1
        assert kind == asked[i] or (kind == "immediate_response" and last), (asked, answered)


def test_the_oracle_sees_a_transform(served: Served) -> None:
    """Not vacuous: a good stream is answered, transformed, OK; a bad one is refused."""
    two = [_field(1, _field(1, b"hi")), _field(2, _field(1, b"Ab"))]
    code, replies = served.stream(tcp_service.SERVICE_NAME, "rewrite", two, tpb.ProcessingResponse)
    assert code is grpc.StatusCode.OK
    assert [r.read_data.data or r.write_data.data for r in replies] == [b"HI", b"No"]
    code, _ = served.stream(tcp_service.SERVICE_NAME, "rewrite", [_field(1, b"") + _field(2, b"")],
                            tpb.ProcessingResponse)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    code, replies = served.stream(http_service.SERVICE_NAME, "web", [_headers(), _body(b"a secret", True)],
                                  hpb.ProcessingResponse)
    assert code is grpc.StatusCode.OK and len(replies) == 2
    assert replies[1].request_body.response.body_mutation.body == b"a ******"
    # A message grpc cannot parse (a request_body field that is not an HttpBody): a refusal, not
    # an internal error (found by test_http_servicer; extproc/stream_edge.py).
    code, _ = served.stream(http_service.SERVICE_NAME, "web", [_headers(), _field(4, b"\xff\xff")],
                            hpb.ProcessingResponse)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
