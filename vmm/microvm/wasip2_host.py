"""The host side of the guest's WASI 0.2 (guest/runtime/wasip2*.c): host calls 13-18.

GRANTED answers whether the listener grants a capability, without recording
a denial (the guest drops stdout when `log` is not granted, and gives
STARTUP_RANDOM_BYTES zeros when `random` is not, as the wasmtime tier does).
ARGUMENTS gives `lightcell run`'s command-line arguments (plugins have none).
ARGUMENTS and POLL are answered with no host too (hostcalls.py
WITHOUT_CONNECTION: boot, warm-up): their answer is the same for every
connection of a plugin. GRANTED is not: it needs a host that knows the
grants (a connection's, wanted-phases' no-grant one, or AheadHost).
UDP_BIND / UDP_RECV / UDP_SEND need `egress` (hostcalls.py checks it); a
plugin's HostCapabilities has no UDP service, so it cannot bind or receive,
and its datagrams go through the egress allow list (`send_datagram`) exactly
as egress.send-datagram's do. `lightcell run` gives its host a UdpService
(vmm/microvm/run.py) that binds only where --udp-bind allows.
POLL waits (at most MAX_WAIT_S per call: the guest calls again) for a
datagram on one of the given sockets or for a timeout; for a plugin (no UDP
service) it returns at once.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
import time
from pathlib import Path
from typing import Protocol

from vmm.capabilities import CapabilityDenied, CapabilityMisuse, HostCapabilities
from vmm.contract import SendError
from vmm.kvstore import KvStore
from vmm.metrics import Metrics
from vmm.microvm.abi import HostcallStatus
from vmm.policy import SandboxSpec

__all__ = [
    "GRANT_QUERY",
    "MAX_WAIT_S",
    "AheadHost",
    "ErrorCode",
    "UdpService",
    "ahead_host",
    "arguments",
    "granted",
    "poll",
    "udp_bind",
    "udp_recv",
    "udp_send",
]

GRANT_QUERY = ("log", "clock", "random", "egress")
"""LC_HOST_GRANTED's a0 -> capability (guest/runtime/wasip2_rt.h LC_GRANT_*)."""
MAX_WAIT_S = 1.0
MAX_ARGUMENT_BYTES = 60 * 1024  # fits the guest's 64 KiB scratch buffer
_ADDR = struct.Struct(">4sH")  # IPv4 octets, port
_MAX_POLL_IDS = 1024


class ErrorCode(enum.IntEnum):
    """wasi:sockets/network error-code (the ones the host answers)."""

    ACCESS_DENIED = 1
    NOT_SUPPORTED = 2
    INVALID_ARGUMENT = 3
    ADDRESS_NOT_BINDABLE = 11
    ADDRESS_IN_USE = 12
    REMOTE_UNREACHABLE = 13
    DATAGRAM_TOO_LARGE = 17


class UdpService(Protocol):
    """Bound UDP sockets for one VM, by id (1, 2, ...). Called on the VM's thread."""

    def bind(self, ip: str, port: int) -> int | ErrorCode: ...
    def recv(self, sock: int) -> tuple[str, int, bytes] | None: ...
    def pending(self, sock: int) -> bool: ...
    def send(self, sock: int, ip: str, port: int, data: bytes) -> ErrorCode | None: ...
    def wait(self, socks: list[int], timeout_s: float) -> bool: ...


def _udp(h: HostCapabilities | None) -> UdpService | None:
    service: UdpService | None = getattr(h, "udp", None)
    return service


def _addr(blob: bytes) -> tuple[str, int]:
    if len(blob) != _ADDR.size:
        raise CapabilityMisuse(f"address of {len(blob)} bytes")
    octets, port = _ADDR.unpack(blob)
    return str(ipaddress.IPv4Address(octets)), port


def _pack(ip: str, port: int) -> bytes:
    return _ADDR.pack(ipaddress.IPv4Address(ip).packed, port)


class AheadHost(HostCapabilities):
    """The host of on-open run once ahead of any connection, for the pool's snapshot
    (VmPool open_host): GRANTED answers the listener's grants, which every connection
    of its pool shares (each reload makes new pools), and ARGUMENTS and POLL answer as
    for any plugin; every call that needs a grant is refused, and not logged or
    counted (no connection made it), so on-open then runs per connection. An on-open
    that completes here got exactly the answers each connection would get: e.g.
    componentize-py's reseed, without `random`, the STARTUP_RANDOM_BYTES zeros."""

    def check(self, capability: str) -> None:
        raise CapabilityDenied(capability)


