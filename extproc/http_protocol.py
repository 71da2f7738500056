"""Envoy HTTP ext_proc messages <-> plain events and decisions. No I/O.

`envoy.service.ext_proc.v3.ExternalProcessor`, one gRPC stream per HTTP
request. `HttpStream` is the per-stream state object: `receive()` turns a
`ProcessingRequest` into an `Incoming` (a typed event plus attributes,
metadata, protocol config) and records which reply is now owed;
`respond()` / `stream_body()` check the plugin's decision, then build the one
`ProcessingResponse` for that phase. Nothing here reads a socket or a clock.

Facts from Envoy 1.40 (shared/notes/envoy-ext-proc.md, Envoy's
processor_state.cc / mutation_utils.cc / mutation_rules.cc, and the message
descriptor compiled into the 1.40 binary) that this module encodes:

- Header values travel in `raw_value`. Envoy sends them there and reads only
  `raw_value`; a mutation that sets `value` gives an empty header, and setting
  both `value` and `raw_value` makes Envoy reject the reply (500). Every
  `HeaderValue` built here sets `raw_value` and never `value`.
- Outside FULL_DUPLEX_STREAMED every request message gets exactly one reply,
  in order per direction (request path, response path); the two paths
  interleave (STREAMED request body chunks next to response headers). A reply
  in the wrong state is "spurious": 500 with failure_mode_allow false
  (envoy PR #39994). `HttpStream` keeps one FIFO of unanswered messages per
  side and raises `OutOfTurn` (a bug in our code) rather than sending one.
- `observability_mode` requests expect no reply at all.
- `protocol_config` (body modes, send_body_without_waiting_for_header_response)
  arrives in the first message only: `HttpStream` keeps it.
- ProcessingResponse field 11 is `request_drain` in xds-protos 1.85 but
  `streamed_immediate_response` (a oneof member) in Envoy 1.40: never set it.
  Nothing here touches `request_drain`; the tests check the wire bytes.
- FULL_DUPLEX_STREAMED replies are `BodyMutation.streamed_response`
  (`StreamedBodyResponse{body, end_of_stream}`, present in xds-protos 1.85),
  any number of them, in headers-body-trailers order; trailer mode must be SEND.
  Switching to it through `mode_override` hangs Envoy (envoy#44202): refused.
- Content-length: Envoy strips it in STREAMED, BUFFERED_PARTIAL,
  FULL_DUPLEX_STREAMED and BUFFERED with headers SKIP (and then ignores a
  content-length set by the server). In BUFFERED with headers SEND it keeps it
  and answers 500 ("mismatch between content length and the length of the
  mutated body") unless the body reply sets it to the new length: this module
  adds that header mutation itself. A plugin may never set content-length (in
  body mode NONE Envoy would forward a wrong length to the upstream).
- Envoy's mutation rules reject `:authority`, `host`, `:method`, `:scheme` and
  `x-envoy-*` (routing headers, allow_envoy false), appending to any `:` header,
  and removing `host` or any `:` header; `:status` must be a number >= 200.
  Such mutations are refused here, before Envoy sees them.
- `mode_override` is honoured only in a reply to headers, only with
  `allow_mode_override`, never with send_body_without_waiting_for_header_response;
  it replaces the whole mode (processor_state.cc setProcessingModeInternal): body
  modes NONE included, and a DEFAULT header mode means SEND, a DEFAULT trailer
  mode SKIP (not "unchanged"); the request header mode is moot by then.
- `HeaderValueOption.append_action` is ignored by ext_proc (only the deprecated
  `append` BoolValue is read; envoy#36982, PRs #37139 and #39066 closed unmerged):
  every option carries an explicit `append`, and `append_action` is left at its
  default, which agrees with `append: true` and is unread when `append: false`.
- ImmediateResponse `details` end up as response code details, which may not
  contain whitespace: it is replaced by `_`.
- Envoy 1.40 may add fields xds-protos lacks (flow_control_init,
  client_window_update, HttpBody.drain_complete); upb keeps them as unknown
  fields and they are ignored. Body mode GRPC (5) is not supported: ProtocolError.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import json_format, struct_pb2

from extproc import tcp_protocol
from extproc.tcp_protocol import METADATA_NAMESPACE, metadata_struct

__all__ = [
    "DEFAULT_MAX_HEADER_BYTES",
    "METADATA_NAMESPACE",
    "BodyEvent",
    "BodyMode",
    "Continue",
    "HeaderAction",
    "HeaderMode",
    "HeaderOp",
    "HeadersEvent",
    "HttpEvent",
    "HttpStream",
    "Immediate",
    "Incoming",
    "Kind",
    "ModeOverride",
    "MutationRefused",
    "OutOfTurn",
    "ProcessingRequest",
    "ProcessingResponse",
    "ProtocolConfig",
    "ProtocolError",
    "Side",
    "TrailersEvent",
    "event_of",
    "flatten_attributes",
    "validate_header_ops",
    "validate_immediate",
]

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse

DEFAULT_MAX_HEADER_BYTES = 60 * 1024
"""Envoy's default max_request_headers_kb (60 KiB); the policy passes its own."""


