"""One downstream connection: its listener's policy, failure mode and one sandbox.

Envoy 1.40's network ext_proc has no "new connection" event, so the sandbox is
created (and its open hook run) when the first message arrives; that message
also carries the connection's attributes (the filter's `connection_attributes`),
which the sandbox's capabilities hold for the `connection` import. Every message
gets exactly one reply, in order. Once the connection is condemned (a close or
reset verdict, or a fault under failure mode close/reset) every later message
is answered with the same CLOSE / CLOSE_RST and no bytes, so nothing more
reaches either side even if Envoy still has data in flight.
"""

from __future__ import annotations

import enum
import logging

from extproc import tcp_protocol
from extproc.listener import FailureMode, Listener
from vmm.capabilities import MAX_METADATA_ENTRIES, DatagramSender
from vmm.contract import (
    MAX_EVENT_BYTES,
    MAX_OUTPUT_BYTES,
    DataEvent,
    Verdict,
    VerdictKind,
    output_too_large,
)
from vmm.metrics import METRICS, Metrics
from vmm.sandbox import FaultKind, PluginFault, Sandbox

__all__ = ["Session"]

LOG = logging.getLogger("lightcell.session")


class _State(enum.Enum):
    FILTERING = "filtering"  # the plugin sees every chunk
    BYPASS = "bypass"  # the plugin faulted under failure mode allow: pass through
    CLOSED = "closed"  # condemned: CLOSE to everything
    RESET = "reset"  # condemned: CLOSE_RST to everything


class Session:
    """Turns one connection's ProcessingRequests into ProcessingResponses.

    Not re-entrant: the caller hands in one request at a time, in stream order.
    """

    def __init__(
        self, listener: Listener, egress: DatagramSender | None = None, metrics: Metrics = METRICS
    ) -> None:
        self.listener = listener
        self._egress = egress
        self._metrics = metrics
        self._state = _State.FILTERING
        self._sandbox: Sandbox | None = None
        self._sandbox_id = "-"
        self._started = False

    @property
    def state(self) -> str:
        return self._state.value

    async def handle(self, request: tcp_protocol.ProcessingRequest) -> tcp_protocol.ProcessingResponse:
        """The reply to one request. Raises tcp_protocol.ProtocolError for a malformed request."""
        event = tcp_protocol.event_of(request)
        if self._state is _State.CLOSED or self._state is _State.RESET:
            return tcp_protocol.close(reset=self._state is _State.RESET)
        if self._state is _State.BYPASS:
            return tcp_protocol.forward(event)
        try:
            sandbox = await self._ensure_sandbox(request)
            verdict = await _run_plugin(sandbox, event)
        except PluginFault as fault:
            return await self._fail(event, fault)
        metadata = verdict.metadata
        if verdict.kind is VerdictKind.CLOSE or verdict.kind is VerdictKind.RESET:
            reset = verdict.kind is VerdictKind.RESET
            self._state = _State.RESET if reset else _State.CLOSED
            self._metrics.inc(
                "plugin_verdict_close_total", listener=self.listener.name, reset=str(reset).lower()
            )
            return tcp_protocol.close(reset=reset, metadata=metadata)
        return tcp_protocol.forward(event, verdict, metadata)

    async def aclose(self) -> None:
        """Run the plugin's close hook (if it is still healthy) and release the sandbox."""
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            fault = await sandbox.close()
            if fault is not None:  # the connection is over: nothing more to decide
                self._report(fault, "none (connection ending)")

    async def _ensure_sandbox(self, request: tcp_protocol.ProcessingRequest) -> Sandbox:
        if self._sandbox is not None:
            return self._sandbox
        if self._started:
            # A fault under failure mode allow/close/reset moves the state on,
            # so only a bug could bring us back here.
            raise RuntimeError("session sandbox already released")
        attributes = tcp_protocol.attributes_of(request)  # only the first message has them
        self._started = True
        policy = self.listener.policy
        self._metrics.inc("connections_total", listener=policy.name, tier=self.listener.tier.tier.value)
        host = self.listener.host_for(self._egress, self._metrics)
        host.attributes = attributes
        sandbox = await self.listener.factory.new_sandbox(host)
        self._sandbox = sandbox
        self._sandbox_id = sandbox.identity
        await sandbox.open(policy.name, policy.spec.plugin_config)
        return sandbox

    async def _fail(self, event: DataEvent, fault: PluginFault) -> tcp_protocol.ProcessingResponse:
        mode = self.listener.policy.failure_mode
        self._report(fault, mode.value)
        # The sandbox is done either way: release it now, not at end of stream.
        await self.aclose()
        if mode is FailureMode.ALLOW:
            self._state = _State.BYPASS
            return tcp_protocol.forward(event)
        self._state = _State.RESET if mode is FailureMode.RESET else _State.CLOSED
        return tcp_protocol.close(reset=mode is FailureMode.RESET)

    def _report(self, fault: PluginFault, consequence: str) -> None:
        self.listener.report_fault(fault, consequence, self._sandbox_id, self._metrics, None)


async def _run_plugin(sandbox: Sandbox, event: DataEvent) -> Verdict:
    """The plugin's verdict on one chunk; chunks over MAX_EVENT_BYTES go in pieces.

    The pieces' verdicts combine: the first close/reset wins (nothing of the
    chunk is forwarded then), otherwise the outputs are concatenated. A
    replacement over MAX_OUTPUT_BYTES is a plugin fault, so that the reply
    fits a gRPC message: every tier refuses one event's excess before copying
    it; this also guards the joined output of a message in pieces (which may
    still be as large as the message itself, which did fit).
    """
    verdict = await _combined_verdict(sandbox, event)
    size = len(verdict.data)
    if verdict.kind is VerdictKind.REPLACE and size > max(MAX_OUTPUT_BYTES, len(event.data)):
        raise PluginFault(FaultKind.ABI, f"on-data: {output_too_large(size)}")
    return verdict


async def _combined_verdict(sandbox: Sandbox, event: DataEvent) -> Verdict:
    data = event.data
    if len(data) <= MAX_EVENT_BYTES:
        return await sandbox.on_data(event)
    outputs: list[bytes] = []
    metadata: dict[str, str] = {}
    changed = False
    for start in range(0, len(data), MAX_EVENT_BYTES):
        piece = data[start : start + MAX_EVENT_BYTES]
        last = start + MAX_EVENT_BYTES >= len(data)
        verdict = await sandbox.on_data(DataEvent(event.direction, piece, event.end_of_stream and last))
        metadata.update(verdict.metadata)
        if len(metadata) > MAX_METADATA_ENTRIES:  # the per-reply cap holds for a chunk in pieces too
            too_many = f"on-data: more than {MAX_METADATA_ENTRIES} metadata keys in one reply"
            raise PluginFault(FaultKind.ABI, too_many)
        if verdict.kind is VerdictKind.CLOSE or verdict.kind is VerdictKind.RESET:
            return Verdict(verdict.kind).with_metadata(metadata)
        changed = changed or verdict.kind is VerdictKind.REPLACE
        outputs.append(verdict.output(piece))
    combined = Verdict.replace(b"".join(outputs)) if changed else Verdict.pass_()
    return combined.with_metadata(metadata)
