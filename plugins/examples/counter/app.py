"""counter: a Python plugin (componentize-py) with per-connection state and kv.

on-open:  n = kv.increment("connections", 1)  (needs grant `kv`)
on-data:  each non-empty write-direction chunk becomes "[conn N chunk I] " + data,
          I counting those chunks from 1 in this connection; everything else passes.

Config `touch=WHAT` (default: nothing) makes every non-empty write chunk also use
a WASI 0.2 import first, to prove the host gates them by grant:
  clock      time.time_ns()       (wasi:clocks/wall-clock; grant `clock`)
  monotonic  time.monotonic_ns()  (wasi:clocks/monotonic-clock; grant `clock`)
  random     os.urandom(8)        (wasi:random/random; grant `random`)
The result replaces the chunk: "touch=<value>\n". Unknown WHAT: on-open raises.

State lives in module globals: componentize-py makes a fresh `WitWorld()` for
every exported call, and one component instance serves exactly one connection.
The `wit_world` bindings are generated at build time by plugins/build.py
(componentize-py ... bindings), never committed.
"""

import os
import time

from wit_world import WitWorld as _WitWorld  # type: ignore[import-not-found]
from wit_world.imports import kv, types  # type: ignore[import-not-found]

_conn = 0
_chunks = 0
_touch = ""
_TOUCHES = ("", "clock", "monotonic", "random")


def _touched() -> str:
    if _touch == "clock":
        return str(time.time_ns())
    if _touch == "monotonic":
        return str(time.monotonic_ns())
    return os.urandom(8).hex()


class WitWorld(_WitWorld):  # type: ignore[misc]
    def on_open(self, listener: str, config: str) -> None:
        global _conn, _chunks, _touch
        touch = ""
        for item in config.split(","):
            key, _, value = item.strip().partition("=")
            if key == "touch":
                touch = value
        if touch not in _TOUCHES:
            raise ValueError(f"counter: unknown touch={touch!r}")
        _touch = touch
        _conn = kv.increment("connections", 1)
        _chunks = 0

    def on_data(self, direction: types.Direction, data: bytes, end_of_stream: bool) -> types.Verdict:
        global _chunks
        if direction != types.Direction.WRITE or not data:
            return types.Verdict_Pass()
        if _touch:
            return types.Verdict_Replace(f"touch={_touched()}\n".encode())
        _chunks += 1
        return types.Verdict_Replace(f"[conn {_conn} chunk {_chunks}] ".encode() + bytes(data))

    def on_close(self) -> None:
        pass
