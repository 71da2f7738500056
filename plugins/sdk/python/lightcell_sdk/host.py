"""The host's capabilities, each behind its grant in the listener's policy
(an ungranted call is a fault: the request gets the failure mode). Thin
wrappers over the generated bindings.

The bindings are imported with this module: componentize-py snapshots the
interpreter after importing the app, and a binding module first imported
later is not found. Without them (a Filter tested in plain CPython) every
function here raises RuntimeError.
"""

from __future__ import annotations

from typing import Any

try:
    from componentize_py_types import Err
    from wit_world.imports import clock, egress, kv, metadata, random, types
    from wit_world.imports import log as _log
except ImportError:  # not inside a component: see the module docstring
    clock = egress = kv = metadata = random = types = _log = None
    Err = None


def _bound(module: Any) -> Any:
    if module is None:
        raise RuntimeError("lightcell_sdk.host: no bindings (only inside a componentize-py component)")
    return module

__all__ = [
    "kv_delete", "kv_get", "kv_increment", "kv_set", "log", "monotonic_now", "random_u64", "send_datagram",
    "set_metadata", "wall_now",
]

_LEVELS = ("trace", "debug", "info", "warn", "error")


def log(message: str, level: str = "info") -> None:
    """Grant `log`: one log line attributed to the listener and plugin."""
    if level not in _LEVELS:
        raise ValueError(f"log level {level!r}, not one of {', '.join(_LEVELS)}")
    _bound(_log).log(_bound(types).LogLevel[level.upper()], message)


def wall_now() -> int:
    """Grant `clock`: nanoseconds since the Unix epoch."""
    return int(_bound(clock).wall_now())


def monotonic_now() -> int:
    """Grant `clock`: nanoseconds from an arbitrary fixed point."""
    return int(_bound(clock).monotonic_now())


def random_u64() -> int:
    """Grant `random`: a cryptographically secure random 64-bit number."""
    return int(_bound(random).get_u64())


def kv_get(key: str) -> bytes | None:
    """Grant `kv` (shared by every request of this plugin on this listener)."""
    value = _bound(kv).get(key)
    return None if value is None else bytes(value)


def kv_set(key: str, value: bytes) -> None:
    _bound(kv).set(key, bytes(value))


def kv_delete(key: str) -> None:
    _bound(kv).delete(key)


def kv_increment(key: str, delta: int = 1) -> int:
    """Atomically add `delta` to the integer at `key` (missing: 0); the new value."""
    return int(_bound(kv).increment(key, delta))


def set_metadata(key: str, value: str) -> None:
    """Grant `metadata`: dynamic metadata for Envoy under the `lightcell` namespace."""
    _bound(metadata).set(key, value)


def send_datagram(host: str, port: int, payload: bytes) -> str | None:
    """Grant `egress`: one UDP datagram to an allow-listed destination. None
    when queued, else why not: "denied", "too-large" or "unreachable"."""
    try:
        _bound(egress).send_datagram(host, port, bytes(payload))
    except _bound(Err) as e:
        return str(e.value.name).lower().replace("_", "-")
    return None
