"""The gRPC servicer for Envoy's HTTP ext_proc: one stream per HTTP request.

`envoy.service.ext_proc.v3.ExternalProcessor/Process`, on the same server (and
socket) as the network service. The stream names its policy like a TCP one:
`x-lightcell-listener` (the filter's `grpc_service.initial_metadata`) picks
the HTTP listener, and `x-lightcell-route` (added by a route's
`ExtProcPerRoute.overrides.grpc_initial_metadata`) the route policy
"<listener>/<route>". A missing or unknown name is refused with a non-OK
status, which Envoy (failure_mode_allow false) turns into an error response.

How a stream ends matters (shared/notes/envoy-ext-proc.md): ending it with OK
lets the rest of the request through untouched. So, as for TCP, the stream
ends OK only after Envoy half-closed its side; anything going wrong here
aborts with a non-OK status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, TypeAlias

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc import http_protocol
from extproc.config import LISTENER_METADATA_KEY, ROUTE_METADATA_KEY, route_key
from extproc.http_session import DEFAULT_CLOSE_STATUS, HttpSession, StreamReset
from extproc.listener import HttpListener
from extproc.tcp_service import StreamSlots
from vmm.capabilities import DatagramSender
from vmm.metrics import METRICS, Metrics

__all__ = ["SERVICE_NAME", "HttpProcessor", "add_to_server"]

LOG = logging.getLogger("lightcell.http_service")

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[
        http_protocol.ProcessingRequest, http_protocol.ProcessingResponse
    ]


class HttpProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        listeners: Mapping[str, HttpListener],
        routes: Mapping[str, HttpListener],
        egress: DatagramSender | None = None,
        metrics: Metrics = METRICS,
        slots: StreamSlots | None = None,
        close_status: int = DEFAULT_CLOSE_STATUS,
    ) -> None:
        self._listeners = listeners
        self._routes = routes
        self._egress = egress
        self._metrics = metrics
        self._slots = slots if slots is not None else StreamSlots()
        self._close_status = close_status

    @property
    def active(self) -> int:
        return self._slots.active

    async def Process(  # the gRPC method name
        self,
        request_iterator: AsyncIterator[http_protocol.ProcessingRequest],
        context: Context,
    ) -> AsyncIterator[http_protocol.ProcessingResponse]:
        if self._slots.full:
            LOG.warning(
                "HTTP stream refused: %d streams already open (--max-connections) (peer %s)",
                self._slots.active, context.peer(),
            )  # fmt: skip
            self._metrics.inc("streams_refused_total", reason="max_connections", protocol="http")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"lightcell: over {self._slots.limit} concurrent streams",
            )
        self._slots.active += 1  # single event loop: no await between the check and here
        try:
            async for reply in self._serve(request_iterator, context):
                yield reply
        finally:
            self._slots.active -= 1

    async def _serve(
        self,
        request_iterator: AsyncIterator[http_protocol.ProcessingRequest],
        context: Context,
    ) -> AsyncIterator[http_protocol.ProcessingResponse]:
        target = await self._policy_of(context)
        session = HttpSession(target, self._egress, self._metrics, close_status=self._close_status)
        try:
            async for request in request_iterator:
                try:
                    reply = await session.handle(request)
                except http_protocol.ProtocolError as e:
                    LOG.error("malformed HTTP request policy=%s: %s", target.name, e)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                except StreamReset as e:
                    await context.abort(grpc.StatusCode.ABORTED, f"lightcell: {e}")
                if reply is not None:
                    yield reply
            # Envoy half-closed the stream: the request is over, OK is safe now.
        except asyncio.CancelledError:
            # Envoy often resets the stream after its last message: not an error.
            LOG.debug("HTTP stream cancelled policy=%s", target.name)
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            LOG.exception("internal error policy=%s", target.name)
            self._metrics.inc("internal_errors_total", listener=target.name, protocol="http")
            await context.abort(grpc.StatusCode.INTERNAL, f"lightcell internal error: {type(e).__name__}")
        finally:
            # Shielded: a second cancellation must not leave the sandbox half-released.
            await asyncio.shield(session.aclose())

    async def _policy_of(self, context: Context) -> HttpListener:
        found: dict[str, str] = {}
        for key, value in context.invocation_metadata() or ():
            if key in (LISTENER_METADATA_KEY, ROUTE_METADATA_KEY) and key not in found:
                found[key] = value if isinstance(value, str) else value.decode(errors="replace")
        name = found.get(LISTENER_METADATA_KEY)
        if name is None:
            LOG.warning(
                "HTTP stream refused: no %s metadata (peer %s)", LISTENER_METADATA_KEY, context.peer()
            )
            self._metrics.inc("streams_refused_total", reason="no_listener", protocol="http")
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"missing {LISTENER_METADATA_KEY} metadata"
            )
        assert name is not None  # abort() raised
        listener = self._listeners.get(name)
        if listener is None:
            LOG.warning("HTTP stream refused: unknown HTTP listener %r (peer %s)", name, context.peer())
            self._metrics.inc("streams_refused_total", reason="unknown_listener", protocol="http")
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown HTTP listener {name!r}")
        assert listener is not None
        route = found.get(ROUTE_METADATA_KEY)
        if route is None:
            return listener
        policy = self._routes.get(route_key(name, route))
        if policy is None:
            LOG.warning(
                "HTTP stream refused: listener %r has no route policy %r (peer %s)",
                name,
                route,
                context.peer(),
            )
            self._metrics.inc("streams_refused_total", reason="unknown_route", protocol="http")
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown route policy {route_key(name, route)!r}")
        assert policy is not None
        return policy


def add_to_server(processor: HttpProcessor, server: grpc.aio.Server) -> None:
    pb_grpc.add_ExternalProcessorServicer_to_server(processor, server)