# --- errors, grouped by who is at fault ---------------------------------------------------------


class ProtocolError(tcp_protocol.ProtocolError):
    """Envoy sent something no 1.40 Envoy sends (no phase, two phases, events out of order)."""


class MutationRefused(ValueError):
    """The plugin's output would be rejected or misapplied by Envoy: a plugin fault."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutOfTurn(RuntimeError):
    """A reply nothing is waiting for, or of the wrong kind: a bug in Lightcell, not the plugin."""


# --- events --------------------------------------------------------------------------------------


class Side(enum.Enum):
    REQUEST = "request"  # client -> upstream (Envoy's decoding path)
    RESPONSE = "response"  # upstream -> client (encoding path)


class Kind(enum.Enum):
    HEADERS = "headers"
    BODY = "body"
    TRAILERS = "trailers"


class BodyMode(enum.IntEnum):
    """ProcessingMode.BodySendMode (GRPC = 5 is not supported)."""

    NONE = 0
    STREAMED = 1
    BUFFERED = 2
    BUFFERED_PARTIAL = 3
    FULL_DUPLEX_STREAMED = 4


class HeaderMode(enum.IntEnum):
    """ProcessingMode.HeaderSendMode: DEFAULT is SEND for headers, SKIP for trailers (overrides too)."""

    DEFAULT = 0
    SEND = 1
    SKIP = 2


Header = tuple[str, bytes]


@dataclass(frozen=True, slots=True, eq=False)
class HeadersEvent:
    """Request or response headers; names as Envoy sends them (lowercase), values raw bytes."""

    side: Side
    headers: tuple[Header, ...]
    end_of_stream: bool
    kind: ClassVar[Kind] = Kind.HEADERS

    def get(self, name: str) -> bytes | None:
        """The first value of `name` (case-insensitive), or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


@dataclass(frozen=True, slots=True, eq=False)
class BodyEvent:
    """One body message: a chunk (STREAMED, FULL_DUPLEX_STREAMED) or the whole body (BUFFERED)."""

    side: Side
    body: bytes
    end_of_stream: bool
    kind: ClassVar[Kind] = Kind.BODY


@dataclass(frozen=True, slots=True, eq=False)
class TrailersEvent:
    side: Side
    trailers: tuple[Header, ...]
    kind: ClassVar[Kind] = Kind.TRAILERS


HttpEvent = HeadersEvent | BodyEvent | TrailersEvent
# eq=False on the events: the pending queue matches replies to events by identity, so two
# identical chunks are still two replies owed.


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    """ProcessingRequest.protocol_config: sent in the first message only."""

    request_body_mode: BodyMode
    response_body_mode: BodyMode
    send_body_without_waiting_for_header_response: bool


@dataclass(frozen=True, slots=True)
class Incoming:
    """Everything one ProcessingRequest carries."""

    event: HttpEvent
    attributes: Mapping[str, str]
    """ProcessingRequest.attributes flattened: `request.path` -> "/x" (see flatten_attributes)."""
    metadata: Mapping[str, Mapping[str, Any]]
    """metadata_context.filter_metadata: namespace -> plain dict (typed_filter_metadata ignored)."""
    observability_mode: bool
    protocol_config: ProtocolConfig | None


