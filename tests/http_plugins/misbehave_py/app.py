"""misbehave_py: a componentize-py http-filter test plugin written against the raw
bindings, so that it can return what the SDK never would.

Config `mode=M` chooses what on-request-headers does:
  ok      continue            body    a body replacement (contract violation)
  status  respond 99          many    1025 headers set   bytes   300 KiB of header values
  huge    respond with a body of 8 MiB + 1                loop    spins forever
  grow    allocates until it fails                         raise   raises ValueError
  meta    metadata.set("mode", "meta") (grant metadata), then continue
on-request-body echoes the chunk (a modify with the same bytes); on-response-body
replaces the chunk with its reverse. Every other hook continues.
"""

from wit_world import WitWorld as _Base
from wit_world.imports import http_types as ht
from wit_world.imports import metadata

_mode = "ok"
_NO_CHANGES = ht.HeaderMutation([], [], [])


def _set(headers: list) -> ht.Decision:
    return ht.Decision_Modify(ht.Changes(ht.HeaderMutation(headers, [], []), None))


class WitWorld(_Base):
    def wanted_phases(self) -> ht.Phases:
        p = ht.Phases
        return p.REQUEST_HEADERS | p.REQUEST_BODY | p.RESPONSE_BODY

    def on_open(self, listener: str, config: str) -> None:
        global _mode
        _mode = config.removeprefix("mode=") or "ok"

    def on_request_headers(self, headers, attributes, end_of_stream) -> ht.Decision:
        if _mode == "body":
            return ht.Decision_Modify(ht.Changes(_NO_CHANGES, b"x"))
        if _mode == "status":
            return ht.Decision_Respond(ht.ImmediateResponse(99, [], b""))
        if _mode == "many":
            return _set([ht.Header(f"x-{i}", b"v") for i in range(1025)])
        if _mode == "bytes":
            return _set([ht.Header(f"x-{i}", b"v" * 100 * 1024) for i in range(3)])
        if _mode == "huge":
            return ht.Decision_Respond(ht.ImmediateResponse(200, [], b"x" * (8 * 1024 * 1024 + 1)))
        if _mode == "loop":
            while True:
                pass
        if _mode == "grow":
            hoard = []
            while True:
                hoard.append(bytearray(1024 * 1024))
        if _mode == "raise":
            raise ValueError("misbehave: raise")
        if _mode == "meta":
            metadata.set("mode", "meta")
        return ht.Decision_Continue()

    def on_request_body(self, body, end_of_stream) -> ht.Decision:
        return ht.Decision_Modify(ht.Changes(_NO_CHANGES, bytes(body)))

    def on_request_trailers(self, trailers) -> ht.Decision:
        return ht.Decision_Continue()

    def on_response_headers(self, headers, attributes, end_of_stream) -> ht.Decision:
        return ht.Decision_Continue()

    def on_response_body(self, body, end_of_stream) -> ht.Decision:
        return ht.Decision_Modify(ht.Changes(_NO_CHANGES, bytes(body)[::-1]))

    def on_response_trailers(self, trailers) -> ht.Decision:
        return ht.Decision_Continue()

    def on_close(self) -> None:
        pass