def ahead_host(spec: SandboxSpec) -> AheadHost:
    """The AheadHost of `spec`'s pool: the listener's grants, a throwaway kv and metrics."""
    plugin = Path(spec.plugin_path).name.removesuffix(".wasm")
    return AheadHost(spec.listener, plugin, spec.grants, spec.limits, KvStore(1, 1), metrics=Metrics())


Result = tuple[HostcallStatus, int, bytes]
_OK = HostcallStatus.OK


def granted(h: HostCapabilities, a0: int, _b0: bytes, _b1: bytes) -> Result:
    if a0 >= len(GRANT_QUERY):
        raise CapabilityMisuse(f"no grant {a0}")
    return _OK, int(h.grants.allows(GRANT_QUERY[a0])), b""


def arguments(h: HostCapabilities | None, _a0: int, _b0: bytes, _b1: bytes) -> Result:
    """None outside a connection: a plugin has no arguments (only `lightcell run`'s host has)."""
    args: tuple[str, ...] = getattr(h, "arguments", ())
    encoded = [a.encode() for a in args]
    if any(b"\0" in a for a in encoded):
        raise CapabilityMisuse("an argument holds a NUL")
    payload = b"".join(a + b"\0" for a in encoded)
    if len(payload) > MAX_ARGUMENT_BYTES:
        raise CapabilityMisuse(f"arguments over {MAX_ARGUMENT_BYTES} bytes")
    return _OK, len(encoded), payload


def udp_bind(h: HostCapabilities, _a0: int, b0: bytes, _b1: bytes) -> Result:
    ip, port = _addr(b0)
    udp = _udp(h)
    r = ErrorCode.ACCESS_DENIED if udp is None else udp.bind(ip, port)
    if isinstance(r, ErrorCode):
        return _OK, 1 << 32 | int(r), b""
    return _OK, r, b""


def udp_recv(h: HostCapabilities, a0: int, _b0: bytes, _b1: bytes) -> Result:
    if a0 == 0:  # the guest's egress grant check: hostcalls.py made it
        return _OK, 0, b""
    udp = _udp(h)
    if udp is None:
        raise CapabilityMisuse(f"no UDP socket {a0}")
    got = udp.recv(a0)
    if got is None:
        return _OK, 0, b""
    ip, port, data = got
    return _OK, 2 if udp.pending(a0) else 1, _pack(ip, port) + data


_SEND_ERRORS = {
    SendError.DENIED: ErrorCode.ACCESS_DENIED,
    SendError.TOO_LARGE: ErrorCode.DATAGRAM_TOO_LARGE,
    SendError.UNREACHABLE: ErrorCode.REMOTE_UNREACHABLE,
}


def udp_send(h: HostCapabilities, a0: int, b0: bytes, b1: bytes) -> Result:
    ip, port = _addr(b0)
    if a0 == 0:  # an unbound socket: egress.send-datagram's rules
        err = h.send_datagram(ip, port, b1)
        code = None if err is None else _SEND_ERRORS[err]
    else:
        udp = _udp(h)
        if udp is None:
            raise CapabilityMisuse(f"no UDP socket {a0}")
        code = udp.send(a0, ip, port, b1)
    return _OK, 0 if code is None else 1 + int(code), b""


def poll(h: HostCapabilities | None, a0: int, b0: bytes, _b1: bytes) -> Result:
    if len(b0) % 4 or len(b0) > 4 * _MAX_POLL_IDS:
        raise CapabilityMisuse(f"poll list of {len(b0)} bytes")
    socks = [s for (s,) in struct.iter_unpack("<I", b0) if s]
    timeout = min(a0 / 1e9, MAX_WAIT_S)
    udp = _udp(h)
    if socks and udp is not None:
        return _OK, int(udp.wait(socks, timeout)), b""
    if udp is not None and timeout > 0:  # `lightcell run`: a command may sleep
        time.sleep(timeout)
    # A plugin's clock wait does not park the host's thread: the guest calls
    # again until its deadline, against the event's CPU budget.
    return _OK, 0, b""
