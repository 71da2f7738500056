"""`serve`: the generated bindings' WitWorld for a Filter subclass.

componentize-py makes a new WitWorld object for every exported call, and one
component instance serves exactly one request; so the Filter object lives in
a module global, made by on-open. Conversions to and from the binding types
(wit_world.imports.http_types) happen here and nowhere else.
"""

from __future__ import annotations

from typing import Any

from lightcell_sdk._filter import HOOKS, Filter
from lightcell_sdk._types import Continue, Decision, Headers, Modify, Respond, pairs

__all__ = ["serve"]


_current: Filter | None = None


def _filter() -> Filter:
    if _current is None:
        raise RuntimeError("lightcell_sdk: a hook was called before on-open")
    return _current


def serve(cls: type[Filter]) -> type:
    """The WitWorld class componentize-py needs, for `cls`:

        WitWorld = serve(MyFilter)   # in the app module given to componentize-py
    """
    from wit_world import WitWorld as _Base
    from wit_world.imports import http_types as ht

    phases = ht.Phases(0)
    for hook in cls.phases():
        phases |= ht.Phases[hook.removeprefix("on_").upper()]

    def headers(items: list[Any]) -> Headers:
        return Headers((h.name, h.value) for h in items)

    def attributes(items: list[Any]) -> dict[str, str]:
        return {a.name: a.value for a in items}

    def out_headers(items: Any) -> list[Any]:
        return [ht.Header(name, value) for name, value in pairs(items)]

    def decision(d: Decision) -> Any:
        if isinstance(d, Continue):
            return ht.Decision_Continue()
        if isinstance(d, Modify):
            body = d.body.encode() if isinstance(d.body, str) else d.body
            remove = [name.lower() for name in d.remove]
            mutation = ht.HeaderMutation(out_headers(d.set), out_headers(d.append), remove)
            return ht.Decision_Modify(ht.Changes(mutation, None if body is None else bytes(body)))
        if isinstance(d, Respond):
            body = d.body.encode() if isinstance(d.body, str) else bytes(d.body)
            return ht.Decision_Respond(ht.ImmediateResponse(d.status, out_headers(d.headers), body))
        raise TypeError(f"a hook returned {d!r}, not Continue, Modify or Respond")

    class WitWorld(_Base):  # type: ignore[misc]
        def wanted_phases(self) -> Any:
            return phases

        def on_open(self, listener: str, config: str) -> None:
            global _current
            _current = cls()
            _current.on_open(listener, config)

        def on_request_headers(self, hs: list[Any], attrs: list[Any], end_of_stream: bool) -> Any:
            return decision(_filter().on_request_headers(headers(hs), attributes(attrs), end_of_stream))

        def on_request_body(self, body: bytes, end_of_stream: bool) -> Any:
            return decision(_filter().on_request_body(bytes(body), end_of_stream))

        def on_request_trailers(self, trailers: list[Any]) -> Any:
            return decision(_filter().on_request_trailers(headers(trailers)))

        def on_response_headers(self, hs: list[Any], attrs: list[Any], end_of_stream: bool) -> Any:
            return decision(_filter().on_response_headers(headers(hs), attributes(attrs), end_of_stream))

        def on_response_body(self, body: bytes, end_of_stream: bool) -> Any:
            return decision(_filter().on_response_body(bytes(body), end_of_stream))

        def on_response_trailers(self, trailers: list[Any]) -> Any:
            return decision(_filter().on_response_trailers(headers(trailers)))

        def on_close(self) -> None:
            _filter().on_close()

    assert all(hasattr(WitWorld, h) for h in HOOKS)
    return WitWorld