_PHASE_FIELDS: Mapping[str, tuple[Side, Kind]] = {
    "request_headers": (Side.REQUEST, Kind.HEADERS),
    "request_body": (Side.REQUEST, Kind.BODY),
    "request_trailers": (Side.REQUEST, Kind.TRAILERS),
    "response_headers": (Side.RESPONSE, Kind.HEADERS),
    "response_body": (Side.RESPONSE, Kind.BODY),
    "response_trailers": (Side.RESPONSE, Kind.TRAILERS),
}
_REPLY_FIELD: Mapping[tuple[Side, Kind], str] = {phase: name for name, phase in _PHASE_FIELDS.items()}
# The reply field has the same name as the request field it answers.


def _header_pairs(header_map: base_pb2.HeaderMap) -> tuple[Header, ...]:
    # Envoy fills raw_value; `value` only under a runtime flag older Envoys had, kept as a fallback.
    return tuple(
        (h.key, h.raw_value if h.raw_value or not h.value else h.value.encode()) for h in header_map.headers
    )


def event_of(request: pb.ProcessingRequest) -> HttpEvent:
    """The one event a request carries; ProtocolError if it carries none."""
    which = request.WhichOneof("request")
    if which is None:
        raise ProtocolError("request carries no phase (no headers, body or trailers)")
    side, kind = _PHASE_FIELDS[which]
    if kind is Kind.HEADERS:
        h = getattr(request, which)
        return HeadersEvent(side, _header_pairs(h.headers), h.end_of_stream)
    if kind is Kind.BODY:
        b = getattr(request, which)
        return BodyEvent(side, b.body, b.end_of_stream)
    return TrailersEvent(side, _header_pairs(getattr(request, which).trailers))


def _body_mode(value: int) -> BodyMode:
    try:
        return BodyMode(value)
    except ValueError:
        raise ProtocolError(f"unsupported body mode {value}") from None


def _protocol_config(request: pb.ProcessingRequest) -> ProtocolConfig | None:
    if not request.HasField("protocol_config"):
        return None
    c = request.protocol_config
    return ProtocolConfig(
        _body_mode(c.request_body_mode),
        _body_mode(c.response_body_mode),
        c.send_body_without_waiting_for_header_response,
    )


def _scalar(value: struct_pb2.Value) -> str | None:
    which = value.WhichOneof("kind")
    if which is None or which == "null_value":
        return None
    if which == "string_value":
        return str(value.string_value)
    if which == "bool_value":
        return "true" if value.bool_value else "false"
    if which == "number_value":
        n = value.number_value
        return str(int(n)) if n.is_integer() and abs(n) < 2**53 else repr(n)
    return str(json.dumps(json_format.MessageToDict(value), separators=(",", ":"), sort_keys=True))


def flatten_attributes(attributes: Mapping[str, struct_pb2.Struct]) -> dict[str, str]:
    """{namespace: Struct{"request.path": "/x", "request.size": 3}} -> {"request.path": "/x",
    "request.size": "3"}. Envoy puts CEL results under the filter's name; the attribute's own
    name is already dotted, so the namespace is dropped (first namespace in sorted order wins
    a clash). Integral numbers print without ".0", bools as true/false, lists and maps as
    compact JSON; null (an attribute Envoy could not evaluate) is left out."""
    flat: dict[str, str] = {}
    for namespace in sorted(attributes):
        for name, value in attributes[namespace].fields.items():
            text = _scalar(value)
            if text is not None and name not in flat:
                flat[name] = text
    return flat


def _incoming(request: pb.ProcessingRequest) -> Incoming:
    metadata = {
        ns: json_format.MessageToDict(s) for ns, s in request.metadata_context.filter_metadata.items()
    }
    return Incoming(
        event=event_of(request),
        attributes=flatten_attributes(request.attributes),
        metadata=metadata,
        observability_mode=request.observability_mode,
        protocol_config=_protocol_config(request),
    )


