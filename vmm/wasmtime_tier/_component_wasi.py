"""Granted WASI 0.2 clocks and randomness served through the host's capabilities.

A component's granted wasi:clocks/wall-clock and wasi:random/* calls go to
HostCapabilities (wall_now, random_u64, random_bytes), as WASI preview 1's
clock_time_get and random_get do on the core path (_core_imports.py) and as
every WASI 0.2 read does in the micro-VM guest (guest/runtime/wasip2.c): the
host sees, and a recording host records, what the plugin read through its
grant, the same calls in both tiers. The pieces match the guest's: a
get-random-bytes of n > WASI_RANDOM_CHUNK bytes is several random_bytes
calls; a function that reads nothing (resolution, an empty list) makes none.

wasi:clocks/monotonic-clock stays wasmtime's own when granted: it `use`s
wasi:io/poll's pollable (subscribe-*), and a shadowing instance replaces the
whole interface, which wasmtime-py cannot give a pollable of add_wasip2's.
So a granted monotonic read reaches the host only in the micro-VM tier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wasmtime.component import Record

from vmm.wasmtime_tier._context import CallContext
from vmm.wasmtime_tier._faults import AbiViolation

__all__ = ["GRANTED_WASI", "MAX_RANDOM_LIST", "WASI_RANDOM_CHUNK"]

WASI_RANDOM_CHUNK = 64 * 1024
"""The most one random_bytes call gives (vmm/microvm/hostcalls.py MAX_RANDOM_BYTES)."""
MAX_RANDOM_LIST = 16 << 20
"""The most one get-random-bytes call may ask (guest/runtime/wasip2.c MAX_RANDOM_BYTES)."""
_NS = 1_000_000_000


def _datetime(seconds: int, nanoseconds: int) -> Record:
    record = Record()  # wasmtime-py lowers a record from the attributes its fields name
    setattr(record, "seconds", seconds)  # noqa: B010
    setattr(record, "nanoseconds", nanoseconds)  # noqa: B010
    return record


def _wall_now(ctx: CallContext) -> Record:
    ns = ctx.host.wall_now()
    return _datetime(ns // _NS, ns % _NS)


def _random_list(ctx: CallContext, n: int) -> bytes:
    if n > MAX_RANDOM_LIST:
        raise AbiViolation(f"get-random-bytes({n}) over {MAX_RANDOM_LIST}")
    parts = []
    for at in range(0, n, WASI_RANDOM_CHUNK):
        parts.append(ctx.host.random_bytes(min(WASI_RANDOM_CHUNK, n - at)))
    return b"".join(parts)


GRANTED_WASI: dict[str, dict[str, Callable[..., Any]]] = {
    "wasi:clocks/wall-clock": {
        "now": _wall_now,
        "resolution": lambda ctx: _datetime(0, 1),
    },
    "wasi:random/random": {
        "get-random-bytes": _random_list,
        "get-random-u64": lambda ctx: ctx.host.random_u64(),
    },
    "wasi:random/insecure": {
        "get-insecure-random-bytes": _random_list,
        "get-insecure-random-u64": lambda ctx: ctx.host.random_u64(),
    },
    "wasi:random/insecure-seed": {
        "insecure-seed": lambda ctx: (ctx.host.random_u64(), ctx.host.random_u64()),
    },
}
"""Interface (no version) -> its functions, each called after _host_call's grant check."""
