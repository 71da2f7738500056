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

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, TypeAlias

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc import http_protocol
from extproc.config import LISTENER_METADATA_KEY, ROUTE_METADATA_KEY, route_key
from extproc.http_session import HttpSession
from extproc.listener import HttpListener
from extproc.policy_table import as_table
from extproc.stream_edge import StreamSlots, refuse, serve_requests
from vmm.capabilities import DatagramSender
from vmm.metrics import METRICS, Metrics

__all__ = ["SERVICE_NAME", "HttpProcessor", "add_to_server"]

LOG = logging.getLogger("lightcell.http_service")

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"
_HTTP = {"protocol": "http"}  # label on the metrics the network service shares

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
    ) -> None:
        self._listeners = as_table(listeners)  # what a reload swaps
        self._routes = as_table(routes)
        self._egress = egress
        self._metrics = metrics
        self._slots = slots if slots is not None else StreamSlots()

    @property
    def active(self) -> int:
        return self._slots.active

    async def Process(  # the gRPC method name
        self,
        request_iterator: AsyncIterator[http_protocol.ProcessingRequest],
        context: Context,
    ) -> AsyncIterator[http_protocol.ProcessingResponse]:
        async with self._slots.admitted(context, self._metrics, "streams", _HTTP):
            target = await self._policy_of(context)
            # The request keeps this plugin until its sandbox is released, whatever a reload does.
            # Route policies are named "<listener>/<route>"; an HTTP listener's name has no '/'.
            table = self._routes if "/" in target.name else self._listeners
            with table.lease(target) as lease:
                session = HttpSession(target, self._egress, self._metrics)
                replies = serve_requests(
                    request_iterator, context, session.handle, lease.after(session.aclose),
                    name=target.name, metrics=self._metrics, labels=_HTTP,
                )  # fmt: skip
                active = {"listener": target.name, "tier": target.tier.tier.value}
                with self._metrics.active("http_requests_active", **active):
                    async with contextlib.aclosing(replies):
                        async for reply in replies:
                            yield reply

    async def _policy_of(self, context: Context) -> HttpListener:
        found: dict[str, str] = {}
        for key, value in context.invocation_metadata() or ():
            if key in (LISTENER_METADATA_KEY, ROUTE_METADATA_KEY) and key not in found:
                found[key] = value if isinstance(value, str) else value.decode(errors="replace")
        name = found.get(LISTENER_METADATA_KEY)
        if name is None:
            await refuse(
                context, self._metrics, grpc.StatusCode.PERMISSION_DENIED, "no_listener",
                f"missing {LISTENER_METADATA_KEY} metadata", f"no {LISTENER_METADATA_KEY} metadata", _HTTP,
            )  # fmt: skip
        listener = self._listeners.get(name)
        if listener is None:
            await refuse(
                context, self._metrics, grpc.StatusCode.NOT_FOUND, "unknown_listener",
                f"unknown HTTP listener {name!r}", f"unknown HTTP listener {name!r}", _HTTP,
            )  # fmt: skip
        route = found.get(ROUTE_METADATA_KEY)
        if route is None:
            return listener
        key = route_key(name, route)
        policy = self._routes.get(key)
        if policy is None:
            await refuse(
                context, self._metrics, grpc.StatusCode.NOT_FOUND, "unknown_route",
                f"unknown route policy {key!r}", f"listener {name!r} has no route policy {route!r}", _HTTP,
            )  # fmt: skip
        return policy


def add_to_server(processor: HttpProcessor, server: grpc.aio.Server) -> None:
    pb_grpc.add_ExternalProcessorServicer_to_server(processor, server)