# --- decisions -----------------------------------------------------------------------------------


class HeaderAction(enum.Enum):
    SET = "set"  # replace every value of the name, or add it
    APPEND = "append"  # add one more value (or add the header)
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class HeaderOp:
    action: HeaderAction
    name: str
    value: bytes = b""

    @classmethod
    def set(cls, name: str, value: bytes) -> HeaderOp:
        return cls(HeaderAction.SET, name, value)

    @classmethod
    def append(cls, name: str, value: bytes) -> HeaderOp:
        return cls(HeaderAction.APPEND, name, value)

    @classmethod
    def remove(cls, name: str) -> HeaderOp:
        return cls(HeaderAction.REMOVE, name)


@dataclass(frozen=True, slots=True)
class ModeOverride:
    """ProcessingResponse.mode_override. It REPLACES the current mode: a body left at NONE is
    turned off, a DEFAULT header mode means SEND and a DEFAULT trailer mode SKIP (Envoy's
    defaults), so set every field. The request headers have gone by then: no request_header_mode."""

    response_header_mode: HeaderMode = HeaderMode.DEFAULT
    request_body_mode: BodyMode = BodyMode.NONE
    response_body_mode: BodyMode = BodyMode.NONE
    request_trailer_mode: HeaderMode = HeaderMode.DEFAULT
    response_trailer_mode: HeaderMode = HeaderMode.DEFAULT


@dataclass(frozen=True, slots=True)
class Continue:
    """Let the message through, changed as asked: header ops (headers and trailers replies, and
    body replies while Envoy still holds the headers: BUFFERED / BUFFERED_PARTIAL after headers
    SEND), a new body (body replies; BUFFERED: the whole body, STREAMED: this chunk),
    dynamic metadata, a mode override (headers replies only)."""

    headers: Sequence[HeaderOp] = ()
    body: bytes | None = None
    metadata: Mapping[str, str] | None = None
    mode_override: ModeOverride | None = None
    clear_route_cache: bool = False


@dataclass(frozen=True, slots=True)
class Immediate:
    """Answer the client at once; the upstream never sees (the rest of) the request."""

    status: int
    headers: Sequence[tuple[str, bytes]] = ()
    body: bytes = b""
    grpc_status: int | None = None
    details: str = ""
    metadata: Mapping[str, str] | None = None


Decision = Continue | Immediate


# --- validation of plugin output ----------------------------------------------------------------

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")  # RFC 9110 tchar, after lowercasing
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB: CR, LF, NUL and the rest
_ROUTING = frozenset({":authority", "host", ":method", ":scheme"})  # Envoy rejects (allow_all_routing)
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}
)
_SETTABLE_PSEUDO: Mapping[Side, frozenset[str]] = {
    Side.REQUEST: frozenset({":path"}),
    Side.RESPONSE: frozenset({":status"}),
}
CONTENT_LENGTH = "content-length"


def _check_name(name: str) -> str:
    """Lowercased name, or MutationRefused. HTTP/2 requires lowercase and Envoy lowercases
    mutation names anyway (LowerCaseString), so uppercase is normalised, not refused."""
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raise MutationRefused(f"header name {name!r} is not ASCII") from None
    lowered = raw.lower()
    body = lowered[1:] if lowered.startswith(b":") else lowered
    if not _TOKEN.fullmatch(body):
        raise MutationRefused(f"header name {name!r} is not an RFC 9110 token")
    return lowered.decode()


def _check_value(name: str, value: bytes) -> None:
    if _BAD_VALUE.search(value):
        raise MutationRefused(f"header {name!r}: value has CR, LF, NUL or another control character")


def _check_status(status: int, what: str) -> None:
    if not 200 <= status <= 599:
        raise MutationRefused(f"{what} {status} is outside 200-599")


