"""One HTTP request (one Envoy HTTP ext_proc stream): its policy, failure mode and one sandbox.

The sandbox is created when the first message arrives (its instance only when
a wanted hook first runs: vmm.runner.HttpRunner). Each message is parsed by
`http_protocol.HttpStream`, handed to the plugin's hook for its phase (body
messages over MAX_EVENT_BYTES in pieces, as TCP chunks), and the plugin's
`HttpDecision` becomes the one reply that message is owed:

- continue -> `Continue()` (the message goes on unchanged);
- modify -> `Continue(headers=[removes, sets, appends], body=...)`; header
  changes from a body hook that Envoy can no longer apply (the headers went
  on: body mode STREAMED) are dropped with a warning, as the WIT README says;
- respond -> `Immediate(status, headers, body)`;
- the metadata a hook set -> the reply's dynamic metadata.

`HttpStream.respond` checks every decision before Envoy sees it; what it
refuses (`MutationRefused`) is a plugin fault of kind abi. A fault is logged
and counted once (`_report`, as the TCP session does, with protocol="http")
and handled by the policy's failure mode:

- close: an immediate response with the policy's `close_status` (500 by
  default) to the message at hand; Envoy forwards nothing more of the request
  or the response;
- reset: `StreamReset`, which the service turns into a non-OK gRPC status
  (Envoy, failure_mode_allow false, fails the request);
- allow: the plugin is dropped and every message from here on continues
  unchanged.

Phases: where Envoy lets it (`HttpOptions.mode_override`), the reply to the
request headers carries a `mode_override` asking Envoy for exactly the phases
the plugin wants (http_policy.override_for). A phase the plugin does not want
that still arrives is answered unchanged without entering the sandbox
(vmm.runner.HttpRunner).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from extproc import http_protocol as hp
from extproc.http_policy import DEFAULT_CLOSE_STATUS, override_for
from extproc.listener import FailureMode, HttpListener
from extproc.stream_edge import StreamAbort
from vmm.capabilities import MAX_METADATA_ENTRIES, DatagramSender
from vmm.contract import (
    HTTP_HOOKS,
    MAX_EVENT_BYTES,
    MAX_OUTPUT_BYTES,
    DecisionKind,
    HttpPhase,
    output_too_large,
)
from vmm.http_abi import Header, HeaderMutation, HttpDecision
from vmm.metrics import METRICS, Metrics
from vmm.runner import HttpRunner
from vmm.sandbox import FaultKind, PluginFault

__all__ = ["DEFAULT_CLOSE_STATUS", "HttpSession", "StreamReset"]

LOG = logging.getLogger("lightcell.http_session")

FAULT_DETAILS = "lightcell_plugin_fault"


_CONTINUE = HttpDecision(DecisionKind.CONTINUE)


class StreamReset(StreamAbort):
    """Failure mode reset: the stream must end with a non-OK status (ABORTED)."""


class _State(enum.Enum):
    FILTERING = "filtering"  # the plugin sees every message
    BYPASS = "bypass"  # the plugin faulted under failure mode allow: everything continues unchanged
    ANSWERED = "answered"  # an immediate response ended the request (plugin's or failure mode close)
    RESET = "reset"  # failure mode reset: every message ends the stream


_PHASES = {
    (hp.Side.REQUEST, hp.Kind.HEADERS): HttpPhase.REQUEST_HEADERS,
    (hp.Side.REQUEST, hp.Kind.BODY): HttpPhase.REQUEST_BODY,
    (hp.Side.REQUEST, hp.Kind.TRAILERS): HttpPhase.REQUEST_TRAILERS,
    (hp.Side.RESPONSE, hp.Kind.HEADERS): HttpPhase.RESPONSE_HEADERS,
    (hp.Side.RESPONSE, hp.Kind.BODY): HttpPhase.RESPONSE_BODY,
    (hp.Side.RESPONSE, hp.Kind.TRAILERS): HttpPhase.RESPONSE_TRAILERS,
}


class HttpSession:
    """Turns one HTTP request's ProcessingRequests into ProcessingResponses.

    Not re-entrant: the caller hands in one request at a time, in stream order.
    `handle` returns the reply, or None where Envoy expects none (after an
    immediate response, in observability mode).
    """

    def __init__(
        self,
        listener: HttpListener,
        egress: DatagramSender | None = None,
        metrics: Metrics = METRICS,
    ) -> None:
        self.listener = listener
        self._egress = egress
        self._metrics = metrics
        metrics.inc("http_requests_total", listener=listener.policy.name, tier=listener.tier.tier.value)
        options = listener.policy.http
        self._close_status = options.close_status
        # Envoy 1.40 states the body modes in the first message (protocol_config); until then,
        # the policy's one known mode, if it has only one.
        known = options.modes[0] if len(options.modes) == 1 else None
        self._stream = hp.HttpStream(
            request_body_mode=known.request_body if known else hp.BodyMode.NONE,
            response_body_mode=known.response_body if known else hp.BodyMode.NONE,
            allow_mode_override=options.mode_override,
            max_header_bytes=options.max_header_bytes,
        )
        self._state = _State.FILTERING
        self._sandbox: HttpRunner | None = None
        self._sandbox_id = "-"
        self._started = False

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def stream(self) -> hp.HttpStream:
        return self._stream

    async def handle(self, request: hp.ProcessingRequest) -> hp.ProcessingResponse | None:
        """The reply to one request, or None. Raises hp.ProtocolError for a malformed request,
        StreamReset under failure mode reset."""
        incoming = self._stream.receive(request)
        event = incoming.event
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug(
                "policy=%s %s %s end_of_stream=%s state=%s",
                self.listener.name, event.side.value, event.kind.value,
                getattr(event, "end_of_stream", True), self._state.value,
            )  # fmt: skip
        if self._state is _State.RESET:
            raise StreamReset("the request was reset after a plugin fault")
        if self._state is _State.ANSWERED:
            return None  # Envoy expects no more replies after an immediate response
        silent = self._stream.observability_mode
        if self._state is _State.BYPASS:
            return None if silent else self._unchanged(event)
        if self._sandbox is None and not self.listener.factory.phases & _PHASES[(event.side, event.kind)]:
            # A phase the plugin does not want, before any it wants: no sandbox yet (on-open and
            # on-close run only for requests the plugin sees).
            return None if silent else self._reply(event, _CONTINUE)
        try:
            sandbox = await self._ensure_sandbox()
            decision = await _run_hook(sandbox, event, incoming.attributes)
            if silent:
                return None
            return self._reply(event, decision)
        except PluginFault as fault:
            return await self._fail(event, fault, silent)

    async def aclose(self) -> None:
        """Run the plugin's close hook (if it is still healthy) and release the sandbox."""
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            fault = await sandbox.close()
            if fault is not None:  # the request is over: nothing more to decide
                self._report(fault, "none (request ending)")

    # --- internals ---------------------------------------------------------------------------

    async def _ensure_sandbox(self) -> HttpRunner:
        if self._sandbox is not None:
            return self._sandbox
        if self._started:
            raise RuntimeError("session sandbox already released")  # only a bug brings us here
        self._started = True
        policy = self.listener.policy
        host = self.listener.host_for(self._egress, self._metrics)
        sandbox = await self.listener.factory.new_sandbox(host)
        self._sandbox = sandbox
        self._sandbox_id = sandbox.identity
        await sandbox.open(policy.name, policy.spec.plugin_config)
        return sandbox

    def _reply(self, event: hp.HttpEvent, decision: HttpDecision) -> hp.ProcessingResponse:
        metadata = decision.metadata or None
        hook = HTTP_HOOKS[_PHASES[(event.side, event.kind)]]
        try:
            if decision.kind is DecisionKind.RESPOND:
                answer = hp.Immediate(
                    decision.status,
                    headers=[(h.name, h.value) for h in decision.response_headers],
                    body=decision.body or b"",
                    metadata=metadata,
                )
                reply = self._stream.respond(event, answer)
                self._state = _State.ANSWERED
                # The class, not the code: the plugin picks the code, and must not pick the series.
                status = f"{decision.status // 100}xx"
                self._metrics.inc("plugin_immediate_total", listener=self.listener.name, status=status)
                return reply
            ops = _header_ops(decision.headers) if decision.kind is DecisionKind.MODIFY else []
            if ops and isinstance(event, hp.BodyEvent) and not self._stream.headers_held(event.side):
                LOG.warning(
                    "listener=%s plugin=%s sandbox=%s: %s changed the %s headers after they went on "
                    "(body mode %s): dropped",
                    self.listener.name, self.listener.policy.plugin, self._sandbox_id, hook,
                    event.side.value, self._stream.body_mode(event.side).name,
                )  # fmt: skip
                ops = []
            body = decision.body if decision.kind is DecisionKind.MODIFY else None
            if (
                isinstance(event, hp.BodyEvent)
                and self._stream.body_mode(event.side) is hp.BodyMode.FULL_DUPLEX_STREAMED
            ):
                return self._stream.stream_body(
                    event.side,
                    event.body if body is None else body,
                    end_of_stream=event.end_of_stream,
                    metadata=metadata,
                )
            override = self._override(event)
            return self._stream.respond(
                event, hp.Continue(headers=ops, body=body, metadata=metadata, mode_override=override)
            )
        except hp.MutationRefused as e:
            raise PluginFault(FaultKind.ABI, f"{hook}: {e.reason}") from e

    def _override(self, event: hp.HttpEvent) -> hp.ModeOverride | None:
        """The mode_override for a reply to the request headers (None for anything else)."""
        if not (isinstance(event, hp.HeadersEvent) and event.side is hp.Side.REQUEST):
            return None
        config = self._stream.protocol_config
        if config is None and len(self.listener.policy.http.modes) != 1:
            return None  # the body modes in force are unknown: an override could switch one off
        if config and config.send_body_without_waiting_for_header_response:
            return None
        return override_for(
            self.listener.policy.http,
            self.listener.factory.phases,
            self._stream.body_mode(hp.Side.REQUEST),
            self._stream.body_mode(hp.Side.RESPONSE),
        )

    def _unchanged(self, event: hp.HttpEvent) -> hp.ProcessingResponse:
        if (
            isinstance(event, hp.BodyEvent)
            and self._stream.body_mode(event.side) is hp.BodyMode.FULL_DUPLEX_STREAMED
        ):
            return self._stream.stream_body(event.side, event.body, end_of_stream=event.end_of_stream)
        return self._stream.respond(event, hp.Continue())

    async def _fail(
        self, event: hp.HttpEvent, fault: PluginFault, silent: bool
    ) -> hp.ProcessingResponse | None:
        mode = self.listener.policy.failure_mode
        self._report(fault, mode.value)
        # The sandbox is done either way: release it now, not at end of stream.
        await self.aclose()
        if mode is FailureMode.ALLOW or silent:
            self._state = _State.BYPASS
            return None if silent else self._unchanged(event)
        if mode is FailureMode.RESET:
            self._state = _State.RESET
            raise StreamReset(f"plugin fault ({fault.kind.value}) under failure_mode reset")
        self._state = _State.ANSWERED
        return self._stream.respond(event, hp.Immediate(self._close_status, details=FAULT_DETAILS))

    def _report(self, fault: PluginFault, consequence: str) -> None:
        self.listener.report_fault(fault, consequence, self._sandbox_id, self._metrics, "http")


