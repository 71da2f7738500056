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

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

import grpc
from envoy.service.network_ext_proc.v3 import network_external_processor_pb2_grpc as pb_grpc

from extproc import tcp_protocol
from extproc.config import LISTENER_METADATA_KEY
from extproc.listener import Listener
from extproc.policy_table import as_table
from extproc.session import Session
from extproc.stream_edge import DEFAULT_MAX_CONNECTIONS, StreamSlots, refuse, serve_requests
from vmm.capabilities import MAX_METADATA_BYTES, MAX_METADATA_ENTRIES, DatagramSender
from vmm.contract import MAX_OUTPUT_BYTES
from vmm.metrics import METRICS, Metrics

__all__ = [
    "MAX_MESSAGE_BYTES",
    "SERVICE_NAME",
    "NetworkProcessor",
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


def grpc_options() -> list[tuple[str, int]]:
    """Server options every Lightcell gRPC server needs."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


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
        self._listeners = as_table(listeners)  # what a reload swaps
        self._egress = egress
        self._metrics = metrics

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
        async with self._slots.admitted(context, self._metrics, "connections", {}):
            listener = await self._listener_of(context)
            # The connection keeps this plugin until its sandbox is released, whatever a reload does.
            with self._listeners.lease(listener) as lease:
                session = Session(listener, self._egress, self._metrics)
                replies = serve_requests(
                    request_iterator, context, session.handle, lease.after(session.aclose),
                    name=listener.name, metrics=self._metrics, labels={},
                )  # fmt: skip
                active = {"listener": listener.name, "tier": listener.tier.tier.value}
                with self._metrics.active("connections_active", **active):
                    async with contextlib.aclosing(replies):
                        async for reply in replies:
                            yield reply

    async def _listener_of(self, context: grpc.aio.ServicerContext[object, object]) -> Listener:
        name = next(
            (v if isinstance(v, str) else v.decode(errors="replace")
             for k, v in context.invocation_metadata() or () if k == LISTENER_METADATA_KEY),
            None,
        )  # fmt: skip
        if name is None:
            await refuse(
                context, self._metrics, grpc.StatusCode.PERMISSION_DENIED, "no_listener",
                f"missing {LISTENER_METADATA_KEY} metadata", f"no {LISTENER_METADATA_KEY} metadata", {},
            )  # fmt: skip
        listener = self._listeners.get(name)
        if listener is None:
            await refuse(
                context, self._metrics, grpc.StatusCode.NOT_FOUND, "unknown_listener",
                f"unknown listener {name!r}", f"unknown listener {name!r}", {},
            )  # fmt: skip
        return listener


def add_to_server(processor: NetworkProcessor, server: grpc.aio.Server) -> None:
    pb_grpc.add_NetworkExternalProcessorServicer_to_server(processor, server)