def validate_header_ops(
    ops: Sequence[HeaderOp], side: Side, kind: Kind, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> list[HeaderOp]:
    """The ops with names lowercased, or MutationRefused naming the first bad one.
    `max_header_bytes` bounds the bytes the ops add (name + value of each set / append)."""
    checked: list[HeaderOp] = []
    added = 0
    for op in ops:
        name = _check_name(op.name)
        pseudo = name.startswith(":")
        if name in _ROUTING or name.startswith("x-envoy-"):
            raise MutationRefused(f"Envoy rejects mutations of {name!r}")
        if op.action is HeaderAction.REMOVE:
            if pseudo:
                raise MutationRefused(f"pseudo-header {name!r} cannot be removed")
            checked.append(HeaderOp(op.action, name))
            continue
        _check_value(name, op.value)
        if pseudo:
            if kind is not Kind.HEADERS or name not in _SETTABLE_PSEUDO[side]:
                raise MutationRefused(f"pseudo-header {name!r} may not be set on {side.value} {kind.value}")
            if op.action is HeaderAction.APPEND:
                raise MutationRefused(f"pseudo-header {name!r} cannot take a second value")
            if name == ":status":
                if not re.fullmatch(rb"[0-9]{3}", op.value):
                    raise MutationRefused(f":status {op.value!r} is not a 3-digit status")
                _check_status(int(op.value), ":status")
        if name in _HOP_BY_HOP:
            raise MutationRefused(f"hop-by-hop header {name!r} may not be set")
        if name == CONTENT_LENGTH:
            raise MutationRefused("content-length is set by Lightcell, never by the plugin")
        added += len(name) + len(op.value)
        if added > max_header_bytes:
            raise MutationRefused(f"header mutations add more than {max_header_bytes} bytes")
        checked.append(HeaderOp(op.action, name, op.value))
    return checked


def validate_immediate(answer: Immediate, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> Immediate:
    """The answer with names lowercased and details made whitespace-free, or MutationRefused."""
    _check_status(answer.status, "immediate response status")
    if answer.grpc_status is not None and not 0 <= answer.grpc_status <= 16:
        raise MutationRefused(f"grpc status {answer.grpc_status} is not a gRPC status code")
    ops = [HeaderOp.append(name, value) for name, value in answer.headers]
    for op in ops:
        if op.name.startswith(":"):
            raise MutationRefused(f"pseudo-header {op.name!r} in an immediate response (use status)")
    checked = validate_header_ops(ops, Side.RESPONSE, Kind.HEADERS, max_header_bytes=max_header_bytes)
    details = re.sub(r"\s", "_", answer.details)
    if not details.isascii() or not details.isprintable():
        raise MutationRefused("immediate response details must be printable ASCII")
    return dataclasses.replace(answer, headers=tuple((op.name, op.value) for op in checked), details=details)


# --- encoding ------------------------------------------------------------------------------------


def _header_value_option(name: str, value: bytes, append: bool) -> base_pb2.HeaderValueOption:
    option = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, raw_value=value))
    option.append.value = append  # explicit: ext_proc reads `append`, not `append_action`
    return option


def _header_mutation(ops: Sequence[HeaderOp], out: pb.HeaderMutation) -> None:
    for op in ops:
        if op.action is HeaderAction.REMOVE:
            out.remove_headers.append(op.name)
        else:
            out.set_headers.append(_header_value_option(op.name, op.value, op.action is HeaderAction.APPEND))


def _mode_override(override: ModeOverride) -> processing_mode_pb2.ProcessingMode:
    return processing_mode_pb2.ProcessingMode(
        response_header_mode=int(override.response_header_mode),
        request_body_mode=int(override.request_body_mode),
        response_body_mode=int(override.response_body_mode),
        request_trailer_mode=int(override.request_trailer_mode),
        response_trailer_mode=int(override.response_trailer_mode),
    )


def _immediate_response(answer: Immediate) -> pb.ProcessingResponse:
    reply = pb.ProcessingResponse()
    out = reply.immediate_response
    out.status.code = answer.status  # StatusCode is an open enum: any 200-599 passes
    seen: set[str] = set()
    for name, value in answer.headers:  # a repeated name (set-cookie) is appended, not replaced
        out.headers.set_headers.append(_header_value_option(name, value, name in seen))
        seen.add(name)
    out.body = answer.body
    if answer.grpc_status is not None:
        out.grpc_status.status = answer.grpc_status
    out.details = answer.details
    if answer.metadata:
        reply.dynamic_metadata.CopyFrom(metadata_struct(answer.metadata))
    return reply


