"""The HTTP ext_proc protocol adapter, fed with real xds-protos messages (no I/O)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2
from google.protobuf.internal import decoder

from extproc import http_protocol as hp
from extproc import tcp_protocol
from extproc.http_protocol import (
    BodyEvent,
    BodyMode,
    Continue,
    HeaderOp,
    HeadersEvent,
    HttpStream,
    Immediate,
    Kind,
    ModeOverride,
    MutationRefused,
    OutOfTurn,
    ProtocolError,
    Side,
    TrailersEvent,
)

PM = processing_mode_pb2.ProcessingMode


# --- helpers ---------------------------------------------------------------------------------------


def _wire_request(request: pb.ProcessingRequest) -> pb.ProcessingRequest:
    return pb.ProcessingRequest.FromString(request.SerializeToString())


def _wire(reply: pb.ProcessingResponse) -> pb.ProcessingResponse:
    """What Envoy would parse; also asserts field 11 is never on the wire."""
    data = reply.SerializeToString()
    assert 11 not in _top_level_fields(data)
    return pb.ProcessingResponse.FromString(data)


def _top_level_fields(data: bytes) -> Iterator[int]:
    pos = 0
    while pos < len(data):
        tag, pos = decoder._DecodeVarint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        yield number
        if wire_type == 0:
            _, pos = decoder._DecodeVarint(data, pos)
        elif wire_type == 2:
            length, pos = decoder._DecodeVarint(data, pos)
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:  # pragma: no cover - groups are never used
            raise AssertionError(wire_type)


def _headers_map(pairs: list[tuple[str, bytes]]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v) for k, v in pairs])


REQ_HEADERS = [(":method", b"POST"), (":path", b"/x"), ("content-length", b"5"), ("x-a", b"\xff1")]


def req_headers(
    pairs: list[tuple[str, bytes]] | None = None, eos: bool = False, **extra: object
) -> pb.ProcessingRequest:
    return _wire_request(
        pb.ProcessingRequest(
            request_headers=pb.HttpHeaders(headers=_headers_map(pairs or REQ_HEADERS), end_of_stream=eos),
            **extra,
        )
    )


def resp_headers(pairs: list[tuple[str, bytes]] | None = None, eos: bool = False) -> pb.ProcessingRequest:
    pairs = pairs or [(":status", b"200"), ("content-length", b"3")]
    return _wire_request(
        pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=_headers_map(pairs), end_of_stream=eos))
    )


def body(side: Side, data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    msg = pb.HttpBody(body=data, end_of_stream=eos)
    if side is Side.REQUEST:
        return _wire_request(pb.ProcessingRequest(request_body=msg))
    return _wire_request(pb.ProcessingRequest(response_body=msg))


def trailers(side: Side, pairs: list[tuple[str, bytes]]) -> pb.ProcessingRequest:
    msg = pb.HttpTrailers(trailers=_headers_map(pairs))
    if side is Side.REQUEST:
        return _wire_request(pb.ProcessingRequest(request_trailers=msg))
    return _wire_request(pb.ProcessingRequest(response_trailers=msg))


def protocol_config(req: int, resp: int, without_waiting: bool = False) -> pb.ProtocolConfiguration:
    return pb.ProtocolConfiguration(
        request_body_mode=req,
        response_body_mode=resp,
        send_body_without_waiting_for_header_response=without_waiting,
    )


def set_headers(mutation: pb.HeaderMutation) -> list[tuple[str, bytes, bool]]:
    out = []
    for option in mutation.set_headers:
        assert option.header.value == "", "value must never be set: raw_value only"
        assert option.HasField("append"), "ext_proc reads the append BoolValue: always explicit"
        assert option.append_action == base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
        out.append((option.header.key, option.header.raw_value, option.append.value))
    return out


# --- events ----------------------------------------------------------------------------------------


def test_request_headers_event_takes_raw_values() -> None:
    stream = HttpStream()
    incoming = stream.receive(req_headers(eos=True))
    event = incoming.event
    assert isinstance(event, HeadersEvent)
    assert event.side is Side.REQUEST and event.kind is Kind.HEADERS and event.end_of_stream
    assert event.headers == tuple(REQ_HEADERS)
    assert event.get("X-A") == b"\xff1" and event.get("absent") is None


def test_value_is_a_fallback_only_when_raw_value_is_empty() -> None:
    header_map = base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key="old", value="text"),
            base_pb2.HeaderValue(key="empty"),
            base_pb2.HeaderValue(key="both", value="ignored", raw_value=b"raw"),
        ]
    )
    request = _wire_request(pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=header_map)))
    event = hp.event_of(request)
    assert isinstance(event, HeadersEvent) and event.side is Side.RESPONSE
    assert event.headers == (("old", b"text"), ("empty", b""), ("both", b"raw"))


@pytest.mark.parametrize("side", list(Side))
def test_body_and_trailers_events(side: Side) -> None:
    chunk = hp.event_of(body(side, b"\x00abc", eos=True))
    assert chunk.side is side and chunk.kind is Kind.BODY
    assert isinstance(chunk, BodyEvent) and chunk.body == b"\x00abc" and chunk.end_of_stream
    empty = pb.ProcessingRequest()
    getattr(empty, f"{side.value}_body").SetInParent()
    assert isinstance(hp.event_of(_wire_request(empty)), BodyEvent)
    tail = hp.event_of(trailers(side, [("grpc-status", b"0")]))
    assert isinstance(tail, TrailersEvent) and tail.side is side and tail.trailers == (("grpc-status", b"0"),)


def test_request_with_no_phase_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="no phase"):
        hp.event_of(pb.ProcessingRequest(observability_mode=True))
    with pytest.raises(tcp_protocol.ProtocolError):  # one family with the TCP adapter's
        HttpStream().receive(pb.ProcessingRequest())


def test_unknown_fields_from_a_newer_envoy_are_ignored() -> None:
    # Envoy 1.40 has ProcessingRequest.client_window_update (13) and HttpBody.drain_complete (5).
    data = body(Side.REQUEST, b"x").SerializeToString() + bytes([13 << 3 | 0, 1])
    request = pb.ProcessingRequest.FromString(data)
    assert isinstance(hp.event_of(request), BodyEvent)


def test_attributes_are_flattened() -> None:
    attrs = struct_pb2.Struct()
    attrs.update(
        {
            "request.path": "/a?b",
            "source.address": "10.0.0.1:5555",
            "request.size": 12.0,
            "connection.mtls": False,
            "request.headers": {"x": "y"},
            "ratio": 0.5,
            "unknown": None,
        }
    )
    other = struct_pb2.Struct()
    other.update({"request.path": "/other", "z": "1"})
    stream = HttpStream()
    incoming = stream.receive(
        req_headers(attributes={"envoy.filters.http.ext_proc": attrs, "zz.other": other})
    )
    assert incoming.attributes == {
        "request.path": "/a?b",
        "source.address": "10.0.0.1:5555",
        "request.size": "12",
        "connection.mtls": "false",
        "request.headers": '{"x":"y"}',
        "ratio": "0.5",
        "z": "1",
    }
    resp_attrs = struct_pb2.Struct()
    resp_attrs.update({"response.code": 200})
    stream.respond(incoming.event, Continue())
    stream.receive(
        _wire_request(
            pb.ProcessingRequest(
                response_headers=pb.HttpHeaders(headers=_headers_map([(":status", b"200")])),
                attributes={"envoy.filters.http.ext_proc": resp_attrs},
            )
        )
    )
    assert stream.attributes["response.code"] == "200" and stream.attributes["request.path"] == "/a?b"


def test_metadata_context_protocol_config_and_observability() -> None:
    ns = struct_pb2.Struct()
    ns.update({"tenant": "a", "n": 1})
    metadata = base_pb2.Metadata(filter_metadata={"lightcell": ns})
    stream = HttpStream()
    incoming = stream.receive(
        req_headers(
            metadata_context=metadata,
            protocol_config=protocol_config(PM.BUFFERED, PM.STREAMED, True),
            observability_mode=False,
        )
    )
    assert incoming.metadata == {"lightcell": {"tenant": "a", "n": 1}}
    assert incoming.protocol_config == hp.ProtocolConfig(BodyMode.BUFFERED, BodyMode.STREAMED, True)
    assert stream.protocol_config == incoming.protocol_config
    assert stream.body_mode(Side.REQUEST) is BodyMode.BUFFERED
    assert stream.body_mode(Side.RESPONSE) is BodyMode.STREAMED
    assert not incoming.observability_mode


def test_protocol_config_is_first_message_only_and_grpc_mode_unsupported() -> None:
    stream = HttpStream()
    stream.receive(req_headers())
    late = _wire_request(
        pb.ProcessingRequest(request_body=pb.HttpBody(body=b"x"), protocol_config=protocol_config(1, 1))
    )
    with pytest.raises(ProtocolError, match="first message"):
        stream.receive(late)
    with pytest.raises(ProtocolError, match="body mode 5"):
        HttpStream().receive(req_headers(protocol_config=protocol_config(5, 0)))


@pytest.mark.parametrize(
    "sequence",
    [
        [req_headers(eos=True), body(Side.REQUEST, b"x")],
        [body(Side.REQUEST, b"x", eos=True), body(Side.REQUEST, b"y")],
        [trailers(Side.REQUEST, []), body(Side.REQUEST, b"y")],
        [req_headers(), req_headers()],
        [body(Side.REQUEST, b"x"), req_headers()],
    ],
)
def test_messages_out_of_order_are_protocol_errors(sequence: list[pb.ProcessingRequest]) -> None:
    stream = HttpStream(request_body_mode=BodyMode.STREAMED)
    *ok, bad = sequence
    for request in ok:
        stream.receive(request)
    with pytest.raises(ProtocolError, match="out of order"):
        stream.receive(bad)


# --- decisions -------------------------------------------------------------------------------------


def _stream_at_request_headers(
    *, allow_mode_override: bool = False, max_header_bytes: int = hp.DEFAULT_MAX_HEADER_BYTES
) -> tuple[HttpStream, HeadersEvent]:
    stream = HttpStream(allow_mode_override=allow_mode_override, max_header_bytes=max_header_bytes)
    event = stream.receive(req_headers()).event
    assert isinstance(event, HeadersEvent)
    return stream, event


def test_continue_is_an_empty_reply_of_the_right_phase() -> None:
    stream, event = _stream_at_request_headers()
    reply = _wire(stream.respond(event, Continue()))
    assert reply.WhichOneof("response") == "request_headers"
    assert reply.request_headers.response.status == pb.CommonResponse.CONTINUE
    assert not reply.request_headers.response.HasField("header_mutation")
    assert not reply.request_headers.response.HasField("body_mutation")
    assert not reply.HasField("dynamic_metadata") and not reply.HasField("mode_override")
    assert stream.pending() == ()


def test_header_mutation_uses_raw_value_and_explicit_append() -> None:
    stream, event = _stream_at_request_headers()
    decision = Continue(
        headers=[
            HeaderOp.set("X-New", b"v\xff"),
            HeaderOp.append("x-multi", b"2"),
            HeaderOp.remove("X-A"),
            HeaderOp.set(":path", b"/rewritten"),
            HeaderOp.remove("content-length"),
        ],
        clear_route_cache=True,
    )
    reply = _wire(stream.respond(event, decision))
    common = reply.request_headers.response
    assert set_headers(common.header_mutation) == [
        ("x-new", b"v\xff", False),
        ("x-multi", b"2", True),
        (":path", b"/rewritten", False),
    ]
    assert list(common.header_mutation.remove_headers) == ["x-a", "content-length"]
    assert common.clear_route_cache


def test_dynamic_metadata_lands_in_the_lightcell_namespace() -> None:
    stream, event = _stream_at_request_headers()
    reply = _wire(stream.respond(event, Continue(metadata={"verdict": "ok"})))
    assert hp.METADATA_NAMESPACE == tcp_protocol.METADATA_NAMESPACE == "lightcell"
    assert reply.dynamic_metadata.fields["lightcell"].struct_value.fields["verdict"].string_value == "ok"


def test_immediate_response() -> None:
    stream, event = _stream_at_request_headers()
    answer = Immediate(
        status=403,
        headers=[("Content-Type", b"text/plain"), ("set-cookie", b"a=1"), ("set-cookie", b"b=2")],
        body=b"blocked",
        grpc_status=7,
        details="blocked by plugin\tx",
        metadata={"why": "path"},
    )
    reply = _wire(stream.respond(event, answer))
    out = reply.immediate_response
    assert reply.WhichOneof("response") == "immediate_response"
    assert out.status.code == 403 and out.body == b"blocked" and out.grpc_status.status == 7
    assert out.details == "blocked_by_plugin_x"
    assert set_headers(out.headers) == [
        ("content-type", b"text/plain", False),
        ("set-cookie", b"a=1", False),
        ("set-cookie", b"b=2", True),
    ]
    assert reply.dynamic_metadata.fields["lightcell"].struct_value.fields["why"].string_value == "path"
    assert stream.closed
    with pytest.raises(OutOfTurn, match="immediate"):
        stream.respond(event, Continue())


def test_immediate_response_status_outside_the_named_enum_and_no_grpc_status() -> None:
    stream, event = _stream_at_request_headers()
    reply = _wire(stream.respond(event, Immediate(status=299)))
    assert reply.immediate_response.status.code == 299
    assert not reply.immediate_response.HasField("grpc_status")


def test_messages_after_an_immediate_response_are_owed_nothing() -> None:
    stream = HttpStream(request_body_mode=BodyMode.STREAMED)
    event = stream.receive(req_headers()).event
    stream.respond(event, Immediate(status=401))
    late = stream.receive(body(Side.REQUEST, b"in flight")).event
    assert stream.pending() == ()
    with pytest.raises(OutOfTurn):
        stream.respond(late, Continue())


def test_mode_override_in_a_headers_reply() -> None:
    stream, event = _stream_at_request_headers(allow_mode_override=True)
    override = ModeOverride(request_body_mode=BodyMode.BUFFERED, response_body_mode=BodyMode.STREAMED)
    reply = _wire(stream.respond(event, Continue(mode_override=override)))
    assert reply.mode_override == PM(request_body_mode=PM.BUFFERED, response_body_mode=PM.STREAMED)
    assert stream.body_mode(Side.REQUEST) is BodyMode.BUFFERED
    assert stream.body_mode(Side.RESPONSE) is BodyMode.STREAMED


def test_mode_override_refusals() -> None:
    stream, event = _stream_at_request_headers()  # allow_mode_override False
    with pytest.raises(OutOfTurn, match="allow_mode_override"):
        stream.respond(event, Continue(mode_override=ModeOverride()))
    stream = HttpStream(allow_mode_override=True)
    waiting = stream.receive(req_headers(protocol_config=protocol_config(1, 0, True))).event
    with pytest.raises(OutOfTurn, match="without_waiting"):
        stream.respond(waiting, Continue(mode_override=ModeOverride()))
    stream, event = _stream_at_request_headers(allow_mode_override=True)
    with pytest.raises(OutOfTurn, match="FULL_DUPLEX"):
        stream.respond(
            event, Continue(mode_override=ModeOverride(response_body_mode=BodyMode.FULL_DUPLEX_STREAMED))
        )
    stream = HttpStream(request_body_mode=BodyMode.BUFFERED, allow_mode_override=True)
    stream.respond(stream.receive(req_headers()).event, Continue())
    chunk = stream.receive(body(Side.REQUEST, b"abcde", eos=True)).event
    with pytest.raises(OutOfTurn, match="mode_override"):  # only in a reply to headers
        stream.respond(chunk, Continue(mode_override=ModeOverride()))


def test_a_headers_reply_cannot_replace_the_body_and_a_trailers_reply_only_mutates_headers() -> None:
    stream, event = _stream_at_request_headers()
    with pytest.raises(OutOfTurn, match="body"):
        stream.respond(event, Continue(body=b"x"))
    stream.respond(event, Continue())
    tail = stream.receive(trailers(Side.REQUEST, [("x-t", b"1")])).event
    with pytest.raises(OutOfTurn, match="clear_route_cache"):
        stream.respond(tail, Continue(clear_route_cache=True))
    reply = _wire(stream.respond(tail, Continue(headers=[HeaderOp.set("x-t", b"2")])))
    assert reply.WhichOneof("response") == "request_trailers"
    assert set_headers(reply.request_trailers.header_mutation) == [("x-t", b"2", False)]


def test_an_unchanged_trailers_reply_is_still_present_on_the_wire() -> None:
    stream = HttpStream()
    tail = stream.receive(trailers(Side.RESPONSE, [])).event
    reply = _wire(stream.respond(tail, Continue()))
    assert reply.WhichOneof("response") == "response_trailers"


# --- body replacement and content-length -----------------------------------------------------------


def _buffered_request(headers: list[tuple[str, bytes]] | None = None) -> tuple[HttpStream, BodyEvent]:
    stream = HttpStream()
    first = stream.receive(req_headers(headers, protocol_config=protocol_config(PM.BUFFERED, PM.NONE)))
    stream.respond(first.event, Continue())
    event = stream.receive(body(Side.REQUEST, b"hello", eos=True)).event
    assert isinstance(event, BodyEvent)
    return stream, event


def test_buffered_with_headers_sets_content_length_for_a_new_body() -> None:
    stream, event = _buffered_request()
    reply = _wire(stream.respond(event, Continue(body=b"longer body")))
    common = reply.request_body.response
    assert common.body_mutation.body == b"longer body"
    assert set_headers(common.header_mutation) == [("content-length", b"11", False)]


def test_an_empty_new_body_is_a_body_not_clear_body() -> None:
    stream, event = _buffered_request()
    reply = _wire(stream.respond(event, Continue(body=b"")))
    common = reply.request_body.response
    assert common.body_mutation.WhichOneof("mutation") == "body" and common.body_mutation.body == b""
    assert set_headers(common.header_mutation) == [("content-length", b"0", False)]


def test_no_content_length_when_the_body_is_unchanged_or_had_none() -> None:
    stream, event = _buffered_request()
    assert not _wire(stream.respond(event, Continue())).request_body.response.HasField("header_mutation")
    stream, event = _buffered_request([(":path", b"/"), ("transfer-encoding", b"chunked")])
    reply = _wire(stream.respond(event, Continue(body=b"new")))
    assert not reply.request_body.response.HasField("header_mutation")


def test_content_length_removed_by_the_plugin_is_not_restored() -> None:
    stream, event = _buffered_request()
    reply = _wire(stream.respond(event, Continue(headers=[HeaderOp.remove("Content-Length")], body=b"xy")))
    mutation = reply.request_body.response.header_mutation
    assert list(mutation.remove_headers) == ["content-length"] and set_headers(mutation) == []


@pytest.mark.parametrize("mode", [PM.STREAMED, PM.BUFFERED_PARTIAL])
def test_envoy_strips_content_length_in_other_modes_so_none_is_set(mode: int) -> None:
    stream = HttpStream()
    first = stream.receive(req_headers(protocol_config=protocol_config(mode, PM.NONE)))
    stream.respond(first.event, Continue())
    event = stream.receive(body(Side.REQUEST, b"hello")).event
    reply = _wire(stream.respond(event, Continue(body=b"changed!")))
    assert reply.request_body.response.body_mutation.body == b"changed!"
    assert not reply.request_body.response.HasField("header_mutation")


def test_buffered_with_headers_skipped_sets_no_content_length() -> None:
    stream = HttpStream(response_body_mode=BodyMode.BUFFERED)
    event = stream.receive(body(Side.RESPONSE, b"abc", eos=True)).event  # response headers SKIP
    reply = _wire(stream.respond(event, Continue(body=b"abcdef")))
    assert reply.WhichOneof("response") == "response_body"
    assert not reply.response_body.response.HasField("header_mutation")
    with pytest.raises(OutOfTurn):
        stream.respond(event, Continue())


def test_header_changes_in_a_body_reply_only_while_envoy_holds_the_headers() -> None:
    stream, event = _buffered_request()
    reply = _wire(stream.respond(event, Continue(headers=[HeaderOp.set("x-seen", b"1")])))
    assert set_headers(reply.request_body.response.header_mutation) == [("x-seen", b"1", False)]
    stream = HttpStream(request_body_mode=BodyMode.STREAMED)
    stream.respond(stream.receive(req_headers()).event, Continue())
    chunk = stream.receive(body(Side.REQUEST, b"a")).event
    with pytest.raises(MutationRefused, match="already went on"):
        stream.respond(chunk, Continue(headers=[HeaderOp.set("x-late", b"1")]))


# --- full duplex ----------------------------------------------------------------------------------


def _duplex() -> tuple[HttpStream, HeadersEvent]:
    stream = HttpStream()
    event = stream.receive(
        req_headers(protocol_config=protocol_config(PM.FULL_DUPLEX_STREAMED, PM.NONE))
    ).event
    assert isinstance(event, HeadersEvent)
    return stream, event


def test_full_duplex_body_replies_are_streamed_responses() -> None:
    assert "streamed_response" in pb.BodyMutation.DESCRIPTOR.fields_by_name  # xds-protos 1.85 has it
    stream, headers = _duplex()
    c1 = stream.receive(body(Side.REQUEST, b"one")).event
    with pytest.raises(OutOfTurn, match="headers must be answered"):
        stream.stream_body(Side.REQUEST, b"x", end_of_stream=False)
    stream.respond(headers, Continue())
    with pytest.raises(OutOfTurn, match="stream_body"):
        stream.respond(c1, Continue())
    stream.receive(body(Side.REQUEST, b"two", eos=True))
    assert stream.pending() == ()  # chunks are not owed one reply each
    r1 = _wire(stream.stream_body(Side.REQUEST, b"ONE", end_of_stream=False, metadata={"k": "v"}))
    streamed = r1.request_body.response.body_mutation.streamed_response
    assert r1.request_body.response.body_mutation.WhichOneof("mutation") == "streamed_response"
    assert streamed.body == b"ONE" and not streamed.end_of_stream
    assert r1.dynamic_metadata.fields["lightcell"].struct_value.fields["k"].string_value == "v"
    r2 = _wire(stream.stream_body(Side.REQUEST, b"TWO", end_of_stream=True))
    assert r2.request_body.response.body_mutation.streamed_response.end_of_stream
    with pytest.raises(OutOfTurn, match="already ended"):
        stream.stream_body(Side.REQUEST, b"more", end_of_stream=False)


def test_full_duplex_end_needs_the_last_chunk_and_trailers_come_last() -> None:
    stream, headers = _duplex()
    stream.respond(headers, Continue())
    with pytest.raises(OutOfTurn, match="no request body"):
        stream.stream_body(Side.REQUEST, b"x", end_of_stream=False)
    stream.receive(body(Side.REQUEST, b"a"))
    with pytest.raises(OutOfTurn, match="cannot end"):
        stream.stream_body(Side.REQUEST, b"a", end_of_stream=True)
    tail = stream.receive(trailers(Side.REQUEST, [("x-t", b"1")])).event
    with pytest.raises(OutOfTurn, match="cannot end"):  # the trailers end it, not the body
        stream.stream_body(Side.REQUEST, b"a", end_of_stream=True)
    stream.stream_body(Side.REQUEST, b"a", end_of_stream=False)
    stream.respond(tail, Continue())
    with pytest.raises(OutOfTurn, match="already ended"):
        stream.stream_body(Side.REQUEST, b"late", end_of_stream=False)
    with pytest.raises(OutOfTurn, match="not FULL_DUPLEX"):
        stream.stream_body(Side.RESPONSE, b"x", end_of_stream=False)


def test_an_open_full_duplex_body_can_be_answered_at_once() -> None:
    stream, headers = _duplex()
    stream.respond(headers, Continue())
    chunk = stream.receive(body(Side.REQUEST, b"evil")).event
    reply = _wire(stream.respond(chunk, Immediate(status=400)))
    assert reply.immediate_response.status.code == 400 and stream.closed


# --- the state machine ----------------------------------------------------------------------------


def test_streamed_request_chunks_interleave_with_response_headers() -> None:
    stream = HttpStream()
    h = stream.receive(req_headers(protocol_config=protocol_config(PM.STREAMED, PM.STREAMED))).event
    stream.respond(h, Continue())
    c1 = stream.receive(body(Side.REQUEST, b"1")).event
    c2 = stream.receive(body(Side.REQUEST, b"1")).event  # same bytes: still a second reply owed
    rh = stream.receive(resp_headers()).event
    c3 = stream.receive(body(Side.REQUEST, b"3", eos=True)).event
    assert stream.pending(Side.REQUEST) == (c1, c2, c3)
    assert stream.pending(Side.RESPONSE) == (rh,)
    assert _wire(stream.respond(rh, Continue())).WhichOneof("response") == "response_headers"
    with pytest.raises(OutOfTurn, match="oldest"):
        stream.respond(c2, Continue())
    for chunk in (c1, c2, c3):
        assert _wire(stream.respond(chunk, Continue())).WhichOneof("response") == "request_body"
    assert stream.pending() == ()
    with pytest.raises(OutOfTurn):
        stream.respond(c3, Continue())


def test_send_body_without_waiting_still_answers_headers_first() -> None:
    stream = HttpStream()
    h = stream.receive(req_headers(protocol_config=protocol_config(PM.STREAMED, PM.NONE, True))).event
    c1 = stream.receive(body(Side.REQUEST, b"early")).event
    with pytest.raises(OutOfTurn):
        stream.respond(c1, Continue())
    stream.respond(h, Continue())
    stream.respond(c1, Continue(body=b"EARLY"))


def test_a_reply_to_an_event_never_received_is_out_of_turn() -> None:
    stream = HttpStream()
    foreign = HeadersEvent(Side.REQUEST, (), False)
    with pytest.raises(OutOfTurn):
        stream.respond(foreign, Continue())
    with pytest.raises(OutOfTurn):
        stream.respond(foreign, Immediate(status=500))


def test_observability_mode_expects_no_replies() -> None:
    stream = HttpStream(request_body_mode=BodyMode.STREAMED)
    incoming = stream.receive(req_headers(observability_mode=True))
    assert incoming.observability_mode and stream.observability_mode
    chunk = stream.receive(body(Side.REQUEST, b"x")).event
    assert stream.pending() == ()
    for event in (incoming.event, chunk):
        with pytest.raises(OutOfTurn, match="observability"):
            stream.respond(event, Continue())
    with pytest.raises(OutOfTurn, match="observability"):
        stream.respond(incoming.event, Immediate(status=403))


# --- validation of plugin output --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "match"),
    [
        (HeaderOp.set("x-a", b"a\r\nx-injected: 1"), "CR, LF"),
        (HeaderOp.set("x-a", b"a\nb"), "CR, LF"),
        (HeaderOp.set("x-a", b"a\x00b"), "NUL"),
        (HeaderOp.append("x-a", b"\x7f"), "control"),
        (HeaderOp.set("x-a\r\n", b"1"), "token"),
        (HeaderOp.set("x a", b"1"), "token"),
        (HeaderOp.set("x:a", b"1"), "token"),
        (HeaderOp.set("", b"1"), "token"),
        (HeaderOp.remove("bad\x00name"), "token"),
        (HeaderOp.set("x-é", b"1"), "ASCII"),
        (HeaderOp.set(":authority", b"evil"), "rejects"),
        (HeaderOp.set("Host", b"evil"), "rejects"),
        (HeaderOp.remove("host"), "rejects"),
        (HeaderOp.set(":method", b"DELETE"), "rejects"),
        (HeaderOp.set(":scheme", b"http"), "rejects"),
        (HeaderOp.set("X-Envoy-Original-Path", b"/"), "rejects"),
        (HeaderOp.remove("x-envoy-internal"), "rejects"),
        (HeaderOp.set(":protocol", b"websocket"), "pseudo-header"),
        (HeaderOp.set(":status", b"200"), "pseudo-header"),  # request side
        (HeaderOp.append(":path", b"/b"), "second value"),
        (HeaderOp.remove(":path"), "cannot be removed"),
        (HeaderOp.set("connection", b"close"), "hop-by-hop"),
        (HeaderOp.set("keep-alive", b"1"), "hop-by-hop"),
        (HeaderOp.set("proxy-connection", b"1"), "hop-by-hop"),
        (HeaderOp.append("Transfer-Encoding", b"chunked"), "hop-by-hop"),
        (HeaderOp.set("upgrade", b"h2c"), "hop-by-hop"),
        (HeaderOp.set("te", b"trailers"), "hop-by-hop"),
        (HeaderOp.set("content-length", b"1"), "content-length"),
    ],
)
def test_bad_request_header_mutations_are_refused(op: HeaderOp, match: str) -> None:
    stream, event = _stream_at_request_headers()
    with pytest.raises(MutationRefused, match=match) as caught:
        stream.respond(event, Continue(headers=[HeaderOp.set("x-fine", b"1"), op]))
    assert caught.value.reason
    assert stream.pending() == (event,)  # nothing was sent: the session can still answer


def test_hop_by_hop_headers_may_be_removed() -> None:
    stream, event = _stream_at_request_headers()
    reply = _wire(stream.respond(event, Continue(headers=[HeaderOp.remove("Upgrade")])))
    assert list(reply.request_headers.response.header_mutation.remove_headers) == ["upgrade"]


def test_status_header_on_response_headers() -> None:
    stream = HttpStream()
    rh = stream.receive(resp_headers()).event
    for value in (b"199", b"600", b"20x", b"2000"):
        with pytest.raises(MutationRefused, match="status"):
            stream.respond(rh, Continue(headers=[HeaderOp.set(":status", value)]))
    with pytest.raises(MutationRefused, match="pseudo-header"):
        stream.respond(rh, Continue(headers=[HeaderOp.set(":path", b"/")]))
    reply = _wire(stream.respond(rh, Continue(headers=[HeaderOp.set(":status", b"404")])))
    assert set_headers(reply.response_headers.response.header_mutation) == [(":status", b"404", False)]


def test_no_pseudo_headers_in_trailers() -> None:
    stream = HttpStream()
    tail = stream.receive(trailers(Side.RESPONSE, [])).event
    with pytest.raises(MutationRefused, match="pseudo-header"):
        stream.respond(tail, Continue(headers=[HeaderOp.set(":status", b"200")]))


def test_header_byte_limit() -> None:
    stream, event = _stream_at_request_headers(max_header_bytes=10)
    stream.respond(event, Continue(headers=[HeaderOp.set("x-a", b"1234567")]))  # 3 + 7 = 10
    stream, event = _stream_at_request_headers(max_header_bytes=10)
    with pytest.raises(MutationRefused, match="more than 10 bytes"):
        stream.respond(event, Continue(headers=[HeaderOp.set("x-a", b"12345"), HeaderOp.append("x-b", b"1")]))
    stream, event = _stream_at_request_headers(max_header_bytes=10)
    with pytest.raises(MutationRefused, match="more than 10 bytes"):
        stream.respond(event, Immediate(status=403, headers=[("x-long", b"12345")]))


def test_tab_is_a_valid_value_character() -> None:
    assert hp.validate_header_ops([HeaderOp.set("X-A", b"a\tb")], Side.REQUEST, Kind.HEADERS) == [
        HeaderOp.set("x-a", b"a\tb")
    ]


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (Immediate(status=199), "outside 200-599"),
        (Immediate(status=600), "outside 200-599"),
        (Immediate(status=0), "outside 200-599"),
        (Immediate(status=403, grpc_status=17), "gRPC status"),
        (Immediate(status=403, headers=[(":status", b"200")]), "pseudo-header"),
        (Immediate(status=403, headers=[("content-length", b"1")]), "content-length"),
        (Immediate(status=403, headers=[("connection", b"close")]), "hop-by-hop"),
        (Immediate(status=403, headers=[("x-a", b"1\r\n")]), "CR, LF"),
        (Immediate(status=403, details="é"), "printable ASCII"),
    ],
)
def test_bad_immediate_responses_are_refused(answer: Immediate, match: str) -> None:
    stream, event = _stream_at_request_headers()
    with pytest.raises(MutationRefused, match=match):
        stream.respond(event, answer)
    assert not stream.closed and stream.pending() == (event,)


def test_a_refused_decision_does_not_change_the_stream() -> None:
    stream, event = _stream_at_request_headers(allow_mode_override=True)
    with pytest.raises(MutationRefused):
        stream.respond(
            event,
            Continue(
                headers=[HeaderOp.set("host", b"x")],
                mode_override=ModeOverride(request_body_mode=BodyMode.BUFFERED),
            ),
        )
    assert stream.body_mode(Side.REQUEST) is BodyMode.NONE


# --- the wire ------------------------------------------------------------------------------------------


def test_field_11_is_never_on_the_wire() -> None:
    # xds-protos 1.85 calls it request_drain; Envoy 1.40 reads streamed_immediate_response there.
    assert pb.ProcessingResponse.DESCRIPTOR.fields_by_name["request_drain"].number == 11
    stream = HttpStream(allow_mode_override=True)
    h = stream.receive(req_headers(protocol_config=protocol_config(PM.BUFFERED, PM.NONE))).event
    replies = [
        stream.respond(
            h,
            Continue(
                headers=[HeaderOp.set("x", b"1")],
                metadata={"a": "b"},
                mode_override=ModeOverride(request_body_mode=BodyMode.BUFFERED),
            ),
        )
    ]
    b = stream.receive(body(Side.REQUEST, b"abc", eos=True)).event
    replies.append(stream.respond(b, Continue(body=b"x")))
    rh = stream.receive(resp_headers()).event
    replies.append(
        stream.respond(rh, Immediate(status=503, headers=[("x", b"1")], body=b"no", grpc_status=14))
    )
    for reply in replies:
        _wire(reply)  # asserts no field 11 at the top level
        assert not reply.request_drain
    # The check itself sees field 11 when it is there.
    assert 11 in _top_level_fields(pb.ProcessingResponse(request_drain=True).SerializeToString())
