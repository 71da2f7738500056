"""The Filter base class: override the hooks you need; the phases the host
asks Envoy for are exactly those (see Filter.phases)."""

from __future__ import annotations

from collections.abc import Mapping

from lightcell_sdk._types import Continue, Decision, Headers

__all__ = ["HOOKS", "Filter"]

HOOKS = (
    "on_request_headers",
    "on_request_body",
    "on_request_trailers",
    "on_response_headers",
    "on_response_body",
    "on_response_trailers",
)
"""The hooks, in the order of the WIT `phases` flags."""


class Filter:
    """One HTTP request's filter. A fresh instance of the subclass serves each
    request (the host makes a fresh sandbox per request, so nothing, module
    globals included, outlives it; kv is the only shared state).

    Call order: `on_open` once, the overridden hooks in the order Envoy
    delivers them, `on_close` once (not after a fault). An exception in any
    method is a trap: the request gets the listener's failure mode.
    """

    listener: str = ""
    config: str = ""

    @classmethod
    def phases(cls) -> tuple[str, ...]:
        """The hooks this class overrides: what `wanted-phases` reports (a constant,
        read once at load, as the contract requires)."""
        return tuple(h for h in HOOKS if getattr(cls, h) is not getattr(Filter, h))

    def on_open(self, listener: str, config: str) -> None:
        """Before the first hook; `config` is the policy's config string. The
        default keeps both in `self.listener` / `self.config`."""
        self.listener, self.config = listener, config

    def on_request_headers(
        self, headers: Headers, attributes: Mapping[str, str], end_of_stream: bool
    ) -> Decision:
        """The request headers; `attributes`: what Envoy sent with them
        (`request.path`, `source.address`, ...), as text."""
        return Continue()

    def on_request_body(self, body: bytes, end_of_stream: bool) -> Decision:
        """One chunk of the request body (the whole body in BUFFERED mode)."""
        return Continue()

    def on_request_trailers(self, trailers: Headers) -> Decision:
        return Continue()

    def on_response_headers(
        self, headers: Headers, attributes: Mapping[str, str], end_of_stream: bool
    ) -> Decision:
        """The response headers (`:status` included)."""
        return Continue()

    def on_response_body(self, body: bytes, end_of_stream: bool) -> Decision:
        return Continue()

    def on_response_trailers(self, trailers: Headers) -> Decision:
        return Continue()

    def on_close(self) -> None:
        """Once, when the request ends, whatever the reason (not after a fault)."""
