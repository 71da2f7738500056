"""The gRPC servicer for Envoy's network ext_proc: one stream per downstream connection.

Thin on purpose: it picks the listener from the stream's invocation metadata,
then feeds each request to a Session in order and writes each reply back.

How a stream ends matters to Envoy (shared/notes/envoy-ext-proc.md): ending it
with OK while the connection is alive makes Envoy fail open. So the stream
ends OK only after Envoy half-closed its side (the connection is over);
anything going wrong on our side aborts with a non-OK status, which Envoy turns
into a closed connection (failure_mode_allow: false).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

import grpc
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2_grpc as pb_grpc

from extproc import tcp_protocol
from extproc.config import LISTENER_METADATA_KEY
from extproc.listener import Listener
from extproc.session import Session
from vmm.capabilities import MAX_METADATA_BYTES, MAX_METADATA_ENTRIES, DatagramSender
from vmm.contract import MAX_OUTPUT_BYTES
from vmm.metrics import METRICS, Metrics

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "MAX_MESSAGE_BYTES",
    "SERVICE_NAME",
    "NetworkProcessor",
    "StreamSlots",
    "add_to_server",
    "grpc_options",
]

LOG = logging.getLogger("lightcell.service")

SERVICE_NAME = "envoy.service.network_ext_proc.v3.NetworkExternalProcessor"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Envoy hands over up to ~1 MiB per message under load; a plugin may grow it,
to at most MAX_OUTPUT_BYTES (vmm/contract.py; more is a plugin fault)."""
REPLY_HEADROOM_BYTES = 1024 * 1024
"""Room a reply needs besides the plugin's output: protobuf framing and the
dynamic metadata (at most MAX_METADATA_ENTRIES entries of MAX_METADATA_BYTES)."""
if MAX_OUTPUT_BYTES + REPLY_HEADROOM_BYTES > MAX_MESSAGE_BYTES or (
    MAX_METADATA_ENTRIES * MAX_METADATA_BYTES * 2 > REPLY_HEADROOM_BYTES
):  # pragma: no cover - a broken constant, caught at import
    raise ImportError("a reply with MAX_OUTPUT_BYTES of output would not fit MAX_MESSAGE_BYTES")
DEFAULT_MAX_CONNECTIONS = 4096
"""Concurrent streams (= connections, each with a sandbox) served at once. Past
it a new stream is aborted RESOURCE_EXHAUSTED: Envoy closes that connection
(fail closed) instead of Lightcell holding a sandbox per open connection."""


def grpc_options() -> list[tuple[str, int]]:
    """Server options every Lightcell gRPC server needs."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


class StreamSlots:
    """The streams being served now, each holding (or about to hold) a sandbox: one count for
    the network and the HTTP service of one server, so --max-connections bounds both together."""

    def __init__(self, limit: int = DEFAULT_MAX_CONNECTIONS) -> None:
        if limit < 1:
            raise ValueError(f"max_connections must be at least 1, not {limit}")
        self.limit = limit
        self.active = 0

    @property
    def full(self) -> bool:
        return self.active >= self.limit


class NetworkProcessor(pb_grpc.NetworkExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        listeners: Mapping[str, Listener],
        egress: DatagramSender | None = None,
        metrics: Metrics = METRICS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        slots: StreamSlots | None = None,
    ) -> None:
        self._slots = slots if slots is not None else StreamSlots(max_connections)
        self._listeners = listeners
        self._egress = egress
        self._metrics = metrics
        self._max_connections = self._slots.limit

    @property
    def active(self) -> int:
        """Streams being served now (each holds, or will hold, a sandbox), HTTP ones included
        when the slots are shared."""
        return self._slots.active

    async def Process(  # the gRPC method name
        self,
        request_iterator: AsyncIterator[tcp_protocol.ProcessingRequest],
        context: grpc.aio.ServicerContext[tcp_protocol.ProcessingRequest, tcp_protocol.ProcessingResponse],
    ) -> AsyncIterator[tcp_protocol.ProcessingResponse]:
        if self._slots.full:
            LOG.warning(
                "stream refused: %d connections already open (--max-connections) (peer %s)",
                self.active, context.peer(),
            )  # fmt: skip
            self._metrics.inc("streams_refused_total", reason="max_connections")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"lightcell: over {self._max_connections} concurrent connections",
            )
        self._slots.active += 1  # single event loop: no await between the check and here
        try:
            async for reply in self._serve(request_iterator, context):
                yield reply
        finally:
            self._slots.active -= 1

    async def _serve(
        self,
        request_iterator: AsyncIterator[tcp_protocol.ProcessingRequest],
        context: grpc.aio.ServicerContext[tcp_protocol.ProcessingRequest, tcp_protocol.ProcessingResponse],
    ) -> AsyncIterator[tcp_protocol.ProcessingResponse]:
        listener = await self._listener_of(context)
        session = Session(listener, self._egress, self._metrics)
        try:
            async for request in request_iterator:
                try:
                    reply = await session.handle(request)
                except tcp_protocol.ProtocolError as e:
                    LOG.error("malformed request listener=%s: %s", listener.name, e)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                yield reply
            # Envoy half-closed the stream: the connection is over, OK is safe now.
        except asyncio.CancelledError:
            # Envoy often resets the stream after its last message: not an error.
            LOG.debug("stream cancelled listener=%s", listener.name)
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            LOG.exception("internal error listener=%s", listener.name)
            self._metrics.inc("internal_errors_total", listener=listener.name)
            await context.abort(grpc.StatusCode.INTERNAL, f"lightcell internal error: {type(e).__name__}")
        finally:
            # Shielded: a second cancellation must not leave the sandbox half-released.
            await asyncio.shield(session.aclose())

    async def _listener_of(self, context: grpc.aio.ServicerContext[object, object]) -> Listener:
        name = None
        for key, value in context.invocation_metadata() or ():
            if key == LISTENER_METADATA_KEY:
                name = value if isinstance(value, str) else value.decode(errors="replace")
                break
        if name is None:
            LOG.warning("stream refused: no %s metadata (peer %s)", LISTENER_METADATA_KEY, context.peer())
            self._metrics.inc("streams_refused_total", reason="no_listener")
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"missing {LISTENER_METADATA_KEY} metadata"
            )
        listener = self._listeners.get(name)  # type: ignore[arg-type]
        if listener is None:
            LOG.warning("stream refused: unknown listener %r (peer %s)", name, context.peer())
            self._metrics.inc("streams_refused_total", reason="unknown_listener")
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown listener {name!r}")
        assert listener is not None  # abort() raised
        return listener


def add_to_server(processor: NetworkProcessor, server: grpc.aio.Server) -> None:
    pb_grpc.add_NetworkExternalProcessorServicer_to_server(processor, server)
