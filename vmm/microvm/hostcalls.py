"""Host calls from the guest, each mapped to one vmm.capabilities method.

Each host-call number stands for one import of the contract (IMPORT); its
grant comes from vmm.contract.IMPORT_CAPABILITY and `dispatch` checks it,
once, before any argument is decoded (the capability methods do not check
again). A refused grant answers LC_HOSTCALL_DENIED, refused arguments
LC_HOSTCALL_MISUSE. An unknown function
number is not an answer but a broken guest: the caller poisons the VM.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from vmm.capabilities import (
    MAX_LOG_MESSAGE,
    MAX_METADATA_BYTES,
    CapabilityDenied,
    CapabilityMisuse,
    HostCapabilities,
)
from vmm.contract import IMPORT_MODULE, WASI_P1_MODULE, import_capability
from vmm.microvm import wasip2_host
from vmm.microvm.abi import HostcallStatus, HostFn

MAX_RANDOM_BYTES = 64 * 1024
LOG_GRANT_CHECK = 255
"""A LOG host call with this level logs nothing: the guest's WASI fd_write
asks it (guest/runtime/lc_rt.h LC_LOG_GRANT_CHECK) to have the `log` grant
checked, here, before it looks at its arguments."""
_U64 = 2**64
_LOG_DECODED_BYTES = 4 * MAX_LOG_MESSAGE
"""A log line keeps MAX_LOG_MESSAGE characters: at most 4 UTF-8 bytes each."""


class UnknownHostFn(Exception):
    pass


@dataclass(frozen=True, slots=True)
class HostcallResult:
    status: HostcallStatus
    value: int = 0
    payload: bytes = b""


_OK = HostcallStatus.OK


def _text(blob: bytes) -> str:
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CapabilityMisuse(f"not UTF-8: {e}") from None


def _log(h: HostCapabilities, a0: int, b0: bytes, _: bytes) -> HostcallResult:
    if a0 == LOG_GRANT_CHECK:  # dispatch() checked the grant: that was all
        return HostcallResult(_OK)
    # Only what the log line can show is decoded (a guest may send megabytes).
    h.log(a0 if a0 < 5 else 2, b0[:_LOG_DECODED_BYTES].decode("utf-8", "replace"))
    return HostcallResult(_OK)


def _random_bytes(h: HostCapabilities, a0: int, _b0: bytes, _b1: bytes) -> HostcallResult:
    if a0 > MAX_RANDOM_BYTES:
        raise CapabilityMisuse(f"random_bytes({a0}) over {MAX_RANDOM_BYTES}")
    return HostcallResult(_OK, 0, h.random_bytes(a0))


def _kv_get(h: HostCapabilities, _a0: int, b0: bytes, _b1: bytes) -> HostcallResult:
    value = h.kv_get(_text(b0))
    return HostcallResult(_OK, 0, b"") if value is None else HostcallResult(_OK, 1, value)


def _kv_set(h: HostCapabilities, _a0: int, b0: bytes, b1: bytes) -> HostcallResult:
    h.kv_set(_text(b0), b1)
    return HostcallResult(_OK)


def _kv_delete(h: HostCapabilities, _a0: int, b0: bytes, _b1: bytes) -> HostcallResult:
    h.kv_delete(_text(b0))
    return HostcallResult(_OK)


def _kv_increment(h: HostCapabilities, a0: int, b0: bytes, _b1: bytes) -> HostcallResult:
    delta = a0 - _U64 if a0 >= 2**63 else a0
    return HostcallResult(_OK, h.kv_increment(_text(b0), delta) % _U64)


def _metadata_set(h: HostCapabilities, _a0: int, b0: bytes, b1: bytes) -> HostcallResult:
    if len(b0) + len(b1) > MAX_METADATA_BYTES:  # refused before megabytes are decoded
        raise CapabilityMisuse(f"metadata entry over {MAX_METADATA_BYTES} bytes")
    h.metadata_set(_text(b0), _text(b1))
    return HostcallResult(_OK)


def _egress(h: HostCapabilities, a0: int, b0: bytes, b1: bytes) -> HostcallResult:
    if a0 > 0xFFFF:
        raise CapabilityMisuse(f"port {a0}")
    err = h.send_datagram(_text(b0), a0, b1)  # strict: stops at the first bad byte, as wasmtime
    return HostcallResult(_OK, 0 if err is None else 1 + int(err))


_ATTRIBUTE_LENGTHS = struct.Struct("<II")


def _connection_attributes(h: HostCapabilities, _a0: int, _b0: bytes, _b1: bytes) -> HostcallResult:
    """value: the count; payload: per attribute u32 name length, u32 value length, the
    UTF-8 name, the UTF-8 value (guest/include/lc_guest.h). The session bounded them
    (MAX_CONNECTION_ATTRIBUTE_BYTES), so this fits the guest's scratch buffer."""
    parts: list[bytes] = []
    attributes = h.connection_attributes()
    for name, value in attributes:
        n, v = name.encode(), value.encode()
        parts += [_ATTRIBUTE_LENGTHS.pack(len(n), len(v)), n, v]
    return HostcallResult(_OK, len(attributes), b"".join(parts))


_HANDLERS: dict[int, Callable[[HostCapabilities, int, bytes, bytes], HostcallResult]] = {
    HostFn.LOG: _log,
    HostFn.WALL_NOW: lambda h, *_: HostcallResult(_OK, h.wall_now() % _U64),
    HostFn.MONOTONIC_NOW: lambda h, *_: HostcallResult(_OK, h.monotonic_now() % _U64),
    HostFn.RANDOM_U64: lambda h, *_: HostcallResult(_OK, h.random_u64() % _U64),
    HostFn.RANDOM_BYTES: _random_bytes,
    HostFn.KV_GET: _kv_get,
    HostFn.KV_SET: _kv_set,
    HostFn.KV_DELETE: _kv_delete,
    HostFn.KV_INCREMENT: _kv_increment,
    HostFn.METADATA_SET: _metadata_set,
    HostFn.EGRESS_SEND: _egress,
    HostFn.CONNECTION_ATTRIBUTES: _connection_attributes,
}


