"""Envoy network ext_proc messages <-> plain events and replies. No I/O.

Facts from Envoy 1.40 (shared/notes/envoy-ext-proc.md) that shape this module:
- Envoy forwards only the bytes a reply carries, whatever
  `data_processing_status` says: every forwarding reply carries the bytes,
  changed or not.
- Replies match requests first-in-first-out per direction, with no ids, so
  each data message gets exactly one reply on the same direction, including
  the (often empty) end-of-stream message.
- `connection_status` CLOSE / CLOSE_RST ends the connection; data in that reply
  is not forwarded, so none is sent.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.service.network_ext_proc.v3 import network_external_processor_pb2 as pb
from google.protobuf import struct_pb2

from vmm.contract import DataEvent, Direction, Verdict, VerdictKind

__all__ = [
    "METADATA_NAMESPACE",
    "ProcessingRequest",
    "ProcessingResponse",
    "ProtocolError",
    "close",
    "event_of",
    "forward",
    "metadata_struct",
]

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse

METADATA_NAMESPACE = "lightcell"
"""Dynamic-metadata namespace the plugin's metadata.set entries land in."""


class ProtocolError(ValueError):
    """A request that no 1.40 Envoy sends (both directions, or neither)."""


def event_of(request: pb.ProcessingRequest) -> DataEvent:
    """The data event one request carries."""
    has_read = request.HasField("read_data")
    has_write = request.HasField("write_data")
    if has_read == has_write:
        raise ProtocolError(
            "request carries both read_data and write_data" if has_read else "request carries no data"
        )
    if has_read:
        return DataEvent(Direction.READ, request.read_data.data, request.read_data.end_of_stream)
    return DataEvent(Direction.WRITE, request.write_data.data, request.write_data.end_of_stream)


def forward(
    event: DataEvent, verdict: Verdict | None = None, metadata: Mapping[str, str] | None = None
) -> pb.ProcessingResponse:
    """Forward the bytes of `event` as the plugin's PASS or REPLACE verdict says
    (None: pass, e.g. a bypassed connection). Envoy forwards only what a reply
    carries, so a pass carries the original bytes back."""
    replaced = verdict is not None and verdict.kind is VerdictKind.REPLACE
    reply = pb.ProcessingResponse(
        data_processing_status=(
            pb.ProcessingResponse.MODIFIED if replaced else pb.ProcessingResponse.UNMODIFIED
        ),
        connection_status=pb.ProcessingResponse.CONTINUE,
    )
    out = reply.read_data if event.direction is Direction.READ else reply.write_data
    out.data = verdict.data if replaced and verdict is not None else event.data
    out.end_of_stream = event.end_of_stream
    if metadata:
        reply.dynamic_metadata.CopyFrom(metadata_struct(metadata))
    return reply


def close(*, reset: bool, metadata: Mapping[str, str] | None = None) -> pb.ProcessingResponse:
    """End the connection: CLOSE (flush, then FIN) or CLOSE_RST (RST). Carries no data."""
    reply = pb.ProcessingResponse(
        connection_status=pb.ProcessingResponse.CLOSE_RST if reset else pb.ProcessingResponse.CLOSE
    )
    if metadata:
        reply.dynamic_metadata.CopyFrom(metadata_struct(metadata))
    return reply


def metadata_struct(metadata: Mapping[str, str]) -> struct_pb2.Struct:
    """{"lightcell": {key: value, ...}}: Envoy takes each top-level key as a namespace."""
    outer = struct_pb2.Struct()
    inner = outer.fields[METADATA_NAMESPACE].struct_value
    for key, value in metadata.items():
        inner.fields[key].string_value = value
    return outer
