"""The ext_proc protocol adapter, fed with messages (no I/O)."""

from __future__ import annotations

import pytest
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2 as pb

from extproc import tcp_protocol
from vmm.contract import DataEvent, Direction, Verdict


def _wire(reply: pb.ProcessingResponse) -> pb.ProcessingResponse:
    """What Envoy would parse: a serialisation round trip."""
    return pb.ProcessingResponse.FromString(reply.SerializeToString())


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (pb.ProcessingRequest(read_data=pb.Data(data=b"abc")), DataEvent(Direction.READ, b"abc", False)),
        (
            pb.ProcessingRequest(write_data=pb.Data(data=b"\x00\xff", end_of_stream=True)),
            DataEvent(Direction.WRITE, b"\x00\xff", True),
        ),
        (
            pb.ProcessingRequest(read_data=pb.Data(data=b"", end_of_stream=True)),
            DataEvent(Direction.READ, b"", True),
        ),
    ],
)
def test_event_of(request_: pb.ProcessingRequest, expected: DataEvent) -> None:
    wire = pb.ProcessingRequest.FromString(request_.SerializeToString())
    assert tcp_protocol.event_of(wire) == expected


def test_empty_eos_message_is_still_an_event() -> None:
    # An empty Data sub-message with only end_of_stream must not be mistaken for "no data".
    request = pb.ProcessingRequest()
    request.write_data.end_of_stream = True
    assert tcp_protocol.event_of(request) == DataEvent(Direction.WRITE, b"", True)
    # Even a completely empty Data (no fields set) is a present field.
    bare = pb.ProcessingRequest()
    bare.read_data.SetInParent()
    assert tcp_protocol.event_of(bare) == DataEvent(Direction.READ, b"", False)


def test_request_with_neither_or_both_directions_is_rejected() -> None:
    with pytest.raises(tcp_protocol.ProtocolError, match="no data"):
        tcp_protocol.event_of(pb.ProcessingRequest())
    both = pb.ProcessingRequest(read_data=pb.Data(data=b"a"), write_data=pb.Data(data=b"b"))
    with pytest.raises(tcp_protocol.ProtocolError, match="both"):
        tcp_protocol.event_of(both)


@pytest.mark.parametrize("direction", list(Direction))
@pytest.mark.parametrize("eos", [False, True])
def test_unchanged_bytes_are_carried_back(direction: Direction, eos: bool) -> None:
    # Envoy forwards only what the reply carries: unchanged data must still be sent.
    event = DataEvent(direction, b"payload", eos)
    reply = _wire(tcp_protocol.forward(event))
    field, other = ("read_data", "write_data") if direction is Direction.READ else ("write_data", "read_data")
    assert reply.HasField(field) and not reply.HasField(other)
    assert getattr(reply, field).data == b"payload"
    assert getattr(reply, field).end_of_stream is eos
    assert reply.connection_status == pb.ProcessingResponse.CONTINUE
    assert reply.data_processing_status == pb.ProcessingResponse.UNMODIFIED
    assert not reply.HasField("dynamic_metadata")


def test_replaced_bytes_are_sent_and_marked_modified() -> None:
    event = DataEvent(Direction.WRITE, b"abc", False)
    reply = _wire(tcp_protocol.forward(event, Verdict.replace(b"XYZ-longer")))
    assert reply.write_data.data == b"XYZ-longer"
    assert reply.data_processing_status == pb.ProcessingResponse.MODIFIED


def test_the_status_follows_the_verdict_not_a_byte_comparison() -> None:
    event = DataEvent(Direction.READ, b"same", False)
    replaced = _wire(tcp_protocol.forward(event, Verdict.replace(b"same")))
    assert replaced.data_processing_status == pb.ProcessingResponse.MODIFIED
    assert replaced.read_data.data == b"same"
    passed = _wire(tcp_protocol.forward(event, Verdict.pass_()))
    assert passed.data_processing_status == pb.ProcessingResponse.UNMODIFIED
    assert passed.read_data.data == b"same"


def test_empty_eos_reply_keeps_the_direction_field() -> None:
    # The end-of-stream reply must still count as a reply for its direction.
    event = DataEvent(Direction.READ, b"", True)
    reply = _wire(tcp_protocol.forward(event))
    assert reply.HasField("read_data")
    assert reply.read_data.end_of_stream is True
    assert reply.read_data.data == b""


def test_dropping_a_chunk_still_replies_on_its_direction() -> None:
    event = DataEvent(Direction.READ, b"secret", False)
    reply = _wire(tcp_protocol.forward(event, Verdict.replace(b"")))
    assert reply.HasField("read_data") and reply.read_data.data == b""


@pytest.mark.parametrize(
    ("reset", "status"),
    [(False, pb.ProcessingResponse.CLOSE), (True, pb.ProcessingResponse.CLOSE_RST)],
)
def test_close_carries_no_data(reset: bool, status: int) -> None:
    reply = _wire(tcp_protocol.close(reset=reset))
    assert reply.connection_status == status
    assert not reply.HasField("read_data")
    assert not reply.HasField("write_data")


def test_metadata_lands_under_the_lightcell_namespace() -> None:
    event = DataEvent(Direction.READ, b"x", False)
    reply = _wire(tcp_protocol.forward(event, Verdict.replace(b"x"), {"user": "alice", "score": "7"}))
    namespaces = dict(reply.dynamic_metadata.fields)
    assert list(namespaces) == [tcp_protocol.METADATA_NAMESPACE]
    inner = namespaces["lightcell"].struct_value.fields
    assert {k: v.string_value for k, v in inner.items()} == {"user": "alice", "score": "7"}

    closing = _wire(tcp_protocol.close(reset=False, metadata={"why": "bye"}))
    assert closing.dynamic_metadata.fields["lightcell"].struct_value.fields["why"].string_value == "bye"