IMPORT: dict[int, tuple[str, str]] = {
    HostFn.LOG: (IMPORT_MODULE["log"], "log"),  # WASI fd_write's lines too (and its grant check)
    HostFn.WALL_NOW: (IMPORT_MODULE["clock"], "wall-now"),
    HostFn.MONOTONIC_NOW: (IMPORT_MODULE["clock"], "monotonic-now"),
    HostFn.RANDOM_U64: (IMPORT_MODULE["random"], "get-u64"),
    HostFn.RANDOM_BYTES: (WASI_P1_MODULE, "random_get"),
    HostFn.KV_GET: (IMPORT_MODULE["kv"], "get"),
    HostFn.KV_SET: (IMPORT_MODULE["kv"], "set"),
    HostFn.KV_DELETE: (IMPORT_MODULE["kv"], "delete"),
    HostFn.KV_INCREMENT: (IMPORT_MODULE["kv"], "increment"),
    HostFn.METADATA_SET: (IMPORT_MODULE["metadata"], "set"),
    HostFn.EGRESS_SEND: (IMPORT_MODULE["egress"], "send-datagram"),
    HostFn.CONNECTION_ATTRIBUTES: (IMPORT_MODULE["connection"], "attributes"),
}
"""Host-call number -> the import it implements (the guest's WASI clock
functions use WALL_NOW/MONOTONIC_NOW, which need the same `clock` grant)."""

def _grant(imp: tuple[str, str]) -> str:
    capability = import_capability(*imp)
    assert capability is not None, f"{imp} needs no grant: not a host call"
    return capability


_CAPABILITY: dict[int, str] = {fn: _grant(imp) for fn, imp in IMPORT.items()}
"""The grant each host function needs, checked before any argument is looked
at: an ungranted call is DENIED (and logged and counted) whatever its
arguments, as in the wasmtime tier, never MISUSE."""

# --- WASI 0.2 (vmm/microvm/wasip2_host.py) ----------------------------------
def _wasip2(fn: Callable[[HostCapabilities, int, bytes, bytes], tuple[HostcallStatus, int, bytes]]
            ) -> Callable[[HostCapabilities, int, bytes, bytes], HostcallResult]:
    return lambda h, a0, b0, b1: HostcallResult(*fn(h, a0, b0, b1))


_HANDLERS |= {
    HostFn.GRANTED: _wasip2(wasip2_host.granted),
    HostFn.ARGUMENTS: _wasip2(wasip2_host.arguments),
    HostFn.UDP_BIND: _wasip2(wasip2_host.udp_bind),
    HostFn.UDP_RECV: _wasip2(wasip2_host.udp_recv),
    HostFn.UDP_SEND: _wasip2(wasip2_host.udp_send),
    HostFn.POLL: _wasip2(wasip2_host.poll),
}
_CAPABILITY |= {HostFn.UDP_BIND: "egress", HostFn.UDP_RECV: "egress", HostFn.UDP_SEND: "egress"}
UNGATED = frozenset({HostFn.GRANTED, HostFn.ARGUMENTS, HostFn.POLL})
"""Host calls that need no grant: a grant query (records no denial), the
arguments (none for plugins), and waiting (the guest's wasi:io/poll)."""
assert set(_CAPABILITY) | UNGATED == set(_HANDLERS) == set(HostFn)

_Answer = Callable[[HostCapabilities | None, int, bytes, bytes], tuple[HostcallStatus, int, bytes]]
WITHOUT_CONNECTION: dict[int, _Answer] = {
    HostFn.ARGUMENTS: wasip2_host.arguments,
    HostFn.POLL: wasip2_host.poll,
}
"""Host calls answered with no host at all (boot, the pool's warm-up rehearsals):
a plugin's arguments are none and its poll returns at once, the same for every
connection, so an answer here changes nothing a snapshot could carry over. Every
other call is DENIED there: its answer would depend on a connection's grants
(GRANTED included) or data, and the event ends cleanly. (wanted-phases at load
and on-open ahead get a host: a no-grant one, wasip2_host.AheadHost.)"""
assert set(WITHOUT_CONNECTION) <= UNGATED


def host_fn_capability(fn: HostFn) -> str | None:
    """The grant host call `fn` needs (None: UNGATED)."""
    return None if fn in UNGATED else _CAPABILITY[fn]


def dispatch(host: HostCapabilities | None, fn: int, a0: int, blob0: bytes, blob1: bytes) -> HostcallResult:
    """Run one host call. `host` is None outside a connection (boot, warm-up): all
    denied but WITHOUT_CONNECTION's."""
    handler = _HANDLERS.get(fn)
    if handler is None:
        raise UnknownHostFn(f"unknown host function {fn}")
    if host is None:
        answer = WITHOUT_CONNECTION.get(fn)
        if answer is None:
            return HostcallResult(HostcallStatus.DENIED)
        try:
            return HostcallResult(*answer(None, a0, blob0, blob1))
        except CapabilityMisuse:
            return HostcallResult(HostcallStatus.MISUSE)
    try:
        if fn not in UNGATED:
            host.check(_CAPABILITY[fn])  # the call's one grant check
        return handler(host, a0, blob0, blob1)
    except CapabilityDenied:
        return HostcallResult(HostcallStatus.DENIED)
    except CapabilityMisuse:
        return HostcallResult(HostcallStatus.MISUSE)
