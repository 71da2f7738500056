"""counter: a Python plugin (componentize-py) with per-connection state and kv.

on-open:  n = kv.increment("connections", 1)  (needs grant `kv`)
on-data:  each non-empty write-direction chunk becomes "[conn N chunk I] " + data,
          I counting those chunks from 1 in this connection; everything else passes.

State lives in module globals: componentize-py makes a fresh `WitWorld()` for
every exported call, and one component instance serves exactly one connection.
The `wit_world` bindings are generated at build time by plugins/build.py
(componentize-py ... bindings), never committed.
"""

from wit_world import WitWorld as _WitWorld  # type: ignore[import-not-found]
from wit_world.imports import kv, types  # type: ignore[import-not-found]

_conn = 0
_chunks = 0


class WitWorld(_WitWorld):  # type: ignore[misc]
    def on_open(self, listener: str, config: str) -> None:
        global _conn, _chunks
        _conn = kv.increment("connections", 1)
        _chunks = 0

    def on_data(self, direction: types.Direction, data: bytes, end_of_stream: bool) -> types.Verdict:
        global _chunks
        if direction != types.Direction.WRITE or not data:
            return types.Verdict_Pass()
        _chunks += 1
        return types.Verdict_Replace(f"[conn {_conn} chunk {_chunks}] ".encode() + bytes(data))

    def on_close(self) -> None:
        pass