# --- the per-stream state machine ----------------------------------------------------------------

# Which message kinds may follow on one side (None: nothing seen yet). HEADERS may be skipped
# (header mode SKIP); TRAILERS end the side; a message with end_of_stream ends it too.
_NEXT: Mapping[Kind | None, frozenset[Kind]] = {
    None: frozenset({Kind.HEADERS, Kind.BODY, Kind.TRAILERS}),
    Kind.HEADERS: frozenset({Kind.BODY, Kind.TRAILERS}),
    Kind.BODY: frozenset({Kind.BODY, Kind.TRAILERS}),
    Kind.TRAILERS: frozenset(),
}
# What a reply to each kind may carry.
_MAY_CARRY: Mapping[Kind, frozenset[str]] = {
    Kind.HEADERS: frozenset({"headers", "metadata", "mode_override", "clear_route_cache"}),
    Kind.BODY: frozenset({"headers", "body", "metadata", "clear_route_cache"}),
    Kind.TRAILERS: frozenset({"headers", "metadata"}),
}


@dataclass(slots=True)
class _SideState:
    body_mode: BodyMode
    last: Kind | None = None
    ended: bool = False  # a message with end_of_stream, or trailers, arrived
    pending: deque[HttpEvent] = field(default_factory=deque)  # messages owed one reply, FIFO
    headers_seen: bool = False  # Envoy sent the headers (mode SEND): it holds them while BUFFERED
    content_length: bool = False  # the held headers carry content-length
    # FULL_DUPLEX_STREAMED body: replies are StreamedBodyResponses, not one per chunk.
    duplex_started: bool = False  # a body chunk arrived
    duplex_in_eos: bool = False  # last chunk (end_of_stream) received
    duplex_out_eos: bool = False  # our streamed body ended

    @property
    def duplex(self) -> bool:
        return self.body_mode is BodyMode.FULL_DUPLEX_STREAMED