def _header_ops(mutation: HeaderMutation) -> list[hp.HeaderOp]:
    """The plugin's header mutation as ops in the order the WIT says: remove, set, append."""
    return [
        *(hp.HeaderOp.remove(name) for name in mutation.remove),
        *(hp.HeaderOp.set(h.name, h.value) for h in mutation.set),
        *(hp.HeaderOp.append(h.name, h.value) for h in mutation.append),
    ]


def _headers(pairs: Sequence[tuple[str, bytes]]) -> list[Header]:
    return [Header(name, value) for name, value in pairs]


async def _run_hook(sandbox: HttpRunner, event: hp.HttpEvent, attributes: Mapping[str, str]) -> HttpDecision:
    """The plugin's decision on one message (a body over MAX_EVENT_BYTES in pieces)."""
    attrs = sorted(attributes.items())
    if isinstance(event, hp.HeadersEvent):
        hook = sandbox.request_headers if event.side is hp.Side.REQUEST else sandbox.response_headers
        return await hook(_headers(event.headers), attrs, event.end_of_stream)
    if isinstance(event, hp.TrailersEvent):
        trailers = sandbox.request_trailers if event.side is hp.Side.REQUEST else sandbox.response_trailers
        return await trailers(_headers(event.trailers))
    body = sandbox.request_body if event.side is hp.Side.REQUEST else sandbox.response_body
    decision = await _body_decision(body, event)
    size = len(decision.body) if decision.body is not None else 0
    if decision.kind is DecisionKind.MODIFY and size > max(MAX_OUTPUT_BYTES, len(event.body)):
        raise PluginFault(
            FaultKind.ABI, f"{HTTP_HOOKS[_PHASES[(event.side, event.kind)]]}: {output_too_large(size)}"
        )
    return decision


