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
- The filter's `connection_attributes` arrive in `ProcessingRequest.attributes`
  (field 4, `map<string, google.protobuf.Struct>`, keyed by the filter's name)
  on the stream's first message only, whichever direction it is; xds-protos
  1.85 lacks the field, so `attributes_of` reads it from the unknown fields.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.service.network_ext_proc.v3 import network_external_processor_pb2 as pb
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory, struct_pb2
from google.protobuf.unknown_fields import UnknownFieldSet

from vmm.contract import (
    MAX_CONNECTION_ATTRIBUTE_BYTES,
    MAX_CONNECTION_ATTRIBUTES,
    DataEvent,
    Direction,
    Verdict,
    VerdictKind,
)

__all__ = [
    "METADATA_NAMESPACE",
    "ProcessingRequest",
    "ProcessingResponse",
    "ProtocolError",
    "attributes_of",
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
    """A request that no 1.40 Envoy sends (both directions, or neither; attributes
    that do not decode or are over the bounds)."""


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


# --- connection attributes ----------------------------------------------------------------

ATTRIBUTES_FIELD = 4
"""ProcessingRequest.attributes in Envoy 1.40 (envoy/service/network_ext_proc/v3/
network_external_processor.proto, checked against the descriptor in the 1.40 binary)."""


def _entry_class() -> type[message.Message]:
    """The map entry of field 4 (`string key = 1; google.protobuf.Struct value = 2;`),
    described at import time in the default pool (which already holds Struct):
    protobuf itself then checks the key's UTF-8 and the Struct, with no generated code."""
    pool = descriptor_pool.Default()
    name = "lightcell.internal.NetworkAttributesEntry"
    try:
        found: type[message.Message] = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
        return found
    except KeyError:
        pass
    fd = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="lightcell/internal/network_attributes_entry.proto",
        package="lightcell.internal",
        syntax="proto3",
        dependency=["google/protobuf/struct.proto"],
    )
    entry = file.message_type.add(name="NetworkAttributesEntry")
    entry.field.add(name="key", number=1, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    entry.field.add(
        name="value", number=2, type=fd.TYPE_MESSAGE, label=fd.LABEL_OPTIONAL,
        type_name=".google.protobuf.Struct",
    )  # fmt: skip
    pool.Add(file)
    made: type[message.Message] = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    return made


_Entry = _entry_class()


def attributes_of(request: pb.ProcessingRequest) -> tuple[tuple[str, str], ...]:
    """The connection attributes a request carries, as (name, text) pairs sorted by name:
    rendered as the http-filter world renders them (extproc/http_protocol.py
    `flatten_attributes`: strings as they are, numbers in decimal, lists/maps as JSON,
    nulls left out, the filter-name namespace dropped). Empty when there are none.
    Raises ProtocolError for a field that does not decode, or more than
    MAX_CONNECTION_ATTRIBUTES attributes / MAX_CONNECTION_ATTRIBUTE_BYTES of text:
    the stream then ends non-OK and Envoy closes the connection (fail closed)."""
    from extproc.http_protocol import flatten_attributes  # it imports this module

    namespaces: dict[str, struct_pb2.Struct] = {}
    if "attributes" in request.DESCRIPTOR.fields_by_name:  # a newer xds-protos knows the field
        namespaces.update(request.attributes)
    else:
        entries = [f for f in UnknownFieldSet(request) if f.field_number == ATTRIBUTES_FIELD]
        if not entries:  # the filter lists no connection_attributes
            return ()
        if len(entries) > MAX_CONNECTION_ATTRIBUTES:  # before decoding any
            too_many = f"{len(entries)} map entries, more than {MAX_CONNECTION_ATTRIBUTES}"
            raise ProtocolError(f"attributes: {too_many}")
        for field in entries:
            if field.wire_type != 2 or not isinstance(field.data, bytes):
                raise ProtocolError(f"attributes: wire type {field.wire_type}, not a map entry")
            try:
                entry = _Entry.FromString(field.data)
            except message.DecodeError as e:
                raise ProtocolError(f"attributes: undecodable map entry ({e})") from None
            value = struct_pb2.Struct()
            value.CopyFrom(entry.value)
            namespaces[entry.key] = value  # a repeated key: the last wins, as in a protobuf map
    flat = flatten_attributes(namespaces)
    if len(flat) > MAX_CONNECTION_ATTRIBUTES:
        raise ProtocolError(f"{len(flat)} connection attributes, more than {MAX_CONNECTION_ATTRIBUTES}")
    size = sum(len(n.encode()) + len(v.encode()) for n, v in flat.items())
    if size > MAX_CONNECTION_ATTRIBUTE_BYTES:
        raise ProtocolError(
            f"connection attributes of {size} bytes, more than {MAX_CONNECTION_ATTRIBUTE_BYTES}"
        )
    return tuple(sorted(flat.items()))