class HttpStream:
    """One ext_proc stream (one HTTP request): which replies are owed, and how to build them.

    `body_modes` and `allow_mode_override` come from the filter config Lightcell checked; the
    first message's protocol_config, when Envoy sends one, replaces the body modes."""

    def __init__(
        self,
        *,
        request_body_mode: BodyMode = BodyMode.NONE,
        response_body_mode: BodyMode = BodyMode.NONE,
        allow_mode_override: bool = False,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        self._sides = {
            Side.REQUEST: _SideState(request_body_mode),
            Side.RESPONSE: _SideState(response_body_mode),
        }
        self.allow_mode_override = allow_mode_override
        self.max_header_bytes = max_header_bytes
        self.protocol_config: ProtocolConfig | None = None
        self.observability_mode = False
        self.attributes: dict[str, str] = {}
        """Attributes of every message so far (request ones arrive with the request headers,
        response ones with the response headers)."""
        self.closed = False
        """An immediate response was sent: Envoy asks nothing more; late messages get no reply."""
        self._messages = 0

    # -- inspection --

    def body_mode(self, side: Side) -> BodyMode:
        return self._sides[side].body_mode

    def headers_held(self, side: Side) -> bool:
        """Whether a reply to a body message of `side` may still change that side's headers
        (Envoy holds them: BUFFERED / BUFFERED_PARTIAL after headers SEND)."""
        return self._headers_held(self._sides[side])

    def pending(self, side: Side | None = None) -> tuple[HttpEvent, ...]:
        """Messages still owed a reply, oldest first (both sides, request side first, if None)."""
        sides = [side] if side is not None else [Side.REQUEST, Side.RESPONSE]
        return tuple(e for s in sides for e in self._sides[s].pending)

    # -- input --

    def receive(self, request: pb.ProcessingRequest) -> Incoming:
        """Parse one request and record the reply it is owed."""
        incoming = _incoming(request)
        first = self._messages == 0
        self._messages += 1
        if incoming.protocol_config is not None:
            if not first:
                raise ProtocolError("protocol_config after the first message")
            self.protocol_config = incoming.protocol_config
            self._sides[Side.REQUEST].body_mode = incoming.protocol_config.request_body_mode
            self._sides[Side.RESPONSE].body_mode = incoming.protocol_config.response_body_mode
        if first:
            self.observability_mode = incoming.observability_mode
        self.attributes.update(incoming.attributes)
        event = incoming.event
        side = self._sides[event.side]
        if side.ended or event.kind not in _NEXT[side.last]:
            raise ProtocolError(f"{event.side.value} {event.kind.value} out of order (after {side.last})")
        side.last = event.kind
        if isinstance(event, HeadersEvent):
            side.headers_seen = True
            side.content_length = event.get(CONTENT_LENGTH) is not None
            side.ended = event.end_of_stream
        elif isinstance(event, BodyEvent):
            side.ended = event.end_of_stream
        else:
            side.ended = True
        if self.closed or self.observability_mode:
            return incoming  # nothing is owed
        if isinstance(event, BodyEvent) and side.duplex:
            side.duplex_started = True
            side.duplex_in_eos = event.end_of_stream
        else:
            side.pending.append(event)
        return incoming

    # -- output --

    def respond(self, event: HttpEvent, decision: Decision) -> pb.ProcessingResponse:
        """The one reply `event` is owed. OutOfTurn if `event` is not the oldest unanswered
        message of its side (or owes no reply); MutationRefused if the plugin's decision is bad."""
        side = self._check_turn(event, immediate=isinstance(decision, Immediate))
        if isinstance(decision, Immediate):
            answer = validate_immediate(decision, max_header_bytes=self.max_header_bytes)
            reply = _immediate_response(answer)
            if side.pending and side.pending[0] is event:
                side.pending.popleft()
            self.closed = True
            return reply
        carried = {
            name
            for name, present in (
                ("headers", bool(decision.headers)),
                ("body", decision.body is not None),
                ("metadata", bool(decision.metadata)),
                ("mode_override", decision.mode_override is not None),
                ("clear_route_cache", decision.clear_route_cache),
            )
            if present
        }
        extra = carried - _MAY_CARRY[event.kind]
        if extra:
            raise OutOfTurn(f"a reply to {event.side.value} {event.kind.value} cannot carry {sorted(extra)}")
        ops = validate_header_ops(
            decision.headers, event.side, event.kind, max_header_bytes=self.max_header_bytes
        )
        if ops and event.kind is Kind.BODY and not self._headers_held(side):
            raise MutationRefused(
                f"{event.side.value} headers already went on (body mode {side.body_mode.name}): "
                "header changes are only possible in a reply to the headers"
            )
        if decision.mode_override is not None:
            self._apply_override(decision.mode_override)
        if any(op.name == CONTENT_LENGTH for op in ops):  # only REMOVE gets through validation
            side.content_length = False
        if (
            decision.body is not None
            and side.body_mode is BodyMode.BUFFERED
            and side.headers_seen
            and side.content_length
        ):
            # Envoy keeps content-length here and 500s unless it matches the new body.
            ops.append(HeaderOp.set(CONTENT_LENGTH, str(len(decision.body)).encode()))

        reply = pb.ProcessingResponse()
        field_name = _REPLY_FIELD[(event.side, event.kind)]
        target = getattr(reply, field_name)
        target.SetInParent()  # a reply with no changes is still this phase's reply
        if event.kind is Kind.TRAILERS:
            if ops:
                _header_mutation(ops, target.header_mutation)
        else:
            common = target.response
            common.status = pb.CommonResponse.CONTINUE
            if ops:
                _header_mutation(ops, common.header_mutation)
            if decision.body is not None:
                common.body_mutation.body = decision.body  # `body`, never clear_body: b"" is fine
            common.clear_route_cache = decision.clear_route_cache
        if decision.metadata:
            reply.dynamic_metadata.CopyFrom(metadata_struct(decision.metadata))
        if decision.mode_override is not None:
            reply.mode_override.CopyFrom(_mode_override(decision.mode_override))
        side.pending.popleft()
        return reply

    def stream_body(
        self, side: Side, body: bytes, *, end_of_stream: bool, metadata: Mapping[str, str] | None = None
    ) -> pb.ProcessingResponse:
        """A FULL_DUPLEX_STREAMED body reply (any number per side, after the headers reply and
        before the trailers reply; end_of_stream only once the last chunk has arrived without
        trailers to follow)."""
        state = self._sides[side]
        if self.closed or self.observability_mode:
            raise OutOfTurn("no replies on this stream")
        if not state.duplex:
            raise OutOfTurn(f"{side.value} body mode is {state.body_mode.name}, not FULL_DUPLEX_STREAMED")
        if state.pending and state.pending[0].kind is Kind.HEADERS:
            raise OutOfTurn(f"{side.value} headers must be answered before any body")
        if not state.duplex_started:
            raise OutOfTurn(f"no {side.value} body has arrived")
        if state.duplex_out_eos or (state.last is Kind.TRAILERS and not state.pending):
            raise OutOfTurn(f"the {side.value} body already ended")
        if end_of_stream and not state.duplex_in_eos:
            raise OutOfTurn(
                f"the {side.value} body cannot end before its last chunk arrived without trailers"
            )
        state.duplex_out_eos = end_of_stream
        reply = pb.ProcessingResponse()
        target = getattr(reply, _REPLY_FIELD[(side, Kind.BODY)])
        streamed = target.response.body_mutation.streamed_response
        streamed.body = body
        streamed.end_of_stream = end_of_stream
        if metadata:
            reply.dynamic_metadata.CopyFrom(metadata_struct(metadata))
        return reply

    # -- internals --

    def _check_turn(self, event: HttpEvent, *, immediate: bool) -> _SideState:
        if self.observability_mode:
            raise OutOfTurn("observability mode: Envoy expects no replies")
        if self.closed:
            raise OutOfTurn("an immediate response already ended this stream")
        side = self._sides[event.side]
        if not side.pending or side.pending[0] is not event:
            if isinstance(event, BodyEvent) and side.duplex:
                if immediate and not side.duplex_out_eos:
                    return side  # an open full-duplex body may be cut short by an answer

                raise OutOfTurn("FULL_DUPLEX_STREAMED body chunks are answered with stream_body()")
            raise OutOfTurn(f"{event.side.value} {event.kind.value} is not the oldest message owed a reply")
        return side

    def _headers_held(self, side: _SideState) -> bool:
        """Envoy still holds the headers at a body reply, and applies its header mutation, in
        BUFFERED and BUFFERED_PARTIAL after headers SEND. (STREAMED with
        send_body_without_waiting_for_header_response applies one to the first body reply only;
        refused here as too subtle to promise a plugin.)"""
        return side.headers_seen and side.body_mode in (BodyMode.BUFFERED, BodyMode.BUFFERED_PARTIAL)

    def _apply_override(self, override: ModeOverride) -> None:
        if not self.allow_mode_override:
            raise OutOfTurn("mode_override without allow_mode_override: Envoy would ignore it")
        if (
            self.protocol_config is not None
            and self.protocol_config.send_body_without_waiting_for_header_response
        ):
            raise OutOfTurn("send_body_without_waiting_for_header_response disables mode_override")
        modes = (override.request_body_mode, override.response_body_mode)
        current = (self._sides[Side.REQUEST].body_mode, self._sides[Side.RESPONSE].body_mode)
        for new, old in zip(modes, current, strict=True):
            if BodyMode.FULL_DUPLEX_STREAMED in (new, old) and new is not old:
                raise OutOfTurn("switching to or from FULL_DUPLEX_STREAMED by mode_override hangs Envoy")
        self._sides[Side.REQUEST].body_mode = override.request_body_mode
        self._sides[Side.RESPONSE].body_mode = override.response_body_mode