async def _body_decision(
    hook: Callable[[bytes, bool], Awaitable[HttpDecision]], event: hp.BodyEvent
) -> HttpDecision:
    """Pieces' decisions combine: the first respond wins; otherwise the outputs are concatenated
    and the header changes merged so that a later piece's change wins over an earlier one's
    (a remove or set of a name drops the earlier sets and appends of that name)."""
    data = event.body
    if len(data) <= MAX_EVENT_BYTES:
        return await hook(data, event.end_of_stream)
    outputs: list[bytes] = []
    metadata: dict[str, str] = {}
    sets: list[Header] = []
    appends: list[Header] = []
    removes: list[str] = []
    changed = False
    total, limit = 0, max(MAX_OUTPUT_BYTES, len(data))
    for start in range(0, len(data), MAX_EVENT_BYTES):
        piece = data[start : start + MAX_EVENT_BYTES]
        last = start + MAX_EVENT_BYTES >= len(data)
        decision = await hook(piece, event.end_of_stream and last)
        metadata.update(decision.metadata)
        if len(metadata) > MAX_METADATA_ENTRIES:
            raise PluginFault(FaultKind.ABI, f"more than {MAX_METADATA_ENTRIES} metadata keys in one reply")
        if decision.kind is DecisionKind.RESPOND:
            return decision.with_metadata(metadata)
        if decision.kind is DecisionKind.MODIFY:
            later = decision.headers
            replaced = {n.lower() for n in later.remove} | {h.name.lower() for h in later.set}
            sets = [h for h in sets if h.name.lower() not in replaced] + list(later.set)
            appends = [h for h in appends if h.name.lower() not in replaced] + list(later.append)
            removes += later.remove
            if decision.body is not None:
                changed = True
                outputs.append(decision.body)
                total += len(decision.body)
                if total > limit:  # refused as it grows, not after holding it all
                    raise PluginFault(
                        FaultKind.ABI,
                        f"{HTTP_HOOKS[_PHASES[(event.side, event.kind)]]}: {output_too_large(total)}",
                    )
                continue
        outputs.append(piece)
        total += len(piece)
    mutation = HeaderMutation(tuple(sets), tuple(appends), tuple(removes))
    if not changed and not mutation:
        return HttpDecision(DecisionKind.CONTINUE).with_metadata(metadata)
    body = b"".join(outputs) if changed else None
    return HttpDecision(DecisionKind.MODIFY, headers=mutation, body=body).with_metadata(metadata)
