"""What every ext_proc servicer does at a stream's edge, whatever the protocol.

- StreamSlots: one count of the streams being served (each holds or will hold a
  sandbox), shared by the network and the HTTP service, so --max-connections
  bounds both together; `admitted` refuses a stream past it.
- `refuse`: log, count and abort a stream with a non-OK status.
- `serve_requests`: feed each request to a session and yield its replies, and
  end the stream as Envoy needs it (shared/notes/envoy-ext-proc.md): OK only
  after Envoy half-closed it; a malformed request, a session's StreamAbort or
  an internal error ends it non-OK; the session is always released, shielded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError

from extproc.tcp_protocol import ProtocolError
from vmm.metrics import Metrics

__all__ = ["DEFAULT_MAX_CONNECTIONS", "StreamAbort", "StreamSlots", "refuse", "serve_requests"]

LOG = logging.getLogger("lightcell.service")

DEFAULT_MAX_CONNECTIONS = 4096
"""Concurrent streams (= connections or HTTP requests, each with a sandbox) served at
once. Past it a new stream is aborted RESOURCE_EXHAUSTED: Envoy closes that connection
(fail closed) instead of Lightcell holding a sandbox per open stream."""

Request = TypeVar("Request")
Reply = TypeVar("Reply")
if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class StreamAbort(Exception):
    """End the stream now with `code` (never OK) and `details`."""

    code = grpc.StatusCode.ABORTED

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


class StreamSlots:
    """The streams being served now, one count for every service of one server."""

    def __init__(self, limit: int = DEFAULT_MAX_CONNECTIONS) -> None:
        if limit < 1:
            raise ValueError(f"max_connections must be at least 1, not {limit}")
        self.limit = limit
        self.active = 0

    @property
    def full(self) -> bool:
        return self.active >= self.limit

    @contextlib.asynccontextmanager
    async def admitted(
        self, context: Context, metrics: Metrics, what: str, labels: Mapping[str, str]
    ) -> AsyncIterator[None]:
        """Hold a slot for the block, or refuse the stream RESOURCE_EXHAUSTED."""
        if self.full:
            await refuse(
                context, metrics, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_connections",
                f"lightcell: over {self.limit} concurrent {what}",
                f"{self.active} {what} already open (--max-connections)", labels,
            )  # fmt: skip
        self.active += 1  # single event loop: no await between the check and here
        try:
            yield
        finally:
            self.active -= 1



async def refuse(
    context: Context,
    metrics: Metrics,
    code: grpc.StatusCode,
    reason: str,
    details: str,
    why: str,
    labels: Mapping[str, str],
) -> NoReturn:
    """Log and count a refused stream (streams_refused_total{reason}), then abort it."""
    extra = {"reason": reason, "protocol": labels.get("protocol", "tcp")}
    LOG.warning("stream refused: %s (peer %s)", why, context.peer(), extra=extra)
    metrics.inc("streams_refused_total", 1, reason=reason, **labels)
    await context.abort(code, details)
    raise AssertionError("abort() returns only by raising")  # pragma: no cover


async def serve_requests(
    requests: AsyncIterator[Request],
    context: Context,
    handle: Callable[[Request], Awaitable[Reply | None]],
    release: Callable[[], Awaitable[None]],
    *,
    name: str,
    metrics: Metrics,
    labels: Mapping[str, str],
) -> AsyncGenerator[Reply, None]:
    """One stream's replies, in order (a None reply is not sent: observability mode)."""
    try:
        async for request in requests:
            try:
                reply = await handle(request)
            except ProtocolError as e:  # the HTTP adapter's subclasses it
                LOG.error("malformed request policy=%s: %s", name, e)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except StreamAbort as e:
                await context.abort(e.code, f"lightcell: {e.details}")
            if reply is not None:
                yield reply
        # Envoy half-closed the stream: the connection or request is over, OK is safe now.
    except asyncio.CancelledError:
        # Envoy often resets the stream after its last message: not an error.
        LOG.debug("stream cancelled policy=%s", name)
        raise
    except grpc.aio.AbortError:
        raise
    except DecodeError as e:  # grpc could not parse a request (found by tests/test_fuzz_servicers.py)
        LOG.error("undecodable request policy=%s: %s", name, e)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable request: {e}")
    except Exception as e:
        LOG.exception("internal error policy=%s", name, extra={"listener": name, **labels})
        metrics.inc("internal_errors_total", 1, listener=name, **labels)
        await context.abort(grpc.StatusCode.INTERNAL, f"lightcell internal error: {type(e).__name__}")
    finally:
        # Shielded: a second cancellation must not leave the sandbox half-released.
        await asyncio.shield(release())
